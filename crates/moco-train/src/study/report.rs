//! The study's report: per run the final and best kNN accuracy, the dips, the gradient spikes
//! per layer group, the lag from a first-layer spike to the next last-layer spike (by
//! threshold and by cross-correlation) and the lead of a spike before a dip; figures
//! like the paper's (kNN curves learned vs frozen, first- and last-layer gradient norms with
//! their spikes); `report.md` and `summary.json`. Everything is recomputed from the runs'
//! `metrics.jsonl` with the study's thresholds, so a report can be redrawn with other
//! thresholds without training again.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::figures;
use super::grid::{run_status, show_value, PatchEmbed, RunStatus, StudyConfig, StudyRun};
use super::lag::{cross_lag, dip_leads, normalised, CrossLag, DipLead};
use super::spread::{cells, Cell, Side, Spread};
use crate::method::Method;
use crate::monitor::{DipDetector, DipEvent, SpikeDetector, SpikeEvent};
use crate::TrainError;

/// What one run of the study shows.
#[derive(Clone, Debug, Serialize)]
pub struct RunAnalysis {
    /// Run name.
    pub name: String,
    /// This run's value of every axis of the study (flat key → value).
    pub axes: serde_json::Map<String, Value>,
    /// Method.
    pub method: Method,
    /// Batch size.
    pub batch_size: usize,
    /// Base learning rate.
    pub base_lr: f64,
    /// Peak learning rate (see [`crate::PretrainConfig::peak_lr`]).
    pub peak_lr: f64,
    /// Patch projection.
    pub patch_embed: PatchEmbed,
    /// Seed.
    pub seed: u64,
    /// `complete`, `diverged`, `incomplete` or `not started`.
    pub status: String,
    /// Step of the divergence.
    pub diverged_at: Option<u64>,
    /// Steps logged.
    pub steps: u64,
    /// (step, kNN top-1 %).
    pub knn: Vec<(u64, f64)>,
    /// Last kNN top-1.
    pub final_top1: Option<f64>,
    /// Best kNN top-1.
    pub best_top1: Option<f64>,
    /// Loss of the last step.
    pub final_loss: Option<f64>,
    /// Drops of more than the threshold between consecutive evaluations.
    pub dips: Vec<DipEvent>,
    /// Largest drop between consecutive evaluations (points, 0 when it never dropped).
    pub deepest_dip: f64,
    /// Spikes of every layer group.
    pub spikes: Vec<SpikeEvent>,
    /// Spike count per layer group, first layer first.
    pub spikes_per_layer: Vec<(String, usize)>,
    /// The first trained layer group (the patch projection when it learns).
    pub first_layer: String,
    /// The last transformer block (or ResNet stage).
    pub last_layer: String,
    /// For each first-layer spike echoed by a last-layer spike within the lag window: the lag.
    pub lags: Vec<u64>,
    /// Median of `lags`.
    pub median_lag: Option<f64>,
    /// The lag at which the first and last layers' normalised gradient norms correlate best
    /// (within the lag window; no threshold).
    pub cross_lag: Option<CrossLag>,
    /// Each dip with the nearest spike before it (within the lag window).
    pub dip_leads: Vec<DipLead>,
    /// Median of the dips' lead times.
    pub median_lead: Option<f64>,
    /// Gradient norm of the first layer per step.
    #[serde(skip)]
    pub grad_first: Vec<(u64, f64)>,
    /// Gradient norm of the last layer per step.
    #[serde(skip)]
    pub grad_last: Vec<(u64, f64)>,
}

fn rank(group: &str) -> (u8, String) {
    match group {
        "patch_embed" | "stem" => (0, group.into()),
        "tokens" => (1, group.into()),
        g if g.starts_with("block") || g.starts_with("stage") => (2, g.into()),
        "norm" => (3, group.into()),
        "projector" => (4, group.into()),
        "predictor" => (5, group.into()),
        g => (6, g.into()),
    }
}

