//! A flex tensor's values as a writable host buffer, for passes that update tensors in place
//! (the optimizer's update, the momentum encoder's blend) instead of allocating a new tensor
//! per operation.
//!
//! Taken from a tensor of `Flex` or `Autodiff<Flex>` (the autodiff side is detached: these are
//! parameter values, not part of a graph) and given back as a tensor of the same backend. The
//! buffer is written in place when the tensor owns its memory alone; when it shares it, the
//! first write copies it (copy on write), so no other tensor ever sees the change.

use std::marker::PhantomData;

use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::{Flex, FlexTensor};

use super::{cast, contiguous_f32, float_primitive, from_float_primitive, same, FlexAutodiff};

/// The `f32` values of a tensor of backend `B` (flex, plain or under autodiff), contiguous
/// and writable on the host; [`HostValues::into_tensor`] gives the tensor back.
pub struct HostValues<B: Backend, const D: usize> {
    tensor: FlexTensor,
    backend: PhantomData<B>,
}

impl<B: Backend, const D: usize> HostValues<B, D> {
    /// The values of `tensor`, or `Err(tensor)` untouched when the backend is not flex or the
    /// values are not `f32`.
    pub fn take(tensor: Tensor<B, D>) -> Result<Self, Tensor<B, D>> {
        if tensor.dtype() != DType::F32 {
            return Err(tensor);
        }
        let plain = match cast::<Tensor<B, D>, Tensor<FlexAutodiff, D>>(tensor) {
            Ok(tracked) => tracked.inner(),
            Err(tensor) => cast::<Tensor<B, D>, Tensor<Flex, D>>(tensor)?,
        };
        Ok(Self {
            tensor: contiguous_f32(float_primitive(plain)),
            backend: PhantomData,
        })
    }

    /// A buffer of zeros of the same shape.
    pub fn zeros_like(&self) -> Self {
        Self {
            tensor: FlexTensor::zeros(self.tensor.layout().shape().clone(), DType::F32),
            backend: PhantomData,
        }
    }

    /// The values.
    pub fn values(&self) -> &[f32] {
        self.tensor
            .as_slice::<f32>()
            .expect("contiguous f32 values from the start")
    }

    /// The values, writable (copied first when another tensor shares them).
    pub fn values_mut(&mut self) -> &mut [f32] {
        let len = self.tensor.layout().shape().num_elements();
        &mut self.tensor.storage_mut::<f32>()[..len]
    }

    /// The tensor of backend `B` holding these values (on autodiff: a leaf without gradient).
    pub fn into_tensor(self) -> Tensor<B, D> {
        let plain = from_float_primitive::<Flex, D>(self.tensor);
        match cast::<Tensor<Flex, D>, Tensor<B, D>>(plain) {
            Ok(tensor) => tensor,
            Err(plain) => same(Tensor::<FlexAutodiff, D>::from_inner(plain)),
        }
    }
}
