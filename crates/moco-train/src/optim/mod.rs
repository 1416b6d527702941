//! Optimizers with MoCo v3's exact update rules: AdamW (PyTorch's formula), LARS (MoCo v3's
//! variant) and SGD with momentum (no dampening). One Burn `Optimizer`, so one state type
//! for checkpoints. Parameters without a gradient (the frozen patch projection,
//! the position embedding) are never touched, not even by weight decay.
//!
//! On the flex CPU backend each parameter is updated in one pass over its memory
//! ([`one_pass`]); elsewhere the rules run as a composition of tensor operations.

mod one_pass;

use burn::optim::{LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource};
use burn::prelude::*;
use burn_store::burn_pack::Scalar;
use serde::{Deserialize, Serialize};

/// Which update rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW: decoupled weight decay `p ← p·(1 − lr·wd)`, then Adam with bias correction and
    /// `eps` added to `√v̂`.
    AdamW {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Added to the denominator.
        eps: f64,
    },
    /// LARS as in MoCo v3: for tensors of rank > 1 `dp = g + wd·p`, scaled by
    /// `trust·‖p‖/‖dp‖` (1 when a norm is 0); then `μ ← momentum·μ + dp`, `p ← p − lr·μ`.
    Lars {
        /// Momentum coefficient.
        momentum: f64,
        /// Trust coefficient η.
        trust_coefficient: f64,
    },
    /// SGD with momentum, no dampening: `μ ← momentum·μ + g + wd·p`, `p ← p − lr·μ`.
    Sgd {
        /// Momentum coefficient (0 for plain SGD).
        momentum: f64,
    },
}

/// Configuration of an [`Optim`].
#[derive(Config, Debug, PartialEq)]
pub struct OptimConfig {
    /// The update rule.
    pub kind: OptimizerKind,
    /// Weight decay.
    pub weight_decay: f64,
    /// Decay 1-D parameters (biases, norm scales) too. MoCo v3's AdamW does; its LARS never
    /// decays them whatever this says.
    #[config(default = true)]
    pub decay_1d: bool,
}

impl OptimConfig {
    /// MoCo v3's AdamW: β (0.9, 0.999), eps 1e-8.
    pub fn adamw(weight_decay: f64) -> Self {
        Self::new(
            OptimizerKind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            weight_decay,
        )
    }

    /// MoCo v3's LARS: momentum 0.9, trust coefficient 0.001.
    pub fn lars(weight_decay: f64) -> Self {
        Self::new(
            OptimizerKind::Lars {
                momentum: 0.9,
                trust_coefficient: 0.001,
            },
            weight_decay,
        )
    }

    /// SGD with momentum, as the linear probe uses.
    pub fn sgd(momentum: f64, weight_decay: f64) -> Self {
        Self::new(OptimizerKind::Sgd { momentum }, weight_decay)
    }

    /// The Burn optimizer of a module: these rules for each of its parameters.
    pub fn init(&self) -> ModuleOptimizer {
        ModuleOptimizer::from(self.build())
    }
}

/// The update rules of [`OptimConfig`] as a Burn `Optimizer` (of one parameter).
#[derive(Clone, Debug)]
pub struct Optim {
    config: OptimConfig,
    one_pass: bool,
}

impl Optim {
    /// The same rules as a composition of tensor operations on every backend, flex included
    /// (the reference the one-pass update is tested against).
    pub fn composed(self) -> Self {
        Self {
            one_pass: false,
            ..self
        }
    }
}

/// Per-parameter state: the first buffer is Adam's first moment or the momentum buffer, the
/// second Adam's second moment.
#[derive(Clone, Debug)]
pub struct OptimState<const D: usize> {
    /// First moment / momentum buffer.
    pub buf1: Tensor<D>,
    /// Second moment (AdamW only).
    pub buf2: Option<Tensor<D>>,
    /// Steps taken.
    pub step: usize,
}

/// The names of the state's fields in an optimizer's saved state (`{parameter id}.{name}`).
pub(crate) const STATE_FIELDS: [&str; 3] = ["buf1", "buf2", "step"];

