//! Which formulation of an operation a model runs, chosen once when the model is built.
//!
//! Every choice computes the same function; they differ in speed and memory on a backend.
//! [`Kernels::for_device`] gives the default: the host formulations of [`crate::cpu`] and
//! [`crate::gemm_conv`] and the fused operations of `moco_models::flex` on the CPU backends
//! (flex, ndarray), Burn's own (fused) kernels on the GPU backends, with the exact GELU
//! written with `erf`. A configuration can fix the choice instead (`VitConfig::gelu_kernel`,
//! `VitConfig::attention_kernel`, `VitConfig::layer_norm_kernel`, `ResNetConfig::conv_kernel`), e.g. to measure one
//! formulation against another.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// How the ViT's MLP computes the exact (erf) GELU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeluKernel {
    /// `x · Φ(x)` with `Φ(x) = (1 + erf(x/√2)) / 2` from Burn's `erf`: exact in value and
    /// gradient on every backend (Burn's `gelu` on the CubeCL backends differentiates the tanh
    /// approximation instead).
    Erf,
    /// One vectorised, multi-threaded pass over the values on the host ([`crate::cpu::gelu`]):
    /// for backends whose tensors live in host memory.
    HostPass,
}

/// How the ViT's multi-head self-attention runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKernel {
    /// Burn's operations: q, k and v from column blocks of the `qkv` weight, heads as strided
    /// views, softmax, batched products.
    Composed,
    /// One operation with its own backward on the flex backend (`moco_models::flex::attention`):
    /// q, k, v read in place from the `qkv` projection's output, the heads written into
    /// their output columns. Other backends (and bf16) run [`AttentionKernel::Composed`].
    Fused,
}

/// How the ViT's LayerNorms run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerNormKernel {
    /// Burn's LayerNorm (mean, variance, normalisation and affine as separate operations).
    Backend,
    /// One pass per row forward and backward on the flex backend
    /// (`moco_models::flex::layer_norm`); other backends (and bf16) run Burn's.
    Fused,
}

/// How the ResNet runs its convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvKernel {
    /// The backend's convolution on `[N, C, H, W]` maps.
    Backend,
    /// Channel-major maps, each convolution one matrix product ([`crate::gemm_conv`]).
    MatrixProduct,
    /// [`ConvKernel::MatrixProduct`] when the first stage sees at most this many positions
    /// (height × width), [`ConvKernel::Backend`] on larger maps, where the backend's
    /// convolution is as fast and the saved `im2col` matrices would double the memory.
    MatrixProductUpTo(usize),
}

impl ConvKernel {
    /// Whether a ResNet whose first stage sees `positions` positions runs channel-major
    /// matrix-product convolutions.
    pub fn matrix_product_at(self, positions: usize) -> bool {
        match self {
            ConvKernel::Backend => false,
            ConvKernel::MatrixProduct => true,
            ConvKernel::MatrixProductUpTo(max) => positions <= max,
        }
    }
}

/// The formulations a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernels {
    /// The ViT's GELU.
    pub gelu: GeluKernel,
    /// The ResNet's convolutions.
    pub conv: ConvKernel,
    /// The ViT's attention.
    pub attention: AttentionKernel,
    /// The ViT's LayerNorms.
    pub layer_norm: LayerNormKernel,
}

/// Largest first-stage map (positions) on which the CPU default uses matrix-product
/// convolutions: 16 × 16 (measured in docs/performance.md).
pub const CPU_MATRIX_CONV_MAX_POSITIONS: usize = 16 * 16;

impl Kernels {
    /// Burn's own kernels everywhere.
    pub const BACKEND: Kernels = Kernels {
        gelu: GeluKernel::Erf,
        conv: ConvKernel::Backend,
        attention: AttentionKernel::Composed,
        layer_norm: LayerNormKernel::Backend,
    };

    /// What the GPU backends run: Burn's kernels, the exact GELU from `erf`.
    pub const GPU: Kernels = Kernels {
        gelu: GeluKernel::Erf,
        conv: ConvKernel::Backend,
        attention: AttentionKernel::Composed,
        layer_norm: LayerNormKernel::Backend,
    };

