//! The data of a run: opening a dataset's training and held-out splits (or the default
//! Fashion-MNIST) and the loaders of pretraining and of the kNN monitor.

use std::path::Path;
use std::sync::Arc;

use moco_data::{
    default_fashion_mnist, open_dataset, AugmentConfig, DatasetKind, ImageDataset, Loader,
    LoaderConfig, SharedDataset, Split, Subset, Views,
};

use crate::config::PretrainConfig;
use crate::TrainError;

/// The data of a run: pretraining set, kNN memory and evaluation sets.
pub struct RunData {
    /// Two-view loader of the pretraining set.
    pub train: Loader,
    /// The kNN memory (training images).
    pub memory: SharedDataset,
    /// The kNN queries (held-out images).
    pub eval: SharedDataset,
    /// The augmentations (the kNN monitor uses their evaluation view).
    pub augment: Arc<AugmentConfig>,
    /// Which data is used.
    pub note: String,
}

/// The pretraining / training split and the held-out split of `data` (`None`: the default
/// Fashion-MNIST; `bundled`: the bundled split even when the full set is installed), with the format and a sentence saying what is used. Data without a test
/// split keeps a fixed 10 % of its training images out.
pub fn open_splits(
    data: Option<&Path>,
    kind: Option<DatasetKind>,
    seed: u64,
) -> Result<(SharedDataset, SharedDataset, Option<DatasetKind>, String), TrainError> {
    // The format: forced, detected, or none for the default Fashion-MNIST.
    let kind = match (data, kind) {
        (None, _) => None,
        (Some(p), _) if p == Path::new("bundled") => None,
        (Some(_), Some(k)) => Some(k),
        (Some(p), None) => Some(moco_data::detect(p)?.0),
    };
    let bundled = data.is_some_and(|p| p == Path::new("bundled"));
    let (train, eval, note) = match data {
        None => default_fashion_mnist()?,
        Some(_) if bundled => {
            let (train, eval) = moco_data::bundled_fashion_mnist()?;
            let note = format!(
                "using the bundled Fashion-MNIST test split ({} training / {} evaluation images)",
                train.len(),
                eval.len()
            );
            (train, eval, note)
        }
        Some(path) => {
            let train = open_dataset(path, kind, Split::Train)?;
            match open_dataset(path, kind, Split::Test) {
                Ok(test) => {
                    let note = format!(
                        "training on {}; evaluation on {}",
                        train.describe(),
                        test.describe()
                    );
                    (train, test, note)
                }
                Err(e) => {
                    eprintln!("note: no usable test split ({e})");
                    let keep = train.len() - (train.len() / 10).max(1);
                    let (a, b) = Subset::split(train, keep, seed ^ 0x5eed);
                    let note = format!(
                        "no test split found: {} for training, {} held out for evaluation",
                        a.describe(),
                        b.describe()
                    );
                    (
                        Arc::new(a) as SharedDataset,
                        Arc::new(b) as SharedDataset,
                        note,
                    )
                }
            }
        }
    };
    Ok((train, eval, kind, note))
}

/// Opens the datasets and loaders a configuration asks for.
pub fn prepare_data(config: &PretrainConfig) -> Result<RunData, TrainError> {
    config.check_data().map_err(TrainError::Config)?;
    let (train, eval, kind, note) = open_splits(
        config.data.path.as_deref().map(Path::new),
        config.dataset_kind().map_err(TrainError::Config)?,
        config.seed,
    )?;
    if train.channels() != config.model.in_chans {
        return Err(TrainError::Config(format!(
            "the data has {} channel(s) but the model expects in_chans = {}",
            train.channels(),
            config.model.in_chans
        )));
    }
    let aug = Arc::new(config.augment(kind));
    let micro = config.schedule.batch_size / config.schedule.grad_accum;
    let mut train_cfg = LoaderConfig::train(micro, config.seed);
    train_cfg.workers = config.data.workers;
    train_cfg.strict = config.data.strict;
    let memory_set: Arc<dyn ImageDataset> = if train.len() > config.monitors.knn_memory {
        Arc::new(Subset::split(train.clone(), config.monitors.knn_memory, 7).0)
    } else {
        train.clone()
    };
    let eval_set: Arc<dyn ImageDataset> = if eval.len() > config.monitors.knn_eval {
        Arc::new(Subset::split(eval, config.monitors.knn_eval, 11).0)
    } else {
        eval
    };
    Ok(RunData {
        train: Loader::new(train, Views::Two(aug.clone()), train_cfg)?,
        memory: memory_set,
        eval: eval_set,
        augment: aug,
        note,
    })
}
