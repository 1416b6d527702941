//! The study's grid: every combination of the values of its axes (any configuration key:
//! learning rate, patch projection, batch size, depth, width, seed, ...), each a pretraining
//! configuration and a run directory, and the recorded end of each run.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::keys::KEYS;
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
/// Is the instability tied to depth? The CPU study's ViT with 2, 4 and 8 blocks (width 128)
/// at the two unstable rates, learned vs frozen, three seeds: 36 runs.
pub const CPU_DEPTH_STUDY: &str = include_str!("../../studies/fmnist-vit-depth.json");
/// Does a narrower ViT stay unstable? Width 64, 128 and 256 (depth 4), as the depth study.
pub const CPU_WIDTH_STUDY: &str = include_str!("../../studies/fmnist-vit-width.json");
/// The batch size's own effect: batches 64, 128 and 256 at the same peak learning rates
/// (1.5e-2 and 5e-2, those of base lr 3e-2 and 1e-1 at batch 128), as the depth study.
pub const CPU_BATCH_STUDY: &str = include_str!("../../studies/fmnist-vit-batch.json");

/// The studies that ship with the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinStudy {
    /// [`CPU_STUDY`].
    Cpu,
    /// [`CPU_SEEDS_STUDY`].
    CpuSeeds,
    /// [`CPU_DEPTH_STUDY`].
    CpuDepth,
    /// [`CPU_WIDTH_STUDY`].
    CpuWidth,
    /// [`CPU_BATCH_STUDY`].
    CpuBatch,
    /// [`GPU_STUDY`].
    Gpu,
}

impl BuiltinStudy {
    /// Every built-in study.
    pub const ALL: [BuiltinStudy; 6] = [
        Self::Cpu,
        Self::CpuSeeds,
        Self::CpuDepth,
        Self::CpuWidth,
        Self::CpuBatch,
        Self::Gpu,
    ];

    /// Its name on the command line (`cpu`, `cpu-seeds`, `cpu-depth`, `cpu-width`,
    /// `cpu-batch`, `gpu`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::CpuSeeds => "cpu-seeds",
            Self::CpuDepth => "cpu-depth",
            Self::CpuWidth => "cpu-width",
            Self::CpuBatch => "cpu-batch",
            Self::Gpu => "gpu",
        }
    }

    /// The study.
    pub fn config(self) -> StudyConfig {
        let text = match self {
            Self::Cpu => CPU_STUDY,
            Self::CpuSeeds => CPU_SEEDS_STUDY,
            Self::CpuDepth => CPU_DEPTH_STUDY,
            Self::CpuWidth => CPU_WIDTH_STUDY,
            Self::CpuBatch => CPU_BATCH_STUDY,
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

/// One axis of the grid: a [`PretrainConfig`] key (flat, `depth`, or by its place,
/// `model.depth`) and the values it takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// The key as the study file writes it.
    pub key: String,
    /// Its values, in the order they run.
    pub values: Vec<Value>,
}

impl Axis {
    /// An axis of `key` over `values`.
    pub fn new(key: &str, values: impl IntoIterator<Item = impl Into<Value>>) -> Self {
        Axis {
            key: key.into(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// The key's flat name (`model.depth` → `depth`), or `None` for an unknown key.
    pub fn field(&self) -> Option<&'static str> {
        field_of(&self.key)
    }
}

/// The flat name of a configuration key given flat or by its place.
pub fn field_of(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .find(|(flat, place)| *flat == key || *place == key)
        .map(|(flat, _)| *flat)
}

/// A study: a base configuration and the axes of the grid (every combination is one run).
///
/// The file gives the axes as `"axes": {"base_lr": [3e-2, 1e-1], "model.depth": [2, 4, 8]}`
/// (any configuration key, first the outermost). Files of the first format, with the lists
/// `base_lrs`, `patch_embed`, `batch_sizes`, `methods` and `seeds`, load as the axes
/// `method`, `batch_size`, `base_lr`, `freeze_patch_embed` and `seed`, with the run names
/// they had.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StudyFile", into = "StudyFile")]
pub struct StudyConfig {
    /// Name shown in the report.
    pub name: String,
    /// Training preset every run starts from (see [`crate::TRAIN_PRESETS`]).
    pub preset: String,
    /// Fields of [`PretrainConfig`] set on top of the preset for every run (`steps`,
    /// `knn_every`, `data`, ...).
    pub overrides: serde_json::Map<String, Value>,
    /// The axes, first the outermost. The seed's axis always runs outermost (the grid's
    /// first seed finishes first) and its value ends every run name.
    pub axes: Vec<Axis>,
    /// A kNN top-1 drop of more than this many points between two evaluations is a dip.
    pub dip_threshold: f64,
    /// A layer's gradient norm over this multiple of its running median is a spike.
    pub spike_factor: f64,
    /// Steps in that running median.
    pub spike_window: usize,
    /// A last-layer spike at most this many steps after a first-layer spike counts as its
    /// echo; the cross-correlation lag and a dip's lead time are looked for within it too.
    pub lag_window: u64,
}

/// A study file as written: the axes, or the lists of the first format.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudyFile {
    name: String,
    preset: String,
    #[serde(default)]
    overrides: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "AxesMap::is_empty")]
    axes: AxesMap,
    #[serde(default, skip_serializing)]
    base_lrs: Option<Vec<f64>>,
    #[serde(default, skip_serializing)]
    patch_embed: Option<Vec<PatchEmbed>>,
    #[serde(default, skip_serializing)]
    batch_sizes: Option<Vec<usize>>,
    #[serde(default, skip_serializing)]
    methods: Option<Vec<Method>>,
    #[serde(default, skip_serializing)]
    seeds: Option<Vec<u64>>,
    #[serde(default = "default_dip_threshold")]
    dip_threshold: f64,
    #[serde(default = "default_spike_factor")]
    spike_factor: f64,
    #[serde(default = "default_spike_window")]
    spike_window: usize,
    #[serde(default = "default_lag_window")]
    lag_window: u64,
}

