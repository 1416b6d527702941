//! The pretraining loop: schedules, the monitors, metrics, checkpoints, exact resume and the
//! non-finite guard.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::prelude::*;
use serde_json::json;

use crate::config::PretrainConfig;
use crate::data::{prepare_data, RunData};
use crate::distributed::{CollectiveBackend, DataParallel};
use crate::knn::{knn_evaluate, KnnConfig, KnnResult};
use crate::method::{Method, Pretrain, StepParams};
use crate::monitor::{DipDetector, SpikeDetector};
use crate::run_state::{self, RunPosition};
use crate::schedule;
use crate::step::{apply_step, forward_backward, measure_gradients};
use crate::TrainError;

/// How to run (as opposed to what to train, which is the [`PretrainConfig`]).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from the newest checkpoint of the run directory.
    pub resume: bool,
    /// Set from elsewhere (Ctrl-C) to save a checkpoint and stop after the current step.
    pub stop: Option<Arc<AtomicBool>>,
    /// Stop (with a checkpoint) after this many steps, as an interruption would.
    pub stop_after: Option<u64>,
    /// No progress lines.
    pub quiet: bool,
    /// The other machines of a multi-node data-parallel run.
    pub cluster: Option<crate::distributed::Cluster>,
    /// How long a data-parallel run waits for its group to form, or for a step to finish,
    /// before it gives up (30 minutes when absent).
    pub collective_timeout: Option<std::time::Duration>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// Optimizer steps at the end.
    pub steps: u64,
    /// Loss of every step this invocation ran, in order.
    pub losses: Vec<f64>,
    /// kNN of the network before training (absent when resuming).
    pub initial_knn: Option<KnnResult>,
    /// Last kNN evaluation.
    pub final_knn: Option<KnnResult>,
    /// Best kNN top-1 seen.
    pub best_top1: Option<f64>,
    /// Gradient spikes detected.
    pub spikes: usize,
    /// kNN dips detected.
    pub dips: usize,
    /// Steps skipped for non-finite values.
    pub skipped_steps: u64,
    /// Stopped early by the stop flag or `stop_after`.
    pub interrupted: bool,
    /// The newest checkpoint.
    pub checkpoint: Option<PathBuf>,
}

/// Pretrains as `config` says, writing `config.json`, `metrics.jsonl` and checkpoints to
/// `run_dir`. With `options.resume`, the stored configuration and newest checkpoint are used.
pub fn pretrain<B: CollectiveBackend>(
    config: PretrainConfig,
    run_dir: &Path,
    options: &RunOptions,
    device: &B::Device,
) -> Result<RunSummary, TrainError> {
    pretrain_data_parallel::<B>(config, run_dir, options, std::slice::from_ref(device))
}

