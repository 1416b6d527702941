//! The kNN monitor: weighted k-nearest-neighbour classification of backbone features, the
//! curve the paper reads instability from (InstDisc / DINO protocol: cosine similarity,
//! votes weighted by `exp(sim / T)`, k = 200, T = 0.07).

use burn::prelude::*;
use moco_data::{DataError, Loader};
use moco_models::Backbone;

/// kNN settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnnConfig {
    /// Neighbours that vote.
    pub k: usize,
    /// Temperature of the vote weights.
    pub temperature: f64,
    /// Queries per similarity block (bounds memory: block × memory size floats).
    pub chunk: usize,
}

impl Default for KnnConfig {
    fn default() -> Self {
        KnnConfig {
            k: 200,
            temperature: 0.07,
            chunk: 512,
        }
    }
}

/// Top-1 and top-5 accuracy, in percent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnnResult {
    /// Top-1 accuracy (%).
    pub top1: f64,
    /// Top-5 accuracy (%).
    pub top5: f64,
}

/// L2-normalised backbone features of every sample the loader yields (eval mode: pass a
/// module on a backend without autodiff, e.g. `backbone.valid()`), with their labels.
pub fn extract_features<N: Backbone>(
    backbone: &N,
    loader: &Loader,
    device: &Device,
) -> Result<(Tensor<2>, Vec<usize>), DataError> {
    extract_features_with(&|x| backbone.forward(x), loader, device)
}

/// L2-normalised `f(batch)` of every batch the loader yields, with the labels.
pub fn extract_features_with<F: Fn(Tensor<4>) -> Tensor<2>>(
    f: &F,
    loader: &Loader,
    device: &Device,
) -> Result<(Tensor<2>, Vec<usize>), DataError> {
    let (feats, labels) = extract_raw_with(f, loader, device)?;
    Ok((moco_loss::normalize(feats), labels))
}

/// `f(batch)` of every batch the loader yields (not normalised), with the labels.
pub fn extract_raw_with<F: Fn(Tensor<4>) -> Tensor<2>>(
    f: &F,
    loader: &Loader,
    device: &Device,
) -> Result<(Tensor<2>, Vec<usize>), DataError> {
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    for batch in loader.epoch(0, 0) {
        let mut batch = batch?;
        let view = batch.views.swap_remove(0);
        let x = Tensor::<4>::from_data(TensorData::new(view, batch.shape), device);
        feats.push(f(x));
        labels.extend(batch.labels);
    }
    Ok((Tensor::cat(feats, 0), labels))
}

/// Classifies `queries` by weighted vote of their `k` most similar `memory` features (both
/// L2-normalised). Labels index `num_classes` classes.
pub fn knn_classify(
    memory: Tensor<2>,
    memory_labels: &[usize],
    queries: Tensor<2>,
    query_labels: &[usize],
    num_classes: usize,
    config: &KnnConfig,
) -> KnnResult {
    let [n_query, _] = queries.dims();
    let k = config.k.min(memory_labels.len()).max(1);
    let memory_t = memory.transpose();
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut start = 0;
    while start < n_query {
        let end = (start + config.chunk.max(1)).min(n_query);
        let dims = queries.dims();
        let q = queries.clone().slice([start..end, 0..dims[1]]);
        let (sim, idx) = q.matmul(memory_t.clone()).topk_with_indices(k, 1);
        let sim = sim
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 similarities");
        let idx = idx
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("integer indices");
        for (row, label) in query_labels[start..end].iter().enumerate() {
            let mut votes = vec![0f64; num_classes];
            for j in 0..k {
                let neighbour = idx[row * k + j] as usize;
                votes[memory_labels[neighbour]] +=
                    (sim[row * k + j] as f64 / config.temperature).exp();
            }
            let mut order: Vec<usize> = (0..num_classes).collect();
            order.sort_by(|a, b| votes[*b].total_cmp(&votes[*a]));
            if order[0] == *label {
                top1 += 1;
            }
            if order.iter().take(5).any(|c| c == label) {
                top5 += 1;
            }
        }
        start = end;
    }
    let n = n_query.max(1) as f64;
    KnnResult {
        top1: 100.0 * top1 as f64 / n,
        top5: 100.0 * top5 as f64 / n,
    }
}

/// Encodes the memory and evaluation sets with `backbone` and classifies the evaluation set.
pub fn knn_evaluate<N: Backbone>(
    backbone: &N,
    memory: &Loader,
    eval: &Loader,
    config: &KnnConfig,
    device: &Device,
) -> Result<KnnResult, DataError> {
    let (mem, mem_labels) = extract_features(backbone, memory, device)?;
    let (query, query_labels) = extract_features(backbone, eval, device)?;
    let classes = memory
        .dataset()
        .classes()
        .len()
        .max(eval.dataset().classes().len());
    Ok(knn_classify(
        mem,
        &mem_labels,
        query,
        &query_labels,
        classes,
        config,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_vote_by_hand() {
        let device = Device::flex();
        let t = |v: Vec<f32>, n: usize| Tensor::<2>::from_data(TensorData::new(v, [n, 2]), &device);
        // Memory: two of class 0 near (1,0), one of class 1 at (0,1).
        let memory = t(vec![1.0, 0.0, 0.8, 0.6, 0.0, 1.0], 3);
        let queries = t(vec![0.6, 0.8, 0.0, 1.0], 2);
        // With a flat vote (T = 10) the majority wins: query 1 (0, 1) gets class 0 with
        // e^0 + e^0.06 = 2.06 against e^0.1 = 1.11 and is wrong; query 0 is right.
        let cfg = KnnConfig {
            k: 3,
            temperature: 10.0,
            chunk: 1,
        };
        let r = knn_classify(
            memory.clone(),
            &[0, 0, 1],
            queries.clone(),
            &[0, 1],
            2,
            &cfg,
        );
        assert_eq!(r.top1, 50.0);
        assert_eq!(r.top5, 100.0);
        // A sharp vote (T = 0.5) follows similarity: query 1 gets e^2 = 7.39 for class 1
        // against e^0 + e^1.2 = 4.32.
        let r = knn_classify(
            memory.clone(),
            &[0, 0, 1],
            queries.clone(),
            &[0, 1],
            2,
            &KnnConfig {
                temperature: 0.5,
                ..cfg
            },
        );
        assert_eq!(r.top1, 100.0);
        // With k = 1 each query takes its nearest neighbour's class.
        let r = knn_classify(
            memory,
            &[0, 0, 1],
            queries,
            &[0, 1],
            2,
            &KnnConfig { k: 1, ..cfg },
        );
        assert_eq!(r.top1, 100.0);
    }
}