/// Analyses the run directory of `run` with the study's thresholds.
pub fn analyse_run(run_dir: &Path, run: &StudyRun, study: &StudyConfig) -> RunAnalysis {
    let rows: Vec<Value> = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let status = run_status(run_dir);
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let knn: Vec<(u64, f64)> = rows
        .iter()
        .filter(|r| r["type"] == "knn")
        .map(|r| (r["step"].as_u64().unwrap_or(0), num(&r["top1"])))
        .collect();
    let steps: Vec<&Value> = rows.iter().filter(|r| r["type"] == "step").collect();
    let mut groups: Vec<String> = Vec::new();
    for r in &steps {
        if let Some(m) = r["grad_norms"].as_object() {
            for k in m.keys() {
                if !groups.contains(k) {
                    groups.push(k.clone());
                }
            }
        }
    }
    groups.sort_by_key(|g| rank(g));
    let first_layer = groups
        .iter()
        .find(|g| g.as_str() != "tokens")
        .cloned()
        .unwrap_or_default();
    let last_layer = groups
        .iter()
        .rfind(|g| g.starts_with("block") || g.starts_with("stage"))
        .cloned()
        .unwrap_or_default();
    let mut detector = SpikeDetector::new(study.spike_factor, study.spike_window);
    let mut spikes = Vec::new();
    let (mut grad_first, mut grad_last) = (Vec::new(), Vec::new());
    for r in &steps {
        let step = r["step"].as_u64().unwrap_or(0);
        let norms: Vec<(String, f64)> = groups
            .iter()
            .filter_map(|g| r["grad_norms"][g].as_f64().map(|n| (g.clone(), n)))
            .collect();
        for (g, n) in &norms {
            if *g == first_layer {
                grad_first.push((step, *n));
            }
            if *g == last_layer {
                grad_last.push((step, *n));
            }
        }
        spikes.extend(detector.observe(step, &norms));
    }
    let mut dip_detector = DipDetector::new(study.dip_threshold);
    let dips: Vec<DipEvent> = knn
        .iter()
        .filter_map(|&(s, t)| dip_detector.observe(s, t))
        .collect();
    let deepest_dip = knn.windows(2).map(|w| w[0].1 - w[1].1).fold(0f64, f64::max);
    let spikes_per_layer: Vec<(String, usize)> = groups
        .iter()
        .map(|g| (g.clone(), spikes.iter().filter(|e| e.layer == *g).count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    let last_spikes: Vec<u64> = spikes
        .iter()
        .filter(|e| e.layer == last_layer)
        .map(|e| e.step)
        .collect();
    let lags: Vec<u64> = spikes
        .iter()
        .filter(|e| e.layer == first_layer && first_layer != last_layer)
        .filter_map(|e| {
            last_spikes
                .iter()
                .find(|&&t| t >= e.step && t - e.step <= study.lag_window)
                .map(|t| t - e.step)
        })
        .collect();
    let median_lag = median(&lags.iter().map(|&l| l as f64).collect::<Vec<_>>());
    let cross_lag = (first_layer != last_layer)
        .then(|| {
            cross_lag(
                &normalised(&grad_first, study.spike_window),
                &normalised(&grad_last, study.spike_window),
                study.lag_window,
            )
        })
        .flatten();
    let dip_leads = dip_leads(&dips, &spikes, study.lag_window);
    let median_lead = median(&dip_leads.iter().map(|d| d.lead as f64).collect::<Vec<_>>());
    let (status_text, diverged_at) = match (&status, steps.is_empty()) {
        (Some(RunStatus::Complete { .. }), _) => ("complete", None),
        (Some(RunStatus::Diverged { step, .. }), _) => ("diverged", Some(*step)),
        (None, false) => ("incomplete", None),
        (None, true) => ("not started", None),
    };
    RunAnalysis {
        name: run.name.clone(),
        axes: run.axes.iter().cloned().collect(),
        method: run.method,
        batch_size: run.batch_size,
        base_lr: run.base_lr,
        peak_lr: run.config.peak_lr(),
        patch_embed: run.patch_embed,
        seed: run.seed,
        status: status_text.into(),
        diverged_at,
        steps: steps.last().and_then(|r| r["step"].as_u64()).unwrap_or(0),
        final_top1: knn.last().map(|k| k.1),
        best_top1: knn.iter().map(|k| k.1).reduce(f64::max),
        final_loss: steps.last().map(|r| num(&r["loss"])),
        knn,
        dips,
        deepest_dip,
        spikes,
        spikes_per_layer,
        first_layer,
        last_layer,
        lags,
        median_lag,
        cross_lag,
        dip_leads,
        median_lead,
        grad_first,
        grad_last,
    }
}

pub(super) fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    })
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.2}"))
}

