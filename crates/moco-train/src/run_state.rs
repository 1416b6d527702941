//! Checkpoints of a training run: the model and optimizer records at full precision plus the
//! position in the schedule and the data, written atomically as one folder per checkpoint.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::TrainError;

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
pub fn save<M: Module, O: Optimizer<M>>(
    run_dir: &Path,
    model: &M,
    optim: &O,
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
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
    let model_bytes = Recorder::record(&recorder, model.clone().into_record(), ())
        .map_err(|e| TrainError::Io(format!("encoding the model: {e}")))?;
    let optim_bytes = Recorder::record(&recorder, optim.to_record(), ())
        .map_err(|e| TrainError::Io(format!("encoding the optimizer state: {e}")))?;
    let state = serde_json::to_vec_pretty(position).expect("position serialises");
    let files = [
        ("model.mpk", &model_bytes[..]),
        ("optim.mpk", &optim_bytes[..]),
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

/// The records of the checkpoint in `dir`: the model's, the optimizer's, and the position.
/// Nothing is applied, so a damaged checkpoint leaves the model as it was.
#[allow(clippy::type_complexity)]
pub fn read<M: Module, O: Optimizer<M>>(
    dir: &Path,
    device: &Device,
) -> Result<(M::Record, O::Record, RunPosition), TrainError> {
    let read = |f: &str| std::fs::read(dir.join(f)).map_err(io(dir, &format!("cannot read {f}")));
    let position: RunPosition = serde_json::from_slice(&read("state.json")?)
        .map_err(|e| TrainError::Io(format!("{}: state.json: {e}", dir.display())))?;
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
    let model = Recorder::load(&recorder, read("model.mpk")?, device).map_err(|e| {
        TrainError::Io(format!(
            "{}: model.mpk is not a checkpoint of this model: {e}",
            dir.display()
        ))
    })?;
    let optim = Recorder::load(&recorder, read("optim.mpk")?, device).map_err(|e| {
        TrainError::Io(format!(
            "{}: optim.mpk does not match this optimizer: {e}",
            dir.display()
        ))
    })?;
    Ok((model, optim, position))
}

/// Loads the checkpoint in `dir` into `model` and `optim`.
pub fn load<M: Module, O: Optimizer<M>>(
    dir: &Path,
    model: M,
    optim: O,
    device: &Device,
) -> Result<(M, O, RunPosition), TrainError> {
    let (m, o, position) = read::<M, O>(dir, device)?;
    Ok((model.load_record(m), optim.load_record(o), position))
}
