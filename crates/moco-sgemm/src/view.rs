//! Strided matrix views of `f32` buffers: element `(i, j)` at `i · row + j · col`.

use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use crate::Kernel;

/// A read-only `rows × cols` matrix inside a buffer (its shape comes with the product).
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    data: &'a [f32],
    row: usize,
    col: usize,
}

/// A writable matrix inside a buffer, initialised or not ([`MatMut::uninit`]: written by a
/// product with `β = 0`, never read).
#[derive(Debug)]
pub struct MatMut<'a> {
    ptr: *mut f32,
    len: usize,
    row: usize,
    col: usize,
    initialized: bool,
    _buffer: PhantomData<&'a mut [f32]>,
}

/// A view that does not fit its buffer, or a kernel this CPU cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewError {
    /// Operand `name`'s view reaches element `extent - 1` of a buffer of `len` elements.
    OutOfBounds {
        name: &'static str,
        extent: usize,
        len: usize,
    },
    /// The kernel needs instructions this CPU lacks.
    Kernel(Kernel),
    /// `β ≠ 0` would read an uninitialised output.
    Uninitialized,
}

impl fmt::Display for ViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViewError::OutOfBounds { name, extent, len } => write!(
                f,
                "matrix product: operand {name} out of bounds (its view needs {extent} elements, \
                 the buffer holds {len})"
            ),
            ViewError::Kernel(kernel) => write!(
                f,
                "matrix product: the {} kernel does not run on this CPU",
                kernel.name()
            ),
            ViewError::Uninitialized => write!(
                f,
                "matrix product: β ≠ 0 reads C, which is uninitialised (use β = 0)"
            ),
        }
    }
}

impl std::error::Error for ViewError {}

/// One past the largest offset of an `m × n` view (0 when empty).
fn extent(m: usize, n: usize, row: usize, col: usize) -> usize {
    if m == 0 || n == 0 {
        0
    } else {
        (m - 1) * row + (n - 1) * col + 1
    }
}

impl<'a> Mat<'a> {
    /// Element `(i, j)` at `data[i · row + j · col]`.
    pub fn new(data: &'a [f32], row: usize, col: usize) -> Self {
        Mat { data, row, col }
    }

    /// Row-major with `ld` elements from one row to the next.
    pub fn rows(data: &'a [f32], ld: usize) -> Self {
        Mat::new(data, ld, 1)
    }

    /// The transpose of a row-major matrix with `ld` elements per row.
    pub fn transposed(data: &'a [f32], ld: usize) -> Self {
        Mat::new(data, 1, ld)
    }

    pub(crate) fn check(&self, name: &'static str, m: usize, n: usize) -> Result<(), ViewError> {
        check(name, extent(m, n, self.row, self.col), self.data.len())
    }

    pub(crate) fn raw(&self) -> View {
        View {
            ptr: self.data.as_ptr(),
            row: self.row,
            col: self.col,
        }
    }
}

impl<'a> MatMut<'a> {
    /// Element `(i, j)` at `data[i · row + j · col]`.
    pub fn new(data: &'a mut [f32], row: usize, col: usize) -> Self {
        MatMut {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            row,
            col,
            initialized: true,
            _buffer: PhantomData,
        }
    }

    /// An output in uninitialised memory (`Vec::spare_capacity_mut`), for a product with
    /// `β = 0`, which writes every element of the view and reads none: a fresh result without
    /// zeroing its buffer first.
    pub fn uninit(data: &'a mut [MaybeUninit<f32>], row: usize, col: usize) -> Self {
        MatMut {
            ptr: data.as_mut_ptr().cast(),
            len: data.len(),
            row,
            col,
            initialized: false,
            _buffer: PhantomData,
        }
    }

    /// Whether the buffer may be read (it was given initialised).
    pub(crate) fn initialized(&self) -> bool {
        self.initialized
    }

    /// Row-major with `ld` elements from one row to the next.
    pub fn rows(data: &'a mut [f32], ld: usize) -> Self {
        MatMut::new(data, ld, 1)
    }

    /// The transpose of a row-major matrix with `ld` elements per row.
    pub fn transposed(data: &'a mut [f32], ld: usize) -> Self {
        MatMut::new(data, 1, ld)
    }

    pub(crate) fn check(&self, name: &'static str, m: usize, n: usize) -> Result<(), ViewError> {
        check(name, extent(m, n, self.row, self.col), self.len)
    }

    pub(crate) fn raw(self) -> ViewMut {
        ViewMut {
            ptr: self.ptr,
            row: self.row,
            col: self.col,
        }
    }
}

fn check(name: &'static str, extent: usize, len: usize) -> Result<(), ViewError> {
    if extent <= len {
        Ok(())
    } else {
        Err(ViewError::OutOfBounds { name, extent, len })
    }
}

/// A checked read-only view as a pointer and strides, shared between threads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    pub ptr: *const f32,
    pub row: usize,
    pub col: usize,
}

/// A checked writable view; threads write disjoint blocks of it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ViewMut {
    pub ptr: *mut f32,
    pub row: usize,
    pub col: usize,
}

// SAFETY: the views point into buffers borrowed for the whole product; threads read `View`s
// and write disjoint blocks of a `ViewMut` (crate::split).
unsafe impl Send for View {}
unsafe impl Sync for View {}
unsafe impl Send for ViewMut {}
unsafe impl Sync for ViewMut {}

impl View {
    /// The view starting at element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` lies inside the checked view.
    pub unsafe fn at(self, i: usize, j: usize) -> View {
        View {
            ptr: unsafe { self.ptr.add(i * self.row + j * self.col) },
            ..self
        }
    }
}

impl ViewMut {
    /// The view starting at element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` lies inside the checked view.
    pub unsafe fn at(self, i: usize, j: usize) -> ViewMut {
        ViewMut {
            ptr: unsafe { self.ptr.add(i * self.row + j * self.col) },
            ..self
        }
    }
}
