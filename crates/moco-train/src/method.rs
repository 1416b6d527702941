//! The three self-supervised methods of the paper's comparison, each as one training step:
//! forward both views separately (every BN sees one view's batch), the loss, and for the
//! methods with a target network its momentum update, done before the keys are computed as
//! MoCo v3 does.

use burn::module::Module;
use burn::prelude::*;
use moco_loss::{byol, infonce, nt_xent, nt_xent_gathered};
use moco_models::{AnyBackbone, Backbone, Encoder, MoCo, MocoConfig};
use serde::{Deserialize, Serialize};

use crate::ema::ema_update;

/// Which objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// MoCo v3: predictor on the base encoder, momentum-encoder keys, symmetric InfoNCE with
    /// batch negatives.
    MocoV3,
    /// SimCLR: one encoder, NT-Xent over both views.
    SimClr,
    /// BYOL: predictor on the online encoder, EMA target, normalised regression.
    Byol,
}

impl Method {
    /// Every method, in the order `--help` lists them.
    pub const ALL: [Method; 3] = [Method::MocoV3, Method::SimClr, Method::Byol];
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "mocov3" | "moco" | "moco-v3" => Ok(Method::MocoV3),
            "simclr" => Ok(Method::SimClr),
            "byol" => Ok(Method::Byol),
            _ => Err(format!("unknown method '{s}': use mocov3, simclr or byol")),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::MocoV3 => "mocov3",
            Method::SimClr => "simclr",
            Method::Byol => "byol",
        })
    }
}

/// Per-step hyper-parameters of the objective.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepParams {
    /// InfoNCE / NT-Xent temperature.
    pub temperature: f64,
    /// EMA coefficient of the target network for this step.
    pub momentum: f64,
}

/// What one forward of both views produced.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// The loss to minimise, `[1]`.
    pub loss: Tensor<1>,
    /// Queries / online predictions / projections of view 1.
    pub q1: Tensor<2>,
    /// Same for view 2.
    pub q2: Tensor<2>,
    /// Keys / targets of view 1 (no gradient); absent for SimCLR.
    pub k1: Option<Tensor<2>>,
    /// Keys / targets of view 2.
    pub k2: Option<Tensor<2>>,
}

/// A model that can be pretrained with one of the [`Method`]s: [`Siamese`] (MoCo v3, BYOL)
/// and [`SimClr`], around any [`Backbone`].
pub trait Pretrain: Module + Clone + Send {
    /// The backbone being pretrained; its inference copy (`valid()`, without autodiff) is what
    /// the kNN monitor evaluates.
    type Net: Backbone;

    /// Forwards both views, updates the target network if there is one, and returns the
    /// model with the loss.
    fn forward_loss(self, x1: Tensor<4>, x2: Tensor<4>, params: &StepParams) -> (Self, StepOutput);
    /// The backbone being pretrained (the base / online encoder's).
    fn backbone(&self) -> &Self::Net;

    /// The layer group of a parameter of the model, from its path of field names, for the
    /// gradient monitor: `projector` and `predictor` for the heads, the backbone's own groups
    /// ([`Backbone::layer_group`]) inside it.
    fn layer_group(&self, path: &[String]) -> String {
        let has = |name: &str| path.iter().any(|p| p == name);
        if has("predictor") {
            return "predictor".into();
        }
        if has("projector") {
            return "projector".into();
        }
        match path.iter().position(|p| p == "backbone") {
            Some(i) => self.backbone().layer_group(&path[i + 1..]),
            None => "other".into(),
        }
    }
}

/// MoCo v3 or BYOL: both use a base encoder with predictor and a momentum encoder.
#[derive(Module, Debug)]
pub struct Siamese<N = AnyBackbone> {
    /// The networks, in MoCo v3's layout.
    pub model: MoCo<N>,
    /// MoCo v3's InfoNCE (`false`) or BYOL's regression (`true`).
    pub byol: bool,
}

