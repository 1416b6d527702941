//! The training loop, for any model a [`Method`](crate::Method) trains and any dataset: one
//! optimizer step at a time over the loader's two-view batches (gradient accumulation, data
//! parallelism), the schedule taken where each step starts, the one non-finite rule, and the
//! parts that watch the run — the kNN monitor, the gradient-spike detector, metric sinks,
//! progress, checkpoints — each in its own type.
//!
//! ```no_run
//! # use burn::tensor::Device;
//! # use moco_train::{Trainer, LoopSettings, Schedule, Pretrain, OptimConfig};
//! # fn run<M: Pretrain + 'static>(model: M, train: moco_data::Loader)
//! # where M: Send {
//! let schedule = Schedule {
//!     epochs: 10.0, warmup_epochs: 1.0, peak_lr: 1e-3, base_momentum: 0.99,
//!     batches_per_epoch: train.batches_per_epoch(), grad_accum: 1,
//! };
//! let optim = OptimConfig::adamw(0.1).init();
//! let (model, summary) = Trainer::new(
//!     model, optim, train, LoopSettings::new(schedule), Device::flex().autodiff(),
//! )
//! .run()
//! .unwrap();
//! # }
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use moco_data::{BatchIter, Loader};
use moco_models::{Backbone, Precision};

use crate::distributed::{ProcessGroup, ProcessParallel};
use crate::knn::KnnResult;
use crate::knn_monitor::KnnMonitor;
use crate::method::{Pretrain, StepParams};
use crate::metrics::{Event, JsonlSink, MetricSink, StepRecord};
use crate::monitor::SpikeDetector;
use crate::progress::{format_eta, Progress};
use crate::run_state::{self, RunPosition};
use crate::runner::StepRunner;
use crate::schedule::Schedule;
use crate::step::{measure_gradients, update, Update};
use crate::TrainError;

/// How the loop steps: the schedule and the per-step rules.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopSettings {
    /// Learning rate and momentum per step.
    pub schedule: Schedule,
    /// Stop after this many steps (the schedule's length by default).
    pub max_steps: Option<u64>,
    /// InfoNCE / NT-Xent temperature.
    pub temperature: f64,
    /// Global gradient-norm clipping.
    pub clip_grad: Option<f64>,
    /// Skip steps with a non-finite loss or gradient (counted) instead of stopping.
    pub skip_nonfinite: bool,
    /// Precision of the backbone's forward and backward.
    pub precision: Precision,
    /// A progress line every this many steps.
    pub log_every: u64,
    /// A gradient norm over this multiple of its running median is a spike...
    pub spike_factor: f64,
    /// ...of the last this many steps.
    pub spike_window: usize,
}

impl LoopSettings {
    /// MoCo v3's defaults around `schedule`: temperature 0.2, no clipping, stop on a
    /// non-finite value, f32, a line every 10 steps, spikes at 3× the median of 100 steps.
    pub fn new(schedule: Schedule) -> Self {
        LoopSettings {
            schedule,
            max_steps: None,
            temperature: 0.2,
            clip_grad: None,
            skip_nonfinite: false,
            precision: Precision::F32,
            log_every: 10,
            spike_factor: 3.0,
            spike_window: 100,
        }
    }

    /// Steps this run takes.
    pub fn total_steps(&self) -> u64 {
        let all = self.schedule.total_steps();
        self.max_steps.map_or(all, |m| m.min(all))
    }
}

/// A run directory: checkpoints under `checkpoints/` and every event in `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunDirectory {
    /// The folder.
    pub path: PathBuf,
    /// A checkpoint every this many steps (and at the end, and when stopped).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
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

type MakeOptim = Box<dyn Fn() -> ModuleOptimizer>;

struct ParallelSetup {
    devices: Vec<Device>,
    make_optim: MakeOptim,
    timeout: Duration,
}

/// The training loop of one run, assembled from its parts; [`Trainer::run`] runs it.
pub struct Trainer<M> {
    model: M,
    optim: ModuleOptimizer,
    settings: LoopSettings,
    train: Loader,
    device: Device,
    knn: Option<KnnMonitor>,
    sinks: Vec<Box<dyn MetricSink>>,
    run_dir: Option<RunDirectory>,
    parallel: Option<ParallelSetup>,
    processes: Option<(Arc<dyn ProcessGroup>, Duration)>,
    stop: Option<Arc<AtomicBool>>,
    checkpoint_request: Option<Arc<AtomicBool>>,
    stop_after: Option<u64>,
    quiet: bool,
    machine: Option<crate::Machine>,
    pos: RunPosition,
    resumed_from: Option<PathBuf>,
}

