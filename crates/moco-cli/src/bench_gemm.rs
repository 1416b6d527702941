//! `moco bench gemm`: the CPU's single-precision matrix products at the shapes of the two
//! reference training steps, in GFLOP/s: ours (`moco_sgemm`, the kernel this CPU runs, or
//! every kernel it runs), the `gemm` crate that Burn's flex backend calls, and the host's
//! measured peak (fused multiply-adds with no memory traffic, on the same threads).
//! `benches/compare.py --gemm` puts `torch.matmul` beside them.

use std::time::{Duration, Instant};

use moco_sgemm::{fma_peak, Kernel, Mat, MatMut, Sgemm, Threads};
use serde::Serialize;

/// How an operand is stored: row-major, or the transpose of a row-major matrix (as the
/// backward passes read weights and activations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Row-major.
    Rows,
    /// The transpose of a row-major matrix.
    Transposed,
}

/// One product `C[m, n] = A[m, k] · B[k, n]` of a reference step.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct GemmShape {
    /// What it is in the step.
    pub name: &'static str,
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
    /// How `A` is stored.
    pub a: Layout,
    /// How `B` is stored.
    pub b: Layout,
    /// On every thread (`false`: one thread, as the attention's per-head products run).
    pub parallel: bool,
}

const fn shape(
    name: &'static str,
    (m, n, k): (usize, usize, usize),
    (a, b): (Layout, Layout),
    parallel: bool,
) -> GemmShape {
    GemmShape {
        name,
        m,
        n,
        k,
        a,
        b,
        parallel,
    }
}

use Layout::{Rows, Transposed};

/// The products of the reference steps (`benches/compare.py`): ViT-Tiny/4 at 32 px, batch 64
/// (4160 token rows per view, width 192, MLP 768, 65 tokens per head), ResNet-50 at 32 px,
/// batch 32 (its convolutions as `weight · im2col`), and a square product.
pub const SHAPES: [GemmShape; 12] = [
    shape("vit qkv x·W", (4160, 576, 192), (Rows, Rows), true),
    shape("vit fc1 x·W", (4160, 768, 192), (Rows, Rows), true),
    shape("vit fc2 h·W", (4160, 192, 768), (Rows, Rows), true),
    shape(
        "vit fc1 dx = dy·Wᵀ",
        (4160, 192, 768),
        (Rows, Transposed),
        true,
    ),
    shape(
        "vit fc1 dW = xᵀ·dy",
        (192, 768, 4160),
        (Transposed, Rows),
        true,
    ),
    shape("vit head q·kᵀ", (65, 65, 64), (Rows, Transposed), false),
    shape("vit head p·v", (65, 64, 65), (Rows, Rows), false),
    shape(
        "resnet 3×3 conv W·cols",
        (256, 128, 2304),
        (Rows, Rows),
        true,
    ),
    shape(
        "resnet 1×1 conv W·cols",
        (2048, 32, 512),
        (Rows, Rows),
        true,
    ),
    shape(
        "resnet dcols = Wᵀ·dy",
        (4608, 32, 512),
        (Transposed, Rows),
        true,
    ),
    shape(
        "resnet dW = dy·colsᵀ",
        (64, 576, 2048),
        (Rows, Transposed),
        true,
    ),
    shape("square", (2048, 2048, 2048), (Rows, Rows), true),
];

/// What one shape measured, GFLOP/s (a multiply-add counts two).
#[derive(Clone, Debug, Serialize)]
pub struct GemmResult {
    /// The product.
    #[serde(flatten)]
    pub shape: GemmShape,
    /// Threads it ran on.
    pub threads: usize,
    /// The kernel `ours` ran.
    pub kernel: &'static str,
    /// Ours with that kernel.
    pub ours: f64,
    /// Every kernel this CPU runs, when asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<(&'static str, f64)>,
    /// The `gemm` crate, called as flex calls it.
    pub gemm: f64,
    /// The measured peak of the kernel's vector width on these threads.
    pub peak: f64,
    /// The machine, the build and the date.
    pub machine: moco_train::Machine,
}

