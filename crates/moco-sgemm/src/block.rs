//! One thread's product: the loops around the microkernel. `B` is packed one `kc × nc` block
//! at a time (L2), `A` one `mr × kc` panel at a time (L1); each `A` panel meets every `B`
//! panel of the block before the next is packed.

use std::cell::RefCell;

use crate::kernel::{APanel, BPanel, Blocking, Kernel, MAX_TILE};
use crate::pack::{pack_a, pack_b};
use crate::view::{View, ViewMut};

/// The most `B` panels per block for which a row- or column-major `A` is read in place
/// instead of packed.
const IN_PLACE_COLUMNS: usize = 1;

/// The most `A` panels for which a row-major `B` is read in place instead of packed.
const B_IN_PLACE_ROWS: usize = 5;

/// Packing buffers, kept per thread between products (no allocation per call).
#[derive(Default)]
struct Buffers {
    a: Vec<f32>,
    b: Vec<f32>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// A slice of `len` values of `buf` starting at a 64-byte boundary (a cache line).
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len + 16 {
        buf.resize(len + 16, 0.0);
    }
    let offset = buf.as_ptr().align_offset(64).min(16);
    &mut buf[offset..offset + len]
}

/// `C = α·A·B + β·C` over `(m, n, k)` on the calling thread.
///
/// # Safety
/// The views were checked for `(m, n, k)`; `c` is not read or written by anyone else.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn multiply(
    kernel: Kernel,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: View,
    b: View,
    beta: f32,
    c: ViewMut,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        unsafe { scale(c, (m, n), beta) };
        return;
    }
    let Blocking { mr, nr, kc, nc } = kernel.blocking();
    // Blocks of `B` of equal width (each `A` panel is packed once per block).
    let nc = n.div_ceil(n.div_ceil(nc)).next_multiple_of(nr);
    BUFFERS.with_borrow_mut(|buffers| {
        let a_panel = aligned(&mut buffers.a, kc * mr);
        let b_block = aligned(&mut buffers.b, kc * nc.div_ceil(nr) * nr);
        for jc in (0..n).step_by(nc) {
            let cols = nc.min(n - jc);
            for pc in (0..k).step_by(kc) {
                let depth = kc.min(k - pc);
                // Blocks after the first add to what the first wrote.
                let beta = if pc == 0 { beta } else { 1.0 };
                // Few rows of `A`: each `B` value would feed too few multiply-adds to pay for
                // its packing, so whole panels of a row-major `B` are read in place.
                let b_in_place = b.col == 1 && m <= B_IN_PLACE_ROWS * mr && cols % nr == 0;
                if !b_in_place {
                    unsafe { pack_b(kernel, b_block, b.at(pc, jc), depth, cols) };
                }
                // Few `B` panels: each `A` value would feed too few multiply-adds to pay for
                // its packing, so whole panels of a row- or column-major `A` are read in place.
                let in_place = (a.col == 1 || a.row == 1) && cols <= IN_PLACE_COLUMNS * nr;
                for ir in (0..m).step_by(mr) {
                    let rows = mr.min(m - ir);
                    let a_tile = if in_place && rows == mr {
                        let ptr = unsafe { a.at(ir, pc) }.ptr;
                        APanel::InPlace {
                            ptr,
                            row: a.row,
                            step: a.col,
                        }
                    } else {
                        unsafe { pack_a(kernel, a_panel, a.at(ir, pc), rows, depth) };
                        APanel::Packed(a_panel.as_ptr())
                    };
                    for (q, jr) in (0..cols).step_by(nr).enumerate() {
                        let tile = (rows, nr.min(cols - jr));
                        let b_panel = if b_in_place {
                            let ptr = unsafe { b.at(pc, jc + jr) }.ptr;
                            BPanel { ptr, step: b.row }
                        } else {
                            let ptr = b_block[q * depth * nr..].as_ptr();
                            BPanel { ptr, step: nr }
                        };
                        let c_tile = unsafe { c.at(ir, jc + jr) };
                        let panels = (a_tile, b_panel);
                        unsafe {
                            multiply_tile(kernel, depth, panels, c_tile, tile, (alpha, beta))
                        };
                    }
                }
            }
        }
    });
}

/// One tile: straight into `C` when it is row-major, else through a scratch tile.
///
/// # Safety
/// As [`Kernel::tile`], with the `rows × cols` tile of `c` writable.
unsafe fn multiply_tile(
    kernel: Kernel,
    depth: usize,
    (a, b): (APanel, BPanel),
    c: ViewMut,
    (rows, cols): (usize, usize),
    (alpha, beta): (f32, f32),
) {
    if c.col == 1 {
        unsafe { kernel.tile(depth, a, b, c.ptr, c.row, (rows, cols), alpha, beta) };
        return;
    }
    let Blocking { nr, .. } = kernel.blocking();
    let mut scratch = [0f32; MAX_TILE];
    let ptr = scratch.as_mut_ptr();
    unsafe { kernel.tile(depth, a, b, ptr, nr, (rows, cols), 1.0, 0.0) };
    for (i, line) in scratch.chunks_exact(nr).take(rows).enumerate() {
        for (j, &x) in line[..cols].iter().enumerate() {
            // SAFETY: `(i, j)` lies inside the tile.
            unsafe {
                let d = c.ptr.add(i * c.row + j * c.col);
                *d = if beta == 0.0 {
                    alpha * x
                } else {
                    alpha * x + beta * *d
                };
            }
        }
    }
}

/// `C = β·C` (the product of an empty sum); `β = 0` writes zeros without reading.
///
/// # Safety
/// The `m × n` view `c` is writable.
unsafe fn scale(c: ViewMut, (m, n): (usize, usize), beta: f32) {
    for i in 0..m {
        for j in 0..n {
            unsafe {
                let d = c.ptr.add(i * c.row + j * c.col);
                *d = if beta == 0.0 { 0.0 } else { beta * *d };
            }
        }
    }
}
