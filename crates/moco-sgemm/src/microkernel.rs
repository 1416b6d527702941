//! The register-blocked microkernel and the packing it reads, written once for any vector
//! register ([`Vector`]); `crate::avx512` and `crate::avx2` instantiate them ([`instantiate`])
//! inside functions compiled with their instructions, where everything here is inlined.
//!
//! The tile: `MR` rows of `C` by `NR = 2 · LANES` columns, `MR × 2` accumulators. Each step of
//! `k` loads one row of the `B` panel (two registers) and broadcasts the `MR` values of the `A`
//! panel's column.

use crate::kernel::{APanel, BPanel};
use crate::vector::Vector;

/// Where a tile goes: `C`'s first element and row stride, the valid extent, `α` and `β`.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub c: *mut f32,
    pub rs_c: usize,
    pub rows: usize,
    pub cols: usize,
    pub alpha: f32,
    pub beta: f32,
}

/// `C[0..rows, 0..cols] = α·Ã·B̃ + β·C` (see `crate::Kernel::tile`), with one register per
/// row when the tile has at most `LANES` columns.
///
/// # Safety
/// As `crate::Kernel::tile`; called from a function compiled with `W`'s instructions.
#[inline(always)]
pub(crate) unsafe fn tile<W: Vector, const MR: usize, const NR: usize>(
    kc: usize,
    a: APanel,
    b: BPanel,
    t: Tile,
) {
    unsafe {
        match (a, t.cols <= W::LANES) {
            (APanel::Packed(a), true) => tile_of::<W, MR, NR, 1, true>(kc, (a, 1, MR), b, t),
            (APanel::Packed(a), false) => tile_of::<W, MR, NR, 2, true>(kc, (a, 1, MR), b, t),
            (APanel::InPlace { ptr, row, step }, true) => {
                tile_of::<W, MR, NR, 1, false>(kc, (ptr, row, step), b, t)
            }
            (APanel::InPlace { ptr, row, step }, false) => {
                tile_of::<W, MR, NR, 2, false>(kc, (ptr, row, step), b, t)
            }
        }
    }
}

/// The tile with `V` registers per row, `A` packed (`PACKED`: constant strides the compiler
/// folds into addresses) or read in place (element `(i, p)` at `i · row + p · step`).
#[inline(always)]
unsafe fn tile_of<
    W: Vector,
    const MR: usize,
    const NR: usize,
    const V: usize,
    const PACKED: bool,
>(
    kc: usize,
    (a, row, step): (*const f32, usize, usize),
    b: BPanel,
    t: Tile,
) {
    // SAFETY (whole body): step `p` of the panels lies inside them; the masked lanes of the
    // tile's `rows` rows are writable.
    unsafe {
        let mut acc = [[W::zero(); V]; MR];
        for p in 0..kc {
            let (ap, rs) = if PACKED {
                (a.add(p * MR), 1)
            } else {
                (a.add(p * step), row)
            };
            let mut bv = [W::zero(); V];
            for (h, v) in bv.iter_mut().enumerate() {
                *v = W::load(b.ptr.add(p * b.step + W::LANES * h));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = W::splat(*ap.add(i * rs));
                for (x, &v) in row.iter_mut().zip(&bv) {
                    *x = W::mul_add(ai, v, *x);
                }
            }
        }
        let (alpha, scale_c) = (W::splat(t.alpha), W::splat(t.beta));
        let mut masks = [W::first(0); V];
        for (h, mask) in masks.iter_mut().enumerate() {
            *mask = W::first(t.cols.saturating_sub(W::LANES * h).min(W::LANES));
        }
        for (i, row) in acc.iter().enumerate() {
            if i >= t.rows {
                break;
            }
            for (h, &x) in row.iter().enumerate() {
                let dst = t.c.add(i * t.rs_c + W::LANES * h);
                let mut out = W::mul(alpha, x);
                if t.beta != 0.0 {
                    out = W::mul_add(scale_c, W::load_masked(masks[h], dst), out);
                }
                W::store_masked(masks[h], dst, out);
            }
        }
    }
}

