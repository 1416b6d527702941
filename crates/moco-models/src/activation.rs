//! The exact (erf) GELU of MoCo v3's ViT MLP, on every backend.

use burn::prelude::*;

use crate::kernels::GeluKernel;

/// GELU(x) = x · Φ(x), Φ the standard normal CDF, computed as `kernel` says.
pub fn gelu<const D: usize>(x: Tensor<D>, kernel: GeluKernel) -> Tensor<D> {
    match kernel {
        GeluKernel::Erf => gelu_erf(x),
        GeluKernel::HostPass => crate::cpu::gelu(x),
    }
}

/// GELU(x) = x · (1 + erf(x / √2)) / 2 from tensor operations, so autodiff differentiates the
/// exact function: d/dx = Φ(x) + x · φ(x), through erf's derivative 2/√π · e^(−z²).
pub fn gelu_erf<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let cdf = x
        .clone()
        .mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    x.mul(cdf)
}
