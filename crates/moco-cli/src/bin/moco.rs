//! The `moco` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::prelude::Device;
use clap::Parser;
use moco_cli::cli::{BenchCmd, BenchWhat, Cli, Command, ExportFormat, ExportWhat, KernelSet};
use moco_cli::device::{dispatch, BackendJob, DeviceSpec};
use moco_cli::models::import::{backbone_from, inspect, moco_from, ImportOptions, Layout};
use moco_cli::models::Precision;
use moco_cli::models::{
    export_backbone, export_deit, export_moco, export_official, save_backbone_checkpoint,
    save_checkpoint, BackboneConfig,
};
use moco_cli::parity;

type CmdResult = Result<(), String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every command that runs a model reuses the buffers it frees (docs/performance.md).
    moco_cli::train::memory::keep_freed_memory();
    let result = match cli.command {
        Command::Pretrain(args) => {
            moco_cli::pretrain_cli::run_pretrain(&args, "fmnist-vit").map(|_| ())
        }
        Command::Study(args) => moco_cli::study_cli::run_study_cli(&args),
        Command::Bench(BenchCmd { what, step }) => match what {
            Some(BenchWhat::Data {
                jpeg_dir,
                images,
                threads,
            }) => {
                let dir = jpeg_dir.unwrap_or_else(moco_cli::bench::default_jpeg_dir);
                moco_cli::bench::bench_data(&dir, images, threads).map(|results| {
                    for r in results {
                        println!("{}", serde_json::to_string(&r).expect("serialises"));
                    }
                })
            }
            Some(BenchWhat::Gemm {
                millis,
                all_kernels,
                list,
            }) => {
                if list {
                    for shape in &moco_cli::bench_gemm::SHAPES {
                        println!("{}", serde_json::to_string(shape).expect("serialises"));
                    }
                } else {
                    let time = std::time::Duration::from_millis(millis.max(1));
                    for r in moco_cli::bench_gemm::run_gemm_bench(time, all_kernels) {
                        println!("{}", serde_json::to_string(&r).expect("serialises"));
                    }
                }
                Ok(())
            }
            Some(BenchWhat::Step(args)) => print_step_bench(&args),
            None => print_step_bench(&step),
        },
        Command::Knn(args) => moco_cli::eval_cli::run_knn(args),
        Command::Probe(args) => moco_cli::eval_cli::run_probe(args),
        Command::Finetune(args) => moco_cli::eval_cli::run_finetune(args),
        Command::Features(args) => moco_cli::eval_cli::run_features(args),
        Command::Plot { run_dirs, out } => {
            let written = match (run_dirs.as_slice(), out) {
                ([one], None) => moco_cli::train::plot_run(one).map_err(|e| e.to_string()),
                (_, Some(out)) => {
                    moco_cli::train::plot_compare(&run_dirs, &out).map_err(|e| e.to_string())
                }
                (_, None) => {
                    Err("several runs are compared into one folder: give --out DIR".into())
                }
            };
            written.map(|files| {
                for f in files {
                    println!("wrote {}", f.display());
                }
            })
        }
        Command::Parity { target, device } => run_on(&device, ParityJob { target }),
        Command::Crosscheck {
            grid,
            only,
            seed,
            verbose,
            kernels,
            device,
        } => run_on(
            &device,
            CrosscheckJob {
                grid,
                only,
                seed,
                verbose,
                kernels: kernels.map(|k| match k {
                    KernelSet::Backend => moco_cli::models::Kernels::BACKEND,
                    KernelSet::Gpu => moco_cli::models::Kernels::GPU,
                    KernelSet::Cpu => moco_cli::models::Kernels::CPU,
                }),
            },
        ),
        Command::Devices => {
            println!("{}", moco_cli::device::describe_devices());
            Ok(())
        }
        Command::Inspect { file, heads } => inspect_cmd(&file, heads),
        Command::Import {
            file,
            out,
            heads,
            device,
        } => run_on(&device, ImportJob { file, out, heads }),
        Command::Export {
            checkpoint,
            out,
            format,
            what,
            heads,
            device,
        } => run_on(
            &device,
            ExportJob {
                checkpoint,
                out,
                format,
                what,
                heads,
            },
        ),
    };
    match result {
        Ok(()) => moco_cli::signals::exit_status(),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_step_bench(args: &moco_cli::bench_step::StepBenchArgs) -> CmdResult {
    let r = moco_cli::bench_step::run_step_bench(args)?;
    println!("{}", serde_json::to_string(&r).expect("serialises"));
    Ok(())
}

fn run_on<J: BackendJob<Output = CmdResult>>(device: &DeviceSpec, job: J) -> CmdResult {
    dispatch(device, Precision::F32, job).map_err(|e| e.to_string())?
}

struct ParityJob {
    target: PathBuf,
}

impl BackendJob for ParityJob {
    type Output = CmdResult;
    fn run(self, device: Device) -> CmdResult {
        let (dir, tags) = parity::resolve(&self.target)?;
        let mut failed = Vec::new();
        for tag in &tags {
            let report = if tag == "misc" {
                parity::run_misc(&dir, &device)
            } else {
                parity::run_case(&dir, tag, &device)
            };
            match report {
                Ok(report) => {
                    print!("{report}");
                    if !report.passed() {
                        failed.push(tag.clone());
                    }
                }
                Err(e) => {
                    println!("case {tag}\n  FAIL: {e}");
                    failed.push(tag.clone());
                }
            }
        }
        println!(
            "{} passed, {} failed",
            tags.len() - failed.len(),
            failed.len()
        );
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("parity failed for: {}", failed.join(", ")))
        }
    }
}