/// Draws the figures and writes `report.md`, `summary.json` (every run) and `cells.json`
/// (learned vs frozen per cell, over the seeds) into `out`; returns the report.
pub fn write_report(
    out: &Path,
    study: &StudyConfig,
    command: Option<&str>,
) -> Result<PathBuf, TrainError> {
    let runs = study.runs().map_err(TrainError::Config)?;
    let analyses: Vec<RunAnalysis> = runs
        .iter()
        .map(|r| analyse_run(&out.join("runs").join(&r.name), r, study))
        .collect();
    let keys = study.cell_keys();
    let cells = cells(&analyses, &keys);
    let mut md = String::new();
    let _ = writeln!(md, "# Stability study: {}\n", study.name);
    if let Some(c) = command {
        let _ = writeln!(md, "Command: `{c}`\n");
    }
    write_thresholds(&mut md, study, runs.len())?;
    write_cells(&mut md, &keys, &cells, study.seeds().len());
    write_signals(&mut md, &keys, &cells);
    write_runs(&mut md, &analyses);
    let _ = writeln!(md, "\n## Figures\n");
    md += &figures::draw(&out.join("figures"), study, &analyses, &cells)?;
    let report = out.join("report.md");
    moco_models::write_atomic(&report, md.as_bytes())?;
    let json = serde_json::to_string_pretty(&analyses).expect("analyses");
    moco_models::write_atomic(&out.join("summary.json"), json.as_bytes())?;
    let json = serde_json::to_string_pretty(&cells).expect("cells");
    moco_models::write_atomic(&out.join("cells.json"), json.as_bytes())?;
    Ok(report)
}

