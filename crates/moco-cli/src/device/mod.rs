//! `--device` parsing, the automatic choice, and dispatch to the backends compiled into this
//! build.
//!
//! A [`BackendJob`] is run on the Burn device the user asked for. `auto` (the default) takes the first compiled-in backend with a real
//! accelerator (CUDA, then Metal / Vulkan through wgpu on a discrete or integrated GPU),
//! else the CPU. Asking for a backend that was not compiled in is an error naming the cargo
//! feature that enables it; asking for one whose driver is missing is an error saying why.

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use moco_models::Precision;

pub mod probe;

pub use probe::{Adapter, GraphicsApi};

/// A device named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The first compiled-in backend with a real accelerator, else the CPU.
    Auto,
    /// The pure-Rust CPU backend (`flex`).
    Cpu,
    /// An NVIDIA GPU by index (`cuda`, `cuda:1`).
    Cuda(usize),
    /// The portable GPU backend (`wgpu`, `wgpu:1` for the second discrete GPU,
    /// `wgpu:integrated`).
    Wgpu(Adapter),
    /// The wgpu backend on Vulkan.
    Vulkan(Adapter),
    /// The wgpu backend on Metal.
    Metal(Adapter),
    /// Burn's MLIR CPU backend (`cpu-mlir`).
    CpuMlir,
    /// Burn's older `ndarray` CPU backend, for comparison with `flex`.
    NdArray,
}

impl DeviceSpec {
    /// The cargo feature that compiles this backend in (`auto` needs none).
    pub fn feature(&self) -> &'static str {
        match self {
            DeviceSpec::Auto => "",
            DeviceSpec::Cpu => "flex",
            DeviceSpec::Cuda(_) => "cuda",
            DeviceSpec::Wgpu(_) => "wgpu",
            DeviceSpec::Vulkan(_) => "vulkan",
            DeviceSpec::Metal(_) => "metal",
            DeviceSpec::CpuMlir => "cpu",
            DeviceSpec::NdArray => "ndarray",
        }
    }

    /// Whether this build holds the backend.
    pub fn compiled_in(&self) -> bool {
        match self {
            DeviceSpec::Auto => true,
            DeviceSpec::Cpu => cfg!(feature = "flex"),
            DeviceSpec::Cuda(_) => cfg!(feature = "cuda"),
            DeviceSpec::Wgpu(_) => cfg!(feature = "wgpu"),
            DeviceSpec::Vulkan(_) => cfg!(feature = "vulkan"),
            DeviceSpec::Metal(_) => cfg!(feature = "metal"),
            DeviceSpec::CpuMlir => cfg!(feature = "cpu"),
            DeviceSpec::NdArray => cfg!(feature = "ndarray"),
        }
    }

    /// Whether this is a CPU backend's device.
    pub fn is_cpu(&self) -> bool {
        matches!(
            self,
            DeviceSpec::Cpu | DeviceSpec::CpuMlir | DeviceSpec::NdArray
        )
    }

    /// The backend family: devices of one family can share a data-parallel run.
    fn family(&self) -> &'static str {
        match self {
            DeviceSpec::Wgpu(_) | DeviceSpec::Vulkan(_) | DeviceSpec::Metal(_) => "wgpu",
            other => other.feature(),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let adapter = |a: &Adapter| match a {
            Adapter::Default => String::new(),
            Adapter::Discrete(i) => format!(":{i}"),
            Adapter::Integrated(i) => format!(":integrated:{i}"),
        };
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Wgpu(a) => write!(f, "wgpu{}", adapter(a)),
            DeviceSpec::Vulkan(a) => write!(f, "vulkan{}", adapter(a)),
            DeviceSpec::Metal(a) => write!(f, "metal{}", adapter(a)),
            DeviceSpec::CpuMlir => write!(f, "cpu-mlir"),
            DeviceSpec::NdArray => write!(f, "ndarray"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let unknown = || DeviceError::Unknown(s.to_string());
        let (name, rest) = match lower.split_once(':') {
            Some((n, r)) => (n, Some(r)),
            None => (lower.as_str(), None),
        };
        let index = |r: &str| r.parse::<usize>().map_err(|_| unknown());
        let adapter = |r: Option<&str>| -> Result<Adapter, DeviceError> {
            match r {
                None => Ok(Adapter::Default),
                Some("integrated") => Ok(Adapter::Integrated(0)),
                Some(r) => match r.strip_prefix("integrated:") {
                    Some(i) => Ok(Adapter::Integrated(index(i)?)),
                    None => Ok(Adapter::Discrete(index(r)?)),
                },
            }
        };
        Ok(match (name, rest) {
            ("auto", None) => DeviceSpec::Auto,
            ("cpu" | "flex", None) => DeviceSpec::Cpu,
            ("cuda" | "gpu", r) => DeviceSpec::Cuda(r.map(index).transpose()?.unwrap_or(0)),
            ("wgpu", r) => DeviceSpec::Wgpu(adapter(r)?),
            ("vulkan", r) => DeviceSpec::Vulkan(adapter(r)?),
            ("metal", r) => DeviceSpec::Metal(adapter(r)?),
            ("cpu-mlir", None) => DeviceSpec::CpuMlir,
            ("ndarray", None) => DeviceSpec::NdArray,
            _ => return Err(unknown()),
        })
    }
}

