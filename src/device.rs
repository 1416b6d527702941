//! `--device` parsing and dispatch to the backends compiled into this build.
//!
//! Models are generic over Burn's `Backend`; a [`BackendJob`] is run on the concrete backend
//! the user asked for. Asking for one that was not compiled in is an error naming the cargo
//! feature that enables it.

use std::fmt;
use std::str::FromStr;

use burn::prelude::Backend;

/// A device named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The pure-Rust CPU backend (`flex`).
    Cpu,
    /// An NVIDIA GPU by index (`cuda`, `cuda:1`).
    Cuda(usize),
    /// An AMD GPU by index (`rocm`, `rocm:1`).
    Rocm(usize),
    /// The portable GPU backend on its best adapter (`wgpu`) or a discrete GPU by index.
    Wgpu(Option<usize>),
    /// The wgpu backend forced onto Vulkan.
    Vulkan(Option<usize>),
    /// The wgpu backend forced onto Metal.
    Metal(Option<usize>),
    /// Burn's MLIR CPU backend (`cpu-mlir`).
    CpuMlir,
    /// Burn's older `ndarray` CPU backend, for comparison with `flex`.
    NdArray,
}

impl DeviceSpec {
    /// The cargo feature that compiles this backend in.
    pub fn feature(&self) -> &'static str {
        match self {
            DeviceSpec::Cpu => "flex",
            DeviceSpec::Cuda(_) => "cuda",
            DeviceSpec::Rocm(_) => "rocm",
            DeviceSpec::Wgpu(_) => "wgpu",
            DeviceSpec::Vulkan(_) => "vulkan",
            DeviceSpec::Metal(_) => "metal",
            DeviceSpec::CpuMlir => "cpu",
            DeviceSpec::NdArray => "ndarray",
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idx = |o: &Option<usize>| o.map(|i| format!(":{i}")).unwrap_or_default();
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Rocm(i) => write!(f, "rocm:{i}"),
            DeviceSpec::Wgpu(i) => write!(f, "wgpu{}", idx(i)),
            DeviceSpec::Vulkan(i) => write!(f, "vulkan{}", idx(i)),
            DeviceSpec::Metal(i) => write!(f, "metal{}", idx(i)),
            DeviceSpec::CpuMlir => write!(f, "cpu-mlir"),
            DeviceSpec::NdArray => write!(f, "ndarray"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, index) = match lower.split_once(':') {
            Some((n, i)) => {
                let i = i
                    .parse::<usize>()
                    .map_err(|_| DeviceError::Unknown(s.to_string()))?;
                (n.to_string(), Some(i))
            }
            None => (lower, None),
        };
        Ok(match name.as_str() {
            "cpu" | "flex" if index.is_none() => DeviceSpec::Cpu,
            "cuda" | "gpu" => DeviceSpec::Cuda(index.unwrap_or(0)),
            "rocm" | "hip" => DeviceSpec::Rocm(index.unwrap_or(0)),
            "wgpu" => DeviceSpec::Wgpu(index),
            "vulkan" => DeviceSpec::Vulkan(index),
            "metal" => DeviceSpec::Metal(index),
            "cpu-mlir" if index.is_none() => DeviceSpec::CpuMlir,
            "ndarray" if index.is_none() => DeviceSpec::NdArray,
            _ => return Err(DeviceError::Unknown(s.to_string())),
        })
    }
}

/// Device selection errors.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not a device name.
    #[error("unknown device '{0}': use cpu, cuda[:N], rocm[:N], wgpu[:N], vulkan[:N], metal[:N], cpu-mlir or ndarray")]
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
}

/// Work that can run on any backend.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` and `device`.
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Runs `job` on the backend and device named by `spec`.
pub fn dispatch<J: BackendJob>(spec: &DeviceSpec, job: J) -> Result<J::Output, DeviceError> {
    let not_compiled = || DeviceError::NotCompiled {
        spec: spec.to_string(),
        feature: spec.feature(),
    };
    #[allow(unused_variables)]
    let job = job;
    match spec {
        DeviceSpec::Cpu => {
            #[cfg(feature = "flex")]
            return Ok(job.run::<burn::backend::Flex>(Default::default()));
            #[cfg(not(feature = "flex"))]
            return Err(not_compiled());
        }
        DeviceSpec::Cuda(_i) => {
            #[cfg(feature = "cuda")]
            return Ok(job.run::<burn::backend::Cuda>(burn::backend::cuda::CudaDevice::new(*_i)));
            #[cfg(not(feature = "cuda"))]
            return Err(not_compiled());
        }
        DeviceSpec::Rocm(_i) => {
            #[cfg(feature = "rocm")]
            return Ok(job.run::<burn::backend::Rocm>(burn::backend::rocm::RocmDevice::new(*_i)));
            #[cfg(not(feature = "rocm"))]
            return Err(not_compiled());
        }
        DeviceSpec::Wgpu(_i) | DeviceSpec::Vulkan(_i) | DeviceSpec::Metal(_i) => {
            let enabled = match spec {
                DeviceSpec::Vulkan(_) => cfg!(feature = "vulkan"),
                DeviceSpec::Metal(_) => cfg!(feature = "metal"),
                _ => cfg!(feature = "wgpu"),
            };
            if !enabled {
                return Err(not_compiled());
            }
            #[cfg(feature = "wgpu")]
            {
                use burn::backend::wgpu::WgpuDevice;
                let device = _i
                    .map(WgpuDevice::DiscreteGpu)
                    .unwrap_or(WgpuDevice::DefaultDevice);
                return Ok(job.run::<burn::backend::Wgpu>(device));
            }
            #[cfg(not(feature = "wgpu"))]
            return Err(not_compiled());
        }
        DeviceSpec::CpuMlir => {
            #[cfg(feature = "cpu")]
            return Ok(job.run::<burn::backend::Cpu>(Default::default()));
            #[cfg(not(feature = "cpu"))]
            return Err(not_compiled());
        }
        DeviceSpec::NdArray => {
            #[cfg(feature = "ndarray")]
            return Ok(job.run::<burn::backend::NdArray>(Default::default()));
            #[cfg(not(feature = "ndarray"))]
            return Err(not_compiled());
        }
    }
}

