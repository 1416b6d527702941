//! Evaluation of pretrained backbones with the paper's protocols — weighted kNN
//! ([`evaluate_knn`]), linear probing ([`probe`]), end-to-end fine-tuning ([`finetune`]) — and
//! feature export ([`features`]), from any checkpoint a user has: a `moco pretrain` run
//! directory or checkpoint folder, a `moco import` file, an official `.pth.tar` or an exported
//! `.safetensors`.

pub mod features;
pub mod finetune;
pub mod probe;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use moco_data::{AugmentConfig, DatasetKind, Loader, LoaderConfig, SharedDataset, Subset, Views};
use moco_models::import::{backbone_from, inspect, moco_from, ImportOptions, Layout};
use moco_models::{
    load_backbone_checkpoint, load_checkpoint, sniff, AnyBackbone, BackboneConfig, MlpHead, MoCo,
    MocoConfig, WeightFile,
};

use crate::config::{augment_for, PretrainConfig};
use crate::data::open_splits;
use crate::knn::{extract_features_with, knn_classify, KnnConfig, KnnResult};
use crate::method::{Method, Siamese, SimClr};
use crate::run_state::list_checkpoints;
use crate::TrainError;

/// A pretrained network loaded for evaluation.
#[derive(Debug)]
pub struct Pretrained {
    /// The backbone (the base / online encoder's).
    pub backbone: AnyBackbone,
    /// Its architecture.
    pub backbone_config: BackboneConfig,
    /// The projector, when the file holds one.
    pub projector: Option<MlpHead>,
    /// The predictor, when the file holds one (MoCo v3, BYOL).
    pub predictor: Option<MlpHead>,
    /// The pretraining configuration, when loaded from a run.
    pub pretrain: Option<PretrainConfig>,
    /// What was loaded, for messages.
    pub source: String,
    /// The whole MoCo model (both encoders and the predictor), when the file holds one.
    pub moco: Option<(MoCo, MocoConfig)>,
}

impl Pretrained {
    fn from_moco(model: MoCo, config: MocoConfig, source: String) -> Self {
        Pretrained {
            backbone: model.base_encoder.backbone.clone(),
            backbone_config: config.backbone.clone(),
            projector: Some(model.base_encoder.projector.clone()),
            predictor: Some(model.predictor.clone()),
            pretrain: None,
            source,
            moco: Some((model, config)),
        }
    }

    fn from_backbone(backbone: AnyBackbone, config: BackboneConfig, source: String) -> Self {
        Pretrained {
            backbone,
            backbone_config: config,
            projector: None,
            predictor: None,
            pretrain: None,
            source,
            moco: None,
        }
    }

    /// The same architecture at a fresh random initialisation (seeded), without heads: the
    /// baseline every pretrained number is compared with.
    pub fn random_init(self, seed: u64, device: &Device) -> Self {
        device.seed(seed);
        Pretrained {
            backbone: self.backbone_config.init(device),
            projector: None,
            predictor: None,
            moco: None,
            source: format!("{} at random initialisation (seed {seed})", self.source),
            ..self
        }
    }
}

/// Loads a pretrained network from
/// - a run directory of `moco pretrain` (its newest checkpoint) or one of its checkpoint
///   folders (`RUN/checkpoints/step-N`, or the `model.bpk` inside; `model.mpk` from the Burn
///   0.21 build),
/// - a checkpoint written by `moco import` or `moco finetune`,
/// - an official MoCo v3 / linear-probe / DeiT-style `torch.save` file or a safetensors
///   export,
///
/// whatever the file is called: its content says which ([`moco_models::weights`]).
/// `heads` is the ViT's attention-head count where the width has no preset.
pub fn load_pretrained(
    path: &Path,
    heads: Option<usize>,
    device: &Device,
) -> Result<Pretrained, TrainError> {
    if path.is_dir() {
        if crate::run_state::model_file(path).is_file() {
            return load_run_checkpoint(path, device);
        }
        let newest = list_checkpoints(path).pop().ok_or_else(|| {
            TrainError::Config(format!(
                "{}: neither a run directory with checkpoints (checkpoints/step-*) nor a checkpoint folder (model.bpk)",
                path.display()
            ))
        })?;
        return load_run_checkpoint(&newest, device);
    }
    if !path.exists() {
        return Err(TrainError::Io(format!("{}: no such file", path.display())));
    }
    let source = path.display().to_string();
    match sniff(path)? {
        WeightFile::RunModel => {
            let folder = path.parent().unwrap_or(Path::new("."));
            if !folder.join("state.json").is_file() {
                return Err(TrainError::Config(format!(
                    "{}: the model record of a training run, outside its checkpoint folder: pass the run directory or the folder with state.json",
                    path.display()
                )));
            }
            load_run_checkpoint(folder, device)
        }
        WeightFile::BackboneCheckpoint => {
            let (backbone, config) = load_backbone_checkpoint(path, device)?;
            Ok(Pretrained::from_backbone(backbone, config, source))
        }
        WeightFile::MocoCheckpoint => {
            let (model, config) = load_checkpoint(path, device)?;
            Ok(Pretrained::from_moco(model, config, source))
        }
        WeightFile::Torch | WeightFile::Safetensors => {
            let options = ImportOptions {
                heads,
                freeze_patch_embed: None,
            };
            // The file is read once; its layout says what it holds.
            let weights = inspect(path, &options)?;
            for w in &weights.warnings {
                eprintln!("warning: {w}");
            }
            Ok(match weights.layout {
                Layout::Moco => {
                    let (model, config) = moco_from(&weights, path, device)?;
                    Pretrained::from_moco(model, config, source)
                }
                Layout::Backbone => {
                    let (backbone, config) = backbone_from(&weights, path, device)?;
                    Pretrained::from_backbone(backbone, config, source)
                }
            })
        }
    }
}