impl<M> Trainer<M>
where
    M: Pretrain + 'static,
    M: Send,
{
    /// Trains `model` with `optim` on the two-view batches of `train` (a loader with
    /// [`moco_data::Views::Two`]), on `device`.
    pub fn new(
        model: M,
        optim: ModuleOptimizer,
        train: Loader,
        settings: LoopSettings,
        device: Device,
    ) -> Self {
        Trainer {
            model,
            optim,
            settings,
            train,
            device,
            knn: None,
            sinks: Vec::new(),
            run_dir: None,
            parallel: None,
            processes: None,
            stop: None,
            checkpoint_request: None,
            stop_after: None,
            quiet: false,
            machine: None,
            pos: RunPosition::default(),
            resumed_from: None,
        }
    }

    /// Evaluates the backbone with `monitor` before training and as it says.
    pub fn with_knn(mut self, monitor: KnnMonitor) -> Self {
        self.knn = Some(monitor);
        self
    }

    /// Hands every event to `sink` too.
    pub fn with_sink(mut self, sink: impl MetricSink + 'static) -> Self {
        self.sinks.push(Box::new(sink));
        self
    }

    /// Writes checkpoints and `metrics.jsonl` to `dir`.
    pub fn with_run_directory(mut self, dir: RunDirectory) -> Self {
        self.run_dir = Some(dir);
        self
    }

    /// Saves a checkpoint and stops after the current step once `flag` is set (Ctrl-C).
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }

    /// Saves a checkpoint after the current step, and goes on, each time `flag` is set
    /// (SIGUSR1); the trainer clears it.
    pub fn with_checkpoint_request(mut self, flag: Arc<AtomicBool>) -> Self {
        self.checkpoint_request = Some(flag);
        self
    }

    /// Saves a checkpoint and stops after `steps` steps, as an interruption would.
    pub fn with_stop_after(mut self, steps: Option<u64>) -> Self {
        self.stop_after = steps;
        self
    }

    /// Records `machine` in the run's reports (an [`Event::Machine`]) when it starts.
    pub fn with_machine(mut self, machine: crate::Machine) -> Self {
        self.machine = Some(machine);
        self
    }

    /// No progress lines.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// One replica per device of `devices` (the first is where this trainer's model lives),
    /// each on a thread; see [`crate::distributed`]. The run ends when no step finishes for
    /// `timeout`.
    pub fn data_parallel(
        mut self,
        devices: Vec<Device>,
        make_optim: impl Fn() -> ModuleOptimizer + 'static,
        timeout: Duration,
    ) -> Self {
        self.parallel = Some(ParallelSetup {
            devices,
            make_optim: Box::new(make_optim),
            timeout,
        });
        self
    }

    /// This process is one replica of a run over the processes of `group` (one device each,
    /// e.g. under `mpirun`); the trainer's loader must read only this process's shard of
    /// every batch ([`moco_data::Loader::sharded`]). The process ends when no step finishes
    /// for `timeout`.
    pub fn processes(mut self, group: Arc<dyn ProcessGroup>, timeout: Duration) -> Self {
        self.processes = Some((group, timeout));
        self
    }

    /// Continues from the checkpoint folder `checkpoint`: model, optimizer state and the
    /// position in the schedule and the data.
    pub fn resume(mut self, checkpoint: PathBuf) -> Result<Self, TrainError> {
        let read = run_state::read(&checkpoint)?;
        self.resumed(checkpoint, read)?;
        Ok(self)
    }

    /// Continues from the newest checkpoint of `checkpoints` (oldest first) that can be
    /// read; each newer one that cannot (a damaged file) is named in a warning.
    pub fn resume_newest(mut self, checkpoints: &[PathBuf]) -> Result<Self, TrainError> {
        let mut last_error = None;
        for dir in checkpoints.iter().rev() {
            match run_state::read(dir).and_then(|read| self.resumed(dir.clone(), read)) {
                Ok(()) => return Ok(self),
                Err(e) => {
                    eprintln!("warning: cannot resume from {}: {e}", dir.display());
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| TrainError::Config("no checkpoint to resume from".into())))
    }

    /// Takes the checkpoint `read` from the folder `checkpoint`; one that does not fit the
    /// model leaves the trainer as it was.
    fn resumed(
        &mut self,
        checkpoint: PathBuf,
        read: run_state::Checkpoint,
    ) -> Result<(), TrainError> {
        let model_file = run_state::model_file(&checkpoint);
        self.model =
            moco_models::checkpoint::apply_tensors(self.model.clone(), read.model, &model_file)?;
        self.optim = self.optim.clone().load_record(read.optim);
        self.pos = read.position;
        if !self.quiet {
            println!(
                "resuming from {} (step {})",
                checkpoint.display(),
                self.pos.step
            );
        }
        self.resumed_from = Some(checkpoint);
        Ok(())
    }

    /// Where the run is (after [`Trainer::resume`], the checkpoint's position).
    pub fn position(&self) -> &RunPosition {
        &self.pos
    }

    /// One device, or the replicas of [`Trainer::data_parallel`] started from this model.
    fn runner(&self) -> Result<StepRunner, TrainError> {
        let precision = self.settings.precision;
        if let Some((group, timeout)) = &self.processes {
            if self.parallel.is_some() {
                return Err(TrainError::Config(
                    "a run over processes has one device per process: start one process per device"
                        .into(),
                ));
            }
            let replica = ProcessParallel::start(group.clone(), *timeout, precision);
            let p = &self.pos;
            replica.check_same_start(&self.model, [p.step, p.epoch, p.batch as u64])?;
            return Ok(StepRunner::processes(replica, precision));
        }
        let Some(p) = &self.parallel else {
            return Ok(StepRunner::single(precision));
        };
        let group = crate::distributed::DataParallel::start(
            &self.model,
            &self.optim,
            &p.make_optim,
            &p.devices,
            p.timeout,
            precision,
        )?;
        Ok(StepRunner::parallel(group, precision))
    }

    /// Runs to the end of the schedule (or `max_steps`, or a stop); returns the trained model
    /// and what happened.
    pub fn run(self) -> Result<(M, RunSummary), TrainError> {
        if !self.device.is_autodiff() {
            return Err(TrainError::Config(format!(
                "training needs autodiff: build the model on `device.autodiff()` and give the trainer that device (got {:?})",
                self.device
            )));
        }
        crate::memory::keep_freed_memory();
        let runner = self.runner()?;
        let main = runner.is_main();
        let mut sinks = if main { self.sinks } else { Vec::new() };
        if let (Some(dir), true) = (&self.run_dir, main) {
            let resumed = self.resumed_from.as_ref().map(|_| self.pos.step);
            sinks.push(Box::new(JsonlSink::open(
                &dir.path.join("metrics.jsonl"),
                resumed,
            )?));
        }
        let settings = self.settings;
        let summary = RunSummary {
            skipped_steps: self.pos.skipped_steps,
            checkpoint: self.resumed_from.clone(),
            ..Default::default()
        };
        let mut run = Run {
            spikes: SpikeDetector::new(settings.spike_factor, settings.spike_window),
            total: settings.total_steps(),
            optim: self.optim,
            settings,
            train: self.train,
            device: self.device,
            knn: if main { self.knn } else { None },
            sinks,
            run_dir: if main { self.run_dir } else { None },
            runner,
            stop: self.stop,
            checkpoint_request: self.checkpoint_request,
            stop_agreed: false,
            stop_after: self.stop_after,
            pos: self.pos,
            summary,
            sink_failure: None,
            // Only the main process reports.
            progress: Progress::new(self.quiet || !main),
            window: Window::new(),
            started: Instant::now(),
        };
        if let Some(machine) = self.machine {
            let step = run.pos.step;
            run.emit(Event::Machine { step, machine });
        }
        run.execute(self.model, self.resumed_from.is_some())
    }
}

