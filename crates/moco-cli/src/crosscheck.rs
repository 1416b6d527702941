//! The differential test of a backend: the same model, weights and images on the device under
//! test and on the CPU backend (flex, proven against PyTorch by the golden cases), over a grid
//! of architectures, input sizes, stage lists, widths and batch sizes. Each case records one
//! MoCo v3 step on both ([`crate::parity::record_step`]: eval forward, queries, keys, loss,
//! every gradient, the state after the optimizer step) and holds the device's record to the
//! CPU's with the parity tolerances.

use burn::prelude::*;
use burn::tensor::Distribution;
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::ModuleSnapshot;
use moco_models::{BlockKind, Kernels, MocoConfig, ResNetConfig, Stem, VitConfig};
use moco_train::OptimConfig;

use crate::parity::{compare_records, family, record_step, CaseReport, StepKind, StepSpec};

/// One point of the grid.
#[derive(Clone, Debug)]
pub struct CrossCase {
    /// Short name saying what varies.
    pub name: String,
    /// The model.
    pub config: MocoConfig,
    /// Square image side.
    pub img: usize,
    /// Images per view.
    pub batch: usize,
    /// AdamW (ViTs) or LARS (ResNets).
    pub optim: OptimConfig,
    /// Learning rate of the step.
    pub lr: f64,
}

/// How many cases to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Grid {
    /// A few cases covering every layer type, odd sizes and both stems (minutes on a
    /// software Vulkan driver).
    Small,
    /// Input sizes from 28 to 72 px, several stage lists, widths and batch sizes.
    Full,
}

fn resnet(
    img: usize,
    layers: &[usize],
    width: usize,
    block: BlockKind,
    stem: Stem,
    batch: usize,
) -> CrossCase {
    let r = ResNetConfig::new(layers.to_vec())
        .with_width(width)
        .with_block(block)
        .with_stem(stem)
        // Each residual branch starts from a small last-BN scale (see `residual_scale`).
        .with_zero_init_residual(true);
    CrossCase {
        name: format!(
            "resnet {img}px {layers:?} w{width} {} {} b{batch}",
            match block {
                BlockKind::Basic => "basic",
                BlockKind::Bottleneck => "bottleneck",
            },
            match stem {
                Stem::ImageNet => "imagenet-stem",
                Stem::Small => "small-stem",
            }
        ),
        config: MocoConfig::resnet(r, 64, 32),
        img,
        batch,
        optim: OptimConfig::lars(1e-4),
        lr: 0.1,
    }
}

#[allow(clippy::too_many_arguments)]
fn vit(
    img: usize,
    patch: usize,
    dim: usize,
    depth: usize,
    heads: usize,
    in_chans: usize,
    conv_stem: bool,
    batch: usize,
) -> CrossCase {
    let v = VitConfig::new()
        .with_img_size(img)
        .with_patch_size(patch)
        .with_embed_dim(dim)
        .with_depth(depth)
        .with_num_heads(heads)
        .with_in_chans(in_chans)
        .with_conv_stem(conv_stem)
        .with_freeze_patch_embed(!conv_stem);
    CrossCase {
        name: format!(
            "vit {img}px p{patch} d{dim} x{depth} h{heads} c{in_chans}{} b{batch}",
            if conv_stem { " conv-stem" } else { "" }
        ),
        config: MocoConfig::vit(v, 64, 32),
        img,
        batch,
        optim: OptimConfig::adamw(0.1),
        lr: 1e-3,
    }
}

impl CrossCase {
    /// The ViT with its linear patch projection trained (the paper's unstable baseline).
    fn learned_projection(mut self) -> Self {
        if let moco_models::BackboneConfig::Vit(v) = &mut self.config.backbone {
            v.freeze_patch_embed = false;
        }
        self.name.push_str(" learned-projection");
        self
    }
}

impl Grid {
    /// The `--grid` help: each grid with its number of cases.
    pub fn help() -> String {
        format!(
            "small ({} cases: every layer type, odd sizes, both stems) or full ({} cases: input \
             sizes 28–72 px, stage lists, widths, batches)",
            Grid::Small.cases().len(),
            Grid::Full.cases().len()
        )
    }

