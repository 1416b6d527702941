//! Whether an accelerator of a compiled-in backend is usable on this machine, asked without
//! crashing: CUDA by running one small kernel (which needs the driver and the runtime
//! compiler), wgpu by listing the adapters of its graphics API.

/// A usable device, described for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// What the device is (GPU or adapter name, driver).
    pub description: String,
}

/// Runs `f`, turning a panic into its message without printing it (the backends panic when a
/// driver or library is missing). A backend that starts its device on a thread of its own
/// fails there first and then here with a closed channel: the first panic of any thread during
/// the call is the reason given.
#[allow(dead_code)]
fn quietly<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, String> {
    use std::sync::{Arc, Mutex};
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = Arc::clone(&first);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get_or_insert_with(|| panic_message(info.payload()));
    }));
    let result = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        let first = first.lock().unwrap_or_else(|e| e.into_inner()).take();
        first.unwrap_or_else(|| panic_message(payload.as_ref()))
    })
}

#[allow(dead_code)]
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the backend failed to start".to_string())
}

/// Sums a small tensor on `device`: a kernel is compiled and run, so the driver, the runtime
/// compiler and the device all work.
#[allow(dead_code)]
fn run_one_kernel(device: &burn::prelude::Device) -> Result<f32, String> {
    use burn::prelude::*;
    Tensor::<1>::ones([8], device)
        .sum()
        .try_into_scalar::<f32>()
        .map_err(|e| format!("{e:?}"))
}

/// CUDA device `index`, if the driver, NVRTC and the device answer.
#[cfg(feature = "cuda")]
pub fn cuda(index: usize) -> Result<Found, String> {
    let (driver, nvrtc) = if cfg!(windows) {
        ("nvcuda.dll", "nvrtc64_*.dll")
    } else {
        ("libcuda.so.1", "libnvrtc.so")
    };
    // SAFETY: each call loads a shared library by name and unloads it; loading runs the
    // library's initialisers, as the backend itself would.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(format!(
            "no CUDA driver ({driver} not found; it comes with NVIDIA's driver)"
        ));
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(format!(
            "no NVRTC, CUDA's runtime compiler ({nvrtc} not found; it comes with the CUDA \
             toolkit, or alone as the cuda-nvrtc package)"
        ));
    }
    let sum = quietly(|| run_one_kernel(&burn::prelude::Device::cuda(index)))??;
    if sum != 8.0 {
        return Err(format!(
            "a test kernel on cuda:{index} returned {sum}, not 8"
        ));
    }
    Ok(Found {
        description: format!("CUDA device {index}"),
    })
}

/// The graphics APIs the wgpu backend runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphicsApi {
    /// What the backend picks by itself: Metal on macOS, Vulkan elsewhere.
    Auto,
    /// Vulkan.
    Vulkan,
    /// Metal.
    Metal,
}

/// Which adapter of a graphics API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adapter {
    /// The backend's own pick (high-performance preference; may be a software adapter).
    Default,
    /// The n-th discrete GPU.
    Discrete(usize),
    /// The n-th integrated GPU.
    Integrated(usize),
}

#[cfg(feature = "wgpu")]
mod wgpu_adapters {
    use super::{Adapter, Found, GraphicsApi};

    fn backend(api: GraphicsApi) -> wgpu::Backends {
        match api {
            GraphicsApi::Vulkan => wgpu::Backends::VULKAN,
            GraphicsApi::Metal => wgpu::Backends::METAL,
            GraphicsApi::Auto if cfg!(target_os = "macos") => wgpu::Backends::METAL,
            GraphicsApi::Auto => wgpu::Backends::VULKAN,
        }
    }

    /// Polls a future that is ready at once on native platforms.
    fn ready<F: std::future::Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::yield_now();
        }
    }

    fn describe(info: &wgpu::AdapterInfo) -> String {
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete GPU",
            wgpu::DeviceType::IntegratedGpu => "integrated GPU",
            wgpu::DeviceType::VirtualGpu => "virtual GPU",
            wgpu::DeviceType::Cpu => "software adapter on the CPU",
            wgpu::DeviceType::Other => "adapter",
        };
        let driver = if info.driver.is_empty() {
            String::new()
        } else {
            format!(", {} {}", info.driver, info.driver_info)
        };
        format!("{} ({kind}, {:?}{driver})", info.name, info.backend)
    }

    fn adapters(api: GraphicsApi) -> Vec<wgpu::AdapterInfo> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: backend(api),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        ready(instance.enumerate_adapters(backend(api)))
            .iter()
            .map(|a| a.get_info())
            .collect()
    }

    /// The first discrete, else integrated, GPU of `api`: what `--device auto` takes. A
    /// software adapter (lavapipe, llvmpipe) is never chosen automatically.
    pub fn accelerator(api: GraphicsApi) -> Result<(Adapter, Found), String> {
        let all = adapters(api);
        for (wanted, make) in [
            (
                wgpu::DeviceType::DiscreteGpu,
                Adapter::Discrete as fn(usize) -> Adapter,
            ),
            (wgpu::DeviceType::IntegratedGpu, Adapter::Integrated),
        ] {
            if let Some(info) = all.iter().find(|i| i.device_type == wanted) {
                let found = Found {
                    description: describe(info),
                };
                return Ok((make(0), found));
            }
        }
        Err(match all.as_slice() {
            [] => "no adapter found (is a Vulkan or Metal driver installed?)".to_string(),
            some => format!(
                "only {} (not chosen automatically; name the device to use it)",
                some.iter().map(describe).collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// The adapter `adapter` of `api`, as the backend will pick it.
    pub fn adapter(api: GraphicsApi, adapter: Adapter) -> Result<Found, String> {
        let all = adapters(api);
        let pick =
            |ty: wgpu::DeviceType, n: usize| all.iter().filter(|i| i.device_type == ty).nth(n);
        let info = match adapter {
            Adapter::Discrete(n) => pick(wgpu::DeviceType::DiscreteGpu, n),
            Adapter::Integrated(n) => pick(wgpu::DeviceType::IntegratedGpu, n),
            // The backend asks for a high-performance adapter: discrete, integrated, then any.
            Adapter::Default => pick(wgpu::DeviceType::DiscreteGpu, 0)
                .or_else(|| pick(wgpu::DeviceType::IntegratedGpu, 0))
                .or_else(|| all.first()),
        };
        info.map(|info| Found {
            description: describe(info),
        })
        .ok_or_else(|| match all.as_slice() {
            [] => "no adapter found (is a Vulkan or Metal driver installed?)".to_string(),
            some => format!(
                "no such adapter; there are: {}",
                some.iter().map(describe).collect::<Vec<_>>().join(", ")
            ),
        })
    }
}

#[cfg(feature = "wgpu")]
pub use wgpu_adapters::{accelerator as wgpu_accelerator, adapter as wgpu_adapter};

#[cfg(test)]
mod tests {
    use super::quietly;

    #[test]
    fn the_reason_is_the_first_panic_of_any_thread() {
        let failed: Result<(), String> = quietly(|| {
            let _ = std::thread::spawn(|| panic!("no driver")).join();
            panic!("the device's channel closed");
        });
        assert_eq!(failed.unwrap_err(), "no driver");
        assert_eq!(quietly(|| 3), Ok(3));
        let failed: Result<(), String> = quietly(|| panic!("alone"));
        assert_eq!(failed.unwrap_err(), "alone");
    }
}
