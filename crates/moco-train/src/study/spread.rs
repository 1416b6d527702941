//! The spread over seeds: each cell of the study (one value of every axis but the seed and
//! the patch projection) as the mean ± sample standard deviation of its seeds' kNN accuracy,
//! dips, spikes, lag and lead, and the learned-vs-frozen difference with its standard error,
//! so a reader can tell an effect from seed noise.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::grid::PatchEmbed;
use super::report::RunAnalysis;
use crate::method::Method;

/// Mean, sample standard deviation (0 for one value) and count.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation, `sqrt(Σ(x − mean)² / (n − 1))`.
    pub sd: f64,
    /// Values.
    pub n: usize,
}

impl Spread {
    /// The spread of the finite values; `None` when there is none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        let n = v.len();
        if n == 0 {
            return None;
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let ss = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
        let sd = if n > 1 {
            (ss / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Spread { mean, sd, n })
    }

    /// Standard error of the mean, `sd / sqrt(n)`.
    pub fn se(&self) -> f64 {
        self.sd / (self.n as f64).sqrt()
    }

    /// `71.15` for one seed, `71.15 ± 0.40` for several.
    pub fn show(&self, decimals: usize) -> String {
        if self.n > 1 {
            format!("{:.*} ± {:.*}", decimals, self.mean, decimals, self.sd)
        } else {
            format!("{:.*}", decimals, self.mean)
        }
    }
}

/// One patch projection's runs of a cell.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    /// Final kNN top-1 (%).
    pub final_top1: Option<Spread>,
    /// Best kNN top-1 (%).
    pub best_top1: Option<Spread>,
    /// Dips per run.
    pub dips: Option<Spread>,
    /// Lowest kNN top-1 (%).
    pub lowest_top1: Option<Spread>,
    /// Deepest drop between two evaluations (points).
    pub deepest_drop: Option<Spread>,
    /// Spikes per run in the transformer blocks (or ResNet stages).
    pub block_spikes: Option<Spread>,
    /// Spikes per run of the first trained layer group.
    pub first_layer_spikes: Option<Spread>,
    /// The cross-correlation lag, last layer after first (steps).
    pub cross_lag: Option<Spread>,
    /// The correlation at that lag.
    pub cross_peak: Option<Spread>,
    /// Per run, the median lead of a spike before a dip (runs with a dip that has one).
    pub lead: Option<Spread>,
    /// The step of the first divergence among the seeds.
    pub diverged_at: Option<u64>,
}

/// Learned against frozen patch projection at one value of every other axis.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    /// The cell's value of every axis but the seed and the patch projection.
    pub axes: serde_json::Map<String, Value>,
    /// Method.
    pub method: Method,
    /// Batch size.
    pub batch_size: usize,
    /// Base learning rate.
    pub base_lr: f64,
    /// Peak learning rate.
    pub peak_lr: f64,
    /// Runs with the learned projection.
    pub learned: Side,
    /// Runs with the frozen projection.
    pub frozen: Side,
    /// Frozen − learned, final kNN top-1 (difference of the means).
    pub delta_final: Option<f64>,
    /// Standard error of that difference, `sqrt(se_frozen² + se_learned²)`; `None` with one
    /// seed on either side (no estimate of the noise).
    pub delta_se: Option<f64>,
}

impl Cell {
    /// Whether the difference is more than two standard errors from zero (`None`: unknown).
    pub fn beyond_noise(&self) -> Option<bool> {
        Some(self.delta_final?.abs() > 2.0 * self.delta_se?)
    }
}

