//! End-to-end runs on the bundled data: every method, exact resume, the non-finite guard.

use burn::tensor::Device;
use std::path::PathBuf;

use moco_train::{pretrain, Method, PretrainConfig, RunOptions, TrainError};

/// Burn's random initialisation draws from one generator per backend, seeded per run: runs in
/// parallel threads of one process would interleave their draws. These tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Tmp(PathBuf);
impl Tmp {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("moco-train-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A few-second configuration: a 1-block ViT on the bundled Fashion-MNIST.
fn tiny(method: Method) -> PretrainConfig {
    PretrainConfig::preset("fmnist-vit")
        .unwrap()
        .with_method(method)
        .with_embed_dim(Some(32))
        .with_depth(Some(1))
        .with_num_heads(Some(2))
        .with_mlp_dim(64)
        .with_out_dim(32)
        .with_batch_size(16)
        .with_max_steps(Some(6))
        .with_knn_every(3)
        .with_knn_memory(256)
        .with_knn_eval(128)
        .with_knn_k(10)
        .with_checkpoint_every(100)
        .with_workers(1)
        .with_log_every(1000)
}

fn quiet() -> RunOptions {
    RunOptions {
        quiet: true,
        ..Default::default()
    }
}

#[test]
fn every_method_runs_end_to_end() {
    let _turn = serial();
    for method in [Method::MocoV3, Method::SimClr, Method::Byol] {
        let dir = Tmp::new(&format!("smoke-{method}"));
        let summary = pretrain(tiny(method), &dir.0, &quiet(), &Device::flex().autodiff()).unwrap();
        assert_eq!(summary.steps, 6, "{method}");
        assert_eq!(summary.losses.len(), 6);
        assert!(
            summary.losses.iter().all(|l| l.is_finite()),
            "{method}: {:?}",
            summary.losses
        );
        assert!(summary.initial_knn.is_some() && summary.final_knn.is_some());
        let metrics = std::fs::read_to_string(dir.0.join("metrics.jsonl")).unwrap();
        let steps = metrics
            .lines()
            .filter(|l| l.contains("\"type\":\"step\""))
            .count();
        let knn = metrics
            .lines()
            .filter(|l| l.contains("\"type\":\"knn\""))
            .count();
        assert_eq!((steps, knn), (6, 3), "{method}");
        assert!(
            !metrics.contains("\"patch_embed\""),
            "{method}: the frozen projection has no gradient"
        );
        assert!(metrics.contains("\"block00\""), "{method}");
        assert!(dir.0.join("config.json").is_file());
        moco_train::plot_run(&dir.0).unwrap();
        for (plot, panels) in [
            ("loss.png", 1),
            ("schedule.png", 2),
            ("knn.png", 1),
            ("grad_norms.png", 1),
        ] {
            let img = image::open(dir.0.join("plots").join(plot)).unwrap();
            assert_eq!((img.width(), img.height()), (900 * panels, 420), "{plot}");
        }
        assert!(summary
            .checkpoint
            .as_ref()
            .unwrap()
            .join("model.bpk")
            .is_file());
    }
}

/// The loop takes the learning rate and the momentum of iteration i at `epoch + i/N`, as MoCo
/// v3's `main_moco.py` does: the first warm-up step has learning rate 0.
#[test]
fn the_schedule_is_taken_where_each_step_starts() {
    let _turn = serial();
    let dir = Tmp::new("schedule");
    let config = tiny(Method::MocoV3)
        .with_steps(None)
        .with_epochs(2.0)
        .with_warmup_epochs(1.0)
        .with_max_steps(Some(3))
        .with_knn_every(0);
    let (base_lr, batch, m0) = (
        config.optimizer.base_lr,
        config.schedule.batch_size,
        config.schedule.momentum,
    );
    pretrain(config, &dir.0, &quiet(), &Device::flex().autodiff()).unwrap();
    let metrics = std::fs::read_to_string(dir.0.join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .filter(|l| l.contains("\"type\":\"step\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(steps.len(), 3);
    // Iteration i of an epoch of N batches starts at epoch i/N.
    let per_batch = steps[1]["epoch"].as_f64().unwrap();
    assert!(per_batch > 0.0 && per_batch < 0.01, "{per_batch}");
    let peak = base_lr * batch as f64 / 256.0;
    for (i, step) in steps.iter().enumerate() {
        let epoch = step["epoch"].as_f64().unwrap();
        assert!(
            (epoch - i as f64 * per_batch).abs() < 1e-12,
            "step {}: {epoch}",
            i + 1
        );
        let lr = step["lr"].as_f64().unwrap();
        assert!((lr - peak * epoch).abs() < 1e-15, "step {}: lr {lr}", i + 1);
        let m = step["momentum"].as_f64().unwrap();
        let expected = 1.0 - 0.5 * (1.0 + (std::f64::consts::PI * epoch / 2.0).cos()) * (1.0 - m0);
        assert!((m - expected).abs() < 1e-12, "step {}: momentum {m}", i + 1);
    }
    assert_eq!(steps[0]["lr"].as_f64(), Some(0.0));
}

/// MoCo v3's ConvStem is always trained, whatever `freeze_patch_embed` says: its gradient norm
/// shows in the monitor's `patch_embed` group.
#[test]
fn a_conv_stem_is_trained() {
    let _turn = serial();
    let dir = Tmp::new("convstem");
    let config = tiny(Method::MocoV3)
        .with_arch("vit_conv_small".into())
        .with_img_size(32)
        .with_patch_size(16)
        .with_freeze_patch_embed(true)
        .with_max_steps(Some(2))
        .with_knn_every(0);
    pretrain(config, &dir.0, &quiet(), &Device::flex().autodiff()).unwrap();
    let metrics = std::fs::read_to_string(dir.0.join("metrics.jsonl")).unwrap();
    let step = metrics
        .lines()
        .find(|l| l.contains("\"type\":\"step\""))
        .unwrap();
    let record: serde_json::Value = serde_json::from_str(step).unwrap();
    let norm = record["grad_norms"]["patch_embed"].as_f64();
    assert!(norm.is_some_and(|n| n > 0.0), "{step}");
}

#[test]
fn resume_continues_exactly() {
    let _turn = serial();
    let config = tiny(Method::MocoV3);
    let full_dir = Tmp::new("full");
    let full = pretrain(
        config.clone(),
        &full_dir.0,
        &quiet(),
        &Device::flex().autodiff(),
    )
    .unwrap();

    let dir = Tmp::new("resumed");
    let first = pretrain(
        config.clone(),
        &dir.0,
        &RunOptions {
            stop_after: Some(3),
            ..quiet()
        },
        &Device::flex().autodiff(),
    )
    .unwrap();
    assert!(first.interrupted);
    assert_eq!(first.losses, full.losses[..3]);
    // Starting again without --resume is refused: the run directory has checkpoints.
    let err = pretrain(config.clone(), &dir.0, &quiet(), &Device::flex().autodiff())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
    let second = pretrain(
        config,
        &dir.0,
        &RunOptions {
            resume: true,
            ..quiet()
        },
        &Device::flex().autodiff(),
    )
    .unwrap();
    assert_eq!(second.steps, 6);
    assert_eq!(
        second.losses,
        full.losses[3..],
        "resumed losses differ from the uninterrupted run"
    );
    // The metrics of the resumed run have each step once.
    let metrics = std::fs::read_to_string(dir.0.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"type\":\"step\""))
            .count(),
        6
    );
}

#[test]
fn non_finite_values_stop_the_run_or_are_skipped() {
    let _turn = serial();
    let config = tiny(Method::MocoV3)
        .with_base_lr(1e35)
        .with_optimizer(moco_train::config::OptimizerName::Lars)
        .with_weight_decay(0.0);
    let dir = Tmp::new("nan");
    let err = pretrain(config.clone(), &dir.0, &quiet(), &Device::flex().autodiff()).unwrap_err();
    let TrainError::NonFinite { step, .. } = &err else {
        panic!("{err}")
    };
    assert!(*step >= 2, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("step {step}")) && text.contains("first layer"),
        "{text}"
    );

    let dir = Tmp::new("nan-skip");
    let summary = pretrain(
        config.with_skip_nonfinite(true),
        &dir.0,
        &quiet(),
        &Device::flex().autodiff(),
    )
    .unwrap();
    assert!(summary.skipped_steps >= 1);
    assert_eq!(summary.steps, 6);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn stored(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/runs")
        .join(name)
}

/// A run directory written by an earlier version (4346e2c, before the loop became a
/// `Trainer` and the backbone a trait: `config.json`, `metrics.jsonl` and the checkpoint at
/// step 2 of 4, stopped with `--stop-after 2`; its `data` then set to `bundled`, the data it
/// used, so that an installed full Fashion-MNIST does not change the data) resumes to its end,
/// with the losses that version logged for steps 3 and 4 when it ran the 4 steps without
/// stopping.
#[test]
fn a_run_directory_of_an_earlier_version_resumes() {
    let _turn = serial();
    let dir = Tmp::new("old-run");
    copy_dir(&stored("v0.1-4346e2c"), &dir.0);
    let options = RunOptions {
        resume: true,
        quiet: true,
        ..Default::default()
    };
    let summary = pretrain(
        PretrainConfig::new(),
        &dir.0,
        &options,
        &Device::flex().autodiff(),
    )
    .unwrap();
    assert_eq!((summary.steps, summary.losses.len()), (4, 2));
    for (loss, then) in summary
        .losses
        .iter()
        .zip([2.3573126792907715, 2.5339436531066895])
    {
        assert!((loss - then).abs() < 1e-5, "{:?}", summary.losses);
    }
    let metrics = std::fs::read_to_string(dir.0.join("metrics.jsonl")).unwrap();
    let steps = metrics
        .lines()
        .filter(|l| l.contains("\"type\":\"step\""))
        .count();
    assert_eq!(steps, 4);
    assert!(dir.0.join("checkpoints/step-00000004/model.bpk").is_file());
}

/// The losses of steps 3 and 4 of `tests/runs/burn-0.21-resnet18` when the build that wrote
/// it ran its 4 steps without stopping.
const RESNET_LOSSES_3_4: [f64; 2] = [3.1145923137664795, 2.961449384689331];

/// A ResNet run directory written with Burn 0.21 (`tests/runs/burn-0.21-resnet18`: a
/// quarter-width ResNet-18 with LARS, so its `.mpk` records hold BatchNorm running statistics
/// and the optimizer's momentum; `config.json`, `metrics.jsonl` and the checkpoint at step 2
/// of 4, stopped with `--stop-after 2`) resumes to its end with the losses that build logged
/// for steps 3 and 4 when it ran the 4 steps without stopping.
#[test]
fn a_resnet_run_written_with_burn_0_21_resumes() {
    let _turn = serial();
    let dir = Tmp::new("burn-0.21-resnet");
    copy_dir(&stored("burn-0.21-resnet18"), &dir.0);
    let options = RunOptions {
        resume: true,
        quiet: true,
        ..Default::default()
    };
    let summary = pretrain(
        PretrainConfig::new(),
        &dir.0,
        &options,
        &Device::flex().autodiff(),
    )
    .unwrap();
    assert_eq!((summary.steps, summary.losses.len()), (4, 2));
    for (loss, then) in summary.losses.iter().zip(RESNET_LOSSES_3_4) {
        assert!((loss - then).abs() < 1e-5, "{:?}", summary.losses);
    }
    assert!(dir.0.join("checkpoints/step-00000004/model.bpk").is_file());
}

/// The `config.json` of the first version (without `steps`, `stem`, `precision` and the
/// kernel fields, and with a plain number as `dip_threshold`) loads and validates.
#[test]
fn the_first_versions_config_loads() {
    let path = stored("config-c91a573.json");
    let config = PretrainConfig::load_run(&path).unwrap();
    config.validate().unwrap();
    assert_eq!(config.schedule.steps, None);
    assert_eq!(config.precision, None);
    assert_eq!(config.monitors.dip_threshold, Some(1.0));
    assert_eq!(config.model.embed_dim, Some(32));
}

/// `--resume` skips a damaged newest checkpoint (with a warning) and continues from the
/// previous one; a checkpoint named explicitly is used as is.
#[test]
fn resume_falls_back_past_a_damaged_checkpoint() {
    let _turn = serial();
    let dir = Tmp::new("damaged-resume");
    let config = tiny(Method::MocoV3)
        .with_max_steps(Some(3))
        .with_knn_every(0)
        .with_checkpoint_every(1);
    pretrain(config.clone(), &dir.0, &quiet(), &Device::flex().autodiff()).unwrap();
    let newest = dir.0.join("checkpoints/step-00000003");
    std::fs::write(newest.join("model.bpk"), b"not a record").unwrap();
    let resume = RunOptions {
        resume: true,
        ..quiet()
    };
    let summary = pretrain(config.clone(), &dir.0, &resume, &Device::flex().autodiff()).unwrap();
    // From step 2: one step ran again.
    assert_eq!((summary.steps, summary.losses.len()), (3, 1));
    let from_first = RunOptions {
        resume: true,
        resume_from: Some(dir.0.join("checkpoints/step-00000001")),
        ..quiet()
    };
    let summary = pretrain(config, &dir.0, &from_first, &Device::flex().autodiff()).unwrap();
    assert_eq!((summary.steps, summary.losses.len()), (3, 2));
}
