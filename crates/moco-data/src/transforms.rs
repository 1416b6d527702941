//! Image operations with torchvision's semantics, on `[0, 1]` float images.

use crate::image::Image;
use crate::rng::Rng;

/// A crop box: top row, left column, height, width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 draws of an area fraction uniform in
/// `scale` and a log-uniform aspect ratio in `ratio`; the first box that fits wins, else the
/// centre crop closest to the ratio bounds.
pub fn sample_crop(
    rng: &mut Rng,
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> CropBox {
    let area = (height * width) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.range(scale.0, scale.1);
        let aspect = rng.range(log_lo, log_hi).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.below(height - h + 1);
            let left = rng.below(width - w + 1);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 {
        (width, ((width as f64 / ratio.0).round() as usize).max(1))
    } else if in_ratio > ratio.1 {
        (((height as f64 * ratio.1).round() as usize).max(1), height)
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// Resampling weights of one axis: `taps` weights per output index in one flat array, the
/// first input index of each. Bilinear (triangle) filter, widened by the scale factor when
/// downscaling, as PIL's antialiased resize does; shorter filters are padded with zeros.
struct AxisWeights {
    starts: Vec<usize>,
    taps: usize,
    weights: Vec<f32>,
}

fn axis_weights(in_len: usize, out_len: usize, offset: usize) -> AxisWeights {
    let scale = in_len as f64 / out_len as f64;
    let support = scale.max(1.0);
    let filters: Vec<(usize, Vec<f64>)> = (0..out_len)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let lo = ((center - support).floor().max(0.0)) as usize;
            let hi = ((center + support).ceil() as usize).min(in_len);
            let mut w: Vec<f64> = (lo..hi)
                .map(|i| {
                    let d = ((i as f64 + 0.5 - center) / support).abs();
                    (1.0 - d).max(0.0)
                })
                .collect();
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|x| *x /= sum);
            }
            (lo, w)
        })
        .collect();
    let taps = filters
        .iter()
        .map(|(_, w)| w.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut starts = Vec::with_capacity(out_len);
    let mut weights = vec![0f32; out_len * taps];
    for (o, (lo, w)) in filters.into_iter().enumerate() {
        // Shifted left where the padded filter would run past the end.
        let start = lo.min(in_len.saturating_sub(taps));
        for (k, x) in w.into_iter().enumerate() {
            weights[o * taps + lo - start + k] = x as f32;
        }
        starts.push(offset + start);
    }
    AxisWeights {
        starts,
        taps,
        weights,
    }
}

/// `dst[x] += w · src[x]`, the row operation both separable passes reduce to.
#[inline]
fn axpy(dst: &mut [f32], w: f32, src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += w * s;
    }
}

/// Crops `b` and resizes it to `out_h × out_w` (bilinear, antialiased when shrinking).
pub fn resized_crop(img: &Image, b: CropBox, out_h: usize, out_w: usize) -> Image {
    let wx = axis_weights(b.width, out_w, b.left);
    let wy = axis_weights(b.height, out_h, b.top);
    let mut out = Image::zeros(img.channels, out_h, out_w);
    let mut tmp = vec![0f32; b.height * out_w];
    for c in 0..img.channels {
        let plane = &img.data[c * img.plane()..(c + 1) * img.plane()];
        // Horizontal: each output column a short dot product.
        for (r, y) in (b.top..b.top + b.height).enumerate() {
            let row = &plane[y * img.width..(y + 1) * img.width];
            let dst = &mut tmp[r * out_w..(r + 1) * out_w];
            for ((d, &start), ws) in dst
                .iter_mut()
                .zip(&wx.starts)
                .zip(wx.weights.chunks_exact(wx.taps))
            {
                *d = ws.iter().zip(&row[start..]).map(|(w, v)| w * v).sum();
            }
        }
        // Vertical: whole rows scaled and added (vectorised, cache friendly).
        let dst = &mut out.data[c * out_h * out_w..(c + 1) * out_h * out_w];
        for ((row, &start), ws) in dst
            .chunks_exact_mut(out_w)
            .zip(&wy.starts)
            .zip(wy.weights.chunks_exact(wy.taps))
        {
            let base = start - b.top;
            for (k, &w) in ws.iter().enumerate() {
                if w != 0.0 {
                    axpy(row, w, &tmp[(base + k) * out_w..(base + k + 1) * out_w]);
                }
            }
        }
    }
    out
}

