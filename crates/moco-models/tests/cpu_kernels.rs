//! The CPU formulations agree with Burn's own operations, forward and backward: the
//! channel-major matrix-product convolution and BatchNorm, and the fast exact GELU.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::Device;
use burn::tensor::{Distribution, Tensor};
use moco_models::gemm_conv::{conv2d_cm, swap_batch_channels};
use moco_models::{BatchNormConfig, ConvKernel, GeluKernel, Kernels};

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar::<f32>()
}

fn max_abs<const D: usize>(a: Tensor<D>) -> f32 {
    a.abs().max().into_scalar::<f32>()
}

#[test]
fn cpu_backends_default_to_the_host_formulations() {
    assert_eq!(
        Kernels::for_device(&Device::flex().autodiff()),
        Kernels::CPU
    );
    assert_eq!(
        Kernels::for_device(&Device::flex().autodiff()),
        Kernels::CPU
    );
    let conv = Kernels::CPU.conv;
    // ResNet-50 on 32 px images (8×8 after the ImageNet stem): matrix products.
    assert!(conv.matrix_product_at(8 * 8));
    assert!(conv.matrix_product_at(16 * 16));
    // 28 px maps behind the small stem: the backend's convolution.
    assert!(!conv.matrix_product_at(28 * 28));
    assert!(!ConvKernel::Backend.matrix_product_at(1));
    assert!(ConvKernel::MatrixProduct.matrix_product_at(1 << 20));
}

/// `formulation` of `conv` against the backend's `conv.forward` on a random `[3, C, h, w]`
/// input: output, input, weight and bias gradients.
fn check_against_backend(
    case: usize,
    conv: &Conv2d,
    [h, w]: [usize; 2],
    formulation: impl Fn(&Conv2d, Tensor<4>) -> Tensor<4>,
) {
    let device = Device::flex().autodiff();
    let cin = conv.weight.dims()[1];
    let x = Tensor::<4>::random([3, cin, h, w], Distribution::Normal(0.0, 1.0), &device);
    let x_native = Tensor::<4>::from_inner(x.clone()).require_grad();
    let y_native = conv.forward(x_native.clone());
    let x_other = Tensor::<4>::from_inner(x).require_grad();
    let y_other = formulation(conv, x_other.clone());
    let r = Tensor::<4>::random(y_native.dims(), Distribution::Normal(0.0, 1.0), &device);
    let scale = max_abs(y_native.clone().inner());
    let diff = max_abs_diff(y_native.clone().inner(), y_other.clone().inner());
    assert!(
        diff <= 1e-5 * scale.max(1.0),
        "case {case}: output differs by {diff}"
    );

    let g_native = (y_native * r.clone()).sum().backward();
    let g_other = (y_other * r).sum().backward();
    let pairs = [
        (
            "input",
            x_native.grad(&g_native).unwrap(),
            x_other.grad(&g_other).unwrap(),
        ),
        (
            "weight",
            conv.weight.val().grad(&g_native).unwrap(),
            conv.weight.val().grad(&g_other).unwrap(),
        ),
    ];
    for (what, a, b) in pairs {
        let scale = max_abs(a.clone());
        let diff = max_abs_diff(a, b);
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "case {case}: {what} gradient differs by {diff} (scale {scale})"
        );
    }
    if let Some(bias) = &conv.bias {
        let a = bias.val().grad(&g_native).unwrap();
        let b = bias.val().grad(&g_other).unwrap();
        let diff = max_abs_diff(a.clone(), b);
        assert!(
            diff <= 1e-4 * max_abs(a).max(1.0),
            "case {case}: bias gradient differs by {diff}"
        );
    }
}

#[test]
fn matches_the_backend_convolution_and_its_gradients() {
    let device = Device::flex().autodiff();
    // (in, out, kernel, stride, padding (top, left, bottom, right), bias, height, width)
    let cases = [
        (8, 16, 1, 1, (0, 0, 0, 0), false, 4, 4),
        (8, 12, 1, 2, (0, 0, 0, 0), false, 5, 4),
        (6, 10, 3, 1, (1, 1, 1, 1), false, 6, 5),
        (6, 10, 3, 2, (1, 1, 1, 1), true, 7, 8),
        (3, 8, 7, 2, (3, 3, 3, 3), false, 16, 16),
        (4, 5, 3, 1, (0, 0, 0, 0), true, 5, 6),
        (4, 5, 3, 2, (0, 1, 2, 1), false, 6, 6),
        (16, 8, 3, 1, (1, 1, 1, 1), false, 1, 1),
    ];
    for (case, &(cin, cout, k, s, (t, l, b, r), bias, h, w)) in cases.iter().enumerate() {
        let conv = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([s, s])
            .with_padding(PaddingConfig2d::Explicit(t, l, b, r))
            .with_bias(bias)
            .init(&device);
        check_against_backend(case, &conv, [h, w], |conv, x| {
            swap_batch_channels(conv2d_cm(conv, swap_batch_channels(x), false))
        });
    }
}