/// [`pretrain`] with one replica per device of `devices` (data parallelism: each device
/// computes its shard of every batch, see [`crate::distributed`]); the first device holds the
/// model that is evaluated and checkpointed. One device is the single-device run.
pub fn pretrain_data_parallel<B: CollectiveBackend>(
    config: PretrainConfig,
    run_dir: &Path,
    options: &RunOptions,
    devices: &[B::Device],
) -> Result<RunSummary, TrainError> {
    let Some(device) = devices.first() else {
        return Err(TrainError::Config("no device given".into()));
    };
    let world = devices.len() * options.cluster.as_ref().map_or(1, |c| c.nodes);
    let micro = config.batch_size / config.grad_accum.max(1);
    if world > 1 && !micro.is_multiple_of(world) {
        return Err(TrainError::Config(format!(
            "the batch of {micro} images per micro-batch cannot be split evenly over {world} devices"
        )));
    }
    let config_path = run_dir.join("config.json");
    let config = if options.resume {
        let text = std::fs::read_to_string(&config_path).map_err(|e| {
            TrainError::Io(format!("{}: cannot resume: {e}", config_path.display()))
        })?;
        serde_json::from_str::<PretrainConfig>(&text)
            .map_err(|e| TrainError::Config(format!("{}: {e}", config_path.display())))?
    } else {
        if !run_state::list_checkpoints(run_dir).is_empty() {
            return Err(TrainError::Config(format!(
                "{} already holds checkpoints: pass --resume to continue it, or choose another --out",
                run_dir.display()
            )));
        }
        config
    };
    config.validate().map_err(TrainError::Config)?;
    let precision = config.precision.unwrap_or_default();
    if !precision.supported_on::<B>(device) {
        return Err(TrainError::Config(format!(
            "this device cannot compute in {precision}: use --precision f32"
        )));
    }
    std::fs::create_dir_all(run_dir)
        .map_err(|e| TrainError::Io(format!("{}: {e}", run_dir.display())))?;
    if !options.resume {
        moco_models::write_atomic(
            &config_path,
            serde_json::to_string_pretty(&config)
                .expect("config")
                .as_bytes(),
        )?;
    }
    let data = prepare_data(&config)?;
    if !options.quiet {
        println!("{}", data.note);
    }
    B::seed(device, config.seed);
    let model_config = config.model_config()?;
    let optim = config.optim_config().map_err(TrainError::Config)?;
    match config.method {
        Method::SimClr => {
            let model = Method::simclr::<B>(&model_config, device);
            run_loop(
                model,
                || optim.init(),
                &config,
                &data,
                run_dir,
                options,
                devices,
            )
        }
        method => {
            let model = method.siamese::<B>(&model_config, device);
            run_loop(
                model,
                || optim.init(),
                &config,
                &data,
                run_dir,
                options,
                devices,
            )
        }
    }
}

pub(crate) fn format_eta(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Progress output: one self-updating status line with a bar on a terminal, plain lines
/// otherwise.
struct Progress {
    quiet: bool,
    tty: bool,
    open: bool,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        Progress {
            quiet,
            tty: std::io::stdout().is_terminal(),
            open: false,
        }
    }

    /// A permanent line (ends the status line first).
    fn line(&mut self, text: &str) {
        if self.quiet {
            return;
        }
        if self.open {
            println!();
            self.open = false;
        }
        println!("{text}");
    }

    /// Ends the status line, if one is showing.
    fn finish(&mut self) {
        if self.open {
            println!();
            self.open = false;
        }
    }

    /// The status line: redrawn in place on a terminal, printed when `log` otherwise.
    fn status(&mut self, done: u64, total: u64, text: &str, log: bool) {
        if self.quiet {
            return;
        }
        if self.tty {
            let width = 24;
            let filled = (width as u64 * done / total.max(1)) as usize;
            print!(
                "\r\x1b[K[{}{}] {text}",
                "#".repeat(filled),
                ".".repeat(width - filled)
            );
            let _ = std::io::stdout().flush();
            self.open = true;
        } else if log {
            println!("{text}");
        }
    }
}

struct Metrics {
    file: Option<std::fs::File>,
}

impl Metrics {
    fn open(run_dir: &Path, resume_step: Option<u64>, enabled: bool) -> Result<Self, TrainError> {
        if !enabled {
            return Ok(Metrics { file: None });
        }
        let path = run_dir.join("metrics.jsonl");
        // On resume, drop what was logged after the checkpoint: those steps run again.
        let kept = match resume_step {
            Some(step) => std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            None => String::new(),
        };
        std::fs::write(&path, kept)
            .map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
        Ok(Metrics { file: Some(file) })
    }

    fn log(&mut self, value: serde_json::Value) {
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{value}");
        }
    }
}

