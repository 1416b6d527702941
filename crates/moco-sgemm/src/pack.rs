//! Packing: copies of blocks of `A` and `B` in the order the microkernel reads them, padded
//! with zeros to whole tiles, from any strides (a transposed operand costs nothing more).

use crate::view::View;
use crate::Kernel;
#[cfg(target_arch = "x86_64")]
use crate::{avx2, avx512};

/// Packs `rows ≤ mr` rows and `kc` columns of `a` as `kc` groups of `mr` values (column `p`
/// of the panel at `dst[p · mr ..]`, `mr` the kernel's), rows past `rows` zero.
///
/// # Safety
/// The kernel is available; the `rows × kc` block of `a` is readable; `dst` holds `kc · mr`
/// values.
pub(crate) unsafe fn pack_a(kernel: Kernel, dst: &mut [f32], a: View, rows: usize, kc: usize) {
    let mr = kernel.blocking().mr;
    if a.col == 1 && rows == mr {
        // Row-major: transposed in registers by the kernel's own packing.
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => return unsafe { avx512::pack_rows(dst, a.ptr, a.row, kc) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => return unsafe { avx2::pack_rows(dst, a.ptr, a.row, kc) },
            _ => {}
        }
    }
    if a.row == 1 {
        // Column-major: one vector per column.
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => return unsafe { avx512::pack_cols(dst, a.ptr, a.col, rows, kc) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => return unsafe { avx2::pack_cols(dst, a.ptr, a.col, rows, kc) },
            _ => {}
        }
    }
    let dst = &mut dst[..kc * mr];
    if a.row == 1 {
        // Transposed (column-major): each group is one contiguous run.
        for (p, group) in dst.chunks_exact_mut(mr).enumerate() {
            // SAFETY: column `p` of the block is readable over its `rows` rows.
            let src = unsafe { std::slice::from_raw_parts(a.ptr.add(p * a.col), rows) };
            group[..rows].copy_from_slice(src);
        }
    } else if a.col == 1 {
        // Row-major: each row is read once, front to back.
        for i in 0..rows {
            // SAFETY: row `i` of the block is readable over `kc` elements.
            let src = unsafe { std::slice::from_raw_parts(a.ptr.add(i * a.row), kc) };
            for (group, &x) in dst.chunks_exact_mut(mr).zip(src) {
                group[i] = x;
            }
        }
    } else {
        for (p, group) in dst.chunks_exact_mut(mr).enumerate() {
            for (i, d) in group[..rows].iter_mut().enumerate() {
                // SAFETY: element `(i, p)` of the block is readable.
                *d = unsafe { *a.ptr.add(i * a.row + p * a.col) };
            }
        }
    }
    if rows < mr {
        for group in dst.chunks_exact_mut(mr) {
            group[rows..].fill(0.0);
        }
    }
}

/// Packs `kc` rows and `cols` columns of `b` as panels of `nr` columns (the kernel's), one
/// after another; panel `q` holds `kc` groups of `nr` values at `dst[q · kc · nr ..]`, columns
/// past `cols` zero.
///
/// # Safety
/// The kernel is available; the `kc × cols` block of `b` is readable; `dst` holds
/// `kc · ⌈cols / nr⌉ · nr` values.
pub(crate) unsafe fn pack_b(kernel: Kernel, dst: &mut [f32], b: View, kc: usize, cols: usize) {
    let nr = kernel.blocking().nr;
    for (q, panel) in dst[..kc * cols.div_ceil(nr) * nr]
        .chunks_exact_mut(kc * nr)
        .enumerate()
    {
        let j0 = q * nr;
        let width = nr.min(cols - j0);
        if b.col == 1 {
            // SAFETY: the panel's columns of the block are readable.
            let src = unsafe { b.ptr.add(j0) };
            match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => {
                    unsafe { avx512::pack_b_rows(panel, src, b.row, width, kc) };
                    continue;
                }
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => {
                    unsafe { avx2::pack_b_rows(panel, src, b.row, width, kc) };
                    continue;
                }
                _ => {}
            }
            // Row-major: each group is one contiguous run of a row.
            for (p, group) in panel.chunks_exact_mut(nr).enumerate() {
                // SAFETY: row `p` of the block is readable over its `cols` columns.
                let src = unsafe { std::slice::from_raw_parts(b.ptr.add(p * b.row + j0), width) };
                group[..width].copy_from_slice(src);
                group[width..].fill(0.0);
            }
        } else if b.row == 1 && kernel.is_simd() {
            // Column-major: transposed in registers by the kernel's own packing.
            // SAFETY: the panel's columns of the block are readable.
            let src = unsafe { b.ptr.add(j0 * b.col) };
            match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => unsafe { avx512::pack_b_cols(panel, src, b.col, width, kc) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { avx2::pack_b_cols(panel, src, b.col, width, kc) },
                _ => unreachable!("a vector kernel"),
            }
        } else {
            for j in 0..width {
                // SAFETY: column `j0 + j` of the block is readable.
                let src = unsafe { b.ptr.add((j0 + j) * b.col) };
                for (p, group) in panel.chunks_exact_mut(nr).enumerate() {
                    group[j] = unsafe { *src.add(p * b.row) };
                }
            }
            if width < nr {
                for group in panel.chunks_exact_mut(nr) {
                    group[width..].fill(0.0);
                }
            }
        }
    }
}