/// The runs of one side that have ended (trained to the end or diverged): an interrupted or
/// unstarted run says nothing yet about its seed.
fn side(runs: &[&RunAnalysis]) -> Side {
    let runs: Vec<&RunAnalysis> = runs
        .iter()
        .copied()
        .filter(|a| a.status == "complete" || a.status == "diverged")
        .collect();
    let count = |a: &RunAnalysis, f: &dyn Fn(&str) -> bool| {
        a.spikes_per_layer
            .iter()
            .filter(|(g, _)| f(g))
            .map(|p| p.1)
            .sum::<usize>() as f64
    };
    let of = |f: &dyn Fn(&RunAnalysis) -> Option<f64>| Spread::of(runs.iter().filter_map(|a| f(a)));
    Side {
        final_top1: of(&|a| a.final_top1),
        best_top1: of(&|a| a.best_top1),
        dips: of(&|a| Some(a.dips.len() as f64)),
        lowest_top1: of(&|a| a.knn.iter().map(|k| k.1).reduce(f64::min)),
        deepest_drop: of(&|a| Some(a.deepest_dip)),
        block_spikes: of(&|a| {
            Some(count(a, &|g| {
                g.starts_with("block") || g.starts_with("stage")
            }))
        }),
        first_layer_spikes: of(&|a| Some(count(a, &|g| g == a.first_layer))),
        cross_lag: of(&|a| a.cross_lag.map(|c| c.lag as f64)),
        cross_peak: of(&|a| a.cross_lag.map(|c| c.peak)),
        lead: of(&|a| a.median_lead),
        diverged_at: runs.iter().filter_map(|a| a.diverged_at).min(),
    }
}

/// The value of the axes `keys` in a run.
fn key_of(a: &RunAnalysis, keys: &[String]) -> Vec<Value> {
    keys.iter()
        .map(|k| a.axes.get(k).cloned().unwrap_or(Value::Null))
        .collect()
}

