//! MoCo v3's per-iteration schedules, as functions of the fractional epoch.

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

#[cfg(test)]
mod tests {
    use super::*;

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
