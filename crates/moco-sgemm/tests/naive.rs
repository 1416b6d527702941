//! Every kernel of this CPU against the definition of the product, in `f64`: odd shapes around
//! the tile and block sizes, strided and transposed operands, `α` and `β`, both thread modes.

use moco_sgemm::{Kernel, Mat, MatMut, Sgemm, Threads, ViewError};

/// A deterministic pseudo-random buffer in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// An `r × c` matrix stored row-major with padding, or transposed with padding.
struct Stored {
    data: Vec<f32>,
    row: usize,
    col: usize,
}

impl Stored {
    fn new(r: usize, c: usize, transposed: bool, seed: u64) -> Self {
        // Three spare elements per line, so the leading dimension is not the width.
        let (row, col, lines, width) = if transposed {
            (1, r + 3, c, r + 3)
        } else {
            (c + 3, 1, r, c + 3)
        };
        Stored {
            data: values(lines * width, seed),
            row,
            col,
        }
    }

    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row + j * self.col]
    }
}

struct Case {
    dims: (usize, usize, usize),
    transposes: (bool, bool, bool),
    alpha: f32,
    beta: f32,
}

fn check(sgemm: Sgemm, case: &Case) {
    let (m, n, k) = case.dims;
    let (ta, tb, tc) = case.transposes;
    let a = Stored::new(m, k, ta, 1);
    let b = Stored::new(k, n, tb, 2);
    let mut c = Stored::new(m, n, tc, 3);
    let before = c.data.clone();
    sgemm
        .run(
            case.dims,
            case.alpha,
            Mat::new(&a.data, a.row, a.col),
            Mat::new(&b.data, b.row, b.col),
            case.beta,
            MatMut::new(&mut c.data, c.row, c.col),
        )
        .unwrap();
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut size) = (0f64, 0f64);
            for p in 0..k {
                let x = a.at(i, p) as f64 * b.at(p, j) as f64;
                sum += x;
                size += x.abs();
            }
            let old = before[i * c.row + j * c.col] as f64;
            let expected = case.alpha as f64 * sum + case.beta as f64 * old;
            let tol = 2e-7 * (k as f64 + 4.0) * (size + old.abs()) + 1e-30;
            let got = c.at(i, j) as f64;
            assert!(
                (got - expected).abs() <= tol,
                "{sgemm:?} {:?} {:?} α {} β {}: C[{i}, {j}] = {got}, expected {expected}",
                case.dims,
                case.transposes,
                case.alpha,
                case.beta
            );
        }
    }
    // Nothing outside the view changed.
    for (idx, (&new, &old)) in c.data.iter().zip(&before).enumerate() {
        let (i, j) = if tc {
            (idx % c.col, idx / c.col)
        } else {
            (idx / c.row, idx % c.row)
        };
        if i >= m || j >= n {
            assert_eq!(
                new.to_bits(),
                old.to_bits(),
                "element {idx} outside C changed"
            );
        }
    }
}

fn kernels() -> Vec<Kernel> {
    Kernel::ALL.into_iter().filter(|k| k.available()).collect()
}

#[test]
fn odd_shapes_strides_and_transposes_match_the_definition() {
    let sizes = [1, 3, 6, 13, 14, 15, 17, 31, 33, 47];
    for kernel in kernels() {
        for threads in [Threads::One, Threads::Pool] {
            let sgemm = Sgemm { kernel, threads };
            for (idx, &m) in sizes.iter().enumerate() {
                let n = sizes[(idx * 3 + 1) % sizes.len()];
                let k = sizes[(idx * 7 + 2) % sizes.len()];
                for t in 0..8 {
                    let transposes = (t & 1 != 0, t & 2 != 0, t & 4 != 0);
                    let (alpha, beta) = [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)][t % 3];
                    let dims = (m, n, k);
                    check(
                        sgemm,
                        &Case {
                            dims,
                            transposes,
                            alpha,
                            beta,
                        },
                    );
                }
            }
        }
    }
}

#[test]
fn products_across_cache_blocks_and_threads_match_the_definition() {
    // k past one `kc` block (256), n past one `nc` block (384), m and n split over threads,
    // the shapes of a ViT step's products scaled down, few rows (`B` read in place) and few
    // columns (`A` read in place).
    let dims = [
        (300, 70, 600),
        (45, 800, 37),
        (529, 97, 260),
        (65, 65, 64),
        (1, 400, 300),
        (32, 512, 300),
        (64, 256, 70),
        (200, 32, 270),
    ];
    for kernel in kernels() {
        for &dims in &dims {
            for (transposes, beta) in [((false, false, false), 0.0), ((true, true, false), 1.0)] {
                let sgemm = Sgemm {
                    kernel,
                    threads: Threads::Pool,
                };
                check(
                    sgemm,
                    &Case {
                        dims,
                        transposes,
                        alpha: 1.0,
                        beta,
                    },
                );
            }
        }
    }
}

