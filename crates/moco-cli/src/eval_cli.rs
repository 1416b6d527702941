//! `moco knn`, `moco probe`, `moco finetune` and `moco features`: the evaluation protocols and
//! feature export on any checkpoint, on the chosen device.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::prelude::*;
use clap::{Args, ValueEnum};
use moco_data::DatasetKind;
use moco_train::eval::features::{
    features_of_dataset, features_of_images, read_images, write_outputs,
};
use moco_train::eval::finetune::{finetune, FinetuneConfig};
use moco_train::eval::probe::{
    linear_probe, raw_pixel_probe, save_classifier_model, ProbeConfig, ProbeReport,
};
use moco_train::eval::{evaluate_knn, raw_pixel_knn, EvalData};
use moco_train::{load_pretrained, open_eval_data, DataSpec, KnnConfig, Pretrained};

use crate::device::{dispatch, BackendJob, DeviceSpec};

type CmdResult = Result<(), String>;

/// Which network to evaluate.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A `moco pretrain` run directory (its newest checkpoint) or checkpoint folder, a checkpoint
    /// file from `moco import` (`.bpk`, or a Burn 0.21 `.mpk`), an official `.pth.tar`, or a `.safetensors` export.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// ViT attention heads, when the width has no preset.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Evaluate the checkpoint's architecture at a fresh random initialisation (the baseline).
    #[arg(long)]
    pub random_init: bool,
    /// The device to run on (the help lists this build's).
    #[arg(help = crate::device::device_help(), long, default_value = "auto")]
    pub device: DeviceSpec,
}

/// Which labelled data.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Dataset path (IDX, CIFAR binary, image folder), or `bundled` for the bundled
    /// Fashion-MNIST split; default: Fashion-MNIST (the full set when installed, else bundled).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Force the format (default: detected from the files).
    #[arg(long, value_parser = crate::cli::OneOf(&DatasetKind::ALL))]
    pub dataset: Option<DatasetKind>,
    /// Loader threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Seed (classifier initialisation, order, augmentations, held-out split).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Smallest area fraction of the training crop (probe, fine-tuning); default 0.08 for
    /// image folders, 0.2 for 28/32 px datasets.
    #[arg(long)]
    pub crop_min: Option<f64>,
}

impl DataArgs {
    fn spec(&self) -> Result<DataSpec, String> {
        Ok(DataSpec {
            data: self.data.clone(),
            dataset: self.dataset,
            workers: self.workers,
            seed: self.seed,
            crop_min: self.crop_min,
        })
    }
}

/// Flags of `moco knn`.
#[derive(Args, Debug, Clone)]
pub struct KnnArgs {
    /// The network.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The labelled data.
    #[command(flatten)]
    pub data: DataArgs,
    /// Neighbours.
    #[arg(long, default_value_t = 200)]
    pub k: usize,
    /// Temperature of the vote weights.
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f64,
    /// Use at most this many training images as memory (a fixed random subset).
    #[arg(long)]
    pub memory: Option<usize>,
    /// Classify at most this many test images.
    #[arg(long)]
    pub queries: Option<usize>,
    /// The raw-pixel baseline: cosine kNN on the pixels (no checkpoint needed).
    #[arg(long)]
    pub raw_pixels: bool,
    /// ViT input side for --raw-pixels without a checkpoint (default: the data's own).
    #[arg(long)]
    pub img_size: Option<usize>,
}