/// Loads the checkpoint folder `dir` (`RUN/checkpoints/step-N`) with the run's configuration.
fn load_run_checkpoint(dir: &Path, device: &Device) -> Result<Pretrained, TrainError> {
    let run_dir = dir.parent().and_then(Path::parent).ok_or_else(|| {
        TrainError::Config(format!("{}: not inside a run directory", dir.display()))
    })?;
    let config_path = run_dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| TrainError::Io(format!("{}: {e}", config_path.display())))?;
    let config: PretrainConfig = serde_json::from_str(&text)
        .map_err(|e| TrainError::Config(format!("{}: {e}", config_path.display())))?;
    let model_config = config.model_config()?;
    let model_path = crate::run_state::model_file(dir);
    let (_, tensors) = moco_models::checkpoint::read_tensors(&model_path)?;
    let source = dir.display().to_string();
    let mismatch = |e: moco_models::ModelError| {
        TrainError::Io(format!(
            "{e} (the model in {} is {})",
            config_path.display(),
            model_config.backbone.describe()
        ))
    };
    use moco_models::checkpoint::apply_tensors as apply;
    let mut loaded = match config.method {
        Method::SimClr => {
            let model = Method::simclr(&model_config, device);
            let SimClr { encoder } = apply(model, tensors, &model_path).map_err(mismatch)?;
            let mut p =
                Pretrained::from_backbone(encoder.backbone, model_config.backbone.clone(), source);
            p.projector = Some(encoder.projector);
            p
        }
        method => {
            let model: Siamese = method.siamese(&model_config, device);
            let model = apply(model, tensors, &model_path).map_err(mismatch)?;
            Pretrained::from_moco(model.model, model_config.clone(), source)
        }
    };
    loaded.pretrain = Some(config);
    Ok(loaded)
}

/// Where the labelled data comes from.
#[derive(Clone, Debug, Default)]
pub struct DataSpec {
    /// A dataset path (`None`: the default Fashion-MNIST: the full set when installed, else the
    /// bundled split).
    pub data: Option<PathBuf>,
    /// The format, when detection should not decide.
    pub dataset: Option<DatasetKind>,
    /// Loader threads.
    pub workers: usize,
    /// Seed of the held-out split (data without a test split) and of shuffling.
    pub seed: u64,
    /// Smallest area fraction of the training crop (probe, fine-tuning); default 0.08 for
    /// image folders, 0.2 for 28/32 px datasets.
    pub crop_min: Option<f64>,
}

/// Labelled training and test sets with the transform that matches a backbone.
pub struct EvalData {
    /// The labelled training split (kNN memory, classifier training).
    pub train: SharedDataset,
    /// The test split.
    pub test: SharedDataset,
    /// Normalisation, evaluation view and supervised view.
    pub aug: Arc<AugmentConfig>,
    /// Loader threads.
    pub workers: usize,
    /// Seed for shuffling.
    pub seed: u64,
    /// What is used, in words.
    pub note: String,
}

impl EvalData {
    /// A loader of evaluation views of `set`.
    pub fn eval_loader(&self, set: &SharedDataset, batch: usize) -> Result<Loader, TrainError> {
        let mut cfg = LoaderConfig::eval(batch);
        cfg.workers = self.workers;
        Ok(Loader::new(
            set.clone(),
            Views::Eval(self.aug.clone()),
            cfg,
        )?)
    }

    /// A shuffled loader of augmented training views (crop + flip).
    pub fn train_loader(&self, batch: usize) -> Result<Loader, TrainError> {
        let mut cfg = LoaderConfig::train(batch, self.seed);
        cfg.drop_last = false;
        cfg.workers = self.workers;
        Ok(Loader::new(
            self.train.clone(),
            Views::Supervised(self.aug.clone()),
            cfg,
        )?)
    }

    /// Number of classes of the labelled data.
    pub fn num_classes(&self) -> usize {
        self.train.classes().len().max(self.test.classes().len())
    }
}

