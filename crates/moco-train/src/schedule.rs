//! MoCo v3's per-iteration schedules, as functions of the fractional epoch, and the
//! [`Schedule`] of a run that says at which fractional epoch each step starts.

use std::f64::consts::PI;

/// Learning rate at fractional epoch `epoch`: linear warm-up from 0 to `lr` over
/// `warmup_epochs`, then a half cosine to 0 at `epochs`. `lr` is already scaled by batch/256.
pub fn learning_rate(epoch: f64, lr: f64, warmup_epochs: f64, epochs: f64) -> f64 {
    if epoch < warmup_epochs {
        lr * epoch / warmup_epochs
    } else {
        let span = (epochs - warmup_epochs).max(f64::MIN_POSITIVE);
        lr * 0.5 * (1.0 + (PI * (epoch - warmup_epochs) / span).cos())
    }
}

/// EMA coefficient at fractional epoch `epoch`: `1 − ½·(1 + cos(π·e/E))·(1 − m0)`, rising
/// from `m0` to 1.
pub fn momentum(epoch: f64, base_momentum: f64, epochs: f64) -> f64 {
    1.0 - 0.5 * (1.0 + (PI * epoch / epochs).cos()) * (1.0 - base_momentum)
}

/// MoCo v3's learning-rate scaling: `base_lr · batch / 256`.
pub fn scaled_lr(base_lr: f64, batch: usize) -> f64 {
    base_lr * batch as f64 / 256.0
}

/// The schedule of a run: its length, warm-up, peak learning rate and initial momentum, and
/// where each step starts. MoCo v3 takes the learning rate and the momentum of iteration `i`
/// of an epoch of `N` at the fractional epoch `epoch + i/N`, so the first warm-up step has
/// learning rate 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Length of the schedule, epochs.
    pub epochs: f64,
    /// Linear warm-up, epochs.
    pub warmup_epochs: f64,
    /// Learning rate after warm-up (already scaled by batch / 256).
    pub peak_lr: f64,
    /// Momentum of the target network at epoch 0 (cosine to 1).
    pub base_momentum: f64,
    /// Loader batches in one epoch.
    pub batches_per_epoch: usize,
    /// Loader batches (micro-batches) per optimizer step.
    pub grad_accum: usize,
}

impl Schedule {
    /// Optimizer steps in one epoch (the batches that do not fill a step are dropped).
    pub fn steps_per_epoch(&self) -> u64 {
        (self.batches_per_epoch / self.grad_accum.max(1)).max(1) as u64
    }

    /// Optimizer steps of the whole schedule.
    pub fn total_steps(&self) -> u64 {
        (self.epochs * self.steps_per_epoch() as f64).round() as u64
    }

    /// The same schedule stretched or shrunk to `steps` optimizer steps, whatever the epoch
    /// length: warm-up keeps its share.
    pub fn spanning(mut self, steps: u64) -> Self {
        let epochs = steps as f64 / self.steps_per_epoch() as f64;
        self.warmup_epochs *= epochs / self.epochs;
        self.epochs = epochs;
        self
    }

    /// The fractional epoch where the step whose first batch is batch `batch` of epoch
    /// `epoch` starts: `epoch + batch / batches_per_epoch`.
    pub fn epoch_at(&self, epoch: u64, batch: usize) -> f64 {
        epoch as f64 + batch as f64 / self.batches_per_epoch.max(1) as f64
    }

    /// The learning rate at fractional epoch `epoch`.
    pub fn lr(&self, epoch: f64) -> f64 {
        learning_rate(epoch, self.peak_lr, self.warmup_epochs, self.epochs)
    }

    /// The target network's momentum at fractional epoch `epoch`.
    pub fn momentum(&self, epoch: f64) -> f64 {
        momentum(epoch, self.base_momentum, self.epochs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_starts_where_its_first_batch_starts() {
        let s = Schedule {
            epochs: 10.0,
            warmup_epochs: 2.0,
            peak_lr: 1.0,
            base_momentum: 0.99,
            batches_per_epoch: 10,
            grad_accum: 2,
        };
        assert_eq!(s.steps_per_epoch(), 5);
        assert_eq!(s.total_steps(), 50);
        assert_eq!(s.lr(s.epoch_at(0, 0)), 0.0);
        assert!((s.epoch_at(3, 4) - 3.4).abs() < 1e-12);
        assert!((s.lr(1.0) - 0.5).abs() < 1e-12);
        let short = s.spanning(25);
        assert_eq!((short.epochs, short.warmup_epochs), (5.0, 1.0));
        assert_eq!(short.total_steps(), 25);
    }

    #[test]
    fn schedule_endpoints() {
        assert_eq!(learning_rate(0.0, 1.0, 10.0, 100.0), 0.0);
        assert!((learning_rate(5.0, 1.0, 10.0, 100.0) - 0.5).abs() < 1e-12);
        assert!((learning_rate(10.0, 1.0, 10.0, 100.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(55.0, 1.0, 10.0, 100.0) - 0.5).abs() < 1e-12);
        assert!(learning_rate(100.0, 1.0, 10.0, 100.0).abs() < 1e-12);
        assert!((momentum(0.0, 0.99, 300.0) - 0.99).abs() < 1e-12);
        assert!((momentum(300.0, 0.99, 300.0) - 1.0).abs() < 1e-12);
        assert!((scaled_lr(1.5e-4, 4096) - 2.4e-3).abs() < 1e-12);
    }
}