/// Throughput since the last speed report.
struct Window {
    start: Instant,
    images: usize,
    wait: f64,
}

impl Window {
    fn new() -> Self {
        Window {
            start: Instant::now(),
            images: 0,
            wait: 0.0,
        }
    }
}

/// The gradients of one optimizer step, before their reduction over replicas.
struct StepGradients {
    grads: GradientsParams,
    loss: f64,
    images: usize,
    epoch: f64,
}

/// What the loop does after a step.
enum Flow {
    Continue,
    EpochEnd,
    Stop,
}

/// A running loop: the parts of the [`Trainer`] and the state they share.
struct Run {
    optim: ModuleOptimizer,
    settings: LoopSettings,
    total: u64,
    train: Loader,
    device: Device,
    knn: Option<KnnMonitor>,
    sinks: Vec<Box<dyn MetricSink>>,
    run_dir: Option<RunDirectory>,
    runner: StepRunner,
    stop: Option<Arc<AtomicBool>>,
    /// Set from elsewhere to ask for a checkpoint after the current step (cleared here).
    checkpoint_request: Option<Arc<AtomicBool>>,
    /// Some process of the run was asked to stop (every process stops at the same step).
    stop_agreed: bool,
    stop_after: Option<u64>,
    pos: RunPosition,
    summary: RunSummary,
    /// A metric sink's failed write, ending the run after this step.
    sink_failure: Option<TrainError>,
    spikes: SpikeDetector,
    progress: Progress,
    window: Window,
    started: Instant,
}

