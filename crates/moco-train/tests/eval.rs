//! Evaluation on the bundled data: the linear probe's sanity check and frozen BN, fine-tuning
//! with layer decay and drop path, feature export, loading every kind of checkpoint, the DeiT
//! export against the golden checkpoint, and errors for mismatched files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;
use moco_data::{bundled_fashion_mnist, AugmentConfig};
use moco_models::export::torch_state_dict;
use moco_models::import::family_of_config;
use moco_models::state_dict::read_state_dict;
use moco_models::*;
use moco_train::eval::features::{
    features_of_dataset, features_of_images, read_images, write_outputs,
};
use moco_train::eval::finetune::{finetune, FinetuneConfig};
use moco_train::eval::probe::{linear_probe, save_classifier_model, ProbeConfig};
use moco_train::eval::{evaluate_knn, limit, load_pretrained, raw_pixel_knn, EvalData};
use moco_train::KnnConfig;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Tmp(PathBuf);
impl Tmp {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("moco-eval-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn join(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden")
        .join(name)
}

/// 512 training and 256 test images of the bundled split.
fn small_data() -> EvalData {
    let (train, test) = bundled_fashion_mnist().unwrap();
    EvalData {
        train: limit(&train, Some(512), 1),
        test: limit(&test, Some(256), 2),
        aug: Arc::new(AugmentConfig::fashion_mnist(28, 0.2)),
        workers: 0,
        seed: 0,
        note: String::new(),
    }
}

fn tiny_vit() -> BackboneConfig {
    BackboneConfig::Vit(
        VitConfig::vit_tiny()
            .with_img_size(28)
            .with_patch_size(7)
            .with_in_chans(1)
            .with_embed_dim(32)
            .with_depth(2)
            .with_num_heads(2),
    )
}

fn tiny_resnet() -> BackboneConfig {
    BackboneConfig::ResNet(
        ResNetConfig::new(vec![1, 1])
            .with_block(BlockKind::Basic)
            .with_width(8)
            .with_in_chans(1)
            .with_stem(Stem::Small),
    )
}

fn tensors(b: &AnyBackbone, c: &BackboneConfig) -> Vec<(String, Vec<f32>)> {
    torch_state_dict(b, family_of_config(c))
        .into_iter()
        .map(|(k, d)| (k, d.try_to_vec::<f32>().unwrap()))
        .collect()
}

#[test]
fn probe_keeps_a_bn_backbone_frozen_and_learns() {
    let _g = serial();
    let device = Device::flex().autodiff();
    let data = small_data();
    let config = tiny_resnet();
    device.seed(3);
    let backbone: AnyBackbone = config.init(&device);
    // Give the BN layers the running statistics of real images, as a pretrained network has.
    let warm: AnyBackbone = backbone.clone().train();
    let loader = data.eval_loader(&data.train, 128).unwrap();
    for batch in loader.epoch(0, 0).take(4) {
        let batch = batch.unwrap();
        let x = Tensor::<4>::from_data(
            TensorData::new(batch.views[0].clone(), batch.shape),
            &device.clone().autodiff(),
        );
        let _ = warm.forward(x);
    }
    let backbone = warm.valid();
    let before = tensors(&backbone, &config);
    for cached in [false, true] {
        let probe = ProbeConfig {
            epochs: 2,
            batch_size: 64,
            base_lrs: vec![0.1, 1.0],
            cached_features: cached,
            quiet: true,
            ..ProbeConfig::default()
        };
        let report = linear_probe(&backbone, &config, &data, &probe, &device).unwrap();
        assert_eq!(report.runs.len(), 2);
        for run in &report.runs {
            assert_eq!(run.epochs.len(), 2);
            // lr = base × 64 / 256, cosine per epoch: epoch 2 of 2 runs at half.
            assert!((run.epochs[0].lr - run.base_lr * 0.25).abs() < 1e-12);
            assert!((run.epochs[1].lr - run.base_lr * 0.125).abs() < 1e-12);
            let e = run.epochs.last().unwrap();
            assert!(e.loss.is_finite() && e.top5 >= e.top1);
        }
        // The training loss falls.
        let best = &report.runs[report.best];
        assert!(best.epochs[1].loss < best.epochs[0].loss, "{best:?}");
    }
    // Parameters and BN running statistics are bit-identical after probing.
    assert_eq!(tensors(&backbone, &config), before);
}

