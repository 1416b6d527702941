//! Fused operations for Burn's `flex` CPU backend, each with its own backward.
//!
//! A model stays generic over its backend: it hands a tensor to one of these operations,
//! which runs the fused form when the backend is `flex` (`Flex`, or `Autodiff<Flex>` in
//! training) and gives the tensor back untouched on any other backend, where the model runs
//! its composition of Burn operations instead. Which form a model asks for is chosen once when
//! it is built ([`crate::kernels`]).
//!
//! The fused forms read and write the tensors' host memory directly and multiply with `gemm`
//! at the strides where the values already are, so they save the copies, permutes and
//! separate element-wise passes of the composition.

use std::any::Any;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_flex::{Flex, FlexTensor, Layout};

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

/// Training on flex: the autodiff backend over it, without checkpointing (Burn's default).
pub type FlexAutodiff = Autodiff<Flex>;

/// Whether backend `B` is flex (plain or under autodiff), where the fused operations run.
pub fn runs_fused<B: Backend>() -> bool {
    let b = std::any::TypeId::of::<B>();
    b == std::any::TypeId::of::<Flex>() || b == std::any::TypeId::of::<FlexAutodiff>()
}

/// `value` as a `U` when `T` is `U`, else `value` back.
fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>() {
        Some(target) => Ok(target.take().expect("filled above")),
        None => Err(slot.expect("filled above")),
    }
}

/// `value` as the type it is known to be (`T` is `U`).
fn same<T: 'static, U: 'static>(value: T) -> U {
    match cast(value) {
        Ok(value) => value,
        Err(_) => unreachable!("same type"),
    }
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

/// Whether `tensor` is an `f32` tensor a fused operation can take.
fn is_f32<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> bool {
    tensor.dtype() == DType::F32
}

/// The primitive of a float tensor of a known backend.
fn float_primitive<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> B::FloatTensorPrimitive {
    tensor.into_primitive().tensor()
}

fn from_float_primitive<B: Backend, const D: usize>(
    primitive: B::FloatTensorPrimitive,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}