#[test]
fn empty_products_scale_c_by_beta() {
    for kernel in kernels() {
        let sgemm = Sgemm {
            kernel,
            threads: Threads::One,
        };
        for beta in [0.0, 1.0, 3.0] {
            check(
                sgemm,
                &Case {
                    dims: (5, 7, 0),
                    transposes: (false, false, false),
                    alpha: 2.0,
                    beta,
                },
            );
            check(
                sgemm,
                &Case {
                    dims: (0, 7, 4),
                    transposes: (false, false, false),
                    alpha: 2.0,
                    beta,
                },
            );
        }
    }
}

#[test]
fn beta_zero_does_not_read_c() {
    for kernel in kernels() {
        let (m, n, k) = (20, 40, 9);
        let a = values(m * k, 4);
        let b = values(k * n, 5);
        let mut c = vec![f32::NAN; m * n];
        let sgemm = Sgemm {
            kernel,
            threads: Threads::One,
        };
        let views = (Mat::rows(&a, k), Mat::rows(&b, n));
        sgemm
            .run(
                (m, n, k),
                1.0,
                views.0,
                views.1,
                0.0,
                MatMut::rows(&mut c, n),
            )
            .unwrap();
        assert!(
            c.iter().all(|x| x.is_finite()),
            "{kernel:?} read C with β = 0"
        );
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (m, n, k) = (203, 150, 700);
    let a = values(m * k, 6);
    let b = values(k * n, 7);
    for kernel in kernels() {
        let run = |threads: Threads| {
            let mut c = vec![0f32; m * n];
            let sgemm = Sgemm { kernel, threads };
            let (a, b) = (Mat::rows(&a, k), Mat::rows(&b, n));
            sgemm
                .run((m, n, k), 1.0, a, b, 0.0, MatMut::rows(&mut c, n))
                .unwrap();
            c
        };
        let one = run(Threads::One);
        for pool in [2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(pool)
                .build()
                .unwrap();
            let many = pool.install(|| run(Threads::Pool));
            assert!(one
                .iter()
                .zip(&many)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
}

#[test]
fn views_past_their_buffer_are_refused_and_nothing_is_written() {
    let a = [1.0f32; 6];
    let b = [1.0f32; 5];
    let mut c = [7.0f32; 4];
    let err = moco_sgemm::sgemm(
        (2, 2, 3),
        1.0,
        Mat::rows(&a, 3),
        Mat::rows(&b, 2),
        0.0,
        MatMut::rows(&mut c, 2),
    )
    .unwrap_err();
    assert_eq!(
        err,
        ViewError::OutOfBounds {
            name: "B",
            extent: 6,
            len: 5
        }
    );
    assert!(err.to_string().contains("operand B out of bounds"));
    assert_eq!(c, [7.0; 4]);
}

#[test]
fn an_uninitialised_output_is_written_whole_and_never_read() {
    let (m, n, k) = (37, 70, 19);
    let a = values(m * k, 8);
    let b = values(k * n, 9);
    for kernel in kernels() {
        for threads in [Threads::One, Threads::Pool] {
            let sgemm = Sgemm { kernel, threads };
            let (am, bm) = (Mat::rows(&a, k), Mat::rows(&b, n));
            let mut fresh: Vec<f32> = Vec::with_capacity(m * n);
            let c = MatMut::uninit(fresh.spare_capacity_mut(), n, 1);
            sgemm.run((m, n, k), 1.0, am, bm, 0.0, c).unwrap();
            // SAFETY: a product with β = 0 writes every element of the view.
            unsafe { fresh.set_len(m * n) };
            let mut zeroed = vec![0f32; m * n];
            sgemm
                .run((m, n, k), 1.0, am, bm, 0.0, MatMut::rows(&mut zeroed, n))
                .unwrap();
            assert!(fresh
                .iter()
                .zip(&zeroed)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
            let mut again: Vec<f32> = Vec::with_capacity(m * n);
            let c = MatMut::uninit(again.spare_capacity_mut(), n, 1);
            let err = sgemm.run((m, n, k), 1.0, am, bm, 1.0, c).unwrap_err();
            assert_eq!(err, ViewError::Uninitialized);
        }
    }
}
