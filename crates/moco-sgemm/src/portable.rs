//! The portable microkernel: a 4 × 16 tile in plain Rust, for CPUs without a kernel of their
//! own (the compiler vectorises the inner loops for the target's baseline).

use crate::kernel::{APanel, BPanel};

pub(crate) const MR: usize = 4;
pub(crate) const NR: usize = 16;

/// See [`crate::Kernel::tile`].
///
/// # Safety
/// `a` holds `kc · MR` values (packed) or `MR × kc` readable values; `b` holds `kc` readable groups of `NR`; `c` has `rows` writable rows of `cols`, `rs_c`
/// apart.
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
    let (a, rs, ks) = match a {
        APanel::Packed(a) => (a, 1, MR),
        APanel::InPlace { ptr, row, step } => (ptr, row, step),
    };
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kc {
        // SAFETY: group `p` of the `B` panel is readable.
        let bp = unsafe { std::slice::from_raw_parts(b.ptr.add(p * b.step), NR) };
        // SAFETY: step `p` of the `A` panel is readable.
        let ap: [f32; MR] = std::array::from_fn(|i| unsafe { *a.add(i * rs + p * ks) });
        for (row, &ai) in acc.iter_mut().zip(&ap) {
            for (x, &bj) in row.iter_mut().zip(bp) {
                *x += ai * bj;
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(rows) {
        // SAFETY: row `i` of the tile is writable over `cols` values.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * rs_c), cols) };
        for (d, &x) in dst.iter_mut().zip(row) {
            *d = if beta == 0.0 {
                alpha * x
            } else {
                alpha * x + beta * *d
            };
        }
    }
}
