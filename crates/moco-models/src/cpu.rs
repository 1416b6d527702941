//! Kernels for the CPU backends where Burn's own are slow (chosen through [`crate::kernels`]).
//!
//! The exact (erf) GELU of the CPU backends evaluates a scalar `erff` per element on one
//! thread, forward and again backward. [`gelu`] evaluates Φ(x) and φ(x) in one vectorisable,
//! multi-threaded pass and returns `x · g + t` with the constants `g = Φ(x) + x·φ(x)` (the
//! derivative of the exact GELU) and `t = −x²·φ(x)`: the value is x·Φ(x), the gradient g,
//! and autodiff records two element-wise operations instead of the GELU and its backward.

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

/// The exact GELU, `x · Φ(x)` with Φ the standard normal CDF, through the host pass described
/// in the module docs (f32 tensors; other dtypes go through [`crate::activation::gelu_erf`]).
/// Meant for the backends whose tensors live in host memory, where reading values back is free.
/// On the flex backend it runs as one operation with its own backward
/// (`moco_models::flex::gelu`): no copies and no constant tensors.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() != DType::F32 {
        return crate::activation::gelu_erf(x);
    }
    #[cfg(feature = "flex")]
    let x = match crate::flex::gelu(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let device = x.device();
    let shape = x.shape();
    let values = match x.clone().detach().into_data().try_into_vec::<f32>() {
        Ok(v) => v,
        Err(_) => return crate::activation::gelu_erf(x),
    };
    let tensor = |v: Vec<f32>| Tensor::<D>::from_data(TensorData::new(v, shape.clone()), &device);
    if device.is_autodiff() {
        let (slope, offset) = gelu_slope_and_offset(&values);
        x.mul(tensor(slope)).add(tensor(offset))
    } else {
        tensor(gelu_values(&values))
    }
}

const CHUNK: usize = 1 << 14;

/// GELU(x) = x·Φ(x) for every value.
pub fn gelu_values(values: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    out.par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(o, v)| {
            for (o, &x) in o.iter_mut().zip(v) {
                *o = x * cdf_pdf(x).0;
            }
        });
    out
}

/// The gradient of the GELU's input, `grad · (Φ(x) + x·φ(x))`, for every value.
pub fn gelu_backward(values: &[f32], grad: &[f32]) -> Vec<f32> {
    assert_eq!(values.len(), grad.len(), "gelu backward: lengths");
    let mut out = vec![0f32; values.len()];
    out.par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
        .for_each(|(o, (v, g))| {
            for ((o, &x), &g) in o.iter_mut().zip(v).zip(g) {
                let (cdf, pdf) = cdf_pdf(x);
                *o = g * (cdf + x * pdf);
            }
        });
    out
}

/// The GELU's derivative `g = Φ(x) + x·φ(x)` and the offset `t = −x²·φ(x)` with
/// `x·g + t = x·Φ(x)`, for every value.
pub fn gelu_slope_and_offset(values: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut slope = vec![0f32; values.len()];
    let mut offset = vec![0f32; values.len()];
    slope
        .par_chunks_mut(CHUNK)
        .zip(offset.par_chunks_mut(CHUNK))
        .zip(values.par_chunks(CHUNK))
        .for_each(|((g, t), v)| {
            for ((g, t), &x) in g.iter_mut().zip(t.iter_mut()).zip(v) {
                let (cdf, pdf) = cdf_pdf(x);
                let xpdf = x * pdf;
                *g = cdf + xpdf;
                *t = -x * xpdf;
            }
        });
    (slope, offset)
}

/// Φ(x) and φ(x) without branches or library calls, so that loops over it vectorise:
/// erf by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7; Φ within 3e-7 of the exact
/// value in f32 arithmetic), e^(−x²/2) by [`exp`].
#[inline(always)]
fn cdf_pdf(x: f32) -> (f32, f32) {
    const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let z = (x * INV_SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let gauss = exp(-0.5 * x * x);
    let erf_abs = 1.0 - poly * gauss;
    let erf = erf_abs.copysign(x);
    (0.5 + 0.5 * erf, INV_SQRT_2PI * gauss)
}

/// e^x for x ≤ 0 (down to underflow), to f32 rounding: Cody–Waite reduction by ln 2 and a
/// degree-6 polynomial, the power of two built from the exponent bits.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round to nearest without a library call: adding 1.5·2^23 pushes the fraction out.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    // The integer n sits in the low mantissa bits of `shifted`: read it with integer
    // arithmetic (a float-to-int `as` saturates and would not vectorise).
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    p * f32::from_bits(((n_int + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_library() {
        let mut worst = 0f32;
        for i in 0..=20_000 {
            let x = -87.0 * i as f32 / 20_000.0;
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 4e-7, "relative error {worst}");
    }

    #[test]
    fn cdf_and_density_match_erf() {
        for i in -4_000..=4_000 {
            let x = i as f32 / 400.0;
            let (c, d) = cdf_pdf(x);
            let xd = x as f64;
            let exact_c = 0.5 * (1.0 + libm_erf(xd / std::f64::consts::SQRT_2));
            let exact_d = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!(
                (c as f64 - exact_c).abs() < 3e-7,
                "Φ({x}) = {c}, exact {exact_c}"
            );
            assert!(
                (d as f64 - exact_d).abs() < 1e-7,
                "φ({x}) = {d}, exact {exact_d}"
            );
        }
    }

    /// erf in f64 by its Taylor series (|x| ≤ 3) or continued fraction (beyond), for tests.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 3.0 {
            // erfc continued fraction (Lentz), ample accuracy beyond 3.
            let z = x.abs();
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (z + f);
            }
            let erfc = (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f);
            return x.signum() * (1.0 - erfc);
        }
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    }
}
