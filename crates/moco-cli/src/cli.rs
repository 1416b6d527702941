//! The `moco` command line's grammar: every subcommand, flag and value, as clap parses them.
//! The binary runs what this parses; the tests parse every `moco` command the docs show.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::device::DeviceSpec;

/// The `moco` command line.
#[derive(Parser)]
#[command(
    name = "moco",
    version,
    about = "MoCo v3 self-supervised pretraining on Burn",
    long_about = None
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Pretrain a backbone (MoCo v3, SimCLR or BYOL) with the kNN and gradient monitors.
    Pretrain(crate::pretrain_cli::PretrainArgs),
    /// The instability study: a grid of short runs (learning rate × learned/frozen patch
    /// projection × batch × method × seed) with kNN curves, gradient spikes and a report.
    Study(crate::study_cli::StudyArgs),
    /// Weighted kNN accuracy of a checkpoint's backbone features (train split as memory).
    Knn(crate::eval_cli::KnnArgs),
    /// Linear probing with MoCo v3's protocol (frozen backbone in eval mode, SGD, cosine).
    Probe(crate::eval_cli::ProbeArgs),
    /// End-to-end fine-tuning with a fresh head (AdamW, warm-up + cosine, label smoothing).
    Finetune(crate::eval_cli::FinetuneArgs),
    /// Write backbone features (and head outputs) of a dataset or of your tensors.
    Features(crate::eval_cli::FeaturesArgs),
    /// Benchmark full training steps on synthetic data (`moco bench --arch vit_tiny …`), the
    /// data pipeline (`moco bench data`) or the CPU's matrix products (`moco bench gemm`).
    Bench(BenchCmd),
    /// Draw PNG plots of a run (loss, lr and momentum, kNN curve, gradient norms per layer),
    /// or compare several runs' kNN curves and losses (`--out DIR`).
    Plot {
        /// The run directory (holding metrics.jsonl); several to compare their kNN curves and
        /// losses on one chart each.
        #[arg(required = true)]
        run_dirs: Vec<PathBuf>,
        /// Where the comparison charts go (needed with several runs).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check the models against PyTorch reference vectors: `DIR/TAG` or every case in `DIR`.
    Parity {
        /// A case (`tests/golden/vit_tiny_p8_32`) or a folder of cases.
        target: PathBuf,
        /// The device to run on (the help lists this build's).
        #[arg(help = crate::device::device_help(), long, default_value = "auto")]
        device: DeviceSpec,
    },
    /// The differential test of a backend: the same weights and images on --device and on the
    /// CPU backend (proven against PyTorch) over a grid of models and input sizes; one MoCo v3
    /// step compared tensor by tensor with the parity tolerances.
    Crosscheck {
        /// The grid of cases (the help text counts them from the code).
        #[arg(long, value_enum, default_value = "small", help = crate::crosscheck::Grid::help())]
        grid: crate::crosscheck::Grid,
        /// Only the cases whose name contains this text (e.g. `resnet 40px`).
        #[arg(long)]
        only: Option<String>,
        /// Seed of the weights and images.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print every tensor's check, not only those of failing cases.
        #[arg(long)]
        verbose: bool,
        /// The formulations the device runs; default: the device's (gpu on GPU devices, cpu on
        /// the CPU backends).
        #[arg(long)]
        kernels: Option<KernelSet>,
        /// The device under test.
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
    },
    /// List the backends of this build, whether each one's device works on this machine (a
    /// test kernel runs on CUDA), and the device `--device auto` takes.
    Devices,
    /// Show what a weight file holds and the architecture inferred from it.
    Inspect {
        /// `.pth.tar` (official MoCo v3, linear-probe, DeiT-style) or `.safetensors`.
        file: PathBuf,
        /// ViT attention heads, when the width has no preset.
        #[arg(long)]
        heads: Option<usize>,
    },
    /// Convert an official MoCo v3 (or linear-probe, or DeiT-style) file to a moco checkpoint
    /// (a burnpack file, `.bpk` by convention): the whole model, or the backbone when the file
    /// holds only that.
    Import {
        /// The `.pth.tar` (or `.safetensors`) file.
        file: PathBuf,
        /// Where to write the checkpoint (under exactly this name).
        #[arg(long)]
        out: PathBuf,
        /// ViT attention heads, when the width has no preset.
        #[arg(long)]
        heads: Option<usize>,
        /// Device used while converting (the CPU unless named).
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
    },
    /// Export weights for PyTorch: safetensors with timm / torchvision names, or DeiT's
    /// `{'model': ...}` `torch.save` layout.
    Export {
        /// A run directory, a moco checkpoint, or an official / exported weight file (any name).
        checkpoint: PathBuf,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// timm (ViT) or torchvision (ResNet) safetensors; deit: a `.pth` for DeiT / MAE
        /// fine-tuning (ViT); moco: the official MoCo v3 checkpoint layout (a whole model, for
        /// the official code and `main_lincls.py`). Checked against the architecture.
        #[arg(long)]
        format: Option<ExportFormat>,
        /// The backbone alone (default) or the whole MoCo model in the official key layout.
        #[arg(long, value_enum, default_value = "backbone")]
        what: ExportWhat,
        /// ViT attention heads, when the width has no preset.
        #[arg(long)]
        heads: Option<usize>,
        /// Device used while converting (the CPU unless named).
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
    },
}