/// Device selection errors.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not a device name.
    #[error("unknown device '{0}': use auto, cpu, cuda[:N], wgpu[:N], wgpu:integrated, vulkan[:N], metal[:N], cpu-mlir or ndarray")]
    Unknown(String),
    /// Devices of different backends in one list.
    #[error("devices '{first}' and '{other}' belong to different backends: data parallelism needs one backend")]
    Mixed {
        /// The first device.
        first: String,
        /// The first device of another backend.
        other: String,
    },
    /// A backend this binary was built without.
    #[error("device '{spec}' needs the '{feature}' backend, which this build does not include: rebuild with `--features {feature}`")]
    NotCompiled {
        /// What was asked for.
        spec: String,
        /// The cargo feature to enable.
        feature: &'static str,
    },
    /// A compiled-in backend whose device does not work here.
    #[error("device '{spec}' cannot be used on this machine: {reason}")]
    Unusable {
        /// What was asked for.
        spec: String,
        /// What failed (driver missing, no such adapter, ...).
        reason: String,
    },
    /// `auto` found no backend at all.
    #[error("no usable device: {0}")]
    NoDevice(String),
}

/// A device this build can run on, found on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    /// The device (never [`DeviceSpec::Auto`]).
    pub spec: DeviceSpec,
    /// What it is: the GPU or adapter, or the CPU.
    pub description: String,
    /// Why `auto` did not take an accelerator that was compiled in, if it did not.
    pub fallback: Option<String>,
}

impl Selected {
    /// The first line every command prints: device, backend and precision.
    pub fn banner(&self, backend: &str, precision: Precision) -> String {
        let mut line = format!(
            "device: {} ({}) · backend: {backend} · precision: {precision}",
            self.spec, self.description
        );
        if let Some(why) = &self.fallback {
            line.push_str(&format!("\n  auto chose the CPU: {why}"));
        }
        line
    }
}

fn host_cpu() -> String {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("host CPU, {threads} threads")
}