/// Flags of `moco probe`.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// The network.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The labelled data.
    #[command(flatten)]
    pub data: DataArgs,
    /// Epochs.
    #[arg(long, default_value_t = 90)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Base learning rate(s), comma-separated to sweep side by side (default: 3 for a ViT,
    /// 0.1 for a ResNet); lr = base × batch / 256.
    #[arg(long, value_delimiter = ',')]
    pub lr: Vec<f64>,
    /// Compute the features once without augmentation and train on them (seconds).
    #[arg(long)]
    pub cached_features: bool,
    /// Write backbone + the best classifier as safetensors (timm / torchvision names).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Write the per-epoch results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The raw-pixel baseline: the same classifiers trained on the normalised pixels (no
    /// checkpoint needed; default base lr 0.1).
    #[arg(long, conflicts_with_all = ["checkpoint", "save", "random_init"])]
    pub raw_pixels: bool,
    /// Image side for --raw-pixels (default: the data's own).
    #[arg(long, requires = "raw_pixels")]
    pub img_size: Option<usize>,
}

/// Flags of `moco finetune`.
#[derive(Args, Debug, Clone)]
pub struct FinetuneArgs {
    /// The network.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The labelled data.
    #[command(flatten)]
    pub data: DataArgs,
    /// Epochs.
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Warm-up epochs.
    #[arg(long, default_value_t = 5.0)]
    pub warmup_epochs: f64,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Base learning rate (lr = base × batch / 256).
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// AdamW weight decay (biases and norm scales excluded).
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Label smoothing.
    #[arg(long, default_value_t = 0.1)]
    pub label_smoothing: f64,
    /// Stochastic depth of the last ViT block.
    #[arg(long, default_value_t = 0.1)]
    pub drop_path: f64,
    /// Layer-wise lr decay for a ViT (1: off; 0.75 as in BEiT / MAE).
    #[arg(long, default_value_t = 1.0)]
    pub layer_decay: f64,
    /// Write the fine-tuned backbone + head as safetensors (timm / torchvision names).
    #[arg(long)]
    pub save: Option<PathBuf>,
}

/// Which images `moco features` encodes.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SplitArg {
    /// The training split.
    Train,
    /// The test split.
    Test,
}

