//! Contrastive and regression objectives for self-supervised pretraining: MoCo v3's InfoNCE
//! with batch negatives, SimCLR's NT-Xent and BYOL's normalised regression.
//!
//! All three are written with a log-softmax (subtracting the row maximum), so they stay finite
//! in f32 and in half precision.
//!
//! ```
//! use burn::tensor::{Device, Tensor, TensorData};
//! use moco_loss::infonce;
//!
//! let device = Device::flex();
//! let q = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]), &device);
//! // Keys equal to the queries: each query's positive has similarity 1, its negative 0.
//! let loss: f32 = infonce(q.clone(), q, 1.0, 0).into_scalar();
//! let expected = 2.0 * (1.0 + (-1.0f32).exp()).ln();
//! assert!((loss - expected).abs() < 1e-6);
//! ```
#![warn(missing_docs)]

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// `F.normalize(x, dim=1)`: rows scaled to unit L2 norm (norms clamped at 1e-12).
pub fn normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x.div(norm)
}

/// Mean cross-entropy of `logits` `[n, c]` against class indices `targets` `[n]`.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let picked = log_softmax(logits, 1).gather(1, targets.reshape([n, 1]));
    picked.mean().neg()
}

/// Cross-entropy against targets smoothed by `smoothing` ε (PyTorch's `label_smoothing`): the
/// target puts `1 − ε + ε/C` on the true class and `ε/C` on the others, so the loss is
/// `(1 − ε)·CE + ε·mean_c(−log p_c)`. Returns a `[1]` tensor.
pub fn cross_entropy_smoothed(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    smoothing: f64,
) -> Tensor<1> {
    let [n, _] = logits.dims();
    let log_p = log_softmax(logits, 1);
    let nll = log_p
        .clone()
        .gather(1, targets.reshape([n, 1]))
        .mean()
        .neg();
    if smoothing == 0.0 {
        return nll;
    }
    let uniform = log_p.mean().neg();
    nll.mul_scalar(1.0 - smoothing) + uniform.mul_scalar(smoothing)
}

/// MoCo v3's contrastive loss `ctr(q, k) = CE(norm(q) · norm(k_all)ᵀ / T, arange(N) + N·rank) · 2T`.
///
/// `k_all` holds the keys of every data-parallel rank, `[world · N, C]` (on one device, the
/// local keys and `rank = 0`); the positive of query `i` is key `N·rank + i`, all other keys
/// are negatives. Keys take no gradient. Returns a `[1]` tensor.
pub fn infonce(q: Tensor<2>, k_all: Tensor<2>, temperature: f64, rank: usize) -> Tensor<1> {
    let [n, _] = q.dims();
    let device = q.device();
    let logits = normalize(q)
        .matmul(normalize(k_all.detach()).transpose())
        .div_scalar(temperature);
    let start = (n * rank) as i64;
    let targets = Tensor::<1, Int>::arange(start..start + n as i64, &device);
    cross_entropy(logits, targets).mul_scalar(2.0 * temperature)
}

/// SimCLR's NT-Xent over the `2N` samples of two views `z1`, `z2` (`[N, C]` each): cosine
/// similarities over temperature `T`, self-similarity masked out, the positive of each sample
/// its other view. Mean over the `2N` samples; returns a `[1]` tensor.
pub fn nt_xent(z1: Tensor<2>, z2: Tensor<2>, temperature: f64) -> Tensor<1> {
    nt_xent_gathered(z1.clone(), z2.clone(), z1, z2, temperature, 0)
}

