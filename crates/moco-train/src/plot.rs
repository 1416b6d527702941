//! PNG plots of a run's `metrics.jsonl`: loss, learning rate and momentum, the kNN curve with
//! its dips, and the gradient norm of each layer group with its spikes.

use std::path::{Path, PathBuf};

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

use crate::TrainError;

const W: u32 = 900;
const H: u32 = 420;
const LEFT: i64 = 80;
const RIGHT: i64 = 190;
const TOP: i64 = 40;
const BOTTOM: i64 = 50;
/// Line colours, in order.
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// One line of a plot.
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
    /// Colour.
    pub color: [u8; 3],
}

/// A line chart.
pub struct Chart {
    /// Title above the chart.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
    /// Vertical markers (x, colour), e.g. spikes and dips.
    pub markers: Vec<(f64, [u8; 3])>,
    /// Fixed y range (before the 5 % margin), to compare charts side by side; fitted to the
    /// data when absent.
    pub y_range: Option<(f64, f64)>,
}

struct Canvas(RgbImage);

impl Canvas {
    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && x < W as i64 && y < H as i64 {
            self.0.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.put(x, y, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        self.put(x + i as i64 * 8 + col, y + row as i64, c);
                    }
                }
            }
        }
    }
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-2..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

impl Chart {
    /// Draws the chart to a PNG file.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        self.render()
            .save(path)
            .map_err(|e| TrainError::Io(format!("{}: cannot write the plot: {e}", path.display())))
    }

    /// Draws the chart.
    pub fn render(&self) -> RgbImage {
        let mut cv = Canvas(RgbImage::from_pixel(W, H, Rgb([255, 255, 255])));
        let ty = |v: f64| if self.log_y { v.max(1e-30).log10() } else { v };
        let pts = self
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            let y = ty(y);
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if let Some((lo, hi)) = self.y_range {
            (y0, y1) = (ty(lo), ty(hi));
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        if y1 - y0 < 1e-12 {
            (y0, y1) = (y0 - 0.5, y1 + 0.5);
        }
        let pad = (y1 - y0) * 0.05;
        (y0, y1) = (y0 - pad, y1 + pad);
        let (pw, ph) = (
            (W as i64 - LEFT - RIGHT) as f64,
            (H as i64 - TOP - BOTTOM) as f64,
        );
        let px = |x: f64| LEFT + ((x - x0) / (x1 - x0) * pw).round() as i64;
        let py = |y: f64| TOP + ((1.0 - (ty(y) - y0) / (y1 - y0)) * ph).round() as i64;
        let (black, grey) = ([0, 0, 0], [225, 225, 225]);
        for i in 0..=5 {
            let fy = y0 + (y1 - y0) * i as f64 / 5.0;
            let yy = TOP + ((1.0 - i as f64 / 5.0) * ph).round() as i64;
            cv.line((LEFT, yy), (LEFT + pw as i64, yy), grey);
            let label = if self.log_y {
                fmt_tick(10f64.powf(fy))
            } else {
                fmt_tick(fy)
            };
            cv.text(LEFT - 8 - 8 * label.len() as i64, yy - 4, &label, black);
            let fx = x0 + (x1 - x0) * i as f64 / 5.0;
            let xx = px(fx);
            cv.line((xx, TOP), (xx, TOP + ph as i64), grey);
            let label = fmt_tick(fx);
            cv.text(
                xx - 4 * label.len() as i64,
                TOP + ph as i64 + 8,
                &label,
                black,
            );
        }
        for &(x, c) in &self.markers {
            if x >= x0 && x <= x1 {
                cv.line((px(x), TOP), (px(x), TOP + ph as i64), c);
            }
        }
        cv.line((LEFT, TOP), (LEFT, TOP + ph as i64), black);
        cv.line(
            (LEFT, TOP + ph as i64),
            (LEFT + pw as i64, TOP + ph as i64),
            black,
        );
        for s in &self.series {
            let mut prev: Option<(i64, i64)> = None;
            for &(x, y) in &s.points {
                if !(x.is_finite() && y.is_finite()) {
                    prev = None;
                    continue;
                }
                let p = (px(x), py(y));
                match prev {
                    Some(q) => cv.line(q, p, s.color),
                    None => cv.put(p.0, p.1, s.color),
                }
                prev = Some(p);
            }
        }
        cv.text(LEFT, 14, &self.title, black);
        cv.text(
            LEFT + pw as i64 / 2 - 4 * self.x_label.len() as i64,
            H as i64 - 18,
            &self.x_label,
            black,
        );
        for (i, s) in self.series.iter().enumerate() {
            let y = TOP + 4 + 14 * i as i64;
            let x = LEFT + pw as i64 + 12;
            cv.line((x, y + 3), (x + 16, y + 3), s.color);
            cv.line((x, y + 4), (x + 16, y + 4), s.color);
            cv.text(
                x + 22,
                y,
                &s.label.chars().take(19).collect::<String>(),
                black,
            );
        }
        cv.0
    }
}

