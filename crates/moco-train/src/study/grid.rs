//! The study's grid: the runs of learning rate × patch projection × batch size × method ×
//! seed, each a pretraining configuration and a run directory, and the recorded end of each
//! run.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::PretrainConfig;
use crate::method::Method;
use crate::TrainError;

/// The study sized for a 2-core CPU (about 90 minutes): a small ViT on Fashion-MNIST, four
/// learning rates from stable to unstable, learned vs frozen patch projection.
pub const CPU_STUDY: &str = include_str!("../../studies/fmnist-vit.json");
/// The study sized for one GPU: ViT-S on an image folder, two batch sizes.
pub const GPU_STUDY: &str = include_str!("../../studies/imagenet-vit-small.json");
/// The CPU study's two unstable rates with three seeds per cell and a second batch size (64
/// beside 128): the spread that says which differences are beyond the noise (about 1.5 hours
/// on 2 cores).
pub const CPU_SEEDS_STUDY: &str = include_str!("../../studies/fmnist-vit-seeds.json");

/// The studies that ship with the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinStudy {
    /// [`CPU_STUDY`].
    Cpu,
    /// [`CPU_SEEDS_STUDY`].
    CpuSeeds,
    /// [`GPU_STUDY`].
    Gpu,
}

impl BuiltinStudy {
    /// Every built-in study.
    pub const ALL: [BuiltinStudy; 3] = [Self::Cpu, Self::CpuSeeds, Self::Gpu];

    /// Its name on the command line (`cpu`, `cpu-seeds`, `gpu`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::CpuSeeds => "cpu-seeds",
            Self::Gpu => "gpu",
        }
    }

    /// The study.
    pub fn config(self) -> StudyConfig {
        let text = match self {
            Self::Cpu => CPU_STUDY,
            Self::CpuSeeds => CPU_SEEDS_STUDY,
            Self::Gpu => GPU_STUDY,
        };
        StudyConfig::parse(text, &format!("built-in {} study", self.name()))
            .expect("the built-in studies parse (tested)")
    }
}

impl std::str::FromStr for BuiltinStudy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|b| b.name()).collect();
                format!("unknown built-in study '{s}': use {}", names.join(", "))
            })
    }
}

fn default_patch_embed() -> Vec<PatchEmbed> {
    vec![PatchEmbed::Learned, PatchEmbed::Frozen]
}
fn default_dip_threshold() -> f64 {
    2.0
}
fn default_spike_factor() -> f64 {
    3.0
}
fn default_spike_window() -> usize {
    100
}
fn default_lag_window() -> u64 {
    100
}

/// The patch projection of a ViT run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchEmbed {
    /// Trained with the rest of the network.
    Learned,
    /// Fixed at its random initialisation (the paper's fix).
    Frozen,
}

impl std::fmt::Display for PatchEmbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PatchEmbed::Learned => "learned",
            PatchEmbed::Frozen => "frozen",
        })
    }
}

/// A study: a base configuration and the axes of the grid (every combination is one run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// Name shown in the report.
    pub name: String,
    /// Training preset every run starts from (see [`crate::TRAIN_PRESETS`]).
    pub preset: String,
    /// Fields of [`PretrainConfig`] set on top of the preset for every run (`steps`,
    /// `knn_every`, `data`, ...).
    #[serde(default)]
    pub overrides: serde_json::Map<String, Value>,
    /// Base learning rates (scaled by batch / 256 as in every run).
    pub base_lrs: Vec<f64>,
    /// Learned and/or frozen patch projection.
    #[serde(default = "default_patch_embed")]
    pub patch_embed: Vec<PatchEmbed>,
    /// Batch sizes (the preset's when empty).
    #[serde(default)]
    pub batch_sizes: Vec<usize>,
    /// Methods (the preset's when empty).
    #[serde(default)]
    pub methods: Vec<Method>,
    /// Seeds (the preset's when empty).
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// A kNN top-1 drop of more than this many points between two evaluations is a dip.
    #[serde(default = "default_dip_threshold")]
    pub dip_threshold: f64,
    /// A layer's gradient norm over this multiple of its running median is a spike.
    #[serde(default = "default_spike_factor")]
    pub spike_factor: f64,
    /// Steps in that running median.
    #[serde(default = "default_spike_window")]
    pub spike_window: usize,
    /// A last-layer spike at most this many steps after a first-layer spike counts as its
    /// echo (for the lag between the two).
    #[serde(default = "default_lag_window")]
    pub lag_window: u64,
}

