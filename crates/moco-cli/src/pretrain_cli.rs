//! `moco pretrain` and the pretraining examples: flags over a preset, Ctrl-C handling, the
//! run on the chosen device, and a summary with the kNN curve.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use clap::Args;
use moco_train::{pretrain_data_parallel, Method, PretrainConfig, RunOptions, RunSummary};

use crate::device::{dispatch_many, parse_devices, DeviceSpec, MultiDeviceJob};

/// Flags of `moco pretrain` (every one overrides the preset).
#[derive(Args, Debug, Clone)]
pub struct PretrainArgs {
    /// Preset (docs/training.md has their recipes).
    #[arg(help_heading = "Run", long, value_parser = clap::builder::PossibleValuesParser::new(moco_train::TRAIN_PRESETS))]
    pub preset: Option<String>,
    /// A configuration JSON (as written to RUN_DIR/config.json) to start from instead of a preset.
    #[arg(help_heading = "Run", long)]
    pub config: Option<PathBuf>,
    /// Pretraining method.
    #[arg(help_heading = "Model", long, value_parser = crate::cli::OneOf(&Method::ALL))]
    pub method: Option<Method>,
    /// Backbone.
    #[arg(help_heading = "Model", long, value_parser = clap::builder::PossibleValuesParser::new(moco_models::PRESETS))]
    pub arch: Option<String>,
    /// Frozen random patch projection (ViT).
    #[arg(help_heading = "Model", long)]
    pub freeze_patch_embed: Option<bool>,
    /// Input image side.
    #[arg(help_heading = "Model", long)]
    pub img_size: Option<usize>,
    /// ViT patch size.
    #[arg(help_heading = "Model", long)]
    pub patch_size: Option<usize>,
    /// Input channels (default: the data's, 1 for grayscale, 3 for colour).
    #[arg(help_heading = "Model", long)]
    pub in_chans: Option<usize>,
    /// ViT width (default: the architecture's).
    #[arg(help_heading = "Model", long)]
    pub embed_dim: Option<usize>,
    /// ViT depth (default: the architecture's).
    #[arg(help_heading = "Model", long)]
    pub depth: Option<usize>,
    /// ViT attention heads (default: the architecture's).
    #[arg(help_heading = "Model", long)]
    pub num_heads: Option<usize>,
    /// Hidden width of the projector and predictor.
    #[arg(help_heading = "Model", long)]
    pub mlp_dim: Option<usize>,
    /// Output width of the projector and predictor.
    #[arg(help_heading = "Model", long)]
    pub out_dim: Option<usize>,
    /// Images per optimizer step.
    #[arg(help_heading = "Optimisation", long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per step (BN statistics and negatives then come from each micro-batch).
    #[arg(help_heading = "Optimisation", long)]
    pub grad_accum: Option<usize>,
    /// Epochs of the schedule.
    #[arg(help_heading = "Optimisation", long)]
    pub epochs: Option<f64>,
    /// Warm-up epochs.
    #[arg(help_heading = "Optimisation", long)]
    pub warmup_epochs: Option<f64>,
    /// Length of the schedule in steps, whatever the dataset size (epochs and warm-up are
    /// rescaled to span it, warm-up keeping its share).
    #[arg(help_heading = "Optimisation", long)]
    pub steps: Option<u64>,
    /// Stop after this many steps.
    #[arg(help_heading = "Optimisation", long)]
    pub max_steps: Option<u64>,
    /// Base learning rate (scaled by batch / 256).
    #[arg(help_heading = "Optimisation", long)]
    pub lr: Option<f64>,
    /// The peak learning rate itself, not scaled by the batch size (in place of --lr).
    #[arg(help_heading = "Optimisation", long, conflicts_with = "lr")]
    pub peak_lr: Option<f64>,
    /// Optimizer (sgd: with momentum 0.9, for comparison).
    #[arg(help_heading = "Optimisation", long, value_parser = crate::cli::OneOf(&moco_train::config::OptimizerName::ALL))]
    pub optimizer: Option<moco_train::config::OptimizerName>,
    /// Weight decay.
    #[arg(help_heading = "Optimisation", long)]
    pub weight_decay: Option<f64>,
    /// Temperature.
    #[arg(help_heading = "Optimisation", long)]
    pub temperature: Option<f64>,
    /// Initial momentum of the EMA.
    #[arg(help_heading = "Optimisation", long)]
    pub momentum: Option<f64>,
    /// Smallest crop area fraction.
    #[arg(help_heading = "Data", long)]
    pub crop_min: Option<f64>,
    /// Global gradient-norm clipping.
    #[arg(help_heading = "Optimisation", long)]
    pub clip_grad: Option<f64>,
    /// ResNet input stem: imagenet (7×7 stride 2, max-pool) or small (3×3 stride 1); default:
    /// small for images of 64 px or less.
    #[arg(help_heading = "Model", long, value_parser = crate::cli::OneOf(&moco_models::Stem::ALL))]
    pub stem: Option<moco_models::Stem>,
    /// Seed.
    #[arg(help_heading = "Run", long)]
    pub seed: Option<u64>,
    /// Data folder (IDX, CIFAR binary, or an image folder), or `bundled` for the bundled
    /// Fashion-MNIST split; default: Fashion-MNIST (the full set when installed, else bundled).
    #[arg(help_heading = "Data", long)]
    pub data: Option<String>,
    /// Force the data format (default: detected from the files).
    #[arg(help_heading = "Data", long, value_parser = crate::cli::OneOf(&moco_data::DatasetKind::ALL))]
    pub dataset: Option<moco_data::DatasetKind>,
    /// Loader threads.
    #[arg(help_heading = "Data", long)]
    pub workers: Option<usize>,
    /// kNN evaluation every N steps (0: epoch ends only).
    #[arg(help_heading = "Monitors", long)]
    pub knn_every: Option<u64>,
    /// kNN neighbours.
    #[arg(help_heading = "Monitors", long)]
    pub knn_k: Option<usize>,
    /// At most this many training images form the kNN memory.
    #[arg(help_heading = "Monitors", long)]
    pub knn_memory: Option<usize>,
    /// At most this many evaluation images are classified by the kNN monitor.
    #[arg(help_heading = "Monitors", long)]
    pub knn_eval: Option<usize>,
    /// A kNN top-1 drop of more than this many points is a dip (default: two binomial
    /// standard errors on the evaluation set).
    #[arg(help_heading = "Monitors", long)]
    pub dip_threshold: Option<f64>,
    /// Checkpoint every N steps.
    #[arg(help_heading = "Checkpoints", long)]
    pub checkpoint_every: Option<u64>,
    /// Checkpoints kept.
    #[arg(help_heading = "Checkpoints", long)]
    pub keep_checkpoints: Option<usize>,
    /// A progress line every N steps.
    #[arg(help_heading = "Monitors", long)]
    pub log_every: Option<u64>,
    /// Any configuration field, by its name or its place (`--set schedule.momentum=0.996`,
    /// `--set spike_factor=4`); the value is JSON (a bare word is a string). Repeatable;
    /// applied after every other flag.
    #[arg(help_heading = "Run", long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the resolved configuration as JSON and exit.
    #[arg(help_heading = "Run", long)]
    pub print_config: bool,
    /// Skip steps with a non-finite loss or gradient instead of stopping.
    #[arg(help_heading = "Optimisation", long)]
    pub skip_nonfinite: bool,
    /// Stop at the first unreadable image.
    #[arg(help_heading = "Data", long)]
    pub strict: bool,
    /// Backbone precision (parameters, optimizer, heads and loss stay f32).
    #[arg(help_heading = "Devices", long, value_parser = crate::cli::OneOf(&moco_models::Precision::ALL))]
    pub precision: Option<moco_models::Precision>,
    /// Run directory (default: runs/PRESET-METHOD-TIME).
    #[arg(help_heading = "Checkpoints", long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out with the configuration it was started with: from its newest
    /// readable checkpoint (a damaged newer one is skipped with a warning), or from the
    /// checkpoint folder given. `--resume auto` continues when --out holds a checkpoint and
    /// starts the run from the other flags when it does not: one command line for the first
    /// start and every restart of a requeued job.
    #[arg(long, num_args = 0..=1, value_name = "CHECKPOINT|auto", help_heading = "Run")]
    pub resume: Option<Option<PathBuf>>,
    /// Stop after this many steps with a checkpoint, as Ctrl-C would (e.g. a time-boxed job);
    /// `--resume` continues from there.
    #[arg(help_heading = "Checkpoints", long)]
    pub stop_after: Option<u64>,
    /// The device to run on (the help lists this build's).
    #[arg(help = crate::device::device_help(), help_heading = "Devices", long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Data parallelism over several devices of one backend, e.g. `cuda:0,cuda:1,cuda:2,cuda:3`:
    /// each computes its shard of every batch (keys gathered from all, SyncBN, gradients
    /// averaged); overrides --device.
    #[arg(help_heading = "Devices", long)]
    pub devices: Option<String>,
    /// This process is one of an MPI job, `mpirun -n N moco pretrain --mpi …` (or `srun`):
    /// one replica per process, on one machine or many; each process takes --device, or the
    /// entry of --devices at its index on its machine. Needs a build with `--features mpi`.
    #[arg(help_heading = "Devices", long)]
    pub mpi: bool,
    /// Seconds to wait for a step of a data-parallel run to finish before giving up.
    #[arg(help_heading = "Devices", long, default_value_t = 1800)]
    pub collective_timeout: u64,
    /// No progress lines.
    #[arg(help_heading = "Run", long)]
    pub quiet: bool,
}