/// The axes as a JSON object whose order is kept.
#[derive(Clone, Debug, Default)]
struct AxesMap(Vec<Axis>);

impl AxesMap {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for AxesMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for axis in &self.0 {
            map.serialize_entry(&axis.key, &axis.values)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for AxesMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AxesMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of configuration keys and their lists of values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<AxesMap, A::Error> {
                let mut axes = Vec::new();
                while let Some((key, values)) = m.next_entry::<String, Vec<Value>>()? {
                    axes.push(Axis { key, values });
                }
                Ok(AxesMap(axes))
            }
        }
        d.deserialize_map(Visitor)
    }
}

impl TryFrom<StudyFile> for StudyConfig {
    type Error = String;
    fn try_from(mut f: StudyFile) -> Result<Self, String> {
        let legacy = f.base_lrs.is_some()
            || f.patch_embed.is_some()
            || f.batch_sizes.is_some()
            || f.methods.is_some()
            || f.seeds.is_some();
        let axes = match (legacy, f.axes.is_empty()) {
            (true, false) => {
                return Err(
                    "give the grid as `axes` or as the lists base_lrs, patch_embed, batch_sizes, methods, seeds, not both"
                        .into(),
                )
            }
            (true, true) => legacy_axes(&mut f)?,
            (false, _) => std::mem::take(&mut f.axes.0),
        };
        Ok(StudyConfig {
            name: f.name,
            preset: f.preset,
            overrides: f.overrides,
            axes,
            dip_threshold: f.dip_threshold,
            spike_factor: f.spike_factor,
            spike_window: f.spike_window,
            lag_window: f.lag_window,
        })
    }
}