/// Checks that the device named by `spec` is compiled in and works here; `auto` picks one.
pub fn select(spec: &DeviceSpec) -> Result<Selected, DeviceError> {
    if !spec.compiled_in() {
        return Err(DeviceError::NotCompiled {
            spec: spec.to_string(),
            feature: spec.feature(),
        });
    }
    let found = |description: String| Selected {
        spec: spec.clone(),
        description,
        fallback: None,
    };
    #[allow(unused_variables)]
    let unusable = |reason: String| DeviceError::Unusable {
        spec: spec.to_string(),
        reason,
    };
    #[allow(unreachable_patterns, unused_variables)]
    match spec {
        DeviceSpec::Auto => select_auto(),
        DeviceSpec::Cpu | DeviceSpec::CpuMlir | DeviceSpec::NdArray => Ok(found(host_cpu())),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(i) => probe::cuda(*i)
            .map(|f| found(f.description))
            .map_err(unusable),
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(a) | DeviceSpec::Vulkan(a) | DeviceSpec::Metal(a) => {
            probe::wgpu_adapter(graphics_api(spec), *a)
                .map(|f| found(f.description))
                .map_err(unusable)
        }
        _ => unreachable!("not compiled in: checked above"),
    }
}

/// The graphics API a wgpu device runs on.
#[allow(dead_code)]
fn graphics_api(spec: &DeviceSpec) -> GraphicsApi {
    match spec {
        DeviceSpec::Vulkan(_) => GraphicsApi::Vulkan,
        DeviceSpec::Metal(_) => GraphicsApi::Metal,
        _ => GraphicsApi::Auto,
    }
}

/// The accelerators `auto` tries, in order: each compiled-in GPU backend once.
fn accelerators() -> Vec<DeviceSpec> {
    let mut list = Vec::new();
    if cfg!(feature = "cuda") {
        list.push(DeviceSpec::Cuda(0));
    }
    if cfg!(feature = "metal") {
        list.push(DeviceSpec::Metal(Adapter::Default));
    } else if cfg!(feature = "vulkan") {
        list.push(DeviceSpec::Vulkan(Adapter::Default));
    } else if cfg!(feature = "wgpu") {
        list.push(DeviceSpec::Wgpu(Adapter::Default));
    }
    list
}

fn select_auto() -> Result<Selected, DeviceError> {
    let mut reasons = Vec::new();
    for candidate in accelerators() {
        let picked: Result<Selected, String> = match &candidate {
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu(_) | DeviceSpec::Vulkan(_) | DeviceSpec::Metal(_) => {
                let api = graphics_api(&candidate);
                probe::wgpu_accelerator(api).map(|(adapter, found)| Selected {
                    spec: match candidate {
                        DeviceSpec::Vulkan(_) => DeviceSpec::Vulkan(adapter),
                        DeviceSpec::Metal(_) => DeviceSpec::Metal(adapter),
                        _ => DeviceSpec::Wgpu(adapter),
                    },
                    description: found.description,
                    fallback: None,
                })
            }
            other => select(other).map_err(|e| match e {
                DeviceError::Unusable { reason, .. } => reason,
                e => e.to_string(),
            }),
        };
        match picked {
            Ok(selected) => return Ok(selected),
            Err(why) => reasons.push(format!("{}: {why}", candidate.family())),
        }
    }
    let fallback = (!reasons.is_empty()).then(|| reasons.join("; "));
    let cpu = [DeviceSpec::Cpu, DeviceSpec::NdArray, DeviceSpec::CpuMlir]
        .into_iter()
        .find(DeviceSpec::compiled_in)
        .ok_or_else(|| {
            DeviceError::NoDevice(format!(
                "{}; and no CPU backend is compiled in (features flex, ndarray, cpu)",
                fallback
                    .clone()
                    .unwrap_or_else(|| "no GPU backend is compiled in".into())
            ))
        })?;
    Ok(Selected {
        spec: cpu,
        description: host_cpu(),
        fallback,
    })
}

