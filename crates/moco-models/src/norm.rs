//! Batch normalisation with PyTorch's exact semantics.
//!
//! Burn's `BatchNorm` updates the running variance with the biased batch variance and always
//! has affine parameters. MoCo v3's heads end with an affine-free BN, and bit-level parity of
//! the running statistics needs the unbiased variance, so the models use this module instead.

use burn::module::{Module, Param, RunningState};
use burn::prelude::*;

/// Configuration of [`BatchNorm`].
#[derive(Config, Debug)]
pub struct BatchNormConfig {
    /// Number of channels (dimension 1 of the input).
    pub num_features: usize,
    /// Learnable scale and shift (`affine=False` in PyTorch drops both).
    #[config(default = true)]
    pub affine: bool,
    /// Weight of the newest batch in the running statistics.
    #[config(default = 0.1)]
    pub momentum: f64,
    /// Added to the variance before the square root.
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

/// Batch normalisation over dimension 1 of a `[batch, channels, ...]` tensor.
///
/// Uses batch statistics (and updates the running ones) when the backend tracks gradients,
/// running statistics otherwise, as Burn's own modules do: `model.valid()` is eval mode.
#[derive(Module, Debug)]
pub struct BatchNorm<B: Backend> {
    /// Scale (`weight` in PyTorch); absent without affine parameters.
    pub gamma: Option<Param<Tensor<B, 1>>>,
    /// Shift (`bias` in PyTorch); absent without affine parameters.
    pub beta: Option<Param<Tensor<B, 1>>>,
    /// Running mean.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running (unbiased) variance.
    pub running_var: RunningState<Tensor<B, 1>>,
    momentum: f64,
    epsilon: f64,
}

impl BatchNormConfig {
    /// Creates the module: scale 1, shift 0, running mean 0, running variance 1.
    pub fn init<B: Backend>(&self, device: &B::Device) -> BatchNorm<B> {
        let c = self.num_features;
        let (gamma, beta) = if self.affine {
            (
                Some(Param::from_tensor(Tensor::ones([c], device))),
                Some(Param::from_tensor(Tensor::zeros([c], device))),
            )
        } else {
            (None, None)
        };
        BatchNorm {
            gamma,
            beta,
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
            momentum: self.momentum,
            epsilon: self.epsilon,
        }
    }
}

impl<B: Backend> BatchNorm<B> {
    /// Normalises `x` of shape `[batch, channels, ...]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let channels = dims[1];
        let mut shape = [1; D];
        shape[1] = channels;
        let (mean, var) = if B::ad_enabled(&x.device()) {
            let count: usize = dims
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .map(|(_, d)| d)
                .product();
            let flat = x.clone().swap_dims(0, 1).reshape([channels, count]);
            let mean = flat.clone().mean_dim(1);
            let centered = flat.sub(mean.clone());
            let var = centered.square().mean_dim(1);
            let unbiased = count as f64 / (count.max(2) - 1) as f64;
            let m = self.momentum;
            let new_mean = self
                .running_mean
                .value_sync()
                .mul_scalar(1.0 - m)
                .add(mean.clone().detach().reshape([channels]).mul_scalar(m));
            let new_var = self.running_var.value_sync().mul_scalar(1.0 - m).add(
                var.clone()
                    .detach()
                    .reshape([channels])
                    .mul_scalar(m * unbiased),
            );
            self.running_mean.update(new_mean.detach());
            self.running_var.update(new_var.detach());
            (mean.reshape(shape), var.reshape(shape))
        } else {
            (
                self.running_mean.value_sync().reshape(shape),
                self.running_var.value_sync().reshape(shape),
            )
        };
        let x = x.sub(mean).div(var.add_scalar(self.epsilon).sqrt());
        let x = match &self.gamma {
            Some(g) => x.mul(g.val().reshape(shape)),
            None => x,
        };
        match &self.beta {
            Some(b) => x.add(b.val().reshape(shape)),
            None => x,
        }
    }
}
