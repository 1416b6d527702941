//! One training step, shared by the pretraining loop and `moco bench`: the gradient part
//! (forward of both views, loss, backward), the gradient monitor, and the update (clipping,
//! optimizer).

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use moco_models::{autocast, Precision};

use crate::method::{Pretrain, StepParams};
use crate::monitor::gradient_norms;

/// Scales every gradient so that their global L2 norm is at most `max_norm`.
fn clip_global<M: Module>(
    model: &M,
    grads: GradientsParams,
    norm: f64,
    max_norm: f64,
) -> GradientsParams {
    if norm <= max_norm || norm == 0.0 {
        return grads;
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl burn::module::ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut grads = grads;
    model.visit(&mut Scale {
        grads: &mut grads,
        factor: max_norm / norm,
    });
    grads
}

/// The gradient part of a training step: both views forward (the backbones in `precision`),
/// the method's loss (and its target-network update), backward. `scale` multiplies the loss
/// before backward (1 / micro-batches under accumulation). Returns the model, the unscaled
/// loss and the gradients (of the f32 parameters).
pub fn forward_backward<M: Pretrain>(
    model: M,
    x1: Tensor<4>,
    x2: Tensor<4>,
    params: &StepParams,
    scale: f64,
    precision: Precision,
) -> (M, f64, GradientsParams) {
    let (model, out) = autocast(precision, || model.forward_loss(x1, x2, params));
    let value = out.loss.clone().into_scalar::<f64>();
    let loss = if scale != 1.0 {
        out.loss.mul_scalar(scale)
    } else {
        out.loss
    };
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (model, value, grads)
}

/// Gradient norm per layer group (first layer first) and the global norm.
pub fn measure_gradients<M: Pretrain>(
    model: &M,
    grads: &GradientsParams,
) -> (Vec<(String, f64)>, f64) {
    let norms = gradient_norms::<M>(model, grads, |path| model.layer_group(path));
    let global = norms.iter().map(|(_, n)| n * n).sum::<f64>().sqrt();
    (norms, global)
}

/// The update part of a training step: optional clipping to a global norm, then the
/// optimizer step at `lr`.
pub fn apply_step<M: Module>(
    model: M,
    optim: &mut ModuleOptimizer,
    grads: GradientsParams,
    global_norm: f64,
    lr: f64,
    clip: Option<f64>,
) -> M {
    let grads = match clip {
        Some(max) => clip_global::<M>(&model, grads, global_norm, max),
        None => grads,
    };
    optim.step(lr, model, grads)
}

/// What the update of a step did.
pub enum Update<M> {
    /// The optimizer stepped.
    Applied(M),
    /// A non-finite loss or gradient, and the run skips such steps: nothing changed.
    Skipped(M),
    /// A non-finite loss or gradient, and the run stops: nothing changed.
    NonFinite {
        /// The model, unchanged.
        model: M,
        /// First layer group (from the input side) with a non-finite gradient.
        layer: Option<String>,
    },
}

/// The update of a step, with the one rule for non-finite values that every replica of a
/// run applies alike: a NaN or infinite loss or gradient norm never reaches the optimizer; the
/// step is skipped with `skip_nonfinite`, and stops the run without. `norms` and `global` are
/// [`measure_gradients`]'s.
#[allow(clippy::too_many_arguments)]
pub fn update<M: Module>(
    model: M,
    optim: &mut ModuleOptimizer,
    grads: GradientsParams,
    loss: f64,
    (norms, global): (&[(String, f64)], f64),
    lr: f64,
    clip: Option<f64>,
    skip_nonfinite: bool,
) -> Update<M> {
    if loss.is_finite() && global.is_finite() {
        return Update::Applied(apply_step(model, optim, grads, global, lr, clip));
    }
    if skip_nonfinite {
        return Update::Skipped(model);
    }
    let layer = norms
        .iter()
        .find(|(_, n)| !n.is_finite())
        .map(|(l, _)| l.clone());
    Update::NonFinite { model, layer }
}