    /// The cases of this grid.
    pub fn cases(self) -> Vec<CrossCase> {
        use BlockKind::{Basic, Bottleneck};
        use Stem::{ImageNet, Small};
        // Batches of 8 or more: BatchNorm over fewer samples is ill-conditioned (over two it
        // maps any pair to ±1 and its gradient is rounding noise), and two correct
        // formulations would differ beyond the tolerances.
        let mut cases = vec![
            resnet(32, &[1, 1, 1, 1], 8, Bottleneck, ImageNet, 8),
            resnet(28, &[1, 1], 8, Basic, Small, 8),
            resnet(40, &[1, 1, 1], 8, Bottleneck, ImageNet, 8),
            resnet(57, &[2, 1], 8, Basic, ImageNet, 8),
            vit(32, 8, 64, 2, 4, 3, false, 8),
            vit(28, 7, 48, 1, 3, 1, false, 8),
            vit(48, 16, 64, 1, 2, 3, true, 8),
            vit(32, 4, 64, 1, 4, 3, false, 8).learned_projection(),
        ];
        if self == Grid::Full {
            for img in (28..=72).step_by(4) {
                cases.push(resnet(img, &[1, 1, 1, 1], 8, Bottleneck, ImageNet, 8));
            }
            for img in [29, 33, 45, 63, 71] {
                cases.push(resnet(img, &[1, 1, 1], 8, Basic, ImageNet, 8));
            }
            for (layers, width, block) in [
                (vec![2, 2], 16, Basic),
                (vec![1, 2, 1], 4, Bottleneck),
                (vec![3], 8, Basic),
            ] {
                for img in [28, 32, 36] {
                    cases.push(resnet(img, &layers, width, block, Small, 8));
                }
            }
            for batch in [9, 12, 16] {
                cases.push(resnet(64, &[1, 1, 1, 1], 16, Bottleneck, ImageNet, batch));
            }
            for (img, patch, dim, depth, heads) in
                [(32, 4, 64, 2, 2), (56, 8, 96, 2, 6), (72, 12, 128, 1, 8)]
            {
                cases.push(vit(img, patch, dim, depth, heads, 3, false, 8));
            }
            cases.push(vit(64, 16, 128, 2, 4, 1, true, 10));
            cases.push(vit(56, 7, 64, 2, 2, 1, false, 8).learned_projection());
        }
        cases
    }
}

/// `config` running `kernels`.
fn with_kernels(config: &MocoConfig, kernels: Kernels) -> MocoConfig {
    let mut config = config.clone();
    match &mut config.backbone {
        moco_models::BackboneConfig::Vit(v) => {
            v.gelu_kernel = Some(kernels.gelu);
            v.attention_kernel = Some(kernels.attention);
            v.layer_norm_kernel = Some(kernels.layer_norm);
        }
        moco_models::BackboneConfig::ResNet(r) => r.conv_kernel = Some(kernels.conv),
    }
    config
}

/// Sets the scale of every residual branch's last BN to `scale`. MoCo v3 starts it at zero,
/// which zeroes the branch's output and the gradients of its convolutions: nothing of them
/// would be compared. At full scale (1) the branches add up and make the step so
/// ill-conditioned that two correct f32 formulations on the CPU differ beyond the tolerances.
fn residual_scale(resnet: &mut moco_models::ResNet, scale: f32, device: &Device) {
    for block in resnet.stages.iter_mut().flatten() {
        let last = match &mut block.bn3 {
            Some(bn3) => bn3,
            None => &mut block.bn2,
        };
        if let Some(gamma) = &mut last.gamma {
            let [c] = gamma.dims();
            let id = gamma.id;
            let require_grad = gamma.is_require_grad();
            *gamma = burn::module::Param::initialized(
                id,
                Tensor::full([c], scale, device).set_require_grad(require_grad),
            );
        }
    }
}

