//! Fused operations for Burn's `flex` CPU backend, each with its own backward.
//!
//! A model runs on any device: it hands a tensor to one of these operations, which runs the
//! fused form when the tensor is an `f32` tensor on the flex device (plain, or tracked by
//! autodiff without gradient checkpointing) and gives it back untouched anywhere else, where
//! the model runs its composition of Burn operations instead. Which form a model asks for is
//! chosen once when it is built ([`crate::kernels`]).
//!
//! The fused forms read and write the tensors' host memory directly and multiply with `gemm`
//! at the strides where the values already are, so they save the copies, permutes and
//! separate element-wise passes of the composition.

// The `Err` of each operation hands its input tensors back untouched, for the composition to
// take them; with several backends compiled in a `Tensor` is large, and boxing it would cost
// an allocation per call.
#![allow(clippy::result_large_err)]

use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{DType, GradientCheckpointingStrategy};
use burn_flex::{FlexTensor, Layout};

mod attention;
mod batch_norm;
mod gelu;
mod host;
mod im2col;
mod layer_norm;
mod linear;
mod matmul;
mod product;

pub use attention::{attention, AttentionShape};
pub use batch_norm::{batch_norm_rows, BatchNormInputs, BatchNormOutput};
pub use gelu::gelu;
pub use host::HostValues;
pub use im2col::{im2col, Im2colWindow};
pub use layer_norm::layer_norm;
pub use linear::{linear, LinearInputs};
pub use product::{product, ProductInputs};

/// Training on flex: the autodiff backend over it, without gradient checkpointing (Burn's
/// default), the backend whose graph the fused operations' backward steps join.
pub type FlexAutodiff = Autodiff<Flex>;

/// A float tensor of [`FlexAutodiff`]: the flex values and their node in the graph.
pub(crate) type Tracked = FloatTensor<FlexAutodiff>;

/// Whether `device` is the flex device (plain or under autodiff), where the fused operations
/// run.
pub fn runs_fused(device: &Device) -> bool {
    // Device equality ignores autodiff: this holds for `Device::flex().autodiff()` too.
    *device == Device::flex()
}

/// How a fused operation runs its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// On flex tensors, no graph.
    Plain,
    /// On flex tensors tracked by autodiff (without gradient checkpointing): the operation
    /// registers its own backward step.
    Tracked,
}

/// The route of one tensor: `None` when it is not an `f32` tensor on flex, or when its
/// autodiff checkpoints gradients (the composition then runs, with Burn's checkpointing).
pub(crate) fn route_of<const D: usize, K: burn::tensor::kind::Basic>(
    tensor: &Tensor<D, K>,
) -> Option<Route> {
    if tensor.dtype() != DType::F32 || !runs_fused(&tensor.device()) {
        return None;
    }
    match tensor.device().gradient_checkpointing_strategy() {
        None => Some(Route::Plain),
        Some(GradientCheckpointingStrategy::Disabled) => Some(Route::Tracked),
        Some(_) => None,
    }
}

/// The route of an operation's inputs: tracked when one of them is (the others join the
/// graph as constants), `None` when one cannot take the fused form.
pub(crate) fn route(routes: &[Option<Route>]) -> Option<Route> {
    let mut out = Route::Plain;
    for r in routes {
        if (*r)? == Route::Tracked {
            out = Route::Tracked;
        }
    }
    Some(out)
}

/// The flex values of a tensor routed [`Route::Plain`].
pub(crate) fn plain<const D: usize>(tensor: Tensor<D>) -> FlexTensor {
    tensor
        .try_into_primitive::<Flex>()
        .expect("a plain f32 flex tensor (checked by its route)")
}

/// The tracked primitive of a tensor of an operation routed [`Route::Tracked`]; a plain input
/// joins the graph as a constant.
pub(crate) fn tracked<const D: usize>(tensor: Tensor<D>) -> Tracked {
    let tensor = if tensor.is_autodiff() {
        tensor
    } else {
        tensor.autodiff()
    };
    tensor
        .try_into_primitive::<FlexAutodiff>()
        .expect("an f32 flex tensor under autodiff (checked by its route)")
}

/// A plain flex tensor as a Burn tensor.
pub(crate) fn from_plain<const D: usize>(tensor: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(tensor)
}

/// A tracked primitive as a Burn tensor.
pub(crate) fn from_tracked<const D: usize>(tensor: Tracked) -> Tensor<D> {
    Tensor::from_primitive::<FlexAutodiff>(tensor)
}

/// The tensor's values as a contiguous `f32` buffer, copied only when the layout needs it.
fn contiguous_f32(tensor: FlexTensor) -> FlexTensor {
    tensor.to_contiguous()
}

/// The values of a contiguous `f32` flex tensor.
fn values(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("a contiguous f32 tensor (checked before the fused operation)")
}

/// A flex tensor owning `values` (no copy).
fn flex_tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    let shape = shape.into();
    debug_assert_eq!(shape.num_elements(), values.len());
    FlexTensor::new(
        burn::tensor::Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}
