//! One MoCo v3 step recorded as named tensors in PyTorch's names and layouts: the eval-mode
//! forward, the training step's queries, keys and loss, every gradient, and the whole state
//! after the optimizer step. The golden files hold the same names, so a record is compared
//! with PyTorch's, or with another backend's record, by [`super::check::compare_records`].

use burn::backend::Autodiff;
use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer};
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
    model: MoCo<Autodiff>,
    family: Family,
    x1: TensorData,
    x2: TensorData,
    spec: &StepSpec,
    device: &Device,
) -> Result<Record, String> {
    let mut record = Record::new();
    let eval = model
        .valid()
        .forward_query(Tensor::<4>::from_data(x1.clone(), device));
    for (name, t) in [
        ("eval.features_x1", eval.features),
        ("eval.projection_x1", eval.projection),
        ("eval.prediction_x1", eval.prediction),
    ] {
        record.insert(name.into(), t.into_data());
    }

    let input = |d: TensorData| Tensor::<Autodiff, 4>::from_data(d, device);
    let params = StepParams {
        temperature: spec.temperature,
        momentum: spec.momentum,
    };
    let (siamese, out) = Siamese { model, byol: false }.forward_loss(input(x1), input(x2), &params);
    let keys = |k: Option<Tensor<Autodiff, 2>>| {
        k.map(|k| k.inner().into_data())
            .ok_or("the MoCo step produced no keys")
    };
    record.insert("train.q1".into(), out.q1.clone().inner().into_data());
    record.insert("train.q2".into(), out.q2.clone().inner().into_data());
    record.insert("train.k1".into(), keys(out.k1.clone())?);
    record.insert("train.k2".into(), keys(out.k2.clone())?);
    record.insert("train.loss".into(), out.loss.clone().inner().into_data());

    let grads = GradientsParams::from_grads(out.loss.backward(), &siamese);
    for snap in siamese
        .model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
    {
        let name = burn_to_torch(&snap.full_path(), family);
        let Some(id) = snap.tensor_id else { continue };
        // Burn keeps a linear weight as [in, out]; PyTorch as [out, in].
        let linear_weight =
            snap.module_type().as_deref() == Some("Struct:Linear") && name.ends_with(".weight");
        let grad = match snap.shape.num_dims() {
            1 => grads.get::<1>(id).map(|g| g.into_data()),
            2 => grads
                .get::<2>(id)
                .map(|g| if linear_weight { g.transpose() } else { g }.into_data()),
            3 => grads.get::<3>(id).map(|g| g.into_data()),
            4 => grads.get::<4>(id).map(|g| g.into_data()),
            n => return Err(format!("{name}: unexpected rank {n}")),
        };
        if let Some(g) = grad {
            record.insert(format!("grad.{name}"), g);
        }
    }

    let mut optim = spec.optim.init::<Autodiff, Siamese<Autodiff>>();
    let siamese = optim.step(spec.lr, siamese, grads);
    for (name, data) in torch_state_dict(&siamese.model, family) {
        record.insert(format!("after.{name}"), data);
    }
    Ok(record)
}
