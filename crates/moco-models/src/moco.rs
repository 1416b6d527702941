//! The MoCo v3 model: base encoder (backbone + projector), momentum encoder, predictor.

use burn::module::Module;
use burn::prelude::*;
use burn_store::ModuleSnapshot;
use serde::{Deserialize, Serialize};

use crate::backbone::Backbone;
use crate::heads::{MlpHead, MlpHeadConfig};
use crate::resnet::{BlockKind, ResNet, ResNetConfig, Stem};
use crate::vit::{Vit, VitConfig};
use crate::ModelError;

/// Backbone architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackboneConfig {
    /// Vision Transformer.
    Vit(VitConfig),
    /// ResNet.
    ResNet(ResNetConfig),
}

/// Names accepted by [`BackboneConfig::preset`].
pub const PRESETS: &[&str] = &[
    "vit_tiny",
    "vit_small",
    "vit_base",
    "vit_large",
    "vit_huge",
    "vit_conv_small",
    "vit_conv_base",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet50x2",
    "resnet50x4",
    "resnet101",
    "resnet152",
];

impl BackboneConfig {
    /// A named architecture (see [`PRESETS`]) at its ImageNet defaults.
    pub fn preset(name: &str) -> Result<Self, ModelError> {
        Ok(match name {
            "vit_tiny" => Self::Vit(VitConfig::vit_tiny()),
            "vit_small" => Self::Vit(VitConfig::vit_small()),
            "vit_base" => Self::Vit(VitConfig::vit_base()),
            "vit_large" => Self::Vit(VitConfig::vit_large()),
            "vit_huge" => Self::Vit(VitConfig::vit_huge()),
            "vit_conv_small" => Self::Vit(VitConfig::vit_conv_small()),
            "vit_conv_base" => Self::Vit(VitConfig::vit_conv_base()),
            "resnet18" => Self::ResNet(ResNetConfig::resnet18()),
            "resnet34" => Self::ResNet(ResNetConfig::resnet34()),
            "resnet50" => Self::ResNet(ResNetConfig::resnet50(1)),
            "resnet50x2" => Self::ResNet(ResNetConfig::resnet50(2)),
            "resnet50x4" => Self::ResNet(ResNetConfig::resnet50(4)),
            "resnet101" => Self::ResNet(ResNetConfig::resnet101()),
            "resnet152" => Self::ResNet(ResNetConfig::resnet152()),
            other => {
                return Err(ModelError::InvalidConfig(format!(
                    "unknown architecture '{other}'; known: {}",
                    PRESETS.join(", ")
                )))
            }
        })
    }

    /// Width of the backbone's output features.
    pub fn num_features(&self) -> usize {
        match self {
            Self::Vit(c) => c.embed_dim,
            Self::ResNet(c) => c.num_features(),
        }
    }

    /// Channels of the input images.
    pub fn in_chans(&self) -> usize {
        match self {
            Self::Vit(c) => c.in_chans,
            Self::ResNet(c) => c.in_chans,
        }
    }

    /// Sets the input image side, channel count and (ViT) patch size; `None` keeps a value.
    pub fn with_input(
        mut self,
        img: Option<usize>,
        in_chans: Option<usize>,
        patch: Option<usize>,
    ) -> Self {
        match &mut self {
            Self::Vit(c) => {
                if let Some(v) = img {
                    c.img_size = v;
                }
                if let Some(v) = in_chans {
                    c.in_chans = v;
                }
                if let Some(v) = patch {
                    c.patch_size = v;
                }
            }
            Self::ResNet(c) => {
                if let Some(v) = in_chans {
                    c.in_chans = v;
                }
                if img.is_some_and(|v| v <= 64) {
                    c.stem = Stem::Small;
                }
            }
        }
        self
    }

    /// Checks that the configuration describes a buildable model.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            Self::Vit(c) => c.validate(),
            Self::ResNet(c) => c.validate(),
        }
    }

    /// Builds the backbone.
    pub fn init(&self, device: &Device) -> AnyBackbone {
        match self {
            Self::Vit(c) => AnyBackbone::Vit(c.init(device)),
            Self::ResNet(c) => AnyBackbone::ResNet(c.init(device)),
        }
    }

    /// Short description, e.g. `vit 384w 12d 12h p16 224px`.
    pub fn describe(&self) -> String {
        match self {
            Self::Vit(c) => format!(
                "vit {}w {}d {}h p{} {}px {}ch{}",
                c.embed_dim,
                c.depth,
                c.num_heads,
                c.patch_size,
                c.img_size,
                c.in_chans,
                if c.conv_stem { " conv-stem" } else { "" }
            ),
            Self::ResNet(c) => format!(
                "resnet {:?} {} width {} {}ch {:?} stem",
                c.layers,
                match c.block {
                    BlockKind::Basic => "basic",
                    BlockKind::Bottleneck => "bottleneck",
                },
                c.width,
                c.in_chans,
                c.stem
            ),
        }
    }
}