struct CrosscheckJob {
    grid: moco_cli::crosscheck::Grid,
    only: Option<String>,
    seed: u64,
    verbose: bool,
    kernels: Option<moco_cli::models::Kernels>,
}

impl BackendJob for CrosscheckJob {
    type Output = CmdResult;
    fn run(self, device: Device) -> CmdResult {
        let cases: Vec<_> = self
            .grid
            .cases()
            .into_iter()
            .filter(|c| {
                self.only
                    .as_ref()
                    .is_none_or(|o| c.name.contains(o.as_str()))
            })
            .collect();
        if cases.is_empty() {
            return Err("no case of the grid matches --only".into());
        }
        let mut failed = Vec::new();
        for case in &cases {
            let start = std::time::Instant::now();
            let report =
                moco_cli::crosscheck::run_cross_case(case, self.seed, self.kernels, &device)
                    .map_err(|e| format!("{}: {e}", case.name))?;
            let secs = start.elapsed().as_secs_f64();
            let worst = report.worst().map_or(String::new(), |c| match &c.error {
                Some(e) => format!("{}: {e}", c.name),
                None => format!("worst {} at {:.2} of its tolerance", c.name, c.worst),
            });
            let verdict = if report.passed() { "pass" } else { "FAIL" };
            println!("{verdict}  {:<52} {secs:>6.1}s  {worst}", case.name);
            if self.verbose || !report.passed() {
                print!("{report}");
            }
            if !report.passed() {
                failed.push(case.name.clone());
            }
        }
        println!(
            "{} passed, {} failed",
            cases.len() - failed.len(),
            failed.len()
        );
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the device differs from the CPU on: {}",
                failed.join("; ")
            ))
        }
    }
}

fn options(heads: Option<usize>) -> ImportOptions {
    ImportOptions {
        heads,
        freeze_patch_embed: None,
    }
}

fn inspect_cmd(file: &Path, heads: Option<usize>) -> CmdResult {
    let w = inspect(file, &options(heads)).map_err(|e| e.to_string())?;
    println!("file: {}", file.display());
    println!("tensors: {}", w.all.len());
    println!(
        "layout: {}",
        match w.layout {
            Layout::Moco => "MoCo model (base encoder, momentum encoder, predictor)",
            Layout::Backbone => "backbone",
        }
    );
    println!("backbone: {}", w.backbone_config.describe());
    if let Some(c) = &w.moco_config {
        let head = |h: &moco_cli::models::MlpHeadConfig| {
            format!(
                "{} layers {}→{}→{}{}",
                h.num_layers,
                h.input_dim,
                h.mlp_dim,
                h.output_dim,
                if h.last_bn { " +BN" } else { "" }
            )
        };
        println!("projector: {}", head(&c.projector));
        println!("predictor: {}", head(&c.predictor));
        println!(
            "config: {}",
            serde_json::to_string(c).expect("config serialises")
        );
    } else if !w.ignored.is_empty() {
        println!(
            "classifier (not part of the backbone): {}",
            w.ignored.join(", ")
        );
    }
    Ok(())
}

