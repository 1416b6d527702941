//! A matrix product `y = a·b` as one operation with its own backward on the flex backend: the
//! convolutions of the CPU ResNet path (`weight · im2col(x)`, [`crate::gemm_conv`]).
//!
//! The output buffer is allocated once and written by one product (Burn's flex product
//! allocates a zeroed byte buffer, then copies it into an aligned one, in the forward and for
//! each gradient). The backward reads the operands transposed through strides:
//!
//! ```text
//! da = dy·bᵀ,   db = aᵀ·dy
//! ```

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Flex;
use burn::prelude::*;
use burn_flex::FlexTensor;

use super::matmul::{matmul_new, Strides};
use super::{
    contiguous_f32, flex_tensor, from_plain, from_tracked, plain, route, route_of, tracked, values,
    Route,
};

/// The operands of a product: `a` `[m, k]` and `b` `[k, n]`.
pub type ProductInputs = (Tensor<2>, Tensor<2>);

/// Products with fewer multiply-adds run on the calling thread (splitting them costs more
/// than it saves).
const PARALLEL_FROM: usize = 1 << 20;

/// `a·b` on flex: `Ok` with the `[m, n]` result, or `Err` with the operands untouched when the
/// backend is not flex or a value is not `f32`.
pub fn product((a, b): ProductInputs) -> Result<Tensor<2>, ProductInputs> {
    let ([_, k], [k_b, _]) = (a.dims(), b.dims());
    assert_eq!(k, k_b, "product: inner dimensions {k} and {k_b}");
    match route(&[route_of(&a), route_of(&b)]) {
        None => Err((a, b)),
        Some(Route::Tracked) => Ok(product_autodiff((a, b))),
        Some(Route::Plain) => {
            let a = contiguous_f32(plain(a));
            let b = contiguous_f32(plain(b));
            Ok(from_plain(forward(&a, &b)))
        }
    }
}

fn product_autodiff((a, b): ProductInputs) -> Tensor<2> {
    let (a, b) = (tracked(a), tracked(b));
    let av = contiguous_f32(a.primitive().clone());
    let bv = contiguous_f32(b.primitive().clone());
    let y = forward(&av, &bv);
    let nodes = [a.node(), b.node()];
    let output = match ProductOp
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((av, bv), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    from_tracked(output)
}

/// `[rows, cols]` of a 2-D flex tensor.
fn dims(t: &FlexTensor) -> (usize, usize) {
    let shape = t.layout().shape();
    (shape[0], shape[1])
}

/// `lhs·rhs` over `(m, n, k)` as a new row-major buffer, on all threads when the product is
/// large.
fn multiply(
    (m, n, k): (usize, usize, usize),
    lhs: (&[f32], Strides),
    rhs: (&[f32], Strides),
) -> Vec<f32> {
    matmul_new((m, n, k), lhs, rhs, m * n * k >= PARALLEL_FROM)
}

/// `a·b` for contiguous `a` `[m, k]` and `b` `[k, n]`.
fn forward(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let ((m, k), (_, n)) = (dims(a), dims(b));
    let y = multiply(
        (m, n, k),
        (values(a), Strides::rows(k)),
        (values(b), Strides::rows(n)),
    );
    flex_tensor(y, [m, n])
}

#[derive(Debug)]
struct ProductOp;

impl Backward<Flex, 2> for ProductOp {
    /// `a` and `b`.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b) = ops.state;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let [a_node, b_node] = ops.parents;
        let ((m, k), (_, n)) = (dims(&a), dims(&b));
        if let Some(node) = a_node {
            // da = dy·bᵀ
            let da = multiply(
                (m, k, n),
                (values(&dy), Strides::rows(n)),
                (values(&b), Strides::transposed(n)),
            );
            grads.register::<Flex>(node.id, flex_tensor(da, [m, k]));
        }
        if let Some(node) = b_node {
            // db = aᵀ·dy
            let db = multiply(
                (k, n, m),
                (values(&a), Strides::transposed(k)),
                (values(&dy), Strides::rows(n)),
            );
            grads.register::<Flex>(node.id, flex_tensor(db, [k, n]));
        }
    }
}