/// One run of the grid.
#[derive(Clone, Debug, PartialEq)]
pub struct StudyRun {
    /// Directory name under `runs/`, e.g. `mocov3-b128-lr1e-2-learned-s0`.
    pub name: String,
    /// Method.
    pub method: Method,
    /// Batch size.
    pub batch_size: usize,
    /// Base learning rate.
    pub base_lr: f64,
    /// Patch projection.
    pub patch_embed: PatchEmbed,
    /// Seed.
    pub seed: u64,
    /// The full configuration of the run.
    pub config: PretrainConfig,
}

/// How a run of the study ended, as recorded in its `study_status.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum RunStatus {
    /// Ran to the end of its schedule.
    Complete {
        /// Steps taken.
        steps: u64,
    },
    /// Stopped by a NaN or infinity.
    Diverged {
        /// The step that produced it.
        step: u64,
        /// The first layer group with a non-finite gradient.
        layer: String,
    },
}

impl StudyConfig {
    /// Parses a study file's text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, TrainError> {
        let config: StudyConfig =
            serde_json::from_str(text).map_err(|e| TrainError::Config(format!("{source}: {e}")))?;
        config
            .runs()
            .map_err(|e| TrainError::Config(format!("{source}: {e}")))?;
        Ok(config)
    }

    /// Reads a study file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The base configuration: the preset with the overrides applied (each by its flat
    /// name, `steps`, or its place, `schedule.steps`).
    pub fn base(&self) -> Result<PretrainConfig, String> {
        let mut config = PretrainConfig::preset(&self.preset)?;
        for (key, v) in &self.overrides {
            config
                .set(key, v.clone())
                .map_err(|e| format!("overrides: {e}"))?;
        }
        Ok(config)
    }

    /// Every run of the grid, in the order they run: by method, batch size, seed, learning
    /// rate, then learned before frozen (so that each pair finishes together).
    pub fn runs(&self) -> Result<Vec<StudyRun>, String> {
        let base = self.base()?;
        if self.base_lrs.is_empty() || self.patch_embed.is_empty() {
            return Err("base_lrs and patch_embed need at least one value each".into());
        }
        if let Some(lr) = self
            .base_lrs
            .iter()
            .find(|lr| !(**lr > 0.0 && lr.is_finite()))
        {
            return Err(format!("base_lrs: {lr} is not a positive learning rate"));
        }
        if !(self.dip_threshold >= 0.0 && self.spike_factor > 1.0 && self.spike_window >= 5) {
            return Err(format!(
                "need dip_threshold ≥ 0 (got {}), spike_factor > 1 (got {}), spike_window ≥ 5 (got {})",
                self.dip_threshold, self.spike_factor, self.spike_window
            ));
        }
        fn or<T: Clone>(v: &[T], d: T) -> Vec<T> {
            if v.is_empty() {
                vec![d]
            } else {
                v.to_vec()
            }
        }
        let methods = or(&self.methods, base.method);
        let batches = or(&self.batch_sizes, base.schedule.batch_size);
        let seeds = or(&self.seeds, base.seed);
        let mut runs = Vec::new();
        for &method in &methods {
            for &batch_size in &batches {
                for &seed in &seeds {
                    for &base_lr in &self.base_lrs {
                        for &patch_embed in &self.patch_embed {
                            let name = format!(
                                "{method}-b{batch_size}-lr{}-{patch_embed}-s{seed}",
                                format_lr(base_lr)
                            );
                            let config = base
                                .clone()
                                .with_method(method)
                                .with_batch_size(batch_size)
                                .with_seed(seed)
                                .with_base_lr(base_lr)
                                .with_freeze_patch_embed(patch_embed == PatchEmbed::Frozen)
                                .with_dip_threshold(Some(self.dip_threshold))
                                .with_spike_factor(self.spike_factor)
                                .with_spike_window(self.spike_window);
                            config.validate().map_err(|e| format!("run {name}: {e}"))?;
                            if patch_embed == PatchEmbed::Frozen && !has_linear_projection(&config)
                            {
                                return Err(format!(
                                    "run {name}: a frozen patch projection needs a ViT with a linear patch projection; the preset trains {}{}",
                                    config.model.arch,
                                    if config.model.arch.starts_with("vit_conv") {
                                        " (a ConvStem, which is always trained)"
                                    } else {
                                        ""
                                    }
                                ));
                            }
                            runs.push(StudyRun {
                                name,
                                method,
                                batch_size,
                                base_lr,
                                patch_embed,
                                seed,
                                config,
                            });
                        }
                    }
                }
            }
        }
        if runs
            .iter()
            .any(|r| runs.iter().filter(|s| s.name == r.name).count() > 1)
        {
            return Err("the grid repeats a value (two runs would share a name)".into());
        }
        Ok(runs)
    }
}

