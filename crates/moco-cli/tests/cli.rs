//! `moco pretrain`'s configuration handling, end to end through the binary: typed values,
//! `--set`, `--print-config`, `in_chans` following the data, and configurations refused before
//! any training.

use std::path::PathBuf;
use std::process::{Command, Output};

fn moco(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moco"))
        .args(args)
        .output()
        .expect("the moco binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn printed_config(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["pretrain", "--print-config", "--device", "cpu"];
    all.extend_from_slice(args);
    let out = moco(&all);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let json = &text[text.find('{').expect("a JSON object")..];
    serde_json::from_str(json).expect("the configuration is JSON")
}

#[test]
fn set_reaches_any_field_by_name_or_place() {
    let c = printed_config(&[
        "--set",
        "schedule.momentum=0.996",
        "--set",
        "spike_factor=4",
        "--set",
        "arch=vit_small",
        "--mlp-dim",
        "256",
        "--log-every",
        "5",
    ]);
    assert_eq!(c["schedule"]["momentum"], 0.996);
    assert_eq!(c["monitors"]["spike_factor"], 4.0);
    assert_eq!(c["monitors"]["log_every"], 5);
    assert_eq!(c["model"]["arch"], "vit_small");
    assert_eq!(c["model"]["mlp_dim"], 256);
    let out = moco(&["pretrain", "--print-config", "--set", "momentom=0.9"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown field 'momentom'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn typed_values_are_checked_by_the_parser() {
    for (flag, value) in [
        ("--arch", "vit_smal"),
        ("--preset", "fmnist"),
        ("--optimizer", "adam"),
        ("--dataset", "cifar"),
    ] {
        let out = moco(&["pretrain", flag, value, "--print-config"]);
        assert!(!out.status.success(), "{flag} {value}");
        assert!(stderr(&out).contains(value), "{flag}: {}", stderr(&out));
    }
}

#[test]
fn configurations_that_cannot_train_are_refused_before_any_data_is_read() {
    let out = moco(&["pretrain", "--preset", "cifar-resnet18", "--device", "cpu"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--data"), "{}", stderr(&out));
    let out = moco(&["pretrain", "--batch-size", "1", "--device", "cpu"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("at least 2"), "{}", stderr(&out));
}

#[test]
fn in_chans_follows_the_data() {
    let dir = std::env::temp_dir().join(format!("moco-cli-rgb-{}", std::process::id()));
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..2 {
            let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8, y as u8, i]));
            img.save(dir.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let data = dir.to_string_lossy().into_owned();
    let c = printed_config(&["--data", &data]);
    assert_eq!(c["model"]["in_chans"], 3);
    let c = printed_config(&["--data", &data, "--in-chans", "1"]);
    assert_eq!(c["model"]["in_chans"], 1);
    let _ = std::fs::remove_dir_all(PathBuf::from(&dir));
}

#[test]
fn the_raw_pixel_probe_needs_no_checkpoint() {
    let json = std::env::temp_dir().join(format!("moco-cli-probe-{}.json", std::process::id()));
    let json_arg = json.to_string_lossy().into_owned();
    let out = moco(&[
        "probe",
        "--raw-pixels",
        "--data",
        "bundled",
        "--epochs",
        "2",
        "--cached-features",
        "--lr",
        "0.1,1",
        "--json",
        &json_arg,
        "--device",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("linear probe of raw pixels"));
    let runs: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    for run in runs.as_array().unwrap() {
        let epochs = run["epochs"].as_array().unwrap();
        assert_eq!(epochs.len(), 2);
        // A linear classifier on Fashion-MNIST pixels is far above chance (10 %).
        assert!(epochs[1]["top1"].as_f64().unwrap() > 50.0, "{run}");
    }
    let _ = std::fs::remove_file(&json);
    let out = moco(&["probe", "--raw-pixels", "--checkpoint", "runs/x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mpi_runs_say_what_they_need() {
    // A build without MPI names the feature and the libraries it needs.
    #[cfg(not(feature = "mpi"))]
    {
        let out = moco(&["pretrain", "--mpi", "--device", "cpu", "--max-steps", "1"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("--features mpi"), "{}", stderr(&out));
    }
}
