//! A parallel loader: worker threads decode and augment while the model trains, batches come
//! out in a fixed order that depends only on the seed and the epoch.
//!
//! Every batch is split into one chunk per worker, and all workers assemble it together
//! (a batch of 4,096 does not wait on one thread), up to `prefetch` batches ahead of the
//! training loop. A shard takes one replica's slice of every global batch, so a node decodes
//! only its own images. A sample's views depend only on the seed, the epoch and its index:
//! the same whatever the number of workers, replicas or nodes.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
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
    /// The slice of every batch this loader produces (the whole batch by default).
    pub shard: Shard,
}

/// One replica's slice of every global batch: of `world` equal, consecutive slices of the
/// batch's positions in the epoch's order, the `rank`-th. The replicas together see exactly
/// the global batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This replica, from 0.
    pub rank: usize,
    /// Replicas sharing each batch.
    pub world: usize,
}

impl Shard {
    /// The whole batch.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };
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
            shard: Shard::WHOLE,
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
            shard: Shard::WHOLE,
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
        let Shard { rank, world } = config.shard;
        if world == 0 || rank >= world || !config.batch_size.is_multiple_of(world) {
            return Err(DataError::Invalid(format!(
                "shard {rank} of {world}: the rank must be below the number of replicas, which must divide the batch size {}",
                config.batch_size
            )));
        }
        if world > 1 && !config.drop_last {
            return Err(DataError::Invalid(
                "a sharded loader drops the last partial batch (every replica needs its share): set drop_last".into(),
            ));
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

    /// This loader reading only `shard`'s slice of every batch (same order, same views).
    pub fn sharded(&self, shard: Shard) -> Result<Self, DataError> {
        let config = LoaderConfig {
            shard,
            ..self.config.clone()
        };
        Loader::new(self.dataset.clone(), self.views.clone(), config)
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn ImageDataset> {
        &self.dataset
    }

    /// Skip counters.
    pub fn stats(&self) -> &Arc<LoaderStats> {
        &self.stats
    }

    /// Samples per global batch.
    pub fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    /// Samples per batch this loader produces: its shard's share of the global batch.
    pub fn shard_size(&self) -> usize {
        self.config.batch_size / self.config.shard.world
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
        let job = Arc::new(Job {
            loader: self.clone(),
            order: Arc::new(self.order(epoch)),
            epoch,
            chunks: self.config.workers.clamp(1, self.shard_size()),
            start,
            next_item: AtomicUsize::new(0),
            gate: Gate::new(start),
        });
        let end = self.batches_per_epoch();
        let mut iter = BatchIter {
            job: job.clone(),
            next: start,
            end,
            rx: None,
            pending: BTreeMap::new(),
            handles: Vec::new(),
        };
        if self.config.workers == 0 {
            return iter;
        }
        // Room for every chunk a worker may finish before the loop takes its batch.
        let capacity = (self.config.prefetch.max(1) + 1) * job.chunks + self.config.workers;
        let (tx, rx) = sync_channel(capacity);
        iter.rx = Some(rx);
        iter.handles = (0..self.config.workers)
            .map(|_| {
                let (tx, job) = (tx.clone(), job.clone());
                std::thread::spawn(move || job.work(end, &tx))
            })
            .collect();
        iter
    }
}

/// Holds the workers back while they are `prefetch` batches ahead of the training loop.
struct Gate {
    /// Batches handed to the loop (the next batch it takes).
    taken: Mutex<usize>,
    moved: Condvar,
    stopped: AtomicBool,
}

impl Gate {
    fn new(start: usize) -> Self {
        Gate {
            taken: Mutex::new(start),
            moved: Condvar::new(),
            stopped: AtomicBool::new(false),
        }
    }

    /// Waits until batch `b` is within `ahead` batches of the loop; false once stopped.
    fn admit(&self, b: usize, ahead: usize) -> bool {
        let mut taken = self.taken.lock().expect("loader gate");
        while b >= *taken + ahead && !self.stopped.load(Ordering::Acquire) {
            taken = self.moved.wait(taken).expect("loader gate");
        }
        !self.stopped.load(Ordering::Acquire)
    }

    fn take(&self, next: usize) {
        *self.taken.lock().expect("loader gate") = next;
        self.moved.notify_all();
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let _guard = self.taken.lock().expect("loader gate");
        self.moved.notify_all();
    }
}

/// One epoch's work: its order, and the chunks the workers take in turn.
struct Job {
    loader: Loader,
    order: Arc<Vec<usize>>,
    epoch: u64,
    /// Chunks per batch.
    chunks: usize,
    /// The first batch.
    start: usize,
    /// The next chunk to prepare, counted from chunk 0 of batch `start`.
    next_item: AtomicUsize,
    gate: Gate,
}

/// Chunk `chunk` of batch `batch`, prepared.
type Part = ((usize, usize), Result<Batch, DataError>);

impl Job {
    /// A worker: takes the next chunk until the epoch ends or the loop stops listening.
    fn work(&self, end: usize, tx: &SyncSender<Part>) {
        let ahead = self.loader.config.prefetch.max(1);
        loop {
            let item = self.next_item.fetch_add(1, Ordering::Relaxed);
            let (b, c) = (self.start + item / self.chunks, item % self.chunks);
            if b >= end || !self.gate.admit(b, ahead) {
                return;
            }
            if tx.send(((b, c), self.part(self.chunk(b, c)))).is_err() {
                return;
            }
        }
    }

    /// The positions (in the epoch's order) of this loader's slice of batch `b`.
    fn positions(&self, b: usize) -> Range<usize> {
        let config = &self.loader.config;
        let (size, n) = (self.loader.shard_size(), self.order.len());
        let first = b * config.batch_size + config.shard.rank * size;
        first.min(n)..(first + size).min(n)
    }

    /// The positions of chunk `c` of batch `b`.
    fn chunk(&self, b: usize, c: usize) -> Range<usize> {
        let all = self.positions(b);
        let len = all.len().div_ceil(self.chunks);
        let first = (all.start + c * len).min(all.end);
        first..(first + len).min(all.end)
    }

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

    /// The samples at `positions`, as a batch.
    fn part(&self, positions: Range<usize>) -> Result<Batch, DataError> {
        let mut batch = Batch {
            views: Vec::new(),
            shape: [0; 4],
            labels: Vec::with_capacity(positions.len()),
            indices: Vec::with_capacity(positions.len()),
        };
        for pos in positions {
            let (images, label, index) = self.sample(pos)?;
            let [c, h, w] = [images[0].channels, images[0].height, images[0].width];
            let views = images.into_iter().map(|i| i.data).collect();
            let one = Batch {
                views,
                shape: [1, c, h, w],
                labels: vec![label],
                indices: vec![index],
            };
            batch.append(one).map_err(|e| {
                let source = self.loader.dataset.source(index);
                DataError::Invalid(format!("{source}: {e}"))
            })?;
        }
        Ok(batch)
    }
}

impl Batch {
    /// Appends `other`'s samples (an empty batch takes `other`'s image shape).
    pub fn append(&mut self, other: Batch) -> Result<(), DataError> {
        if other.labels.is_empty() {
            return Ok(());
        }
        if self.labels.is_empty() {
            self.views.resize(other.views.len(), Vec::new());
            self.shape = [0, other.shape[1], other.shape[2], other.shape[3]];
        }
        if other.shape[1..] != self.shape[1..] || other.views.len() != self.views.len() {
            return Err(DataError::Invalid(format!(
                "images of different sizes in one batch ({:?} and {:?}); set an image size",
                &other.shape[1..],
                &self.shape[1..]
            )));
        }
        for (buf, view) in self.views.iter_mut().zip(other.views) {
            buf.extend_from_slice(&view);
        }
        self.shape[0] += other.shape[0];
        self.labels.extend(other.labels);
        self.indices.extend(other.indices);
        Ok(())
    }
}

/// The batches of one epoch, in order.
pub struct BatchIter {
    job: Arc<Job>,
    next: usize,
    end: usize,
    rx: Option<Receiver<Part>>,
    pending: BTreeMap<(usize, usize), Result<Batch, DataError>>,
    handles: Vec<JoinHandle<()>>,
}

impl BatchIter {
    /// Index of the batch the next call returns.
    pub fn position(&self) -> usize {
        self.next
    }

    /// Waits for the chunks of batch `b` and joins them.
    fn assemble(&mut self, b: usize) -> Result<Batch, DataError> {
        let stopped = || DataError::Invalid("a loader thread stopped unexpectedly".into());
        let mut batch = Batch {
            views: Vec::new(),
            shape: [0; 4],
            labels: Vec::new(),
            indices: Vec::new(),
        };
        for c in 0..self.job.chunks {
            let part = loop {
                if let Some(part) = self.pending.remove(&(b, c)) {
                    break part;
                }
                let (key, part) = self
                    .rx
                    .as_ref()
                    .ok_or_else(stopped)?
                    .recv()
                    .map_err(|_| stopped())?;
                self.pending.insert(key, part);
            };
            batch.append(part?)?;
        }
        Ok(batch)
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
        if self.rx.is_none() {
            return Some(self.job.part(self.job.positions(b)));
        }
        let batch = self.assemble(b);
        self.job.gate.take(self.next);
        Some(batch)
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        // Releases the workers held at the gate; closing the channel ends the others.
        self.job.gate.stop();
        self.rx.take();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
