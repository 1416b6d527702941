//! The exact GELU, `x · Φ(x)`, as one operation with its own backward on the flex backend.
//!
//! Forward: one vectorised, multi-threaded pass over the input's memory
//! ([`crate::cpu::gelu_values`]); the input is kept for the backward, which is one pass too:
//! `dx = dy · (Φ(x) + x·φ(x))` ([`crate::cpu::gelu_backward`]).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Flex;
use burn::prelude::*;
use burn_flex::FlexTensor;

use super::{
    contiguous_f32, flex_tensor, from_plain, from_tracked, plain, route_of, tracked, values, Route,
};
use crate::cpu::{gelu_backward, gelu_values};

/// The exact GELU of `x` on flex: `Ok` with the result, or `Err(x)` untouched when `x` is not
/// an `f32` tensor on the flex device.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Result<Tensor<D>, Tensor<D>> {
    match route_of(&x) {
        None => Err(x),
        Some(Route::Tracked) => Ok(gelu_autodiff(x)),
        Some(Route::Plain) => {
            let x = contiguous_f32(plain(x));
            let y = flex_tensor(gelu_values(values(&x)), x.layout().shape().clone());
            Ok(from_plain(y))
        }
    }
}

fn gelu_autodiff<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let input = tracked(x);
    let x = contiguous_f32(input.primitive().clone());
    let y = flex_tensor(gelu_values(values(&x)), x.layout().shape().clone());
    let output = match ExactGelu
        .prepare::<NoCheckpointing>([input.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(x, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    from_tracked(output)
}

#[derive(Debug)]
struct ExactGelu;

impl Backward<Flex, 1> for ExactGelu {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = contiguous_f32(grad);
            flex_tensor(
                gelu_backward(values(&x), values(&grad)),
                x.layout().shape().clone(),
            )
        });
    }
}
