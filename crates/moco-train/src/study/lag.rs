//! When the layers spike relative to each other and to the kNN dips, without a threshold: the
//! lag at which the first layer's and the last layer's gradient-norm series correlate best,
//! and how long before a kNN dip the nearest gradient spike came.
//!
//! Each series is first divided by its running median (the median of the previous `window`
//! norms, as the spike detector compares them) and taken in log, so that a slow trend of the
//! norms (the warm-up, the decay) does not correlate the two layers at every lag, and a spike
//! is a departure from the layer's own level.

use serde::Serialize;

use crate::monitor::{DipEvent, SpikeEvent};

/// The cross-correlation peak of two layers' normalised gradient-norm series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CrossLag {
    /// The lag in steps at which the correlation peaks: positive when the last layer follows
    /// the first.
    pub lag: i64,
    /// The correlation at that lag (Pearson, −1 to 1).
    pub peak: f64,
    /// The correlation at lag 0.
    pub at_zero: f64,
}

/// `ln(norm / median of the previous window norms)` per step, once `window / 5` (at least 5)
/// norms are known; steps with a zero or non-finite norm or median are left out.
pub fn normalised(series: &[(u64, f64)], window: usize) -> Vec<(u64, f64)> {
    let warmup = (window / 5).max(5);
    let mut out = Vec::new();
    for (i, &(step, norm)) in series.iter().enumerate() {
        if i < warmup {
            continue;
        }
        let history = &series[i.saturating_sub(window)..i];
        let mut sorted: Vec<f64> = history.iter().map(|p| p.1).collect();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let x = (norm / median).ln();
        if x.is_finite() {
            out.push((step, x));
        }
    }
    out
}

/// The lag in `-max_lag..=max_lag` at which `last` shifted by the lag correlates best with
/// `first` (both [`normalised`]); `None` when fewer than 10 steps overlap at lag 0 or a
/// series is constant.
pub fn cross_lag(first: &[(u64, f64)], last: &[(u64, f64)], max_lag: u64) -> Option<CrossLag> {
    let last: std::collections::HashMap<u64, f64> = last.iter().copied().collect();
    let correlation = |lag: i64| -> Option<f64> {
        let pairs: Vec<(f64, f64)> = first
            .iter()
            .filter_map(|&(s, x)| {
                let t = u64::try_from(s as i64 + lag).ok()?;
                last.get(&t).map(|&y| (x, y))
            })
            .collect();
        pearson(&pairs)
    };
    let at_zero = correlation(0)?;
    let max_lag = max_lag as i64;
    let (lag, peak) = (-max_lag..=max_lag)
        .filter_map(|lag| correlation(lag).map(|c| (lag, c)))
        // The highest correlation; the smallest |lag| among equals.
        .fold((0i64, at_zero), |best, (lag, c)| {
            if c > best.1 || (c == best.1 && lag.abs() < best.0.abs()) {
                (lag, c)
            } else {
                best
            }
        });
    Some(CrossLag { lag, peak, at_zero })
}

/// Pearson's correlation of the pairs; `None` below 10 pairs or with a constant side.
fn pearson(pairs: &[(f64, f64)]) -> Option<f64> {
    let n = pairs.len();
    if n < 10 {
        return None;
    }
    let (mx, my) = pairs.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + x / n as f64, b + y / n as f64)
    });
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in pairs {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// A kNN dip and the gradient spike nearest before it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DipLead {
    /// The evaluation that dropped.
    pub dip_step: u64,
    /// The step of the nearest spike at or before it, within the window.
    pub spike_step: u64,
    /// Its layer group.
    pub layer: String,
    /// `dip_step − spike_step`: how long the spike came before the dip was measured. The
    /// drop itself happened after the previous evaluation, so the lead is known to within
    /// the kNN interval.
    pub lead: u64,
}

/// For each dip, the nearest spike of any layer group at most `window` steps before it (dips
/// without one are left out).
pub fn dip_leads(dips: &[DipEvent], spikes: &[SpikeEvent], window: u64) -> Vec<DipLead> {
    dips.iter()
        .filter_map(|d| {
            let s = spikes
                .iter()
                .filter(|s| s.step <= d.step && d.step - s.step <= window)
                .max_by_key(|s| s.step)?;
            Some(DipLead {
                dip_step: d.step,
                spike_step: s.step,
                layer: s.layer.clone(),
                lead: d.step - s.step,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A noisy level with bursts: the last layer repeats the first layer's bursts `delay`
    /// steps later.
    type Series = Vec<(u64, f64)>;

    fn series(delay: u64) -> (Series, Series) {
        let mut rng = 12345u64;
        let mut noise = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            1.0 + 0.2 * ((rng >> 33) as f64 / (1u64 << 31) as f64 - 0.5)
        };
        let burst = |s: u64| [60u64, 130, 210, 260].iter().any(|&b| s >= b && s < b + 3);
        let first: Vec<(u64, f64)> = (1..=300)
            .map(|s| {
                (
                    s,
                    noise() * if burst(s) { 8.0 } else { 1.0 } * (1.0 + s as f64 / 100.0),
                )
            })
            .collect();
        let last: Vec<(u64, f64)> = (1..=300)
            .map(|s| {
                let b = s >= delay && burst(s - delay);
                (s, 3.0 * noise() * if b { 6.0 } else { 1.0 })
            })
            .collect();
        (first, last)
    }

    #[test]
    fn the_peak_is_at_the_delay_of_the_echo() {
        for delay in [0, 7, 25] {
            let (first, last) = series(delay);
            let (f, l) = (normalised(&first, 50), normalised(&last, 50));
            let c = cross_lag(&f, &l, 40).unwrap();
            assert_eq!(c.lag, delay as i64, "{c:?}");
            assert!(c.peak > 0.5, "{c:?}");
            if delay > 3 {
                assert!(c.at_zero < 0.2, "{c:?}");
            }
        }
        // The first layer following the last: a negative lag.
        let (first, last) = series(9);
        let c = cross_lag(&normalised(&last, 50), &normalised(&first, 50), 40).unwrap();
        assert_eq!(c.lag, -9);
    }

    #[test]
    fn too_short_or_flat_series_have_no_lag() {
        let flat: Vec<(u64, f64)> = (1..=100).map(|s| (s, 2.0)).collect();
        let n = normalised(&flat, 20);
        assert!(n.iter().all(|p| p.1 == 0.0));
        assert_eq!(cross_lag(&n, &n, 10), None);
        let short: Vec<(u64, f64)> = (1..=12).map(|s| (s, s as f64)).collect();
        assert_eq!(
            cross_lag(&normalised(&short, 20), &normalised(&short, 20), 5),
            None
        );
    }

    #[test]
    fn a_dip_takes_the_nearest_spike_before_it() {
        let spike = |step, layer: &str| SpikeEvent {
            step,
            layer: layer.into(),
            norm: 10.0,
            median: 1.0,
        };
        let dip = |step| DipEvent {
            step,
            before: 60.0,
            after: 50.0,
        };
        let spikes = [
            spike(40, "patch_embed"),
            spike(43, "block03"),
            spike(95, "tokens"),
        ];
        let leads = dip_leads(&[dip(50), dip(90), dip(300)], &spikes, 100);
        assert_eq!(
            leads.len(),
            2,
            "the dip at 300 has no spike within 100 steps"
        );
        assert_eq!((leads[0].spike_step, leads[0].lead), (43, 7));
        assert_eq!(leads[0].layer, "block03");
        assert_eq!((leads[1].spike_step, leads[1].lead), (43, 47));
    }
}