/// What `moco devices` prints: every backend of this build, whether its device works here,
/// and what `auto` takes.
pub fn describe_devices() -> String {
    let mut lines = Vec::new();
    let compiled: Vec<DeviceSpec> = [DeviceSpec::Cpu, DeviceSpec::NdArray, DeviceSpec::CpuMlir]
        .into_iter()
        .chain(accelerators())
        .filter(DeviceSpec::compiled_in)
        .collect();
    for spec in compiled {
        let line = match select(&spec) {
            Ok(s) => format!("  {:<10} {}", s.spec, s.description),
            Err(DeviceError::Unusable { reason, .. }) => {
                format!("  {:<10} not usable: {reason}", spec)
            }
            Err(e) => format!("  {:<10} {e}", spec),
        };
        lines.push(line);
    }
    let auto = match select(&DeviceSpec::Auto) {
        Ok(s) => format!("auto: {} ({})", s.spec, s.description),
        Err(e) => format!("auto: {e}"),
    };
    format!(
        "backends in this build (features: {}):\n{}\n{auto}",
        compiled_features().join(", "),
        lines.join("\n")
    )
}

/// The `--device` help: `auto` and the devices of the backends this build holds.
pub fn device_help() -> String {
    let names = [
        (DeviceSpec::Cpu, "cpu"),
        (DeviceSpec::Cuda(0), "cuda[:N]"),
        (
            DeviceSpec::Wgpu(Adapter::Default),
            "wgpu[:N], wgpu:integrated[:N]",
        ),
        (DeviceSpec::Vulkan(Adapter::Default), "vulkan[:N]"),
        (DeviceSpec::Metal(Adapter::Default), "metal[:N]"),
        (DeviceSpec::CpuMlir, "cpu-mlir"),
        (DeviceSpec::NdArray, "ndarray"),
    ];
    let here: Vec<&str> = names
        .iter()
        .filter(|(spec, _)| spec.compiled_in())
        .map(|(_, name)| *name)
        .collect();
    format!(
        "Device: auto (the first GPU backend of this build with a real accelerator, else the \
         CPU), or one of this build's: {}",
        here.join(", ")
    )
}

/// This machine, with the GPU of `selected` (none for a CPU device) and this build's
/// features: what result files record beside a speed or a time.
pub fn machine(selected: &Selected) -> moco_train::Machine {
    let gpu =
        (!selected.spec.is_cpu()).then(|| format!("{} ({})", selected.description, selected.spec));
    moco_train::Machine::here()
        .with_gpu(gpu)
        .with_features(&build_features())
}

/// The features of this build that matter to speed: the backends, `x86-v4`, `autotune` and
/// `mpi`.
pub fn build_features() -> Vec<&'static str> {
    let mut features = compiled_features();
    for (name, on) in [
        ("x86-v4", cfg!(feature = "x86-v4")),
        ("autotune", cfg!(feature = "autotune")),
        ("mpi", cfg!(feature = "mpi")),
    ] {
        if on {
            features.push(name);
        }
    }
    features
}

/// The backend features this binary was built with.
fn compiled_features() -> Vec<&'static str> {
    [
        ("flex", cfg!(feature = "flex")),
        ("ndarray", cfg!(feature = "ndarray")),
        ("cpu", cfg!(feature = "cpu")),
        ("cuda", cfg!(feature = "cuda")),
        ("wgpu", cfg!(feature = "wgpu")),
        ("vulkan", cfg!(feature = "vulkan")),
        ("metal", cfg!(feature = "metal")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect()
}

/// Work that can run on any backend.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs on `device`.
    fn run(self, device: Device) -> Self::Output;
}

/// Selects the device named by `spec`, prints the banner (device, backend, `precision`) on
/// standard error, and runs `job` there.
pub fn dispatch<J: BackendJob>(
    spec: &DeviceSpec,
    precision: Precision,
    job: J,
) -> Result<J::Output, DeviceError> {
    dispatch_selected(select(spec)?, precision, job)
}

/// [`dispatch`] on a device [`select`] has already chosen (its banner keeps why `auto` fell
/// back to the CPU).
pub fn dispatch_selected<J: BackendJob>(
    selected: Selected,
    precision: Precision,
    job: J,
) -> Result<J::Output, DeviceError> {
    struct Single<J>(J);
    impl<J: BackendJob> MultiDeviceJob for Single<J> {
        type Output = J::Output;
        fn run(self, mut devices: Vec<Device>) -> J::Output {
            self.0.run(devices.remove(0))
        }
    }
    on_backend(std::slice::from_ref(&selected), Single(job), precision)
}

