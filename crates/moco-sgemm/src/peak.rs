//! The host's peak: fused multiply-adds with no memory traffic, as many independent chains as
//! hide the FMA latency, timed on one thread. It measures what the clock (boost included) and
//! the FMA units give the kernel's vector width, the ceiling a product can approach.

use std::time::{Duration, Instant};

use crate::Kernel;

/// GFLOP/s of `kernel`'s vector width on the calling thread (one multiply-add counts two), for
/// at least `time`; 0 when the kernel does not run here.
pub fn fma_peak(kernel: Kernel, time: Duration) -> f64 {
    if !kernel.available() {
        return 0.0;
    }
    const ROUNDS: usize = 1 << 16;
    let start = Instant::now();
    let mut flops = 0f64;
    let mut sink = 0f32;
    while start.elapsed() < time {
        // SAFETY: the kernel's instructions are available (checked above).
        sink += unsafe { chains(kernel, ROUNDS) };
        flops += (ROUNDS * CHAINS * kernel.lanes() * 2) as f64;
    }
    std::hint::black_box(sink);
    flops / start.elapsed().as_secs_f64() / 1e9
}

/// Independent accumulators per run: more than latency × units (4 × 2) of current CPUs.
const CHAINS: usize = 12;

impl Kernel {
    /// `f32` lanes per vector register of the kernel.
    fn lanes(self) -> usize {
        match self {
            Kernel::Avx512 => 16,
            Kernel::Avx2 => 8,
            Kernel::Portable => 1,
        }
    }
}

/// `rounds` multiply-adds on each of [`CHAINS`] accumulators.
///
/// # Safety
/// The kernel is available.
unsafe fn chains(kernel: Kernel, rounds: usize) -> f32 {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { x86::chains_avx512(rounds) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::chains_avx2(rounds) },
        _ => {
            let mut acc = [1f32; CHAINS];
            let (x, y) = (
                std::hint::black_box(0.999_f32),
                std::hint::black_box(1e-4_f32),
            );
            for _ in 0..rounds {
                for a in &mut acc {
                    *a = *a * x + y;
                }
            }
            acc.iter().sum()
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn chains_avx512(rounds: usize) -> f32 {
        let x = _mm512_set1_ps(std::hint::black_box(0.999));
        let y = _mm512_set1_ps(std::hint::black_box(1e-4));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..rounds {
            for a in &mut acc {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
        _mm512_reduce_add_ps(sum)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn chains_avx2(rounds: usize) -> f32 {
        let x = _mm256_set1_ps(std::hint::black_box(0.999));
        let y = _mm256_set1_ps(std::hint::black_box(1e-4));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..rounds {
            for a in &mut acc {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        let mut lanes = [0f32; 8];
        let sum = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }
}
