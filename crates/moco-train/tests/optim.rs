//! Optimizer state survives a save/load round trip; LARS leaves 1-D parameters undecayed.

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Tensor};
use moco_models::checkpoint::{apply_tensors, module_bytes, read_tensors};
use moco_models::{MocoConfig, ResNetConfig, VitConfig};
use moco_train::{Method, OptimConfig, Pretrain, Siamese, StepParams};

fn step(model: Siamese, optim: &mut ModuleOptimizer, seed: u64) -> Siamese {
    let device = Device::flex().autodiff();
    device.seed(seed);
    let x1 = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let x2 = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let (model, out) = model.forward_loss(
        x1,
        x2,
        &StepParams {
            temperature: 0.2,
            momentum: 0.99,
        },
    );
    let grads = GradientsParams::from_grads(out.loss.backward(), &model);
    optim.step(1e-2, model, grads)
}

fn params(model: &Siamese) -> Vec<Vec<f32>> {
    moco_models::export::torch_state_dict(&model.model, moco_models::keys::Family::Vit)
        .into_iter()
        .map(|(_, d)| d.try_into_vec::<f32>().unwrap())
        .collect()
}

#[test]
fn optimizer_state_round_trips() {
    let device = Device::flex().autodiff();
    let vit = VitConfig::new()
        .with_img_size(32)
        .with_patch_size(8)
        .with_embed_dim(32)
        .with_depth(1)
        .with_num_heads(2);
    let resnet = ResNetConfig::new(vec![1, 1]).with_width(8);
    for (config, optim_config) in [
        (MocoConfig::vit(vit, 32, 16), OptimConfig::adamw(0.1)),
        (MocoConfig::resnet(resnet, 32, 16), OptimConfig::lars(1e-4)),
    ] {
        let mut optim = optim_config.init();
        let model = Method::MocoV3.siamese(&config, &device);
        let model = step(model, &mut optim, 1);
        let model = step(model, &mut optim, 2);
        // Save the optimizer state and the model, and load them into fresh ones.
        let bytes = optim.into_bytes().unwrap();
        let mut restored = optim_config.init().from_bytes(bytes).unwrap();
        let file = std::env::temp_dir().join(format!("moco-optim-{}.bpk", std::process::id()));
        std::fs::write(&file, module_bytes(&model, &[]).unwrap()).unwrap();
        let (_, tensors) = read_tensors(&file).unwrap();
        let _ = std::fs::remove_file(&file);
        let copy = apply_tensors(Method::MocoV3.siamese(&config, &device), tensors, &file).unwrap();
        let a = step(model, &mut optim, 3);
        let b = step(copy, &mut restored, 3);
        assert_eq!(params(&a), params(&b), "{optim_config:?}");
        // A fresh optimizer (no moments) would have taken a different step.
        let mut fresh = optim_config.init();
        let c = step(b.clone(), &mut fresh, 4);
        let d = step(b, &mut restored, 4);
        assert_ne!(params(&c), params(&d), "{optim_config:?}");
    }
}
