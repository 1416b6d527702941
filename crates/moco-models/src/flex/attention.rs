//! Multi-head self-attention `O = softmax(s · Q·Kᵀ) · V` per head as one operation with its
//! own backward, on the flex backend.
//!
//! Input: the output of the fused `qkv` projection, `[batch · tokens, 3·D]` (q, k, v as column
//! blocks, heads as `D / heads`-wide blocks within them), read in place through strides.
//! Output: the heads written straight into their columns of `[batch · tokens, D]`. The forward
//! keeps the attention probabilities `P = softmax(S)` for the backward, which is
//!
//! ```text
//! dV = Pᵀ·dO,   dP = dO·Vᵀ,   dS = P ⊙ (dP − rowsum(dP ⊙ P)),   dQ = s·dS·K,   dK = s·dSᵀ·Q
//! ```
//!
//! Batch items run in parallel; each head's products run on one thread. The composition it
//! replaces (three column-block products, strided head views, a softmax of several passes,
//! batched products, a permute back) computes the same function.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Flex;
use burn::prelude::*;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::matmul::{matmul, Strides};
use super::{
    contiguous_f32, flex_tensor, from_plain, from_tracked, plain, route_of, tracked, values, Route,
};

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Sequences (images).
    pub batch: usize,
    /// Tokens per sequence.
    pub tokens: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width `D` of q, k and v (all heads).
    pub dim: usize,
    /// The factor `s` of the scores, usually `(D / heads)^(-1/2)`.
    pub scale: f32,
}

impl AttentionShape {
    fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    fn qkv_len(&self) -> usize {
        self.batch * self.tokens * 3 * self.dim
    }
}

/// Attention over `qkv` (`[batch · tokens, 3·D]`, shape checked) on flex: `Ok` with the
/// `[batch · tokens, D]` output, or `Err(qkv)` untouched when the backend is not flex or the
/// values are not `f32`.
pub fn attention(qkv: Tensor<2>, shape: AttentionShape) -> Result<Tensor<2>, Tensor<2>> {
    assert_eq!(
        qkv.dims(),
        [shape.batch * shape.tokens, 3 * shape.dim],
        "attention: qkv shape"
    );
    assert_eq!(shape.dim % shape.heads, 0, "attention: heads must divide D");
    match route_of(&qkv) {
        None => Err(qkv),
        Some(Route::Tracked) => Ok(attention_autodiff(qkv, shape)),
        Some(Route::Plain) => {
            let qkv = contiguous_f32(plain(qkv));
            let (out, _) = forward(values(&qkv), shape);
            let out = flex_tensor(out, [shape.batch * shape.tokens, shape.dim]);
            Ok(from_plain(out))
        }
    }
}

fn attention_autodiff(qkv: Tensor<2>, shape: AttentionShape) -> Tensor<2> {
    let input = tracked(qkv);
    let qkv = contiguous_f32(input.primitive().clone());
    let (out, probs) = forward(values(&qkv), shape);
    let out = flex_tensor(out, [shape.batch * shape.tokens, shape.dim]);
    let op = FusedAttention { shape };
    let output = match op
        .prepare::<NoCheckpointing>([input.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let n = shape.tokens;
            let probs = flex_tensor(probs, [shape.batch, shape.heads, n, n]);
            prep.finish((qkv, probs), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    from_tracked(output)
}

#[derive(Debug)]
struct FusedAttention {
    shape: AttentionShape,
}

impl Backward<Flex, 1> for FusedAttention {
    /// The `qkv` input and the probabilities `P`.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (qkv, probs) = ops.state;
        let shape = self.shape;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = contiguous_f32(grad);
            let d_qkv = backward(values(&qkv), values(&probs), values(&grad), shape);
            flex_tensor(d_qkv, [shape.batch * shape.tokens, 3 * shape.dim])
        });
    }
}

