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
pub struct BatchNorm {
    /// Scale (`weight` in PyTorch); absent without affine parameters.
    pub gamma: Option<Param<Tensor<1>>>,
    /// Shift (`bias` in PyTorch); absent without affine parameters.
    pub beta: Option<Param<Tensor<1>>>,
    /// Running mean.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running (unbiased) variance.
    pub running_var: RunningState<Tensor<1>>,
    momentum: f64,
    epsilon: f64,
}

impl BatchNormConfig {
    /// Creates the module: scale 1, shift 0, running mean 0, running variance 1.
    pub fn init(&self, device: &Device) -> BatchNorm {
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

impl BatchNorm {
    /// Normalises `x` of shape `[batch, channels, ...]`.
    ///
    /// Written as `x · scale + shift` with per-channel `scale = γ / √(var + ε)` and
    /// `shift = β − mean · scale`, and with the statistics reduced dimension by dimension: no
    /// transpose of `x` and two broadcast operations over it instead of four.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let channels = dims[1];
        let mut shape = [1; D];
        shape[1] = channels;
        let (mean, var) = if x.device().is_autodiff() {
            let count: usize = dims
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .map(|(_, d)| d)
                .product();
            let count = count * world_size();
            let mean = sync(per_channel_sum(x.clone(), shape).reshape([channels]))
                .div_scalar(count as f64);
            let centered = x.clone().sub(expand(mean.clone().reshape(shape), dims[0]));
            let var = sync(per_channel_sum(centered.square(), shape).reshape([channels]))
                .div_scalar(count as f64);
            self.update_running(mean.clone(), var.clone(), count);
            (mean, var)
        } else {
            (
                self.running_mean.value_sync(),
                self.running_var.value_sync(),
            )
        };
        let (scale, shift) = self.scale_shift(mean, var);
        let n = dims[0];
        x.mul(expand(scale.reshape(shape), n))
            .add(expand(shift.reshape(shape), n))
    }

    /// Normalises a channel-major `x` of shape `[channels, ...]` (the layout of the CPU
    /// convolution path), followed by ReLU when `relu`: every channel is one contiguous row, so
    /// the statistics are row reductions and the scale and shift per-row scalars. On flex, in
    /// training with affine parameters and one replica, this is one fused operation
    /// ([`crate::flex::batch_norm_rows`]).
    pub fn forward_cm<const D: usize>(&self, x: Tensor<D>, relu: bool) -> Tensor<D> {
        let dims = x.dims();
        let channels = dims[0];
        let rows: Tensor<2> = x.reshape([channels, dims[1..].iter().product::<usize>()]);
        let training = rows.device().is_autodiff();
        #[cfg(feature = "flex")]
        let rows = match (&self.gamma, &self.beta) {
            (Some(g), Some(b)) if training && world_size() == 1 => {
                let inputs = (rows, g.val(), b.val());
                match crate::flex::batch_norm_rows(inputs, self.epsilon, relu) {
                    Ok((y, mean, var)) => {
                        let count = y.dims()[1];
                        self.update_running(mean, var, count);
                        return y.reshape(dims);
                    }
                    Err((rows, _, _)) => rows,
                }
            }
            _ => rows,
        };
        let (mean, var) = if training {
            let count = rows.dims()[1] * world_size();
            let mean = sync(rows.clone().sum_dim(1).reshape([channels])).div_scalar(count as f64);
            let centered = rows.clone().sub(mean.clone().reshape([channels, 1]));
            let var =
                sync(centered.square().sum_dim(1).reshape([channels])).div_scalar(count as f64);
            self.update_running(mean.clone(), var.clone(), count);
            (mean, var)
        } else {
            (
                self.running_mean.value_sync(),
                self.running_var.value_sync(),
            )
        };
        let (scale, shift) = self.scale_shift(mean, var);
        let y = rows
            .mul(scale.reshape([channels, 1]))
            .add(shift.reshape([channels, 1]))
            .reshape(dims);
        if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        }
    }

    /// Moves the running statistics towards the batch's (`var` biased over `count` values;
    /// the running variance is unbiased, as PyTorch keeps it).
    fn update_running(&self, mean: Tensor<1>, var: Tensor<1>, count: usize) {
        let unbiased = count as f64 / (count.max(2) - 1) as f64;
        let m = self.momentum;
        let new_mean = self
            .running_mean
            .value_sync()
            .mul_scalar(1.0 - m)
            .add(mean.detach().mul_scalar(m));
        let new_var = self
            .running_var
            .value_sync()
            .mul_scalar(1.0 - m)
            .add(var.detach().mul_scalar(m * unbiased));
        self.running_mean.update(new_mean.detach());
        self.running_var.update(new_var.detach());
    }

    /// Per-channel `scale = γ / √(var + ε)` and `shift = β − mean · scale`.
    fn scale_shift(&self, mean: Tensor<1>, var: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
        let inv_std = var.add_scalar(self.epsilon).sqrt().recip();
        let scale = match &self.gamma {
            Some(g) => g.val().mul(inv_std),
            None => inv_std,
        };
        let shift = mean.mul(scale.clone()).neg();
        let shift = match &self.beta {
            Some(b) => shift.add(b.val()),
            None => shift,
        };
        (scale, shift)
    }
}

/// Replicas in the enclosing data-parallel group (1 without one).
fn world_size() -> usize {
    crate::replica::replicas().map_or(1, |g| g.world_size())
}

/// SyncBN under data parallelism: per-channel sums added over the shards of every replica
/// (equal shard sizes), with the gradient flowing back to every replica.
fn sync(s: Tensor<1>) -> Tensor<1> {
    let channels = s.dims()[0];
    match crate::replica::replicas() {
        Some(g) if g.world_size() > 1 => g.sum(s.reshape([1, channels])).reshape([channels]),
        _ => s,
    }
}

/// `[1, C, 1, …]` per-channel values repeated over the batch for inputs of rank > 2, so that
/// the CPU backend applies them with its per-row broadcast kernel (a `[1, C, 1, 1]` operand
/// takes its generic strided path, an order of magnitude slower).
fn expand<const D: usize>(v: Tensor<D>, batch: usize) -> Tensor<D> {
    if D > 2 && batch > 1 {
        v.repeat_dim(0, batch)
    } else {
        v
    }
}

/// Sum of `x` over every dimension but 1, shaped `shape` (`[1, C, 1, …]`).
fn per_channel_sum<const D: usize>(x: Tensor<D>, shape: [usize; D]) -> Tensor<D> {
    let dims = x.dims();
    let rest: usize = dims[2..].iter().product();
    // Over the batch first (contiguous slices add up), then over the spatial positions.
    let over_batch: Tensor<3> = x.sum_dim(0).reshape([1, dims[1], rest]);
    over_batch.sum_dim(2).reshape(shape)
}
