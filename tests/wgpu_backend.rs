//! Minimal reproductions of the wgpu backend's wrong results that the models work around
//! (docs/backends.md), each compared with the CPU backend on the same values.
//!
//!     cargo test --features wgpu --test wgpu_backend -- --include-ignored
//!
//! The ignored tests fail on Burn 0.21.0 (checked on Mesa's lavapipe Vulkan driver): they
//! document a bug of the backend, not of this repository, and show when a Burn release fixes it.
//! With `--features wgpu,autotune` the matrix-product test fails too.
#![cfg(feature = "wgpu")]

use burn::backend::{Autodiff, Flex, Wgpu};
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::TensorData;

type G = Autodiff<Wgpu>;
type C = Autodiff<Flex>;

/// Deterministic values in [-1, 1).
fn values(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + salt * 104_729) % 2001) as f32 - 1000.0) / 1000.0)
        .collect()
}

fn tensor<B: Backend, const D: usize>(shape: [usize; D], salt: usize) -> Tensor<B, D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, salt), shape), &Default::default())
}

fn max_diff(a: Vec<f32>, b: Vec<f32>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// `[2048, 8] · [32, 8]ᵀ`: an inner size of 8 with a transposed (column-major) right operand.
/// Correct with Burn's default matrix-product kernel; with the `autotune` feature the kernel
/// autotune picks on lavapipe returns wrong values (this is what broke the 1×1 convolutions
/// of a ResNet: an 8 → 32 channel 1×1 convolution on `[8, 8, 16, 16]` was off by 2.7).
#[test]
fn matmul_with_a_transposed_operand_of_inner_size_8() {
    fn product<B: Backend>() -> Vec<f32> {
        to_vec(tensor::<B, 2>([2048, 8], 1).matmul(tensor::<B, 2>([32, 8], 2).transpose()))
    }
    let d = max_diff(product::<Wgpu>(), product::<Flex>());
    assert!(d < 1e-4, "matrix product off by {d}");
}

/// Gradients of Burn's own 3×3 convolution (stride 1, padding 1) on a ResNet-sized map. The
/// forward agrees; the input and weight gradients do not. The ResNet runs its convolutions as
/// matrix products on GPU backends (`ConvKernel::MatrixProduct`) because of this.
#[test]
#[ignore = "Burn 0.21.0 wgpu: wrong convolution gradients"]
fn conv2d_gradients() {
    fn grads<B: burn::tensor::backend::AutodiffBackend>() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let device = Default::default();
        let mut conv = Conv2dConfig::new([16, 16], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init::<B>(&device);
        conv.weight = conv
            .weight
            .map(|_| tensor::<B, 4>([16, 16, 3, 3], 3).require_grad());
        let x = tensor::<B, 4>([8, 16, 8, 8], 4).require_grad();
        let y = conv.forward(x.clone());
        let r = tensor::<B, 4>(y.dims(), 5);
        let g = y.clone().mul(r).sum().backward();
        let gx = x.grad(&g).unwrap();
        let gw = conv.weight.val().grad(&g).unwrap();
        (to_vec(y.inner()), to_vec(gx), to_vec(gw))
    }
    let (yg, gxg, gwg) = grads::<G>();
    let (yc, gxc, gwc) = grads::<C>();
    let (dy, dx, dw) = (max_diff(yg, yc), max_diff(gxg, gxc), max_diff(gwg, gwc));
    assert!(dy < 1e-3, "forward off by {dy}");
    assert!(
        dx < 1e-3 && dw < 1e-2,
        "input gradient off by {dx}, weight gradient by {dw}"
    );
}

/// The gradient of `select` along an axis with 65,536 indices (65,535 are fine): the
/// scatter-add of the backward pass loses or misplaces contributions. The matrix-product
/// convolutions split their im2col gather into selects of at most 32,768 indices.
#[test]
#[ignore = "Burn 0.21.0 wgpu: wrong select gradient from 65,536 indices"]
fn select_gradient_with_65536_indices() {
    fn grad<B: burn::tensor::backend::AutodiffBackend>(len: usize) -> Vec<f32> {
        let device = Default::default();
        let x = tensor::<B, 2>([4, 1000], 6).require_grad();
        let index: Vec<i64> = (0..len).map(|i| ((i * 7) % 1000) as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [len]), &device);
        let y = x.clone().select(1, index);
        let r = tensor::<B, 2>([4, len], 7);
        let g = y.mul(r).sum().backward();
        to_vec(x.grad(&g).unwrap())
    }
    let below = max_diff(grad::<G>(65_535), grad::<C>(65_535));
    assert!(below < 1e-3, "65,535 indices: off by {below}");
    let at = max_diff(grad::<G>(65_536), grad::<C>(65_536));
    assert!(at < 1e-3, "65,536 indices: off by {at}");
}
