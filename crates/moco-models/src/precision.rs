//! Mixed precision, as PyTorch's `torch.autocast`: inside [`autocast`], the backbones run their
//! matrix products and convolutions in half precision (bf16 or f16) while parameters stay f32
//! (each weight is cast on use, and the cast passes gradients back to the f32 parameter, so
//! the optimizer and its state work in f32). LayerNorm, BatchNorm and the attention softmax
//! compute in f32, and the backbone hands f32 features to the heads, so projector, predictor
//! and loss run in f32.

use std::cell::Cell;

use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use serde::{Deserialize, Serialize};

/// The precision of the backbone's forward and backward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bfloat16 products (f32 range, 8-bit mantissa): the usual choice on recent GPUs.
    Bf16,
    /// float16 products (needs care with range; no loss scaling is applied).
    F16,
}

impl Precision {
    /// The half dtype, `None` for f32.
    pub fn half(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }

    /// Whether `device` can compute in this precision.
    pub fn supported_on(self, device: &Device) -> bool {
        self.half()
            .is_none_or(|dt| device.supports_dtype(DType::from(dt)))
    }
}

impl Precision {
    /// Every precision, in the order `--help` lists them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            _ => Err(format!("unknown precision '{s}': use f32, bf16 or f16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

thread_local! {
    static AUTOCAST: Cell<Option<FloatDType>> = const { Cell::new(None) };
}

/// Runs `f` with the backbones computing in `precision` (on this thread), then restores the
/// previous setting, also when `f` panics.
pub fn autocast<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<FloatDType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            AUTOCAST.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(AUTOCAST.with(|c| c.replace(precision.half())));
    f()
}

/// The half dtype of the enclosing [`autocast`], if any.
pub fn compute_dtype() -> Option<FloatDType> {
    AUTOCAST.with(Cell::get)
}

/// `x` in the compute dtype (unchanged outside [`autocast`]).
pub fn to_compute<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match compute_dtype() {
        Some(dt) if x.dtype() != DType::from(dt) => x.cast(dt),
        _ => x,
    }
}

/// `x` in f32 (a no-op for f32 tensors).
pub fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() == DType::F32 {
        x
    } else {
        x.cast(FloatDType::F32)
    }
}

/// Runs `f` (a normalisation or softmax) on `x` in f32 and returns the result in the compute
/// dtype, as autocast runs such operations.
pub fn in_f32<const D: usize>(x: Tensor<D>, f: impl FnOnce(Tensor<D>) -> Tensor<D>) -> Tensor<D> {
    match compute_dtype() {
        None => f(x),
        Some(_) => to_compute(f(to_f32(x))),
    }
}

/// A linear layer in the compute dtype (its weights cast on use), on inputs of any rank.
///
/// Inputs of rank > 2 are flattened to `[rows, features]` first: one matrix product instead
/// of one per leading index, and a weight gradient from a single product instead of a
/// per-index stack of products summed afterwards.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    if D > 2 {
        let dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let y = linear(layer, x.reshape([rows, dims[D - 1]]));
        let mut out = dims;
        out[D - 1] = y.dims()[1];
        return y.reshape(out);
    }
    match compute_dtype() {
        None => {
            // The flex backend's fused linear layer (one output buffer, bias included).
            #[cfg(feature = "flex")]
            if let (Some(bias), 2) = (&layer.bias, D) {
                let mut dims = x.dims();
                let rows = x.reshape([dims[0], dims[1]]);
                let inputs = (rows, layer.weight.val(), bias.val());
                return match crate::flex::linear(inputs) {
                    Ok(y) => {
                        dims[1] = y.dims()[1];
                        y.reshape(dims)
                    }
                    Err((x, _, _)) => layer.forward(x.reshape(dims)),
                };
            }
            layer.forward(x)
        }
        Some(dt) => {
            initialise(&layer.weight);
            let mut cast = layer.clone();
            cast.weight = cast.weight.map(|w| w.cast(dt));
            cast.bias = cast.bias.map(|b| b.map(|b| b.cast(dt)));
            cast.forward(to_compute(x))
        }
    }
}

/// A convolution in the compute dtype (weights cast on use); with `frozen`, its weights are
/// detached so no gradient reaches them.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>, frozen: bool) -> Tensor<4> {
    let dt = compute_dtype();
    if !frozen && dt.is_none() {
        return conv.forward(x);
    }
    initialise(&conv.weight);
    if let Some(b) = &conv.bias {
        initialise(b);
    }
    let mut c = conv.clone();
    let prepare = |t: Tensor<4>| {
        let t = if frozen { t.detach() } else { t };
        match dt {
            Some(dt) => t.cast(dt),
            None => t,
        }
    };
    c.weight = c.weight.map(prepare);
    c.bias = c.bias.map(|b| {
        b.map(|b| {
            let b = if frozen { b.detach() } else { b };
            match dt {
                Some(dt) => b.cast(dt),
                None => b,
            }
        })
    });
    c.forward(to_compute(x))
}

/// Draws a lazily initialised parameter's value now, so that clones of its module share it:
/// Burn clones a parameter that was never read with its initialiser, and each clone then
/// draws its own random values.
fn initialise<const D: usize>(param: &burn::module::Param<Tensor<D>>) {
    let _ = param.val();
}