/// NT-Xent with every data-parallel replica's samples as negatives, as SimCLR trains on many
/// devices. The anchors are this replica's `2N` samples `a = [z1; z2]`, the candidates the
/// `2·world·N` samples of all replicas `c = [z1_all; z2_all]` (rank order, gathered with their
/// gradient path):
///
/// `ℓ = mean_i CE(norm(a_i) · norm(c)ᵀ / T with c_self(i) masked, pos(i))`,
///
/// where for sample `j < N` of `z1`, `self = N·rank + j` and `pos = world·N + N·rank + j` (its
/// `z2` view), and the reverse for `z2`. The mean over the replicas of their `ℓ` is NT-Xent
/// over the global batch; with one replica (`z*_all = z*`, rank 0) this is [`nt_xent`].
/// Returns a `[1]` tensor.
pub fn nt_xent_gathered(
    z1: Tensor<2>,
    z2: Tensor<2>,
    z1_all: Tensor<2>,
    z2_all: Tensor<2>,
    temperature: f64,
    rank: usize,
) -> Tensor<1> {
    let [n, _] = z1.dims();
    let [total, _] = z1_all.dims();
    let device = z1.device();
    let anchors = normalize(Tensor::cat(vec![z1, z2], 0));
    let candidates = normalize(Tensor::cat(vec![z1_all, z2_all], 0));
    let logits = anchors
        .matmul(candidates.transpose())
        .div_scalar(temperature);
    let (first, second) = ((n * rank) as i64, (total + n * rank) as i64);
    let range = |start: i64| Tensor::<1, Int>::arange(start..start + n as i64, &device);
    let own = Tensor::cat(vec![range(first), range(second)], 0);
    let columns = Tensor::<1, Int>::arange(0..2 * total as i64, &device);
    let shape = [2 * n, 2 * total];
    let itself = columns
        .reshape([1, 2 * total])
        .expand(shape)
        .equal(own.reshape([2 * n, 1]).expand(shape));
    let logits = logits.mask_fill(itself, f32::NEG_INFINITY);
    let positives = Tensor::cat(vec![range(second), range(first)], 0);
    cross_entropy(logits, positives)
}