fn channels_of(config: &BackboneConfig) -> usize {
    match config {
        BackboneConfig::Vit(v) => v.in_chans,
        BackboneConfig::ResNet(r) => r.in_chans,
    }
}

/// Opens the labelled data for a backbone: the image size is the ViT's, or for a ResNet the
/// pretraining run's on the same data, else the dataset's own (28, 32, or 224 for folders).
pub fn open_eval_data(
    spec: &DataSpec,
    backbone: &BackboneConfig,
    pretrain: Option<&PretrainConfig>,
) -> Result<EvalData, TrainError> {
    if let Some(c) = spec.crop_min {
        if !(c > 0.0 && c <= 1.0) {
            return Err(TrainError::Config(format!(
                "crop_min must be in (0, 1], got {c}"
            )));
        }
    }
    let (train, test, kind, note) = open_splits(spec.data.as_deref(), spec.dataset, spec.seed)?;
    let native = match kind {
        None | Some(DatasetKind::FashionMnist | DatasetKind::Mnist) => 28,
        Some(DatasetKind::Cifar10 | DatasetKind::Cifar100) => 32,
        Some(DatasetKind::Folder) => 224,
    };
    let same_data =
        pretrain.is_some_and(|p| p.data.path.as_deref().map(Path::new) == spec.data.as_deref());
    let img_size = match backbone {
        BackboneConfig::Vit(v) => v.img_size,
        BackboneConfig::ResNet(_) => match pretrain {
            Some(p) if same_data => p.model.img_size,
            _ => native,
        },
    };
    let expected = channels_of(backbone);
    if train.channels() != expected {
        return Err(TrainError::Config(format!(
            "{} has {} channel(s) but the backbone expects {expected}",
            train.describe(),
            train.channels()
        )));
    }
    Ok(EvalData {
        train,
        test,
        // ImageNet's linear-probe crop keeps 8–100 % of the area; small images keep 20–100 %
        // (the 28/32 px pretraining presets' range), or the crop is mostly noise.
        aug: Arc::new(augment_for(
            kind,
            img_size,
            if kind == Some(DatasetKind::Folder) {
                0.08
            } else {
                0.2
            },
        )),
        workers: spec.workers,
        seed: spec.seed,
        note,
    })
}

/// At most `limit` samples of `set` (a fixed random subset), or all of it.
pub fn limit(set: &SharedDataset, limit: Option<usize>, seed: u64) -> SharedDataset {
    match limit {
        Some(n) if n < set.len() => Arc::new(Subset::split(set.clone(), n, seed).0),
        _ => set.clone(),
    }
}

/// Weighted kNN of `backbone`'s features: the training split is the memory, the test split
/// the queries; both optionally limited to a fixed random subset. The backbone runs as given
/// (pass a module of a backend without autodiff for eval mode).
pub fn evaluate_knn(
    backbone: &AnyBackbone,
    data: &EvalData,
    knn: &KnnConfig,
    memory_limit: Option<usize>,
    query_limit: Option<usize>,
    device: &Device,
) -> Result<KnnResult, TrainError> {
    let memory = data.eval_loader(&limit(&data.train, memory_limit, 7), 256)?;
    let queries = data.eval_loader(&limit(&data.test, query_limit, 11), 256)?;
    let f = |x| backbone.forward(x);
    let (mem, mem_labels) = extract_features_with(&f, &memory, device)?;
    let (q, q_labels) = extract_features_with(&f, &queries, device)?;
    Ok(knn_classify(
        mem,
        &mem_labels,
        q,
        &q_labels,
        data.num_classes(),
        knn,
    ))
}

/// The raw-pixel baseline: weighted kNN on the cosine similarity of the evaluation views'
/// pixels in [0, 1] (no normalisation by the dataset mean).
pub fn raw_pixel_knn(
    data: &EvalData,
    knn: &KnnConfig,
    memory_limit: Option<usize>,
    query_limit: Option<usize>,
    device: &Device,
) -> Result<KnnResult, TrainError> {
    let mut aug = (*data.aug).clone();
    aug.mean = vec![0.0; aug.mean.len()];
    aug.std = vec![1.0; aug.std.len()];
    let raw = EvalData {
        train: data.train.clone(),
        test: data.test.clone(),
        aug: Arc::new(aug),
        workers: data.workers,
        seed: data.seed,
        note: data.note.clone(),
    };
    let memory = raw.eval_loader(&limit(&raw.train, memory_limit, 7), 256)?;
    let queries = raw.eval_loader(&limit(&raw.test, query_limit, 11), 256)?;
    let f = |x: Tensor<4>| x.flatten(1, 3);
    let (mem, mem_labels) = extract_features_with(&f, &memory, device)?;
    let (q, q_labels) = extract_features_with(&f, &queries, device)?;
    Ok(knn_classify(
        mem,
        &mem_labels,
        q,
        &q_labels,
        raw.num_classes(),
        knn,
    ))
}
