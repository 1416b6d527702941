//! Pretraining as a [`PretrainConfig`] describes it, in a run directory: `config.json`,
//! `metrics.jsonl`, TensorBoard events (`tensorboard/`) and checkpoints, exact resume. This is what `moco pretrain` runs; it builds
//! the model, optimizer, data and monitors from the configuration and hands them to the
//! [`Trainer`].

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use burn::optim::ModuleOptimizer;
use burn::prelude::*;

use crate::config::PretrainConfig;
use crate::data::{prepare_data, RunData};
use crate::knn_monitor::KnnMonitor;
use crate::method::{Method, Pretrain};
use crate::run_lock::RunLock;
use crate::run_state;
use crate::tensorboard::TensorBoardSink;
use crate::trainer::{RunDirectory, RunSummary, Trainer};
use crate::TrainError;

/// How to run (as opposed to what to train, which is the [`PretrainConfig`]).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue the run directory: from its newest readable checkpoint (a damaged newer one
    /// is skipped with a warning), or from `resume_from`.
    pub resume: bool,
    /// With `resume`: continue from this checkpoint folder of the run.
    pub resume_from: Option<std::path::PathBuf>,
    /// Set from elsewhere (Ctrl-C) to save a checkpoint and stop after the current step.
    pub stop: Option<Arc<AtomicBool>>,
    /// Set from elsewhere (SIGUSR1) to save a checkpoint after the current step and go on.
    pub checkpoint_request: Option<Arc<AtomicBool>>,
    /// Stop (with a checkpoint) after this many steps, as an interruption would.
    pub stop_after: Option<u64>,
    /// No progress lines.
    pub quiet: bool,
    /// How long a data-parallel run waits for a step to finish before it gives up (30
    /// minutes when absent).
    pub collective_timeout: Option<Duration>,
    /// This process is one replica of a run over processes (e.g. [`crate::distributed::MpiGroup`]
    /// under `mpirun`), on its one device.
    pub processes: Option<Arc<dyn crate::distributed::ProcessGroup>>,
    /// The machine recorded in `metrics.jsonl` when the run starts or resumes
    /// ([`crate::Machine::here`] when absent; give one to name the GPU and the build).
    pub machine: Option<crate::Machine>,
}

impl RunOptions {
    /// The process's index and the number of processes of a run over processes.
    fn process_shard(&self) -> Option<moco_data::Shard> {
        if let Some(p) = &self.processes {
            return Some(moco_data::Shard {
                rank: p.rank(),
                world: p.size(),
            });
        }
        None
    }
}

/// Pretrains as `config` says, writing `config.json`, `metrics.jsonl` and checkpoints to
/// `run_dir`. With `options.resume`, the stored configuration and newest checkpoint are used.
pub fn pretrain(
    config: PretrainConfig,
    run_dir: &Path,
    options: &RunOptions,
    device: &Device,
) -> Result<RunSummary, TrainError> {
    pretrain_data_parallel(config, run_dir, options, std::slice::from_ref(device))
}

/// [`pretrain`] with one replica per device of `devices` (data parallelism: each device
/// computes its shard of every batch, see [`crate::distributed`]); the first device holds the
/// model that is evaluated and checkpointed. One device is the single-device run. Training
/// runs under autodiff on these devices (a plain device is taken as `device.autodiff()`).
pub fn pretrain_data_parallel(
    config: PretrainConfig,
    run_dir: &Path,
    options: &RunOptions,
    devices: &[Device],
) -> Result<RunSummary, TrainError> {
    let devices: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let devices = &devices[..];
    let Some(device) = devices.first() else {
        return Err(TrainError::Config("no device given".into()));
    };
    let processes = options.process_shard();
    if processes.is_some() && devices.len() > 1 {
        return Err(TrainError::Config(
            "a run over processes has one device per process".into(),
        ));
    }
    let world = match processes {
        Some(p) => p.world,
        None => devices.len(),
    };
    let micro = config.schedule.batch_size / config.schedule.grad_accum.max(1);
    if world > 1 && !micro.is_multiple_of(world) {
        return Err(TrainError::Config(format!(
            "the batch of {micro} images per micro-batch cannot be split evenly over {world} devices"
        )));
    }
    if world > 1 && micro / world < 2 {
        return Err(TrainError::Config(format!(
            "{} image(s) per device and micro-batch: BatchNorm needs at least 2",
            micro / world
        )));
    }
    let main = processes.is_none_or(|p| p.rank == 0);
    // Held until the run ends: one writer per run directory (the main process writes it).
    let (config, _lock) = run_config(config, run_dir, options, main)?;
    let precision = config.precision.unwrap_or_default();
    if !precision.supported_on(device) {
        return Err(TrainError::Config(format!(
            "this device cannot compute in {precision}: use --precision f32"
        )));
    }
    let mut data = prepare_data(&config)?;
    if let Some(shard) = processes.filter(|s| s.world > 1) {
        // Each process decodes only its own slice of every global batch.
        data.train = data.train.sharded(shard)?;
    }
    if !options.quiet {
        println!("{}", data.note);
    }
    device.seed(config.seed);
    let model_config = config.model_config()?;
    let optim = config.optim_config().map_err(TrainError::Config)?;
    match config.method {
        Method::SimClr => {
            let model = Method::simclr(&model_config, device);
            let make_optim = move || optim.init();
            train(model, make_optim, &config, data, run_dir, options, devices)
        }
        method => {
            let model = method.siamese(&model_config, device);
            let make_optim = move || optim.init();
            train(model, make_optim, &config, data, run_dir, options, devices)
        }
    }
}

