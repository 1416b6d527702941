//! The model-free reference vectors (`misc.json`, `misc.expected.safetensors`): losses, three
//! LARS steps, the schedules and the position embeddings.

use std::path::Path;

use burn::prelude::*;
use moco_train::{OptimConfig, OptimizerKind};
use serde::Deserialize;

use super::check::{CaseReport, Check, Tolerance};
use super::{read_record, tensor};

/// `misc.json`.
#[derive(Debug, Clone, Deserialize)]
struct MiscCase {
    lars: MiscLars,
    schedule: MiscSchedule,
}

#[derive(Debug, Clone, Deserialize)]
struct MiscLars {
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    trust_coefficient: f64,
}

#[derive(Debug, Clone, Deserialize)]
struct MiscSchedule {
    epochs: f64,
    warmup_epochs: f64,
    base_lr: f64,
    moco_m: f64,
}

/// Whether `dir` holds the model-free vectors (`misc.json`, `misc.expected.safetensors`).
pub fn has_misc(dir: &Path) -> bool {
    dir.join("misc.json").is_file() && dir.join("misc.expected.safetensors").is_file()
}

/// Checks the model-free vectors: losses, three LARS steps, schedules, position embeddings.
pub fn run_misc(dir: &Path, device: &Device) -> Result<CaseReport, String> {
    use moco_train::optim::OptimState;
    use moco_train::schedule;
    let json = dir.join("misc.json");
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let misc: MiscCase =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let file = dir.join("misc.expected.safetensors");
    let expected = read_record(&file)?;
    let t2 = |key: &str| tensor(&expected, key, &file).map(|d| Tensor::<2>::from_data(d, device));
    let t1 = |key: &str| tensor(&expected, key, &file).map(|d| Tensor::<1>::from_data(d, device));
    let mut checks = Vec::new();
    let mut compare = |name: &str, actual: TensorData| -> Result<(), String> {
        checks.push(Check::compare(
            name,
            &actual,
            &tensor(&expected, name, &file)?,
            Tolerance::Elementwise,
        ));
        Ok(())
    };

    for key in expected.keys().filter(|k| k.starts_with("infonce.loss_T")) {
        // infonce.loss_T{T}_rank{r}
        let rest = &key["infonce.loss_T".len()..];
        let (t, rank) = rest
            .split_once("_rank")
            .and_then(|(t, r)| Some((t.parse::<f64>().ok()?, r.parse::<usize>().ok()?)))
            .ok_or_else(|| format!("{}: cannot parse '{key}'", file.display()))?;
        let loss = moco_loss::infonce(t2("infonce.q")?, t2("infonce.k_all")?, t, rank);
        compare(key, loss.into_data())?;
    }
    for key in expected.keys().filter(|k| k.starts_with("ntxent.loss_T")) {
        let t: f64 = key["ntxent.loss_T".len()..]
            .parse()
            .map_err(|_| format!("cannot parse '{key}'"))?;
        compare(
            key,
            moco_loss::nt_xent(t2("ntxent.z1")?, t2("ntxent.z2")?, t).into_data(),
        )?;
    }
    compare(
        "byol.loss",
        moco_loss::byol(t2("byol.p")?, t2("byol.z")?).into_data(),
    )?;

    let l = &misc.lars;
    let optim = OptimConfig::new(
        OptimizerKind::Lars {
            momentum: l.momentum,
            trust_coefficient: l.trust_coefficient,
        },
        l.weight_decay,
    )
    .build();
    let (mut w, mut b) = (t2("lars.w0")?, t1("lars.b0")?);
    let (mut sw, mut sb): (Option<OptimState<2>>, Option<OptimState<1>>) = (None, None);
    for i in 0..3 {
        (w, sw) = burn::optim::Optimizer::step(&optim, l.lr, w, t2(&format!("lars.gw{i}"))?, sw);
        (b, sb) = burn::optim::Optimizer::step(&optim, l.lr, b, t1(&format!("lars.gb{i}"))?, sb);
        compare(&format!("lars.w{}", i + 1), w.clone().into_data())?;
        compare(&format!("lars.b{}", i + 1), b.clone().into_data())?;
    }

    let s = &misc.schedule;
    let epochs = tensor(&expected, "schedule.epoch", &file)?
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap_or_default();
    let lr: Vec<f32> = epochs
        .iter()
        .map(|&e| schedule::learning_rate(e, s.base_lr, s.warmup_epochs, s.epochs) as f32)
        .collect();
    let m: Vec<f32> = epochs
        .iter()
        .map(|&e| schedule::momentum(e, s.moco_m, s.epochs) as f32)
        .collect();
    compare("schedule.lr", TensorData::new(lr, [epochs.len()]))?;
    compare("schedule.momentum", TensorData::new(m, [epochs.len()]))?;

    for (key, h, w, d) in [
        ("sincos.h3_w5_d16", 3, 5, 16),
        ("sincos.h4_w4_d64", 4, 4, 64),
    ] {
        if expected.contains_key(key) {
            compare(
                key,
                TensorData::new(moco_models::vit::sincos_pos_embed(h, w, d), [1 + h * w, d]),
            )?;
        }
    }
    Ok(CaseReport {
        tag: "misc".to_string(),
        checks,
    })
}
