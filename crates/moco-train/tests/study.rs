//! The instability study: a 2×2 grid end to end on the bundled data (runs, skip on rerun,
//! report and figures), and the analysis on a hand-written metrics log.

use burn::tensor::Device;
use std::path::PathBuf;

use moco_train::study::report::analyse_run;
use moco_train::study::{Axis, PatchEmbed, StudyRun};
use moco_train::{run_study, StudyConfig, StudyOptions};
use serde_json::json;

struct Tmp(PathBuf);
impl Tmp {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("moco-study-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tiny_study() -> StudyConfig {
    let text = json!({
        "name": "smoke",
        "preset": "fmnist-vit",
        "overrides": {
            "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64, "out_dim": 32,
            "batch_size": 16, "steps": 6, "knn_every": 2, "knn_memory": 256, "knn_eval": 128,
            "knn_k": 10, "workers": 1, "log_every": 1000, "checkpoint_every": 100
        },
        "base_lrs": [1e-3, 1e-2],
        "spike_window": 5
    });
    StudyConfig::parse(&text.to_string(), "smoke").unwrap()
}

#[test]
fn a_two_by_two_grid_runs_in_parts_reports_and_is_skipped_when_done() {
    let tmp = Tmp::new("grid");
    let study = tiny_study();
    let options = StudyOptions {
        quiet: true,
        ..Default::default()
    };
    let device = Device::flex().autodiff();
    // In two parts: three runs, then the one left.
    let part = StudyOptions {
        max_runs: Some(3),
        ..options.clone()
    };
    let s = run_study(&study, &tmp.0, &part, &device).unwrap();
    assert_eq!((s.ran, s.skipped, s.left), (3, 0, 1));
    let s = run_study(&study, &tmp.0, &options, &device).unwrap();
    assert_eq!((s.ran, s.skipped, s.diverged, s.left), (1, 3, 0, 0));
    let report = std::fs::read_to_string(s.report.unwrap()).unwrap();
    for name in [
        "mocov3-b16-lr1e-3-learned-s0",
        "mocov3-b16-lr1e-3-frozen-s0",
        "mocov3-b16-lr1e-2-learned-s0",
        "mocov3-b16-lr1e-2-frozen-s0",
    ] {
        assert!(
            report.contains(&format!("| {name} | complete | 6 |")),
            "{report}"
        );
        assert!(tmp
            .0
            .join("figures")
            .join(format!("grad-{name}.png"))
            .is_file());
    }
    assert!(tmp.0.join("figures/knn-mocov3-b16.png").is_file());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.0.join("summary.json")).unwrap())
            .unwrap();
    let runs = summary.as_array().unwrap();
    assert_eq!(runs.len(), 4);
    // kNN at steps 0, 2, 4, 6; the learned run's first layer is the patch projection, the
    // frozen run's the first block (the projection takes no gradient).
    assert_eq!(runs[0]["knn"].as_array().unwrap().len(), 4);
    assert_eq!(runs[0]["first_layer"], "patch_embed");
    assert_eq!(runs[1]["first_layer"], "block00");
    assert_eq!(runs[0]["last_layer"], "block01");

    // Again: everything is done, nothing trains.
    let s = run_study(&study, &tmp.0, &options, &device).unwrap();
    assert_eq!((s.ran, s.skipped), (0, 4));
    // Another grid into the same directory is refused.
    let mut other = study.clone();
    other.axes[2] = Axis::new("base_lr", [5e-3]);
    let e = run_study(&other, &tmp.0, &options, &device).unwrap_err();
    assert!(e.to_string().contains("different study"), "{e}");
}

#[test]
fn analysis_finds_dips_spikes_and_the_lag() {
    let tmp = Tmp::new("analysis");
    let mut study = tiny_study();
    study.spike_window = 20;
    study.lag_window = 30;
    let run: StudyRun = study.runs().unwrap().remove(0);
    assert_eq!(run.patch_embed, PatchEmbed::Learned);
    let mut lines = Vec::new();
    for step in 1..=100u64 {
        // Flat norms with spikes: first layer at 40 and 80, last block at 55 (lag 15) and
        // 90 (lag 10), the projector at 60 (not the last layer).
        let first = if step == 40 || step == 80 { 10.0 } else { 1.0 };
        let last = if step == 55 || step == 90 { 8.0 } else { 2.0 };
        let proj = if step == 60 { 50.0 } else { 3.0 };
        lines.push(json!({"type": "step", "step": step, "loss": 5.0 - step as f64 * 0.01,
            "grad_norms": {"patch_embed": first, "block00": 1.5, "block01": last, "projector": proj}}));
    }
    for (step, top1) in [
        (0, 60.0),
        (20, 65.0),
        (40, 66.0),
        (60, 61.5),
        (80, 64.0),
        (100, 62.5),
    ] {
        lines.push(json!({"type": "knn", "step": step, "top1": top1, "top5": 90.0}));
    }
    std::fs::create_dir_all(&tmp.0).unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(tmp.0.join("metrics.jsonl"), text).unwrap();
    let a = analyse_run(&tmp.0, &run, &study);
    assert_eq!(a.status, "incomplete");
    assert_eq!(a.steps, 100);
    assert_eq!(
        (a.first_layer.as_str(), a.last_layer.as_str()),
        ("patch_embed", "block01")
    );
    assert_eq!(
        a.spikes_per_layer,
        vec![
            ("patch_embed".to_string(), 2),
            ("block01".to_string(), 2),
            ("projector".to_string(), 1)
        ]
    );
    assert_eq!(a.lags, vec![15, 10]);
    assert_eq!(a.median_lag, Some(12.5));
    // Threshold 2 points: 66 → 61.5 is a dip, 64 → 62.5 is not.
    assert_eq!(a.dips.len(), 1);
    assert_eq!(a.dips[0].step, 60);
    assert!((a.deepest_dip - 4.5).abs() < 1e-12);
    assert_eq!((a.final_top1, a.best_top1), (Some(62.5), Some(66.0)));
    assert!((a.final_loss.unwrap() - 4.0).abs() < 1e-12);
}

