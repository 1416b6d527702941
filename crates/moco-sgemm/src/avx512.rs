//! The AVX-512 microkernel: a 14 × 32 tile of `C` in 28 `zmm` registers. Each step of `k`
//! loads one 32-wide row of the `B` panel (two registers) and broadcasts the 14 values of the
//! `A` panel's column: 28 fused multiply-adds for 16 loads, 3 registers to spare.

use crate::kernel::{APanel, BPanel};

pub(crate) const MR: usize = 14;
pub(crate) const NR: usize = 32;

/// See [`crate::Kernel::tile`]: a tile of `rows × cols` (at most 14 × 32) written through
/// masks, with one register per row when `cols ≤ 16`.
///
/// # Safety
/// AVX-512F is available; `a` holds `kc · MR` values (packed) or `MR × kc` readable values;
/// `b` holds `kc` readable groups of `NR`; `c` has `rows` writable rows of `cols`, `rs_c` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
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
        match (a, cols <= 16) {
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
/// `(i, p)` at `i · row + p · step`) (`16 · V` columns).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_of<const V: usize, const PACKED: bool>(
    kc: usize,
    (a, row, step): (*const f32, usize, usize),
    b: BPanel,
    t: Tile,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; MR];
    for p in 0..kc {
        // SAFETY: step `p` of the panels lies inside them.
        unsafe {
            // Packed panels have constant strides, so the compiler folds them into addresses.
            let (ap, rs) = if PACKED {
                (a.add(p * MR), 1)
            } else {
                (a.add(p * step), row)
            };
            let mut bv = [_mm512_setzero_ps(); V];
            for (h, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(b.ptr.add(p * b.step + 16 * h));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(i * rs));
                for (x, &v) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(ai, v, *x);
                }
            }
        }
    }
    let alpha = _mm512_set1_ps(t.alpha);
    let scale_c = _mm512_set1_ps(t.beta);
    let mut masks = [0u16; V];
    for (h, mask) in masks.iter_mut().enumerate() {
        let lanes = t.cols.saturating_sub(16 * h).min(16);
        *mask = ((1u32 << lanes) - 1) as u16;
    }
    for (i, row) in acc.iter().enumerate() {
        if i >= t.rows {
            break;
        }
        for (h, &x) in row.iter().enumerate() {
            // SAFETY: the masked lanes of the tile's rows are writable.
            unsafe {
                let dst = t.c.add(i * t.rs_c + 16 * h);
                let mut out = _mm512_mul_ps(alpha, x);
                if t.beta != 0.0 {
                    out = _mm512_fmadd_ps(scale_c, _mm512_maskz_loadu_ps(masks[h], dst), out);
                }
                _mm512_mask_storeu_ps(dst, masks[h], out);
            }
        }
    }
}

/// Packs a whole `MR × kc` panel of a row-major `A` (`lda` between rows) into `dst`
/// (`kc · MR` values, see `crate::pack::pack_a`): 16 columns at a time, the 14 rows loaded as
/// vectors and transposed in registers.
///
/// # Safety
/// AVX-512F is available; the `MR × kc` block at `a` is readable; `dst` holds `kc · MR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn pack_rows(dst: &mut [f32], a: *const f32, lda: usize, kc: usize) {
    use std::arch::x86_64::*;
    let dst = &mut dst[..kc * MR];
    let full = kc / 16 * 16;
    let mut rows = [_mm512_setzero_ps(); 16];
    for p0 in (0..full).step_by(16) {
        for (i, row) in rows.iter_mut().take(MR).enumerate() {
            // SAFETY: 16 columns from `p0` of row `i` lie inside the block.
            *row = unsafe { _mm512_loadu_ps(a.add(i * lda + p0)) };
        }
        let columns = transpose16(rows);
        for (q, column) in columns.iter().enumerate() {
            // SAFETY: group `p0 + q` is `MR` values inside `dst`.
            unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add((p0 + q) * MR), 0x3fff, *column) };
        }
    }
    for p in full..kc {
        for i in 0..MR {
            // SAFETY: element `(i, p)` lies inside the block.
            dst[p * MR + i] = unsafe { *a.add(i * lda + p) };
        }
    }
}

