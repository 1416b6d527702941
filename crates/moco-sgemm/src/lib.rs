//! Single-precision matrix products on the CPU: `C = α·A·B + β·C`.
//!
//! Written the way fast BLAS libraries are: `B` is packed into panels of `NR` columns that fit
//! the L2 cache, `A` into panels of `MR` rows that fit the L1 cache, and a register-blocked
//! microkernel multiplies one `MR × NR` tile of `C` per pair of panels, with every accumulator
//! in a vector register ([`Kernel`]: AVX-512, AVX2 + FMA or portable Rust, chosen at run
//! time). Operands are strided views, so transposes are free: packing reads them in place.
//! Large products split their rows (or columns) over the threads of the current rayon pool.
//!
//! Each element of `C` sums its `k` products in the same order whatever the thread count, so
//! results do not depend on the number of threads.
//!
//! ```
//! use moco_sgemm::{sgemm, Mat, MatMut};
//! // [[1, 2, 3], [4, 5, 6]] · [[1, 2], [3, 4], [5, 6]]
//! let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let b = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let mut c = [0.0f32; 4];
//! sgemm((2, 2, 3), 1.0, Mat::rows(&a, 3), Mat::rows(&b, 2), 0.0, MatMut::rows(&mut c, 2))
//!     .unwrap();
//! assert_eq!(c, [22.0, 28.0, 49.0, 64.0]);
//! ```

mod avx2;
mod avx512;
mod block;
mod kernel;
#[cfg(target_arch = "x86_64")]
mod microkernel;
mod pack;
mod peak;
mod portable;
mod split;
#[cfg(target_arch = "x86_64")]
mod vector;
mod view;

pub use kernel::Kernel;
pub use peak::fma_peak;
pub use view::{Mat, MatMut, ViewError};

/// Which threads a product may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread only (for products inside an already parallel loop).
    One,
    /// Every thread of the current rayon pool, when the product is large enough to gain.
    #[default]
    Pool,
}

/// A configured product: which microkernel and which threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sgemm {
    /// The microkernel (default: the fastest this CPU runs).
    pub kernel: Kernel,
    /// The threads (default: the rayon pool's).
    pub threads: Threads,
}

impl Default for Sgemm {
    fn default() -> Self {
        Sgemm {
            kernel: Kernel::detect(),
            threads: Threads::Pool,
        }
    }
}

impl Sgemm {
    /// `C = α·A·B + β·C` with `A` `m × k`, `B` `k × n` and `C` `m × n` (`dims` is
    /// `(m, n, k)`). With `β = 0`, `C` is written without being read (and may be
    /// uninitialised, [`MatMut::uninit`]).
    ///
    /// # Errors
    /// When a view reaches past the end of its buffer, the kernel does not run on this CPU, or
    /// `β ≠ 0` with an uninitialised `C`; nothing is written then.
    pub fn run(
        &self,
        dims: (usize, usize, usize),
        alpha: f32,
        a: Mat<'_>,
        b: Mat<'_>,
        beta: f32,
        c: MatMut<'_>,
    ) -> Result<(), ViewError> {
        let (m, n, k) = dims;
        a.check("A", m, k)?;
        b.check("B", k, n)?;
        c.check("C", m, n)?;
        if !self.kernel.available() {
            return Err(ViewError::Kernel(self.kernel));
        }
        if beta != 0.0 && !c.initialized() {
            return Err(ViewError::Uninitialized);
        }
        // SAFETY: every view was checked to lie inside its buffer; `c` is borrowed mutably, so
        // it cannot alias `a` or `b`.
        unsafe {
            split::multiply(
                self.kernel,
                self.threads,
                dims,
                alpha,
                (a.raw(), b.raw()),
                beta,
                c.raw(),
            )
        };
        Ok(())
    }
}

/// `C = α·A·B + β·C` with the fastest kernel of this CPU on the rayon pool's threads
/// ([`Sgemm::run`]).
///
/// # Errors
/// When a view reaches past the end of its buffer.
pub fn sgemm(
    dims: (usize, usize, usize),
    alpha: f32,
    a: Mat<'_>,
    b: Mat<'_>,
    beta: f32,
    c: MatMut<'_>,
) -> Result<(), ViewError> {
    Sgemm::default().run(dims, alpha, a, b, beta, c)
}
