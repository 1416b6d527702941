//! Construction, initialisation, configuration errors, BN semantics and the frozen patch
//! projection.

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::Device;
use burn::tensor::{Distribution, Tensor, TensorData};
use moco_models::state_dict::read_state_dict;
use moco_models::vit::{sincos_pos_embed, PatchEmbed};
use moco_models::*;

fn small_vit() -> VitConfig {
    VitConfig::new()
        .with_img_size(32)
        .with_patch_size(8)
        .with_embed_dim(64)
        .with_depth(2)
        .with_num_heads(4)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn golden(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden")
        .join(name)
}

fn vit_of(model: &MoCo) -> &Vit {
    match &model.base_encoder.backbone {
        AnyBackbone::Vit(v) => v,
        AnyBackbone::ResNet(_) => panic!("expected a ViT"),
    }
}

fn patchify(vit: &Vit) -> &burn::nn::conv::Conv2d {
    match &vit.patch_embed {
        PatchEmbed::Patchify(p) => &p.proj,
        PatchEmbed::ConvStem(_) => panic!("expected a patchify embedding"),
    }
}

#[test]
fn sincos_matches_moco_v3_including_non_square_grids() {
    let misc = read_state_dict(&golden("misc.expected.safetensors")).unwrap();
    for (key, h, w, d) in [
        ("sincos.h3_w5_d16", 3, 5, 16),
        ("sincos.h4_w4_d64", 4, 4, 64),
    ] {
        let want = burn_store::bridge::to_data(&misc[key])
            .unwrap()
            .try_into_vec::<f32>()
            .unwrap();
        let got = sincos_pos_embed(h, w, d);
        assert_eq!(got.len(), want.len(), "{key}");
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-6, "{key}: max error {err}");
    }
}

#[test]
fn vit_init_follows_moco_v3() {
    let device = Device::flex();
    let cfg = small_vit().with_embed_dim(96).with_num_heads(3);
    let vit = cfg.init(&device);
    let d = 96f32;
    let check_uniform = |name: &str, v: Vec<f32>, bound: f32| {
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!(
            max <= bound && max > 0.9 * bound,
            "{name}: max {max}, bound {bound}"
        );
        let want = bound / 3f32.sqrt();
        assert!(
            (std - want).abs() < 0.05 * want,
            "{name}: std {std}, want {want}"
        );
    };
    let block = &vit.blocks[0];
    check_uniform(
        "qkv",
        values(block.attn.qkv.weight.val()),
        (6.0 / (d + d)).sqrt(),
    );
    check_uniform(
        "proj",
        values(block.attn.proj.weight.val()),
        (6.0 / (d + d)).sqrt(),
    );
    check_uniform(
        "fc1",
        values(block.mlp.fc1.weight.val()),
        (6.0 / (d + 4.0 * d)).sqrt(),
    );
    check_uniform(
        "patch",
        values(patchify(&vit).weight.val()),
        (6.0 / (3.0 * 64.0 + d)).sqrt(),
    );
    for bias in [
        block.attn.qkv.bias.as_ref(),
        block.attn.proj.bias.as_ref(),
        block.mlp.fc1.bias.as_ref(),
        block.mlp.fc2.bias.as_ref(),
        patchify(&vit).bias.as_ref(),
    ] {
        assert!(values(bias.unwrap().val()).iter().all(|x| *x == 0.0));
    }
    let cls = values(vit.cls_token.val());
    let cls_std = (cls.iter().map(|x| x * x).sum::<f32>() / cls.len() as f32).sqrt();
    assert!(cls_std > 0.5e-6 && cls_std < 2e-6, "cls std {cls_std}");
    assert!(values(block.norm1.gamma.val()).iter().all(|x| *x == 1.0));
    assert_eq!(vit.pos_embed.val().dims(), [1, 17, 96]);
}

