//! The AVX2 + FMA microkernel: a 6 × 16 tile of `C` in 12 `ymm` registers. Each step of `k`
//! loads one 16-wide row of the `B` panel (two registers) and broadcasts the 6 values of the
//! `A` panel's column: 12 fused multiply-adds for 8 loads.

use crate::kernel::{APanel, BPanel};

pub(crate) const MR: usize = 6;
pub(crate) const NR: usize = 16;

/// See [`crate::Kernel::tile`]: a tile of `rows × cols` (at most 6 × 16) written through
/// masks, with one register per row when `cols ≤ 8`.
///
/// # Safety
/// AVX2 and FMA are available; `a` holds `kc · MR` values (packed) or `MR × kc` readable
/// values; `b` holds `kc` readable groups of `NR`; `c` has `rows` writable rows of `cols`,
/// `rs_c` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile(
    kc: usize,
    a: APanel,
    b: BPanel,
    c: *mut f32,
    rs_c: usize,
    (rows, cols): (usize, usize),
    alpha: f32,
    beta: f32,
) {
    let tile = Tile {
        c,
        rs_c,
        rows,
        cols,
        alpha,
        beta,
    };
    unsafe {
        match (a, cols <= 8) {
            (APanel::Packed(a), true) => tile_of::<1, true>(kc, (a, 1, MR), b, tile),
            (APanel::Packed(a), false) => tile_of::<2, true>(kc, (a, 1, MR), b, tile),
            (APanel::InPlace { ptr, row, step }, true) => {
                tile_of::<1, false>(kc, (ptr, row, step), b, tile)
            }
            (APanel::InPlace { ptr, row, step }, false) => {
                tile_of::<2, false>(kc, (ptr, row, step), b, tile)
            }
        }
    }
}

/// Where a tile goes: `C`'s first element and row stride, the valid extent, `α` and `β`.
#[derive(Clone, Copy)]
struct Tile {
    c: *mut f32,
    rs_c: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    beta: f32,
}

/// The tile with `V` registers per row, `A` packed (`PACKED`) or read in place (element
/// `(i, p)` at `i · row + p · step`) (`8 · V` columns).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_of<const V: usize, const PACKED: bool>(
    kc: usize,
    (a, row, step): (*const f32, usize, usize),
    b: BPanel,
    t: Tile,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); V]; MR];
    for p in 0..kc {
        // SAFETY: step `p` of the panels lies inside them.
        unsafe {
            // Packed panels have constant strides, so the compiler folds them into addresses.
            let (ap, rs) = if PACKED {
                (a.add(p * MR), 1)
            } else {
                (a.add(p * step), row)
            };
            let mut bv = [_mm256_setzero_ps(); V];
            for (h, v) in bv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(b.ptr.add(p * b.step + 8 * h));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*ap.add(i * rs));
                for (x, &v) in row.iter_mut().zip(&bv) {
                    *x = _mm256_fmadd_ps(ai, v, *x);
                }
            }
        }
    }
    let alpha = _mm256_set1_ps(t.alpha);
    let scale_c = _mm256_set1_ps(t.beta);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut masks = [_mm256_setzero_si256(); V];
    for (h, mask) in masks.iter_mut().enumerate() {
        let lanes = t.cols.saturating_sub(8 * h).min(8) as i32;
        *mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), lane);
    }
    for (i, row) in acc.iter().enumerate() {
        if i >= t.rows {
            break;
        }
        for (h, &x) in row.iter().enumerate() {
            // SAFETY: the masked lanes of the tile's rows are writable.
            unsafe {
                let dst = t.c.add(i * t.rs_c + 8 * h);
                let mut out = _mm256_mul_ps(alpha, x);
                if t.beta != 0.0 {
                    out = _mm256_fmadd_ps(scale_c, _mm256_maskload_ps(dst, masks[h]), out);
                }
                _mm256_maskstore_ps(dst, masks[h], out);
            }
        }
    }
}

/// Packs a whole `MR × kc` panel of a row-major `A` (`lda` between rows) into `dst`
/// (`kc · MR` values, see `crate::pack::pack_a`): 8 columns at a time, the 6 rows loaded as
/// vectors and transposed in registers.
///
/// # Safety
/// AVX2 is available; the `MR × kc` block at `a` is readable; `dst` holds `kc · MR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn pack_rows(dst: &mut [f32], a: *const f32, lda: usize, kc: usize) {
    use std::arch::x86_64::*;
    let dst = &mut dst[..kc * MR];
    let full = kc / 8 * 8;
    let mask = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
    let mut rows = [_mm256_setzero_ps(); 8];
    for p0 in (0..full).step_by(8) {
        for (i, row) in rows.iter_mut().take(MR).enumerate() {
            // SAFETY: 8 columns from `p0` of row `i` lie inside the block.
            *row = unsafe { _mm256_loadu_ps(a.add(i * lda + p0)) };
        }
        for (q, column) in transpose8(rows).iter().enumerate() {
            // SAFETY: group `p0 + q` is `MR` values inside `dst`.
            unsafe { _mm256_maskstore_ps(dst.as_mut_ptr().add((p0 + q) * MR), mask, *column) };
        }
    }
    for p in full..kc {
        for i in 0..MR {
            // SAFETY: element `(i, p)` lies inside the block.
            dst[p * MR + i] = unsafe { *a.add(i * lda + p) };
        }
    }
}

