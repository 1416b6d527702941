//! The study's figures, like the paper's: kNN top-1 during training for every learning rate,
//! learned and frozen patch projection side by side on one scale (with several seeds: their
//! mean, and a band of ± one standard deviation); per run, the gradient norm of the first and
//! the last layer relative to its median, with their spikes and the kNN dips marked.

use std::fmt::Write as _;
use std::path::Path;

use super::grid::{format_lr, PatchEmbed, StudyConfig};
use super::report::{median, RunAnalysis};
use super::spread::mean_curve;
use crate::method::Method;
use crate::plot::{save_png, side_by_side, Band, Chart, Series, PALETTE};
use crate::TrainError;

const SPIKE_FIRST: [u8; 3] = [255, 190, 110];
const SPIKE_LAST: [u8; 3] = [160, 195, 255];
const DIP: [u8; 3] = [230, 60, 60];

/// Draws every figure into `dir`; returns the report's figure section (markdown).
pub fn draw(
    dir: &Path,
    study: &StudyConfig,
    analyses: &[RunAnalysis],
) -> Result<String, TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Io(format!("{}: {e}", dir.display())))?;
    let mut md = String::new();
    let mut keys: Vec<(Method, usize)> = Vec::new();
    for a in analyses {
        if !keys.contains(&(a.method, a.batch_size)) {
            keys.push((a.method, a.batch_size));
        }
    }
    let y_range = knn_range(analyses);
    for (method, batch) in keys {
        let panels = study
            .patch_embed
            .iter()
            .map(|&p| knn_panel(study, analyses, (method, batch, p), y_range).render())
            .collect::<Result<Vec<_>, _>>()?;
        let name = format!("knn-{method}-b{batch}.png");
        save_png(&side_by_side(&panels), &dir.join(&name))?;
        let order: Vec<String> = study.patch_embed.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            md,
            "kNN accuracy during training, {method}, batch {batch} (left to right: {}):\n\n![kNN {method} b{batch}](figures/{name})\n",
            order.join(", ")
        );
    }
    for a in analyses.iter().filter(|a| !a.grad_first.is_empty()) {
        let name = format!("grad-{}.png", a.name);
        grad_chart(a).save(&dir.join(&name))?;
        let _ = writeln!(
            md,
            "Gradient norm of the first ({}) and last ({}) layer, {}:\n\n![grad {}](figures/{name})\n",
            a.first_layer, a.last_layer, a.name, a.name
        );
    }
    Ok(md)
}

/// The kNN range of every run, so that the panels share one scale.
fn knn_range(analyses: &[RunAnalysis]) -> Option<(f64, f64)> {
    let values = analyses.iter().flat_map(|a| a.knn.iter().map(|k| k.1));
    let (lo, hi) = values
        .filter(|t| t.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    (lo <= hi).then_some((lo, hi))
}

/// One panel: a line per learning rate (per seed with one seed; the mean and a ± 1 s.d. band
/// over the seeds with several).
fn knn_panel(
    study: &StudyConfig,
    analyses: &[RunAnalysis],
    (method, batch, patch): (Method, usize, PatchEmbed),
    y_range: Option<(f64, f64)>,
) -> Chart {
    let mut chart = Chart::new(
        format!("{method} batch {batch}, {patch} patch proj.: kNN top-1 %"),
        vec![],
    );
    chart.y_range = y_range;
    for (i, &lr) in study.base_lrs.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let runs: Vec<&RunAnalysis> = analyses
            .iter()
            .filter(|a| {
                (a.method, a.batch_size, a.patch_embed, a.base_lr) == (method, batch, patch, lr)
            })
            .collect();
        let curves: Vec<&[(u64, f64)]> = runs.iter().map(|a| a.knn.as_slice()).collect();
        let mean = mean_curve(&curves);
        let label = match runs.len() {
            0 | 1 => format!("lr {}", format_lr(lr)),
            n => format!("lr {} (mean of {n})", format_lr(lr)),
        };
        if runs.len() > 1 {
            let band = mean.iter().map(|(x, s)| (*x, s.mean - s.sd, s.mean + s.sd));
            chart.bands.push(Band {
                points: band.collect(),
                color,
            });
        }
        let points = mean.iter().map(|(x, s)| (*x, s.mean)).collect();
        chart.series.push(Series {
            label,
            points,
            color,
        });
    }
    chart
}

/// A run's first- and last-layer gradient norms relative to their medians (as the paper
/// normalises each layer), log scale, spikes and dips marked.
fn grad_chart(a: &RunAnalysis) -> Chart {
    let relative = |v: &[(u64, f64)]| -> Vec<(f64, f64)> {
        let norms: Vec<f64> = v.iter().map(|p| p.1).collect();
        let m = median(&norms).unwrap_or(1.0).max(1e-30);
        v.iter().map(|&(s, n)| (s as f64, n / m)).collect()
    };
    let spike = |e: &crate::monitor::SpikeEvent| {
        let color = if e.layer == a.first_layer {
            SPIKE_FIRST
        } else if e.layer == a.last_layer {
            SPIKE_LAST
        } else {
            return None;
        };
        Some((e.step as f64, color))
    };
    let mut chart = Chart::new(
        format!("{}: grad norm / median (log)", a.name),
        vec![
            Series {
                label: a.first_layer.clone(),
                points: relative(&a.grad_first),
                color: PALETTE[3],
            },
            Series {
                label: a.last_layer.clone(),
                points: relative(&a.grad_last),
                color: PALETTE[0],
            },
        ],
    );
    chart.log_y = true;
    chart.markers = a.spikes.iter().filter_map(spike).collect();
    chart
        .markers
        .extend(a.dips.iter().map(|d| (d.step as f64, DIP)));
    chart.marker_legend = vec![
        ("spike, first layer".into(), SPIKE_FIRST),
        ("spike, last layer".into(), SPIKE_LAST),
        ("kNN dip".into(), DIP),
    ];
    chart
}
