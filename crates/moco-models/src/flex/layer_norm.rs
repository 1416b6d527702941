//! LayerNorm over the last dimension as one operation with its own backward on the flex
//! backend: `y = γ ⊙ x̂ + β` with `x̂ = (x − μ) · r`, `r = 1 / √(σ² + ε)` (biased variance).
//!
//! The forward is one pass per row (mean, variance, output) and keeps `x̂` and `r` for the
//! backward, again one pass per row:
//!
//! ```text
//! g = dy ⊙ γ,   dx = r · (g − mean(g) − x̂ · mean(g ⊙ x̂)),   dγ = Σ_rows dy ⊙ x̂,   dβ = Σ_rows dy
//! ```
//!
//! Rows run in parallel in blocks; each block sums its own `dγ`, `dβ`, added up at the end.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Flex;
use burn::prelude::*;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{
    contiguous_f32, flex_tensor, from_plain, from_tracked, plain, route, route_of, tracked, values,
    Route,
};

/// Rows per parallel block.
const ROWS_PER_BLOCK: usize = 64;

/// LayerNorm of `x` over its last dimension with scale `gamma` and shift `beta` on flex: `Ok`
/// with the result, or `Err` with the inputs untouched when the backend is not flex or a value
/// is not `f32`.
#[allow(clippy::type_complexity)]
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Result<Tensor<D>, (Tensor<D>, Tensor<1>, Tensor<1>)> {
    let width = x.dims()[D - 1];
    assert_eq!(gamma.dims(), [width], "layer norm: γ width");
    assert_eq!(beta.dims(), [width], "layer norm: β width");
    match route(&[route_of(&x), route_of(&gamma), route_of(&beta)]) {
        None => Err((x, gamma, beta)),
        Some(Route::Tracked) => Ok(layer_norm_autodiff(x, gamma, beta, epsilon)),
        Some(Route::Plain) => {
            let x = contiguous_f32(plain(x));
            let (g, b) = (contiguous_f32(plain(gamma)), contiguous_f32(plain(beta)));
            let out = forward(values(&x), values(&g), values(&b), epsilon as f32);
            let y = flex_tensor(out.y, x.layout().shape().clone());
            Ok(from_plain(y))
        }
    }
}

fn layer_norm_autodiff<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    let (x, gamma, beta) = (tracked(x), tracked(gamma), tracked(beta));
    let xv = contiguous_f32(x.primitive().clone());
    let g = contiguous_f32(gamma.primitive().clone());
    let b = contiguous_f32(beta.primitive().clone());
    let shape = xv.layout().shape().clone();
    let out = forward(values(&xv), values(&g), values(&b), epsilon as f32);
    let y = flex_tensor(out.y, shape.clone());
    let nodes = [x.node(), gamma.node(), beta.node()];
    let output = match LayerNormOp
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let rows = out.rstd.len();
            let state = (
                flex_tensor(out.normalized, shape),
                flex_tensor(out.rstd, [rows]),
                g,
            );
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    from_tracked(output)
}

#[derive(Debug)]
struct LayerNormOp;

impl Backward<Flex, 3> for LayerNormOp {
    /// `x̂`, `r` per row and `γ`.
    type State = (FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (normalized, rstd, gamma) = ops.state;
        let grad = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let width = values(&gamma).len();
        let [x_node, gamma_node, beta_node] = ops.parents;
        let g = backward(
            values(&normalized),
            values(&rstd),
            values(&gamma),
            values(&grad),
            x_node.is_some(),
        );
        if let Some(node) = x_node {
            let dx = flex_tensor(g.dx, normalized.layout().shape().clone());
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = gamma_node {
            grads.register::<Flex>(node.id, flex_tensor(g.dgamma, [width]));
        }
        if let Some(node) = beta_node {
            grads.register::<Flex>(node.id, flex_tensor(g.dbeta, [width]));
        }
    }
}

/// What the forward computes and keeps.
pub struct Forward {
    /// The output.
    pub y: Vec<f32>,
    /// `x̂`, the normalised input.
    pub normalized: Vec<f32>,
    /// `r = 1 / √(σ² + ε)` per row.
    pub rstd: Vec<f32>,
}

/// The forward over rows of `gamma.len()` values.
pub fn forward(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f32) -> Forward {
    let d = gamma.len();
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "layer norm: rows of {d}"
    );
    let rows = x.len() / d;
    let mut y = vec![0f32; x.len()];
    let mut normalized = vec![0f32; x.len()];
    let mut rstd = vec![0f32; rows];
    let block = ROWS_PER_BLOCK * d;
    y.par_chunks_mut(block)
        .zip(normalized.par_chunks_mut(block))
        .zip(rstd.par_chunks_mut(ROWS_PER_BLOCK))
        .zip(x.par_chunks(block))
        .for_each(|(((y, xhat), r), x)| {
            for (((y, xhat), r), x) in y
                .chunks_mut(d)
                .zip(xhat.chunks_mut(d))
                .zip(r.iter_mut())
                .zip(x.chunks(d))
            {
                let mean = x.iter().sum::<f32>() / d as f32;
                let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                *r = 1.0 / (var + epsilon).sqrt();
                for ((((y, xh), &v), &g), &b) in y
                    .iter_mut()
                    .zip(xhat.iter_mut())
                    .zip(x)
                    .zip(gamma)
                    .zip(beta)
                {
                    *xh = (v - mean) * *r;
                    *y = *xh * g + b;
                }
            }
        });
    Forward {
        y,
        normalized,
        rstd,
    }
}

