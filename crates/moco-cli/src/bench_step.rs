//! `moco bench`: full training steps on synthetic data, through the same step functions as
//! the pretraining loop (both views through the base encoder and predictor, the momentum
//! update, both views through the momentum encoder, the symmetric loss, backward, the
//! gradient monitor, the optimizer step), printed as one JSON line.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use clap::Args;
use moco_train::config::OptimizerName;
use moco_train::{
    apply_step, forward_backward, measure_gradients, Method, OptimConfig, Pretrain, PretrainConfig,
    StepParams,
};
use serde::Serialize;

use crate::device::{dispatch_selected, select, BackendJob, DeviceSpec};

/// Flags of `moco bench` (the step benchmark).
#[derive(Args, Debug, Clone)]
pub struct StepBenchArgs {
    /// Start from this pretraining preset (its model, optimizer and heads).
    #[arg(long, default_value = "fmnist-vit", value_parser = clap::builder::PossibleValuesParser::new(moco_train::TRAIN_PRESETS))]
    pub preset: String,
    /// Backbone (as in pretraining); resets the preset's width/depth/heads overrides and picks
    /// AdamW (ViT) or LARS (ResNet).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(moco_models::PRESETS))]
    pub arch: Option<String>,
    /// Input side.
    #[arg(long)]
    pub img_size: Option<usize>,
    /// ViT patch size.
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// Input channels.
    #[arg(long)]
    pub in_chans: Option<usize>,
    /// ResNet input stem (default: small for images of 64 px or less).
    #[arg(long, value_parser = crate::cli::OneOf(&moco_models::Stem::ALL))]
    pub stem: Option<moco_models::Stem>,
    /// Projector / predictor hidden width.
    #[arg(long)]
    pub mlp_dim: Option<usize>,
    /// Projector / predictor output width.
    #[arg(long)]
    pub out_dim: Option<usize>,
    /// Images per step.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps first (allocation, autotune).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Pretraining method.
    #[arg(long, value_parser = crate::cli::OneOf(&Method::ALL))]
    pub method: Option<Method>,
    /// Optimizer (sgd: with momentum 0.9, for comparison).
    #[arg(long, value_parser = crate::cli::OneOf(&OptimizerName::ALL))]
    pub optimizer: Option<OptimizerName>,
    /// Backbone precision (parameters, optimizer, heads and loss in f32).
    #[arg(long, value_parser = crate::cli::OneOf(&moco_models::Precision::ALL))]
    pub precision: Option<moco_models::Precision>,
    /// The ViT's GELU: erf (Burn's tensor operations) or host-pass (one pass over the values
    /// on the host); default: the device's (host-pass on the CPU backends).
    #[arg(long)]
    pub gelu_kernel: Option<moco_models::GeluKernel>,
    /// The ViT's attention: composed (Burn's tensor operations) or fused (one operation with
    /// its own backward on the flex backend); default: the device's (fused on flex).
    #[arg(long)]
    pub attention_kernel: Option<moco_models::AttentionKernel>,
    /// The ViT's LayerNorms: backend (Burn's) or fused (one pass per row forward and backward
    /// on the flex backend); default: the device's (fused on flex).
    #[arg(long)]
    pub layer_norm_kernel: Option<moco_models::LayerNormKernel>,
    /// The ResNet's convolutions: backend, matrix-product, or matrix-product:N (up to N
    /// first-stage positions); default: the device's (matrix-product:256 on the CPU backends).
    #[arg(long)]
    pub conv_kernel: Option<moco_models::ConvKernel>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The device to run on (the help lists this build's).
    #[arg(help = crate::device::device_help(), long, default_value = "auto")]
    pub device: DeviceSpec,
}

/// What one benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepBench {
    /// Cargo feature of the backend.
    pub backend: String,
    /// Device.
    pub device: String,
    /// Backbone.
    pub arch: String,
    /// Method.
    pub method: String,
    /// Optimizer.
    pub optimizer: String,
    /// Backbone precision.
    pub precision: String,
    /// ResNet input stem (absent for ViTs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stem: Option<String>,
    /// Images per step.
    pub batch: usize,
    /// Input side.
    pub img_size: usize,
    /// Projector / predictor hidden width.
    pub mlp_dim: usize,
    /// Projector / predictor output width.
    pub out_dim: usize,
    /// CPU threads.
    pub threads: usize,
    /// Trainable parameters of the whole model.
    pub params: usize,
    /// Timed steps.
    pub steps: usize,
    /// Seconds of the timed steps.
    pub seconds: f64,
    /// Images per second.
    pub images_per_sec: f64,
    /// Mean step time.
    pub step_ms: f64,
    /// Median step time.
    pub step_ms_median: f64,
    /// Fastest step.
    pub step_ms_min: f64,
    /// Median time of each part of the step: `forward_backward` (both views, loss,
    /// backward), `gradient_norms` (the per-layer monitor), `optimizer` (clipping and update).
    pub phase_ms: PhaseMs,
    /// Peak resident memory of the process (MB).
    pub peak_rss_mb: f64,
    /// Loss of the first and the last step (sanity: finite, moving).
    pub loss: [f64; 2],
    /// The machine, the build and the date of the measurement.
    pub machine: moco_train::Machine,
}

