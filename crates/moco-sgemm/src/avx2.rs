//! The AVX2 + FMA microkernel: a 6 × 16 tile of `C` in 12 `ymm` registers (`crate::microkernel`
//! with `__m256`). Each step of `k` loads one 16-wide row of the `B` panel (two registers) and
//! broadcasts the 6 values of the `A` panel's column: 12 fused multiply-adds for 8 loads.

pub(crate) const MR: usize = 6;
pub(crate) const NR: usize = 16;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};
    use crate::vector::Vector;

    impl Vector for __m256 {
        const LANES: usize = 8;
        type Mask = __m256i;
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn first(lanes: usize) -> __m256i {
            unsafe {
                let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes as i32), lane)
            }
        }
        #[inline(always)]
        unsafe fn load_masked(mask: __m256i, p: *const f32) -> Self {
            unsafe { _mm256_maskload_ps(p, mask) }
        }
        #[inline(always)]
        unsafe fn store_masked(mask: __m256i, p: *mut f32, v: Self) {
            unsafe { _mm256_maskstore_ps(p, mask, v) }
        }
        #[inline(always)]
        unsafe fn transpose(block: &mut [Self; 16]) {
            let mut rows = [unsafe { _mm256_setzero_ps() }; 8];
            rows.copy_from_slice(&block[..8]);
            block[..8].copy_from_slice(&unsafe { transpose8(rows) });
        }
    }

    /// The transpose of an 8 × 8 block held as 8 row vectors: 24 shuffles.
    #[target_feature(enable = "avx2,fma")]
    fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
        use std::arch::x86_64::*;
        let mut t = [_mm256_setzero_ps(); 8];
        for x in 0..8 {
            let (a, b) = (r[x / 2 * 2], r[x / 2 * 2 + 1]);
            t[x] = if x % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            };
        }
        // `u[4g + c]` holds column `c` (low lane) and `4 + c` (high lane) of rows `4g .. 4g + 4`.
        let mut u = [_mm256_setzero_ps(); 8];
        for (x, out) in u.iter_mut().enumerate() {
            let (g, c) = (x / 4, x % 4);
            let (a, b) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
            *out = if c % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(a, b)
            } else {
                _mm256_shuffle_ps::<0xee>(a, b)
            };
        }
        let mut out = [_mm256_setzero_ps(); 8];
        for c in 0..4 {
            out[c] = _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]);
            out[4 + c] = _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]);
        }
        out
    }

    crate::microkernel::instantiate!("avx2,fma", __m256);
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{pack_b_cols, pack_b_rows, pack_cols, pack_rows, tile};
