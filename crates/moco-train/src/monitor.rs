//! The paper's diagnostics: gradient norm per layer group (spikes start in the patch
//! projection and reach the last layers tens of iterations later), a spike detector, and a
//! detector of kNN-accuracy dips.

use std::collections::{BTreeMap, VecDeque};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use moco_models::flex::HostValues;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The layer group of a parameter path (Burn field names) of this crate's models around the
/// built-in backbones: `patch_embed`, `tokens` (CLS and position embedding), `block00`…,
/// `norm`, `stem`, `stage1`…, `projector`, `predictor`. A model's own grouping is
/// [`crate::Pretrain::layer_group`].
pub fn layer_group(path: &[String]) -> String {
    let has = |name: &str| path.iter().any(|p| p == name);
    if has("predictor") {
        return "predictor".into();
    }
    if has("projector") {
        return "projector".into();
    }
    moco_models::backbone::builtin_layer_group(path)
}

struct GradNorms<'a, G: Fn(&[String]) -> String> {
    grads: &'a GradientsParams,
    group: G,
    stack: Vec<String>,
    order: Vec<String>,
    sums: BTreeMap<String, GroupSum>,
}

/// Σ g² of a group's gradients read on the host (flex), and of the others as a tensor.
type GroupSum = (f64, Option<Tensor<1>>);

impl<G: Fn(&[String]) -> String> ModuleVisitor for GradNorms<'_, G> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.get::<D>(param.id) else {
            return;
        };
        let group = (self.group)(&self.stack);
        if !self.order.contains(&group) {
            self.order.push(group.clone());
        }
        let (host, tensor) = self.sums.entry(group).or_insert((0.0, None));
        // On flex, one pass over the gradient's memory; elsewhere a reduction on the device.
        match HostValues::<D>::take(g) {
            Ok(values) => *host += sum_of_squares(values.values()),
            Err(g) => {
                let n = g.shape().num_elements();
                let sq = g.reshape([n]).square().sum();
                *tensor = Some(match tensor.take() {
                    Some(s) => s.add(sq),
                    None => sq,
                });
            }
        }
    }
}

/// Σ v² in `f64`, over blocks of the slice in parallel.
fn sum_of_squares(values: &[f32]) -> f64 {
    const BLOCK: usize = 1 << 14;
    values
        .par_chunks(BLOCK)
        .map(|block| {
            block
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
        })
        .sum()
}

/// L2 norm of the gradient of each layer group (`group` of a parameter's path), in the
/// model's order (first layer first).
pub fn gradient_norms<M: Module>(
    model: &M,
    grads: &GradientsParams,
    group: impl Fn(&[String]) -> String,
) -> Vec<(String, f64)> {
    let mut v = GradNorms::<_> {
        grads,
        group,
        stack: Vec::new(),
        order: Vec::new(),
        sums: BTreeMap::new(),
    };
    model.visit(&mut v);
    if v.order.is_empty() {
        return Vec::new();
    }
    // The device sums of all groups in one transfer.
    let on_device: Vec<Tensor<1>> = v.order.iter().filter_map(|g| v.sums[g].1.clone()).collect();
    let mut device_sums = if on_device.is_empty() {
        Vec::new()
    } else {
        Tensor::cat(on_device, 0)
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap_or_default()
    }
    .into_iter();
    v.order
        .into_iter()
        .map(|group| {
            let (host, tensor) = &v.sums[&group];
            let device = match tensor {
                Some(_) => device_sums.next().unwrap_or(0.0),
                None => 0.0,
            };
            (group, (host + device).sqrt())
        })
        .collect()
}

/// A gradient-norm spike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpikeEvent {
    /// Iteration.
    pub step: u64,
    /// Layer group.
    pub layer: String,
    /// The norm.
    pub norm: f64,
    /// The running median it is compared with.
    pub median: f64,
}

