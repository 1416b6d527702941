//! Official-format import, key/shape validation, corrupt files, export round trips and our
//! own checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, TensorData};
use moco_models::export::{to_safetensors, torch_state_dict};
use moco_models::import::{inspect, load_backbone, load_moco, ImportOptions, Layout};
use moco_models::keys::Family;
use moco_models::state_dict::read_state_dict;
use moco_models::*;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden")
        .join(name)
}

fn vit_options() -> ImportOptions {
    ImportOptions {
        heads: Some(4),
        freeze_patch_embed: None,
    }
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("moco-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn join(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// The file's tensors by key, `module.` removed, BN counters dropped.
fn file_tensors(path: &Path) -> BTreeMap<String, TensorData> {
    read_state_dict(path)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, v)| {
            (
                k.trim_start_matches("module.").to_string(),
                burn_store::bridge::to_data(&v).unwrap(),
            )
        })
        .collect()
}

fn as_map(v: Vec<(String, TensorData)>) -> BTreeMap<String, TensorData> {
    v.into_iter().collect()
}

#[test]
fn official_checkpoints_load_every_tensor_exactly() {
    let device = Device::flex();
    for (tag, options, family) in [
        ("vit_tiny_p8_32", vit_options(), Family::Vit),
        ("resnet_b16_l1111", ImportOptions::default(), Family::ResNet),
    ] {
        let path = golden(&format!("{tag}.pth.tar"));
        let (model, _) = load_moco(&path, &options, &device).unwrap();
        let loaded = as_map(torch_state_dict(&model, family));
        let file = file_tensors(&path);
        assert_eq!(
            loaded.keys().collect::<Vec<_>>(),
            file.keys().collect::<Vec<_>>(),
            "{tag}"
        );
        for (k, v) in &file {
            assert_eq!(&loaded[k], v, "{tag}: {k}");
        }
    }
}

#[test]
fn architecture_is_inferred_from_shapes() {
    let w = inspect(&golden("vit_tiny_p8_32.pth.tar"), &vit_options()).unwrap();
    assert_eq!(w.layout, Layout::Moco);
    let BackboneConfig::Vit(v) = &w.backbone_config else {
        panic!()
    };
    assert_eq!(
        (
            v.img_size,
            v.patch_size,
            v.in_chans,
            v.embed_dim,
            v.depth,
            v.num_heads
        ),
        (32, 8, 3, 64, 2, 4)
    );
    let c = w.moco_config.unwrap();
    assert_eq!(
        (
            c.projector.num_layers,
            c.projector.mlp_dim,
            c.projector.output_dim
        ),
        (3, 128, 32)
    );
    assert!(c.predictor.last_bn);

    let w = inspect(
        &golden("resnet_b16_l1111.pth.tar"),
        &ImportOptions::default(),
    )
    .unwrap();
    let BackboneConfig::ResNet(r) = &w.backbone_config else {
        panic!()
    };
    assert_eq!(
        (r.layers.clone(), r.width, r.block, r.stem),
        (vec![1, 1, 1, 1], 16, BlockKind::Bottleneck, Stem::ImageNet)
    );
    let c = w.moco_config.unwrap();
    assert_eq!((c.projector.num_layers, c.projector.input_dim), (2, 512));
    assert!(!c.predictor.last_bn);

    // Width 64 has no preset: the heads must be given, and the error says how.
    let err = inspect(&golden("vit_tiny_p8_32.pth.tar"), &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--heads") && err.contains("vit_tiny_p8_32.pth.tar"),
        "{err}"
    );
}

#[test]
fn backbone_loads_alone_from_a_moco_checkpoint() {
    let device = Device::flex();
    let path = golden("vit_tiny_p8_32.pth.tar");
    let (backbone, _) = load_backbone(&path, &vit_options(), &device).unwrap();
    let (model, _) = load_moco(&path, &vit_options(), &device).unwrap();
    assert_eq!(
        as_map(torch_state_dict(&backbone, Family::Vit)),
        as_map(torch_state_dict(&model.base_encoder.backbone, Family::Vit))
    );
}

