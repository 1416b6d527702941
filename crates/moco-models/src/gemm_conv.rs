//! Convolutions as single matrix products on channel-major feature maps, for the CPU backends.
//!
//! The CPU backends run a convolution as one small matrix product per image, and its weight
//! gradient as one per input channel: at the 1–16 px feature maps of a ResNet on 32 px images
//! those are matrix–vector products, and the step ran at a thirtieth of PyTorch's speed.
//! Kept channel-major (`[C, N, H, W]`), a feature map is already the `[C, N·H·W]` matrix a
//! 1×1 convolution multiplies, BatchNorm reduces contiguous rows, and a k×k convolution is one
//! product with the stacked shifted copies of its input (`im2col`); autodiff then computes
//! both gradients as single large products too.

use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::precision::{compute_dtype, to_compute};

/// `[N, C, H, W]` to channel-major `[C, N, H, W]` (and back: the permutation is its own
/// inverse).
pub fn swap_batch_channels(x: Tensor<4>) -> Tensor<4> {
    x.swap_dims(0, 1)
}

/// Whether [`conv2d_cm`] can run `conv` as a matrix product (no groups, no dilation, explicit
/// or no padding); other convolutions go through the backend's own kernel.
fn gemm_supported(conv: &Conv2d) -> bool {
    conv.groups == 1
        && conv.dilation == [1, 1]
        && matches!(
            conv.padding,
            PaddingConfig2d::Valid | PaddingConfig2d::Explicit(..)
        )
}

/// The convolution `conv` on a channel-major `[C, N, H, W]` input, returning `[O, N, H', W']`,
/// in the compute dtype of the enclosing autocast. With `frozen`, no gradient reaches the
/// weights. Equal to `conv.forward` on the `[N, C, H, W]` layout up to float rounding.
pub fn conv2d_cm(conv: &Conv2d, x: Tensor<4>, frozen: bool) -> Tensor<4> {
    if !gemm_supported(conv) {
        let y = crate::precision::conv2d(conv, swap_batch_channels(x), frozen);
        return swap_batch_channels(y);
    }
    let prepare = |t: Tensor<4>| {
        let t = if frozen { t.detach() } else { t };
        match compute_dtype() {
            Some(dt) => t.cast(dt),
            None => t,
        }
    };
    let weight = prepare(conv.weight.val());
    let [out_c, in_c, kh, kw] = weight.dims();
    let x = to_compute(x);
    let [c, n, h, w] = x.dims();
    assert_eq!(
        c, in_c,
        "convolution expects {in_c} input channels, got a map with {c}"
    );
    let (top, left, bottom, right) = match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) => (t, l, b, r),
        _ => (0, 0, 0, 0),
    };
    let [sh, sw] = conv.stride;
    let (hp, wp) = (h + top + bottom, w + left + right);
    assert!(
        hp >= kh && wp >= kw,
        "a {h}×{w} map (padded {hp}×{wp}) is smaller than the {kh}×{kw} kernel"
    );
    let (ho, wo) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
    let cols: Tensor<2> = if kh == 1 && kw == 1 && (sh, sw) == (1, 1) && hp == h && wp == w {
        x.reshape([c, n * ho * wo])
    } else {
        let padding = [top, left, bottom, right];
        im2col(x, [kh, kw], [sh, sw], padding)
    };
    let y = product(weight.reshape([out_c, in_c * kh * kw]), cols);
    let y = match &conv.bias {
        Some(b) => {
            let b = b.val();
            let b = if frozen { b.detach() } else { b };
            y + to_compute(b).reshape([out_c, 1])
        }
        None => y,
    };
    y.reshape([out_c, n, ho, wo])
}

/// The `[C·kh·kw, N·H'·W']` matrix whose column `(image, output position)` holds the inputs
/// the kernel reads there, rows ordered `(channel, ky, kx)` like the flattened weight's
/// columns: on flex one operation ([`crate::flex::im2col`]), elsewhere the zero-padded map
/// gathered with `select`.
fn im2col(x: Tensor<4>, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 4]) -> Tensor<2> {
    #[cfg(feature = "flex")]
    let x = match crate::flex::im2col(
        x,
        crate::flex::Im2colWindow {
            kernel,
            stride,
            padding,
        },
    ) {
        Ok(cols) => return cols,
        Err(x) => x,
    };
    let [c, n, h, w] = x.dims();
    let ([kh, kw], [sh, sw], [top, left, bottom, right]) = (kernel, stride, padding);
    let (hp, wp) = (h + top + bottom, w + left + right);
    let (ho, wo) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
    let x = if top + bottom + left + right > 0 {
        // Zeros in the input's dtype (half under autocast), the map written inside.
        Tensor::<4>::zeros([c, n, hp, wp], (&x.device(), x.dtype()))
            .slice_assign([0..c, 0..n, top..top + h, left..left + w], x)
    } else {
        x
    };
    // One gather from the flattened padded map: column (tap, image, position) of each channel
    // row, so that the `[C, taps · N·H'·W']` result reshapes to `[C·taps, N·H'·W']`.
    let index = im2col_index(n, hp, wp, kh, kw, sh, sw, ho, wo);
    gather_columns(x.reshape([c, n * hp * wp]), &index).reshape([c * kh * kw, n * ho * wo])
}

/// `a·b`: on flex one operation with its own backward ([`crate::flex::product`]), elsewhere
/// the backend's product.
fn product(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    let (a, b) = match crate::flex::product((a, b)) {
        Ok(y) => return y,
        Err(operands) => operands,
    };
    a.matmul(b)
}

/// Most indices one `select` takes: the gradient of a `select` of 65,536 or more indices along
/// an axis is wrong on Burn 0.21's wgpu backend (docs/backends.md), so longer gathers are
/// split into selects of at most this many and concatenated.
pub const MAX_SELECT: usize = 32_768;

/// The columns `index` of `x` (`[rows, cols]`), as `select(1, index)` in pieces of at most
/// [`MAX_SELECT`] indices.
fn gather_columns(x: Tensor<2>, index: &[i64]) -> Tensor<2> {
    let device = x.device();
    let select = |part: &[i64]| {
        let part =
            Tensor::<1, Int>::from_data(TensorData::new(part.to_vec(), [part.len()]), &device);
        x.clone().select(1, part)
    };
    if index.len() <= MAX_SELECT {
        return select(index);
    }
    Tensor::cat(index.chunks(MAX_SELECT).map(select).collect(), 1)
}

/// Positions in a flattened `[N, H_p, W_p]` padded map read by each (tap, image, output
/// position) of a `kh × kw` convolution with strides `sh`, `sw`.
#[allow(clippy::too_many_arguments)]
fn im2col_index(
    n: usize,
    hp: usize,
    wp: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ho: usize,
    wo: usize,
) -> Vec<i64> {
    let mut index = Vec::with_capacity(kh * kw * n * ho * wo);
    for i in 0..kh {
        for j in 0..kw {
            for b in 0..n {
                for y in 0..ho {
                    let row = (b * hp + y * sh + i) * wp + j;
                    index.extend((0..wo).map(|x| (row + x * sw) as i64));
                }
            }
        }
    }
    index
}
