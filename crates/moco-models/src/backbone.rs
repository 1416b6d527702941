//! The backbone: what MoCo v3 pretrains. Any Burn module that maps images to feature vectors
//! can be one; the ViT and the ResNet of this crate are two.
//!
//! ```
//! use burn::nn::{Linear, LinearConfig};
//! use burn::prelude::*;
//! use moco_models::Backbone;
//!
//! /// A user's own network: flattens the image and applies one linear layer.
//! #[derive(Module, Debug)]
//! struct Flat {
//!     fc: Linear,
//! }
//!
//! impl Backbone for Flat {
//!     fn forward(&self, images: Tensor<4>) -> Tensor<2> {
//!         self.fc.forward(images.flatten(1, 3))
//!     }
//!     fn num_features(&self) -> usize {
//!         self.fc.weight.dims()[1]
//!     }
//! }
//!
//! let device = Device::flex();
//! let net = Flat { fc: LinearConfig::new(3 * 8 * 8, 16).init(&device) };
//! let x = Tensor::zeros([2, 3, 8, 8], &device);
//! assert_eq!(net.forward(x).dims(), [2, 16]);
//! assert_eq!(net.layer_group(&["fc".into(), "weight".into()]), "fc");
//! ```

use burn::module::{Module, ModuleDisplay};
use burn::prelude::*;

use crate::moco::AnyBackbone;
use crate::resnet::ResNet;
use crate::vit::Vit;

/// A feature extractor that the methods (MoCo v3, SimCLR, BYOL), the training loop and the
/// evaluators can take: `[batch, C, H, W]` images to `[batch, features]`.
///
/// Parameters the backbone must not train are frozen the Burn way, in the module itself
/// (`Param::set_require_grad(false)` or `Module::no_grad` on a part of it, as the ViT does with
/// its random patch projection); [`Backbone::frozen_groups`] names them for the logs.
pub trait Backbone: Module + ModuleDisplay {
    /// Images to features.
    fn forward(&self, images: Tensor<4>) -> Tensor<2>;

    /// Width of the features.
    fn num_features(&self) -> usize;

    /// The layer group of a parameter, from its path of field names inside the backbone
    /// (`["blocks", "3", "attn", "qkv", "weight"]`): the per-layer gradient monitor sums the
    /// squared gradients of a group, and reports the groups in the model's order, so the
    /// group of the first layer should come first. By default the first field, with its index
    /// when it is a list (`blocks.3`).
    fn layer_group(&self, path: &[String]) -> String {
        match (path.first(), path.get(1)) {
            (Some(field), Some(i)) if i.parse::<usize>().is_ok() => format!("{field}.{i}"),
            (Some(field), _) => field.clone(),
            (None, _) => "other".into(),
        }
    }

    /// Layer groups whose parameters are frozen (for the logs); none by default.
    fn frozen_groups(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The layer groups of this crate's ViT and ResNet: `patch_embed`, `tokens` (CLS and position
/// embedding), `block00`…, `norm`; `stem`, `stage1`….
pub fn builtin_layer_group(path: &[String]) -> String {
    let has = |name: &str| path.iter().any(|p| p == name);
    if has("patch_embed") {
        return "patch_embed".into();
    }
    for (i, seg) in path.iter().enumerate() {
        let index = path.get(i + 1).and_then(|s| s.parse::<usize>().ok());
        match (seg.as_str(), index) {
            ("blocks", Some(n)) => return format!("block{n:02}"),
            ("stages", Some(n)) => return format!("stage{}", n + 1),
            _ => {}
        }
    }
    match path.last().map(String::as_str) {
        Some("cls_token" | "pos_embed") => "tokens".into(),
        _ if has("conv1") || has("bn1") => "stem".into(),
        _ if has("norm") => "norm".into(),
        _ => "other".into(),
    }
}

impl Backbone for Vit {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        Vit::forward(self, images)
    }
    fn num_features(&self) -> usize {
        self.cls_token.dims()[2]
    }
    fn layer_group(&self, path: &[String]) -> String {
        builtin_layer_group(path)
    }
    fn frozen_groups(&self) -> Vec<String> {
        if self.patch_embed_frozen() {
            vec!["patch_embed".into()]
        } else {
            Vec::new()
        }
    }
}

impl Backbone for ResNet {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        ResNet::forward(self, images)
    }
    fn num_features(&self) -> usize {
        let last = self.stages.last().and_then(|s| s.last());
        match last {
            Some(block) => match &block.conv3 {
                Some(conv) => conv.weight.dims()[0],
                None => block.conv2.weight.dims()[0],
            },
            None => self.conv1.weight.dims()[0],
        }
    }
    fn layer_group(&self, path: &[String]) -> String {
        builtin_layer_group(path)
    }
}

impl Backbone for AnyBackbone {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        AnyBackbone::forward(self, images)
    }
    fn num_features(&self) -> usize {
        match self {
            AnyBackbone::Vit(m) => m.num_features(),
            AnyBackbone::ResNet(m) => m.num_features(),
        }
    }
    fn layer_group(&self, path: &[String]) -> String {
        builtin_layer_group(path)
    }
    fn frozen_groups(&self) -> Vec<String> {
        match self {
            AnyBackbone::Vit(m) => m.frozen_groups(),
            AnyBackbone::ResNet(m) => m.frozen_groups(),
        }
    }
}