impl<N> Pretrain for Siamese<N>
where
    N: Backbone,
{
    type Net = N;

    fn forward_loss(
        mut self,
        x1: Tensor<4>,
        x2: Tensor<4>,
        params: &StepParams,
    ) -> (Self, StepOutput) {
        let q1 = self.model.forward_query(x1.clone()).prediction;
        let q2 = self.model.forward_query(x2.clone()).prediction;
        self.model.momentum_encoder = ema_update(
            self.model.momentum_encoder,
            &self.model.base_encoder,
            params.momentum,
        );
        let k1 = self.model.forward_key(x1).detach();
        let k2 = self.model.forward_key(x2).detach();
        let loss = if self.byol {
            byol(q1.clone(), k2.clone()) + byol(q2.clone(), k1.clone())
        } else {
            let t = params.temperature;
            // Under data parallelism the keys of every replica are the negatives, and this
            // replica's positives sit at its rank's offset.
            match moco_models::replicas() {
                Some(g) => {
                    let rank = g.rank();
                    let k2_all = moco_models::gather_rows(g.as_ref(), k2.clone());
                    let k1_all = moco_models::gather_rows(g.as_ref(), k1.clone());
                    infonce(q1.clone(), k2_all, t, rank) + infonce(q2.clone(), k1_all, t, rank)
                }
                None => {
                    infonce(q1.clone(), k2.clone(), t, 0) + infonce(q2.clone(), k1.clone(), t, 0)
                }
            }
        };
        (
            self,
            StepOutput {
                loss,
                q1,
                q2,
                k1: Some(k1),
                k2: Some(k2),
            },
        )
    }

    fn backbone(&self) -> &N {
        &self.model.base_encoder.backbone
    }
}

/// SimCLR: one encoder with projector.
#[derive(Module, Debug)]
pub struct SimClr<N = AnyBackbone> {
    /// Backbone and projector.
    pub encoder: Encoder<N>,
}

impl<N> Pretrain for SimClr<N>
where
    N: Backbone,
{
    type Net = N;

    fn forward_loss(self, x1: Tensor<4>, x2: Tensor<4>, params: &StepParams) -> (Self, StepOutput) {
        let z1 = self.encoder.forward(x1).1;
        let z2 = self.encoder.forward(x2).1;
        let t = params.temperature;
        // Under data parallelism every replica's samples are negatives, gathered with their
        // gradient, as SimCLR trains on many devices.
        let loss = match moco_models::replicas() {
            Some(g) => {
                let z1_all = moco_models::gather_rows(g.as_ref(), z1.clone());
                let z2_all = moco_models::gather_rows(g.as_ref(), z2.clone());
                nt_xent_gathered(z1.clone(), z2.clone(), z1_all, z2_all, t, g.rank())
            }
            None => nt_xent(z1.clone(), z2.clone(), t),
        };
        (
            self,
            StepOutput {
                loss,
                q1: z1,
                q2: z2,
                k1: None,
                k2: None,
            },
        )
    }

    fn backbone(&self) -> &N {
        &self.encoder.backbone
    }
}

impl<N> Siamese<N> {
    /// MoCo v3 on a model built around any backbone (see [`moco_models::Heads::init`]).
    pub fn moco_v3(model: MoCo<N>) -> Self {
        Siamese { model, byol: false }
    }

    /// BYOL on a model built around any backbone.
    pub fn byol(model: MoCo<N>) -> Self {
        Siamese { model, byol: true }
    }
}

impl Method {
    /// Builds the MoCo v3 / BYOL model for `config`.
    pub fn siamese(self, config: &MocoConfig, device: &Device) -> Siamese {
        assert!(
            self != Method::SimClr,
            "SimCLR has no target network: use Method::simclr"
        );
        Siamese {
            model: config.init(device),
            byol: self == Method::Byol,
        }
    }

    /// Builds the SimCLR model for `config` (its predictor is not used).
    pub fn simclr(config: &MocoConfig, device: &Device) -> SimClr {
        SimClr {
            encoder: config.init(device).base_encoder,
        }
    }
}
