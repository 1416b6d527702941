//! `im2col` of a channel-major feature map as one operation with its own backward on the flex
//! backend: the stacked shifted copies of the input that turn a k×k convolution into one
//! matrix product ([`crate::gemm_conv`]).
//!
//! For an input `x` `[C, N, H, W]`, a `kh × kw` kernel, strides `(sh, sw)` and zero padding
//! `(top, left)`, row `(c, i, j)` and column `(n, y, x)` of the `[C·kh·kw, N·H'·W']` result is
//!
//! ```text
//! cols[(c, i, j), (n, y, x)] = x[c, n, y·sh + i − top, x·sw + j − left]   (0 outside the map)
//! ```
//!
//! and the backward adds each column back where it was read from (`col2im`). Both passes run
//! one channel per task and read the padding as zeros without building a padded copy; the
//! backward keeps only the input's shape (Burn's composition pads, gathers with an index
//! tensor, and scatters back into a zeroed padded map it then slices).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn_flex::Flex;
use rayon::prelude::*;

use super::{
    contiguous_f32, flex_tensor, from_plain, from_tracked, plain, route_of, tracked, values, Route,
};

/// The window a convolution slides over its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Im2colWindow {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// Zero padding `[top, left, bottom, right]`.
    pub padding: [usize; 4],
}

impl Im2colWindow {
    /// `[H', W']` for an `h × w` input, or `None` when the padded input is smaller than the
    /// kernel or a stride is 0.
    pub fn output(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [top, left, bottom, right] = self.padding;
        let (hp, wp) = (h + top + bottom, w + left + right);
        if sh == 0 || sw == 0 || kh == 0 || kw == 0 || hp < kh || wp < kw {
            return None;
        }
        Some([(hp - kh) / sh + 1, (wp - kw) / sw + 1])
    }
}

/// The `[C·kh·kw, N·H'·W']` columns of `x` `[C, N, H, W]` on flex: `Ok` with them, or `Err(x)`
/// untouched when the backend is not flex or the values are not `f32`.
///
/// # Panics
/// When the padded map is smaller than the kernel or a stride is 0.
pub fn im2col(x: Tensor<4>, window: Im2colWindow) -> Result<Tensor<2>, Tensor<4>> {
    let [_, _, h, w] = x.dims();
    assert!(
        window.output(h, w).is_some(),
        "im2col: a {h}×{w} map does not fit the window {window:?}"
    );
    match route_of(&x) {
        None => Err(x),
        Some(Route::Tracked) => Ok(im2col_autodiff(x, window)),
        Some(Route::Plain) => {
            let dims = x.dims();
            let x = contiguous_f32(plain(x));
            let (cols, shape) = forward(values(&x), dims, window);
            Ok(from_plain(flex_tensor(cols, shape)))
        }
    }
}