/// `snapshots` with every BN's running mean and variance replaced by values a checkpoint
/// taken mid-training could hold (mean ~ ±0.3, variance in [0.5, 1.5]), so that the eval
/// forward tests how the statistics are applied (fresh ones, 0 and 1, would hide it).
fn with_running_statistics(snapshots: Vec<PackTensor>, seed: u64) -> Vec<PackTensor> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        // xorshift64*: enough for test values.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    };
    snapshots
        .into_iter()
        .map(|snap| {
            let path = snap.name.clone();
            let value: Option<Box<dyn FnMut() -> f32>> = if path.ends_with("running_mean") {
                Some(Box::new(|| 0.6 * uniform() - 0.3))
            } else if path.ends_with("running_var") {
                Some(Box::new(|| 0.5 + uniform()))
            } else {
                None
            };
            match (value, snap.param_id) {
                (Some(mut value), Some(id)) => {
                    let n = snap.shape.num_elements();
                    let data = TensorData::new(
                        (0..n).map(|_| value()).collect::<Vec<_>>(),
                        snap.shape.clone(),
                    );
                    burn_store::bridge::from_data(data, path, Some(id))
                }
                _ => snap,
            }
        })
        .collect()
}

/// Runs `case` on `device` and on the CPU (flex) from the same weights and images, and
/// compares the two records. `seed` fixes the weights and the images.
///
/// `kernels` fixes the formulations the device's model runs (by default its device's own,
/// see [`moco_models::Kernels::for_device`]); on the CPU backend with [`Kernels::BACKEND`] it
/// measures how far two correct formulations drift apart on a case.
pub fn run_cross_case(
    case: &CrossCase,
    seed: u64,
    kernels: Option<Kernels>,
    device: &Device,
) -> Result<CaseReport, String> {
    case.config.validate().map_err(|e| e.to_string())?;
    // Both sides run the training step: under autodiff.
    let device = &device.clone().autodiff();
    let cpu = Device::flex().autodiff();
    cpu.seed(seed);
    // The reference runs the host formulations at every size (those the golden cases prove),
    // the second CPU run Burn's own kernels: two exact f32 computations of the same step.
    let mut reference = with_kernels(&case.config, Kernels::CPU_EVERYWHERE).init(&cpu);
    for encoder in [&mut reference.base_encoder, &mut reference.momentum_encoder] {
        if let moco_models::AnyBackbone::ResNet(r) = &mut encoder.backbone {
            residual_scale(r, 0.25, &cpu);
        }
    }
    let statistics = with_running_statistics(reference.collect(None, None, false), seed);
    let applied = reference.apply(statistics, None, None, false);
    if !applied.is_success() {
        return Err(format!(
            "{}: setting the BN statistics failed: {applied}",
            case.name
        ));
    }
    let in_chans = match &case.config.backbone {
        moco_models::BackboneConfig::Vit(v) => v.in_chans,
        moco_models::BackboneConfig::ResNet(r) => r.in_chans,
    };
    let shape = [case.batch, in_chans, case.img, case.img];
    let view = || Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &cpu).into_data();
    let (x1, x2) = (view(), view());

    let config = match kernels {
        Some(k) => with_kernels(&case.config, k),
        None => case.config.clone(),
    };
    let mut model = config.init(device);
    let applied = model.apply(reference.collect(None, None, false), None, None, false);
    if !applied.is_success() {
        return Err(format!(
            "{}: copying the weights failed: {applied}",
            case.name
        ));
    }
    let spec = StepSpec {
        temperature: 0.2,
        momentum: 0.99,
        optim: case.optim.clone(),
        lr: case.lr,
    };
    let fam = family(&case.config.backbone);
    // The same step on the CPU with Burn's own kernels instead of the host formulations: how
    // far two exact f32 computations drift apart on this case (the noise floor).
    let mut second = with_kernels(&case.config, Kernels::BACKEND).init(&cpu);
    let applied = second.apply(reference.collect(None, None, false), None, None, false);
    if !applied.is_success() {
        return Err(format!(
            "{}: copying the weights failed: {applied}",
            case.name
        ));
    }
    let spread = record_step(second, fam, x1.clone(), x2.clone(), &spec, &cpu)?;
    let expected = record_step(reference, fam, x1.clone(), x2.clone(), &spec, &cpu)?;
    let actual = record_step(model, fam, x1, x2, &spec, device)?;
    let step = StepKind {
        adamw: matches!(case.optim.kind, moco_train::OptimizerKind::AdamW { .. }),
        lr: case.lr,
    };
    Ok(CaseReport {
        tag: case.name.clone(),
        checks: compare_records(&actual, &expected, step, Some(&spread)),
    })
}