#[test]
fn probe_of_a_random_vit_beats_chance() {
    let _g = serial();
    let device = Device::flex().autodiff();
    let data = small_data();
    let config = tiny_vit();
    device.seed(4);
    let backbone: AnyBackbone = config.init(&device);
    for cached in [true, false] {
        let probe = ProbeConfig {
            epochs: 3,
            batch_size: 64,
            base_lrs: vec![3.0],
            cached_features: cached,
            quiet: true,
            ..ProbeConfig::default()
        };
        let report = linear_probe(&backbone, &config, &data, &probe, &device).unwrap();
        // Ten classes: chance is 10 %. Cached features (no augmentation) learn fastest.
        let last = report.runs[0].epochs.last().unwrap();
        let bar = if cached { 40.0 } else { 15.0 };
        assert!(last.top1 > bar, "cached {cached}: {last:?}");
    }
}

#[test]
fn finetune_with_layer_decay_and_drop_path_trains_every_group() {
    let _g = serial();
    let device = Device::flex().autodiff();
    let data = small_data();
    let config = tiny_vit();
    device.seed(5);
    let backbone: AnyBackbone = config.init(&device.clone().autodiff());
    let before = tensors(&backbone.valid(), &config);
    let tmp = Tmp::new("finetune");
    let ft = FinetuneConfig {
        epochs: 3,
        warmup_epochs: 0.5,
        batch_size: 64,
        base_lr: 2e-2,
        layer_decay: 0.75,
        drop_path: 0.1,
        save: Some(tmp.join("ft.safetensors")),
        quiet: true,
        ..FinetuneConfig::default()
    };
    let report = finetune(backbone, &config, &data, &ft, &device).unwrap();
    assert_eq!(report.epochs.len(), 3);
    assert!(report.epochs.iter().all(|e| e.loss.is_finite()));
    assert!(
        report.epochs[2].loss < report.epochs[0].loss,
        "{:?}",
        report.epochs
    );
    assert!(
        report.epochs.iter().any(|e| e.top1 > 20.0),
        "{:?}",
        report.epochs
    );
    // The saved file holds the trained backbone and the head, and imports as a backbone.
    let saved = read_state_dict(&tmp.join("ft.safetensors")).unwrap();
    assert_eq!(saved["head.weight"].shape.to_vec(), vec![10, 32]);
    let loaded = load_pretrained(&tmp.join("ft.safetensors"), None, &device).unwrap();
    let after = tensors(&loaded.backbone, &config);
    let changed = |key: &str| {
        let a = &before.iter().find(|(k, _)| k == key).unwrap().1;
        let b = &after.iter().find(|(k, _)| k == key).unwrap().1;
        a != b
    };
    // Every layer group moved (the patch projection is frozen in this config).
    assert!(changed("cls_token"));
    assert!(changed("blocks.0.attn.qkv.weight"));
    assert!(changed("blocks.1.mlp.fc2.weight"));
    assert!(changed("norm.weight"));
    assert!(!changed("patch_embed.proj.weight"));
}