/// Packs a whole `MR × kc` panel of a row-major `A` (`lda` between rows) into `dst`
/// (`kc` groups of `MR`, see `crate::pack::pack_a`): `LANES` columns at a time, the rows
/// loaded as registers and transposed.
///
/// # Safety
/// The `MR × kc` block at `a` is readable; `dst` holds `kc · MR` values; `MR ≤ LANES`.
#[inline(always)]
pub(crate) unsafe fn pack_rows<W: Vector, const MR: usize>(
    dst: &mut [f32],
    a: *const f32,
    lda: usize,
    kc: usize,
) {
    let dst = &mut dst[..kc * MR];
    let full = kc / W::LANES * W::LANES;
    // SAFETY (whole body): `LANES` columns from `p0` of the block's rows are readable; group
    // `p0 + q` is `MR` values of `dst`. Registers past `MR` hold whatever the last transpose
    // left: they land in lanes past `MR`, which are not stored.
    unsafe {
        let write = W::first(MR);
        let mut block = [W::zero(); 16];
        for p0 in (0..full).step_by(W::LANES) {
            for (i, row) in block.iter_mut().take(MR).enumerate() {
                *row = W::load(a.add(i * lda + p0));
            }
            W::transpose(&mut block);
            for (q, column) in block.iter().take(W::LANES).enumerate() {
                W::store_masked(write, dst.as_mut_ptr().add((p0 + q) * MR), *column);
            }
        }
        for p in full..kc {
            for i in 0..MR {
                dst[p * MR + i] = *a.add(i * lda + p);
            }
        }
    }
}

/// Packs `rows ≤ MR` rows and `kc` columns of a column-major `A` (`lda` between columns) into
/// `dst` (`kc` groups of `MR`, rows past `rows` zero): one masked load and store per column.
///
/// # Safety
/// The `rows × kc` block at `a` is readable; `dst` holds `kc · MR` values; `MR ≤ LANES`.
#[inline(always)]
pub(crate) unsafe fn pack_cols<W: Vector, const MR: usize>(
    dst: &mut [f32],
    a: *const f32,
    lda: usize,
    rows: usize,
    kc: usize,
) {
    let dst = &mut dst[..kc * MR];
    // SAFETY: column `p` of the block is readable over `rows` values; group `p` of `dst` holds
    // `MR`.
    unsafe {
        let (read, write) = (W::first(rows), W::first(MR));
        for p in 0..kc {
            let column = W::load_masked(read, a.add(p * lda));
            W::store_masked(write, dst.as_mut_ptr().add(p * MR), column);
        }
    }
}

/// Packs `kc` rows and `cols ≤ NR` columns of a row-major `B` (`ldb` between rows) into one
/// panel `dst` (`kc` groups of `NR`, columns past `cols` zero): masked loads, whole stores.
///
/// # Safety
/// The `kc × cols` block at `b` is readable; `dst` holds `kc · NR` values; `NR = 2 · LANES`.
#[inline(always)]
pub(crate) unsafe fn pack_b_rows<W: Vector, const NR: usize>(
    dst: &mut [f32],
    b: *const f32,
    ldb: usize,
    cols: usize,
    kc: usize,
) {
    let dst = &mut dst[..kc * NR];
    // SAFETY: row `p` of the block is readable over `cols` values; group `p` of `dst` holds
    // `NR`.
    unsafe {
        let low = W::first(cols.min(W::LANES));
        let high = W::first(cols.saturating_sub(W::LANES).min(W::LANES));
        for p in 0..kc {
            let (src, out) = (b.add(p * ldb), dst.as_mut_ptr().add(p * NR));
            W::store(out, W::load_masked(low, src));
            W::store(out.add(W::LANES), W::load_masked(high, src.add(W::LANES)));
        }
    }
}

