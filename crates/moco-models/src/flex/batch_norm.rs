//! BatchNorm with batch statistics over the rows of a channel-major `[channels, values]`
//! tensor, optionally followed by ReLU, as one operation with its own backward on the flex
//! backend: per row (channel) `μ`, biased `σ²`, `r = 1 / √(σ² + ε)`, `s = γ·r`, and
//! `y = max(0, x·s + (β − μ·s))` (without the max when there is no ReLU).
//!
//! The forward is two passes per row (statistics, output) and keeps only `x` and the row
//! statistics; the backward recomputes `x̂ = (x − μ)·r` and the ReLU mask from them, again two
//! passes per row:
//!
//! ```text
//! g = dy ⊙ [y > 0],   dβ = Σ g,   dγ = Σ g ⊙ x̂,   dx = s · (g − dβ/M − x̂ · dγ/M)
//! ```
//!
//! with `M` values per row. Rows run in parallel in blocks. The statistics are returned too,
//! for the running averages the module keeps.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Flex;
use burn::prelude::*;
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::{
    contiguous_f32, flex_tensor, from_plain, from_tracked, plain, route, route_of, tracked, values,
    Route,
};

/// Values per parallel block (whole rows).
const BLOCK: usize = 1 << 14;

/// The inputs: `x` `[channels, values]`, `γ` and `β` `[channels]`.
pub type BatchNormInputs = (Tensor<2>, Tensor<1>, Tensor<1>);

/// The output and the batch's per-channel mean and biased variance (without gradient).
pub type BatchNormOutput = (Tensor<2>, Tensor<1>, Tensor<1>);

/// BatchNorm (batch statistics, scale `γ`, shift `β`) of the rows of `x`, followed by ReLU when
/// `relu`, on flex: `Ok` with the output and the statistics, or `Err` with the inputs untouched
/// when the backend is not flex or a value is not `f32`.
pub fn batch_norm_rows(
    (x, gamma, beta): BatchNormInputs,
    epsilon: f64,
    relu: bool,
) -> Result<BatchNormOutput, BatchNormInputs> {
    let channels = x.dims()[0];
    assert_eq!(gamma.dims(), [channels], "batch norm: γ per channel");
    assert_eq!(beta.dims(), [channels], "batch norm: β per channel");
    if x.dims()[1] == 0 {
        return Err((x, gamma, beta));
    }
    match route(&[route_of(&x), route_of(&gamma), route_of(&beta)]) {
        None => Err((x, gamma, beta)),
        Some(Route::Tracked) => Ok(autodiff((x, gamma, beta), epsilon as f32, relu)),
        Some(Route::Plain) => {
            let x = contiguous_f32(plain(x));
            let [g, b] = [gamma, beta].map(|t| contiguous_f32(plain(t)));
            let f = forward(values(&x), values(&g), values(&b), epsilon as f32, relu);
            let channels = f.mean.len();
            Ok((
                from_plain(flex_tensor(f.y, x.layout().shape().clone())),
                from_plain(flex_tensor(f.mean, [channels])),
                from_plain(flex_tensor(f.var, [channels])),
            ))
        }
    }
}

fn autodiff((x, gamma, beta): BatchNormInputs, epsilon: f32, relu: bool) -> BatchNormOutput {
    let x = tracked(x);
    let [gamma, beta] = [gamma, beta].map(tracked);
    let xv = contiguous_f32(x.primitive().clone());
    let g = contiguous_f32(gamma.primitive().clone());
    let b = contiguous_f32(beta.primitive().clone());
    let f = forward(values(&xv), values(&g), values(&b), epsilon, relu);
    let channels = f.mean.len();
    let y = flex_tensor(f.y, xv.layout().shape().clone());
    let nodes = [x.node(), gamma.node(), beta.node()];
    let op = BatchNormOp { relu };
    let output = match op
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let stats = Stats {
                mean: f.mean.clone(),
                rstd: f.rstd,
            };
            prep.finish((xv, stats, g, b), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    let stat = |v: Vec<f32>| from_plain::<1>(flex_tensor(v, [channels])).autodiff();
    (from_tracked(output), stat(f.mean), stat(f.var))
}

/// Per-row mean and `r = 1 / √(σ² + ε)`, kept for the backward.
#[derive(Debug, Clone)]
struct Stats {
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

#[derive(Debug)]
struct BatchNormOp {
    relu: bool,
}

impl Backward<Flex, 3> for BatchNormOp {
    /// `x`, the row statistics, `γ` and `β`.
    type State = (FlexTensor, Stats, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, stats, gamma, beta) = ops.state;
        let grad = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let channels = stats.mean.len();
        let [x_node, gamma_node, beta_node] = ops.parents;
        let rows = Rows {
            x: values(&x),
            mean: &stats.mean,
            rstd: &stats.rstd,
            gamma: values(&gamma),
            beta: values(&beta),
        };
        let g = backward(&rows, values(&grad), self.relu, x_node.is_some());
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, flex_tensor(g.dx, x.layout().shape().clone()));
        }
        if let Some(node) = gamma_node {
            grads.register::<Flex>(node.id, flex_tensor(g.dgamma, [channels]));
        }
        if let Some(node) = beta_node {
            grads.register::<Flex>(node.id, flex_tensor(g.dbeta, [channels]));
        }
    }
}

/// What the forward computes.
pub struct Forward {
    /// The output.
    pub y: Vec<f32>,
    /// Per-row mean.
    pub mean: Vec<f32>,
    /// Per-row biased variance.
    pub var: Vec<f32>,
    /// Per-row `1 / √(σ² + ε)`.
    pub rstd: Vec<f32>,
}