/// Mirrors left-right.
pub fn hflip(img: &mut Image) {
    let w = img.width;
    for row in img.data.chunks_exact_mut(w) {
        row.reverse();
    }
}

/// ITU-R 601-2 luma of pixel `p`: `0.299 R + 0.587 G + 0.114 B` (the value itself for
/// one channel).
fn luma(img: &Image, p: usize) -> f32 {
    if img.channels == 1 {
        return img.data[p];
    }
    let n = img.plane();
    0.299 * img.data[p] + 0.587 * img.data[n + p] + 0.114 * img.data[2 * n + p]
}

/// Grayscale with the same number of channels (RGB stays 3-channel with equal planes).
pub fn grayscale(img: &mut Image) {
    if img.channels == 1 {
        return;
    }
    let n = img.plane();
    for p in 0..n {
        let l = luma(img, p);
        for c in 0..3 {
            img.data[c * n + p] = l;
        }
    }
}

/// Multiplies by `factor`, clamped.
pub fn adjust_brightness(img: &mut Image, factor: f32) {
    img.data
        .iter_mut()
        .for_each(|x| *x = (*x * factor).clamp(0.0, 1.0));
}

/// Blends with the mean of the grayscale image.
pub fn adjust_contrast(img: &mut Image, factor: f32) {
    let n = img.plane();
    let mean = if img.channels == 1 {
        img.data.iter().sum::<f32>() / n as f32
    } else {
        (0..n).map(|p| luma(img, p)).sum::<f32>() / n as f32
    };
    let offset = (1.0 - factor) * mean;
    img.data
        .iter_mut()
        .for_each(|x| *x = (factor * *x + offset).clamp(0.0, 1.0));
}

/// Blends with the grayscale image (no-op on one channel).
pub fn adjust_saturation(img: &mut Image, factor: f32) {
    if img.channels == 1 {
        return;
    }
    let n = img.plane();
    let (r, gb) = img.data.split_at_mut(n);
    let (g, b) = gb.split_at_mut(n);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let gray = (1.0 - factor) * (0.299 * *r + 0.587 * *g + 0.114 * *b);
        *r = (factor * *r + gray).clamp(0.0, 1.0);
        *g = (factor * *g + gray).clamp(0.0, 1.0);
        *b = (factor * *b + gray).clamp(0.0, 1.0);
    }
}

/// Rotates the hue by `shift` turns (in `[-0.5, 0.5]`) through HSV (no-op on one channel).
pub fn adjust_hue(img: &mut Image, shift: f32) {
    if img.channels == 1 || shift == 0.0 {
        return;
    }
    let n = img.plane();
    let (rs, gb) = img.data.split_at_mut(n);
    let (gs, bs) = gb.split_at_mut(n);
    for ((r, g), b) in rs.iter_mut().zip(gs.iter_mut()).zip(bs.iter_mut()) {
        let (rv, gv, bv) = (*r, *g, *b);
        let max = rv.max(gv).max(bv);
        let min = rv.min(gv).min(bv);
        let delta = max - min;
        if delta == 0.0 {
            // Gray: hue undefined, nothing to rotate.
            continue;
        }
        let v = max;
        let s = delta / max;
        // Hue in sixths of a turn, in [0, 6).
        let mut h6 = if max == rv {
            let x = (gv - bv) / delta;
            if x < 0.0 {
                x + 6.0
            } else {
                x
            }
        } else if max == gv {
            (bv - rv) / delta + 2.0
        } else {
            (rv - gv) / delta + 4.0
        };
        h6 += shift * 6.0;
        if h6 < 0.0 {
            h6 += 6.0;
        } else if h6 >= 6.0 {
            h6 -= 6.0;
        }
        // Truncation is the floor here: h6 ≥ 0 (rounding can land exactly on 6).
        let i = (h6 as i32).min(5);
        let f = h6 - i as f32;
        let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
        (*r, *g, *b) = match i {
            0 => (v, t, p),
            1 => (q, v, p),
            2 => (p, v, t),
            3 => (p, q, v),
            4 => (t, p, v),
            _ => (v, p, q),
        };
    }
}