/// The output `[batch · tokens, D]` and the probabilities `[batch, heads, tokens, tokens]`.
pub fn forward(qkv: &[f32], shape: AttentionShape) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(qkv.len(), shape.qkv_len(), "attention: qkv length");
    let (n, d, h, hd) = (shape.tokens, shape.dim, shape.heads, shape.head_dim());
    let mut out = vec![0f32; shape.batch * n * d];
    let mut probs = vec![0f32; shape.batch * h * n * n];
    if n == 0 || d == 0 {
        return (out, probs);
    }
    out.par_chunks_mut(n * d)
        .zip(probs.par_chunks_mut(h * n * n))
        .zip(qkv.par_chunks(n * 3 * d))
        .for_each(|((out, probs), qkv)| {
            let qkv_rows = Strides::rows(3 * d);
            for (head, p) in probs.chunks_mut(n * n).enumerate() {
                let (q, k, v) = head_columns(qkv, d, head * hd);
                // S = s·Q·Kᵀ
                matmul(
                    (n, n, hd),
                    (p, Strides::rows(n)),
                    (q, qkv_rows),
                    (k, Strides::transposed(3 * d)),
                    shape.scale,
                    false,
                );
                for row in p.chunks_mut(n) {
                    softmax_in_place(row);
                }
                // O = P·V
                matmul(
                    (n, hd, n),
                    (&mut out[head * hd..], Strides::rows(d)),
                    (p, Strides::rows(n)),
                    (v, qkv_rows),
                    1.0,
                    false,
                );
            }
        });
    (out, probs)
}

/// The gradient with respect to `qkv` (`[batch · tokens, 3·D]`) from the forward's input and
/// probabilities and the output's gradient `[batch · tokens, D]`.
pub fn backward(qkv: &[f32], probs: &[f32], grad_out: &[f32], shape: AttentionShape) -> Vec<f32> {
    assert_eq!(qkv.len(), shape.qkv_len(), "attention backward: qkv length");
    let (n, d, h, hd) = (shape.tokens, shape.dim, shape.heads, shape.head_dim());
    assert_eq!(
        probs.len(),
        shape.batch * h * n * n,
        "attention backward: P"
    );
    assert_eq!(
        grad_out.len(),
        shape.batch * n * d,
        "attention backward: dO"
    );
    let mut grad = vec![0f32; shape.qkv_len()];
    if n == 0 || d == 0 {
        return grad;
    }
    grad.par_chunks_mut(n * 3 * d)
        .zip(qkv.par_chunks(n * 3 * d))
        .zip(probs.par_chunks(h * n * n))
        .zip(grad_out.par_chunks(n * d))
        .for_each(|(((grad, qkv), probs), grad_out)| {
            let rows = Strides::rows(3 * d);
            let mut d_scores = vec![0f32; n * n];
            for (head, p) in probs.chunks(n * n).enumerate() {
                let c = head * hd;
                let (q, k, v) = head_columns(qkv, d, c);
                let d_out = &grad_out[c..];
                // dP = dO·Vᵀ
                matmul(
                    (n, n, hd),
                    (&mut d_scores, Strides::rows(n)),
                    (d_out, Strides::rows(d)),
                    (v, Strides::transposed(3 * d)),
                    1.0,
                    false,
                );
                // dV = Pᵀ·dO
                matmul(
                    (n, hd, n),
                    (&mut grad[2 * d + c..], rows),
                    (p, Strides::transposed(n)),
                    (d_out, Strides::rows(d)),
                    1.0,
                    false,
                );
                // dS = P ⊙ (dP − rowsum(dP ⊙ P))
                for (ds, p) in d_scores.chunks_mut(n).zip(p.chunks(n)) {
                    softmax_backward_in_place(ds, p);
                }
                // dQ = s·dS·K, dK = s·dSᵀ·Q
                matmul(
                    (n, hd, n),
                    (&mut grad[c..], rows),
                    (&d_scores, Strides::rows(n)),
                    (k, rows),
                    shape.scale,
                    false,
                );
                matmul(
                    (n, hd, n),
                    (&mut grad[d + c..], rows),
                    (&d_scores, Strides::transposed(n)),
                    (q, rows),
                    shape.scale,
                    false,
                );
            }
        });
    grad
}

/// One head's q, k and v of one sequence, as slices starting at the head's first column
/// (rows `3·D` apart).
fn head_columns(qkv: &[f32], d: usize, column: usize) -> (&[f32], &[f32], &[f32]) {
    (&qkv[column..], &qkv[d + column..], &qkv[2 * d + column..])
}

/// `row ← softmax(row)`, the maximum subtracted first; a row with a NaN becomes NaN.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if row.iter().any(|x| x.is_nan()) || max == f32::INFINITY {
        row.fill(f32::NAN);
        return;
    }
    let mut sum = 0.0;
    for x in row.iter_mut() {
        *x = crate::cpu::exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// `ds ← p ⊙ (ds − ⟨ds, p⟩)`: the gradient of the softmax's input from its output's.
fn softmax_backward_in_place(ds: &mut [f32], p: &[f32]) {
    let dot: f32 = ds.iter().zip(p).map(|(g, p)| g * p).sum();
    for (g, &p) in ds.iter_mut().zip(p) {
        *g = p * (*g - dot);
    }
}