/// Median milliseconds of the parts of a step.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseMs {
    /// Both views forward, the loss and backward.
    pub forward_backward: f64,
    /// Per-layer gradient norms.
    pub gradient_norms: f64,
    /// Clipping and the optimizer update.
    pub optimizer: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Peak resident set size of this process in MB (Linux), 0 elsewhere.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The pretraining configuration the flags describe.
pub fn bench_config(a: &StepBenchArgs) -> Result<PretrainConfig, String> {
    let mut c = PretrainConfig::preset(&a.preset)?;
    if let Some(arch) = &a.arch {
        c.model.arch = arch.clone();
        c.model.embed_dim = None;
        c.model.depth = None;
        c.model.num_heads = None;
        c.model.width = None;
        c.optimizer.name = if arch.starts_with("resnet") {
            OptimizerName::Lars
        } else {
            OptimizerName::AdamW
        };
    }
    if let Some(v) = a.img_size {
        c.model.img_size = v;
    }
    if let Some(v) = a.patch_size {
        c.model.patch_size = v;
    }
    if let Some(v) = a.in_chans {
        c.model.in_chans = v;
    }
    if a.stem.is_some() {
        c.model.stem = a.stem;
    }
    if let Some(v) = a.mlp_dim {
        c.model.mlp_dim = v;
    }
    if let Some(v) = a.out_dim {
        c.model.out_dim = v;
    }
    if let Some(v) = a.batch {
        c.schedule.batch_size = v;
    }
    if let Some(m) = a.method {
        c.method = m;
    }
    if let Some(o) = a.optimizer {
        c.optimizer.name = o;
    }
    if a.precision.is_some() {
        c.precision = a.precision;
    }
    c.model.gelu_kernel = a.gelu_kernel.or(c.model.gelu_kernel);
    c.model.attention_kernel = a.attention_kernel.or(c.model.attention_kernel);
    c.model.layer_norm_kernel = a.layer_norm_kernel.or(c.model.layer_norm_kernel);
    c.model.conv_kernel = a.conv_kernel.or(c.model.conv_kernel);
    c.schedule.grad_accum = 1;
    c.model_config().map_err(|e| e.to_string())?;
    Ok(c)
}

fn optim_of(c: &PretrainConfig) -> Result<OptimConfig, String> {
    c.optim_config()
}

struct StepJob {
    config: PretrainConfig,
    args: StepBenchArgs,
    machine: moco_train::Machine,
}

impl BackendJob for StepJob {
    type Output = Result<StepBench, String>;
    fn run(self, device: Device) -> Self::Output {
        let c = &self.config;
        let model_config = c.model_config().map_err(|e| e.to_string())?;
        let optim = optim_of(c)?;
        let precision = c.precision.unwrap_or_default();
        if !precision.supported_on(&device) {
            return Err(format!(
                "{} cannot compute in {precision}",
                self.args.device
            ));
        }
        // The measured step trains: under autodiff on the device.
        let device = device.autodiff();
        device.seed(c.seed);
        match c.method {
            Method::SimClr => measure::<_>(
                Method::simclr(&model_config, &device),
                optim,
                &self,
                &device,
            ),
            m => measure::<_>(m.siamese(&model_config, &device), optim, &self, &device),
        }
    }
}