/// What the study ran and the thresholds of its dips, spikes and lags.
fn write_thresholds(md: &mut String, study: &StudyConfig, runs: usize) -> Result<(), TrainError> {
    let base = study.base().map_err(TrainError::Config)?;
    let overrides = if study.overrides.is_empty() {
        "no overrides".to_string()
    } else {
        format!("`{}`", Value::Object(study.overrides.clone()))
    };
    let axes = study
        .axes
        .iter()
        .map(|a| {
            let values: Vec<String> = a.values.iter().map(show_value).collect();
            format!("`{}` ∈ {{{}}}", a.key, values.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" × ");
    let _ = writeln!(
        md,
        "Preset `{}` with {overrides}; axes {axes}: {runs} runs. Thresholds: a **dip** is a kNN \
         top-1 drop of more than {} points between two consecutive evaluations (every {} steps, \
         {} evaluation images); a **spike** is a layer group's gradient norm above {}× the \
         median of its previous {} steps (after {} steps of history); a last-layer spike within \
         {} steps after a first-layer spike is counted as its echo (the lag). The \
         **cross-correlation lag** is the shift (within ±{} steps) at which the first and last \
         layers' gradient norms, each as the log of its ratio to that running median, correlate \
         best (positive: the last layer follows); a dip's **lead** is the distance from the \
         nearest spike of any layer group before it (within {} steps) to the evaluation that \
         measured the drop.\n",
        study.preset,
        study.dip_threshold,
        base.monitors.knn_every,
        base.monitors.knn_eval,
        study.spike_factor,
        study.spike_window,
        (study.spike_window / 5).max(5),
        study.lag_window,
        study.lag_window,
        study.lag_window
    );
    Ok(())
}

/// The table columns of the cell axes and a cell's values in them.
fn cell_columns(keys: &[String], cell: &Cell) -> String {
    keys.iter()
        .map(|k| cell.axes.get(k).map_or("–".into(), show_value))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn header(keys: &[String], rest: &[&str]) -> String {
    let cols: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .chain(rest.iter().copied())
        .collect();
    format!("| {} |\n|{}", cols.join(" | "), "---|".repeat(cols.len()))
}

/// Learned vs frozen per cell: mean ± standard deviation over the seeds, and whether the
/// difference stands out of the seed noise.
fn write_cells(md: &mut String, keys: &[String], cells: &[Cell], seeds: usize) {
    let _ = writeln!(md, "## Learned vs frozen patch projection\n");
    let _ = writeln!(
        md,
        "kNN top-1 (%) at the end / best, and dips per run, over {seeds} seed(s) (mean ± sample \
         standard deviation with several); Δ = frozen − learned (final), ± its standard error; \
         *beyond noise*: |Δ| above two standard errors (needs two seeds or more).\n"
    );
    let rest = [
        "learned final / best",
        "dips",
        "frozen final / best",
        "dips",
        "Δ final",
        "beyond noise",
    ];
    let _ = writeln!(md, "{}", header(keys, &rest));
    let show = |v: Option<Spread>, d: usize| v.map_or("–".into(), |s| s.show(d));
    let side = |s: &Side| match s.diverged_at {
        Some(step) => (format!("diverged (step {step})"), "–".to_string()),
        None => (
            format!("{} / {}", show(s.final_top1, 2), show(s.best_top1, 2)),
            show(s.dips, 1),
        ),
    };
    for c in cells {
        let ((l, ld), (f, fd)) = (side(&c.learned), side(&c.frozen));
        let delta = match (c.delta_final, c.delta_se) {
            (Some(d), Some(se)) => format!("{d:+.2} ± {se:.2}"),
            (Some(d), None) => format!("{d:+.2}"),
            _ => "–".into(),
        };
        let beyond = match c.beyond_noise() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "–",
        };
        let _ = writeln!(
            md,
            "| {} | {l} | {ld} | {f} | {fd} | {delta} | {beyond} |",
            cell_columns(keys, c)
        );
    }
}

/// Per cell and patch projection: how low and how deep the kNN fell, the spikes, the
/// cross-correlation lag and the lead of a spike before a dip.
fn write_signals(md: &mut String, keys: &[String], cells: &[Cell]) {
    let _ = writeln!(md, "\n## Spikes, lag and lead per cell\n");
    let _ = writeln!(
        md,
        "Mean ± sample standard deviation over the seeds that ended; the lag and lead columns \
         over the runs that have one (their count in parentheses).\n"
    );
    let rest = [
        "projection",
        "lowest kNN",
        "deepest drop",
        "block spikes",
        "first-layer spikes",
        "cross-correlation lag",
        "correlation at the lag",
        "median lead spike → dip",
    ];
    let _ = writeln!(md, "{}", header(keys, &rest));
    let show = |v: Option<Spread>, d: usize| v.map_or("–".into(), |s| s.show(d));
    let counted = |v: Option<Spread>, d: usize| {
        v.map_or("–".into(), |s| format!("{} ({})", s.show(d), s.n))
    };
    for c in cells {
        for (name, s) in [("learned", &c.learned), ("frozen", &c.frozen)] {
            if s.final_top1.is_none() && s.diverged_at.is_none() {
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {name} | {} | {} | {} | {} | {} | {} | {} |",
                cell_columns(keys, c),
                show(s.lowest_top1, 2),
                show(s.deepest_drop, 2),
                show(s.block_spikes, 1),
                show(s.first_layer_spikes, 1),
                counted(s.cross_lag, 1),
                show(s.cross_peak, 2),
                counted(s.lead, 1),
            );
        }
    }
}

/// One row per run: kNN, dips, spikes per layer group, the lags, the final loss.
fn write_runs(md: &mut String, analyses: &[RunAnalysis]) {
    let _ = writeln!(md, "\n## Runs\n");
    let _ = writeln!(
        md,
        "| run | status | steps | final kNN | best kNN | dips | deepest drop | spikes first / last layer | median lag (echoed) | cross-correlation lag (r; r at lag 0) | median lead (dips with a spike) | spikes per layer group | final loss |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for a in analyses {
        let count = |l: &str| {
            a.spikes_per_layer
                .iter()
                .find(|(g, _)| g == l)
                .map_or(0, |p| p.1)
        };
        let per_layer = a
            .spikes_per_layer
            .iter()
            .map(|(g, n)| format!("{g} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let status = match a.diverged_at {
            Some(s) => format!("diverged at {s}"),
            None => a.status.clone(),
        };
        let lag = a.median_lag.map_or("–".into(), |m| {
            format!("{m:.0} ({}/{})", a.lags.len(), count(&a.first_layer))
        });
        let cross = a.cross_lag.map_or("–".into(), |c| {
            format!("{} ({:.2}; at 0: {:.2})", c.lag, c.peak, c.at_zero)
        });
        let lead = a.median_lead.map_or("–".into(), |m| {
            format!("{m:.0} ({}/{})", a.dip_leads.len(), a.dips.len())
        });
        let _ = writeln!(
            md,
            "| {} | {status} | {} | {} | {} | {} | {:.2} | {} {} / {} {} | {lag} | {cross} | {lead} | {} | {} |",
            a.name,
            a.steps,
            pct(a.final_top1),
            pct(a.best_top1),
            a.dips.len(),
            a.deepest_dip,
            a.first_layer,
            count(&a.first_layer),
            a.last_layer,
            count(&a.last_layer),
            if per_layer.is_empty() {
                "none".into()
            } else {
                per_layer
            },
            a.final_loss.map_or("–".into(), |l| format!("{l:.4}")),
        );
    }
}