/// Packs `kc` rows and `cols ≤ NR` columns of a column-major `B` (`ldb` between columns) into
/// one panel `dst` (`kc` groups of `NR`, columns past `cols` zero): `LANES × LANES` blocks
/// loaded along the columns and transposed.
///
/// # Safety
/// The `kc × cols` block at `b` is readable; `dst` holds `kc · NR` values; `NR = 2 · LANES`.
#[inline(always)]
pub(crate) unsafe fn pack_b_cols<W: Vector, const NR: usize>(
    dst: &mut [f32],
    b: *const f32,
    ldb: usize,
    cols: usize,
    kc: usize,
) {
    let dst = &mut dst[..kc * NR];
    let full = kc / W::LANES * W::LANES;
    // SAFETY (whole body): `LANES` rows from `p0` of the block's columns `j0 + j < cols` are
    // readable; group `p0 + q` holds `NR` values of `dst`.
    unsafe {
        for j0 in [0, W::LANES] {
            let width = cols.saturating_sub(j0).min(W::LANES);
            for p0 in (0..full).step_by(W::LANES) {
                let mut block = [W::zero(); 16];
                for (j, line) in block.iter_mut().take(width).enumerate() {
                    *line = W::load(b.add((j0 + j) * ldb + p0));
                }
                W::transpose(&mut block);
                for (q, group) in block.iter().take(W::LANES).enumerate() {
                    W::store(dst.as_mut_ptr().add((p0 + q) * NR + j0), *group);
                }
            }
            for p in full..kc {
                for j in 0..W::LANES {
                    dst[p * NR + j0 + j] = if j < width {
                        *b.add((j0 + j) * ldb + p)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// The entry points of one instruction set: `tile`, `pack_rows`, `pack_cols`, `pack_b_rows`
/// and `pack_b_cols`, each compiled with `$feature` around the generic code above, for the
/// register `$vector` and the tile `MR × NR` of the invoking module.
macro_rules! instantiate {
    ($feature:literal, $vector:ty) => {
        /// See [`crate::Kernel::tile`] and `crate::microkernel::tile`.
        ///
        /// # Safety
        /// The instruction set is available; as `crate::Kernel::tile`.
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn tile(
            kc: usize,
            a: $crate::kernel::APanel,
            b: $crate::kernel::BPanel,
            c: *mut f32,
            rs_c: usize,
            (rows, cols): (usize, usize),
            alpha: f32,
            beta: f32,
        ) {
            let tile = $crate::microkernel::Tile {
                c,
                rs_c,
                rows,
                cols,
                alpha,
                beta,
            };
            unsafe { $crate::microkernel::tile::<$vector, MR, NR>(kc, a, b, tile) }
        }

        /// See `crate::microkernel::pack_rows`.
        ///
        /// # Safety
        /// The instruction set is available; as `crate::microkernel::pack_rows`.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn pack_rows(dst: &mut [f32], a: *const f32, lda: usize, kc: usize) {
            unsafe { $crate::microkernel::pack_rows::<$vector, MR>(dst, a, lda, kc) }
        }

        /// See `crate::microkernel::pack_cols`.
        ///
        /// # Safety
        /// The instruction set is available; as `crate::microkernel::pack_cols`.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn pack_cols(
            dst: &mut [f32],
            a: *const f32,
            lda: usize,
            rows: usize,
            kc: usize,
        ) {
            unsafe { $crate::microkernel::pack_cols::<$vector, MR>(dst, a, lda, rows, kc) }
        }

        /// See `crate::microkernel::pack_b_rows`.
        ///
        /// # Safety
        /// The instruction set is available; as `crate::microkernel::pack_b_rows`.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn pack_b_rows(
            dst: &mut [f32],
            b: *const f32,
            ldb: usize,
            cols: usize,
            kc: usize,
        ) {
            unsafe { $crate::microkernel::pack_b_rows::<$vector, NR>(dst, b, ldb, cols, kc) }
        }

        /// See `crate::microkernel::pack_b_cols`.
        ///
        /// # Safety
        /// The instruction set is available; as `crate::microkernel::pack_b_cols`.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn pack_b_cols(
            dst: &mut [f32],
            b: *const f32,
            ldb: usize,
            cols: usize,
            kc: usize,
        ) {
            unsafe { $crate::microkernel::pack_b_cols::<$vector, NR>(dst, b, ldb, cols, kc) }
        }
    };
}

pub(crate) use instantiate;
