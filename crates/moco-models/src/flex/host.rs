//! A flex tensor's values as a writable host buffer, for passes that update tensors in place
//! (the optimizer's update, the momentum encoder's blend) instead of allocating a new tensor
//! per operation.
//!
//! Taken from a tensor on the flex device, plain or under autodiff (the autodiff side is
//! detached: these are parameter values, not part of a graph), and given back on the same
//! device. The
//! buffer is written in place when the tensor owns its memory alone; when it shares it, the
//! first write copies it (copy on write), so no other tensor ever sees the change.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::FlexTensor;

use super::{contiguous_f32, runs_fused};

/// The `f32` values of a tensor on the flex device (plain or under autodiff), contiguous and
/// writable on the host; [`HostValues::into_tensor`] gives the tensor back.
pub struct HostValues<const D: usize> {
    tensor: FlexTensor,
    autodiff: bool,
}

impl<const D: usize> HostValues<D> {
    /// The values of `tensor`, or `Err(tensor)` untouched when it is not on the flex device or
    /// its values are not `f32`.
    pub fn take(tensor: Tensor<D>) -> Result<Self, Tensor<D>> {
        if tensor.dtype() != DType::F32 || !runs_fused(&tensor.device()) {
            return Err(tensor);
        }
        let autodiff = tensor.is_autodiff();
        let plain = tensor
            .inner()
            .try_into_primitive::<Flex>()
            .expect("an f32 flex tensor (checked above)");
        Ok(Self {
            tensor: contiguous_f32(plain),
            autodiff,
        })
    }

    /// A buffer of zeros of the same shape.
    pub fn zeros_like(&self) -> Self {
        Self {
            tensor: FlexTensor::zeros(self.tensor.layout().shape().clone(), DType::F32),
            autodiff: self.autodiff,
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

    /// The tensor holding these values, on the device it was taken from (under autodiff: a
    /// leaf without gradient).
    pub fn into_tensor(self) -> Tensor<D> {
        let plain = Tensor::<D>::from_primitive::<Flex>(self.tensor);
        if self.autodiff {
            plain.autodiff()
        } else {
            plain
        }
    }
}
