//! The kNN monitor of the training loop: the backbone's weighted kNN accuracy on held-out
//! images, every so many steps, at each epoch end and at the end, with the detector of the
//! accuracy dips that reveal the paper's instability.

use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;
use moco_data::{AugmentConfig, Loader, LoaderConfig, SharedDataset, Views};
use moco_models::Backbone;

use crate::knn::{knn_evaluate, KnnConfig, KnnResult};
use crate::metrics::Event;
use crate::monitor::DipDetector;
use crate::TrainError;

/// kNN accuracy of the backbone during training.
pub struct KnnMonitor {
    memory: Loader,
    eval: Loader,
    /// Neighbours, vote temperature.
    pub config: KnnConfig,
    /// Evaluate every this many steps (0: only at epoch ends and at the end).
    pub every: u64,
    dips: DipDetector,
}

impl KnnMonitor {
    /// Classifies `eval` by its neighbours in `memory`, both seen through the evaluation
    /// transform of `augment`; the dip threshold scales with the size of `eval`
    /// ([`DipDetector::scaled`]).
    pub fn new(
        memory: SharedDataset,
        eval: SharedDataset,
        augment: Arc<AugmentConfig>,
        every: u64,
        workers: usize,
    ) -> Result<Self, TrainError> {
        let mut loader = LoaderConfig::eval(256);
        loader.workers = workers;
        let dips = DipDetector::scaled(eval.len());
        Ok(KnnMonitor {
            memory: Loader::new(memory, Views::Eval(augment.clone()), loader.clone())?,
            eval: Loader::new(eval, Views::Eval(augment), loader)?,
            config: KnnConfig::default(),
            every,
            dips,
        })
    }

    /// With `k` neighbours and vote temperature `temperature`.
    pub fn with_knn(mut self, k: usize, temperature: f64) -> Self {
        self.config.k = k;
        self.config.temperature = temperature;
        self
    }

    /// Logs a drop of more than `points` top-1 points as a dip.
    pub fn with_dip_threshold(mut self, points: f64) -> Self {
        self.dips = DipDetector::new(points);
        self
    }

    /// Whether step `step` is evaluated (`epoch_end`: the last step of an epoch; `last`: the
    /// last step of the run).
    pub fn due(&self, step: u64, epoch_end: bool, last: bool) -> bool {
        (self.every > 0 && step.is_multiple_of(self.every)) || epoch_end || last
    }

    /// Evaluates `backbone` (an inference copy, e.g. `model.backbone().valid()`) after `step`
    /// steps: the accuracy, and the events to report (the evaluation, and a dip if there is
    /// one).
    pub fn evaluate<N: Backbone>(
        &mut self,
        backbone: &N,
        step: u64,
        device: &Device,
    ) -> Result<(KnnResult, Vec<Event>), TrainError> {
        let started = Instant::now();
        let r = knn_evaluate::<N>(backbone, &self.memory, &self.eval, &self.config, device)?;
        let mut events = vec![Event::Knn {
            step,
            top1: r.top1,
            top5: r.top5,
            seconds: started.elapsed().as_secs_f64(),
        }];
        if let Some(d) = self.dips.observe(step, r.top1) {
            events.push(Event::Dip {
                step: d.step,
                before: d.before,
                after: d.after,
            });
        }
        Ok((r, events))
    }
}