impl<const D: usize> RecordState for OptimState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(prefix, STATE_FIELDS[0], self.buf1.to_data());
        if let Some(buf2) = &self.buf2 {
            out.push_tensor(prefix, STATE_FIELDS[1], buf2.to_data());
        }
        out.push_scalar(prefix, STATE_FIELDS[2], Scalar::UInt(self.step as u64));
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let tensor = |data: TensorData| {
            let dtype = data.dtype();
            Tensor::from_data(data, (device, dtype))
        };
        let buf1 = tensor(src.take_tensor(prefix, STATE_FIELDS[0])?);
        let buf2 = src.take_tensor(prefix, STATE_FIELDS[1]).map(tensor);
        let step = match src.take_scalar(prefix, STATE_FIELDS[2])? {
            Scalar::UInt(n) => n as usize,
            Scalar::Int(n) => usize::try_from(n).ok()?,
            _ => return None,
        };
        Some(OptimState { buf1, buf2, step })
    }
}

fn l2_norm<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.shape().num_elements();
    t.reshape([n]).square().sum().sqrt()
}

impl Optimizer for Optim {
    type State<const D: usize> = OptimState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (tensor, grad, state) = match self.one_pass {
            true => match one_pass::step(&self.config, lr, (tensor, grad, state)) {
                Ok(updated) => return updated,
                Err(inputs) => inputs,
            },
            false => (tensor, grad, state),
        };
        let wd = self.config.weight_decay;
        let decays = D > 1 || self.config.decay_1d;
        match self.config.kind {
            OptimizerKind::AdamW { beta1, beta2, eps } => {
                let step = state.as_ref().map_or(0, |s| s.step) + 1;
                let (m, v) = match state {
                    Some(s) => (s.buf1, s.buf2.expect("AdamW state has a second moment")),
                    None => (grad.zeros_like(), grad.zeros_like()),
                };
                let tensor = if decays && wd != 0.0 {
                    tensor.mul_scalar(1.0 - lr * wd)
                } else {
                    tensor
                };
                let m = m
                    .mul_scalar(beta1)
                    .add(grad.clone().mul_scalar(1.0 - beta1));
                let v = v
                    .mul_scalar(beta2)
                    .add(grad.square().mul_scalar(1.0 - beta2));
                let bc1 = 1.0 - beta1.powi(step as i32);
                let bc2 = 1.0 - beta2.powi(step as i32);
                let denom = v.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(eps);
                let update = m.clone().div(denom).mul_scalar(lr / bc1);
                (
                    tensor.sub(update),
                    Some(OptimState {
                        buf1: m,
                        buf2: Some(v),
                        step,
                    }),
                )
            }
            OptimizerKind::Lars {
                momentum,
                trust_coefficient,
            } => {
                let mut dp = grad;
                if D > 1 {
                    dp = dp.add(tensor.clone().mul_scalar(wd));
                    let p_norm = l2_norm(tensor.clone());
                    let u_norm = l2_norm(dp.clone());
                    let valid = p_norm
                        .clone()
                        .greater_elem(0.0)
                        .bool_and(u_norm.clone().greater_elem(0.0));
                    let ratio = p_norm.mul_scalar(trust_coefficient).div(u_norm);
                    let ratio = ratio.clone().mask_fill(valid.bool_not(), 1.0);
                    dp = dp.mul(ratio.reshape([1; D]));
                }
                let (mu, step) = match state {
                    Some(s) => (s.buf1.mul_scalar(momentum).add(dp), s.step + 1),
                    None => (dp, 1),
                };
                (
                    tensor.sub(mu.clone().mul_scalar(lr)),
                    Some(OptimState {
                        buf1: mu,
                        buf2: None,
                        step,
                    }),
                )
            }
            OptimizerKind::Sgd { momentum } => {
                let mut d = grad;
                if decays && wd != 0.0 {
                    d = d.add(tensor.clone().mul_scalar(wd));
                }
                let (buf, step) = match state {
                    Some(s) if momentum != 0.0 => (s.buf1.mul_scalar(momentum).add(d), s.step + 1),
                    Some(s) => (d, s.step + 1),
                    None => (d, 1),
                };
                (
                    tensor.sub(buf.clone().mul_scalar(lr)),
                    Some(OptimState {
                        buf1: buf,
                        buf2: None,
                        step,
                    }),
                )
            }
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        OptimState {
            buf1: state.buf1.to_device(device),
            buf2: state.buf2.map(|t| t.to_device(device)),
            step: state.step,
        }
    }
}

impl OptimConfig {
    /// The update rule alone, for stepping tensors directly.
    pub fn build(&self) -> Optim {
        Optim {
            config: self.clone(),
            one_pass: true,
        }
    }
}
