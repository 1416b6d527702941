//! Every golden case passes the forward parity checks, through the library and the CLI.

use burn::tensor::Device;
use std::path::{Path, PathBuf};
use std::process::Command;

use moco_cli::models::export::to_safetensors;
use moco_cli::models::state_dict::read_state_dict;
use moco_cli::parity::{case_tags, run_case, run_misc};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

#[test]
fn every_golden_case_matches_pytorch() {
    let dir = golden_dir();
    let tags = case_tags(&dir).unwrap();
    assert!(tags.len() >= 2, "{tags:?}");
    for tag in tags {
        let report = run_case(&dir, &tag, &Device::flex()).unwrap();
        println!("{report}");
        assert!(report.passed(), "{report}");
        let names: Vec<_> = report.checks.iter().map(|c| c.name.as_str()).collect();
        for name in [
            "eval.features_x1",
            "eval.prediction_x1",
            "train.loss",
            "train.k2",
        ] {
            assert!(names.contains(&name), "{tag}: no check of {name}");
        }
        assert!(
            names.iter().filter(|n| n.starts_with("grad.")).count() > 20,
            "{tag}"
        );
        assert!(
            names
                .iter()
                .filter(|n| n.starts_with("after.momentum_encoder."))
                .count()
                > 20,
            "{tag}"
        );
        for check in report.checks.iter().filter(|c| c.name.starts_with("eval.")) {
            // Far inside the tolerance: an f32 forward matches to about 1e-6.
            assert!(
                check.max_abs < 1e-5,
                "{tag} {}: {}",
                check.name,
                check.max_abs
            );
        }
        // The frozen linear patch projection has no gradient, as in PyTorch; a ConvStem is
        // trained whatever `stop_grad_conv1` says.
        let stem_grads = names
            .iter()
            .filter(|n| n.starts_with("grad.base_encoder.patch_embed"))
            .count();
        if tag.contains("convstem") {
            // Five convolutions, four BNs with scale and shift, the last conv's bias.
            assert_eq!(stem_grads, 5 + 4 * 2 + 1, "{tag}");
        } else {
            assert_eq!(stem_grads, 0, "{tag}");
        }
    }
    let misc = run_misc(&dir, &Device::flex()).unwrap();
    println!("{misc}");
    assert!(misc.passed(), "{misc}");
    assert_eq!(misc.checks.len(), 4 + 2 + 1 + 6 + 2 + 2);
}

#[test]
fn cli_passes_on_the_golden_cases_and_fails_on_a_wrong_vector() {
    let exe = env!("CARGO_BIN_EXE_moco");
    let out = Command::new(exe)
        .args(["parity"])
        .arg(golden_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("4 passed, 0 failed"), "{stdout}");

    // A copy of one case with a perturbed expected output must fail with a non-zero exit.
    let tmp = std::env::temp_dir().join(format!("moco-parity-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let tag = "vit_tiny_p8_32";
    for ext in ["json", "pth.tar"] {
        std::fs::copy(
            golden_dir().join(format!("{tag}.{ext}")),
            tmp.join(format!("{tag}.{ext}")),
        )
        .unwrap();
    }
    let vectors =
        read_state_dict(&golden_dir().join(format!("{tag}.expected.safetensors"))).unwrap();
    let tensors: Vec<_> = vectors
        .into_iter()
        .map(|(k, v)| {
            let mut data = burn_store::bridge::to_data(&v).unwrap();
            if k == "eval.projection_x1" {
                let mut values = data.try_to_vec::<f32>().unwrap();
                values[0] += 0.01;
                data = burn::tensor::TensorData::new(values, data.shape().clone());
            }
            (k, data)
        })
        .collect();
    std::fs::write(
        tmp.join(format!("{tag}.expected.safetensors")),
        to_safetensors(&tensors, None).unwrap(),
    )
    .unwrap();
    let out = Command::new(exe)
        .args(["parity"])
        .arg(tmp.join(tag))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&tmp).ok();
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("eval.projection_x1") && stdout.contains("FAIL"),
        "{stdout}"
    );
    assert!(
        stdout.contains("eval.features_x1") && stdout.contains("pass"),
        "{stdout}"
    );
}
