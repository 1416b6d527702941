//! Runs compared on one chart: the kNN top-1 curve and the smoothed loss of each, labelled by
//! its directory name (`moco plot RUN_DIR…`).

use std::path::{Path, PathBuf};

use super::{create_dir, running_mean, Chart, Metrics, Series, PALETTE};
use crate::TrainError;

/// Steps in the loss chart's running mean.
const SMOOTH: usize = 20;

/// Compares runs: `knn.png` (kNN top-1 of every run) and `loss.png` (training loss, mean of
/// the last 20 steps) in `out`, one line per run labelled by its directory name. Returns the
/// files written.
pub fn plot_compare(run_dirs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let (mut knn, mut loss) = (Vec::new(), Vec::new());
    for (i, dir) in run_dirs.iter().enumerate() {
        let metrics = Metrics::read(dir)?;
        let label = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let color = PALETTE[i % PALETTE.len()];
        knn.push(Series {
            label: label.clone(),
            points: metrics.field("knn", "top1"),
            color,
        });
        loss.push(Series {
            label,
            points: running_mean(&metrics.field("step", "loss"), SMOOTH),
            color,
        });
    }
    create_dir(out)?;
    let charts = [
        ("knn.png", Chart::new("kNN top-1 accuracy (%)", knn)),
        (
            "loss.png",
            Chart::new(format!("training loss (mean of {SMOOTH} steps)"), loss),
        ),
    ];
    let mut written = Vec::new();
    for (name, chart) in charts {
        let path = out.join(name);
        chart.save(&path)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::{H, W};

    /// Whether the image has a pixel within 12 of `color` in every channel.
    fn has_color(img: &image::RgbImage, color: [u8; 3]) -> bool {
        img.pixels()
            .any(|p| (0..3).all(|k| p.0[k].abs_diff(color[k]) <= 12))
    }

    #[test]
    fn runs_are_compared_on_one_chart() {
        let root = std::env::temp_dir().join(format!("moco-plot-compare-{}", std::process::id()));
        let mut dirs = Vec::new();
        for (name, base) in [("mocov3", 70.0), ("simclr", 72.0)] {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let mut text = String::new();
            for step in 0..50u64 {
                let loss = 4.0 - step as f64 * 0.02;
                text += &format!("{{\"type\":\"step\",\"step\":{step},\"loss\":{loss}}}\n");
                if step % 10 == 0 {
                    let top1 = base + step as f64 * 0.1;
                    text += &format!("{{\"type\":\"knn\",\"step\":{step},\"top1\":{top1}}}\n");
                }
            }
            std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
            dirs.push(dir);
        }
        let out = root.join("compare");
        let files = plot_compare(&dirs, &out).unwrap();
        assert_eq!(files, vec![out.join("knn.png"), out.join("loss.png")]);
        for f in &files {
            let img = image::open(f).unwrap();
            assert_eq!((img.width(), img.height()), (W, H));
        }
        // The two runs are drawn in their own colours.
        let knn = image::open(&files[0]).unwrap().to_rgb8();
        for color in PALETTE[..2].iter() {
            assert!(has_color(&knn, *color), "{color:?}");
        }
        let missing = plot_compare(&[root.join("absent")], &out).unwrap_err();
        assert!(missing.to_string().contains("absent"), "{missing}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
