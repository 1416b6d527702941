//! Threads: a large product is cut into as many blocks of whole tiles as the rayon pool has
//! threads, along `C`'s rows when it has more row tiles than column tiles, else along its
//! columns; each thread runs the whole blocked product on its block.

use rayon::prelude::*;

use crate::block;
use crate::kernel::{Blocking, Kernel};
use crate::view::{View, ViewMut};
use crate::Threads;

/// Products with fewer multiply-adds stay on the calling thread.
const PARALLEL_FROM: usize = 1 << 18;

/// `C = α·A·B + β·C` over `(m, n, k)` on `threads`.
///
/// # Safety
/// The views were checked for `(m, n, k)` and the kernel is available; `c` is not read or
/// written by anyone else.
pub(crate) unsafe fn multiply(
    kernel: Kernel,
    threads: Threads,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, b): (View, View),
    beta: f32,
    c: ViewMut,
) {
    let Blocking { mr, nr, .. } = kernel.blocking();
    let (row_tiles, col_tiles) = (m.div_ceil(mr), n.div_ceil(nr));
    let parts = match threads {
        Threads::One => 1,
        Threads::Pool if m * n * k < PARALLEL_FROM => 1,
        Threads::Pool => rayon::current_num_threads().min(row_tiles.max(col_tiles)),
    };
    if parts <= 1 {
        unsafe { block::multiply(kernel, (m, n, k), alpha, a, b, beta, c) };
        return;
    }
    let by_rows = row_tiles >= col_tiles;
    let (tiles, tile, len) = if by_rows {
        (row_tiles, mr, m)
    } else {
        (col_tiles, nr, n)
    };
    // Part `t` covers tiles `[tiles·t/parts, tiles·(t+1)/parts)`.
    let bound = |t: usize| (tiles * t / parts * tile).min(len);
    (0..parts).into_par_iter().for_each(|t| {
        let (start, end) = (bound(t), bound(t + 1));
        // SAFETY: the parts are disjoint blocks of whole tiles inside the checked views.
        unsafe {
            if by_rows {
                let dims = (end - start, n, k);
                block::multiply(kernel, dims, alpha, a.at(start, 0), b, beta, c.at(start, 0));
            } else {
                let dims = (m, end - start, k);
                block::multiply(kernel, dims, alpha, a, b.at(0, start), beta, c.at(0, start));
            }
        }
    });
}