/// Flags norms above `factor ×` the running median of the last `window` norms of the group.
#[derive(Clone, Debug)]
pub struct SpikeDetector {
    factor: f64,
    window: usize,
    warmup: usize,
    history: BTreeMap<String, VecDeque<f64>>,
}

impl SpikeDetector {
    /// Spikes are norms over `factor` times the median of the last `window` ones (once at least
    /// `window / 5` are known).
    pub fn new(factor: f64, window: usize) -> Self {
        SpikeDetector {
            factor,
            window: window.max(5),
            warmup: (window / 5).max(5),
            history: BTreeMap::new(),
        }
    }

    /// Records one step's norms; returns the spikes among them.
    pub fn observe(&mut self, step: u64, norms: &[(String, f64)]) -> Vec<SpikeEvent> {
        let mut events = Vec::new();
        for (layer, norm) in norms {
            let h = self.history.entry(layer.clone()).or_default();
            if h.len() >= self.warmup {
                let mut sorted: Vec<f64> = h.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                let median = sorted[sorted.len() / 2];
                if *norm > self.factor * median && median > 0.0 {
                    events.push(SpikeEvent {
                        step,
                        layer: layer.clone(),
                        norm: *norm,
                        median,
                    });
                }
            }
            h.push_back(*norm);
            if h.len() > self.window {
                h.pop_front();
            }
        }
        events
    }
}

/// A drop of the kNN accuracy between two evaluations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DipEvent {
    /// Iteration of the evaluation that dropped.
    pub step: u64,
    /// Previous top-1 (%).
    pub before: f64,
    /// This top-1 (%).
    pub after: f64,
}

/// Flags a kNN top-1 drop larger than a threshold: fixed, or scaled to the evaluation set.
#[derive(Clone, Debug)]
pub struct DipDetector {
    threshold: DipThreshold,
    last: Option<f64>,
}

#[derive(Clone, Copy, Debug)]
enum DipThreshold {
    Points(f64),
    /// Evaluation-set size.
    Scaled(usize),
}

/// The smallest scaled threshold (points): near 0 % or 100 % the binomial error vanishes.
const MIN_SCALED_DIP: f64 = 0.5;

impl DipDetector {
    /// Dips are drops of more than `threshold` points.
    pub fn new(threshold: f64) -> Self {
        DipDetector {
            threshold: DipThreshold::Points(threshold),
            last: None,
        }
    }

    /// Dips are drops larger than two binomial standard errors of the previous top-1 on
    /// `eval_images` images, `2 · 100 · sqrt(p (1 − p) / n)` points, at least 0.5: what a
    /// re-evaluation of an unchanged network on another sample of that size could move.
    pub fn scaled(eval_images: usize) -> Self {
        DipDetector {
            threshold: DipThreshold::Scaled(eval_images.max(1)),
            last: None,
        }
    }

    /// The threshold (points) for a drop from `before` (%).
    pub fn threshold(&self, before: f64) -> f64 {
        match self.threshold {
            DipThreshold::Points(points) => points,
            DipThreshold::Scaled(n) => {
                let p = (before / 100.0).clamp(0.0, 1.0);
                (200.0 * (p * (1.0 - p) / n as f64).sqrt()).max(MIN_SCALED_DIP)
            }
        }
    }

    /// Records one evaluation.
    pub fn observe(&mut self, step: u64, top1: f64) -> Option<DipEvent> {
        let event = self
            .last
            .filter(|&b| b - top1 > self.threshold(b))
            .map(|before| DipEvent {
                step,
                before,
                after: top1,
            });
        self.last = Some(top1);
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(String::from).collect()
    }

    #[derive(Module, Debug)]
    struct TwoLayers {
        first: burn::nn::Linear,
        second: burn::nn::Linear,
    }