/// What `--resume` asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Resume {
    /// No `--resume`: a new run.
    No,
    /// `--resume`: from the newest readable checkpoint of --out.
    Newest,
    /// `--resume CHECKPOINT`: from that checkpoint folder.
    From(PathBuf),
    /// `--resume auto`: from the newest checkpoint when --out has one, else a new run.
    Auto,
}

impl PretrainArgs {
    /// What `--resume` asks for.
    pub fn resume_mode(&self) -> Resume {
        match &self.resume {
            None => Resume::No,
            Some(None) => Resume::Newest,
            Some(Some(p)) if p.as_os_str() == "auto" => Resume::Auto,
            Some(Some(p)) => Resume::From(p.clone()),
        }
    }

    /// The configuration: the preset (or `--config`), then every flag given.
    pub fn to_config(&self, default_preset: &str) -> Result<PretrainConfig, String> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => PretrainConfig::preset(self.preset.as_deref().unwrap_or(default_preset))?,
        };
        macro_rules! set {
            ($($flag:ident => $($field:ident).+),* $(,)?) => {$(
                if let Some(v) = self.$flag.clone() { c.$($field).+ = v; }
            )*};
        }
        set!(method => method, arch => model.arch, freeze_patch_embed => model.freeze_patch_embed, img_size => model.img_size,
                     patch_size => model.patch_size, batch_size => schedule.batch_size, grad_accum => schedule.grad_accum, epochs => schedule.epochs,
                     warmup_epochs => schedule.warmup_epochs, lr => optimizer.base_lr, optimizer => optimizer.name, weight_decay => optimizer.weight_decay,
                     temperature => temperature, momentum => schedule.momentum, crop_min => data.crop_min, seed => seed,
                     workers => data.workers, knn_every => monitors.knn_every, checkpoint_every => checkpoints.every,
                     knn_k => monitors.knn_k, knn_memory => monitors.knn_memory, knn_eval => monitors.knn_eval,
                     in_chans => model.in_chans, mlp_dim => model.mlp_dim, out_dim => model.out_dim,
                     keep_checkpoints => checkpoints.keep, log_every => monitors.log_every,
        );
        if self.arch.is_some() {
            // A named architecture brings its own width, depth and heads.
            (c.model.embed_dim, c.model.depth, c.model.num_heads) = (None, None, None);
        }
        for (flag, value) in [
            (self.embed_dim, &mut c.model.embed_dim),
            (self.depth, &mut c.model.depth),
            (self.num_heads, &mut c.model.num_heads),
        ] {
            if flag.is_some() {
                *value = flag;
            }
        }
        if self.steps.is_some() {
            c.schedule.steps = self.steps;
        }
        if self.lr.is_some() || self.peak_lr.is_some() {
            // One learning rate: --lr scales with the batch, --peak-lr does not.
            c.optimizer.peak_lr = self.peak_lr;
        }
        if self.max_steps.is_some() {
            c.schedule.max_steps = self.max_steps;
        }
        if self.dip_threshold.is_some() {
            c.monitors.dip_threshold = self.dip_threshold;
        }
        if self.clip_grad.is_some() {
            c.optimizer.clip_grad = self.clip_grad;
        }
        if self.stem.is_some() {
            c.model.stem = self.stem;
        }
        if self.data.is_some() {
            c.data.path = self.data.clone();
        }
        if self.dataset.is_some() {
            c.data.format = self.dataset;
        }
        if self.precision.is_some() {
            c.precision = self.precision;
        }
        c.skip_nonfinite |= self.skip_nonfinite;
        c.data.strict |= self.strict;
        for pair in &self.set {
            let (key, value) = parse_set(pair)?;
            c.set(key, value)
                .map_err(|e| format!("--set {pair}: {e}"))?;
        }
        Ok(c)
    }
}