/// `moco bench`: a subcommand, or the step benchmark's flags.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchCmd {
    /// `data`, `gemm`, or `step` (the default).
    #[command(subcommand)]
    pub what: Option<BenchWhat>,
    /// The step benchmark's arguments, when no subcommand is named.
    #[command(flatten)]
    pub step: crate::bench_step::StepBenchArgs,
}

/// What `moco bench` measures.
#[derive(Subcommand)]
pub enum BenchWhat {
    /// Full training steps (the default of `moco bench`).
    Step(Box<crate::bench_step::StepBenchArgs>),
    /// GFLOP/s of the CPU's matrix products at the reference steps' shapes: ours, the `gemm`
    /// crate Burn's flex backend calls, and the host's measured peak (JSON lines).
    Gemm {
        /// Milliseconds per timing round (three rounds per shape and implementation).
        #[arg(long, default_value_t = 200)]
        millis: u64,
        /// Every kernel this CPU runs (AVX-512, AVX2, portable), not only the fastest.
        #[arg(long)]
        all_kernels: bool,
        /// Only print the shapes (JSON lines), measuring nothing (for `benches/gemm_baseline.py`).
        #[arg(long)]
        list: bool,
    },
    /// Throughput of the two-view augmentation pipeline (per thread, and with the loader).
    Data {
        /// Folder of the JPEG test set (written on first use).
        #[arg(long)]
        jpeg_dir: Option<PathBuf>,
        /// JPEG images to write and read.
        #[arg(long, default_value_t = 256)]
        images: usize,
        /// Loader threads for the parallel measurement (also measured with 1 and 2).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

/// The file layout of `moco export`.
#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// timm's names (ViT), safetensors.
    Timm,
    /// torchvision's names (ResNet), safetensors.
    Torchvision,
    /// DeiT's `{'model': ...}` `torch.save` layout (ViT), for DeiT / MAE fine-tuning.
    Deit,
    /// The official MoCo v3 checkpoint layout (`torch.save` of `{'state_dict': {'module.…'}}`),
    /// for the official code and `main_lincls.py`; a whole model.
    Moco,
}

/// What `moco export` writes.
#[derive(Clone, Copy, ValueEnum)]
pub enum ExportWhat {
    /// The backbone alone.
    Backbone,
    /// The whole MoCo model (base and momentum encoders, projector, predictor).
    Model,
}

/// The formulations `moco crosscheck` runs on the device.
#[derive(Clone, Copy, ValueEnum)]
pub enum KernelSet {
    /// Burn's kernels everywhere.
    Backend,
    /// What GPU devices run: Burn's kernels with the exact GELU from erf (today the same as
    /// backend).
    Gpu,
    /// The host formulations: fused attention and LayerNorm, matrix-product convolutions on
    /// maps of up to 16×16.
    Cpu,
}

/// A flag's value parsed with the type's own `FromStr` (its aliases and any case accepted),
/// with the names of `all` listed by `--help` and by the error for an unknown value: the
/// choices come from the code, not from the help text.
#[derive(Clone)]
pub struct OneOf<T: 'static>(pub &'static [T]);

impl<T> clap::builder::TypedValueParser for OneOf<T>
where
    T: std::str::FromStr + std::fmt::Display + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        use clap::error::{ContextKind, ContextValue, Error, ErrorKind};
        let text = value.to_string_lossy();
        text.parse::<T>().map_err(|_| {
            let mut e = Error::new(ErrorKind::InvalidValue).with_cmd(cmd);
            let flag = arg.map_or_else(|| "...".to_string(), ToString::to_string);
            e.insert(ContextKind::InvalidArg, ContextValue::String(flag));
            e.insert(
                ContextKind::InvalidValue,
                ContextValue::String(text.into_owned()),
            );
            let names = self.0.iter().map(ToString::to_string).collect();
            e.insert(ContextKind::ValidValue, ContextValue::Strings(names));
            e
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            self.0
                .iter()
                .map(|v| clap::builder::PossibleValue::new(v.to_string())),
        ))
    }
}
