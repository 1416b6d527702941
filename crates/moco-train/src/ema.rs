//! The momentum (EMA) update of a target network: `k ← m·k + (1 − m)·q` over parameters,
//! leaving the target's BN running statistics to its own forward passes.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

fn is_buffer(stack: &[String]) -> bool {
    matches!(
        stack.last().map(String::as_str),
        Some("running_mean" | "running_var")
    )
}

struct Collect<B: Backend> {
    stack: Vec<String>,
    params: Vec<Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !is_buffer(&self.stack) {
            let value = param.val().detach();
            let n = value.shape().num_elements();
            self.params.push(value.reshape([n]));
        }
    }
}

struct Blend<B: Backend> {
    stack: Vec<String>,
    source: std::vec::IntoIter<Tensor<B, 1>>,
    momentum: f64,
}

impl<B: Backend> ModuleMapper<B> for Blend<B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if is_buffer(&self.stack) {
            return param;
        }
        let source = self
            .source
            .next()
            .expect("EMA source and target have the same structure");
        let m = self.momentum;
        param.map(|k| {
            let q = source.reshape(k.dims());
            k.detach()
                .mul_scalar(m)
                .add(q.mul_scalar(1.0 - m))
                .set_require_grad(false)
        })
    }
}

/// Returns `target` with every parameter replaced by `m·target + (1 − m)·source`.
///
/// Both modules must have the same architecture; parameter ids and the target's BN running
/// statistics are kept. The result takes no gradient.
pub fn ema_update<B: Backend, M: Module<B>>(target: M, source: &M, momentum: f64) -> M {
    let mut collect = Collect {
        stack: Vec::new(),
        params: Vec::new(),
    };
    source.visit(&mut collect);
    let mut blend = Blend {
        stack: Vec::new(),
        source: collect.params.into_iter(),
        momentum,
    };
    let out = target.map(&mut blend);
    assert!(
        blend.source.next().is_none(),
        "EMA source has more parameters than the target"
    );
    out
}