/// Sets `in_chans` to the channels of the data the configuration names (1 for grayscale, 3
/// for colour), when they differ; data that cannot be opened is left to the run to report.
fn follow_data_channels(config: &mut PretrainConfig, quiet: bool) {
    let Some(path) = config.data.path.clone() else {
        return;
    };
    let opened = moco_train::open_splits(Some(Path::new(&path)), config.data.format, config.seed);
    if let Ok((train, _, _, _)) = opened {
        let channels = train.channels();
        if channels != config.model.in_chans {
            if !quiet {
                println!("the data has {channels} channel(s): in_chans = {channels}");
            }
            config.model.in_chans = channels;
        }
    }
}

/// `KEY=VALUE` with the value as JSON, or as a string when it is not JSON (`--set
/// arch=vit_small`).
fn parse_set(pair: &str) -> Result<(&str, serde_json::Value), String> {
    let (key, value) = pair
        .split_once('=')
        .ok_or_else(|| format!("--set {pair}: expected KEY=VALUE"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
    Ok((key.trim(), value))
}

struct PretrainJob {
    config: PretrainConfig,
    out: PathBuf,
    options: RunOptions,
}

impl MultiDeviceJob for PretrainJob {
    type Output = Result<RunSummary, String>;
    fn run(self, devices: Vec<Device>) -> Self::Output {
        if !self.options.quiet {
            println!("run directory: {}", self.out.display());
        }
        let main = (self.options.processes.as_ref()).is_none_or(|p| p.rank() == 0);
        let summary = pretrain_data_parallel(self.config, &self.out, &self.options, &devices)
            .map_err(|e| e.to_string())?;
        if main {
            draw_plots(&self.out, self.options.quiet);
        }
        Ok(summary)
    }
}

/// The run's plots, from its `metrics.jsonl` (a failure is a warning: training succeeded).
fn draw_plots(run_dir: &Path, quiet: bool) {
    match moco_train::plot_run(run_dir) {
        Ok(files) if !quiet => println!(
            "plots: {} ({} files)",
            run_dir.join("plots").display(),
            files.len()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: plots not written: {e}"),
    }
}

fn default_out(config: &PretrainConfig) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Path::new("runs").join(format!("{}-{}-{secs}", config.preset, config.method))
}

/// Runs `moco pretrain` (or an example) with `args`, starting from `default_preset`.
pub fn run_pretrain(args: &PretrainArgs, default_preset: &str) -> Result<RunSummary, String> {
    // Joined first, so that every later failure of this process ends the whole job.
    let processes = process_group(args.mpi)?;
    let Some(group) = processes.clone().filter(|p| p.size() > 1) else {
        return pretrain_in(args, default_preset, processes);
    };
    // A panic ends the job too (the hook holds no reference: MPI is finalised when the run's
    // last reference goes).
    let on_panic = Arc::downgrade(&group);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        if let Some(group) = on_panic.upgrade() {
            group.abort(101);
        }
    }));
    let result = pretrain_in(args, default_preset, processes);
    let _ = std::panic::take_hook();
    match result {
        Ok(summary) => Ok(summary),
        Err(e) => {
            // The other processes would wait for this one: end the whole job.
            eprintln!("error: process {} of {}: {e}", group.rank(), group.size());
            group.abort(2)
        }
    }
}