/// The gradients the backward computes (`dx` empty when not asked for).
pub struct Grads {
    /// Of the input.
    pub dx: Vec<f32>,
    /// Of the scale γ.
    pub dgamma: Vec<f32>,
    /// Of the shift β.
    pub dbeta: Vec<f32>,
}

/// The backward from `x̂`, `r`, `γ` and the output's gradient.
pub fn backward(
    normalized: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    grad: &[f32],
    with_dx: bool,
) -> Grads {
    let d = gamma.len();
    assert_eq!(normalized.len(), grad.len(), "layer norm backward: lengths");
    assert_eq!(
        normalized.len(),
        rstd.len() * d,
        "layer norm backward: rows"
    );
    let mut dx = vec![0f32; if with_dx { grad.len() } else { 0 }];
    let block = ROWS_PER_BLOCK * d;
    let partial = |dx: &mut [f32], xhat: &[f32], r: &[f32], dy: &[f32]| {
        let (mut dgamma, mut dbeta) = (vec![0f32; d], vec![0f32; d]);
        for (row, (xhat, dy)) in xhat.chunks(d).zip(dy.chunks(d)).enumerate() {
            let (mut mean_g, mut mean_gx) = (0f32, 0f32);
            for ((((&xh, &dy), &g), dg), db) in xhat
                .iter()
                .zip(dy)
                .zip(gamma)
                .zip(dgamma.iter_mut())
                .zip(dbeta.iter_mut())
            {
                *dg += dy * xh;
                *db += dy;
                mean_g += dy * g;
                mean_gx += dy * g * xh;
            }
            if dx.is_empty() {
                continue;
            }
            let (mean_g, mean_gx) = (mean_g / d as f32, mean_gx / d as f32);
            let dx = &mut dx[row * d..(row + 1) * d];
            for (((dx, &xh), &dy), &g) in dx.iter_mut().zip(xhat).zip(dy).zip(gamma) {
                *dx = r[row] * (dy * g - mean_g - xh * mean_gx);
            }
        }
        (dgamma, dbeta)
    };
    let sums = if with_dx {
        dx.par_chunks_mut(block)
            .zip(normalized.par_chunks(block))
            .zip(rstd.par_chunks(ROWS_PER_BLOCK))
            .zip(grad.par_chunks(block))
            .map(|(((dx, xhat), r), dy)| partial(dx, xhat, r, dy))
            .collect::<Vec<_>>()
    } else {
        normalized
            .par_chunks(block)
            .zip(rstd.par_chunks(ROWS_PER_BLOCK))
            .zip(grad.par_chunks(block))
            .map(|((xhat, r), dy)| partial(&mut [], xhat, r, dy))
            .collect::<Vec<_>>()
    };
    let (mut dgamma, mut dbeta) = (vec![0f32; d], vec![0f32; d]);
    for (g, b) in sums {
        dgamma.iter_mut().zip(g).for_each(|(a, v)| *a += v);
        dbeta.iter_mut().zip(b).for_each(|(a, v)| *a += v);
    }
    Grads { dx, dgamma, dbeta }
}