/// The cells of the study: the runs grouped by their values of the axes `keys` (every axis
/// but the seed and the patch projection), in the order of `analyses`.
pub fn cells(analyses: &[RunAnalysis], keys: &[String]) -> Vec<Cell> {
    let mut groups: Vec<Vec<Value>> = Vec::new();
    for a in analyses {
        let key = key_of(a, keys);
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    groups
        .into_iter()
        .map(|key| {
            let members: Vec<&RunAnalysis> =
                analyses.iter().filter(|a| key_of(a, keys) == key).collect();
            let of = |p: PatchEmbed| -> Vec<&RunAnalysis> {
                members
                    .iter()
                    .copied()
                    .filter(|a| a.patch_embed == p)
                    .collect()
            };
            let (learned, frozen) = (
                side(&of(PatchEmbed::Learned)),
                side(&of(PatchEmbed::Frozen)),
            );
            let (l, f) = (learned.final_top1, frozen.final_top1);
            let trained = learned.diverged_at.is_none() && frozen.diverged_at.is_none();
            let delta_final = match (l, f) {
                (Some(l), Some(f)) if trained => Some(f.mean - l.mean),
                _ => None,
            };
            let delta_se = match (l, f) {
                (Some(l), Some(f)) if l.n > 1 && f.n > 1 => Some(l.se().hypot(f.se())),
                _ => None,
            };
            let first = members[0];
            Cell {
                axes: keys.iter().cloned().zip(key).collect(),
                method: first.method,
                batch_size: first.batch_size,
                base_lr: first.base_lr,
                peak_lr: first.peak_lr,
                learned,
                frozen,
                delta_final,
                delta_se,
            }
        })
        .collect()
}

/// The mean and standard deviation of several runs' curves at each step any of them logged.
pub fn mean_curve(curves: &[&[(u64, f64)]]) -> Vec<(f64, Spread)> {
    let mut at: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for curve in curves {
        for &(step, value) in curve.iter() {
            at.entry(step).or_default().push(value);
        }
    }
    at.into_iter()
        .filter_map(|(step, values)| Some((step as f64, Spread::of(values)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(patch_embed: PatchEmbed, seed: u64, status: &str, final_top1: f64) -> RunAnalysis {
        RunAnalysis {
            name: format!("{patch_embed:?}-s{seed}"),
            axes: [("base_lr".to_string(), Value::from(0.1))]
                .into_iter()
                .collect(),
            method: Method::MocoV3,
            batch_size: 128,
            base_lr: 0.1,
            peak_lr: 0.05,
            patch_embed,
            seed,
            status: status.into(),
            diverged_at: None,
            steps: 300,
            knn: vec![(300, final_top1)],
            final_top1: Some(final_top1),
            best_top1: Some(final_top1),
            final_loss: None,
            dips: Vec::new(),
            deepest_dip: 0.0,
            spikes: Vec::new(),
            spikes_per_layer: Vec::new(),
            first_layer: "patch_embed".into(),
            last_layer: "block03".into(),
            lags: Vec::new(),
            median_lag: None,
            cross_lag: None,
            dip_leads: Vec::new(),
            median_lead: None,
            grad_first: Vec::new(),
            grad_last: Vec::new(),
        }
    }

    #[test]
    fn cells_count_only_runs_that_have_ended() {
        let (l, f) = (PatchEmbed::Learned, PatchEmbed::Frozen);
        let runs = [
            run(l, 0, "complete", 60.0),
            run(l, 1, "complete", 62.0),
            run(l, 2, "incomplete", 40.0),
            run(f, 0, "complete", 65.0),
            run(f, 1, "not started", 0.0),
        ];
        let cell = &cells(&runs, &["base_lr".to_string()])[0];
        let learned = cell.learned.final_top1.unwrap();
        assert_eq!((learned.mean, learned.n), (61.0, 2));
        assert_eq!(cell.frozen.final_top1.unwrap().n, 1);
        assert_eq!(cell.frozen.dips.unwrap().n, 1);
        assert_eq!(cell.delta_final, Some(4.0));
        assert_eq!(
            cell.delta_se, None,
            "one frozen seed: no estimate of the noise"
        );
    }

    #[test]
    fn the_spread_is_the_sample_standard_deviation() {
        let s = Spread::of([70.0, 72.0, 74.0]).unwrap();
        assert_eq!((s.mean, s.sd, s.n), (72.0, 2.0, 3));
        assert!((s.se() - 2.0 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.show(2), "72.00 ± 2.00");
        assert_eq!(Spread::of([71.15]).unwrap().show(2), "71.15");
        assert_eq!(Spread::of([f64::NAN]), None);
    }

    #[test]
    fn a_difference_counts_when_it_exceeds_two_standard_errors() {
        let side = |values: &[f64]| Side {
            final_top1: Spread::of(values.iter().copied()),
            best_top1: None,
            dips: None,
            lowest_top1: None,
            deepest_drop: None,
            block_spikes: None,
            first_layer_spikes: None,
            cross_lag: None,
            cross_peak: None,
            lead: None,
            diverged_at: None,
        };
        let cell = |learned: &[f64], frozen: &[f64]| {
            let all = [side(learned), side(frozen)];
            let (l, f) = (all[0].final_top1.unwrap(), all[1].final_top1.unwrap());
            let delta_se = (l.n > 1 && f.n > 1).then(|| l.se().hypot(f.se()));
            let [learned, frozen] = all;
            Cell {
                axes: Default::default(),
                method: Method::MocoV3,
                batch_size: 128,
                base_lr: 0.1,
                peak_lr: 0.05,
                learned,
                frozen,
                delta_final: Some(f.mean - l.mean),
                delta_se,
            }
        };
        // +5 points with a spread of 1: far beyond the noise.
        assert_eq!(
            cell(&[50.0, 51.0, 52.0], &[55.0, 56.0, 57.0]).beyond_noise(),
            Some(true)
        );
        // +1 point with a spread of 2: within it.
        assert_eq!(
            cell(&[70.0, 72.0, 74.0], &[71.0, 73.0, 75.0]).beyond_noise(),
            Some(false)
        );
        // One seed: no estimate.
        assert_eq!(cell(&[70.0], &[72.0]).beyond_noise(), None);
    }

    #[test]
    fn curves_are_averaged_step_by_step() {
        let (a, b) = (
            vec![(0, 60.0), (10, 70.0)],
            vec![(0, 62.0), (10, 74.0), (20, 75.0)],
        );
        let mean = mean_curve(&[&a, &b]);
        let points: Vec<(f64, f64, usize)> = mean.iter().map(|(x, s)| (*x, s.mean, s.n)).collect();
        assert_eq!(points, [(0.0, 61.0, 2), (10.0, 72.0, 2), (20.0, 75.0, 1)]);
    }
}