#[test]
fn export_import_round_trip_is_exact() {
    let device = Device::flex();
    let tmp = TempDir::new("roundtrip");
    for (tag, options, family) in [
        ("vit_tiny_p8_32", vit_options(), Family::Vit),
        ("resnet_b16_l1111", ImportOptions::default(), Family::ResNet),
    ] {
        let (model, config) =
            load_moco(&golden(&format!("{tag}.pth.tar")), &options, &device).unwrap();
        // Backbone with timm / torchvision names; heads travel in the metadata.
        let out = tmp.join(&format!("{tag}.backbone.safetensors"));
        export_backbone(&model.base_encoder.backbone, &config.backbone, &out).unwrap();
        let exported = file_tensors(&out);
        assert!(
            exported
                .keys()
                .all(|k| !k.contains("backbone") && !k.contains("stages")),
            "{tag}"
        );
        let (again, again_cfg) = load_backbone(&out, &ImportOptions::default(), &device).unwrap();
        assert_eq!(again_cfg, config.backbone);
        assert_eq!(
            as_map(torch_state_dict(&again, family)),
            as_map(torch_state_dict(&model.base_encoder.backbone, family))
        );
        // The whole model in the official key layout.
        let out = tmp.join(&format!("{tag}.safetensors"));
        export_moco(&model, &config, &out).unwrap();
        let (again, again_cfg) = load_moco(&out, &ImportOptions::default(), &device).unwrap();
        assert_eq!(again_cfg.projector, config.projector);
        assert_eq!(
            as_map(torch_state_dict(&again, family)),
            as_map(torch_state_dict(&model, family))
        );
    }
}

