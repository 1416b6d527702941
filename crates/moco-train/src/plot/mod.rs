//! PNG charts of training runs: the four figures of one run (`plot_run`), runs compared
//! (`plot_compare`), and the chart type the study's report draws with.

mod chart;
mod compare;
mod run;

use std::path::Path;

pub use chart::{side_by_side, tick_label, Band, Chart, Series, H, PALETTE, W};
pub use compare::plot_compare;
pub use run::plot_run;

use crate::TrainError;

/// Writes an image as PNG.
pub fn save_png(image: &image::RgbImage, path: &Path) -> Result<(), TrainError> {
    image
        .save(path)
        .map_err(|e| TrainError::Io(format!("{}: cannot write the plot: {e}", path.display())))
}

/// The rows of a run's `metrics.jsonl`.
struct Metrics(Vec<serde_json::Value>);

impl Metrics {
    fn read(run_dir: &Path) -> Result<Self, TrainError> {
        let path = run_dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
        let rows = text.lines().filter_map(|l| serde_json::from_str(l).ok());
        Ok(Self(rows.collect()))
    }

    /// The rows of one type (`step`, `knn`, `spike`, `dip`, …).
    fn rows<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
        self.0.iter().filter(move |r| r["type"] == kind)
    }

    /// (step, value) for the rows of one type; a missing value is NaN (a gap in the line).
    fn curve(
        &self,
        kind: &str,
        value: impl Fn(&serde_json::Value) -> Option<f64>,
    ) -> Vec<(f64, f64)> {
        let number = |v: Option<f64>| v.unwrap_or(f64::NAN);
        self.rows(kind)
            .map(|r| (number(r["step"].as_f64()), number(value(r))))
            .collect()
    }

    /// `curve` of one field.
    fn field(&self, kind: &str, field: &str) -> Vec<(f64, f64)> {
        self.curve(kind, |r| r[field].as_f64())
    }
}

/// Each point's y replaced by the mean over it and the `window - 1` points before it.
fn running_mean(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    (0..points.len())
        .map(|j| {
            let recent = &points[(j + 1).saturating_sub(window)..=j];
            let mean = recent.iter().map(|p| p.1).sum::<f64>() / recent.len() as f64;
            (points[j].0, mean)
        })
        .collect()
}

fn create_dir(dir: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Io(format!("{}: {e}", dir.display())))
}
