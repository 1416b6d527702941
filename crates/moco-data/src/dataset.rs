//! The dataset abstraction, in-memory datasets and subsets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::image::Image;

/// Data loading errors; each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A problem with one file or folder.
    #[error("{}: {message}", path.display())]
    File {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A request that cannot be served (bad option, empty selection).
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    /// An error about `path`.
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        DataError::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// One labelled image.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The image.
    pub image: Image,
    /// Class index.
    pub label: usize,
}

/// A labelled image dataset. `get` may fail for datasets decoded lazily from files.
pub trait ImageDataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index` (`index < len()`).
    fn get(&self, index: usize) -> Result<Sample, DataError>;
    /// Class names, index = label.
    fn classes(&self) -> Vec<String>;
    /// Channels of every image (1 or 3).
    fn channels(&self) -> usize;
    /// Where sample `index` comes from, for messages.
    fn source(&self, index: usize) -> String;
    /// One line: format, size, image shape.
    fn describe(&self) -> String;
}

/// Images held in memory as bytes (IDX, CIFAR).
#[derive(Clone, Debug)]
pub struct ArrayDataset {
    name: String,
    channels: usize,
    height: usize,
    width: usize,
    pixels: Arc<Vec<u8>>,
    labels: Arc<Vec<u16>>,
    classes: Vec<String>,
}

impl ArrayDataset {
    /// `pixels` holds `labels.len()` images of `channels × height × width` bytes, channels first.
    pub fn new(
        name: impl Into<String>,
        (channels, height, width): (usize, usize, usize),
        pixels: Vec<u8>,
        labels: Vec<u16>,
        classes: Vec<String>,
    ) -> Result<Self, DataError> {
        let name = name.into();
        if pixels.len() != labels.len() * channels * height * width {
            return Err(DataError::Invalid(format!(
                "{name}: {} bytes of pixels for {} labels of {channels}×{height}×{width} images",
                pixels.len(),
                labels.len()
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(DataError::Invalid(format!(
                "{name}: label {bad} but only {} classes",
                classes.len()
            )));
        }
        Ok(ArrayDataset {
            name,
            channels,
            height,
            width,
            pixels: Arc::new(pixels),
            labels: Arc::new(labels),
            classes,
        })
    }

    /// Every label, in order.
    pub fn labels(&self) -> &[u16] {
        &self.labels
    }
}

impl ImageDataset for ArrayDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let size = self.channels * self.height * self.width;
        let bytes = self
            .pixels
            .get(index * size..(index + 1) * size)
            .ok_or_else(|| {
                DataError::Invalid(format!(
                    "{}: no sample {index} of {}",
                    self.name,
                    self.len()
                ))
            })?;
        Ok(Sample {
            image: Image::from_u8_chw(self.channels, self.height, self.width, bytes),
            label: self.labels[index] as usize,
        })
    }
    fn classes(&self) -> Vec<String> {
        self.classes.clone()
    }
    fn channels(&self) -> usize {
        self.channels
    }
    fn source(&self, index: usize) -> String {
        format!("{} #{index}", self.name)
    }
    fn describe(&self) -> String {
        format!(
            "{}: {} images {}×{}×{}, {} classes",
            self.name,
            self.len(),
            self.channels,
            self.height,
            self.width,
            self.classes.len()
        )
    }
}

/// A selection of another dataset's samples.
#[derive(Clone)]
pub struct Subset {
    inner: Arc<dyn ImageDataset>,
    indices: Vec<usize>,
    label: String,
}

impl Subset {
    /// Samples `indices` of `inner`.
    pub fn new(
        inner: Arc<dyn ImageDataset>,
        indices: Vec<usize>,
        label: impl Into<String>,
    ) -> Self {
        Subset {
            inner,
            indices,
            label: label.into(),
        }
    }

    /// Splits `inner` into two disjoint subsets by a fixed shuffle: the first `first` samples
    /// of the permutation and the rest.
    pub fn split(inner: Arc<dyn ImageDataset>, first: usize, seed: u64) -> (Subset, Subset) {
        let mut order: Vec<usize> = (0..inner.len()).collect();
        crate::rng::Rng::new(seed).shuffle(&mut order);
        let rest = order.split_off(first.min(order.len()));
        (
            Subset::new(inner.clone(), order, "split a"),
            Subset::new(inner, rest, "split b"),
        )
    }
}

impl ImageDataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let i = *self
            .indices
            .get(index)
            .ok_or_else(|| DataError::Invalid(format!("no sample {index} of {}", self.len())))?;
        self.inner.get(i)
    }
    fn classes(&self) -> Vec<String> {
        self.inner.classes()
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn source(&self, index: usize) -> String {
        self.indices
            .get(index)
            .map(|&i| self.inner.source(i))
            .unwrap_or_default()
    }
    fn describe(&self) -> String {
        format!(
            "{} of [{}] ({} samples)",
            self.label,
            self.inner.describe(),
            self.len()
        )
    }
}

/// Any of our datasets as a Burn `Dataset`; a sample that cannot be decoded is an error
/// naming it. As Burn's datasets do, an index out of range panics.
pub struct BurnDataset(pub Arc<dyn ImageDataset>);

impl burn::data::dataset::Dataset<Sample> for BurnDataset {
    fn get(&self, index: usize) -> Result<Sample, burn::data::dataset::DatasetError> {
        assert!(
            index < self.0.len(),
            "index {index} out of range: the dataset holds {} samples",
            self.0.len()
        );
        self.0
            .get(index)
            .map_err(burn::data::dataset::DatasetError::new)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}