/// Whether the run's backbone is a ViT with a linear patch projection, the one part the
/// paper's fix freezes.
fn has_linear_projection(config: &PretrainConfig) -> bool {
    matches!(
        config.model_config().map(|m| m.backbone),
        Ok(moco_models::BackboneConfig::Vit(v)) if !v.conv_stem
    )
}

/// A learning rate in a run name: `1.5e-4`, `3e-3`.
pub fn format_lr(lr: f64) -> String {
    format!("{lr:e}")
}

/// The recorded end of a run, if it has one.
pub fn run_status(run_dir: &Path) -> Option<RunStatus> {
    let text = std::fs::read_to_string(run_dir.join("study_status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

pub(crate) fn write_status(run_dir: &Path, status: &RunStatus) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(status).expect("status");
    moco_models::write_atomic(&run_dir.join("study_status.json"), text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_studies_parse_and_expand() {
        let cpu = StudyConfig::parse(CPU_STUDY, "cpu").unwrap();
        let runs = cpu.runs().unwrap();
        assert_eq!(runs.len(), cpu.base_lrs.len() * 2);
        assert!(runs[0].name.ends_with("-learned-s0"), "{}", runs[0].name);
        assert!(
            !runs[0].config.model.freeze_patch_embed && runs[1].config.model.freeze_patch_embed
        );
        let gpu = StudyConfig::parse(GPU_STUDY, "gpu").unwrap();
        assert!(gpu.runs().unwrap().len() >= 4);
        let seeds = BuiltinStudy::CpuSeeds.config();
        assert_eq!(seeds.runs().unwrap().len(), 2 * 2 * 2 * 3);
        assert_eq!(seeds.preset, cpu.preset);
        assert_eq!(
            seeds.overrides, cpu.overrides,
            "the seeded study repeats the CPU study's runs"
        );
        for b in BuiltinStudy::ALL {
            assert_eq!(b.name().parse::<BuiltinStudy>(), Ok(b));
            assert!(!b.config().runs().unwrap().is_empty());
        }
        assert!("seeds"
            .parse::<BuiltinStudy>()
            .unwrap_err()
            .contains("cpu-seeds"));
        assert_eq!(format_lr(1.5e-4), "1.5e-4");
        assert_eq!(format_lr(3e-3), "3e-3");
    }

    #[test]
    fn bad_studies_are_refused_with_the_reason() {
        let mut s = StudyConfig::parse(CPU_STUDY, "cpu").unwrap();
        s.overrides.insert("stepz".into(), Value::from(3));
        let e = s.runs().unwrap_err();
        assert!(e.contains("unknown field 'stepz'"), "{e}");
        let mut s = StudyConfig::parse(CPU_STUDY, "cpu").unwrap();
        s.base_lrs = vec![1e-3, -1.0];
        assert!(s.runs().unwrap_err().contains("-1"));
        let mut s = StudyConfig::parse(CPU_STUDY, "cpu").unwrap();
        s.base_lrs = vec![1e-3, 1e-3];
        assert!(s.runs().unwrap_err().contains("repeats"));
        let e = StudyConfig::parse(r#"{"name": "x", "preset": "fmnist-vit"}"#, "s.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.json") && e.contains("base_lrs"), "{e}");
    }
}