struct ImportJob {
    file: PathBuf,
    out: PathBuf,
    heads: Option<usize>,
}

impl BackendJob for ImportJob {
    type Output = CmdResult;
    fn run(self, device: Device) -> CmdResult {
        let opts = options(self.heads);
        let inspected = inspect(&self.file, &opts).map_err(|e| e.to_string())?;
        for w in &inspected.warnings {
            eprintln!("warning: {w}");
        }
        let what = match inspected.layout {
            Layout::Moco => {
                let (model, config) =
                    moco_from(&inspected, &self.file, &device).map_err(|e| e.to_string())?;
                save_checkpoint(&model, &config, &self.out).map_err(|e| e.to_string())?;
                format!("MoCo model, {}", config.backbone.describe())
            }
            Layout::Backbone => {
                let (backbone, config) =
                    backbone_from(&inspected, &self.file, &device).map_err(|e| e.to_string())?;
                save_backbone_checkpoint(&backbone, &config, &self.out)
                    .map_err(|e| e.to_string())?;
                if !inspected.ignored.is_empty() {
                    println!(
                        "left out (not part of the backbone): {}",
                        inspected.ignored.join(", ")
                    );
                }
                format!("backbone, {}", config.describe())
            }
        };
        println!(
            "imported {} ({what}) → {}",
            self.file.display(),
            self.out.display()
        );
        Ok(())
    }
}

struct ExportJob {
    checkpoint: PathBuf,
    out: PathBuf,
    format: Option<ExportFormat>,
    what: ExportWhat,
    heads: Option<usize>,
}

impl BackendJob for ExportJob {
    type Output = CmdResult;
    fn run(self, device: Device) -> CmdResult {
        let loaded = moco_cli::train::load_pretrained(&self.checkpoint, self.heads, &device)
            .map_err(|e| e.to_string())?;
        check_format(self.format, &loaded.backbone_config)?;
        // The official layout is a whole model.
        let what = match self.format {
            Some(ExportFormat::Moco) => ExportWhat::Model,
            _ => self.what,
        };
        let n = match (what, self.format) {
            (ExportWhat::Model, Some(ExportFormat::Deit)) => {
                return Err("the DeiT layout holds a backbone: use --what backbone".into())
            }
            (ExportWhat::Model, _) => {
                let (model, config) = loaded.moco.as_ref().ok_or_else(|| {
                    format!(
                        "{}: holds no momentum encoder and predictor (a backbone, or a SimCLR run); export it with --what backbone",
                        self.checkpoint.display()
                    )
                })?;
                match self.format {
                    Some(ExportFormat::Moco) => export_official(model, config, &self.out),
                    _ => export_moco(model, config, &self.out),
                }
            }
            (ExportWhat::Backbone, Some(ExportFormat::Deit)) => {
                export_deit(&loaded.backbone, &loaded.backbone_config, &self.out)
            }
            (ExportWhat::Backbone, _) => {
                export_backbone(&loaded.backbone, &loaded.backbone_config, &self.out)
            }
        }
        .map_err(|e| e.to_string())?;
        println!("wrote {n} tensors to {}", self.out.display());
        Ok(())
    }
}

fn check_format(format: Option<ExportFormat>, config: &BackboneConfig) -> CmdResult {
    match (format, config) {
        (Some(ExportFormat::Torchvision), BackboneConfig::Vit(_)) => {
            Err("a ViT exports with timm names: use --format timm".into())
        }
        (Some(ExportFormat::Timm | ExportFormat::Deit), BackboneConfig::ResNet(_)) => {
            Err("a ResNet exports with torchvision names: use --format torchvision".into())
        }
        _ => Ok(()),
    }
}
