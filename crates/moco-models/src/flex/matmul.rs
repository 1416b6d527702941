//! One matrix product on strided views of host buffers, bounds-checked: `moco_sgemm` where it
//! has a vector kernel for this CPU (x86-64 with AVX-512 or AVX2 + FMA), else `gemm`.

use moco_sgemm::{Kernel, Mat, MatMut, Sgemm, Threads};

/// A matrix inside a buffer: element `(i, j)` at `i · row_stride + j · col_stride`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strides {
    pub row: usize,
    pub col: usize,
}

impl Strides {
    /// Row-major with `row` elements between rows.
    pub(crate) fn rows(row: usize) -> Self {
        Strides { row, col: 1 }
    }

    /// The transpose of a row-major matrix with `row` elements between rows.
    pub(crate) fn transposed(row: usize) -> Self {
        Strides { row: 1, col: row }
    }

    /// One past the largest offset of an `m × n` matrix (0 when empty).
    fn extent(self, m: usize, n: usize) -> usize {
        if m == 0 || n == 0 {
            0
        } else {
            (m - 1) * self.row + (n - 1) * self.col + 1
        }
    }
}

/// `dst = scale · lhs · rhs` (`accumulate`: `dst += …`) with `lhs` `m × k` and `rhs` `k × n`,
/// on the calling thread.
///
/// # Panics
/// When a view reaches past the end of its buffer.
pub(crate) fn matmul(
    dims: (usize, usize, usize),
    dst: (&mut [f32], Strides),
    lhs: (&[f32], Strides),
    rhs: (&[f32], Strides),
    scale: f32,
    accumulate: bool,
) {
    product(dims, dst, lhs, rhs, (scale, accumulate), false)
}

/// [`matmul`] on all the threads of the current rayon pool: for one large product.
pub(crate) fn matmul_parallel(
    dims: (usize, usize, usize),
    dst: (&mut [f32], Strides),
    lhs: (&[f32], Strides),
    rhs: (&[f32], Strides),
    scale: f32,
    accumulate: bool,
) {
    product(dims, dst, lhs, rhs, (scale, accumulate), true)
}

/// `lhs · rhs` (`m × k` times `k × n`) as a new row-major `m × n` buffer, on all threads when
/// `parallel`. With our kernels the buffer is never zeroed first: the product writes it whole.
pub(crate) fn matmul_new(
    (m, n, k): (usize, usize, usize),
    lhs: (&[f32], Strides),
    rhs: (&[f32], Strides),
    parallel: bool,
) -> Vec<f32> {
    let kernel = Kernel::detect();
    if !kernel.is_simd() || m == 0 || n == 0 {
        let mut out = vec![0f32; m * n];
        let dst = (out.as_mut_slice(), Strides::rows(n));
        product((m, n, k), dst, lhs, rhs, (1.0, false), parallel);
        return out;
    }
    let mut out = Vec::with_capacity(m * n);
    let threads = if parallel {
        Threads::Pool
    } else {
        Threads::One
    };
    Sgemm { kernel, threads }
        .run(
            (m, n, k),
            1.0,
            Mat::new(lhs.0, lhs.1.row, lhs.1.col),
            Mat::new(rhs.0, rhs.1.row, rhs.1.col),
            0.0,
            MatMut::uninit(out.spare_capacity_mut(), n, 1),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: a product with β = 0 wrote every element of the `m × n` view.
    unsafe { out.set_len(m * n) };
    out
}

fn product(
    (m, n, k): (usize, usize, usize),
    dst: (&mut [f32], Strides),
    lhs: (&[f32], Strides),
    rhs: (&[f32], Strides),
    (scale, accumulate): (f32, bool),
    parallel: bool,
) {
    assert!(
        dst.1.extent(m, n) <= dst.0.len(),
        "matmul: destination out of bounds"
    );
    assert!(
        lhs.1.extent(m, k) <= lhs.0.len(),
        "matmul: left operand out of bounds"
    );
    assert!(
        rhs.1.extent(k, n) <= rhs.0.len(),
        "matmul: right operand out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    let kernel = Kernel::detect();
    if kernel.is_simd() {
        let threads = if parallel {
            Threads::Pool
        } else {
            Threads::One
        };
        let run = Sgemm { kernel, threads }.run(
            (m, n, k),
            scale,
            Mat::new(lhs.0, lhs.1.row, lhs.1.col),
            Mat::new(rhs.0, rhs.1.row, rhs.1.col),
            if accumulate { 1.0 } else { 0.0 },
            MatMut::new(dst.0, dst.1.row, dst.1.col),
        );
        return run.unwrap_or_else(|e| panic!("{e}"));
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every view was checked to lie inside its buffer; `dst` is borrowed mutably and
    // cannot alias the operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0.as_mut_ptr(),
            dst.1.col as isize,
            dst.1.row as isize,
            accumulate,
            lhs.0.as_ptr(),
            lhs.1.col as isize,
            lhs.1.row as isize,
            rhs.0.as_ptr(),
            rhs.1.col as isize,
            rhs.1.row as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_products_match_the_definition() {
        // lhs 2×3 stored transposed, rhs 3×2 inside rows of 4, dst 2×2 inside rows of 3.
        let lhs_t = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]; // lhs = [[1,2,3],[4,5,6]]
        let rhs = [1.0, 2.0, 9.0, 9.0, 3.0, 4.0, 9.0, 9.0, 5.0, 6.0, 9.0, 9.0];
        let mut dst = [1.0f32; 6];
        matmul(
            (2, 2, 3),
            (&mut dst, Strides::rows(3)),
            (&lhs_t, Strides::transposed(2)),
            (&rhs, Strides::rows(4)),
            2.0,
            true,
        );
        // lhs·rhs = [[22, 28], [49, 64]]
        assert_eq!(dst, [45.0, 57.0, 1.0, 99.0, 129.0, 1.0]);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn views_past_the_buffer_are_refused() {
        let mut dst = [0.0f32; 3];
        matmul(
            (2, 2, 1),
            (&mut dst, Strides::rows(2)),
            (&[1.0, 2.0], Strides::rows(1)),
            (&[1.0, 2.0], Strides::rows(2)),
            1.0,
            false,
        );
    }
}
