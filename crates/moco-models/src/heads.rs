//! Projector and predictor: MoCo v3's MLP builder.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::norm::{BatchNorm, BatchNormConfig};
use crate::ModelError;

/// Configuration of an [`MlpHead`]: `num_layers` bias-free linear layers with BN + ReLU
/// between them and, with `last_bn`, a final BN without affine parameters.
#[derive(Config, Debug, PartialEq)]
pub struct MlpHeadConfig {
    /// Number of linear layers.
    pub num_layers: usize,
    /// Input width.
    pub input_dim: usize,
    /// Hidden width.
    pub mlp_dim: usize,
    /// Output width.
    pub output_dim: usize,
    /// Final affine-free BN (all MoCo v3 heads but the ResNet predictor).
    #[config(default = true)]
    pub last_bn: bool,
}

impl MlpHeadConfig {
    /// Checks that the configuration describes a buildable head.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.num_layers == 0 || self.input_dim == 0 || self.output_dim == 0 {
            return Err(ModelError::InvalidConfig(format!(
                "MLP head needs at least one layer and positive widths, got {self:?}"
            )));
        }
        if self.num_layers > 1 && self.mlp_dim == 0 {
            return Err(ModelError::InvalidConfig(
                "MLP head hidden width mlp_dim must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Builds the head with PyTorch's default linear initialisation.
    pub fn init(&self, device: &Device) -> MlpHead {
        let mut linears = Vec::new();
        let mut norms = Vec::new();
        for l in 0..self.num_layers {
            let d_in = if l == 0 { self.input_dim } else { self.mlp_dim };
            let last = l + 1 == self.num_layers;
            let d_out = if last { self.output_dim } else { self.mlp_dim };
            linears.push(LinearConfig::new(d_in, d_out).with_bias(false).init(device));
            if !last {
                norms.push(BatchNormConfig::new(d_out).init(device));
            } else if self.last_bn {
                norms.push(BatchNormConfig::new(d_out).with_affine(false).init(device));
            }
        }
        MlpHead { linears, norms }
    }
}

/// Linear → BN → ReLU → ... → Linear (→ BN). PyTorch indices: linear `i` is `3i`, BN `i` is
/// `3i + 1`.
#[derive(Module, Debug)]
pub struct MlpHead {
    /// Bias-free linear layers.
    pub linears: Vec<Linear>,
    /// BNs after each hidden layer, plus the final one when present.
    pub norms: Vec<BatchNorm>,
}

/// `x·W` (+ bias): on the flex CPU device one fused product with its own backward (the
/// matrix product of `moco_sgemm`), elsewhere Burn's linear layer.
fn project(linear: &Linear, x: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if linear.bias.is_none() {
        return match crate::flex::product((x, linear.weight.val())) {
            Ok(y) => y,
            Err((x, _)) => linear.forward(x),
        };
    }
    linear.forward(x)
}

impl MlpHead {
    /// `[batch, input_dim]` to `[batch, output_dim]`.
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let n = self.linears.len();
        for (i, linear) in self.linears.iter().enumerate() {
            x = project(linear, x);
            if let Some(norm) = self.norms.get(i) {
                x = norm.forward(x);
            }
            if i + 1 < n {
                x = relu(x);
            }
        }
        x
    }
}
