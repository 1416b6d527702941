//! A parallel loader: worker threads decode and augment while the model trains, batches come
//! out in a fixed order that depends only on the seed and the epoch.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::augment::AugmentConfig;
use crate::dataset::{DataError, ImageDataset};
use crate::image::Image;
use crate::rng::Rng;

/// Loader settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffle the order every epoch (from the seed).
    pub shuffle: bool,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Seed of the order and of the augmentations.
    pub seed: u64,
    /// Worker threads (0: load on the calling thread).
    pub workers: usize,
    /// Batches prepared ahead.
    pub prefetch: usize,
    /// Stop at the first undecodable image instead of skipping it.
    pub strict: bool,
}

impl LoaderConfig {
    /// Training defaults: shuffled, last partial batch dropped, 2 workers, 4 batches ahead.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: true,
            drop_last: true,
            seed,
            workers: 2,
            prefetch: 4,
            strict: false,
        }
    }

    /// Evaluation defaults: in order, every sample kept.
    pub fn eval(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: false,
            drop_last: false,
            seed: 0,
            workers: 2,
            prefetch: 4,
            strict: false,
        }
    }
}

/// What the loader produces per sample.
#[derive(Clone, Debug)]
pub enum Views {
    /// Two augmented views (pretraining).
    Two(Arc<AugmentConfig>),
    /// The deterministic evaluation view.
    Eval(Arc<AugmentConfig>),
    /// One view for supervised training (linear probe, fine-tuning): random resized crop and
    /// flip, normalised.
    Supervised(Arc<AugmentConfig>),
}

/// A batch in host memory, ready to become `[B, C, H, W]` tensors.
#[derive(Clone, Debug)]
pub struct Batch {
    /// One (eval) or two (pretraining) buffers of `shape` values each.
    pub views: Vec<Vec<f32>>,
    /// `[batch, channels, height, width]`.
    pub shape: [usize; 4],
    /// Labels of the samples.
    pub labels: Vec<usize>,
    /// Dataset indices of the samples.
    pub indices: Vec<usize>,
}

/// Counters shared by a loader's epochs.
#[derive(Debug, Default)]
pub struct LoaderStats {
    skipped: AtomicUsize,
    warned: Mutex<HashSet<String>>,
}

impl LoaderStats {
    /// Undecodable samples skipped so far.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// Loads a dataset in batches.
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<dyn ImageDataset>,
    views: Views,
    config: LoaderConfig,
    stats: Arc<LoaderStats>,
}

impl Loader {
    /// A loader over `dataset`.
    pub fn new(
        dataset: Arc<dyn ImageDataset>,
        views: Views,
        config: LoaderConfig,
    ) -> Result<Self, DataError> {
        if config.batch_size == 0 {
            return Err(DataError::Invalid("batch size must be positive".into()));
        }
        if dataset.is_empty() {
            return Err(DataError::Invalid(format!(
                "{}: the dataset is empty",
                dataset.describe()
            )));
        }
        if config.drop_last && dataset.len() < config.batch_size {
            return Err(DataError::Invalid(format!(
                "batch size {} is larger than the dataset ({} samples)",
                config.batch_size,
                dataset.len()
            )));
        }
        Ok(Loader {
            dataset,
            views,
            config,
            stats: Arc::new(LoaderStats::default()),
        })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn ImageDataset> {
        &self.dataset
    }

    /// Skip counters.
    pub fn stats(&self) -> &Arc<LoaderStats> {
        &self.stats
    }

    /// Samples per batch.
    pub fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        if self.config.drop_last {
            n / self.config.batch_size
        } else {
            n.div_ceil(self.config.batch_size)
        }
    }