fn run_loop<B, M, O>(
    mut model: M,
    make_optim: impl Fn() -> O,
    config: &PretrainConfig,
    data: &RunData,
    run_dir: &Path,
    options: &RunOptions,
    devices: &[B::Device],
) -> Result<RunSummary, TrainError>
where
    B: CollectiveBackend,
    M: Pretrain<B> + 'static,
    M::InnerModule: Send,
    O: Optimizer<M, B> + Send + 'static,
    O::Record: Send,
{
    let device = &devices[0];
    let mut optim = make_optim();
    let mut pos = RunPosition {
        step: 0,
        epoch: 0,
        batch: 0,
        skipped_steps: 0,
    };
    let mut summary = RunSummary::default();
    if options.resume {
        let Some(latest) = run_state::list_checkpoints(run_dir).pop() else {
            return Err(TrainError::Config(format!(
                "{}: no checkpoint to resume from",
                run_dir.display()
            )));
        };
        (model, optim, pos) = run_state::load(&latest, model, optim, device)?;
        if !options.quiet {
            println!("resuming from {} (step {})", latest.display(), pos.step);
        }
        summary.checkpoint = Some(latest);
    }
    let replicas = if devices.len() > 1 || options.cluster.is_some() {
        let dp = DataParallel::<B>::start(
            &model,
            &optim,
            &make_optim,
            devices,
            options.cluster.clone(),
            options
                .collective_timeout
                .unwrap_or(std::time::Duration::from_secs(1800)),
            config.precision.unwrap_or_default(),
        )?;
        if !options.quiet {
            println!(
                "data parallel over {} replicas{}: {} images per replica and micro-batch, SyncBN, keys gathered from every replica",
                dp.world_size(),
                options.cluster.as_ref().map(|c| format!(" on {} nodes (this is node {})", c.nodes, c.node_rank)).unwrap_or_default(),
                config.batch_size / config.grad_accum.max(1) / dp.world_size()
            );
        }
        Some(dp)
    } else {
        None
    };
    // Evaluation, metrics and checkpoints happen on the first machine only.
    let main = replicas.as_ref().is_none_or(|dp| dp.is_main());
    let mut metrics = Metrics::open(run_dir, options.resume.then_some(pos.step), main)?;
    let micro_per_epoch = data.train.batches_per_epoch();
    let accum = config.grad_accum;
    let steps_per_epoch = (micro_per_epoch / accum).max(1);
    // The schedule in epochs; `steps` rescales it to a fixed number of steps.
    let (epochs, warmup) = match config.steps {
        Some(s) => {
            let e = s as f64 / steps_per_epoch as f64;
            (e, config.warmup_epochs * e / config.epochs)
        }
        None => (config.epochs, config.warmup_epochs),
    };
    let schedule_steps = (epochs * steps_per_epoch as f64).round() as u64;
    let total = config
        .max_steps
        .map_or(schedule_steps, |m| m.min(schedule_steps));
    let lr_peak = schedule::scaled_lr(config.base_lr, config.batch_size);
    let knn_cfg = KnnConfig {
        k: config.knn_k,
        temperature: config.knn_temperature,
        chunk: 512,
    };
    let mut spikes = SpikeDetector::new(config.spike_factor, config.spike_window);
    let mut dips = match config.dip_threshold {
        Some(points) => DipDetector::new(points),
        None => DipDetector::scaled(data.eval.dataset().len()),
    };
    summary.skipped_steps = pos.skipped_steps;

    let mut progress = Progress::new(options.quiet);
    let evaluate = |progress: &mut Progress,
                    model: &M,
                    step: u64,
                    summary: &mut RunSummary,
                    metrics: &mut Metrics,
                    dips: &mut DipDetector|
     -> Result<(), TrainError> {
        let started = Instant::now();
        let backbone = model.backbone().valid();
        let r =
            knn_evaluate::<B::InnerBackend>(&backbone, &data.memory, &data.eval, &knn_cfg, device)?;
        metrics.log(json!({"type": "knn", "step": step, "top1": r.top1, "top5": r.top5, "seconds": started.elapsed().as_secs_f64()}));
        if let Some(d) = dips.observe(step, r.top1) {
            metrics
                .log(json!({"type": "dip", "step": d.step, "before": d.before, "after": d.after}));
            summary.dips += 1;
        }
        summary.best_top1 = Some(summary.best_top1.map_or(r.top1, |b: f64| b.max(r.top1)));
        summary.final_knn = Some(r);
        progress.line(&format!(
            "knn @ step {step}: top-1 {:.2}%, top-5 {:.2}% ({:.1}s)",
            r.top1,
            r.top5,
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    };

    if !options.resume && main {
        evaluate(
            &mut progress,
            &model,
            0,
            &mut summary,
            &mut metrics,
            &mut dips,
        )?;
        summary.initial_knn = summary.final_knn;
    }
    if !options.quiet {
        println!(
            "training {} steps ({} per epoch, batch {}{}), lr {:.2e}, {} parameters",
            total,
            steps_per_epoch,
            config.batch_size,
            if accum > 1 {
                format!(" in {accum} micro-batches")
            } else {
                String::new()
            },
            lr_peak,
            model.num_params()
        );
    }
    let started = Instant::now();
    let start_step = pos.step;
    let (mut window_start, mut window_images, mut window_wait) = (Instant::now(), 0usize, 0f64);
    'epochs: while pos.step < total {
        let mut batches = data.train.epoch(pos.epoch, pos.batch);
        loop {
            if pos.step >= total {
                break 'epochs;
            }
            // One optimizer step over `accum` micro-batches.
            let mut accumulator = burn::optim::GradientsAccumulator::<M>::new();
            let mut loss_sum = 0f64;
            let mut images = 0usize;
            // MoCo v3 takes the learning rate and the momentum of iteration i of an epoch of N
            // at the fractional epoch `epoch + i/N`: where the step's first batch starts.
            let mut step_epoch = 0f64;
            for micro in 0..accum {
                let wait = Instant::now();
                let Some(batch) = batches.next() else {
                    pos.epoch += 1;
                    pos.batch = 0;
                    continue 'epochs;
                };
                let batch = batch?;
                window_wait += wait.elapsed().as_secs_f64();
                pos.batch += 1;
                images += batch.shape[0];
                let epoch_f = pos.epoch as f64 + (pos.batch - 1) as f64 / micro_per_epoch as f64;
                let shape = batch.shape;
                let to_tensor =
                    |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, shape), device);
                let mut views = batch.views.into_iter();
                let (Some(v1), Some(v2)) = (views.next(), views.next()) else {
                    return Err(TrainError::Config(
                        "the loader produced one view, two are needed".into(),
                    ));
                };
                // The EMA runs once per optimizer step.
                let m = if micro == 0 {
                    step_epoch = epoch_f;
                    schedule::momentum(epoch_f, config.momentum, epochs)
                } else {
                    1.0
                };
                let params = StepParams {
                    temperature: config.temperature,
                    momentum: m,
                };
                let (value, grads);
                (model, value, grads) = match &replicas {
                    Some(dp) => {
                        dp.micro_step(model, [v1, v2], shape, &params, 1.0 / accum as f64, device)?
                    }
                    None => forward_backward(
                        model,
                        to_tensor(v1),
                        to_tensor(v2),
                        &params,
                        1.0 / accum as f64,
                        config.precision.unwrap_or_default(),
                    ),
                };
                loss_sum += value;
                accumulator.accumulate(&model, grads);
            }
            let grads = accumulator.grads();
            let loss = loss_sum / accum as f64;
            let epoch_f = step_epoch;
            let lr = schedule::learning_rate(epoch_f, lr_peak, warmup, epochs);
            let (grads, loss) = match &replicas {
                Some(dp) => dp.reduce(
                    grads,
                    loss,
                    lr,
                    config.clip_grad,
                    config.skip_nonfinite,
                    device,
                )?,
                None => (grads, loss),
            };
            let (norms, global) = measure_gradients(&model, &grads);
            let step = pos.step + 1;
            if !loss.is_finite() || !global.is_finite() {
                let layer = norms
                    .iter()
                    .find(|(_, n)| !n.is_finite())
                    .map(|(l, _)| l.clone());
                metrics.log(json!({"type": "nonfinite", "step": step, "loss": loss.to_string(), "layer": layer}));
                if config.skip_nonfinite {
                    pos.skipped_steps += 1;
                    summary.skipped_steps = pos.skipped_steps;
                    pos.step = step;
                    continue;
                }
                return Err(TrainError::NonFinite {
                    step,
                    loss,
                    layer: layer.unwrap_or_else(|| "none (the loss itself)".into()),
                    checkpoint: run_state::list_checkpoints(run_dir).pop(),
                });
            }
            model = apply_step(model, &mut optim, grads, global, lr, config.clip_grad);
            pos.step = step;
            summary.losses.push(loss);
            window_images += images;
            for e in spikes.observe(step, &norms) {
                metrics.log(json!({"type": "spike", "step": e.step, "layer": e.layer, "norm": e.norm, "median": e.median}));
                summary.spikes += 1;
            }
            let norm_map: serde_json::Map<String, serde_json::Value> =
                norms.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            let momentum = schedule::momentum(epoch_f, config.momentum, epochs);
            metrics.log(json!({
                "type": "step", "step": step, "epoch": epoch_f, "lr": lr, "momentum": momentum,
                "loss": loss, "grad_norm": global, "grad_norms": norm_map,
            }));
            let log = step.is_multiple_of(config.log_every.max(1)) || step == total;
            if log || progress.tty {
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let rate = window_images as f64 / secs;
                let per_step = started.elapsed().as_secs_f64() / (step - start_step) as f64;
                let knn = summary
                    .final_knn
                    .map(|r| format!(" | knn {:.1}", r.top1))
                    .unwrap_or_default();
                let text = format!(
                    "step {step}/{total} | epoch {epoch_f:.2} | loss {loss:.4} | lr {lr:.2e} | m {momentum:.4} | {rate:.0} img/s | data wait {:.0}% | eta {}{knn}",
                    100.0 * window_wait / secs,
                    format_eta(per_step * (total - step) as f64)
                );
                progress.status(step, total, &text, log);
                if log {
                    metrics.log(json!({"type": "speed", "step": step, "images_per_sec": rate, "data_wait_s": window_wait}));
                    (window_start, window_images, window_wait) = (Instant::now(), 0, 0.0);
                }
            }
            let epoch_end = pos.batch + accum > micro_per_epoch;
            if main
                && ((config.knn_every > 0 && step.is_multiple_of(config.knn_every))
                    || epoch_end
                    || step == total)
            {
                evaluate(
                    &mut progress,
                    &model,
                    step,
                    &mut summary,
                    &mut metrics,
                    &mut dips,
                )?;
            }
            let interrupted = options
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::SeqCst))
                || options.stop_after.is_some_and(|s| step >= s);
            if main
                && (step.is_multiple_of(config.checkpoint_every.max(1))
                    || step == total
                    || interrupted)
            {
                summary.checkpoint = Some(run_state::save(
                    run_dir,
                    &model,
                    &optim,
                    &pos,
                    config.keep_checkpoints,
                )?);
            }
            if interrupted && step < total {
                summary.interrupted = true;
                progress.line(&format!("stopped at step {step}; continue with --resume"));
                break 'epochs;
            }
        }
    }
    summary.steps = pos.step;
    progress.finish();
    if !main {
        return Ok(summary);
    }
    match crate::plot::plot_run(run_dir) {
        Ok(files) if !options.quiet => println!(
            "plots: {} ({} files)",
            run_dir.join("plots").display(),
            files.len()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: plots not written: {e}"),
    }
    Ok(summary)
}
