//! The one-pass, in-place updates on flex (optimizer step, momentum encoder blend) equal the
//! composition of tensor operations they replace, over shapes that cross the pass's task
//! boundaries, for several steps; tensors that share memory with the updated one keep their
//! values.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::optim::Optimizer;
use burn::prelude::*;
use burn::tensor::{Distribution, Tensor};
use moco_train::ema::ema_update;
use moco_train::optim::{Optim, OptimState};
use moco_train::OptimConfig;

fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<D> {
    let device = Device::flex();
    device.seed(seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device)
}

fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().try_into_vec::<f32>().unwrap()
}

fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let tol = 2e-6 * y.abs().max(1.0);
        assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y}");
    }
}

fn rules() -> Vec<OptimConfig> {
    vec![
        OptimConfig::adamw(0.1),
        OptimConfig::adamw(0.05).with_decay_1d(false),
        OptimConfig::adamw(0.0),
        OptimConfig::lars(1e-4),
        OptimConfig::lars(0.0),
        OptimConfig::sgd(0.9, 1e-4),
        OptimConfig::sgd(0.0, 0.1),
        OptimConfig::sgd(0.9, 0.0).with_decay_1d(false),
    ]
}

type State<const D: usize> = Option<OptimState<D>>;

/// Three steps of `optim` from `p` with gradients drawn per step; the parameter and state after
/// each step.
fn run<const D: usize>(optim: &Optim, p: Tensor<D>, seed: u64) -> Vec<(Vec<f32>, State<D>)> {
    let (mut p, mut state) = (p, None);
    let mut out = Vec::new();
    for (i, lr) in [0.1, 0.03, 1e-3].into_iter().enumerate() {
        let grad = random(p.dims(), seed + 100 + i as u64).mul_scalar(0.5);
        let (next, next_state) = optim.step(lr, p, grad, state);
        out.push((values(&next), next_state.clone()));
        (p, state) = (next, next_state);
    }
    out
}

fn check<const D: usize>(shape: [usize; D], seed: u64) {
    for config in rules() {
        let p = random(shape, seed);
        let one = run(&config.build(), p.clone(), seed);
        let composed = run(&config.build().composed(), p, seed);
        for (step, ((a, sa), (b, sb))) in one.iter().zip(&composed).enumerate() {
            let what = format!("{config:?} {shape:?} step {step}");
            assert_close(&format!("{what} parameter"), a, b);
            let (sa, sb) = (sa.as_ref().unwrap(), sb.as_ref().unwrap());
            assert_eq!(sa.step, sb.step, "{what}");
            assert_close(
                &format!("{what} buf1"),
                &values(&sa.buf1),
                &values(&sb.buf1),
            );
            match (&sa.buf2, &sb.buf2) {
                (Some(x), Some(y)) => assert_close(&format!("{what} buf2"), &values(x), &values(y)),
                (None, None) => {}
                _ => panic!("{what}: second moment on one side only"),
            }
        }
    }
}

#[test]
fn one_pass_optimizer_steps_equal_the_composition() {
    check([1], 1);
    check([7], 2);
    check([70_001], 3);
    check([3, 5], 4);
    check([129, 257], 5);
    check([2, 40_000], 6);
    check([4, 3, 3, 3], 7);
    check([17, 8, 3, 3], 8);
}

#[test]
fn one_pass_step_takes_strided_parameters_and_leaves_shared_memory_alone() {
    let optim = OptimConfig::adamw(0.1).build();
    let base = random([40, 33], 11);
    let shared = base.clone();
    let transposed = base.clone().transpose();
    let grad = random([33, 40], 12);
    let (a, _) = optim.step(0.1, transposed.clone(), grad.clone(), None);
    let (b, _) = optim
        .clone()
        .composed()
        .step(0.1, transposed, grad.clone(), None);
    assert_close("transposed", &values(&a), &values(&b));
    let (c, _) = optim.step(0.1, base, grad.transpose(), None);
    assert_ne!(values(&c), values(&shared));
    assert_eq!(
        values(&shared),
        values(&random([40, 33], 11)),
        "shared tensor changed"
    );
}

#[test]
fn momentum_blend_matches_its_formula_on_autodiff_and_plain_flex() {
    fn blend(device: Device, seed: u64) {
        device.seed(seed);
        let target: Linear = LinearConfig::new(300, 130).init(&device);
        let source: Linear = LinearConfig::new(300, 130).init(&device);
        let weights = |m: &Linear| {
            let w = m.weight.val().to_data().try_into_vec::<f32>().unwrap();
            let b = m
                .bias
                .as_ref()
                .unwrap()
                .val()
                .to_data()
                .try_into_vec::<f32>();
            (w, b.unwrap())
        };
        let (k, kb) = weights(&target);
        let (q, qb) = weights(&source);
        let kept = target.clone();
        let m = 0.99f64;
        let updated = ema_update(target, &source, m);
        let (w, b) = weights(&updated);
        let formula = |k: &[f32], q: &[f32]| -> Vec<f32> {
            let (m, n) = (m as f32, (1.0 - m) as f32);
            k.iter().zip(q).map(|(k, q)| k * m + q * n).collect()
        };
        assert_eq!(w, formula(&k, &q));
        assert_eq!(b, formula(&kb, &qb));
        assert_eq!(weights(&kept), (k, kb), "a clone of the target changed");
        assert_eq!(weights(&source), (q, qb), "the source changed");
        let _: &Param<Tensor<2>> = &updated.weight;
        assert!(!updated.weight.val().is_require_grad());
    }
    blend(Device::flex(), 1);
    blend(Device::flex().autodiff(), 2);
}

#[test]
fn one_pass_step_of_a_module_matches_composed() {
    // Through Burn's optimizer adaptor: a whole module, parameters of rank 1 and 2.
    use burn::optim::{GradientsParams, ModuleOptimizer};
    let device = Device::flex().autodiff();
    device.seed(5);
    let model: Linear = LinearConfig::new(64, 48).init(&device);
    let x = Tensor::<2>::random([9, 64], Distribution::Normal(0.0, 1.0), &device);
    let grads = |model: &Linear| {
        let loss = model.forward(x.clone()).powi_scalar(2).mean();
        GradientsParams::from_grads(loss.backward(), model)
    };
    let config = OptimConfig::lars(1e-4);
    // Gradients first: they read the (lazily initialised) parameters before any clone.
    let (ga, gb) = (grads(&model), grads(&model));
    let mut one = config.init();
    let a = one.step(0.5, model.clone(), ga);
    let mut composed = ModuleOptimizer::from(config.build().composed());
    let b = composed.step(0.5, model.clone(), gb);
    let v = |m: &Linear| m.weight.val().to_data().try_into_vec::<f32>().unwrap();
    assert_close("module weight", &v(&a), &v(&b));
    assert_ne!(v(&a), v(&model));
}