fn im2col_autodiff(x: Tensor<4>, window: Im2colWindow) -> Tensor<2> {
    let dims = x.dims();
    let input = tracked(x);
    let xv = contiguous_f32(input.primitive().clone());
    let (cols, shape) = forward(values(&xv), dims, window);
    let cols = flex_tensor(cols, shape);
    let output = match Im2colOp
        .prepare::<NoCheckpointing>([input.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((dims, window), cols),
        OpsKind::UnTracked(prep) => prep.finish(cols),
    };
    from_tracked(output)
}

/// The output positions `o` (of `len_out`) whose input position `o·stride + offset` lies in
/// `0..len_in`.
fn inside(len_out: usize, len_in: usize, offset: isize, stride: usize) -> std::ops::Range<usize> {
    let s = stride as isize;
    // First o with o·s + offset ≥ 0, and one past the last with o·s + offset ≤ len_in − 1.
    let first = if offset >= 0 {
        0
    } else {
        (-offset + s - 1) / s
    };
    let end = (len_in as isize - 1 - offset).div_euclid(s) + 1;
    let (first, end) = (first as usize, end.clamp(0, len_out as isize) as usize);
    first.min(end)..end
}

/// For each tap `(i, j)` and output row `y` of each image, the input row read (if inside) and
/// the output columns read inside the map with their first input column; `visit(tap, out_row,
/// in_row, xs, first_in)` is called once per such row.
fn for_each_row(
    [n, h, w]: [usize; 3],
    window: Im2colWindow,
    mut visit: impl FnMut(usize, usize, usize, std::ops::Range<usize>, usize),
) {
    let [kh, kw] = window.kernel;
    let [sh, sw] = window.stride;
    let [top, left, ..] = window.padding;
    let [ho, wo] = window.output(h, w).expect("checked by im2col");
    for i in 0..kh {
        let ys = inside(ho, h, i as isize - top as isize, sh);
        for j in 0..kw {
            let offset = j as isize - left as isize;
            let xs = inside(wo, w, offset, sw);
            if xs.is_empty() {
                continue;
            }
            let first_in = (xs.start as isize * sw as isize + offset) as usize;
            for b in 0..n {
                for y in ys.clone() {
                    let in_row = (b * h + (y * sh + i - top)) * w;
                    visit(i * kw + j, (b * ho + y) * wo, in_row, xs.clone(), first_in);
                }
            }
        }
    }
}

/// The columns of `x` (`[C, N, H, W]`, contiguous) and their `[rows, cols]` shape.
fn forward(x: &[f32], [c, n, h, w]: [usize; 4], window: Im2colWindow) -> (Vec<f32>, [usize; 2]) {
    let [ho, wo] = window.output(h, w).expect("checked by im2col");
    let taps = window.kernel[0] * window.kernel[1];
    let width = n * ho * wo;
    let sw = window.stride[1];
    let mut cols = vec![0f32; c * taps * width];
    if width > 0 {
        let plane = n * h * w;
        cols.par_chunks_mut(taps * width)
            .zip(x.par_chunks(plane.max(1)))
            .for_each(|(rows, x)| {
                for_each_row([n, h, w], window, |tap, out, inp, xs, first| {
                    let dst = &mut rows[tap * width + out..][xs.clone()];
                    let src = &x[inp + first..];
                    dst.iter_mut()
                        .zip(src.iter().step_by(sw))
                        .for_each(|(d, s)| *d = *s);
                });
            });
    }
    (cols, [c * taps, width])
}

/// `col2im`: the gradient of the input `[C, N, H, W]` from that of its columns.
fn backward(dcols: &[f32], [c, n, h, w]: [usize; 4], window: Im2colWindow) -> Vec<f32> {
    let [ho, wo] = window.output(h, w).expect("checked by im2col");
    let taps = window.kernel[0] * window.kernel[1];
    let width = n * ho * wo;
    let sw = window.stride[1];
    let plane = n * h * w;
    let mut dx = vec![0f32; c * plane];
    if plane > 0 && width > 0 {
        dx.par_chunks_mut(plane)
            .zip(dcols.par_chunks(taps * width))
            .for_each(|(dx, rows)| {
                for_each_row([n, h, w], window, |tap, out, inp, xs, first| {
                    let src = &rows[tap * width + out..][xs.clone()];
                    let dst = &mut dx[inp + first..];
                    dst.iter_mut()
                        .step_by(sw)
                        .zip(src)
                        .for_each(|(d, s)| *d += *s);
                });
            });
    }
    dx
}

#[derive(Debug)]
struct Im2colOp;

impl Backward<Flex, 1> for Im2colOp {
    /// The input's shape and the window.
    type State = ([usize; 4], Im2colWindow);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (dims, window) = ops.state;
        let dcols = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let [node] = ops.parents;
        if let Some(node) = node {
            let dx = backward(values(&dcols), dims, window);
            grads.register::<Flex>(node.id, flex_tensor(dx, dims));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::inside;

    #[test]
    fn inside_is_the_range_of_positions_read_within_the_map() {
        for len_in in 1..9usize {
            for stride in 1..4usize {
                for offset in -4..4isize {
                    for len_out in 0..10usize {
                        let want: Vec<usize> = (0..len_out)
                            .filter(|&o| {
                                let p = o as isize * stride as isize + offset;
                                p >= 0 && p < len_in as isize
                            })
                            .collect();
                        let got: Vec<usize> = inside(len_out, len_in, offset, stride).collect();
                        assert_eq!(got, want, "{len_out} {len_in} {offset} {stride}");
                    }
                }
            }
        }
    }
}