impl Run {
    fn execute<M>(mut self, mut model: M, resumed: bool) -> Result<(M, RunSummary), TrainError>
    where
        M: Pretrain,
    {
        if !resumed {
            self.evaluate(&model, 0)?;
            self.summary.initial_knn = self.summary.final_knn;
        }
        self.banner(&model);
        let start_step = self.pos.step;
        'epochs: while self.pos.step < self.total {
            let mut batches = self.train.epoch(self.pos.epoch, self.pos.batch);
            while self.pos.step < self.total {
                let flow;
                (model, flow) = self.step(model, &mut batches, start_step)?;
                match flow {
                    Flow::Continue => {}
                    Flow::EpochEnd => break,
                    Flow::Stop => break 'epochs,
                }
            }
            if self.pos.step < self.total {
                self.pos.epoch += 1;
                self.pos.batch = 0;
            }
        }
        self.summary.steps = self.pos.step;
        self.progress.finish();
        Ok((model, self.summary))
    }

    fn banner<M: Pretrain>(&self, model: &M) {
        if self.progress_quiet() {
            return;
        }
        let s = &self.settings.schedule;
        let world = self.runner.world_size();
        if world > 1 {
            println!(
                "data parallel over {world} replicas: {} images per replica and micro-batch, SyncBN, keys gathered from every replica",
                self.train_batch() / world
            );
        }
        let frozen = model.backbone().frozen_groups();
        println!(
            "training {} steps ({} per epoch, batch {}{}), lr {:.2e}, {} parameters{}",
            self.total,
            s.steps_per_epoch(),
            self.train_batch() * s.grad_accum,
            if s.grad_accum > 1 {
                format!(" in {} micro-batches", s.grad_accum)
            } else {
                String::new()
            },
            s.peak_lr,
            model.num_params(),
            if frozen.is_empty() {
                String::new()
            } else {
                format!(", frozen: {}", frozen.join(", "))
            }
        );
    }

    fn progress_quiet(&self) -> bool {
        self.progress.is_quiet()
    }

    fn train_batch(&self) -> usize {
        self.train.batch_size()
    }

    /// One optimizer step: gradients, reduction, update, reports, evaluation, checkpoint.
    fn step<M>(
        &mut self,
        model: M,
        batches: &mut BatchIter,
        start_step: u64,
    ) -> Result<(M, Flow), TrainError>
    where
        M: Pretrain,
    {
        let g = match self.gradients(model, batches)? {
            (model, None) => return Ok((model, Flow::EpochEnd)),
            (model, Some(g)) => (model, g),
        };
        let (model, g) = g;
        let lr = self.settings.schedule.lr(g.epoch);
        let s = &self.settings;
        let wish_to_stop = self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        let (grads, loss, stop) = self.runner.reduce(
            &model,
            g.grads,
            (g.loss, wish_to_stop),
            (lr, s.clip_grad, s.skip_nonfinite),
            &self.device,
        )?;
        self.stop_agreed = stop;
        let (norms, global) = measure_gradients(&model, &grads);
        let step = self.pos.step + 1;
        let outcome = update(
            model,
            &mut self.optim,
            grads,
            loss,
            (&norms, global),
            lr,
            s.clip_grad,
            s.skip_nonfinite,
        );
        let model = match outcome {
            Update::Applied(model) => model,
            Update::Skipped(model) => {
                self.non_finite(step, loss, &norms);
                self.pos.skipped_steps += 1;
                self.summary.skipped_steps = self.pos.skipped_steps;
                self.pos.step = step;
                return Ok((model, Flow::Continue));
            }
            Update::NonFinite { layer, .. } => {
                self.non_finite(step, loss, &norms);
                return Err(TrainError::NonFinite {
                    step,
                    loss,
                    layer: layer.unwrap_or_else(|| "none (the loss itself)".into()),
                    checkpoint: self
                        .run_dir
                        .as_ref()
                        .and_then(|d| run_state::list_checkpoints(&d.path).pop()),
                });
            }
        };
        self.pos.step = step;
        self.summary.losses.push(loss);
        self.window.images += g.images;
        self.report_step(step, g.epoch, lr, loss, &norms, global, start_step);
        let epoch_end = self.pos.batch + self.settings.schedule.grad_accum
            > self.settings.schedule.batches_per_epoch;
        let last = step == self.total;
        if self
            .knn
            .as_ref()
            .is_some_and(|k| k.due(step, epoch_end, last))
        {
            self.evaluate(&model, step)?;
        }
        if let Some(e) = self.sink_failure.take() {
            // The run stops on a failed metrics write; its last checkpoint stays as it was.
            return Err(e);
        }
        let flow = self.checkpoint_or_stop(&model, step)?;
        Ok((model, flow))
    }

    /// Forward and backward of the step's micro-batches; `None` when the epoch has too few
    /// batches left for a whole step.
    fn gradients<M: Pretrain>(
        &mut self,
        mut model: M,
        batches: &mut BatchIter,
    ) -> Result<(M, Option<StepGradients>), TrainError> {
        let accum = self.settings.schedule.grad_accum.max(1);
        if self.pos.batch + accum > self.settings.schedule.batches_per_epoch {
            return Ok((model, None));
        }
        // MoCo v3 takes the learning rate and the momentum of iteration i of an epoch of N
        // at the fractional epoch `epoch + i/N`: where the step's first batch starts.
        let epoch = self
            .settings
            .schedule
            .epoch_at(self.pos.epoch, self.pos.batch);
        let mut accumulator = GradientsAccumulator::<M>::new();
        let (mut loss, mut images) = (0.0, 0);
        for micro in 0..accum {
            let wait = Instant::now();
            let batch = batches.next().ok_or_else(|| {
                TrainError::Data(moco_data::DataError::Invalid(format!(
                    "the loader ended its epoch after {} batches, {} were expected",
                    self.pos.batch, self.settings.schedule.batches_per_epoch
                )))
            })??;
            self.window.wait += wait.elapsed().as_secs_f64();
            self.pos.batch += 1;
            // A sharded loader reads this machine's slice: count the global batch.
            images += batch.shape[0] * self.train.batch_size() / self.train.shard_size();
            // The momentum update runs once per optimizer step, with its first micro-batch.
            let params = StepParams {
                temperature: self.settings.temperature,
                momentum: if micro == 0 {
                    self.settings.schedule.momentum(epoch)
                } else {
                    1.0
                },
            };
            let (value, grads);
            (model, value, grads) =
                self.runner
                    .micro_step(model, batch, &params, 1.0 / accum as f64, &self.device)?;
            loss += value;
            accumulator.accumulate(&model, grads);
        }
        let g = StepGradients {
            grads: accumulator.grads(),
            loss: loss / accum as f64,
            images,
            epoch,
        };
        Ok((model, Some(g)))
    }

    fn emit(&mut self, event: Event) {
        for sink in &mut self.sinks {
            sink.record(&event);
            if let Some(e) = sink.failure() {
                self.sink_failure.get_or_insert(e);
            }
        }
    }

    fn non_finite(&mut self, step: u64, loss: f64, norms: &[(String, f64)]) {
        let layer = norms
            .iter()
            .find(|(_, n)| !n.is_finite())
            .map(|(l, _)| l.clone());
        self.emit(Event::NonFinite {
            step,
            loss: loss.to_string(),
            layer,
        });
    }

    /// The step's metrics, spikes and progress line.
    #[allow(clippy::too_many_arguments)]
    fn report_step(
        &mut self,
        step: u64,
        epoch: f64,
        lr: f64,
        loss: f64,
        norms: &[(String, f64)],
        global: f64,
        start_step: u64,
    ) {
        for e in self.spikes.observe(step, norms) {
            self.summary.spikes += 1;
            self.emit(Event::Spike {
                step: e.step,
                layer: e.layer,
                norm: e.norm,
                median: e.median,
            });
        }
        let momentum = self.settings.schedule.momentum(epoch);
        self.emit(Event::Step(StepRecord {
            step,
            epoch,
            lr,
            momentum,
            loss,
            grad_norm: global,
            grad_norms: norms
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                .collect(),
        }));
        let log = step.is_multiple_of(self.settings.log_every.max(1)) || step == self.total;
        if !(log || self.progress.tty) {
            return;
        }
        let secs = self.window.start.elapsed().as_secs_f64().max(1e-9);
        let rate = self.window.images as f64 / secs;
        let per_step = self.started.elapsed().as_secs_f64() / (step - start_step) as f64;
        let knn = self
            .summary
            .final_knn
            .map(|r| format!(" | knn {:.1}", r.top1))
            .unwrap_or_default();
        let resident_mib = crate::memory::resident_mib();
        let memory = resident_mib
            .map(|m| format!(" | mem {m:.0} MiB"))
            .unwrap_or_default();
        let text = format!(
            "step {step}/{} | epoch {epoch:.2} | loss {loss:.4} | lr {lr:.2e} | m {momentum:.4} | {rate:.0} img/s | data wait {:.0}%{memory} | eta {}{knn}",
            self.total,
            100.0 * self.window.wait / secs,
            format_eta(per_step * (self.total - step) as f64)
        );
        self.progress.status(step, self.total, &text, log);
        if log {
            let data_wait_s = self.window.wait;
            self.emit(Event::Speed {
                step,
                images_per_sec: rate,
                data_wait_s,
                resident_mib,
            });
            self.window = Window::new();
        }
    }

    /// The kNN monitor's evaluation of the backbone after `step` steps (if there is one).
    fn evaluate<M: Pretrain>(&mut self, model: &M, step: u64) -> Result<(), TrainError> {
        let Some(knn) = &mut self.knn else {
            return Ok(());
        };
        let backbone = model.backbone().valid();
        let (r, events) = knn.evaluate::<_>(&backbone, step, &self.device)?;
        let seconds = match events.first() {
            Some(Event::Knn { seconds, .. }) => *seconds,
            _ => 0.0,
        };
        self.summary.dips += events.len() - 1;
        for e in events {
            self.emit(e);
        }
        self.summary.best_top1 = Some(self.summary.best_top1.map_or(r.top1, |b| b.max(r.top1)));
        self.summary.final_knn = Some(r);
        self.progress.line(&format!(
            "knn @ step {step}: top-1 {:.2}%, top-5 {:.2}% ({seconds:.1}s)",
            r.top1, r.top5
        ));
        Ok(())
    }

    /// Saves a checkpoint when one is due or the run stops here; stops when asked to.
    fn checkpoint_or_stop<M>(&mut self, model: &M, step: u64) -> Result<Flow, TrainError>
    where
        M: Module,
    {
        let interrupted = self.stop_agreed || self.stop_after.is_some_and(|s| step >= s);
        let requested = (self.checkpoint_request.as_ref())
            .is_some_and(|flag| flag.swap(false, Ordering::SeqCst));
        if let Some(dir) = &self.run_dir {
            let due = step.is_multiple_of(dir.checkpoint_every.max(1)) || step == self.total;
            if due || interrupted || requested {
                self.summary.checkpoint = Some(run_state::save(
                    &dir.path,
                    model,
                    &self.optim,
                    &self.pos,
                    dir.keep_checkpoints,
                )?);
            }
        }
        if interrupted && step < self.total {
            self.summary.interrupted = true;
            self.progress
                .line(&format!("stopped at step {step}; continue with --resume"));
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }
}