/// Inverts every value at or above `threshold` (PIL's threshold 128 is `128/255`).
pub fn solarize(img: &mut Image, threshold: f32) {
    img.data
        .iter_mut()
        .filter(|x| **x >= threshold)
        .for_each(|x| *x = 1.0 - *x);
}

/// Gaussian blur with standard deviation `sigma` (pixels), kernel radius `⌈3σ⌉`, edges
/// reflected.
pub fn gaussian_blur(img: &mut Image, sigma: f32) {
    let radius = (3.0 * sigma).ceil().max(1.0) as usize;
    let kernel: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let d = i as f32 - radius as f32;
            (-(d * d) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let sum: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / sum).collect();
    // Reflected index (…, 2, 1, 0, 1, 2, …, n−2, n−1, n−2, …) of position `i − radius`.
    let reflect = |i: usize, n: usize| -> usize {
        if n == 1 {
            return 0;
        }
        let period = 2 * (n - 1);
        let m = (i + period * (radius / period + 1) - radius) % period;
        if m < n {
            m
        } else {
            period - m
        }
    };
    let (h, w) = (img.height, img.width);
    // Index tables: the padded line holds the reflected neighbours, so the inner loops are
    // plain dot products.
    let cols: Vec<usize> = (0..w + 2 * radius).map(|i| reflect(i, w)).collect();
    let rows: Vec<usize> = (0..h + 2 * radius).map(|i| reflect(i, h)).collect();
    let mut line = vec![0f32; w + 2 * radius];
    let mut tmp = vec![0f32; h * w];
    for c in 0..img.channels {
        let plane = &mut img.data[c * h * w..(c + 1) * h * w];
        // Horizontal: the padded row, then one scaled add per tap.
        for (y, dst) in tmp.chunks_exact_mut(w).enumerate() {
            let row = &plane[y * w..(y + 1) * w];
            for (d, &src) in line.iter_mut().zip(&cols) {
                *d = row[src];
            }
            dst.fill(0.0);
            for (k, &kv) in kernel.iter().enumerate() {
                axpy(dst, kv, &line[k..k + w]);
            }
        }
        // Vertical: whole reflected rows of the horizontal result, scaled and added.
        for (y, dst) in plane.chunks_exact_mut(w).enumerate() {
            dst.fill(0.0);
            for (k, &kv) in kernel.iter().enumerate() {
                let src = rows[y + k];
                axpy(dst, kv, &tmp[src * w..(src + 1) * w]);
            }
        }
    }
}

/// `(x − mean[c]) / std[c]` per channel.
pub fn normalize(img: &mut Image, mean: &[f32], std: &[f32]) {
    let n = img.plane();
    for c in 0..img.channels {
        let (m, s) = (mean[c % mean.len()], std[c % std.len()]);
        img.data[c * n..(c + 1) * n]
            .iter_mut()
            .for_each(|x| *x = (*x - m) / s);
    }
}

/// Resizes so the shorter side is `short` (bilinear, antialiased), then crops the centre
/// `size × size`: the evaluation transform.
pub fn resize_center_crop(img: &Image, short: usize, size: usize) -> Image {
    let (h, w) = (img.height, img.width);
    let (nh, nw) = if h <= w {
        (
            short,
            ((w as f64 * short as f64 / h as f64).round() as usize).max(1),
        )
    } else {
        (
            ((h as f64 * short as f64 / w as f64).round() as usize).max(1),
            short,
        )
    };
    let resized = if (nh, nw) == (h, w) {
        img.clone()
    } else {
        resized_crop(
            img,
            CropBox {
                top: 0,
                left: 0,
                height: h,
                width: w,
            },
            nh,
            nw,
        )
    };
    let (ch, cw) = (size.min(nh), size.min(nw));
    let top = ((nh - ch) as f64 / 2.0).round() as usize;
    let left = ((nw - cw) as f64 / 2.0).round() as usize;
    let mut out = Image::zeros(img.channels, size, size);
    for c in 0..img.channels {
        for y in 0..ch {
            for x in 0..cw {
                out.data[(c * size + y) * size + x] = resized.at(c, top + y, left + x);
            }
        }
    }
    out
}
