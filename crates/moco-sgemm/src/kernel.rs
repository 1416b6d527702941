//! The microkernels: which one runs, their tile sizes and cache blocking.

use std::sync::OnceLock;

use crate::{avx2, avx512, portable};

/// A register-blocked microkernel: one `MR × NR` tile of `C` from a packed panel of `A`
/// (`MR` rows) and one of `B` (`NR` columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// 14 × 32 with 28 `zmm` accumulators (x86-64 with AVX-512F).
    Avx512,
    /// 6 × 16 with 12 `ymm` accumulators (x86-64 with AVX2 and FMA).
    Avx2,
    /// 4 × 16 in plain Rust, vectorised by the compiler for the target's baseline.
    Portable,
}

/// The cache blocking of a kernel: `kc` steps of `k` per packed panel (the `A` panel,
/// `mr · kc` values, stays in L1), `nc` columns of `B` per packed block (`kc · nc` values in
/// L2).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blocking {
    pub mr: usize,
    pub nr: usize,
    pub kc: usize,
    pub nc: usize,
}

/// The `A` side of a tile: a packed panel (`mr` values per step of `k`), or `mr` rows read
/// in place, element `(i, p)` at `i · row + p · step` (for products with few columns, where
/// packing would cost as much as the multiply-adds it feeds).
#[derive(Clone, Copy, Debug)]
pub(crate) enum APanel {
    Packed(*const f32),
    InPlace {
        ptr: *const f32,
        row: usize,
        step: usize,
    },
}

/// The `B` side of a tile: `nr` values per step of `k`, `step` values apart (a packed panel:
/// `nr`; read in place from a row-major block: its row stride).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BPanel {
    pub ptr: *const f32,
    pub step: usize,
}

/// The largest tile of any kernel (`MR · NR`), for the scratch tile at the edges.
pub(crate) const MAX_TILE: usize = avx512::MR * avx512::NR;

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2, Kernel::Portable];

    /// The fastest kernel this CPU runs (detected once).
    pub fn detect() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            Kernel::ALL
                .into_iter()
                .find(|k| k.available())
                .unwrap_or(Kernel::Portable)
        })
    }

    /// Whether this CPU has the kernel's instructions.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            Kernel::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Whether the kernel uses the CPU's vector units explicitly (not the portable one).
    pub fn is_simd(self) -> bool {
        self != Kernel::Portable
    }

    /// Its name: `avx512`, `avx2` or `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

    pub(crate) fn blocking(self) -> Blocking {
        match self {
            Kernel::Avx512 => Blocking {
                mr: avx512::MR,
                nr: avx512::NR,
                kc: 256,
                nc: 384,
            },
            Kernel::Avx2 => Blocking {
                mr: avx2::MR,
                nr: avx2::NR,
                kc: 256,
                nc: 384,
            },
            Kernel::Portable => Blocking {
                mr: portable::MR,
                nr: portable::NR,
                kc: 256,
                nc: 256,
            },
        }
    }

    /// `C[0..rows, 0..cols] = α·Ã·B̃ + β·C` for packed panels over `kc` steps (`rows ≤ mr`,
    /// `cols ≤ nr`), `C` row-major with `rs_c` elements between rows; `β = 0` writes `C`
    /// without reading it. Nothing outside the `rows × cols` tile is touched.
    ///
    /// # Safety
    /// The kernel is available; `a` holds `kc · mr` values (packed) or `mr × kc` readable
    /// values (in place); `b` holds `kc` readable groups of `nr` values; the tile of `C` is
    /// writable.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn tile(
        self,
        kc: usize,
        a: APanel,
        b: BPanel,
        c: *mut f32,
        rs_c: usize,
        extent: (usize, usize),
        alpha: f32,
        beta: f32,
    ) {
        unsafe {
            match self {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => avx512::tile(kc, a, b, c, rs_c, extent, alpha, beta),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => avx2::tile(kc, a, b, c, rs_c, extent, alpha, beta),
                #[allow(unreachable_patterns)]
                _ => portable::tile(kc, a, b, c, rs_c, extent, alpha, beta),
            }
        }
    }
}