/// The transpose of a 16 × 16 block held as 16 row vectors: 64 shuffles.
#[cfg(target_arch = "x86_64")]
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

/// Packs `rows ≤ MR` rows and `kc` columns of a column-major `A` (`lda` between columns) into
/// `dst` (`kc · MR` values, rows past `rows` zero): one masked load and store per column.
///
/// # Safety
/// AVX-512F is available; the `rows × kc` block at `a` is readable; `dst` holds `kc · MR`
/// values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn pack_cols(dst: &mut [f32], a: *const f32, lda: usize, rows: usize, kc: usize) {
    use std::arch::x86_64::*;
    let dst = &mut dst[..kc * MR];
    let read = ((1u32 << rows) - 1) as u16;
    let write = ((1u32 << MR) - 1) as u16;
    for p in 0..kc {
        // SAFETY: column `p` of the block is readable over `rows` values; group `p` of `dst`
        // holds `MR`.
        unsafe {
            let column = _mm512_maskz_loadu_ps(read, a.add(p * lda));
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(p * MR), write, column);
        }
    }
}

/// Packs `kc` rows and `cols ≤ NR` columns of a row-major `B` (`ldb` between rows) into one
/// panel `dst` (`kc · NR` values, columns past `cols` zero): two masked loads per row.
///
/// # Safety
/// AVX-512F is available; the `kc × cols` block at `b` is readable; `dst` holds `kc · NR`
/// values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn pack_b_rows(
    dst: &mut [f32],
    b: *const f32,
    ldb: usize,
    cols: usize,
    kc: usize,
) {
    use std::arch::x86_64::*;
    let dst = &mut dst[..kc * NR];
    let low = ((1u32 << cols.min(16)) - 1) as u16;
    let high = ((1u32 << cols.saturating_sub(16)) - 1) as u16;
    for p in 0..kc {
        // SAFETY: row `p` of the block is readable over `cols` values; group `p` of `dst`
        // holds `NR`.
        unsafe {
            let src = b.add(p * ldb);
            let out = dst.as_mut_ptr().add(p * NR);
            _mm512_storeu_ps(out, _mm512_maskz_loadu_ps(low, src));
            _mm512_storeu_ps(out.add(16), _mm512_maskz_loadu_ps(high, src.add(16)));
        }
    }
}

/// Packs `kc` rows and `cols ≤ NR` columns of a column-major `B` (`ldb` between columns) into
/// one panel `dst` (`kc · NR` values, columns past `cols` zero): blocks of 16 × 16 loaded along
/// the columns and transposed in registers.
///
/// # Safety
/// AVX-512F is available; the `kc × cols` block at `b` is readable; `dst` holds `kc · NR`
/// values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn pack_b_cols(
    dst: &mut [f32],
    b: *const f32,
    ldb: usize,
    cols: usize,
    kc: usize,
) {
    use std::arch::x86_64::*;
    let dst = &mut dst[..kc * NR];
    let full = kc / 16 * 16;
    for j0 in [0, 16] {
        let width = cols.saturating_sub(j0).min(16);
        let mut lines = [_mm512_setzero_ps(); 16];
        for p0 in (0..full).step_by(16) {
            for (j, line) in lines.iter_mut().enumerate().take(width) {
                // SAFETY: 16 rows from `p0` of column `j0 + j` lie inside the block.
                *line = unsafe { _mm512_loadu_ps(b.add((j0 + j) * ldb + p0)) };
            }
            for (q, group) in transpose16(lines).iter().enumerate() {
                // SAFETY: group `p0 + q` holds `NR` values from `(p0 + q) · NR`.
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add((p0 + q) * NR + j0), *group) };
            }
        }
        for p in full..kc {
            for j in 0..16 {
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