#[test]
fn resnet_init_follows_torchvision_with_zero_residual() {
    let device = Device::flex();
    let net = ResNetConfig::new(vec![1, 1]).with_width(32).init(&device);
    let w = values(net.stages[0][0].conv2.weight.val());
    let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    let want = (2.0f32 / (32.0 * 9.0)).sqrt();
    assert!(
        (std - want).abs() < 0.05 * want,
        "conv std {std}, want {want}"
    );
    let bn3 = net.stages[0][0].bn3.as_ref().unwrap();
    assert!(values(bn3.gamma.as_ref().unwrap().val())
        .iter()
        .all(|x| *x == 0.0));
    let bn1 = &net.stages[0][0].bn1;
    assert!(values(bn1.gamma.as_ref().unwrap().val())
        .iter()
        .all(|x| *x == 1.0));
    let basic = ResNetConfig::resnet18()
        .with_stem(Stem::Small)
        .init(&device);
    assert!(values(basic.stages[3][1].bn2.gamma.as_ref().unwrap().val())
        .iter()
        .all(|x| *x == 0.0));
}

#[test]
fn forward_shapes_of_every_family() {
    let device = Device::flex();
    let x = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let gray = Tensor::<4>::random([2, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let cases: Vec<(BackboneConfig, Tensor<4>, usize)> = vec![
        (BackboneConfig::Vit(small_vit()), x.clone(), 64),
        (
            BackboneConfig::Vit(
                small_vit()
                    .with_in_chans(1)
                    .with_img_size(28)
                    .with_patch_size(7),
            ),
            gray.clone(),
            64,
        ),
        (
            BackboneConfig::Vit(
                VitConfig::vit_conv_small()
                    .with_img_size(32)
                    .with_embed_dim(64)
                    .with_num_heads(4)
                    .with_depth(1),
            ),
            x.clone(),
            64,
        ),
        (
            BackboneConfig::ResNet(
                ResNetConfig::resnet18()
                    .with_stem(Stem::Small)
                    .with_width(8),
            ),
            x.clone(),
            64,
        ),
        (
            BackboneConfig::ResNet(
                ResNetConfig::new(vec![1, 1, 1])
                    .with_width(8)
                    .with_in_chans(1),
            ),
            gray,
            128,
        ),
    ];
    for (cfg, input, features) in cases {
        cfg.validate().unwrap();
        assert_eq!(cfg.num_features(), features, "{}", cfg.describe());
        let model = MocoConfig::for_backbone(cfg.clone(), 32, 16).init(&device);
        let out = model.forward_query(input.clone());
        assert_eq!(out.features.dims(), [2, features], "{}", cfg.describe());
        assert_eq!(out.prediction.dims(), [2, 16]);
        assert_eq!(model.forward_key(input).dims(), [2, 16]);
    }
}

#[test]
fn presets_have_the_papers_shapes() {
    let vit = |name: &str| match BackboneConfig::preset(name).unwrap() {
        BackboneConfig::Vit(c) => (c.embed_dim, c.depth, c.num_heads, c.patch_size, c.conv_stem),
        _ => panic!(),
    };
    assert_eq!(vit("vit_tiny"), (192, 12, 3, 16, false));
    assert_eq!(vit("vit_small"), (384, 12, 12, 16, false));
    assert_eq!(vit("vit_base"), (768, 12, 12, 16, false));
    assert_eq!(vit("vit_large"), (1024, 24, 16, 16, false));
    assert_eq!(vit("vit_huge"), (1280, 32, 16, 14, false));
    assert_eq!(vit("vit_conv_small"), (384, 11, 12, 16, true));
    assert_eq!(vit("vit_conv_base"), (768, 11, 12, 16, true));
    assert_eq!(
        BackboneConfig::preset("resnet50").unwrap().num_features(),
        2048
    );
    assert_eq!(
        BackboneConfig::preset("resnet50x4").unwrap().num_features(),
        8192
    );
    assert_eq!(
        BackboneConfig::preset("resnet18").unwrap().num_features(),
        512
    );
    for name in PRESETS {
        BackboneConfig::preset(name).unwrap().validate().unwrap();
    }
    let moco = MocoConfig::for_backbone(BackboneConfig::preset("vit_base").unwrap(), 4096, 256);
    assert_eq!(
        (
            moco.projector.num_layers,
            moco.projector.input_dim,
            moco.predictor.num_layers
        ),
        (3, 768, 2)
    );
    assert!(moco.predictor.last_bn);
    let moco = MocoConfig::for_backbone(BackboneConfig::preset("resnet50").unwrap(), 4096, 256);
    assert_eq!(
        (moco.projector.num_layers, moco.projector.input_dim),
        (2, 2048)
    );
    assert!(moco.projector.last_bn && !moco.predictor.last_bn);
}

#[test]
fn impossible_configs_are_clear_errors() {
    let msg = |r: Result<(), ModelError>| r.unwrap_err().to_string();
    assert!(
        msg(small_vit().with_embed_dim(66).with_num_heads(2).validate()).contains("divisible by 4")
    );
    assert!(msg(small_vit().with_num_heads(3).validate()).contains("not divisible by num_heads 3"));
    assert!(msg(small_vit().with_img_size(30).validate())
        .contains("img_size 30 is not divisible by patch_size 8"));
    assert!(msg(small_vit().with_conv_stem(true).validate()).contains("patch_size must be 16"));
    assert!(msg(small_vit().with_depth(0).validate()).contains("must be positive"));
    assert!(msg(ResNetConfig::new(vec![]).validate()).contains("non-empty"));
    assert!(msg(ResNetConfig::new(vec![2, 0]).validate()).contains("positive block counts"));
    let err = BackboneConfig::preset("vit_gigantic")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vit_gigantic") && err.contains("vit_small"),
        "{err}"
    );
    let mut cfg = MocoConfig::vit(small_vit(), 32, 16);
    cfg.projector.input_dim = 65;
    assert!(msg(cfg.validate()).contains("projector input_dim 65"));
}

#[test]
fn batch_norm_matches_pytorch_running_statistics() {
    let device = Device::flex().autodiff();
    let bn = BatchNormConfig::new(2).init(&device);
    let x = Tensor::<2>::from_data(
        TensorData::new(vec![1.0f32, 10.0, 2.0, 20.0, 3.0, 30.0, 6.0, 60.0], [4, 2]),
        &device,
    );
    let y = bn.forward(x);
    // Train mode: batch statistics with the biased variance.
    let (mean0, var0) = (3.0f32, (4.0f32 + 1.0 + 0.0 + 9.0) / 4.0);
    let got = y.inner().into_data().try_into_vec::<f32>().unwrap();
    assert!((got[0] - (1.0 - mean0) / (var0 + 1e-5).sqrt()).abs() < 1e-5);
    // Running statistics: momentum 0.1 and the unbiased variance, as PyTorch.
    let rm = bn
        .running_mean
        .value_sync()
        .inner()
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let rv = bn
        .running_var
        .value_sync()
        .inner()
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    assert!(
        (rm[0] - 0.3).abs() < 1e-6 && (rm[1] - 3.0).abs() < 1e-5,
        "{rm:?}"
    );
    let unbiased0 = 14.0 / 3.0;
    assert!((rv[0] - (0.9 + 0.1 * unbiased0)).abs() < 1e-5, "{rv:?}");
    // Eval mode (no autodiff) uses the running statistics.
    let eval = bn.valid();
    let x = Tensor::<2>::from_data(TensorData::new(vec![0.3f32, 3.0], [1, 2]), &device);
    let out = values(eval.forward(x));
    assert!(out[0].abs() < 1e-6 && out[1].abs() < 1e-5, "{out:?}");
}

#[test]
fn momentum_encoder_is_a_separate_gradient_free_copy() {
    let device = Device::flex().autodiff();
    let model = MocoConfig::vit(small_vit(), 32, 16).init(&device);
    let base = vit_of(&model);
    let AnyBackbone::Vit(momentum) = &model.momentum_encoder.backbone else {
        panic!()
    };
    assert_ne!(
        base.blocks[0].attn.qkv.weight.id,
        momentum.blocks[0].attn.qkv.weight.id
    );
    assert_eq!(
        base.blocks[0].attn.qkv.weight.val().inner().into_data(),
        momentum.blocks[0].attn.qkv.weight.val().inner().into_data()
    );
    let x = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let loss = model.forward_query(x.clone()).prediction.sum() + model.forward_key(x).sum();
    let grads = loss.backward();
    assert!(momentum.blocks[0]
        .attn
        .qkv
        .weight
        .val()
        .grad(&grads)
        .is_none());
    assert!(base.blocks[0].attn.qkv.weight.val().grad(&grads).is_some());
    // BN state is not shared: a query forward moves only the base projector's running mean.
    let model = MocoConfig::vit(small_vit(), 32, 16).init(&device);
    let x = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let _ = model.forward_query(x);
    let mean = |e: &Encoder| {
        e.projector.norms[0]
            .running_mean
            .value_sync()
            .inner()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
    };
    assert!(mean(&model.base_encoder).iter().any(|v| *v != 0.0));
    assert!(mean(&model.momentum_encoder).iter().all(|v| *v == 0.0));
}

/// Runs a step of AdamW with weight decay on `model` and returns the patch projection's
/// weight before and after, and whether it received a gradient.
fn adamw_step(model: MoCo) -> (TensorData, TensorData, bool, MoCo) {
    let device = Device::flex().autodiff();
    let before = patchify(vit_of(&model)).weight.val().inner().into_data();
    let x = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let out = model.forward_query(x);
    let loss = out.prediction.powf_scalar(2.0).sum() + out.features.sum();
    let grads = loss.backward();
    let had_grad = patchify(vit_of(&model)).weight.val().grad(&grads).is_some()
        || patchify(vit_of(&model))
            .bias
            .as_ref()
            .unwrap()
            .val()
            .grad(&grads)
            .is_some();
    let grads = GradientsParams::from_grads(grads, &model);
    let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
    let model = optim.step(1e-2, model, grads);
    let after = patchify(vit_of(&model)).weight.val().inner().into_data();
    (before, after, had_grad, model)
}

#[test]
fn frozen_patch_projection_never_changes() {
    let device = Device::flex().autodiff();
    let config = MocoConfig::vit(small_vit(), 32, 16);
    let (before, after, had_grad, model) = adamw_step(config.init(&device));
    assert!(!had_grad, "the frozen patch projection received a gradient");
    assert_eq!(before, after);

    // Through our checkpoint format.
    let dir = std::env::temp_dir().join(format!("moco-frozen-{}", std::process::id()));
    let path = dir.join("model.bpk");
    save_checkpoint(&model, &config, &path).unwrap();
    let (loaded, _) = load_checkpoint(&path, &device).unwrap();
    let (before, after, had_grad, _) = adamw_step(loaded);
    assert!(!had_grad);
    assert_eq!(before, after);

    // Through the PyTorch export / import path.
    let st = dir.join("model.safetensors");
    export_moco(&model, &config, &st).unwrap();
    let (imported, _) = load_moco(&st, &ImportOptions::default(), &device).unwrap();
    let (before, after, had_grad, _) = adamw_step(imported);
    assert!(!had_grad);
    assert_eq!(before, after);
    std::fs::remove_dir_all(dir).ok();

    // Control: a learned projection does train.
    let learned = MocoConfig::vit(small_vit().with_freeze_patch_embed(false), 32, 16);
    let (before, after, had_grad, _) = adamw_step(learned.init(&device));
    assert!(had_grad);
    assert_ne!(before, after);
}

/// Mixed precision: inside `autocast`, features come back in f32 and close to the f32
/// forward, and every gradient reaches the f32 parameters, close to the f32 gradient.
#[test]
fn autocast_half_precision_keeps_f32_parameters_and_gradients() {
    let device = Device::flex().autodiff();
    let configs = [
        BackboneConfig::Vit(
            VitConfig::vit_tiny()
                .with_img_size(16)
                .with_patch_size(4)
                .with_embed_dim(32)
                .with_depth(2)
                .with_num_heads(2)
                .with_freeze_patch_embed(false),
        ),
        BackboneConfig::ResNet(
            ResNetConfig::new(vec![1, 1])
                .with_block(BlockKind::Bottleneck)
                .with_width(8)
                .with_stem(Stem::Small),
        ),
    ];
    for config in configs {
        device.seed(1);
        let net: AnyBackbone = config.init(&device);
        let x = Tensor::<4>::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let grads_of = |precision: Precision| {
            let y = autocast(precision, || net.forward(x.clone()));
            assert_eq!(y.dtype(), burn::tensor::DType::F32, "{precision}");
            let values = y.clone().into_data().try_to_vec::<f32>().unwrap();
            // A fixed random projection of the features (LayerNorm makes Σy² nearly constant).
            let dims = y.dims();
            let r = Tensor::<2>::from_data(
                TensorData::new(
                    (0..dims[0] * dims[1])
                        .map(|i| ((i * 7919 % 13) as f32 - 6.0) / 6.0)
                        .collect::<Vec<_>>(),
                    dims,
                ),
                &device,
            );
            let g = GradientsParams::from_grads(y.mul(r).sum().backward(), &net);
            (values, g)
        };
        let (y32, g32) = grads_of(Precision::F32);
        for precision in [Precision::Bf16, Precision::F16] {
            let (yh, gh) = grads_of(precision);
            let scale = y32.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = y32
                .iter()
                .zip(&yh)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            // bf16 keeps 8 mantissa bits: relative errors of a few 1e-3 per product.
            assert!(err < 0.05 * scale, "{precision}: {err} vs scale {scale}");
            let mut checked = 0;
            let mut visit = |name: &str, a: Tensor<2>, b: Tensor<2>| {
                assert_eq!(b.dtype(), burn::tensor::DType::F32, "{name}");
                let (a, b) = (
                    a.into_data().try_to_vec::<f32>().unwrap(),
                    b.into_data().try_to_vec::<f32>().unwrap(),
                );
                let s = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                let e = a
                    .iter()
                    .zip(&b)
                    .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                // ViT: measured 0.8 % (bf16) and 0.1 % (f16) of the largest gradient. The
                // ResNet's convolution gradients are typically 7–8 % off in both half types on
                // the CPU backend, whose half convolutions do not accumulate in f32, and up to
                // 18 % for some initialisations (the seed is shared with concurrent tests).
                let bound = match (name, precision) {
                    ("conv1", _) => 0.3,
                    (_, Precision::Bf16) => 0.02,
                    _ => 0.005,
                };
                assert!(e < bound * s, "{precision} {name}: {e} vs {s}");
                checked += 1;
            };
            // The first and the last weight matrix of each network.
            match &net {
                AnyBackbone::Vit(v) => {
                    for (name, w) in [
                        ("qkv", &v.blocks[0].attn.qkv.weight),
                        ("fc2", &v.blocks[1].mlp.fc2.weight),
                    ] {
                        let get = |g: &GradientsParams| g.get::<2>(w.id).unwrap();
                        visit(name, get(&g32), get(&gh));
                    }
                }
                AnyBackbone::ResNet(r) => {
                    let w = &r.conv1.weight;
                    let flat = |g: &GradientsParams| {
                        let t: Tensor<4> = g.get(w.id).unwrap();
                        let [a, b, c, d] = t.dims();
                        t.reshape([a, b * c * d])
                    };
                    visit("conv1", flat(&g32), flat(&gh));
                }
            }
            assert!(checked > 0);
        }
    }
}