impl From<StudyConfig> for StudyFile {
    fn from(c: StudyConfig) -> Self {
        StudyFile {
            name: c.name,
            preset: c.preset,
            overrides: c.overrides,
            axes: AxesMap(c.axes),
            base_lrs: None,
            patch_embed: None,
            batch_sizes: None,
            methods: None,
            seeds: None,
            dip_threshold: c.dip_threshold,
            spike_factor: c.spike_factor,
            spike_window: c.spike_window,
            lag_window: c.lag_window,
        }
    }
}

/// The first format's lists as axes: method, batch size, base lr, patch projection, seed (an
/// empty or absent list takes the value of the preset with the overrides, as it did, and an
/// override of it moves into the axis), which names the runs as they were named
/// (`mocov3-b128-lr3e-2-learned-s0`).
fn legacy_axes(f: &mut StudyFile) -> Result<Vec<Axis>, String> {
    let mut base = PretrainConfig::preset(&f.preset)?;
    for (key, v) in &f.overrides {
        base.set(key, v.clone())
            .map_err(|e| format!("overrides: {e}"))?;
    }
    // The preset's value, or the override's, which the axis then carries.
    for field in ["method", "batch_size", "seed"] {
        f.overrides.retain(|k, _| field_of(k) != Some(field));
    }
    fn or<T: Clone + Into<Value>>(v: &Option<Vec<T>>, base: T) -> Vec<Value> {
        match v {
            Some(v) if !v.is_empty() => v.iter().cloned().map(Into::into).collect(),
            _ => vec![base.into()],
        }
    }
    let lrs = f.base_lrs.clone().unwrap_or_default();
    let patch = f
        .patch_embed
        .clone()
        .unwrap_or_else(|| vec![PatchEmbed::Learned, PatchEmbed::Frozen]);
    if lrs.is_empty() || patch.is_empty() {
        return Err("base_lrs and patch_embed need at least one value each".into());
    }
    let methods = f
        .methods
        .as_ref()
        .map(|v| v.iter().map(|m| m.to_string()).collect());
    Ok(vec![
        Axis::new("method", or(&methods, base.method.to_string())),
        Axis::new("batch_size", or(&f.batch_sizes, base.schedule.batch_size)),
        Axis::new("base_lr", lrs),
        Axis::new(FREEZE, patch.iter().map(|p| *p == PatchEmbed::Frozen)),
        Axis::new(SEED, or(&f.seeds, base.seed)),
    ])
}