#[test]
fn the_report_shows_the_spread_over_seeds() {
    let tmp = Tmp::new("seeds");
    let mut study = tiny_study();
    study.axes[2] = Axis::new("base_lr", [1e-2]);
    study.axes[4] = Axis::new("seed", [0, 1, 2]);
    write_runs(&tmp, &study, |run| {
        // Seeds 0, 1, 2 end at 60, 61, 62 % with the learned projection, 5 points higher
        // frozen.
        let frozen = run.patch_embed == PatchEmbed::Frozen;
        60.0 + run.seed as f64 + if frozen { 5.0 } else { 0.0 }
    });
    let report = moco_train::study::report::write_report(&tmp.0, &study, None).unwrap();
    let md = std::fs::read_to_string(report).unwrap();
    // Mean ± sample standard deviation over the three seeds; Δ = 5 with a standard error of
    // sqrt(2 / 3) = 0.82: beyond the noise.
    let row = "| mocov3 | 16 | 1e-2 | 61.00 ± 1.00 / 61.00 ± 1.00 | 0.0 ± 0.0 | 66.00 ± 1.00 / 66.00 ± 1.00 | 0.0 ± 0.0 | +5.00 ± 0.82 | yes |";
    assert!(md.contains(row), "{md}");
    let cells: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.0.join("cells.json")).unwrap()).unwrap();
    assert_eq!(cells[0]["learned"]["final_top1"]["n"], 3);
    assert!(tmp.0.join("figures/knn-mocov3-b16.png").is_file());
}

/// Writes a finished run for every run of `study` whose kNN goes from 55 % to `end(run)`.
fn write_runs(tmp: &Tmp, study: &StudyConfig, end: impl Fn(&StudyRun) -> f64) {
    for run in study.runs().unwrap() {
        let mut text = String::new();
        for (step, top1) in [(0, 55.0), (10, end(&run))] {
            text += &format!("{}\n", json!({"type": "knn", "step": step, "top1": top1}));
        }
        for step in 1..=10u64 {
            let norms = json!({"patch_embed": 1.0, "block00": 1.0, "block01": 1.0});
            let row = json!({"type": "step", "step": step, "loss": 3.0, "grad_norms": norms});
            text += &format!("{row}\n");
        }
        let dir = tmp.0.join("runs").join(&run.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
        // Ended runs only enter a cell.
        let status = moco_train::study::RunStatus::Complete { steps: 10 };
        std::fs::write(
            dir.join("study_status.json"),
            serde_json::to_string(&status).unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn a_study_over_two_arbitrary_keys_groups_its_report_by_both() {
    let tmp = Tmp::new("two-keys");
    // Written as text: the file's order of the axes is the grid's.
    let text = r#"{
        "name": "depth and heads",
        "preset": "fmnist-vit",
        "overrides": {"embed_dim": 32, "mlp_dim": 64, "out_dim": 32, "batch_size": 16, "steps": 10},
        "axes": {"model.depth": [2, 3], "num_heads": [2, 4],
                 "freeze_patch_embed": [false, true], "seed": [0, 1]}
    }"#;
    let study = StudyConfig::parse(text, "two-keys").unwrap();
    assert_eq!(study.runs().unwrap().len(), 16);
    // The final kNN is 60 + depth + heads / 2, + seed, + 1 frozen.
    write_runs(&tmp, &study, |run| {
        let (depth, heads) = (
            run.config.model.depth.unwrap(),
            run.config.model.num_heads.unwrap(),
        );
        let frozen = (run.patch_embed == PatchEmbed::Frozen) as u64;
        60.0 + depth as f64 + heads as f64 / 2.0 + (run.seed + frozen) as f64
    });
    let report = moco_train::study::report::write_report(&tmp.0, &study, None).unwrap();
    let md = std::fs::read_to_string(report).unwrap();
    assert!(
        md.contains("| depth | num_heads | learned final / best |"),
        "{md}"
    );
    // depth 3, heads 4: learned 65 and 66 → 65.50 ± 0.71; frozen one more.
    let row = "| 3 | 4 | 65.50 ± 0.71 / 65.50 ± 0.71 | 0.0 ± 0.0 | 66.50 ± 0.71 / 66.50 ± 0.71 | 0.0 ± 0.0 | +1.00 ± 0.71 | no |";
    assert!(md.contains(row), "{md}");
    assert!(md.contains("| 2 | 2 | learned |"), "{md}");
    let cells: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.0.join("cells.json")).unwrap()).unwrap();
    let cells = cells.as_array().unwrap();
    assert_eq!(cells.len(), 4);
    assert_eq!(cells[3]["axes"], json!({"depth": 3, "num_heads": 4}));
    assert_eq!(cells[3]["learned"]["final_top1"]["n"], 2);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.0.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary[1]["axes"]["freeze_patch_embed"], json!(true));
    // A kNN figure per depth (its lines: the heads), and the measures against the heads.
    for name in [
        "knn-depth2.png",
        "knn-depth3.png",
        "against-num_heads-depth3.png",
    ] {
        assert!(tmp.0.join("figures").join(name).is_file(), "{name}");
    }
}