/// Flags of `moco features`.
#[derive(Args, Debug, Clone)]
pub struct FeaturesArgs {
    /// The network.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The labelled data.
    #[command(flatten)]
    pub data: DataArgs,
    /// Which split of the data.
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    /// Encode your own images instead: a safetensors file with `images` [N, C, H, W] (f32,
    /// already normalised).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

fn load(m: &ModelArgs, device: &Device) -> Result<Pretrained, String> {
    let path = m.checkpoint.as_ref().ok_or(
        "--checkpoint is required (a run directory, a .bpk checkpoint, .pth.tar or .safetensors)",
    )?;
    let model = load_pretrained(path, m.heads, device).map_err(|e| e.to_string())?;
    let model = if m.random_init {
        model.random_init(0, device)
    } else {
        model
    };
    println!(
        "model: {} ({})",
        model.source,
        model.backbone_config.describe()
    );
    Ok(model)
}

fn open_data(d: &DataArgs, model: &Pretrained) -> Result<EvalData, String> {
    let data = open_eval_data(&d.spec()?, &model.backbone_config, model.pretrain.as_ref())
        .map_err(|e| e.to_string())?;
    println!("{}", data.note);
    Ok(data)
}

/// The labelled data for a raw-pixel baseline (no checkpoint): views at `img_size`, or at
/// the data's own size (28 px Fashion-MNIST and MNIST, 32 px CIFAR, 224 px folders).
fn pixel_data(args: &DataArgs, img_size: Option<usize>) -> Result<EvalData, String> {
    let spec = args.spec()?;
    let (train, _, kind, _) =
        moco_train::open_splits(spec.data.as_deref(), spec.dataset, spec.seed)
            .map_err(|e| e.to_string())?;
    let native = match kind {
        Some(DatasetKind::Cifar10 | DatasetKind::Cifar100) => 32,
        Some(DatasetKind::Folder) => 224,
        _ => 28,
    };
    let size = img_size.filter(|&s| s > 0).unwrap_or(native);
    let config = moco_models::BackboneConfig::preset("resnet18")
        .map_err(|e| e.to_string())?
        .with_input(Some(size), Some(train.channels()), None);
    open_eval_data(&spec, &config, None).map_err(|e| e.to_string())
}

struct KnnJob(KnnArgs);

impl BackendJob for KnnJob {
    type Output = CmdResult;
    fn run(self, device: Device) -> CmdResult {
        let a = &self.0;
        let knn = KnnConfig {
            k: a.k,
            temperature: a.temperature,
            ..KnnConfig::default()
        };
        let (result, what, data) = if a.raw_pixels && a.model.checkpoint.is_none() {
            let data = pixel_data(&a.data, a.img_size)?;
            let r = raw_pixel_knn(&data, &knn, a.memory, a.queries, &device)
                .map_err(|e| e.to_string())?;
            (r, "raw pixels".to_string(), data)
        } else {
            let model = load(&a.model, &device)?;
            let data = open_data(&a.data, &model)?;
            let r = if a.raw_pixels {
                raw_pixel_knn(&data, &knn, a.memory, a.queries, &device)
            } else {
                evaluate_knn(&model.backbone, &data, &knn, a.memory, a.queries, &device)
            }
            .map_err(|e| e.to_string())?;
            let what = if a.raw_pixels {
                "raw pixels".to_string()
            } else {
                model.source.clone()
            };
            (r, what, data)
        };
        let n = |set: &moco_data::SharedDataset, lim: Option<usize>| {
            lim.map_or(set.len(), |l| l.min(set.len()))
        };
        println!(
            "kNN (k = {}, T = {}, memory {}, queries {}) of {what}: top-1 {:.2} %, top-5 {:.2} %",
            a.k,
            a.temperature,
            n(&data.train, a.memory),
            n(&data.test, a.queries),
            result.top1,
            result.top5
        );
        Ok(())
    }
}

struct ProbeJob(ProbeArgs);

impl BackendJob for ProbeJob {
    type Output = CmdResult;
    fn run(self, device: Device) -> CmdResult {
        let a = &self.0;
        let config = ProbeConfig {
            epochs: a.epochs,
            batch_size: a.batch_size,
            base_lrs: a.lr.clone(),
            cached_features: a.cached_features,
            seed: a.data.seed,
            ..ProbeConfig::default()
        };
        if a.raw_pixels {
            let data = pixel_data(&a.data, a.img_size)?;
            let report = raw_pixel_probe(&data, &config, &device).map_err(|e| e.to_string())?;
            return print_probe(&report, "raw pixels", a);
        }
        let model = load(&a.model, &device)?;
        let data = open_data(&a.data, &model)?;
        let report = linear_probe(
            &model.backbone,
            &model.backbone_config,
            &data,
            &config,
            &device,
        )
        .map_err(|e| e.to_string())?;
        print_probe(&report, &model.source, a)?;
        if let Some(path) = &a.save {
            let n = save_classifier_model(
                &model.backbone,
                &model.backbone_config,
                &report.classifier,
                path,
            )
            .map_err(|e| e.to_string())?;
            println!("wrote {n} tensors to {}", path.display());
        }
        Ok(())
    }
}

/// Each learning rate's result, the best one, and the JSON file when asked for.
fn print_probe(report: &ProbeReport, what: &str, a: &ProbeArgs) -> CmdResult {
    for run in &report.runs {
        let (last, best) = (run.epochs.last(), run.best());
        if let (Some(last), Some(best)) = (last, best) {
            println!(
                "base_lr {}: final top-1 {:.2} % top-5 {:.2} %; best top-1 {:.2} % (epoch {})",
                run.base_lr, last.top1, last.top5, best.top1, best.epoch
            );
        }
    }
    let mode = if a.cached_features {
        "cached features"
    } else {
        "augmented"
    };
    let unchanged = if a.raw_pixels {
        ""
    } else {
        "; the backbone is unchanged"
    };
    println!(
        "linear probe of {what}: best base_lr {} ({mode} mode, {:.1} s){unchanged}",
        report.runs[report.best].base_lr, report.seconds
    );
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report.runs).expect("serialises");
        moco_models::write_atomic(path, text.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

struct FinetuneJob(FinetuneArgs);

impl BackendJob for FinetuneJob {
    type Output = CmdResult;
    fn run(self, device: Device) -> CmdResult {
        let a = &self.0;
        let model = load(&a.model, &device.clone().autodiff())?;
        let data = open_data(&a.data, &model)?;
        let config = FinetuneConfig {
            epochs: a.epochs,
            warmup_epochs: a.warmup_epochs,
            batch_size: a.batch_size,
            base_lr: a.lr,
            weight_decay: a.weight_decay,
            label_smoothing: a.label_smoothing,
            drop_path: a.drop_path,
            layer_decay: a.layer_decay,
            seed: a.data.seed,
            save: a.save.clone(),
            quiet: false,
        };
        let report = finetune(
            model.backbone,
            &model.backbone_config,
            &data,
            &config,
            &device,
        )
        .map_err(|e| e.to_string())?;
        if let (Some(last), Some(best)) = (
            report.epochs.last(),
            report
                .epochs
                .iter()
                .max_by(|a, b| a.top1.total_cmp(&b.top1)),
        ) {
            println!(
                "fine-tuning: final top-1 {:.2} % top-5 {:.2} %; best top-1 {:.2} % (epoch {}); {:.0} img/s, {:.0} s",
                last.top1, last.top5, best.top1, best.epoch, report.images_per_sec, report.seconds
            );
        }
        Ok(())
    }
}

struct FeaturesJob(FeaturesArgs);

impl BackendJob for FeaturesJob {
    type Output = CmdResult;
    fn run(self, device: Device) -> CmdResult {
        let a = &self.0;
        let model = load(&a.model, &device)?;
        let mut meta = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            ("checkpoint".to_string(), model.source.clone()),
            (
                "moco_backbone".to_string(),
                serde_json::to_string(&model.backbone_config).expect("serialises"),
            ),
        ]);
        let outputs = match &a.input {
            Some(input) => {
                let images =
                    read_images(input, &model.backbone_config).map_err(|e| e.to_string())?;
                meta.insert("input".into(), input.display().to_string());
                features_of_images(&model, images, &device)
            }
            None => {
                let data = open_data(&a.data, &model)?;
                let set = match a.split {
                    SplitArg::Train => &data.train,
                    SplitArg::Test => &data.test,
                };
                meta.insert("dataset".into(), set.describe());
                meta.insert("classes".into(), set.classes().join(","));
                features_of_dataset(&model, &data, set, &device).map_err(|e| e.to_string())?
            }
        };
        write_outputs(&a.out, &outputs, meta).map_err(|e| e.to_string())?;
        let listing: Vec<String> = outputs
            .iter()
            .map(|(n, d)| format!("{n} {:?}", d.shape().to_vec()))
            .collect();
        println!("wrote {} to {}", listing.join(", "), a.out.display());
        Ok(())
    }
}

fn on<J: BackendJob<Output = CmdResult>>(device: &DeviceSpec, job: J) -> CmdResult {
    dispatch(device, moco_models::Precision::F32, job).map_err(|e| e.to_string())?
}

/// Runs `moco knn`.
pub fn run_knn(args: KnnArgs) -> CmdResult {
    on(&args.model.device.clone(), KnnJob(args))
}

/// Runs `moco probe`.
pub fn run_probe(args: ProbeArgs) -> CmdResult {
    on(&args.model.device.clone(), ProbeJob(args))
}

/// Runs `moco finetune`.
pub fn run_finetune(args: FinetuneArgs) -> CmdResult {
    on(&args.model.device.clone(), FinetuneJob(args))
}

/// Runs `moco features`.
pub fn run_features(args: FeaturesArgs) -> CmdResult {
    on(&args.model.device.clone(), FeaturesJob(args))
}