/// The transpose of an 8 × 8 block held as 8 row vectors: 24 shuffles.
#[cfg(target_arch = "x86_64")]
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

/// The lanes below `n` of an 8-lane mask.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn first_lanes(n: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lane)
}

/// Packs `rows ≤ MR` rows and `kc` columns of a column-major `A` (`lda` between columns) into
/// `dst` (`kc · MR` values, rows past `rows` zero): one masked load and store per column.
///
/// # Safety
/// AVX2 is available; the `rows × kc` block at `a` is readable; `dst` holds `kc · MR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn pack_cols(dst: &mut [f32], a: *const f32, lda: usize, rows: usize, kc: usize) {
    use std::arch::x86_64::*;
    let dst = &mut dst[..kc * MR];
    let (read, write) = (first_lanes(rows), first_lanes(MR));
    for p in 0..kc {
        // SAFETY: column `p` of the block is readable over `rows` values; group `p` of `dst`
        // holds `MR`.
        unsafe {
            let column = _mm256_maskload_ps(a.add(p * lda), read);
            _mm256_maskstore_ps(dst.as_mut_ptr().add(p * MR), write, column);
        }
    }
}

/// Packs `kc` rows and `cols ≤ NR` columns of a row-major `B` (`ldb` between rows) into one
/// panel `dst` (`kc · NR` values, columns past `cols` zero): two masked loads per row.
///
/// # Safety
/// AVX2 is available; the `kc × cols` block at `b` is readable; `dst` holds `kc · NR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn pack_b_rows(
    dst: &mut [f32],
    b: *const f32,
    ldb: usize,
    cols: usize,
    kc: usize,
) {
    use std::arch::x86_64::*;
    let dst = &mut dst[..kc * NR];
    let (low, high) = (first_lanes(cols), first_lanes(cols.saturating_sub(8)));
    for p in 0..kc {
        // SAFETY: row `p` of the block is readable over `cols` values; group `p` of `dst`
        // holds `NR`.
        unsafe {
            let src = b.add(p * ldb);
            let out = dst.as_mut_ptr().add(p * NR);
            _mm256_storeu_ps(out, _mm256_maskload_ps(src, low));
            _mm256_storeu_ps(out.add(8), _mm256_maskload_ps(src.add(8), high));
        }
    }
}

/// Packs `kc` rows and `cols ≤ NR` columns of a column-major `B` (`ldb` between columns) into
/// one panel `dst` (`kc · NR` values, columns past `cols` zero): blocks of 8 × 8 loaded along
/// the columns and transposed in registers.
///
/// # Safety
/// AVX2 is available; the `kc × cols` block at `b` is readable; `dst` holds `kc · NR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn pack_b_cols(
    dst: &mut [f32],
    b: *const f32,
    ldb: usize,
    cols: usize,
    kc: usize,
) {
    use std::arch::x86_64::*;
    let dst = &mut dst[..kc * NR];
    let full = kc / 8 * 8;
    for j0 in [0, 8] {
        let width = cols.saturating_sub(j0).min(8);
        let mut lines = [_mm256_setzero_ps(); 8];
        for p0 in (0..full).step_by(8) {
            for (j, line) in lines.iter_mut().enumerate().take(width) {
                // SAFETY: 8 rows from `p0` of column `j0 + j` lie inside the block.
                *line = unsafe { _mm256_loadu_ps(b.add((j0 + j) * ldb + p0)) };
            }
            for (q, group) in transpose8(lines).iter().enumerate() {
                // SAFETY: group `p0 + q` holds `NR` values from `(p0 + q) · NR`.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add((p0 + q) * NR + j0), *group) };
            }
        }
        for p in full..kc {
            for j in 0..8 {
                // SAFETY: element `(p, j0 + j)` lies inside the block when `j < width`.
                dst[p * NR + j0 + j] = if j < width {
                    unsafe { *b.add((j0 + j) * ldb + p) }
                } else {
                    0.0
                };
            }
        }
    }
}