/// Work that runs on several devices of one backend (data parallelism).
pub trait MultiDeviceJob {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` with `devices` (at least one).
    fn run<B: Backend>(self, devices: Vec<B::Device>) -> Self::Output;
}

/// A comma-separated device list (`cuda:0,cuda:1`).
pub fn parse_devices(list: &str) -> Result<Vec<DeviceSpec>, DeviceError> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// Runs `job` on the devices named by `specs`, which must all belong to one backend.
pub fn dispatch_many<J: MultiDeviceJob>(
    specs: &[DeviceSpec],
    job: J,
) -> Result<J::Output, DeviceError> {
    let Some(first) = specs.first() else {
        return Err(DeviceError::Unknown(String::new()));
    };
    if let Some(other) = specs.iter().find(|s| s.feature() != first.feature()) {
        return Err(DeviceError::Mixed {
            first: first.to_string(),
            other: other.to_string(),
        });
    }
    #[allow(unused_variables)]
    let not_compiled = || DeviceError::NotCompiled {
        spec: first.to_string(),
        feature: first.feature(),
    };
    #[allow(unused_variables)]
    let job = job;
    match first {
        DeviceSpec::Cpu => {
            #[cfg(feature = "flex")]
            return Ok(job.run::<burn::backend::Flex>(vec![Default::default(); specs.len()]));
            #[cfg(not(feature = "flex"))]
            return Err(not_compiled());
        }
        DeviceSpec::Cuda(_) => {
            #[cfg(feature = "cuda")]
            return Ok(job.run::<burn::backend::Cuda>(
                specs
                    .iter()
                    .map(|s| match s {
                        DeviceSpec::Cuda(i) => burn::backend::cuda::CudaDevice::new(*i),
                        _ => unreachable!("checked above"),
                    })
                    .collect(),
            ));
            #[cfg(not(feature = "cuda"))]
            return Err(not_compiled());
        }
        DeviceSpec::Rocm(_) => {
            #[cfg(feature = "rocm")]
            return Ok(job.run::<burn::backend::Rocm>(
                specs
                    .iter()
                    .map(|s| match s {
                        DeviceSpec::Rocm(i) => burn::backend::rocm::RocmDevice::new(*i),
                        _ => unreachable!("checked above"),
                    })
                    .collect(),
            ));
            #[cfg(not(feature = "rocm"))]
            return Err(not_compiled());
        }
        DeviceSpec::Wgpu(_) | DeviceSpec::Vulkan(_) | DeviceSpec::Metal(_) => {
            #[cfg(feature = "wgpu")]
            {
                use burn::backend::wgpu::WgpuDevice;
                let devices = specs
                    .iter()
                    .map(|s| match s {
                        DeviceSpec::Wgpu(i) | DeviceSpec::Vulkan(i) | DeviceSpec::Metal(i) => i
                            .map(WgpuDevice::DiscreteGpu)
                            .unwrap_or(WgpuDevice::DefaultDevice),
                        _ => unreachable!("checked above"),
                    })
                    .collect();
                return Ok(job.run::<burn::backend::Wgpu>(devices));
            }
            #[cfg(not(feature = "wgpu"))]
            return Err(not_compiled());
        }
        DeviceSpec::CpuMlir => {
            #[cfg(feature = "cpu")]
            return Ok(job.run::<burn::backend::Cpu>(vec![Default::default(); specs.len()]));
            #[cfg(not(feature = "cpu"))]
            return Err(not_compiled());
        }
        DeviceSpec::NdArray => {
            #[cfg(feature = "ndarray")]
            return Ok(job.run::<burn::backend::NdArray>(vec![Default::default(); specs.len()]));
            #[cfg(not(feature = "ndarray"))]
            return Err(not_compiled());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("CUDA:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!(
            "wgpu".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Wgpu(None)
        );
        assert_eq!(
            "vulkan:2".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Vulkan(Some(2))
        );
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(
            parse_devices("cuda:0, cuda:1").unwrap(),
            vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)]
        );
        struct Nop;
        impl MultiDeviceJob for Nop {
            type Output = usize;
            fn run<B: Backend>(self, devices: Vec<B::Device>) -> usize {
                devices.len()
            }
        }
        let mixed = [DeviceSpec::Cpu, DeviceSpec::Cuda(0)];
        let err = dispatch_many(&mixed, Nop).unwrap_err().to_string();
        assert!(err.contains("different backends"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_names_the_feature() {
        struct Nop;
        impl BackendJob for Nop {
            type Output = ();
            fn run<B: Backend>(self, _: B::Device) {}
        }
        let err = dispatch(&DeviceSpec::Cuda(0), Nop).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
