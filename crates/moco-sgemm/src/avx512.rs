//! The AVX-512 microkernel: a 14 × 32 tile of `C` in 28 `zmm` registers (`crate::microkernel`
//! with `__m512`). Each step of `k` loads one 32-wide row of the `B` panel (two registers) and
//! broadcasts the 14 values of the `A` panel's column: 28 fused multiply-adds for 16 loads,
//! 3 registers to spare.

pub(crate) const MR: usize = 14;
pub(crate) const NR: usize = 32;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};
    use crate::vector::Vector;

    impl Vector for __m512 {
        const LANES: usize = 16;
        type Mask = u16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn first(lanes: usize) -> u16 {
            ((1u32 << lanes) - 1) as u16
        }
        #[inline(always)]
        unsafe fn load_masked(mask: u16, p: *const f32) -> Self {
            unsafe { _mm512_maskz_loadu_ps(mask, p) }
        }
        #[inline(always)]
        unsafe fn store_masked(mask: u16, p: *mut f32, v: Self) {
            unsafe { _mm512_mask_storeu_ps(p, mask, v) }
        }
        #[inline(always)]
        unsafe fn transpose(block: &mut [Self; 16]) {
            *block = unsafe { transpose16(*block) };
        }
    }

    /// The transpose of a 16 × 16 block held as 16 row vectors: 64 shuffles.
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
        use std::arch::x86_64::*;
        // Pairs of rows interleaved by 32 bits, then by 64 bits: `u[4g + c]` holds, in its 128-bit
        // lane `l`, column `4l + c` of rows `4g .. 4g + 4`.
        let mut t = [_mm512_setzero_ps(); 16];
        for x in 0..16 {
            let (a, b) = (r[x / 2 * 2], r[x / 2 * 2 + 1]);
            t[x] = if x % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            };
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for (x, out) in u.iter_mut().enumerate() {
            let (g, c) = (x / 4, x % 4);
            let a = _mm512_castps_pd(t[4 * g + c / 2]);
            let b = _mm512_castps_pd(t[4 * g + 2 + c / 2]);
            *out = _mm512_castpd_ps(if c % 2 == 0 {
                _mm512_unpacklo_pd(a, b)
            } else {
                _mm512_unpackhi_pd(a, b)
            });
        }
        // Lanes gathered across the four groups: column `4l + c` from lane `l` of `u[c]`,
        // `u[4 + c]`, `u[8 + c]`, `u[12 + c]`.
        let mut out = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            let even_low = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            let odd_low = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
            let even_high = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            let odd_high = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
            out[c] = _mm512_shuffle_f32x4::<0x88>(even_low, even_high);
            out[8 + c] = _mm512_shuffle_f32x4::<0xdd>(even_low, even_high);
            out[4 + c] = _mm512_shuffle_f32x4::<0x88>(odd_low, odd_high);
            out[12 + c] = _mm512_shuffle_f32x4::<0xdd>(odd_low, odd_high);
        }
        out
    }

    crate::microkernel::instantiate!("avx512f", __m512);
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{pack_b_cols, pack_b_rows, pack_cols, pack_rows, tile};
