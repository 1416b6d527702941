//! The momentum (EMA) update of a target network: `k ← m·k + (1 − m)·q` over parameters,
//! leaving the target's BN running statistics to its own forward passes. On the flex CPU
//! backend each parameter is blended in place in one multi-threaded pass.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use moco_models::flex::HostValues;
use rayon::prelude::*;

fn is_buffer(stack: &[String]) -> bool {
    matches!(
        stack.last().map(String::as_str),
        Some("running_mean" | "running_var")
    )
}

struct Collect {
    stack: Vec<String>,
    params: Vec<Tensor<1>>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !is_buffer(&self.stack) {
            let value = param.val().detach();
            let n = value.shape().num_elements();
            self.params.push(value.reshape([n]));
        }
    }
}

struct Blend {
    stack: Vec<String>,
    source: std::vec::IntoIter<Tensor<1>>,
    momentum: f64,
}

impl ModuleMapper for Blend {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if is_buffer(&self.stack) {
            return param;
        }
        let source = self
            .source
            .next()
            .expect("EMA source and target have the same structure");
        let m = self.momentum;
        param.map(|k| match blend_in_place(k, &source, m) {
            Ok(k) => k,
            Err(k) => {
                let q = source.reshape(k.dims());
                k.detach()
                    .mul_scalar(m)
                    .add(q.mul_scalar(1.0 - m))
                    .set_require_grad(false)
            }
        })
    }
}

/// `k ← m·k + (1 − m)·q` in one pass over `k`'s memory (the same `f32` arithmetic as the
/// composition), or `Err(k)` untouched when the backend is not flex or a value is not `f32`.
// The `Err` hands the inputs back untouched (a `Tensor` is large with several backends built in).
#[allow(clippy::result_large_err)]
fn blend_in_place<const D: usize>(
    k: Tensor<D>,
    q: &Tensor<1>,
    m: f64,
) -> Result<Tensor<D>, Tensor<D>> {
    let mut k = HostValues::take(k)?;
    let q = match HostValues::take(q.clone()) {
        Ok(q) => q,
        Err(_) => return Err(k.into_tensor()),
    };
    let (m, one_minus_m) = (m as f32, (1.0 - m) as f32);
    k.values_mut()
        .par_chunks_mut(1 << 15)
        .zip(q.values().par_chunks(1 << 15))
        .for_each(|(k, q)| {
            for (k, &q) in k.iter_mut().zip(q) {
                *k = *k * m + q * one_minus_m;
            }
        });
    Ok(k.into_tensor())
}

/// Returns `target` with every parameter replaced by `m·target + (1 − m)·source`.
///
/// Both modules must have the same architecture; parameter ids and the target's BN running
/// statistics are kept. The result takes no gradient.
pub fn ema_update<M: Module>(target: M, source: &M, momentum: f64) -> M {
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