/// One run of the grid.
#[derive(Clone, Debug, PartialEq)]
pub struct StudyRun {
    /// Directory name under `runs/`, e.g. `mocov3-b128-lr1e-2-learned-s0` or
    /// `lr3e-2-depth8-frozen-s1`.
    pub name: String,
    /// This run's value of every axis (flat key, value), in the study's order.
    pub axes: Vec<(String, Value)>,
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

/// The flat key of the seed's axis.
pub const SEED: &str = "seed";
/// The flat key of the patch projection's axis (learned vs frozen).
pub const FREEZE: &str = "freeze_patch_embed";

/// A run name's part for one axis value: `mocov3`, `b128`, `lr3e-2`, `frozen`, `s0`, and
/// `depth8`, `embed_dim256`, `peak_lr5e-2` for the other keys.
pub fn name_part(field: &str, value: &Value) -> String {
    let text: String = show_value(value)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    match (field, value) {
        ("method", _) => text,
        ("batch_size", _) => format!("b{text}"),
        ("base_lr", _) => format!("lr{text}"),
        (FREEZE, Value::Bool(true)) => "frozen".into(),
        (FREEZE, Value::Bool(false)) => "learned".into(),
        (SEED, _) => format!("s{text}"),
        (f, _) => format!("{f}{text}"),
    }
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

    /// The axis of the flat key `field`, if the grid has one.
    pub fn axis(&self, field: &str) -> Option<&Axis> {
        self.axes.iter().find(|a| a.field() == Some(field))
    }

    /// The axes that make a cell: all but the seed and the patch projection (flat keys).
    pub fn cell_keys(&self) -> Vec<String> {
        self.axes
            .iter()
            .filter_map(|a| a.field())
            .filter(|f| *f != SEED && *f != FREEZE)
            .map(String::from)
            .collect()
    }

    /// The seeds of the grid (the base configuration's when it has no seed axis).
    pub fn seeds(&self) -> Vec<Value> {
        match self.axis(SEED) {
            Some(a) => a.values.clone(),
            None => vec![self.base().map(|c| c.seed).unwrap_or_default().into()],
        }
    }

    /// Every run of the grid, in the order they run: seed by seed (the first seed's runs of
    /// every cell first), then by the axes in the study's order, the last varying fastest.
    pub fn runs(&self) -> Result<Vec<StudyRun>, String> {
        let base = self.base()?;
        self.check_axes()?;
        if !(self.dip_threshold >= 0.0 && self.spike_factor > 1.0 && self.spike_window >= 5) {
            return Err(format!(
                "need dip_threshold ≥ 0 (got {}), spike_factor > 1 (got {}), spike_window ≥ 5 (got {})",
                self.dip_threshold, self.spike_factor, self.spike_window
            ));
        }
        // Every combination of the other axes, the first outermost and the last fastest.
        let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
        for axis in self.axes.iter().filter(|a| a.field() != Some(SEED)) {
            let field = axis.field().unwrap_or_default();
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    axis.values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((field.to_string(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        let mut runs = Vec::new();
        for seed in self.seeds() {
            for combo in &combos {
                let mut values = combo.clone();
                values.push((SEED.to_string(), seed.clone()));
                runs.push(self.run(&base, values)?);
            }
        }
        if let Some(r) = runs
            .iter()
            .find(|r| runs.iter().filter(|s| s.name == r.name).count() > 1)
        {
            return Err(format!(
                "the grid repeats a value (two runs would be named {})",
                r.name
            ));
        }
        Ok(runs)
    }

    /// Every axis names a known key once, with values, and no override sets it too.
    fn check_axes(&self) -> Result<(), String> {
        if self.axes.is_empty() {
            return Err(
                "the study has no axes: give them as `axes`, e.g. {\"base_lr\": [3e-2, 1e-1], \"seed\": [0, 1, 2]}"
                    .into(),
            );
        }
        let mut seen: Vec<&str> = Vec::new();
        for axis in &self.axes {
            let field = axis.field().ok_or_else(|| {
                format!(
                    "axes: unknown field '{}' (fields: {})",
                    axis.key,
                    KEYS.iter()
                        .map(|(flat, _)| *flat)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            if axis.values.is_empty() {
                return Err(format!("axes: '{}' has no values", axis.key));
            }
            if seen.contains(&field) {
                return Err(format!("axes: '{}' is given twice", axis.key));
            }
            seen.push(field);
            if let Some(o) = self.overrides.keys().find(|k| field_of(k) == Some(field)) {
                return Err(format!("'{o}' is both an override and an axis: keep one"));
            }
        }
        Ok(())
    }

    /// The run of one combination of axis values.
    fn run(&self, base: &PretrainConfig, values: Vec<(String, Value)>) -> Result<StudyRun, String> {
        let name = values
            .iter()
            .map(|(f, v)| name_part(f, v))
            .collect::<Vec<_>>()
            .join("-");
        let mut config = base
            .clone()
            .with_dip_threshold(Some(self.dip_threshold))
            .with_spike_factor(self.spike_factor)
            .with_spike_window(self.spike_window);
        for (field, value) in &values {
            config
                .set(field, value.clone())
                .map_err(|e| format!("axes: {e}"))?;
        }
        config.validate().map_err(|e| format!("run {name}: {e}"))?;
        if config.model.freeze_patch_embed && !has_linear_projection(&config) {
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
        Ok(StudyRun {
            name,
            axes: values,
            method: config.method,
            batch_size: config.schedule.batch_size,
            base_lr: config.optimizer.base_lr,
            patch_embed: if config.model.freeze_patch_embed {
                PatchEmbed::Frozen
            } else {
                PatchEmbed::Learned
            },
            seed: config.seed,
            config,
        })
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

/// An axis value in a name or a table: strings as they are, fractions as `3e-2`.
pub fn show_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => format_lr(n.as_f64().unwrap_or(f64::NAN)),
        Value::Null => "none".into(),
        v => v.to_string(),
    }
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
        assert_eq!(runs.len(), 4 * 2);
        assert_eq!(runs[0].name, "mocov3-b128-lr3e-3-learned-s0");
        assert_eq!(runs[1].name, "mocov3-b128-lr3e-3-frozen-s0");
        assert!(
            !runs[0].config.model.freeze_patch_embed && runs[1].config.model.freeze_patch_embed
        );
        let gpu = StudyConfig::parse(GPU_STUDY, "gpu").unwrap();
        assert!(gpu.runs().unwrap().len() >= 4);
        let seeds = BuiltinStudy::CpuSeeds.config();
        let runs = seeds.runs().unwrap();
        assert_eq!(runs.len(), 2 * 2 * 2 * 3);
        // The first seed's runs come first.
        assert!(runs[..8].iter().all(|r| r.seed == 0));
        assert!(runs.iter().any(|r| r.name == "mocov3-b64-lr1e-1-frozen-s2"));
        assert_eq!(seeds.preset, cpu.preset);
        assert_eq!(
            seeds.overrides, cpu.overrides,
            "the seeded study repeats the CPU study's runs"
        );
        for b in BuiltinStudy::ALL {
            assert_eq!(b.name().parse::<BuiltinStudy>(), Ok(b));
            assert!(!b.config().runs().unwrap().is_empty());
        }
        for b in [
            BuiltinStudy::CpuDepth,
            BuiltinStudy::CpuWidth,
            BuiltinStudy::CpuBatch,
        ] {
            let study = b.config();
            assert_eq!(study.runs().unwrap().len(), 36, "{}", b.name());
            assert_eq!(study.overrides, seeds.overrides, "{}", b.name());
        }
        let depth = BuiltinStudy::CpuDepth.config().runs().unwrap();
        assert_eq!(depth[0].name, "lr3e-2-depth2-learned-s0");
        assert_eq!(depth[5].config.model.depth, Some(8));
        let batch = BuiltinStudy::CpuBatch.config().runs().unwrap();
        for r in &batch {
            assert!([1.5e-2, 5e-2].contains(&r.config.peak_lr()), "{}", r.name);
        }
        assert_eq!(batch[2].name, "peak_lr1.5e-2-b128-learned-s0");
        assert!("seeds"
            .parse::<BuiltinStudy>()
            .unwrap_err()
            .contains("cpu-seeds"));
        assert_eq!(format_lr(1.5e-4), "1.5e-4");
        assert_eq!(format_lr(3e-3), "3e-3");
    }

    #[test]
    fn old_study_files_load_as_axes_and_keep_their_run_names() {
        let old = r#"{"name": "old", "preset": "fmnist-vit", "base_lrs": [1e-2, 1e-1],
                      "batch_sizes": [64], "seeds": [3, 4], "spike_window": 50}"#;
        let study = StudyConfig::parse(old, "old.json").unwrap();
        let keys: Vec<&str> = study.axes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "method",
                "batch_size",
                "base_lr",
                "freeze_patch_embed",
                "seed"
            ]
        );
        let names: Vec<String> = study.runs().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names.len(), 8);
        assert_eq!(names[0], "mocov3-b64-lr1e-2-learned-s3");
        assert_eq!(names[3], "mocov3-b64-lr1e-1-frozen-s3");
        assert_eq!(names[7], "mocov3-b64-lr1e-1-frozen-s4");
        // Written back, it is the new format, and reads as the same study.
        let text = serde_json::to_string(&study).unwrap();
        assert!(
            text.contains("\"axes\"") && !text.contains("base_lrs"),
            "{text}"
        );
        assert_eq!(StudyConfig::parse(&text, "new").unwrap(), study);
        assert_eq!(study.spike_window, 50);
    }

    #[test]
    fn any_configuration_key_is_an_axis() {
        let text = r#"{"name": "two keys", "preset": "fmnist-vit",
            "axes": {"model.embed_dim": [64, 96], "num_heads": [2, 4], "seed": [0, 1]}}"#;
        let study = StudyConfig::parse(text, "s.json").unwrap();
        let runs = study.runs().unwrap();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "embed_dim64-num_heads2-s0",
                "embed_dim64-num_heads4-s0",
                "embed_dim96-num_heads2-s0",
                "embed_dim96-num_heads4-s0",
                "embed_dim64-num_heads2-s1",
                "embed_dim64-num_heads4-s1",
                "embed_dim96-num_heads2-s1",
                "embed_dim96-num_heads4-s1",
            ]
        );
        assert_eq!(runs[2].config.model.embed_dim, Some(96));
        assert_eq!(runs[2].config.model.num_heads, Some(2));
        assert_eq!(runs[5].seed, 1);
        assert_eq!(study.cell_keys(), ["embed_dim", "num_heads"]);
        // Without a seed axis every run takes the preset's seed.
        let text = r#"{"name": "x", "preset": "fmnist-vit", "axes": {"depth": [2, 3]}}"#;
        let runs = StudyConfig::parse(text, "s.json").unwrap().runs().unwrap();
        assert_eq!(runs[1].name, "depth3-s0");
    }

    #[test]
    fn bad_studies_are_refused_with_the_reason() {
        let mut s = StudyConfig::parse(CPU_STUDY, "cpu").unwrap();
        s.overrides.insert("stepz".into(), Value::from(3));
        let e = s.runs().unwrap_err();
        assert!(e.contains("unknown field 'stepz'"), "{e}");
        let parse = |text: &str| StudyConfig::parse(text, "s.json").unwrap_err().to_string();
        let e = parse(r#"{"name": "x", "preset": "fmnist-vit", "base_lrs": [1e-3, -1]}"#);
        assert!(
            e.contains("base_lr must be a positive learning rate, got -1"),
            "{e}"
        );
        let e = parse(r#"{"name": "x", "preset": "fmnist-vit", "base_lrs": [1e-3, 1e-3]}"#);
        assert!(
            e.contains("repeats") && e.contains("mocov3-b128-lr1e-3-learned-s0"),
            "{e}"
        );
        let e = parse(r#"{"name": "x", "preset": "fmnist-vit"}"#);
        assert!(e.contains("s.json") && e.contains("no axes"), "{e}");
        let e = parse(r#"{"name": "x", "preset": "fmnist-vit", "axes": {"depht": [2]}}"#);
        assert!(e.contains("unknown field 'depht'"), "{e}");
        let e = parse(r#"{"name": "x", "preset": "fmnist-vit", "axes": {"depth": []}}"#);
        assert!(e.contains("'depth' has no values"), "{e}");
        let e = parse(
            r#"{"name": "x", "preset": "fmnist-vit", "axes": {"depth": [2], "model.depth": [4]}}"#,
        );
        assert!(e.contains("given twice"), "{e}");
        let e = parse(
            r#"{"name": "x", "preset": "fmnist-vit", "overrides": {"depth": 2}, "axes": {"model.depth": [4]}}"#,
        );
        assert!(e.contains("both an override and an axis"), "{e}");
        let e = parse(r#"{"name": "x", "preset": "fmnist-vit", "axes": {"depth": ["deep"]}}"#);
        assert!(e.contains("depth:"), "{e}");
        let e =
            parse(r#"{"name": "x", "preset": "fmnist-vit", "axes": {"depth": [2]}, "seeds": [1]}"#);
        assert!(e.contains("not both"), "{e}");
        let e = parse(r#"{"name": "x", "preset": "fmnist-vit", "axes": {"peak_lr": [0]}}"#);
        assert!(
            e.contains("peak_lr must be a positive learning rate"),
            "{e}"
        );
    }
}