/// [`run_pretrain`] in this process, one of `processes` when given.
fn pretrain_in(
    args: &PretrainArgs,
    default_preset: &str,
    processes: Option<Arc<dyn moco_train::distributed::ProcessGroup>>,
) -> Result<RunSummary, String> {
    let mut config = args.to_config(default_preset)?;
    let resume = match (args.resume_mode(), &args.out) {
        (Resume::Auto, Some(out)) => !moco_train::run_state::list_checkpoints(out).is_empty(),
        (Resume::No, _) => false,
        _ => true,
    };
    if !resume && args.in_chans.is_none() && args.config.is_none() {
        follow_data_channels(&mut config, args.quiet);
    }
    if args.print_config {
        println!("{config}");
        return Ok(RunSummary::default());
    }
    let out = match (&args.out, resume) {
        (Some(o), _) => o.clone(),
        (None, true) => return Err("--resume needs --out RUN_DIR".into()),
        (None, false) => default_out(&config),
    };
    if !resume {
        config.validate()?;
        config.check_data()?;
    }
    let signals = crate::signals::RunSignals::process();
    let main = processes.as_ref().is_none_or(|p| p.rank() == 0);
    let quiet = args.quiet || !main;
    let options = RunOptions {
        resume,
        resume_from: match args.resume_mode() {
            Resume::From(checkpoint) => Some(checkpoint),
            _ => None,
        },
        stop: Some(signals.stop.clone()),
        checkpoint_request: Some(signals.checkpoint.clone()),
        stop_after: args.stop_after,
        quiet,
        collective_timeout: Some(std::time::Duration::from_secs(
            args.collective_timeout.max(1),
        )),
        processes: processes.clone(),
        machine: Some(crate::device::machine(
            &crate::device::select(&devices_of(args)?[0]).map_err(|e| e.to_string())?,
        )),
    };
    let mut devices = devices_of(args)?;
    if let Some(p) = &processes {
        // One device per process: this process's entry of the list on its machine.
        devices = vec![devices[p.local_rank() % devices.len()].clone()];
    }
    // On --resume the run keeps the precision it was started with.
    let precision = if resume {
        stored_precision(&out)
    } else {
        config.precision
    };
    let summary = dispatch_many(
        &devices,
        precision.unwrap_or_default(),
        PretrainJob {
            config,
            out: out.clone(),
            options,
        },
    )
    .map_err(|e| e.to_string())??;
    if !quiet {
        print_summary(&summary, &out);
    }
    Ok(summary)
}