/// A strided 1×1 convolution runs as the stride-1 convolution of every stride-th position.
#[test]
fn strided_pointwise_convolutions_match_the_backend() {
    let device = Device::flex().autodiff();
    // (in, out, stride (rows, columns), bias, height, width): even, odd and one-pixel maps.
    let cases = [
        (8, 12, [2, 2], false, 8, 8),
        (8, 12, [2, 2], true, 7, 5),
        (3, 4, [3, 2], false, 10, 9),
        (16, 32, [2, 2], false, 1, 1),
        (4, 4, [2, 2], false, 2, 3),
    ];
    for (case, &(cin, cout, stride, bias, h, w)) in cases.iter().enumerate() {
        let conv = Conv2dConfig::new([cin, cout], [1, 1])
            .with_stride(stride)
            .with_bias(bias)
            .init(&device);
        check_against_backend(case, &conv, [h, w], |conv, x| {
            moco_models::precision::conv2d(conv, x, false)
        });
    }
}

#[test]
fn frozen_weights_receive_no_gradient() {
    let device = Device::flex().autodiff();
    let conv = Conv2dConfig::new([3, 4], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let x =
        Tensor::<4>::random([3, 2, 5, 5], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let grads = conv2d_cm(&conv, x.clone(), true).sum().backward();
    assert!(conv.weight.val().grad(&grads).is_none());
    assert!(x.grad(&grads).is_some());
}

#[test]
fn channel_major_batch_norm_matches_the_batch_major_one() {
    let device = Device::flex().autodiff();
    let x = Tensor::<4>::random([4, 6, 3, 5], Distribution::Normal(1.5, 2.0), &device);
    let make = || {
        let mut bn = BatchNormConfig::new(6).init(&device);
        bn.gamma = Some(burn::module::Param::from_tensor(Tensor::from_floats(
            [0.5, 1.0, 1.5, 2.0, -1.0, 0.0],
            &device,
        )));
        bn
    };
    let (bn_a, bn_b) = (make(), make());
    let xa = Tensor::<4>::from_inner(x.clone()).require_grad();
    let xb = Tensor::<4>::from_inner(x).require_grad();
    let ya = bn_a.forward(xa.clone());
    let yb = swap_batch_channels(bn_b.forward_cm(swap_batch_channels(xb.clone()), false));
    assert!(max_abs_diff(ya.clone().inner(), yb.clone().inner()) < 1e-5);
    let r = Tensor::<4>::random(ya.dims(), Distribution::Normal(0.0, 1.0), &device);
    let ga = (ya * r.clone()).sum().backward();
    let gb = (yb * r).sum().backward();
    let (gxa, gxb) = (xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
    assert!(max_abs_diff(gxa, gxb) < 1e-5);
    let gamma = |bn: &moco_models::BatchNorm, g| bn.gamma.as_ref().unwrap().val().grad(g).unwrap();
    assert!(max_abs_diff(gamma(&bn_a, &ga), gamma(&bn_b, &gb)) < 1e-4);
    let ra = bn_a.running_var.value_sync().inner();
    let rb = bn_b.running_var.value_sync().inner();
    assert!(max_abs_diff(ra.clone(), rb) < 1e-6);
    // The unbiased batch variance of a N(1.5, 2²) sample of 60 values, moved 10 % of the way.
    let v: f32 = ra.mean().into_scalar::<f32>();
    assert!((v - (0.9 + 0.1 * 4.0)).abs() < 0.2, "running variance {v}");
    let ma = bn_a.running_mean.value_sync().inner();
    let mb = bn_b.running_mean.value_sync().inner();
    assert!(max_abs_diff(ma, mb) < 1e-6);
}

#[test]
fn fast_gelu_matches_the_exact_gelu_and_its_gradient() {
    let device = Device::flex().autodiff();
    let x = Tensor::<2>::random([300, 70], Distribution::Normal(0.0, 3.0), &device);
    let xa = Tensor::<2>::from_inner(x.clone()).require_grad();
    let xb = Tensor::<2>::from_inner(x).require_grad();
    let ya = burn::tensor::activation::gelu(xa.clone());
    let yb = moco_models::cpu::gelu(xb.clone());
    let diff = max_abs_diff(ya.clone().inner(), yb.clone().inner());
    assert!(diff < 2e-6, "GELU differs by {diff}");
    let r = Tensor::<2>::random([300, 70], Distribution::Normal(0.0, 1.0), &device);
    let ga = (ya * r.clone()).sum().backward();
    let gb = (yb * r).sum().backward();
    let diff = max_abs_diff(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
    assert!(diff < 2e-6, "GELU gradient differs by {diff}");
    // The erf composition every backend can run: the same values and gradient.
    let xa = Tensor::<2>::from_inner(xa.inner()).require_grad();
    let xc = Tensor::<2>::from_inner(xa.clone().inner()).require_grad();
    let ya = burn::tensor::activation::gelu(xa.clone());
    let yc = moco_models::activation::gelu(xc.clone(), GeluKernel::Erf);
    let diff = max_abs_diff(ya.clone().inner(), yc.clone().inner());
    assert!(diff < 2e-6, "erf GELU differs by {diff}");
    let r = Tensor::<2>::random([300, 70], Distribution::Normal(0.0, 1.0), &device);
    let ga = (ya * r.clone()).sum().backward();
    let gc = (yc * r).sum().backward();
    let diff = max_abs_diff(xa.grad(&ga).unwrap(), xc.grad(&gc).unwrap());
    assert!(diff < 2e-6, "erf GELU gradient differs by {diff}");
    // Without autodiff (evaluation) the values come straight from the kernel.
    let x = Tensor::<1>::from_floats([-3.0, -1.0, 0.0, 0.5, 2.0], &device);
    let y = moco_models::cpu::gelu(x.clone());
    let exact = burn::tensor::activation::gelu(x);
    assert!(max_abs_diff(y, exact) < 1e-6);
}

#[test]
fn long_im2col_gathers_are_split_and_match_the_backend_convolution() {
    // 8 images of 32×32, 3×3 taps: 73,728 gathered columns, more than one select takes.
    let device = Device::flex().autodiff();
    let conv = Conv2dConfig::new([2, 3], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(&device);
    let x = Tensor::<4>::random([8, 2, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    const { assert!(8 * 9 * 32 * 32 > moco_models::gemm_conv::MAX_SELECT) };
    let xa = Tensor::<4>::from_inner(x.clone()).require_grad();
    let xb = Tensor::<4>::from_inner(swap_batch_channels(x)).require_grad();
    let ya = conv.forward(xa.clone());
    let yb = swap_batch_channels(conv2d_cm(&conv, xb.clone(), false));
    assert!(max_abs_diff(ya.clone().inner(), yb.clone().inner()) < 1e-5);
    let r = Tensor::<4>::random(ya.dims(), Distribution::Normal(0.0, 1.0), &device);
    let ga = (ya * r.clone()).sum().backward();
    let gb = (yb * r).sum().backward();
    let (da, db) = (
        xa.grad(&ga).unwrap(),
        swap_batch_channels(xb.grad(&gb).unwrap()),
    );
    assert!(max_abs_diff(da, db) < 1e-5);
}

/// A module whose parameters were never read is initialised lazily: every formulation must
/// compute with the module's own weights, not with a clone that draws its own.
#[test]
fn fresh_modules_compute_with_their_own_weights() {
    let device = Device::flex();
    for (stride, frozen) in [([2, 2], false), ([1, 1], true), ([2, 2], true)] {
        let conv = Conv2dConfig::new([4, 6], [1, 1])
            .with_stride(stride)
            .init(&device);
        let x = Tensor::<4>::random([2, 4, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        let first = moco_models::precision::conv2d(&conv, x.clone(), frozen);
        let reference = conv.forward(x);
        let diff = max_abs_diff(first, reference);
        assert!(diff < 1e-6, "stride {stride:?}, frozen {frozen}: {diff}");
    }
}