/// Work that runs on several devices of one backend (data parallelism).
pub trait MultiDeviceJob {
    /// What the job returns.
    type Output;
    /// Runs on `devices` (at least one, of one backend).
    fn run(self, devices: Vec<Device>) -> Self::Output;
}

/// A comma-separated device list (`cuda:0,cuda:1`).
pub fn parse_devices(list: &str) -> Result<Vec<DeviceSpec>, DeviceError> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// Runs `job` on the devices named by `specs`, which must all belong to one backend, after
/// printing the banner of the first on standard error.
pub fn dispatch_many<J: MultiDeviceJob>(
    specs: &[DeviceSpec],
    precision: Precision,
    job: J,
) -> Result<J::Output, DeviceError> {
    let Some(first) = specs.first() else {
        return Err(DeviceError::Unknown(String::new()));
    };
    if specs.len() > 1 {
        if let Some(auto) = specs.iter().find(|s| **s == DeviceSpec::Auto) {
            return Err(DeviceError::Mixed {
                first: first.to_string(),
                other: auto.to_string(),
            });
        }
    }
    if let Some(other) = specs.iter().find(|s| s.family() != first.family()) {
        return Err(DeviceError::Mixed {
            first: first.to_string(),
            other: other.to_string(),
        });
    }
    let selected = specs.iter().map(select).collect::<Result<Vec<_>, _>>()?;
    on_backend(&selected, job, precision)
}

/// The Burn device of a wgpu adapter, on the graphics API `spec` names.
#[cfg(feature = "wgpu")]
fn wgpu_device(spec: &DeviceSpec) -> Device {
    let (DeviceSpec::Wgpu(a) | DeviceSpec::Vulkan(a) | DeviceSpec::Metal(a)) = spec else {
        unreachable!("a wgpu device")
    };
    let kind = match a {
        Adapter::Default => DeviceKind::DefaultDevice,
        Adapter::Discrete(i) => DeviceKind::DiscreteGpu(*i),
        Adapter::Integrated(i) => DeviceKind::IntegratedGpu(*i),
    };
    match spec {
        #[cfg(feature = "vulkan")]
        DeviceSpec::Vulkan(_) => Device::vulkan(kind),
        #[cfg(feature = "metal")]
        DeviceSpec::Metal(_) => Device::metal(kind),
        _ => Device::wgpu(kind),
    }
}

/// The Burn device of `spec` (compiled in: checked by [`select`]).
fn burn_device(spec: &DeviceSpec) -> Result<Device, DeviceError> {
    #[allow(unreachable_patterns)]
    Ok(match spec {
        #[cfg(feature = "flex")]
        DeviceSpec::Cpu => Device::flex(),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        DeviceSpec::NdArray => Device::ndarray(),
        #[cfg(feature = "cpu")]
        DeviceSpec::CpuMlir => Device::cpu(),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(i) => Device::cuda(*i),
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(_) | DeviceSpec::Vulkan(_) | DeviceSpec::Metal(_) => wgpu_device(spec),
        other => {
            return Err(DeviceError::NotCompiled {
                spec: other.to_string(),
                feature: other.feature(),
            })
        }
    })
}

/// The name of the backend that runs `spec`'s device.
fn backend_name(spec: &DeviceSpec) -> &'static str {
    match spec {
        DeviceSpec::Auto => "auto",
        DeviceSpec::Cpu => "flex",
        DeviceSpec::NdArray => "ndarray",
        DeviceSpec::CpuMlir => "cubecl cpu (MLIR)",
        DeviceSpec::Cuda(_) => "cubecl cuda",
        DeviceSpec::Wgpu(_) => "cubecl wgpu",
        DeviceSpec::Vulkan(_) => "cubecl wgpu (vulkan)",
        DeviceSpec::Metal(_) => "cubecl wgpu (metal)",
    }
}

