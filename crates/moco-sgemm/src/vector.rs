//! One vector register's operations as the microkernel and the packing use them, implemented
//! for `__m512` (AVX-512, `crate::avx512`) and `__m256` (AVX2 + FMA, `crate::avx2`), so that
//! one generic kernel (`crate::microkernel`) serves both.

/// A register of `LANES` single-precision values.
///
/// Every method needs the register's instruction set: they are called only from functions
/// compiled with it (`#[target_feature]`), into which they are inlined.
pub(crate) trait Vector: Copy {
    /// Values per register.
    const LANES: usize;
    /// Which lanes a masked load or store touches.
    type Mask: Copy;
    /// All lanes zero.
    unsafe fn zero() -> Self;
    /// All lanes `x`.
    unsafe fn splat(x: f32) -> Self;
    /// `LANES` values from `p`.
    unsafe fn load(p: *const f32) -> Self;
    /// `LANES` values to `p`.
    unsafe fn store(p: *mut f32, v: Self);
    /// `a · b + c`, rounded once.
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self;
    /// `a · b`.
    unsafe fn mul(a: Self, b: Self) -> Self;
    /// The first `lanes` lanes (at most `LANES`).
    unsafe fn first(lanes: usize) -> Self::Mask;
    /// The masked lanes from `p`, the others zero (and not read).
    unsafe fn load_masked(mask: Self::Mask, p: *const f32) -> Self;
    /// The masked lanes to `p` (the others are not written).
    unsafe fn store_masked(mask: Self::Mask, p: *mut f32, v: Self);
    /// Transposes the `LANES × LANES` block in the first `LANES` registers of `block`.
    unsafe fn transpose(block: &mut [Self; 16]);
}