/// The devices `--devices` or `--device` names.
fn devices_of(args: &PretrainArgs) -> Result<Vec<DeviceSpec>, String> {
    let devices = match &args.devices {
        Some(list) => parse_devices(list).map_err(|e| format!("--devices: {e}"))?,
        None => vec![args.device.clone()],
    };
    if devices.is_empty() {
        return Err("--devices: no device given".into());
    }
    Ok(devices)
}

/// The MPI job this process belongs to, with `--mpi`.
fn process_group(
    mpi: bool,
) -> Result<Option<Arc<dyn moco_train::distributed::ProcessGroup>>, String> {
    if !mpi {
        return Ok(None);
    }
    #[cfg(feature = "mpi")]
    {
        let group = moco_train::distributed::MpiGroup::init().map_err(|e| e.to_string())?;
        Ok(Some(Arc::new(group)))
    }
    #[cfg(not(feature = "mpi"))]
    Err(WITHOUT_MPI.into())
}

/// What `--mpi` says in a build without MPI.
#[cfg_attr(feature = "mpi", allow(dead_code))]
const WITHOUT_MPI: &str = "--mpi: this moco was built without MPI; build it with `cargo build --release --features mpi` (needs an MPI library and libclang, e.g. Debian's libopenmpi-dev and libclang-dev)";

/// The precision recorded in `RUN_DIR/config.json` (`None` when unreadable: the run then
/// reports the error itself).
fn stored_precision(run_dir: &Path) -> Option<moco_models::Precision> {
    let text = std::fs::read_to_string(run_dir.join("config.json")).ok()?;
    serde_json::from_str::<PretrainConfig>(&text)
        .ok()?
        .precision
}

/// Prints the kNN curve from `RUN_DIR/metrics.jsonl` and the run's outcome.
pub fn print_summary(summary: &RunSummary, out: &Path) {
    println!("\nkNN curve (top-1 %, evaluation set):");
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["type"] == "knn" {
            let top1 = v["top1"].as_f64().unwrap_or(f64::NAN);
            let bar = "#".repeat((top1 / 2.0).max(0.0) as usize);
            println!(
                "  step {:>6}  {:>6.2}  {bar}",
                v["step"].as_u64().unwrap_or(0),
                top1
            );
        }
    }
    if let (Some(a), Some(b)) = (summary.initial_knn, summary.final_knn) {
        println!(
            "kNN top-1: {:.2}% at initialisation → {:.2}% after {} steps ({:+.2} points)",
            a.top1,
            b.top1,
            summary.steps,
            b.top1 - a.top1
        );
    } else if let Some(b) = summary.final_knn {
        println!("kNN top-1 after {} steps: {:.2}%", summary.steps, b.top1);
    }
    println!(
        "gradient spikes: {}, kNN dips: {}, skipped steps: {}",
        summary.spikes, summary.dips, summary.skipped_steps
    );
    if let Some(c) = &summary.checkpoint {
        println!("checkpoint: {}", c.display());
    }
    println!("metrics: {}", out.join("metrics.jsonl").display());
}

#[cfg(test)]
mod tests {
    /// A build without MPI names the feature and the libraries it needs (the command-line
    /// test `mpi_runs_say_what_they_need` checks the message reaches the user in such a build).
    #[test]
    fn the_message_without_mpi_names_the_feature_and_libraries() {
        let message = super::WITHOUT_MPI;
        assert!(message.contains("--features mpi"), "{message}");
        assert!(message.contains("libopenmpi-dev") && message.contains("libclang-dev"));
    }
}
