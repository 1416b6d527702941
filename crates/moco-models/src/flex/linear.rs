//! A linear layer `y = x·W + b` (`W` is `[in, out]`, Burn's layout) as one operation with its
//! own backward on the flex backend.
//!
//! The output buffer is allocated once, filled with the bias rows and accumulated into by one
//! product (Burn's composition allocates the product's output twice, copies it, then adds the
//! bias in another pass and buffer). The backward reads `x` and `W` transposed through strides:
//!
//! ```text
//! dx = dy·Wᵀ,   dW = xᵀ·dy,   db = Σ_rows dy
//! ```

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Flex;
use burn::prelude::*;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::matmul::{matmul_new, matmul_parallel, Strides};
use super::{
    contiguous_f32, flex_tensor, from_plain, from_tracked, plain, route, route_of, tracked, values,
    Route,
};

/// The inputs of a linear layer: `x` `[rows, in]`, `W` `[in, out]`, `b` `[out]`.
pub type LinearInputs = (Tensor<2>, Tensor<2>, Tensor<1>);

/// `x·W + b` on flex: `Ok` with the `[rows, out]` result, or `Err` with the inputs untouched
/// when one is not an `f32` tensor on the flex device.
pub fn linear((x, weight, bias): LinearInputs) -> Result<Tensor<2>, LinearInputs> {
    let [_, d_in] = x.dims();
    let [w_in, d_out] = weight.dims();
    assert_eq!(d_in, w_in, "linear: input width");
    assert_eq!(bias.dims(), [d_out], "linear: bias width");
    match route(&[route_of(&x), route_of(&weight), route_of(&bias)]) {
        None => Err((x, weight, bias)),
        Some(Route::Tracked) => Ok(linear_autodiff((x, weight, bias))),
        Some(Route::Plain) => {
            let (x, w, b) = (
                contiguous_f32(plain(x)),
                contiguous_f32(plain(weight)),
                contiguous_f32(plain(bias)),
            );
            let rows = rows_of(&x);
            let y = forward(values(&x), values(&w), values(&b), rows);
            Ok(from_plain(flex_tensor(y, [rows, d_out])))
        }
    }
}

fn linear_autodiff((x, weight, bias): LinearInputs) -> Tensor<2> {
    let (x, weight, bias) = (tracked(x), tracked(weight), tracked(bias));
    let xv = contiguous_f32(x.primitive().clone());
    let wv = contiguous_f32(weight.primitive().clone());
    let bv = contiguous_f32(bias.primitive().clone());
    let rows = rows_of(&xv);
    let y = forward(values(&xv), values(&wv), values(&bv), rows);
    let y = flex_tensor(y, [rows, values(&bv).len()]);
    let nodes = [x.node(), weight.node(), bias.node()];
    let output = match LinearOp
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((xv, wv), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    from_tracked(output)
}

fn rows_of(x: &FlexTensor) -> usize {
    x.layout().shape()[0]
}

#[derive(Debug)]
struct LinearOp;

impl Backward<Flex, 3> for LinearOp {
    /// `x` and `W`.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w) = ops.state;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let [x_node, w_node, b_node] = ops.parents;
        let (rows, d_in) = (rows_of(&x), x.layout().shape()[1]);
        let d_out = w.layout().shape()[1];
        let (xs, ws, dys) = (values(&x), values(&w), values(&dy));
        if let Some(node) = x_node {
            // dx = dy·Wᵀ
            let dx = matmul_new(
                (rows, d_in, d_out),
                (dys, Strides::rows(d_out)),
                (ws, Strides::transposed(d_out)),
                true,
            );
            grads.register::<Flex>(node.id, flex_tensor(dx, [rows, d_in]));
        }
        if let Some(node) = w_node {
            // dW = xᵀ·dy
            let dw = matmul_new(
                (d_in, d_out, rows),
                (xs, Strides::transposed(d_in)),
                (dys, Strides::rows(d_out)),
                true,
            );
            grads.register::<Flex>(node.id, flex_tensor(dw, [d_in, d_out]));
        }
        if let Some(node) = b_node {
            grads.register::<Flex>(node.id, flex_tensor(column_sums(dys, d_out), [d_out]));
        }
    }
}

/// `x·W + b` for `x` `[rows, in]` (row-major), `W` `[in, out]`, `b` `[out]`.
pub fn forward(x: &[f32], w: &[f32], b: &[f32], rows: usize) -> Vec<f32> {
    let d_out = b.len();
    let d_in = x.len().checked_div(rows).unwrap_or(0);
    assert_eq!(x.len(), rows * d_in, "linear: input size");
    assert_eq!(w.len(), d_in * d_out, "linear: weight size");
    let mut y = Vec::with_capacity(rows * d_out);
    for _ in 0..rows {
        y.extend_from_slice(b);
    }
    matmul_parallel(
        (rows, d_out, d_in),
        (&mut y, Strides::rows(d_out)),
        (x, Strides::rows(d_in)),
        (w, Strides::rows(d_out)),
        1.0,
        true,
    );
    y
}

/// Σ over rows of a row-major `[rows, width]` matrix, in parallel blocks of rows.
fn column_sums(m: &[f32], width: usize) -> Vec<f32> {
    if width == 0 {
        return Vec::new();
    }
    let block = 256 * width;
    m.par_chunks(block)
        .map(|rows| {
            let mut sum = vec![0f32; width];
            for row in rows.chunks(width) {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            sum
        })
        .reduce(
            || vec![0f32; width],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(s, v)| *s += v);
                a
            },
        )
}