/// Runs `job` on the devices of `selected` (one family, checked by the callers), printing the
/// banner of the first device.
fn on_backend<J: MultiDeviceJob>(
    selected: &[Selected],
    job: J,
    precision: Precision,
) -> Result<J::Output, DeviceError> {
    let devices = selected
        .iter()
        .map(|s| burn_device(&s.spec))
        .collect::<Result<Vec<_>, _>>()?;
    let first = &selected[0];
    eprintln!("{}", first.banner(backend_name(&first.spec), precision));
    Ok(job.run(devices))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        let parse = |s: &str| s.parse::<DeviceSpec>().unwrap();
        assert_eq!(parse("auto"), DeviceSpec::Auto);
        assert_eq!(parse("cpu"), DeviceSpec::Cpu);
        assert_eq!(parse("cuda"), DeviceSpec::Cuda(0));
        assert_eq!(parse("CUDA:1"), DeviceSpec::Cuda(1));
        assert_eq!(parse("wgpu"), DeviceSpec::Wgpu(Adapter::Default));
        assert_eq!(parse("vulkan:2"), DeviceSpec::Vulkan(Adapter::Discrete(2)));
        assert_eq!(
            parse("wgpu:integrated"),
            DeviceSpec::Wgpu(Adapter::Integrated(0))
        );
        assert_eq!(
            parse("metal:integrated:1"),
            DeviceSpec::Metal(Adapter::Integrated(1))
        );
        for spec in [
            "auto",
            "cpu",
            "cuda:1",
            "wgpu",
            "vulkan:2",
            "wgpu:integrated:1",
        ] {
            assert_eq!(
                parse(spec).to_string().parse::<DeviceSpec>().unwrap(),
                parse(spec)
            );
        }
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("cpu:1".parse::<DeviceSpec>().is_err());
        assert_eq!(
            parse_devices("cuda:0, cuda:1").unwrap(),
            vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)]
        );
    }

    struct Nop;
    impl MultiDeviceJob for Nop {
        type Output = usize;
        fn run(self, devices: Vec<Device>) -> usize {
            devices.len()
        }
    }

    #[test]
    fn device_lists_hold_one_backend() {
        let mixed = [DeviceSpec::Cpu, DeviceSpec::Cuda(0)];
        let err = dispatch_many(&mixed, Precision::F32, Nop)
            .unwrap_err()
            .to_string();
        assert!(err.contains("different backends"), "{err}");
        let with_auto = [DeviceSpec::Cpu, DeviceSpec::Auto];
        assert!(dispatch_many(&with_auto, Precision::F32, Nop).is_err());
    }

    #[cfg(feature = "flex")]
    #[test]
    fn cpu_runs_and_auto_never_fails_with_a_cpu_backend() {
        let cpus = [DeviceSpec::Cpu, DeviceSpec::Cpu];
        assert_eq!(dispatch_many(&cpus, Precision::F32, Nop).unwrap(), 2);
        let auto = select(&DeviceSpec::Auto).unwrap();
        assert_ne!(auto.spec, DeviceSpec::Auto);
        // A software adapter is never chosen automatically: without a GPU backend, or without
        // a discrete or integrated GPU, auto is the CPU, saying why when a GPU backend is built in.
        if accelerators().is_empty() {
            assert_eq!(auto.spec, DeviceSpec::Cpu);
            assert_eq!(auto.fallback, None);
        }
        if auto.spec == DeviceSpec::Cpu && !accelerators().is_empty() {
            assert!(auto.fallback.is_some());
        }
        let banner = auto.banner("flex", Precision::Bf16);
        assert!(banner.starts_with("device: "), "{banner}");
        assert!(banner.contains("precision: bf16"), "{banner}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_names_the_feature() {
        struct One;
        impl BackendJob for One {
            type Output = ();
            fn run(self, _: Device) {}
        }
        let err = dispatch(&DeviceSpec::Cuda(0), Precision::F32, One)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