#[test]
fn knn_features_and_raw_pixels_on_the_bundled_split() {
    let _g = serial();
    let device = Device::flex();
    let data = small_data();
    let config = tiny_vit();
    device.seed(7);
    let backbone: AnyBackbone = config.init(&device);
    let knn = KnnConfig {
        k: 20,
        ..KnnConfig::default()
    };
    let r = evaluate_knn(&backbone, &data, &knn, None, None, &device).unwrap();
    assert!(r.top1 > 30.0 && r.top5 >= r.top1, "{r:?}");
    let raw = raw_pixel_knn(&data, &knn, None, None, &device).unwrap();
    // Raw-pixel cosine kNN on 512 Fashion-MNIST images lands around 70 %.
    assert!(raw.top1 > 55.0 && raw.top1 < 90.0, "{raw:?}");

    let model = moco_train::eval::Pretrained {
        backbone,
        backbone_config: config.clone(),
        projector: None,
        predictor: None,
        pretrain: None,
        source: "test".into(),
        moco: None,
    };
    let out = features_of_dataset(&model, &data, &data.test, &device).unwrap();
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["features", "labels"]);
    assert_eq!(out[0].1.shape().to_vec(), vec![256, 32]);
    let labels = out[1].1.try_to_vec::<i64>().unwrap();
    let expected: Vec<i64> = (0..256)
        .map(|i| data.test.get(i).unwrap().label as i64)
        .collect();
    assert_eq!(labels, expected);

    // User tensors: written, read back, encoded; the same images give the same features.
    let tmp = Tmp::new("features");
    let loader = data.eval_loader(&data.test, 8).unwrap();
    let batch = loader.epoch(0, 0).next().unwrap().unwrap();
    let images = TensorData::new(batch.views[0].clone(), batch.shape);
    write_outputs(
        &tmp.join("in.safetensors"),
        &vec![("images".to_string(), images)],
        Default::default(),
    )
    .unwrap();
    let read = read_images(&tmp.join("in.safetensors"), &config).unwrap();
    let feats = features_of_images(&model, read, &device);
    let a = feats[0].1.try_to_vec::<f32>().unwrap();
    let b = out[0].1.try_to_vec::<f32>().unwrap();
    for (x, y) in a.iter().zip(&b[..8 * 32]) {
        assert!((x - y).abs() < 1e-5);
    }
    // A wrong image size is an error naming the shape.
    let err = read_images(&tmp.join("in.safetensors"), &tiny_vit_32()).unwrap_err();
    assert!(err.to_string().contains("32×32"), "{err}");
    let err = read_images(&tmp.join("missing.safetensors"), &config).unwrap_err();
    assert!(err.to_string().contains("missing.safetensors"), "{err}");
}

fn tiny_vit_32() -> BackboneConfig {
    match tiny_vit() {
        BackboneConfig::Vit(v) => BackboneConfig::Vit(v.with_img_size(32).with_patch_size(8)),
        other => other,
    }
}

#[test]
fn deit_export_matches_the_golden_checkpoint() {
    let device = Device::flex();
    let pth = golden("vit_tiny_p8_32.pth.tar");
    let loaded = load_pretrained(&pth, Some(4), &device).unwrap();
    assert!(loaded.moco.is_some() && loaded.predictor.is_some());
    let tmp = Tmp::new("deit");
    let out = tmp.join("deit.pth");
    let n = export_deit(&loaded.backbone, &loaded.backbone_config, &out).unwrap();
    // Read back through the `model` key: exactly the golden base encoder's backbone tensors.
    let written = read_state_dict(&out).unwrap();
    assert_eq!(written.len(), n);
    let reference = read_state_dict(&pth).unwrap();
    for (key, t) in &written {
        let src = reference
            .get(&format!("module.base_encoder.{key}"))
            .unwrap_or_else(|| panic!("{key} not in the golden file"));
        assert_eq!(t.shape, src.shape, "{key}");
        assert_eq!(
            burn_store::bridge::to_data(t)
                .unwrap()
                .try_to_vec::<f32>()
                .unwrap(),
            burn_store::bridge::to_data(src)
                .unwrap()
                .try_to_vec::<f32>()
                .unwrap(),
            "{key}"
        );
    }
    // The DeiT file imports as a backbone with identical outputs.
    let back = load_pretrained(&out, Some(4), &device).unwrap();
    assert!(back.moco.is_none());
    let x = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &device);
    let (a, b) = (
        loaded.backbone.forward(x.clone()).into_data(),
        back.backbone.forward(x).into_data(),
    );
    a.assert_approx_eq::<f32>(&b, burn::tensor::Tolerance::absolute(1e-6));
    // A ResNet has no DeiT layout.
    let resnet = load_pretrained(&golden("resnet_b16_l1111.pth.tar"), None, &device).unwrap();
    let err = export_deit(
        &resnet.backbone,
        &resnet.backbone_config,
        &tmp.join("r.pth"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("torchvision"), "{err}");
}