/// Seconds per call of `f`, the median of three rounds of at least `time` each (after one
/// call to warm caches and buffers).
fn seconds_per_call(time: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut rounds: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            let mut calls = 0u32;
            while calls == 0 || start.elapsed() < time {
                f();
                calls += 1;
            }
            start.elapsed().as_secs_f64() / f64::from(calls)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[1]
}

/// Deterministic values in [-1, 1).
fn values(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 8) % 2048) as f32 / 1024.0 - 1.0)
        .collect()
}

/// An operand's buffer and strides: `rows × cols` as `layout` stores it.
struct Operand {
    data: Vec<f32>,
    row: usize,
    col: usize,
}

impl Operand {
    fn new(rows: usize, cols: usize, layout: Layout) -> Self {
        let data = values(rows * cols);
        let (row, col) = match layout {
            Layout::Rows => (cols, 1),
            Layout::Transposed => (1, rows),
        };
        Operand { data, row, col }
    }
}

/// GFLOP/s of `product(a, b, c)` repeated on `shape`'s operands.
fn gflops(
    shape: &GemmShape,
    time: Duration,
    mut product: impl FnMut(&Operand, &Operand, &mut [f32]),
) -> f64 {
    let GemmShape { m, n, k, .. } = *shape;
    let a = Operand::new(m, k, shape.a);
    let b = Operand::new(k, n, shape.b);
    let mut c = vec![0f32; m * n];
    let s = seconds_per_call(time, || product(&a, &b, &mut c));
    2.0 * (m * n * k) as f64 / s / 1e9
}

/// GFLOP/s of `shape` with `kernel`.
fn ours(shape: &GemmShape, kernel: Kernel, time: Duration) -> f64 {
    let threads = if shape.parallel {
        Threads::Pool
    } else {
        Threads::One
    };
    let sgemm = Sgemm { kernel, threads };
    gflops(shape, time, |a, b, c| {
        let (a, b) = (
            Mat::new(&a.data, a.row, a.col),
            Mat::new(&b.data, b.row, b.col),
        );
        let c = MatMut::rows(c, shape.n);
        sgemm
            .run((shape.m, shape.n, shape.k), 1.0, a, b, 0.0, c)
            .expect("in bounds");
    })
}

/// GFLOP/s of `shape` with the `gemm` crate.
fn gemm_crate(shape: &GemmShape, time: Duration) -> f64 {
    let parallelism = if shape.parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    gflops(shape, time, |a, b, c| {
        // SAFETY: the buffers hold the `m × k`, `k × n` and `m × n` views their strides
        // describe, and `c` does not alias the operands.
        unsafe {
            gemm::gemm(
                shape.m,
                shape.n,
                shape.k,
                c.as_mut_ptr(),
                1,
                shape.n as isize,
                false,
                a.data.as_ptr(),
                a.col as isize,
                a.row as isize,
                b.data.as_ptr(),
                b.col as isize,
                b.row as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    })
}

/// The peak of `kernel` on one thread and on every thread of the pool at once.
fn peaks(kernel: Kernel, time: Duration) -> (f64, f64) {
    let one = fma_peak(kernel, time);
    let all: f64 = rayon::broadcast(|_| fma_peak(kernel, time)).iter().sum();
    (one, all)
}

/// Measures every shape of [`SHAPES`] (each for about `9 · time` per implementation); with
/// `all_kernels`, every kernel this CPU runs as well as the fastest.
pub fn run_gemm_bench(time: Duration, all_kernels: bool) -> Vec<GemmResult> {
    let kernel = Kernel::detect();
    let (peak_one, peak_all) = peaks(kernel, time);
    let machine = moco_train::Machine::here().with_features(&crate::device::build_features());
    SHAPES
        .iter()
        .map(|shape| {
            let kernels = if all_kernels {
                Kernel::ALL
                    .into_iter()
                    .filter(|k| k.available())
                    .map(|k| (k.name(), ours(shape, k, time)))
                    .collect()
            } else {
                Vec::new()
            };
            GemmResult {
                shape: *shape,
                threads: if shape.parallel {
                    rayon::current_num_threads()
                } else {
                    1
                },
                kernel: kernel.name(),
                ours: ours(shape, kernel, time),
                kernels,
                gemm: gemm_crate(shape, time),
                peak: if shape.parallel { peak_all } else { peak_one },
                machine: machine.clone(),
            }
        })
        .collect()
}