/// Charts next to each other in one image.
pub fn side_by_side(charts: &[RgbImage]) -> RgbImage {
    let mut out = RgbImage::from_pixel(W * charts.len().max(1) as u32, H, Rgb([255, 255, 255]));
    for (i, c) in charts.iter().enumerate() {
        image::imageops::replace(&mut out, c, i as i64 * W as i64, 0);
    }
    out
}

/// Writes `loss.png`, `schedule.png`, `knn.png` and `grad_norms.png` for the run in
/// `run_dir` (from its `metrics.jsonl`) into `run_dir/plots`. Returns the files written.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let rows = read_metrics(run_dir)?;
    fn rows_of<'a>(
        rows: &'a [serde_json::Value],
        kind: &'a str,
    ) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
        rows.iter().filter(move |r| r["type"] == kind)
    }
    let of = |kind: &'static str| rows_of(&rows, kind);
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let series = |kind: &'static str, field: &str, label: &str, color: usize| Series {
        label: label.into(),
        points: of(kind)
            .map(|r| (num(&r["step"]), num(&r[field])))
            .collect(),
        color: PALETTE[color % PALETTE.len()],
    };
    let spikes: Vec<(f64, String)> = of("spike")
        .map(|r| {
            (
                num(&r["step"]),
                r["layer"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let dips: Vec<f64> = of("dip").map(|r| num(&r["step"])).collect();
    let out = run_dir.join("plots");
    std::fs::create_dir_all(&out).map_err(|e| TrainError::Io(format!("{}: {e}", out.display())))?;
    let mut written = Vec::new();
    let mut save = |name: &str, chart: Chart| -> Result<(), TrainError> {
        let p = out.join(name);
        chart.save(&p)?;
        written.push(p);
        Ok(())
    };
    let step = "iteration".to_string();
    save(
        "loss.png",
        Chart {
            title: "training loss".into(),
            x_label: step.clone(),
            log_y: false,
            series: vec![series("step", "loss", "loss", 0)],
            markers: vec![],
            y_range: None,
        },
    )?;
    save(
        "schedule.png",
        Chart {
            title: "learning rate (x max) and momentum".into(),
            x_label: step.clone(),
            log_y: false,
            series: {
                let mut lr = series("step", "lr", "lr / max lr", 0);
                let max = lr
                    .points
                    .iter()
                    .map(|p| p.1)
                    .fold(0f64, f64::max)
                    .max(1e-30);
                lr.points.iter_mut().for_each(|p| p.1 /= max);
                vec![lr, series("step", "momentum", "momentum", 1)]
            },
            markers: vec![],
            y_range: None,
        },
    )?;
    save(
        "knn.png",
        Chart {
            title: "kNN accuracy (%), dips marked".into(),
            x_label: step.clone(),
            log_y: false,
            series: vec![
                series("knn", "top1", "top-1", 0),
                series("knn", "top5", "top-5", 2),
            ],
            markers: dips.iter().map(|&x| (x, [250, 180, 180])).collect(),
            y_range: None,
        },
    )?;
    // Gradient norms: every layer group, first layer first; spikes of the first and last
    // group marked.
    let mut groups: Vec<String> = Vec::new();
    for r in of("step") {
        if let Some(m) = r["grad_norms"].as_object() {
            for k in m.keys() {
                if !groups.contains(k) {
                    groups.push(k.clone());
                }
            }
        }
    }
    groups.sort_by_key(|g| match g.as_str() {
        "tokens" => (0, g.clone()),
        "patch_embed" | "stem" => (1, g.clone()),
        "norm" => (3, g.clone()),
        "projector" => (4, g.clone()),
        "predictor" => (5, g.clone()),
        _ => (2, g.clone()),
    });
    let grad_series: Vec<Series> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| Series {
            label: g.clone(),
            points: of("step")
                .map(|r| (num(&r["step"]), num(&r["grad_norms"][g])))
                .collect(),
            color: PALETTE[i % PALETTE.len()],
        })
        .collect();
    let first = groups
        .iter()
        .find(|g| g.as_str() != "tokens")
        .cloned()
        .unwrap_or_default();
    let last_block = groups
        .iter()
        .rfind(|g| g.starts_with("block") || g.starts_with("stage"))
        .cloned()
        .unwrap_or_default();
    let markers = spikes
        .iter()
        .filter_map(|(x, l)| {
            if *l == first {
                Some((*x, [255, 200, 120]))
            } else if *l == last_block {
                Some((*x, [170, 200, 255]))
            } else {
                None
            }
        })
        .collect();
    save(
        "grad_norms.png",
        Chart {
            title: "gradient norm per layer (log); spikes: first / last block".into(),
            x_label: step,
            log_y: true,
            series: grad_series,
            markers,
            y_range: None,
        },
    )?;
    Ok(written)
}

/// Rows of `run_dir/metrics.jsonl`.
fn read_metrics(run_dir: &Path) -> Result<Vec<serde_json::Value>, TrainError> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Compares runs: `knn.png` (kNN top-1 of every run) and `loss.png` (training loss, mean of
/// the last 20 steps) in `out`, one line per run labelled by its directory name. Returns the
/// files written.
pub fn plot_compare(run_dirs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>, TrainError> {
    const SMOOTH: usize = 20;
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let mut knn = Vec::new();
    let mut loss = Vec::new();
    for (i, dir) in run_dirs.iter().enumerate() {
        let rows = read_metrics(dir)?;
        let label: String = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string())
            .chars()
            .take(20)
            .collect();
        let color = PALETTE[i % PALETTE.len()];
        let of = |kind: &'static str| rows.iter().filter(move |r| r["type"] == kind);
        knn.push(Series {
            label: label.clone(),
            points: of("knn")
                .map(|r| (num(&r["step"]), num(&r["top1"])))
                .collect(),
            color,
        });
        let raw: Vec<(f64, f64)> = of("step")
            .map(|r| (num(&r["step"]), num(&r["loss"])))
            .collect();
        let points = (0..raw.len())
            .map(|j| {
                let window = &raw[j.saturating_sub(SMOOTH - 1)..=j];
                let mean = window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64;
                (raw[j].0, mean)
            })
            .collect();
        loss.push(Series {
            label,
            points,
            color,
        });
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::Io(format!("{}: {e}", out.display())))?;
    let charts = [
        ("knn.png", "kNN top-1 accuracy (%)", knn),
        (
            "loss.png",
            "training loss (mean of the last 20 steps)",
            loss,
        ),
    ];
    let mut written = Vec::new();
    for (name, title, series) in charts {
        let path = out.join(name);
        Chart {
            title: title.into(),
            x_label: "iteration".into(),
            log_y: false,
            series,
            markers: vec![],
            y_range: None,
        }
        .save(&path)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for color in &PALETTE[..2] {
            assert!(knn.pixels().any(|p| p.0 == *color));
        }
        let missing = plot_compare(&[root.join("absent")], &out).unwrap_err();
        assert!(missing.to_string().contains("absent"), "{missing}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