#[test]
fn every_checkpoint_kind_loads_and_mismatches_are_clear() {
    let _g = serial();
    let device = Device::flex();
    let tmp = Tmp::new("kinds");
    let config = tiny_resnet();
    device.seed(9);
    let backbone: AnyBackbone = config.init(&device);
    let x = Tensor::<4>::random([2, 1, 28, 28], burn::tensor::Distribution::Default, &device);
    let want = backbone.forward(x.clone()).into_data();
    let check = |p: &moco_train::Pretrained| {
        p.backbone
            .forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&want, burn::tensor::Tolerance::absolute(1e-6));
    };
    // A backbone-only moco checkpoint.
    save_backbone_checkpoint(&backbone, &config, &tmp.join("b.mpk")).unwrap();
    assert!(is_backbone_checkpoint(&tmp.join("b.mpk")));
    check(&load_pretrained(&tmp.join("b.mpk"), None, &device).unwrap());
    // A linear-probe-style file: backbone + classifier; the classifier is left out.
    let fc = moco_train::eval::probe::init_classifier(config.num_features(), 10, &device);
    save_classifier_model(&backbone, &config, &fc, &tmp.join("probe.safetensors")).unwrap();
    check(&load_pretrained(&tmp.join("probe.safetensors"), None, &device).unwrap());
    // A whole-model checkpoint is not mistaken for a backbone one.
    let moco_cfg = MocoConfig::for_backbone(config.clone(), 32, 16);
    let model: MoCo = moco_cfg.init(&device);
    save_checkpoint(&model, &moco_cfg, &tmp.join("m.mpk")).unwrap();
    assert!(!is_backbone_checkpoint(&tmp.join("m.mpk")));
    let loaded = load_pretrained(&tmp.join("m.mpk"), None, &device).unwrap();
    assert!(loaded.projector.is_some() && loaded.moco.is_some());

    // Names do not matter: the content says what a file is.
    for (from, to) in [
        ("b.mpk", "backbone-weights"),
        ("probe.safetensors", "probe.pth"),
        ("m.mpk", "m.safetensors"),
    ] {
        std::fs::copy(tmp.join(from), tmp.join(to)).unwrap();
        let loaded = load_pretrained(&tmp.join(to), None, &device).unwrap();
        match from {
            "m.mpk" => assert!(loaded.moco.is_some(), "{to}"),
            _ => check(&loaded),
        }
    }
    std::fs::write(tmp.join("notes.txt"), "not weights").unwrap();
    let err = load_pretrained(&tmp.join("notes.txt"), None, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("notes.txt") && err.contains("not a weight file"),
        "{err}"
    );

    // A run directory whose configuration no longer matches its checkpoint.
    let run = tmp.join("run");
    let ckpt = run.join("checkpoints/step-00000001");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join("state.json"), r#"{"step":1,"epoch":0,"batch":1}"#).unwrap();
    std::fs::copy(tmp.join("m.mpk"), ckpt.join("model.mpk")).unwrap();
    let cfg = moco_train::PretrainConfig::preset("fmnist-vit").unwrap();
    std::fs::write(
        run.join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    let err = load_pretrained(&run, None, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.mpk") && err.contains("config.json"),
        "{err}"
    );
    // Not a checkpoint at all.
    let err = load_pretrained(&tmp.0, None, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("neither a run directory"), "{err}");
    let err = load_pretrained(&tmp.join("nope.pth"), None, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.pth"), "{err}");
}

/// A `moco import` checkpoint written with Burn 0.21 (`tests/checkpoints/burn-0.21-vit_tiny_p8_32.mpk`,
/// made by `moco import tests/golden/vit_tiny_p8_32.pth.tar --heads 4`) loads to the very
/// networks of the file it was imported from: every `.mpk` a user has must stay readable.
#[test]
fn an_import_written_with_burn_0_21_loads_to_the_same_networks() {
    let device = Device::flex();
    let stored = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/checkpoints/burn-0.21-vit_tiny_p8_32.mpk");
    let old = load_pretrained(&stored, Some(4), &device).unwrap();
    let new = load_pretrained(&golden("vit_tiny_p8_32.pth.tar"), Some(4), &device).unwrap();
    let ((old_moco, old_config), (new_moco, _)) = (old.moco.unwrap(), new.moco.unwrap());
    assert_eq!(old_config.backbone, new.backbone_config);
    let x = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &device);
    let (a, b) = (
        old_moco.forward_query(x.clone()),
        new_moco.forward_query(x.clone()),
    );
    for (name, a, b) in [
        ("features", a.features, b.features),
        ("projection", a.projection, b.projection),
        ("prediction", a.prediction, b.prediction),
        (
            "key",
            old_moco.forward_key(x.clone()),
            new_moco.forward_key(x),
        ),
    ] {
        assert_eq!(a.into_data(), b.into_data(), "{name}");
    }
}