    /// The sample order of `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            Rng::for_sample(self.config.seed, epoch, u64::MAX, 0).shuffle(&mut order);
        }
        order
    }

    /// The batches of `epoch` from batch `start` on, prepared by the worker threads.
    pub fn epoch(&self, epoch: u64, start: usize) -> BatchIter {
        let order = Arc::new(self.order(epoch));
        let end = self.batches_per_epoch();
        let job = Arc::new(Job {
            loader: self.clone(),
            order,
            epoch,
        });
        if self.config.workers == 0 {
            return BatchIter {
                inline: Some(job),
                next: start,
                end,
                rx: None,
                pending: BTreeMap::new(),
                handles: Vec::new(),
            };
        }
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let workers = self.config.workers;
        let handles = (0..workers)
            .map(|w| {
                let tx = tx.clone();
                let job = job.clone();
                std::thread::spawn(move || {
                    for b in (start + w..end).step_by(workers) {
                        if tx.send((b, job.batch(b))).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        BatchIter {
            inline: None,
            next: start,
            end,
            rx: Some(rx),
            pending: BTreeMap::new(),
            handles,
        }
    }
}

struct Job {
    loader: Loader,
    order: Arc<Vec<usize>>,
    epoch: u64,
}

impl Job {
    fn sample(&self, pos: usize) -> Result<(Vec<Image>, usize, usize), DataError> {
        let l = &self.loader;
        let n = self.order.len();
        // An undecodable image is replaced by the next one in the epoch's order, so batches
        // stay full and the replacement is the same on every run.
        for k in 0..n.min(64) {
            let index = self.order[(pos + k) % n];
            match l.dataset.get(index) {
                Ok(s) => {
                    let views = match &l.views {
                        Views::Two(aug) => {
                            let (a, b) =
                                aug.two_views(&s.image, l.config.seed, self.epoch, index as u64);
                            vec![a, b]
                        }
                        Views::Eval(aug) => vec![aug.eval_view(&s.image)],
                        Views::Supervised(aug) => vec![aug.supervised_view(
                            &s.image,
                            l.config.seed,
                            self.epoch,
                            index as u64,
                        )],
                    };
                    return Ok((views, s.label, index));
                }
                Err(e) if l.config.strict => return Err(e),
                Err(e) => {
                    l.stats.skipped.fetch_add(1, Ordering::Relaxed);
                    let source = l.dataset.source(index);
                    if l.stats.warned.lock().expect("warning set").insert(source) {
                        eprintln!("warning: skipping an unreadable sample: {e}");
                    }
                }
            }
        }
        Err(DataError::Invalid(format!(
            "{}: 64 unreadable samples in a row",
            l.dataset.describe()
        )))
    }

    fn batch(&self, b: usize) -> Result<Batch, DataError> {
        let bs = self.loader.config.batch_size;
        let positions = b * bs..((b + 1) * bs).min(self.order.len());
        let mut views: Vec<Vec<f32>> = Vec::new();
        let mut labels = Vec::with_capacity(bs);
        let mut indices = Vec::with_capacity(bs);
        let mut shape = [0usize; 4];
        for pos in positions {
            let (imgs, label, index) = self.sample(pos)?;
            if views.is_empty() {
                views = vec![Vec::new(); imgs.len()];
                shape = [0, imgs[0].channels, imgs[0].height, imgs[0].width];
            }
            for (buf, img) in views.iter_mut().zip(imgs) {
                if [img.channels, img.height, img.width] != shape[1..] {
                    return Err(DataError::Invalid(format!(
                        "{}: images of different sizes in one batch ({}×{}×{} and {:?}); set an image size",
                        self.loader.dataset.source(index),
                        img.channels,
                        img.height,
                        img.width,
                        &shape[1..]
                    )));
                }
                buf.extend_from_slice(&img.data);
            }
            labels.push(label);
            indices.push(index);
        }
        shape[0] = labels.len();
        Ok(Batch {
            views,
            shape,
            labels,
            indices,
        })
    }
}

/// The batches of one epoch, in order.
pub struct BatchIter {
    inline: Option<Arc<Job>>,
    next: usize,
    end: usize,
    rx: Option<Receiver<(usize, Result<Batch, DataError>)>>,
    pending: BTreeMap<usize, Result<Batch, DataError>>,
    handles: Vec<JoinHandle<()>>,
}

impl BatchIter {
    /// Index of the batch the next call returns.
    pub fn position(&self) -> usize {
        self.next
    }
}

impl Iterator for BatchIter {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let b = self.next;
        self.next += 1;
        if let Some(job) = &self.inline {
            return Some(job.batch(b));
        }
        loop {
            if let Some(batch) = self.pending.remove(&b) {
                return Some(batch);
            }
            match self.rx.as_ref()?.recv() {
                Ok((i, batch)) => {
                    self.pending.insert(i, batch);
                }
                Err(_) => {
                    return Some(Err(DataError::Invalid(
                        "a loader thread stopped unexpectedly".into(),
                    )))
                }
            }
        }
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        // Closing the channel makes blocked workers return.
        self.rx.take();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