/// Whole rows of `width` values per parallel block.
fn rows_per_block(width: usize) -> usize {
    (BLOCK / width).max(1)
}

/// The forward over rows of `x.len() / gamma.len()` values.
pub fn forward(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f32, relu: bool) -> Forward {
    let channels = gamma.len();
    assert!(
        channels > 0 && x.len().is_multiple_of(channels),
        "batch norm: {channels} rows"
    );
    let m = x.len() / channels;
    let rows = rows_per_block(m);
    // Written whole below, so never zeroed first.
    let mut y = Vec::with_capacity(x.len());
    let mut stats = vec![(0f32, 0f32, 0f32); channels];
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(rows * m)
        .zip(stats.par_chunks_mut(rows))
        .zip(x.par_chunks(rows * m))
        .zip(gamma.par_chunks(rows).zip(beta.par_chunks(rows)))
        .for_each(|(((y, stats), x), (gamma, beta))| {
            for ((((y, st), x), &g), &b) in y
                .chunks_mut(m)
                .zip(stats)
                .zip(x.chunks(m))
                .zip(gamma)
                .zip(beta)
            {
                let mean = (x.iter().map(|&v| v as f64).sum::<f64>() / m as f64) as f32;
                let var = x
                    .iter()
                    .map(|&v| ((v - mean) * (v - mean)) as f64)
                    .sum::<f64>()
                    / m as f64;
                let var = var as f32;
                let rstd = (var + epsilon).sqrt().recip();
                let scale = g * rstd;
                let shift = -(mean * scale) + b;
                for (y, &v) in y.iter_mut().zip(x) {
                    let out = v * scale + shift;
                    y.write(if relu { out.max(0.0) } else { out });
                }
                *st = (mean, var, rstd);
            }
        });
    // SAFETY: the rows above cover the buffer and wrote every element.
    unsafe { y.set_len(x.len()) };
    Forward {
        y,
        mean: stats.iter().map(|s| s.0).collect(),
        var: stats.iter().map(|s| s.1).collect(),
        rstd: stats.iter().map(|s| s.2).collect(),
    }
}

/// The forward's input and what it kept, for the backward.
pub struct Rows<'a> {
    /// The input, `[channels, M]`.
    pub x: &'a [f32],
    /// Per-row mean.
    pub mean: &'a [f32],
    /// Per-row `1 / √(σ² + ε)`.
    pub rstd: &'a [f32],
    /// Scale per row.
    pub gamma: &'a [f32],
    /// Shift per row.
    pub beta: &'a [f32],
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

/// The backward from the forward's input and statistics and the output's gradient.
pub fn backward(rows: &Rows, grad: &[f32], relu: bool, with_dx: bool) -> Grads {
    let channels = rows.gamma.len();
    assert_eq!(rows.x.len(), grad.len(), "batch norm backward: lengths");
    let m = rows.x.len() / channels;
    let per_block = rows_per_block(m);
    // Written whole below, so never zeroed first.
    let mut dx: Vec<f32> = Vec::with_capacity(if with_dx { grad.len() } else { 0 });
    let mut sums = vec![(0f32, 0f32); channels];
    let row = |c: usize, dy: &[f32], dx: &mut [MaybeUninit<f32>]| {
        let x = &rows.x[c * m..(c + 1) * m];
        let (mean, rstd) = (rows.mean[c], rows.rstd[c]);
        let scale = rows.gamma[c] * rstd;
        let shift = -(mean * scale) + rows.beta[c];
        let kept = |v: f32, dy: f32| {
            if !relu || v * scale + shift > 0.0 {
                dy
            } else {
                0.0
            }
        };
        let (mut dbeta, mut dgamma) = (0f64, 0f64);
        for (&v, &dy) in x.iter().zip(dy) {
            let g = kept(v, dy);
            dbeta += g as f64;
            dgamma += (g * ((v - mean) * rstd)) as f64;
        }
        let (dbeta, dgamma) = (dbeta as f32, dgamma as f32);
        let (mean_g, mean_gx) = (dbeta / m as f32, dgamma / m as f32);
        for ((dx, &v), &dy) in dx.iter_mut().zip(x).zip(dy) {
            dx.write(scale * (kept(v, dy) - mean_g - (v - mean) * rstd * mean_gx));
        }
        (dgamma, dbeta)
    };
    let block = per_block * m;
    if with_dx {
        dx.spare_capacity_mut()[..grad.len()]
            .par_chunks_mut(block)
            .zip(grad.par_chunks(block))
            .zip(sums.par_chunks_mut(per_block))
            .enumerate()
            .for_each(|(i, ((dx, dy), sums))| {
                for (j, ((dx, dy), s)) in dx.chunks_mut(m).zip(dy.chunks(m)).zip(sums).enumerate() {
                    *s = row(i * per_block + j, dy, dx);
                }
            });
        // SAFETY: the rows above cover the buffer and wrote every element.
        unsafe { dx.set_len(grad.len()) };
    } else {
        grad.par_chunks(block)
            .zip(sums.par_chunks_mut(per_block))
            .enumerate()
            .for_each(|(i, (dy, sums))| {
                for (j, (dy, s)) in dy.chunks(m).zip(sums).enumerate() {
                    *s = row(i * per_block + j, dy, &mut []);
                }
            });
    }
    Grads {
        dx,
        dgamma: sums.iter().map(|s| s.0).collect(),
        dbeta: sums.iter().map(|s| s.1).collect(),
    }
}
