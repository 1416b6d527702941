//! One MoCo v3 step recorded as named tensors in PyTorch's names and layouts: the eval-mode
//! forward, the training step's queries, keys and loss, every gradient, and the whole state
//! after the optimizer step. The golden files hold the same names, so a record is compared
//! with PyTorch's, or with another backend's record, by [`super::check::compare_records`].

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};
use moco_models::export::torch_state_dict;
use moco_models::keys::{burn_to_torch, Family};
use moco_models::{BackboneConfig, MoCo};
use moco_train::{OptimConfig, Pretrain, Siamese, StepParams};

use super::check::Record;

/// What the recorded step does.
#[derive(Clone, Debug)]
pub struct StepSpec {
    /// InfoNCE temperature.
    pub temperature: f64,
    /// EMA coefficient of the momentum update.
    pub momentum: f64,
    /// The optimizer.
    pub optim: OptimConfig,
    /// Its learning rate.
    pub lr: f64,
}

/// The parameter-name family of a backbone.
pub fn family(backbone: &BackboneConfig) -> Family {
    match backbone {
        BackboneConfig::Vit(_) => Family::Vit,
        BackboneConfig::ResNet(_) => Family::ResNet,
    }
}

/// Runs the eval-mode forward of `x1` (BN on running statistics) and one training step of
/// `model` on the views `x1`, `x2`, and records every result.
pub fn record_step(
    model: MoCo,
    family: Family,
    x1: TensorData,
    x2: TensorData,
    spec: &StepSpec,
    device: &Device,
) -> Result<Record, String> {
    let mut record = Record::new();
    let eval = model
        .valid()
        .forward_query(Tensor::<4>::from_data(x1.clone(), &device.clone().inner()));
    for (name, t) in [
        ("eval.features_x1", eval.features),
        ("eval.projection_x1", eval.projection),
        ("eval.prediction_x1", eval.prediction),
    ] {
        record.insert(name.into(), t.into_data());
    }

    let input = |d: TensorData| Tensor::<4>::from_data(d, device);
    let params = StepParams {
        temperature: spec.temperature,
        momentum: spec.momentum,
    };
    let (siamese, out) = Siamese { model, byol: false }.forward_loss(input(x1), input(x2), &params);
    let keys = |k: Option<Tensor<2>>| {
        k.map(|k| k.inner().into_data())
            .ok_or("the MoCo step produced no keys")
    };
    record.insert("train.q1".into(), out.q1.clone().inner().into_data());
    record.insert("train.q2".into(), out.q2.clone().inner().into_data());
    record.insert("train.k1".into(), keys(out.k1.clone())?);
    record.insert("train.k2".into(), keys(out.k2.clone())?);
    record.insert("train.loss".into(), out.loss.clone().inner().into_data());

    let grads = GradientsParams::from_grads(out.loss.backward(), &siamese);
    // Every gradient read first, in the module's order: on wgpu (Burn 0.22.1) the gradients of
    // the 1-D parameters came out wrong when read while walking `collect()`'s tensors below.
    let grads_read = read_gradients(&siamese.model, &grads);
    let linear_weights = linear_weights(&siamese.model);
    for snap in siamese
        .model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
    {
        let name = burn_to_torch(&snap.name, family);
        let Some(id) = snap.param_id.map(ParamId::from) else {
            continue;
        };
        // Burn keeps a linear weight as [in, out]; PyTorch as [out, in].
        let linear_weight = linear_weights.contains(&id);
        let grad = grads_read.iter().find(|(i, _)| *i == id).map(|(_, g)| {
            if linear_weight {
                let [a, b] = [g.shape()[0], g.shape()[1]];
                let v: Vec<f32> = g.clone().convert::<f32>().try_to_vec::<f32>().unwrap();
                let t: Vec<f32> = (0..a * b).map(|k| v[(k % a) * b + k / a]).collect();
                TensorData::new(t, [b, a])
            } else {
                g.clone()
            }
        });
        if let Some(g) = grad {
            record.insert(format!("grad.{name}"), g);
        }
    }

    let mut optim = spec.optim.init();
    let siamese = optim.step(spec.lr, siamese, grads);
    for (name, data) in torch_state_dict(&siamese.model, family) {
        record.insert(format!("after.{name}"), data);
    }
    Ok(record)
}

/// The ids of the weights of `module`'s `Linear` layers.
fn linear_weights<M: Module>(module: &M) -> Vec<ParamId> {
    struct Find {
        /// The field entered last, and the type it is a field of.
        stack: Vec<(String, String)>,
        found: Vec<ParamId>,
    }
    impl ModuleVisitor for Find {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack
                .push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some((name, container)) = self.stack.last() {
                if name == "weight" && container == "Struct:Linear" {
                    self.found.push(param.id);
                }
            }
        }
    }
    let mut find = Find {
        stack: Vec::new(),
        found: Vec::new(),
    };
    module.visit(&mut find);
    find.found
}

/// Every gradient of `module`'s parameters, read in the module's order.
fn read_gradients<M: Module>(module: &M, grads: &GradientsParams) -> Vec<(ParamId, TensorData)> {
    struct Read<'a>(&'a GradientsParams, Vec<(ParamId, TensorData)>);
    impl ModuleVisitor for Read<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                self.1.push((param.id, g.into_data()));
            }
        }
    }
    let mut read = Read(grads, Vec::new());
    module.visit(&mut read);
    read.1
}
