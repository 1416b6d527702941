//! Any Burn [`Dataset`] of images as an [`ImageDataset`], so that a project's own data feeds
//! the two-view loader, pretraining and the kNN monitor.
//!
//! ```
//! use burn::data::dataset::InMemDataset;
//! use moco_data::{FromBurn, Image, ImageDataset, Sample};
//!
//! #[derive(Clone)]
//! struct Item { pixels: Vec<u8>, label: usize }
//!
//! let items = (0..10).map(|i| Item { pixels: vec![i as u8; 64], label: i % 2 }).collect();
//! let data = FromBurn::new(InMemDataset::new(items), |item: Item| Sample {
//!     image: Image::from_u8_chw(1, 8, 8, &item.pixels),
//!     label: item.label,
//! })
//! .with_classes(vec!["even".into(), "odd".into()]);
//! assert_eq!(data.len(), 10);
//! assert_eq!(data.channels(), 1);
//! assert_eq!(data.get(3).unwrap().label, 1);
//! ```

use std::marker::PhantomData;

use burn::data::dataset::{Dataset, DatasetError};

use crate::dataset::{DataError, ImageDataset, Sample};

/// A Burn dataset of items `I` (with its error type `E`), each turned into a labelled image by
/// a function.
pub struct FromBurn<D, I, F, E = DatasetError> {
    dataset: D,
    to_sample: F,
    classes: Option<Vec<String>>,
    name: String,
    _item: PhantomData<fn() -> (I, E)>,
}

impl<D, I, F, E> FromBurn<D, I, F, E>
where
    D: Dataset<I, E>,
    E: std::error::Error + Send + Sync + 'static,
    F: Fn(I) -> Sample + Send + Sync,
{
    /// `dataset` with `to_sample` making each item a [`Sample`] (an image in `[0, 1]`,
    /// channels first, and a class index).
    pub fn new(dataset: D, to_sample: F) -> Self {
        FromBurn {
            dataset,
            to_sample,
            classes: None,
            name: "burn dataset".into(),
            _item: PhantomData,
        }
    }

    /// The class names (index = label); by default `0`, `1`, … up to the largest label of
    /// the first 1,000 items.
    pub fn with_classes(mut self, classes: Vec<String>) -> Self {
        self.classes = Some(classes);
        self
    }

    /// A name for messages.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    fn first(&self) -> Option<Sample> {
        if self.dataset.is_empty() {
            return None;
        }
        self.dataset.get(0).ok().map(&self.to_sample)
    }
}

impl<D, I, F, E> ImageDataset for FromBurn<D, I, F, E>
where
    D: Dataset<I, E>,
    E: std::error::Error + Send + Sync + 'static,
    F: Fn(I) -> Sample + Send + Sync,
{
    fn len(&self) -> usize {
        self.dataset.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        // Burn's datasets panic on an index out of range: check it first.
        if index >= self.dataset.len() {
            return Err(DataError::Invalid(format!(
                "{}: no item {index} (it holds {})",
                self.name,
                self.dataset.len()
            )));
        }
        let item = self
            .dataset
            .get(index)
            .map_err(|e| DataError::Invalid(format!("{} item {index}: {e}", self.name)))?;
        Ok((self.to_sample)(item))
    }

    fn classes(&self) -> Vec<String> {
        if let Some(c) = &self.classes {
            return c.clone();
        }
        let n = (0..self.dataset.len().min(1000))
            .filter_map(|i| self.dataset.get(i).ok().map(&self.to_sample))
            .map(|s| s.label + 1)
            .max()
            .unwrap_or(0);
        (0..n).map(|i| i.to_string()).collect()
    }

    fn channels(&self) -> usize {
        self.first().map_or(0, |s| s.image.channels)
    }

    fn source(&self, index: usize) -> String {
        format!("{} item {index}", self.name)
    }

    fn describe(&self) -> String {
        let shape = self
            .first()
            .map(|s| format!("{}×{}×{}", s.image.channels, s.image.height, s.image.width))
            .unwrap_or_else(|| "empty".into());
        format!("{} ({} images, {shape})", self.name, self.len())
    }
}
