//! The study's figures, like the paper's: kNN top-1 during training, one line per value of
//! the study's last varying axis (the learning rate, the depth, ...), learned and frozen patch
//! projection side by side on one scale (with several seeds: their mean, and a band of ± one
//! standard deviation); when that axis is numeric, the final kNN, the spikes and the
//! cross-correlation lag against it; per run, the gradient norm of the first and the last
//! layer relative to its median, with their spikes and the kNN dips marked.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::grid::{name_part, show_value, PatchEmbed, StudyConfig, FREEZE};
use super::report::{median, RunAnalysis};
use super::spread::{mean_curve, Cell, Side, Spread};
use crate::plot::{save_png, side_by_side, Band, Chart, Series, PALETTE};
use crate::TrainError;

const SPIKE_FIRST: [u8; 3] = [255, 190, 110];
const SPIKE_LAST: [u8; 3] = [160, 195, 255];
const DIP: [u8; 3] = [230, 60, 60];

/// The axis whose values are the lines of a figure (the last cell axis with several values,
/// else the last cell axis) and the axes that make one figure each.
struct Layout {
    line: Option<(String, Vec<Value>)>,
    groups: Vec<Vec<(String, Value)>>,
    panels: Vec<PatchEmbed>,
}

fn layout(study: &StudyConfig, analyses: &[RunAnalysis]) -> Layout {
    let keys = study.cell_keys();
    let varying = |k: &String| study.axis(k).is_some_and(|a| a.values.len() > 1);
    let line = keys
        .iter()
        .rev()
        .find(|k| varying(k))
        .or(keys.last())
        .cloned();
    let mut groups: Vec<Vec<(String, Value)>> = Vec::new();
    for a in analyses {
        let g: Vec<(String, Value)> = keys
            .iter()
            .filter(|k| Some(*k) != line.as_ref())
            .map(|k| (k.clone(), a.axes.get(k).cloned().unwrap_or(Value::Null)))
            .collect();
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let mut panels: Vec<PatchEmbed> = match study.axis(FREEZE) {
        Some(a) => a
            .values
            .iter()
            .map(|v| {
                if v == &Value::Bool(true) {
                    PatchEmbed::Frozen
                } else {
                    PatchEmbed::Learned
                }
            })
            .collect(),
        None => analyses.iter().map(|a| a.patch_embed).collect(),
    };
    panels.dedup();
    Layout {
        line: line.map(|k| {
            let values = study.axis(&k).map(|a| a.values.clone()).unwrap_or_default();
            (k, values)
        }),
        groups,
        panels,
    }
}

fn in_group(a: &RunAnalysis, group: &[(String, Value)]) -> bool {
    group.iter().all(|(k, v)| a.axes.get(k) == Some(v))
}

fn group_name(prefix: &str, group: &[(String, Value)]) -> String {
    let parts: Vec<String> = std::iter::once(prefix.to_string())
        .chain(group.iter().map(|(k, v)| name_part(k, v)))
        .collect();
    parts.join("-")
}

fn group_title(group: &[(String, Value)]) -> String {
    group
        .iter()
        .map(|(k, v)| format!("{k} {}", show_value(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Draws every figure into `dir`; returns the report's figure section (markdown).
pub fn draw(
    dir: &Path,
    study: &StudyConfig,
    analyses: &[RunAnalysis],
    cells: &[Cell],
) -> Result<String, TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Io(format!("{}: {e}", dir.display())))?;
    let mut md = String::new();
    let layout = layout(study, analyses);
    let y_range = knn_range(analyses);
    for group in &layout.groups {
        let panels = layout
            .panels
            .iter()
            .map(|&p| knn_panel(&layout, analyses, group, p, y_range).render())
            .collect::<Result<Vec<_>, _>>()?;
        let name = format!("{}.png", group_name("knn", group));
        save_png(&side_by_side(&panels), &dir.join(&name))?;
        let order: Vec<String> = layout.panels.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            md,
            "kNN accuracy during training, {} (left to right: {}):\n\n![kNN {}](figures/{name})\n",
            group_title(group),
            order.join(", "),
            group_title(group)
        );
        if let Some(section) = against_axis(dir, &layout, cells, group)? {
            md += &section;
        }
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

/// One panel: a line per value of the line axis (per seed with one seed; the mean and a ± 1
/// s.d. band over the seeds with several).
fn knn_panel(
    layout: &Layout,
    analyses: &[RunAnalysis],
    group: &[(String, Value)],
    patch: PatchEmbed,
    y_range: Option<(f64, f64)>,
) -> Chart {
    let title = match group.is_empty() {
        true => format!("{patch} patch proj.: kNN top-1 %"),
        false => format!("{}, {patch} patch proj.: kNN top-1 %", group_title(group)),
    };
    let mut chart = Chart::new(title, vec![]);
    chart.y_range = y_range;
    let lines: Vec<Option<&Value>> = match &layout.line {
        Some((_, values)) => values.iter().map(Some).collect(),
        None => vec![None],
    };
    for (i, value) in lines.into_iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let runs: Vec<&RunAnalysis> = analyses
            .iter()
            .filter(|a| a.patch_embed == patch && in_group(a, group))
            // Runs that have ended: a run under way would bend the mean.
            .filter(|a| a.status == "complete" || a.status == "diverged")
            .filter(|a| match (&layout.line, value) {
                (Some((k, _)), Some(v)) => a.axes.get(k) == Some(v),
                _ => true,
            })
            .collect();
        let curves: Vec<&[(u64, f64)]> = runs.iter().map(|a| a.knn.as_slice()).collect();
        let mean = mean_curve(&curves);
        let name = match (&layout.line, value) {
            (Some((k, _)), Some(v)) => format!("{k} {}", show_value(v)),
            _ => "kNN".into(),
        };
        let label = match runs.len() {
            0 | 1 => name,
            n => format!("{name} ({n} seeds)"),
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

/// A measure of one side of a cell.
type Measure = fn(&Side) -> Option<Spread>;

/// When the line axis is numeric: the final kNN, the block spikes and the cross-correlation
/// lag of each cell against it, learned and frozen (mean and ± 1 s.d. over the seeds).
fn against_axis(
    dir: &Path,
    layout: &Layout,
    cells: &[Cell],
    group: &[(String, Value)],
) -> Result<Option<String>, TrainError> {
    let Some((key, values)) = &layout.line else {
        return Ok(None);
    };
    if values.len() < 2 || !values.iter().all(Value::is_number) {
        return Ok(None);
    }
    let in_cells: Vec<&Cell> = cells
        .iter()
        .filter(|c| group.iter().all(|(k, v)| c.axes.get(k) == Some(v)))
        .collect();
    let measures: [(&str, Measure); 3] = [
        ("final kNN top-1 %", |s| s.final_top1),
        ("spikes in the blocks per run", |s| s.block_spikes),
        ("cross-correlation lag (steps)", |s| s.cross_lag),
    ];
    let mut panels = Vec::new();
    for (title, measure) in measures {
        let mut chart = Chart::new(format!("{title} against {key}"), vec![]);
        chart.x_label = key.clone();
        for (i, &patch) in layout.panels.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, Spread)> = in_cells
                .iter()
                .filter_map(|c| {
                    let x = c.axes.get(key)?.as_f64()?;
                    let side = if patch == PatchEmbed::Frozen {
                        &c.frozen
                    } else {
                        &c.learned
                    };
                    Some((x, measure(side)?))
                })
                .collect();
            if points.is_empty() {
                continue;
            }
            chart.bands.push(Band {
                points: points
                    .iter()
                    .map(|(x, s)| (*x, s.mean - s.sd, s.mean + s.sd))
                    .collect(),
                color,
            });
            chart.series.push(Series {
                label: format!("{patch}"),
                points: points.iter().map(|(x, s)| (*x, s.mean)).collect(),
                color,
            });
        }
        panels.push(chart.render()?);
    }
    let name = format!("{}.png", group_name(&format!("against-{key}"), group));
    save_png(&side_by_side(&panels), &dir.join(&name))?;
    Ok(Some(format!(
        "Final kNN, spikes in the blocks and the cross-correlation lag against {key}{}:\n\n![against {key}](figures/{name})\n\n",
        if group.is_empty() { String::new() } else { format!(", {}", group_title(group)) }
    )))
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