/// The ViT or ResNet a [`BackboneConfig`] builds.
#[derive(Module, Debug)]
pub enum AnyBackbone {
    /// Vision Transformer.
    Vit(Vit),
    /// ResNet.
    ResNet(ResNet),
}

impl AnyBackbone {
    /// `[batch, C, H, W]` images to `[batch, features]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            AnyBackbone::Vit(m) => m.forward(x),
            AnyBackbone::ResNet(m) => m.forward(x),
        }
    }

    /// The forward of fine-tuning: stochastic depth at `drop_path` for a ViT (see
    /// [`Vit::forward_drop_path`]); a ResNet ignores it.
    pub fn forward_drop_path(&self, x: Tensor<4>, drop_path: f64) -> Tensor<2> {
        match self {
            AnyBackbone::Vit(m) => m.forward_drop_path(x, drop_path),
            AnyBackbone::ResNet(m) => m.forward(x),
        }
    }

    /// Transformer blocks of a ViT (for layer-wise learning-rate decay); 0 for a ResNet.
    pub fn depth(&self) -> usize {
        match self {
            AnyBackbone::Vit(m) => m.blocks.len(),
            AnyBackbone::ResNet(_) => 0,
        }
    }
}

/// Configuration of a [`MoCo`] model.
#[derive(Config, Debug, PartialEq)]
pub struct MocoConfig {
    /// Backbone of both encoders.
    pub backbone: BackboneConfig,
    /// Projector on top of the backbone (both encoders).
    pub projector: MlpHeadConfig,
    /// Predictor on top of the base encoder.
    pub predictor: MlpHeadConfig,
}

impl MocoConfig {
    /// MoCo v3's heads for a ViT: projector 3 layers `D → mlp → mlp → out`, predictor
    /// 2 layers `out → mlp → out`, both ending in BN.
    pub fn vit(vit: VitConfig, mlp_dim: usize, out_dim: usize) -> Self {
        let d = vit.embed_dim;
        Self::new(
            BackboneConfig::Vit(vit),
            MlpHeadConfig::new(3, d, mlp_dim, out_dim),
            MlpHeadConfig::new(2, out_dim, mlp_dim, out_dim),
        )
    }

    /// MoCo v3's heads for a ResNet: projector 2 layers ending in BN, predictor 2 layers
    /// without the final BN.
    pub fn resnet(resnet: ResNetConfig, mlp_dim: usize, out_dim: usize) -> Self {
        let d = resnet.num_features();
        Self::new(
            BackboneConfig::ResNet(resnet),
            MlpHeadConfig::new(2, d, mlp_dim, out_dim),
            MlpHeadConfig::new(2, out_dim, mlp_dim, out_dim).with_last_bn(false),
        )
    }

    /// MoCo v3's heads for any backbone.
    pub fn for_backbone(backbone: BackboneConfig, mlp_dim: usize, out_dim: usize) -> Self {
        match backbone {
            BackboneConfig::Vit(c) => Self::vit(c, mlp_dim, out_dim),
            BackboneConfig::ResNet(c) => Self::resnet(c, mlp_dim, out_dim),
        }
    }

    /// Checks every part and that the widths chain.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.backbone.validate()?;
        self.projector.validate()?;
        self.predictor.validate()?;
        let features = self.backbone.num_features();
        if self.projector.input_dim != features {
            return Err(ModelError::InvalidConfig(format!(
                "projector input_dim {} does not match the backbone's {} features",
                self.projector.input_dim, features
            )));
        }
        if self.predictor.input_dim != self.projector.output_dim
            || self.predictor.output_dim != self.projector.output_dim
        {
            return Err(ModelError::InvalidConfig(format!(
                "predictor {} → {} must map the projector's output width {} to itself",
                self.predictor.input_dim, self.predictor.output_dim, self.projector.output_dim
            )));
        }
        Ok(())
    }

    /// Builds the model; the momentum encoder starts as a copy of the base encoder, with its
    /// own parameter ids and BN state, and takes no gradient.
    ///
    /// # Panics
    /// On an invalid configuration; call [`MocoConfig::validate`] first for user input.
    pub fn init(&self, device: &Device) -> MoCo {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        self.heads().init(|| self.backbone.init(device), device)
    }

    /// The projector and predictor of this configuration.
    pub fn heads(&self) -> Heads {
        Heads {
            projector: self.projector.clone(),
            predictor: self.predictor.clone(),
        }
    }
}

/// MoCo v3's projector and predictor, to put on any [`Backbone`].
#[derive(Clone, Debug, PartialEq)]
pub struct Heads {
    /// Projector on top of the backbone (both encoders).
    pub projector: MlpHeadConfig,
    /// Predictor on top of the base encoder.
    pub predictor: MlpHeadConfig,
}