    /// The host formulations of the CPU backends.
    pub const CPU: Kernels = Kernels {
        gelu: GeluKernel::HostPass,
        conv: ConvKernel::MatrixProductUpTo(CPU_MATRIX_CONV_MAX_POSITIONS),
        attention: AttentionKernel::Fused,
        layer_norm: LayerNormKernel::Fused,
    };

    /// The host formulations at every map size.
    pub const CPU_EVERYWHERE: Kernels = Kernels {
        gelu: GeluKernel::HostPass,
        conv: ConvKernel::MatrixProduct,
        attention: AttentionKernel::Fused,
        layer_norm: LayerNormKernel::Fused,
    };

    /// The default for `device`: [`Kernels::CPU`] on the CPU backends (flex, ndarray),
    /// [`Kernels::GPU`] elsewhere.
    pub fn for_device(device: &Device) -> Kernels {
        if is_host_backend(device) {
            Kernels::CPU
        } else {
            Kernels::GPU
        }
    }
}

/// Whether `device` is Burn's flex device (plain or under autodiff), where the fused
/// operations of `moco_models::flex` run (never without the `flex` feature).
pub fn flex_backend(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    return crate::flex::runs_fused(device);
    #[cfg(not(feature = "flex"))]
    return {
        let _ = device;
        false
    };
}

/// Whether `device` keeps its tensors in host memory and computes on the CPU (flex, ndarray),
/// where reading values back costs nothing.
pub fn is_host_backend(device: &Device) -> bool {
    let name = format!("{device:?}").to_ascii_lowercase();
    name.contains("flex") || name.contains("ndarray")
}

impl std::str::FromStr for GeluKernel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "erf" => Ok(GeluKernel::Erf),
            "host-pass" | "host" => Ok(GeluKernel::HostPass),
            _ => Err(format!("unknown GELU kernel '{s}': use erf or host-pass")),
        }
    }
}

impl std::str::FromStr for AttentionKernel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "composed" => Ok(AttentionKernel::Composed),
            "fused" => Ok(AttentionKernel::Fused),
            _ => Err(format!(
                "unknown attention kernel '{s}': use composed or fused"
            )),
        }
    }
}

impl std::str::FromStr for LayerNormKernel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "backend" => Ok(LayerNormKernel::Backend),
            "fused" => Ok(LayerNormKernel::Fused),
            _ => Err(format!(
                "unknown LayerNorm kernel '{s}': use backend or fused"
            )),
        }
    }
}

impl std::str::FromStr for ConvKernel {
    type Err = String;
    /// `backend`, `matrix-product`, or `matrix-product:N` (up to N first-stage positions).
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase().replace('_', "-");
        let err = || {
            format!(
                "unknown convolution kernel '{s}': use backend, matrix-product or matrix-product:N"
            )
        };
        match lower.split_once(':') {
            Some(("matrix-product", n)) => n
                .parse()
                .map(ConvKernel::MatrixProductUpTo)
                .map_err(|_| err()),
            None if lower == "backend" => Ok(ConvKernel::Backend),
            None if lower == "matrix-product" => Ok(ConvKernel::MatrixProduct),
            _ => Err(err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_names() {
        assert_eq!("erf".parse::<GeluKernel>(), Ok(GeluKernel::Erf));
        assert_eq!("host-pass".parse::<GeluKernel>(), Ok(GeluKernel::HostPass));
        assert_eq!("backend".parse::<ConvKernel>(), Ok(ConvKernel::Backend));
        assert_eq!(
            "matrix-product".parse::<ConvKernel>(),
            Ok(ConvKernel::MatrixProduct)
        );
        assert_eq!(
            "matrix-product:64".parse::<ConvKernel>(),
            Ok(ConvKernel::MatrixProductUpTo(64))
        );
        assert_eq!(
            "fused".parse::<AttentionKernel>(),
            Ok(AttentionKernel::Fused)
        );
        assert_eq!(
            "Composed".parse::<AttentionKernel>(),
            Ok(AttentionKernel::Composed)
        );
        assert!("flash".parse::<AttentionKernel>().is_err());
        assert_eq!(
            "fused".parse::<LayerNormKernel>(),
            Ok(LayerNormKernel::Fused)
        );
        assert_eq!(
            "backend".parse::<LayerNormKernel>(),
            Ok(LayerNormKernel::Backend)
        );
        assert!("gemm".parse::<ConvKernel>().is_err());
        assert!("matrix-product:x".parse::<ConvKernel>().is_err());
    }
}