#[test]
fn our_checkpoints_round_trip() {
    let device = Device::flex();
    let tmp = TempDir::new("ckpt");
    let (model, config) = load_moco(
        &golden("resnet_b16_l1111.pth.tar"),
        &ImportOptions::default(),
        &device,
    )
    .unwrap();
    let path = tmp.join("run/ckpt.mpk");
    save_checkpoint(&model, &config, &path).unwrap();
    let (again, again_cfg) = load_checkpoint(&path, &device).unwrap();
    assert_eq!(again_cfg, config);
    assert_eq!(
        as_map(torch_state_dict(&again, Family::ResNet)),
        as_map(torch_state_dict(&model, Family::ResNet))
    );
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(tmp.join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ckpt.mpk")]);
    // A damaged checkpoint is an error naming the file.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_checkpoint(&path, &device).unwrap_err().to_string();
    assert!(err.contains("ckpt.mpk"), "{err}");
}

#[test]
fn mismatched_keys_are_listed() {
    let device = Device::flex();
    let tmp = TempDir::new("mismatch");
    let (model, config) =
        load_moco(&golden("vit_tiny_p8_32.pth.tar"), &vit_options(), &device).unwrap();
    let mut tensors = as_map(torch_state_dict(&model, Family::Vit));
    tensors.remove("base_encoder.blocks.0.norm1.bias");
    tensors.insert(
        "base_encoder.blocks.0.extra".into(),
        TensorData::new(vec![0f32; 4], [4]),
    );
    tensors.insert(
        "momentum_encoder.norm.bias".into(),
        TensorData::new(vec![0f32; 65], [65]),
    );
    let path = tmp.join("bad.safetensors");
    let meta = [(
        "moco_config".to_string(),
        serde_json::to_string(&config).unwrap(),
    )]
    .into_iter()
    .collect();
    std::fs::write(
        &path,
        to_safetensors(&tensors.into_iter().collect::<Vec<_>>(), Some(meta)).unwrap(),
    )
    .unwrap();
    let err = load_moco(&path, &ImportOptions::default(), &device).unwrap_err();
    let ModelError::Mismatch {
        missing,
        unexpected,
        wrong_shape,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        missing,
        &vec!["base_encoder.blocks.0.norm1.bias".to_string()]
    );
    assert_eq!(unexpected, &vec!["base_encoder.blocks.0.extra".to_string()]);
    assert_eq!(wrong_shape.len(), 1);
    assert!(
        wrong_shape[0].starts_with("momentum_encoder.norm.bias: file [65], model [64]"),
        "{wrong_shape:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("bad.safetensors") && text.contains("missing (1)"),
        "{text}"
    );
}

#[test]
fn classifier_files_load_as_backbones() {
    // A linear-probe style file: `module.` prefix, backbone plus a `head` classifier.
    let device = Device::flex();
    let tmp = TempDir::new("lincls");
    let (model, _) = load_moco(&golden("vit_tiny_p8_32.pth.tar"), &vit_options(), &device).unwrap();
    let mut tensors: Vec<_> = torch_state_dict(&model.base_encoder.backbone, Family::Vit)
        .into_iter()
        .map(|(k, v)| (format!("module.{k}"), v))
        .collect();
    tensors.push((
        "module.head.weight".into(),
        TensorData::new(vec![0f32; 640], [10, 64]),
    ));
    tensors.push((
        "module.head.bias".into(),
        TensorData::new(vec![0f32; 10], [10]),
    ));
    let path = tmp.join("lincls.safetensors");
    std::fs::write(&path, to_safetensors(&tensors, None).unwrap()).unwrap();
    let w = inspect(&path, &vit_options()).unwrap();
    assert_eq!(w.layout, Layout::Backbone);
    assert_eq!(
        w.ignored,
        vec!["head.bias".to_string(), "head.weight".to_string()]
    );
    let (backbone, _) = load_backbone(&path, &vit_options(), &device).unwrap();
    assert_eq!(
        as_map(torch_state_dict(&backbone, Family::Vit)),
        as_map(torch_state_dict(&model.base_encoder.backbone, Family::Vit))
    );
    let err = load_moco(&path, &vit_options(), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("backbone only"), "{err}");
}

#[test]
fn damaged_files_are_errors_not_panics() {
    let device = Device::flex();
    let tmp = TempDir::new("damaged");
    let original = std::fs::read(golden("vit_tiny_p8_32.pth.tar")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.pth.tar", vec![], "empty"),
        (
            "truncated.pth.tar",
            original[..original.len() / 2].to_vec(),
            "not a readable PyTorch checkpoint",
        ),
        (
            "garbage.pth.tar",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
            "not a weight file",
        ),
        (
            "head.pth.tar",
            original[..100].to_vec(),
            "not a readable PyTorch checkpoint",
        ),
        (
            "bad.safetensors",
            b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ".to_vec(),
            "not a valid safetensors",
        ),
    ];
    for (name, bytes, expect) in cases {
        let path = tmp.join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = load_moco(&path, &vit_options(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains(name) && err.contains(expect), "{name}: {err}");
    }
    let err = load_moco(&tmp.join("absent.pth.tar"), &vit_options(), &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("absent.pth.tar") && err.contains("cannot read"),
        "{err}"
    );
}

/// `export_official` writes what the official release holds: the same keys (with `module.`),
/// shapes and BN counters as the golden checkpoints, which are in that format, and the same
/// float values; the file loads back as the same model.
#[test]
fn the_official_layout_has_the_releases_keys_and_shapes() {
    let device = Device::flex();
    let tmp = TempDir::new("official");
    for (tag, options) in [
        ("vit_tiny_p8_32", vit_options()),
        ("resnet_b16_l1111", ImportOptions::default()),
        (
            "vit_convstem_48",
            ImportOptions {
                heads: Some(2),
                ..Default::default()
            },
        ),
    ] {
        let original = golden(&format!("{tag}.pth.tar"));
        let (model, config) = load_moco(&original, &options, &device).unwrap();
        let out = tmp.join(&format!("{tag}.official"));
        export_official(&model, &config, &out).unwrap();
        let theirs = read_state_dict(&original).unwrap();
        let ours = read_state_dict(&out).unwrap();
        let keys = |d: &moco_models::state_dict::StateDict| d.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&ours), keys(&theirs), "{tag}");
        for (name, snapshot) in &theirs {
            let mine = &ours[name];
            assert_eq!(mine.shape, snapshot.shape, "{tag} {name}");
            if !name.ends_with("num_batches_tracked") {
                assert_eq!(
                    burn_store::bridge::to_data(mine).unwrap().convert::<f32>(),
                    burn_store::bridge::to_data(snapshot)
                        .unwrap()
                        .convert::<f32>(),
                    "{tag} {name}"
                );
            }
        }
        let (again, _) = load_moco(&out, &options, &device).unwrap();
        let family = moco_models::import::family_of_config(&config.backbone);
        assert_eq!(
            as_map(torch_state_dict(&again, family)),
            as_map(torch_state_dict(&model, family)),
            "{tag}"
        );
    }
}

/// A width-384 ViT read without a recorded head count is read with MoCo v3's 12 heads, and
/// the import says that DeiT, DINO and timm use 6; a given head count silences it.
#[test]
fn an_ambiguous_head_count_is_a_warning() {
    let device = Device::flex();
    let tmp = TempDir::new("heads");
    let config = VitConfig::vit_small()
        .with_img_size(32)
        .with_patch_size(16)
        .with_depth(1);
    let vit = BackboneConfig::Vit(config.clone());
    let backbone: AnyBackbone = vit.init(&device);
    let out = tmp.join("deit.pth");
    export_deit(&backbone, &vit, &out).unwrap();
    let read = inspect(&out, &ImportOptions::default()).unwrap();
    assert_eq!(read.warnings.len(), 1, "{:?}", read.warnings);
    assert!(
        read.warnings[0].contains("--heads 6"),
        "{}",
        read.warnings[0]
    );
    let given = ImportOptions {
        heads: Some(6),
        ..Default::default()
    };
    let read = inspect(&out, &given).unwrap();
    assert!(read.warnings.is_empty());
    let BackboneConfig::Vit(c) = read.backbone_config else {
        panic!("a ViT")
    };
    assert_eq!(c.num_heads, 6);
}
