//! Checkpoints of a training run: the model's tensors and the optimizer's state (burnpack
//! files, parameter ids kept so that each state finds its parameter) plus the position in the
//! schedule and the data, written atomically as one folder per checkpoint. Checkpoints
//! written with Burn 0.21 (`model.mpk`, `optim.mpk`) are read too.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::tensor::Bytes;
use burn_store::burn_pack::{Scalar, Tensor as PackTensor, Writer};
use moco_models::checkpoint::{apply_tensors, module_bytes, read_tensors};
use moco_models::legacy::{read_optimizer, LegacyValue};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The model's file in a checkpoint folder.
pub const MODEL_FILE: &str = "model.bpk";
/// The optimizer's file in a checkpoint folder.
pub const OPTIM_FILE: &str = "optim.bpk";
/// The model's file in a checkpoint folder written with Burn 0.21.
pub const LEGACY_MODEL_FILE: &str = "model.mpk";
/// The optimizer's file in a checkpoint folder written with Burn 0.21.
pub const LEGACY_OPTIM_FILE: &str = "optim.mpk";

/// The model file of the checkpoint folder `dir` (this build's, else Burn 0.21's).
pub fn model_file(dir: &Path) -> PathBuf {
    match dir.join(LEGACY_MODEL_FILE).is_file() && !dir.join(MODEL_FILE).is_file() {
        true => dir.join(LEGACY_MODEL_FILE),
        false => dir.join(MODEL_FILE),
    }
}

/// Where a run is in its schedule and its data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunPosition {
    /// Optimizer steps taken.
    pub step: u64,
    /// Current epoch.
    pub epoch: u64,
    /// Next micro-batch of that epoch.
    pub batch: usize,
    /// Steps skipped for non-finite values.
    #[serde(default)]
    pub skipped_steps: u64,
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn io(path: &Path, what: &str) -> impl Fn(std::io::Error) -> TrainError {
    let (path, what) = (path.display().to_string(), what.to_string());
    move |e| TrainError::Io(format!("{path}: {what}: {e}"))
}

/// The checkpoint folders of a run, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Vec<PathBuf> {
    let dir = run_dir.join("checkpoints");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("step-"))
                })
                .filter(|p| p.join("state.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Writes a checkpoint of `model`, `optim` and `position` under `run_dir/checkpoints`, then
/// removes all but the newest `keep`. Returns its folder.
pub fn save<M: Module>(
    run_dir: &Path,
    model: &M,
    optim: &ModuleOptimizer,
    position: &RunPosition,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let dir = run_dir.join("checkpoints");
    std::fs::create_dir_all(&dir).map_err(io(&dir, "cannot create"))?;
    let name = format!("step-{:08}", position.step);
    let tmp = dir.join(format!(".{name}.tmp"));
    let final_dir = dir.join(&name);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp, "cannot create"))?;
    let model_bytes =
        module_bytes(model, &[]).map_err(|e| TrainError::Io(format!("encoding the model: {e}")))?;
    let optim_bytes = optim
        .into_bytes()
        .map_err(|e| TrainError::Io(format!("encoding the optimizer state: {e}")))?;
    let state = serde_json::to_vec_pretty(position).expect("position serialises");
    let files = [
        (MODEL_FILE, &model_bytes[..]),
        (OPTIM_FILE, &optim_bytes[..]),
        ("state.json", &state[..]),
    ];
    for (name, bytes) in files {
        let path = tmp.join(name);
        if let Err(e) = write_synced(&path, bytes) {
            // A failed write (disk full, file-size limit, I/O error) leaves the earlier
            // checkpoints as they were.
            let _ = std::fs::remove_dir_all(&tmp);
            let kept = match list_checkpoints(run_dir).pop() {
                Some(previous) => format!("{} is kept", previous.display()),
                None => "no earlier checkpoint".into(),
            };
            return Err(TrainError::Io(format!(
                "{}: cannot write the checkpoint of step {}: {e} ({kept})",
                path.display(),
                position.step
            )));
        }
    }
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir)
        .map_err(io(&final_dir, "cannot rename the checkpoint into place"))?;
    let all = list_checkpoints(run_dir);
    for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(final_dir)
}

/// What a checkpoint holds: the model's tensors, the optimizer's state, the position.
pub struct Checkpoint {
    /// The model's tensors, named by their path, with their parameter ids.
    pub model: Vec<PackTensor>,
    /// The optimizer's state.
    pub optim: OptimizerRecord,
    /// Where the run was.
    pub position: RunPosition,
}

/// The checkpoint in `dir`, read but not applied, so that a damaged checkpoint leaves the
/// model as it was.
pub fn read(dir: &Path) -> Result<Checkpoint, TrainError> {
    let read = |f: &str| std::fs::read(dir.join(f)).map_err(io(dir, &format!("cannot read {f}")));
    let position: RunPosition = serde_json::from_slice(&read("state.json")?)
        .map_err(|e| TrainError::Io(format!("{}: state.json: {e}", dir.display())))?;
    let (_, model) = read_tensors(&model_file(dir))?;
    let legacy = !dir.join(OPTIM_FILE).is_file() && dir.join(LEGACY_OPTIM_FILE).is_file();
    let optim_bytes = match legacy {
        true => legacy_optimizer(&read(LEGACY_OPTIM_FILE)?)
            .map_err(|e| TrainError::Io(format!("{}: {LEGACY_OPTIM_FILE}: {e}", dir.display())))?,
        false => read(OPTIM_FILE)?,
    };
    let optim = OptimizerRecord::from_bytes(Bytes::from_bytes_vec(optim_bytes)).map_err(|e| {
        TrainError::Io(format!(
            "{}: the optimizer state is unreadable: {e}",
            dir.display()
        ))
    })?;
    Ok(Checkpoint {
        model,
        optim,
        position,
    })
}

/// A Burn 0.21 optimizer record of ours ([`crate::OptimState`] per parameter) as the burnpack
/// bytes of the same state.
fn legacy_optimizer(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut tensors = Vec::new();
    let mut writer_scalars = Vec::new();
    for (id, rank, fields) in read_optimizer(bytes)? {
        let prefix = id.val().to_string();
        writer_scalars.push((format!("{prefix}.__rank"), Scalar::UInt(rank as u64)));
        for (name, value) in fields {
            let key = format!("{prefix}.{name}");
            match value {
                LegacyValue::Tensor(mut t) => {
                    t.name = key;
                    tensors.push(t);
                }
                LegacyValue::UInt(n) => writer_scalars.push((key, Scalar::UInt(n))),
            }
        }
    }
    let mut writer = Writer::new(tensors);
    for (key, value) in writer_scalars {
        writer = writer.with_scalar(&key, value);
    }
    writer
        .into_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

/// Loads the checkpoint in `dir` into `model` and `optim`.
pub fn load<M: Module>(
    dir: &Path,
    model: M,
    optim: ModuleOptimizer,
) -> Result<(M, ModuleOptimizer, RunPosition), TrainError> {
    let checkpoint = read(dir)?;
    let model = apply_tensors(model, checkpoint.model, &model_file(dir))?;
    Ok((
        model,
        optim.load_record(checkpoint.optim),
        checkpoint.position,
    ))
}