fn measure<M: Pretrain>(
    mut model: M,
    optim: OptimConfig,
    job: &StepJob,
    device: &Device,
) -> Result<StepBench, String> {
    let c = &job.config;
    let mut optim = optim.init();
    let shape = [
        c.schedule.batch_size,
        c.model.in_chans,
        c.model.img_size,
        c.model.img_size,
    ];
    let x1 = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let x2 = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let params = StepParams {
        temperature: c.temperature,
        momentum: c.schedule.momentum,
    };
    let lr = c.peak_lr();
    let n_params = model.num_params();
    let mut times = Vec::new();
    let mut phases = [Vec::new(), Vec::new(), Vec::new()];
    let mut losses = Vec::new();
    for i in 0..job.args.warmup + job.args.steps {
        let start = Instant::now();
        let (loss, grads);
        (model, loss, grads) = forward_backward(
            model,
            x1.clone(),
            x2.clone(),
            &params,
            1.0,
            c.precision.unwrap_or_default(),
        );
        let t1 = Instant::now();
        let (_, global) = measure_gradients(&model, &grads);
        let t2 = Instant::now();
        model = apply_step(model, &mut optim, grads, global, lr, c.optimizer.clip_grad);
        // Wait for queued work (GPU backends run asynchronously).
        let _ = device.sync();
        let t3 = Instant::now();
        if !loss.is_finite() {
            return Err(format!("step {}: non-finite loss {loss}", i + 1));
        }
        if i >= job.args.warmup {
            times.push((t3 - start).as_secs_f64());
            for (p, d) in phases.iter_mut().zip([t1 - start, t2 - t1, t3 - t2]) {
                p.push(1e3 * d.as_secs_f64());
            }
            losses.push(loss);
        }
    }
    // Wait for queued work (GPU backends run asynchronously).
    let _ = device.sync();
    let seconds: f64 = times.iter().sum();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let steps = times.len().max(1);
    Ok(StepBench {
        backend: job.args.device.feature().to_string(),
        device: job.args.device.to_string(),
        arch: c.model.arch.clone(),
        method: c.method.to_string(),
        optimizer: c.optimizer.name.to_string(),
        precision: c.precision.unwrap_or_default().to_string(),
        stem: match c.model_config().map(|m| m.backbone) {
            Ok(moco_models::BackboneConfig::ResNet(r)) => {
                Some(format!("{:?}", r.stem).to_ascii_lowercase())
            }
            _ => None,
        },
        batch: c.schedule.batch_size,
        img_size: c.model.img_size,
        mlp_dim: c.model.mlp_dim,
        out_dim: c.model.out_dim,
        threads: job.args.threads.unwrap_or_else(rayon::current_num_threads),
        params: n_params,
        steps: times.len(),
        seconds,
        images_per_sec: (c.schedule.batch_size * times.len()) as f64 / seconds.max(1e-12),
        step_ms: 1e3 * seconds / steps as f64,
        step_ms_median: 1e3 * sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        step_ms_min: 1e3 * sorted.first().copied().unwrap_or(0.0),
        phase_ms: PhaseMs {
            forward_backward: median(&phases[0]),
            gradient_norms: median(&phases[1]),
            optimizer: median(&phases[2]),
        },
        peak_rss_mb: peak_rss_mb(),
        loss: [
            losses.first().copied().unwrap_or(f64::NAN),
            losses.last().copied().unwrap_or(f64::NAN),
        ],
        machine: job.machine.clone(),
    })
}

/// Runs `moco bench` with `args`.
pub fn run_step_bench(args: &StepBenchArgs) -> Result<StepBench, String> {
    if args.steps == 0 {
        return Err("--steps must be positive".into());
    }
    // As training does (`Trainer::run`): freed buffers are reused by the next step.
    moco_train::memory::keep_freed_memory();
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| format!("--threads: {e}"))?;
    }
    let config = bench_config(args)?;
    // The report names the device that ran, also when `auto` chose it.
    let mut args = args.clone();
    let selected = select(&args.device).map_err(|e| e.to_string())?;
    args.device = selected.spec.clone();
    let machine = crate::device::machine(&selected);
    dispatch_selected(
        selected,
        config.precision.unwrap_or_default(),
        StepJob {
            config,
            args,
            machine,
        },
    )
    .map_err(|e| e.to_string())?
}