impl Heads {
    /// MoCo v3's heads for a ViT on `features`-wide features: projector 3 layers
    /// `features → mlp → mlp → out`, predictor 2 layers `out → mlp → out`, both ending in BN.
    pub fn vit(features: usize, mlp_dim: usize, out_dim: usize) -> Self {
        Heads {
            projector: MlpHeadConfig::new(3, features, mlp_dim, out_dim),
            predictor: MlpHeadConfig::new(2, out_dim, mlp_dim, out_dim),
        }
    }

    /// MoCo v3's heads for a ResNet: projector 2 layers ending in BN, predictor 2 layers
    /// without the final BN.
    pub fn resnet(features: usize, mlp_dim: usize, out_dim: usize) -> Self {
        Heads {
            projector: MlpHeadConfig::new(2, features, mlp_dim, out_dim),
            predictor: MlpHeadConfig::new(2, out_dim, mlp_dim, out_dim).with_last_bn(false),
        }
    }

    /// Builds MoCo v3 around the backbone `make` builds. `make` is called twice, for the
    /// base and the momentum encoder (each gets its own parameter ids and BN state); the
    /// momentum encoder then takes the base encoder's weights and no gradient. (A clone would
    /// not do: Burn shares a `BatchNorm`'s running statistics between clones, and draws the
    /// weights of a parameter never read yet anew in each clone.)
    ///
    /// # Panics
    /// When the projector's input width is not the backbone's feature width.
    pub fn init<N: Backbone>(&self, make: impl Fn() -> N, device: &Device) -> MoCo<N> {
        let base_encoder = Encoder {
            backbone: make(),
            projector: self.projector.init(device),
        };
        let features = base_encoder.backbone.num_features();
        assert_eq!(
            self.projector.input_dim, features,
            "the projector takes {} features, the backbone gives {features}",
            self.projector.input_dim
        );
        let mut momentum_encoder = Encoder {
            backbone: make(),
            projector: self.projector.init(device),
        };
        copy_weights(&base_encoder, &mut momentum_encoder);
        MoCo {
            base_encoder,
            momentum_encoder: momentum_encoder.no_grad(),
            predictor: self.predictor.init(device),
        }
    }
}

/// Copies every tensor of `src` into `dst`, keeping `dst`'s parameter ids and grad settings.
pub fn copy_weights<M: Module>(src: &M, dst: &mut M) {
    let mut tensors = src.collect(None, None, false);
    // Without their ids: applying a tensor that carries one gives the parameter that id.
    for t in &mut tensors {
        t.param_id = None;
    }
    let result = dst.apply(tensors, None, None, false);
    debug_assert!(
        result.is_success(),
        "copy between identical modules failed: {result}"
    );
}

/// Backbone plus projector.
#[derive(Module, Debug)]
pub struct Encoder<N = AnyBackbone> {
    /// Feature extractor.
    pub backbone: N,
    /// Projection head (`head` of a ViT, `fc` of a ResNet in MoCo v3's checkpoints).
    pub projector: MlpHead,
}

impl<N: Backbone> Encoder<N> {
    /// Backbone features and their projection.
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let features = self.backbone.forward(x);
        let projection = self.projector.forward(features.clone());
        (features, projection)
    }
}

/// What the base encoder and predictor produce for a batch.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    /// Backbone features `[batch, D]`.
    pub features: Tensor<2>,
    /// Projector output `[batch, out]`.
    pub projection: Tensor<2>,
    /// Predictor output `[batch, out]`: the query `q`.
    pub prediction: Tensor<2>,
}

/// MoCo v3: a base encoder with predictor producing queries, a momentum encoder producing keys.
/// `N` is the backbone: this crate's ViT or ResNet by default, or any [`Backbone`].
#[derive(Module, Debug)]
pub struct MoCo<N = AnyBackbone> {
    /// Trained encoder.
    pub base_encoder: Encoder<N>,
    /// Exponential moving average of the base encoder; never takes a gradient.
    pub momentum_encoder: Encoder<N>,
    /// Predictor on top of the base encoder's projection.
    pub predictor: MlpHead,
}

impl<N: Backbone> MoCo<N> {
    /// Runs the base encoder and predictor.
    pub fn forward_query(&self, x: Tensor<4>) -> QueryOutput {
        let (features, projection) = self.base_encoder.forward(x);
        let prediction = self.predictor.forward(projection.clone());
        QueryOutput {
            features,
            projection,
            prediction,
        }
    }

    /// Runs the momentum encoder: the keys `k`.
    pub fn forward_key(&self, x: Tensor<4>) -> Tensor<2> {
        self.momentum_encoder.forward(x).1
    }
}