/// BYOL's regression loss `mean(2 − 2·cos(p, z))`; the target `z` takes no gradient.
/// Returns a `[1]` tensor.
pub fn byol(p: Tensor<2>, z: Tensor<2>) -> Tensor<1> {
    let cos = normalize(p).mul(normalize(z.detach())).sum_dim(1);
    cos.mul_scalar(-2.0).add_scalar(2.0).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn t(v: &[f32], shape: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Device::flex())
    }

    fn close(a: f32, b: f32) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }

    #[test]
    fn nt_xent_over_replicas_is_nt_xent_over_the_global_batch() {
        let (world, n, c) = (3, 2, 4);
        let values = |seed: f32| -> Vec<f32> {
            (0..world * n * c)
                .map(|i| ((i as f32 + seed) * 0.37).sin())
                .collect()
        };
        let (z1, z2) = (
            t(&values(0.0), [world * n, c]),
            t(&values(5.0), [world * n, c]),
        );
        let whole: f32 = nt_xent(z1.clone(), z2.clone(), 0.5).into_scalar();
        let mut sum = 0.0;
        for rank in 0..world {
            let rows = rank * n..(rank + 1) * n;
            let (a, b) = (z1.clone().slice(rows.clone()), z2.clone().slice(rows));
            sum += nt_xent_gathered(a, b, z1.clone(), z2.clone(), 0.5, rank).into_scalar::<f32>();
        }
        close(sum / world as f32, whole);
    }

    #[test]
    fn infonce_by_hand() {
        // q = [[1,0],[0,1]], k = [[1,0],[1,1]]/…: logits row 0 = [1, 1/√2]/T, row 1 = [0, 1/√2]/T.
        let q = t(&[2.0, 0.0, 0.0, 3.0], [2, 2]);
        let k = t(&[1.0, 0.0, 1.0, 1.0], [2, 2]);
        let s = 1.0 / 2f32.sqrt();
        let tau = 0.5f32;
        let ce0 = -(1.0 / tau) + ((1.0 / tau).exp() + (s / tau).exp()).ln();
        let ce1 = -(s / tau) + ((0.0f32).exp() + (s / tau).exp()).ln();
        let want = (ce0 + ce1) / 2.0 * 2.0 * tau;
        close(
            infonce(q.clone(), k.clone(), tau as f64, 0).into_scalar(),
            want,
        );
        // Rank 1 of two: the positives are the second half of the gathered keys.
        let k_all = Tensor::cat(vec![t(&[0.0, 1.0, 1.0, 0.0], [2, 2]), k], 0);
        let ce0 = -(1.0 / tau)
            + ((0.0f32).exp() + (1.0 / tau).exp() + (1.0 / tau).exp() + (s / tau).exp()).ln();
        let ce1 = -(s / tau) + ((1.0 / tau).exp() + 1.0 + 1.0 + (s / tau).exp()).ln();
        close(
            infonce(q, k_all, tau as f64, 1).into_scalar(),
            (ce0 + ce1) * tau,
        );
    }

    #[test]
    fn label_smoothing_by_hand() {
        // Logits [0, ln 3] → p = [1/4, 3/4]; target class 1, ε = 0.1, C = 2:
        // (1 − ε)·(−ln ¾) + ε·½·(−ln ¼ − ln ¾).
        let logits = t(&[0.0, 3f32.ln()], [1, 2]);
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64], [1]), &Device::flex());
        let want = 0.9 * -(0.75f32.ln()) + 0.1 * 0.5 * (-(0.25f32.ln()) - 0.75f32.ln());
        close(
            cross_entropy_smoothed(logits.clone(), y.clone(), 0.1).into_scalar(),
            want,
        );
        close(
            cross_entropy_smoothed(logits.clone(), y.clone(), 0.0).into_scalar(),
            cross_entropy(logits, y).into_scalar(),
        );
    }

    #[test]
    fn nt_xent_by_hand() {
        // Two samples per view in 2-D: z1 = [e0, e1], z2 = [e0, -e1].
        let z1 = t(&[1.0, 0.0, 0.0, 1.0], [2, 2]);
        let z2 = t(&[2.0, 0.0, 0.0, -1.0], [2, 2]);
        let tau = 1.0f32;
        let e = |x: f32| (x / tau).exp();
        // Sample 0 (e0): others e1 (0), e0 (1, positive), -e1 (0).
        let l0 = -(1.0 / tau) + (e(0.0) + e(1.0) + e(0.0)).ln();
        // Sample 1 (e1): others e0 (0), e0 (0), -e1 (-1, positive).
        let l1 = 1.0 / tau + (e(0.0) + e(0.0) + e(-1.0)).ln();
        // Sample 2 (e0): e0 (1, positive), e1 (0), -e1 (0); sample 3 (-e1): e0, e1 (-1, positive), e0.
        let l2 = l0;
        let l3 = l1;
        close(
            nt_xent(z1, z2, tau as f64).into_scalar(),
            (l0 + l1 + l2 + l3) / 4.0,
        );
    }

    #[test]
    fn byol_by_hand() {
        let p = t(&[1.0, 0.0, 1.0, 1.0], [2, 2]);
        let z = t(&[3.0, 0.0, 0.0, 1.0], [2, 2]);
        let cos1 = 1.0f32 / 2f32.sqrt();
        close(
            byol(p, z).into_scalar(),
            ((2.0 - 2.0) + (2.0 - 2.0 * cos1)) / 2.0,
        );
    }

    #[test]
    fn keys_and_targets_take_no_gradient() {
        let device = Device::flex().autodiff();
        let q = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
            &device,
        )
        .require_grad();
        let k = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.5, 4.0], [2, 2]),
            &device,
        )
        .require_grad();
        let grads = (infonce(q.clone(), k.clone(), 0.2, 0) + byol(q.clone(), k.clone())).backward();
        assert!(q.grad(&grads).is_some());
        assert!(k.grad(&grads).is_none());
    }

    #[test]
    fn stable_with_huge_logits_and_in_half_precision() {
        let q = t(&[1.0, 0.0, 0.0, 1.0], [2, 2]);
        let loss: f32 = infonce(q.clone(), q.clone(), 1e-4, 0).into_scalar();
        assert!(loss.is_finite() && loss.abs() < 1e-3, "{loss}");
        let loss: f32 = nt_xent(q.clone(), q.clone(), 1e-4).into_scalar();
        assert!(loss.is_finite());
        let half = q.clone().cast(burn::tensor::DType::F16);
        let l16: f32 = infonce(half.clone(), half, 0.2, 0)
            .cast(burn::tensor::DType::F32)
            .into_scalar();
        let l32: f32 = infonce(q.clone(), q, 0.2, 0).into_scalar();
        assert!((l16 - l32).abs() < 1e-2, "{l16} vs {l32}");
    }
}