    /// The norm of each group is √(Σ g²) over its parameters' gradients (the host pass on flex),
    /// at sizes around the parallel block.
    #[test]
    fn gradient_norms_are_the_l2_norms_of_each_group() {
        let device = Device::flex().autodiff();
        for (d_in, d_mid) in [(3, 5), (130, 257)] {
            let model = TwoLayers {
                first: burn::nn::LinearConfig::new(d_in, d_mid).init(&device),
                second: burn::nn::LinearConfig::new(d_mid, 2).init(&device),
            };
            let x = Tensor::<2>::random([4, d_in], burn::tensor::Distribution::Default, &device);
            let loss = model
                .second
                .forward(model.first.forward(x).tanh())
                .powf_scalar(2.0)
                .sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let norms = gradient_norms::<_>(&model, &grads, |path| path[0].clone());
            let expected = |layer: &burn::nn::Linear| {
                let w = grads.get::<2>(layer.weight.id).unwrap();
                let b = grads.get::<1>(layer.bias.as_ref().unwrap().id).unwrap();
                let sq = |v: Vec<f32>| v.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
                (sq(w.into_data().try_to_vec::<f32>().unwrap())
                    + sq(b.into_data().try_to_vec::<f32>().unwrap()))
                .sqrt()
            };
            let names: Vec<&str> = norms.iter().map(|(g, _)| g.as_str()).collect();
            assert_eq!(names, ["first", "second"]);
            for ((_, norm), layer) in norms.iter().zip([&model.first, &model.second]) {
                let want = expected(layer);
                assert!(
                    (norm - want).abs() <= 1e-9 * want.max(1.0),
                    "{norm} vs {want}"
                );
            }
        }
    }

    #[test]
    fn groups_follow_the_architecture() {
        assert_eq!(
            layer_group(&p(
                "model.base_encoder.backbone.Vit.patch_embed.Patchify.proj.weight"
            )),
            "patch_embed"
        );
        assert_eq!(
            layer_group(&p(
                "model.base_encoder.backbone.Vit.blocks.3.attn.qkv.weight"
            )),
            "block03"
        );
        assert_eq!(
            layer_group(&p("model.base_encoder.backbone.Vit.cls_token")),
            "tokens"
        );
        assert_eq!(
            layer_group(&p("model.base_encoder.backbone.Vit.norm.gamma")),
            "norm"
        );
        assert_eq!(
            layer_group(&p("model.base_encoder.projector.linears.0.weight")),
            "projector"
        );
        assert_eq!(
            layer_group(&p("model.predictor.norms.0.gamma")),
            "predictor"
        );
        assert_eq!(
            layer_group(&p("encoder.backbone.ResNet.conv1.weight")),
            "stem"
        );
        assert_eq!(
            layer_group(&p("encoder.backbone.ResNet.stages.1.0.conv1.weight")),
            "stage2"
        );
    }

    #[test]
    fn spikes_and_dips() {
        let mut d = SpikeDetector::new(3.0, 20);
        for step in 0..10 {
            assert!(d
                .observe(step, &[("a".into(), 1.0 + 0.01 * step as f64)])
                .is_empty());
        }
        let e = d.observe(10, &[("a".into(), 5.0)]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].layer, "a");
        let scaled = DipDetector::scaled(2000);
        assert!((scaled.threshold(70.0) - 2.0494).abs() < 1e-4);
        assert!((DipDetector::scaled(10_000).threshold(70.0) - 0.9165).abs() < 1e-4);
        assert_eq!(DipDetector::scaled(10_000).threshold(99.9), 0.5);
        let mut s = DipDetector::scaled(2000);
        assert!(s.observe(0, 70.0).is_none());
        assert!(s.observe(1, 68.0).is_none());
        assert!(s.observe(2, 65.5).is_some());
        let mut dips = DipDetector::new(2.0);
        assert!(dips.observe(0, 50.0).is_none());
        assert!(dips.observe(1, 49.0).is_none());
        assert_eq!(
            dips.observe(2, 45.0),
            Some(DipEvent {
                step: 2,
                before: 49.0,
                after: 45.0
            })
        );
    }
}
