//! Datasets and MoCo v3's two-view augmentation pipeline.
//!
//! - [`formats`]: IDX (MNIST, Fashion-MNIST, KMNIST; plain or gzip), CIFAR-10/100 binary and
//!   image folders, with format detection; every bad file is an error naming it.
//! - [`augment`]: the asymmetric two-view augmentation with torchvision's semantics, presets,
//!   and the evaluation transform; [`transforms`] holds the single operations.
//! - [`loader`]: worker threads, prefetch, a per-epoch order from the seed, and views that do
//!   not depend on the number of threads.
//!
//! ```
//! use std::sync::Arc;
//! use moco_data::{bundled_fashion_mnist, AugmentConfig, Loader, LoaderConfig, Views};
//!
//! let (train, _eval) = bundled_fashion_mnist().unwrap();
//! let aug = Arc::new(AugmentConfig::fashion_mnist(28, 0.2));
//! let loader = Loader::new(train, Views::Two(aug), LoaderConfig::train(32, 0)).unwrap();
//! let batch = loader.epoch(0, 0).next().unwrap().unwrap();
//! assert_eq!(batch.shape, [32, 1, 28, 28]);
//! assert_eq!(batch.views.len(), 2);
//! ```
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod augment;
pub mod burn_dataset;
pub mod dataset;
pub mod formats;
pub mod image;
pub mod loader;
pub mod rng;
pub mod transforms;

pub use augment::{AugmentConfig, ViewConfig};
pub use burn_dataset::FromBurn;
pub use dataset::{ArrayDataset, BurnDataset, DataError, ImageDataset, Sample, Subset};
pub use formats::{detect, open_dataset, DatasetKind, ImageFolder, Split};
pub use image::Image;
pub use loader::{Batch, BatchIter, Loader, LoaderConfig, Shard, Views};
pub use rng::Rng;

/// A shared, type-erased dataset.
pub type SharedDataset = Arc<dyn ImageDataset>;

/// Where the repository keeps the bundled Fashion-MNIST test split.
pub fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist")
}

/// Where the Debian package `dataset-fashion-mnist` installs the full dataset.
pub const SYSTEM_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Images of the bundled split used for pretraining; the rest (2,000) is the evaluation set.
pub const BUNDLED_TRAIN: usize = 8000;

/// The bundled Fashion-MNIST test split (10,000 images), divided by a fixed shuffle into
/// 8,000 pretraining and 2,000 evaluation images.
pub fn bundled_fashion_mnist() -> Result<(SharedDataset, SharedDataset), DataError> {
    let all: SharedDataset =
        open_dataset(&bundled_dir(), Some(DatasetKind::FashionMnist), Split::Test)?;
    let (train, eval) = Subset::split(all, BUNDLED_TRAIN, 0x5eed);
    Ok((Arc::new(train), Arc::new(eval)))
}

/// The default data: the full Fashion-MNIST (train / test) when the system has it installed,
/// else the bundled split. Returns the pretraining set, the evaluation set and a sentence
/// saying which was used.
pub fn default_fashion_mnist() -> Result<(SharedDataset, SharedDataset, String), DataError> {
    let system = Path::new(SYSTEM_FASHION_MNIST);
    if system.join("train-images-idx3-ubyte.gz").is_file() {
        let train = open_dataset(system, Some(DatasetKind::FashionMnist), Split::Train)?;
        let test = open_dataset(system, Some(DatasetKind::FashionMnist), Split::Test)?;
        let note = format!("using the full Fashion-MNIST installed at {SYSTEM_FASHION_MNIST} (60,000 train / 10,000 test)");
        return Ok((train, test, note));
    }
    let (train, eval) = bundled_fashion_mnist()?;
    let note = format!(
        "using the bundled Fashion-MNIST test split ({} pretraining / {} evaluation images); install the Debian package dataset-fashion-mnist for the full set",
        train.len(),
        eval.len()
    );
    Ok((train, eval, note))
}
