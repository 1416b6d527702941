//! The exact GELU, `x · Φ(x)`, as one operation with its own backward on the flex backend.
//!
//! Forward: one vectorised, multi-threaded pass over the input's memory
//! ([`crate::cpu::gelu_values`]); the input is kept for the backward, which is one pass too:
//! `dx = dy · (Φ(x) + x·φ(x))` ([`crate::cpu::gelu_backward`]).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::prelude::*;
use burn_flex::{Flex, FlexTensor};

use super::{
    cast, contiguous_f32, flex_tensor, float_primitive, from_float_primitive, is_f32, same, values,
    FlexAutodiff,
};
use crate::cpu::{gelu_backward, gelu_values};

/// The exact GELU of `x` on flex: `Ok` with the result, or `Err(x)` untouched when the backend
/// is not flex or the values are not `f32`.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !is_f32(&x) {
        return Err(x);
    }
    let x = match cast::<Tensor<B, D>, Tensor<FlexAutodiff, D>>(x) {
        Ok(tracked) => return Ok(same(gelu_autodiff(tracked))),
        Err(x) => x,
    };
    match cast::<Tensor<B, D>, Tensor<Flex, D>>(x) {
        Ok(plain) => {
            let x = contiguous_f32(float_primitive(plain));
            let y = flex_tensor(gelu_values(values(&x)), x.layout().shape().clone());
            Ok(same(from_float_primitive::<Flex, D>(y)))
        }
        Err(x) => Err(x),
    }
}

fn gelu_autodiff<const D: usize>(x: Tensor<FlexAutodiff, D>) -> Tensor<FlexAutodiff, D> {
    let input = x.into_primitive().tensor();
    let x = contiguous_f32(input.primitive.clone());
    let y = flex_tensor(gelu_values(values(&x)), x.layout().shape().clone());
    let output = match ExactGelu
        .prepare::<NoCheckpointing>([input.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(x, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    from_float_primitive(output)
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