/// The configuration of the run: `config` for a new run (written to `config.json` by the
/// `main` process, refused where checkpoints already are), the stored one to resume.
fn run_config(
    config: PretrainConfig,
    run_dir: &Path,
    options: &RunOptions,
    main: bool,
) -> Result<(PretrainConfig, Option<RunLock>), TrainError> {
    let path = run_dir.join("config.json");
    if options.resume {
        let lock = main.then(|| RunLock::acquire(run_dir)).transpose()?;
        let config = PretrainConfig::load_run(&path)?;
        config.validate().map_err(TrainError::Config)?;
        return Ok((config, lock));
    }
    if !run_state::list_checkpoints(run_dir).is_empty() {
        return Err(TrainError::Config(format!(
            "{} already holds checkpoints: pass --resume to continue it, or choose another --out",
            run_dir.display()
        )));
    }
    config.validate().map_err(TrainError::Config)?;
    config.check_data().map_err(TrainError::Config)?;
    if !main {
        return Ok((config, None));
    }
    let lock = RunLock::acquire(run_dir)?;
    let json = serde_json::to_string_pretty(&config).expect("a configuration serialises");
    moco_models::write_atomic(&path, json.as_bytes())?;
    Ok((config, Some(lock)))
}

/// Assembles the [`Trainer`] of a configured run and runs it.
fn train<M>(
    model: M,
    make_optim: impl Fn() -> ModuleOptimizer + Clone + 'static,
    config: &PretrainConfig,
    data: RunData,
    run_dir: &Path,
    options: &RunOptions,
    devices: &[Device],
) -> Result<RunSummary, TrainError>
where
    M: Pretrain + 'static,
    M: Send,
{
    let settings = config.loop_settings(data.train.batches_per_epoch());
    let mut knn = KnnMonitor::new(
        data.memory,
        data.eval,
        data.augment,
        config.monitors.knn_every,
        config.data.workers,
    )?
    .with_knn(config.monitors.knn_k, config.monitors.knn_temperature);
    if let Some(points) = config.monitors.dip_threshold {
        knn = knn.with_dip_threshold(points);
    }
    let mut trainer = Trainer::new(
        model,
        make_optim(),
        data.train,
        settings,
        devices[0].clone(),
    )
    .with_knn(knn)
    .with_sink(TensorBoardSink::new(&run_dir.join("tensorboard")))
    .with_run_directory(RunDirectory {
        path: run_dir.to_path_buf(),
        checkpoint_every: config.checkpoints.every,
        keep_checkpoints: config.checkpoints.keep,
    })
    .with_stop_after(options.stop_after)
    .with_machine(options.machine.clone().unwrap_or_else(crate::Machine::here))
    .quiet(options.quiet);
    if let Some(flag) = &options.checkpoint_request {
        trainer = trainer.with_checkpoint_request(flag.clone());
    }
    if let Some(flag) = &options.stop {
        trainer = trainer.with_stop_flag(flag.clone());
    }
    if options.resume {
        trainer = match &options.resume_from {
            Some(checkpoint) => trainer.resume(checkpoint.clone())?,
            None => {
                let all = run_state::list_checkpoints(run_dir);
                if all.is_empty() {
                    return Err(TrainError::Config(format!(
                        "{}: no checkpoint to resume from",
                        run_dir.display()
                    )));
                }
                trainer.resume_newest(&all)?
            }
        };
    }
    if devices.len() > 1 {
        let timeout = options
            .collective_timeout
            .unwrap_or(Duration::from_secs(1800));
        trainer = trainer.data_parallel(devices.to_vec(), make_optim, timeout);
    }
    if let Some(group) = &options.processes {
        let timeout = options
            .collective_timeout
            .unwrap_or(Duration::from_secs(1800));
        trainer = trainer.processes(group.clone(), timeout);
    }
    Ok(trainer.run()?.1)
}
