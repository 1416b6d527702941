//! The update rules of [`OptimizerKind`] as one multi-threaded pass over each parameter's
//! memory on the flex CPU backend, written in place (parameter, moments, momentum buffer).
//!
//! The composition of tensor operations in [`super::Optim`] allocates and fills a new buffer
//! per operation (about ten per parameter for AdamW); here each element is read and written
//! once, with the same `f32` arithmetic in the same order. LARS needs two norms first, so it
//! reads the parameter and gradient once more. Any other backend, or values that are not
//! `f32`, take the composition.

use burn::prelude::*;
use moco_models::flex::HostValues;
use rayon::prelude::*;

use super::{OptimConfig, OptimState, OptimizerKind};

/// Elements per task: large enough that a task outweighs its scheduling.
const CHUNK: usize = 1 << 15;

type Inputs<const D: usize> = (Tensor<D>, Tensor<D>, Option<OptimState<D>>);
type Outputs<const D: usize> = (Tensor<D>, Option<OptimState<D>>);

/// One optimizer step of `tensor` in one pass, or the inputs back untouched when the backend
/// is not flex or the values are not `f32`.
// The `Err` hands the inputs back untouched (a `Tensor` is large with several backends built in).
#[allow(clippy::result_large_err)]
pub(super) fn step<const D: usize>(
    config: &OptimConfig,
    lr: f64,
    (tensor, grad, state): Inputs<D>,
) -> Result<Outputs<D>, Inputs<D>> {
    let mut param = match HostValues::take(tensor) {
        Ok(param) => param,
        Err(tensor) => return Err((tensor, grad, state)),
    };
    let grad = match HostValues::take(grad) {
        Ok(grad) => grad,
        Err(grad) => return Err((param.into_tensor(), grad, state)),
    };
    let step = state.as_ref().map_or(0, |s| s.step) + 1;
    let (buf1, buf2) = match state {
        Some(s) => (Some(s.buf1), s.buf2),
        None => (None, None),
    };
    let host = |buf: Option<Tensor<D>>, param: &HostValues<D>| match buf {
        Some(t) => HostValues::take(t).unwrap_or_else(|_| unreachable!("state of a flex tensor")),
        None => param.zeros_like(),
    };
    let decays = D > 1 || config.decay_1d;
    let wd = config.weight_decay;
    let (buf1, buf2) = match config.kind {
        OptimizerKind::AdamW { beta1, beta2, eps } => {
            let (mut m, mut v) = (host(buf1, &param), host(buf2, &param));
            let rule = AdamW::new(lr, if decays { wd } else { 0.0 }, beta1, beta2, eps, step);
            rule.apply(
                param.values_mut(),
                grad.values(),
                m.values_mut(),
                v.values_mut(),
            );
            (m, Some(v))
        }
        OptimizerKind::Lars {
            momentum,
            trust_coefficient,
        } => {
            let had_state = buf1.is_some();
            let mut mu = host(buf1, &param);
            let (wd, ratio) = match D > 1 {
                true => (
                    wd,
                    lars_ratio(param.values(), grad.values(), wd, trust_coefficient),
                ),
                false => (0.0, 1.0),
            };
            let momentum = if had_state { momentum } else { 0.0 };
            momentum_step(
                param.values_mut(),
                grad.values(),
                mu.values_mut(),
                wd,
                ratio,
                momentum,
                lr,
            );
            (mu, None)
        }
        OptimizerKind::Sgd { momentum } => {
            let keeps = buf1.is_some() && momentum != 0.0;
            let mut buf = host(buf1, &param);
            let wd = if decays { wd } else { 0.0 };
            let momentum = if keeps { momentum } else { 0.0 };
            momentum_step(
                param.values_mut(),
                grad.values(),
                buf.values_mut(),
                wd,
                1.0,
                momentum,
                lr,
            );
            (buf, None)
        }
    };
    let state = OptimState {
        buf1: buf1.into_tensor(),
        buf2: buf2.map(HostValues::into_tensor),
        step,
    };
    Ok((param.into_tensor(), Some(state)))
}

/// AdamW's coefficients for one step, as `f32` like the composition's scalar operations.
struct AdamW {
    decay: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    sqrt_bc2: f32,
    eps: f32,
    lr_over_bc1: f32,
}

impl AdamW {
    fn new(lr: f64, wd: f64, beta1: f64, beta2: f64, eps: f64, step: usize) -> Self {
        Self {
            decay: (1.0 - lr * wd) as f32,
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            sqrt_bc2: (1.0 - beta2.powi(step as i32)).sqrt() as f32,
            eps: eps as f32,
            lr_over_bc1: (lr / (1.0 - beta1.powi(step as i32))) as f32,
        }
    }

    /// `p ← p·(1 − lr·wd)`, `m ← β₁m + (1 − β₁)g`, `v ← β₂v + (1 − β₂)g²`,
    /// `p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + eps)`.
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    *m = *m * self.beta1 + g * self.one_minus_beta1;
                    *v = *v * self.beta2 + g * g * self.one_minus_beta2;
                    let denom = v.sqrt() / self.sqrt_bc2 + self.eps;
                    *p = *p * self.decay - *m / denom * self.lr_over_bc1;
                }
            });
    }
}

/// MoCo v3's LARS scale of a rank > 1 tensor: `trust·‖p‖ / ‖g + wd·p‖`, 1 when a norm is 0.
fn lars_ratio(p: &[f32], g: &[f32], wd: f64, trust: f64) -> f32 {
    let wd = wd as f32;
    let (pp, uu) = p
        .par_chunks(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .map(|(p, g)| {
            p.iter()
                .zip(g)
                .fold((0.0f64, 0.0f64), |(pp, uu), (&p, &g)| {
                    let u = g + p * wd;
                    (pp + (p * p) as f64, uu + (u * u) as f64)
                })
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let (p_norm, u_norm) = (pp.sqrt(), uu.sqrt());
    if p_norm > 0.0 && u_norm > 0.0 {
        (trust * p_norm / u_norm) as f32
    } else {
        1.0
    }
}

/// `d = (g + wd·p)·ratio`, `μ ← momentum·μ + d`, `p ← p − lr·μ` (LARS and SGD; a momentum of 0
/// starts the buffer).
fn momentum_step(
    p: &mut [f32],
    g: &[f32],
    mu: &mut [f32],
    wd: f64,
    ratio: f32,
    momentum: f64,
    lr: f64,
) {
    let (wd, momentum, lr) = (wd as f32, momentum as f32, lr as f32);
    p.par_chunks_mut(CHUNK)
        .zip(mu.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|((p, mu), g)| {
            for ((p, mu), &g) in p.iter_mut().zip(mu).zip(g) {
                let d = (g + *p * wd) * ratio;
                *mu = if momentum == 0.0 {
                    d
                } else {
                    *mu * momentum + d
                };
                *p -= *mu * lr;
            }
        });
}
