//! The four figures of one run, from its `metrics.jsonl`: the loss, the learning rate and
//! momentum schedules, the kNN curve with its dips, and the gradient norm of each layer group
//! with the spikes of the first layer and the last block — the paper's diagnostics.

use std::path::{Path, PathBuf};

use super::{create_dir, running_mean, save_png, side_by_side, Chart, Metrics, Series, PALETTE};
use crate::TrainError;

/// Steps in the loss chart's running mean.
const SMOOTH: usize = 20;
const SPIKE_FIRST: [u8; 3] = [255, 196, 120];
const SPIKE_LAST: [u8; 3] = [160, 196, 255];
const DIP: [u8; 3] = [240, 120, 120];

/// Writes `loss.png`, `schedule.png`, `knn.png` and `grad_norms.png` for the run in
/// `run_dir` (from its `metrics.jsonl`) into `run_dir/plots`. Returns the files written.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let metrics = Metrics::read(run_dir)?;
    let out = run_dir.join("plots");
    create_dir(&out)?;
    let figures = [
        ("loss.png", loss(&metrics).render()?),
        ("schedule.png", schedule(&metrics)?),
        ("knn.png", knn(&metrics).render()?),
        ("grad_norms.png", grad_norms(&metrics).render()?),
    ];
    let mut written = Vec::new();
    for (name, image) in figures {
        let path = out.join(name);
        save_png(&image, &path)?;
        written.push(path);
    }
    Ok(written)
}

fn series(label: &str, points: Vec<(f64, f64)>, color: [u8; 3]) -> Series {
    Series {
        label: label.into(),
        points,
        color,
    }
}

/// The loss of every step, pale, under its running mean.
fn loss(metrics: &Metrics) -> Chart {
    let raw = metrics.field("step", "loss");
    let smooth = running_mean(&raw, SMOOTH);
    Chart::new(
        "training loss",
        vec![
            series("loss", raw, [170, 204, 228]),
            series(&format!("mean of {SMOOTH} steps"), smooth, PALETTE[0]),
        ],
    )
}

/// The learning rate and the momentum coefficient, side by side.
fn schedule(metrics: &Metrics) -> Result<image::RgbImage, TrainError> {
    let lr = Chart::new(
        "learning rate",
        vec![series("lr", metrics.field("step", "lr"), PALETTE[0])],
    );
    let momentum = Chart::new(
        "momentum of the momentum encoder",
        vec![series("m", metrics.field("step", "momentum"), PALETTE[1])],
    );
    Ok(side_by_side(&[lr.render()?, momentum.render()?]))
}

/// kNN top-1 and top-5 with the monitor's dips marked.
fn knn(metrics: &Metrics) -> Chart {
    let mut chart = Chart::new(
        "kNN accuracy (%)",
        vec![
            series("top-1", metrics.field("knn", "top1"), PALETTE[0]),
            series("top-5", metrics.field("knn", "top5"), PALETTE[2]),
        ],
    );
    chart.markers = dips(metrics);
    chart.marker_legend = vec![("kNN dip".into(), DIP)];
    chart
}

fn dips(metrics: &Metrics) -> Vec<(f64, [u8; 3])> {
    metrics
        .rows("dip")
        .filter_map(|r| r["step"].as_f64())
        .map(|x| (x, DIP))
        .collect()
}

/// The gradient norm of every layer group (input side first, blocks shaded by depth) on a
/// log axis; spikes of the first layer and of the last block, and the kNN dips, marked.
fn grad_norms(metrics: &Metrics) -> Chart {
    let groups = layer_groups(metrics);
    let blocks: Vec<&String> = groups.iter().filter(|g| is_block(g)).collect();
    let lines = groups.iter().map(|g| {
        let depth = blocks.iter().position(|b| *b == g);
        let color = match (g.as_str(), depth) {
            (_, Some(d)) => depth_color(d as f64 / (blocks.len().max(2) - 1) as f64),
            ("patch_embed" | "stem", _) => PALETTE[1],
            ("tokens", _) => PALETTE[7],
            ("norm", _) => PALETTE[5],
            ("projector", _) => PALETTE[3],
            _ => PALETTE[6],
        };
        series(
            g,
            metrics.curve("step", |r| r["grad_norms"][g.as_str()].as_f64()),
            color,
        )
    });
    let first = groups
        .iter()
        .find(|g| g.as_str() != "tokens")
        .cloned()
        .unwrap_or_default();
    let last = blocks.last().map(|b| b.to_string()).unwrap_or_default();
    let mut markers: Vec<(f64, [u8; 3])> = metrics
        .rows("spike")
        .filter_map(|r| {
            let color = match r["layer"].as_str()? {
                l if l == first => SPIKE_FIRST,
                l if l == last => SPIKE_LAST,
                _ => return None,
            };
            Some((r["step"].as_f64()?, color))
        })
        .collect();
    markers.extend(dips(metrics));
    let mut chart = Chart::new("gradient norm per layer group", lines.collect());
    chart.log_y = true;
    chart.markers = markers;
    chart.marker_legend = vec![
        (format!("spike: {first}"), SPIKE_FIRST),
        (format!("spike: {last}"), SPIKE_LAST),
        ("kNN dip".into(), DIP),
    ];
    chart
}

/// The layer groups logged, from the input side to the heads.
fn layer_groups(metrics: &Metrics) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    for norms in metrics
        .rows("step")
        .filter_map(|r| r["grad_norms"].as_object())
    {
        for g in norms.keys() {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
    }
    let index = |g: &str| -> u64 {
        let digits = g.trim_start_matches(|c: char| !c.is_ascii_digit());
        digits.parse().unwrap_or(0)
    };
    groups.sort_by_key(|g| {
        let rank = match g.as_str() {
            "tokens" => 0,
            "patch_embed" | "stem" => 1,
            "norm" => 3,
            "projector" => 4,
            "predictor" => 5,
            _ => 2,
        };
        (rank, index(g), g.clone())
    });
    groups
}

fn is_block(group: &str) -> bool {
    group.starts_with("block") || group.starts_with("stage")
}

/// A colour from dark violet (t = 0, the first block) through teal to green (t = 1, the last).
fn depth_color(t: f64) -> [u8; 3] {
    const STOPS: [[f64; 3]; 3] = [
        [68.0, 1.0, 84.0],
        [33.0, 145.0, 140.0],
        [122.0, 209.0, 81.0],
    ];
    let t = t.clamp(0.0, 1.0) * 2.0;
    let i = (t as usize).min(1);
    let f = t - i as f64;
    let mix = |k: usize| (STOPS[i][k] + (STOPS[i + 1][k] - STOPS[i][k]) * f).round() as u8;
    [mix(0), mix(1), mix(2)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_groups_run_from_the_input_to_the_heads() {
        let row = r#"{"type":"step","step":0,"grad_norms":{"predictor":1,"block10":1,"block2":1,"norm":1,"patch_embed":1,"tokens":1,"projector":1}}"#;
        let metrics = Metrics(vec![serde_json::from_str(row).unwrap()]);
        let groups = layer_groups(&metrics);
        let expected = [
            "tokens",
            "patch_embed",
            "block2",
            "block10",
            "norm",
            "projector",
            "predictor",
        ];
        assert_eq!(groups, expected);
    }

    #[test]
    fn depth_colours_run_from_violet_to_green() {
        assert_eq!(depth_color(0.0), [68, 1, 84]);
        assert_eq!(depth_color(0.5), [33, 145, 140]);
        assert_eq!(depth_color(1.0), [122, 209, 81]);
    }
}
