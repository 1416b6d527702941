//! ResNet in torchvision's layout and parameter names, with a width multiplier, any stage
//! depths, and a small-image stem for 28–32 px data.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use serde::{Deserialize, Serialize};

use crate::gemm_conv::{conv2d_cm, swap_batch_channels};
use crate::kernels::{ConvKernel, Kernels};
use crate::norm::{BatchNorm, BatchNormConfig};
use crate::precision::{conv2d, in_f32, to_f32};
use crate::ModelError;

/// Residual block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1, 3×3, 1×1 with 4× expansion (ResNet-50/101/152).
    Bottleneck,
}

impl BlockKind {
    /// Output channels per unit of stage width.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Input stem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 7×7 stride-2 convolution and 3×3 stride-2 max-pool.
    ImageNet,
    /// 3×3 stride-1 convolution, no max-pool: keeps 28–32 px inputs from shrinking to nothing.
    Small,
}

impl Stem {
    /// Both stems, in the order `--help` lists them.
    pub const ALL: [Stem; 2] = [Stem::ImageNet, Stem::Small];
}

impl std::fmt::Display for Stem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stem::ImageNet => "imagenet",
            Stem::Small => "small",
        })
    }
}

impl std::str::FromStr for Stem {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "imagenet" => Ok(Stem::ImageNet),
            "small" => Ok(Stem::Small),
            _ => Err(format!("unknown stem '{s}': use imagenet or small")),
        }
    }
}

/// Configuration of a [`ResNet`].
#[derive(Config, Debug, PartialEq)]
pub struct ResNetConfig {
    /// Blocks per stage (`[3, 4, 6, 3]` for ResNet-50); stage `i` has width `width · 2^i`.
    pub layers: Vec<usize>,
    /// Residual block type.
    #[config(default = "BlockKind::Bottleneck")]
    pub block: BlockKind,
    /// Stem and first-stage width: 64 times the width multiplier.
    #[config(default = 64)]
    pub width: usize,
    /// Input channels.
    #[config(default = 3)]
    pub in_chans: usize,
    /// Input stem.
    #[config(default = "Stem::ImageNet")]
    pub stem: Stem,
    /// Start each residual branch at zero (last BN scale 0), as MoCo v3 does.
    #[config(default = true)]
    pub zero_init_residual: bool,
    /// How the convolutions run (the same function either way); `None`: the default of the
    /// device the model is built on ([`Kernels::for_device`]).
    pub conv_kernel: Option<ConvKernel>,
}

impl ResNetConfig {
    /// ResNet-18.
    pub fn resnet18() -> Self {
        Self::new(vec![2, 2, 2, 2]).with_block(BlockKind::Basic)
    }
    /// ResNet-34.
    pub fn resnet34() -> Self {
        Self::new(vec![3, 4, 6, 3]).with_block(BlockKind::Basic)
    }
    /// ResNet-50 (`multiplier` 1, 2 or 4 gives SimCLR's wide variants).
    pub fn resnet50(multiplier: usize) -> Self {
        Self::new(vec![3, 4, 6, 3]).with_width(64 * multiplier)
    }
    /// ResNet-101.
    pub fn resnet101() -> Self {
        Self::new(vec![3, 4, 23, 3])
    }
    /// ResNet-152.
    pub fn resnet152() -> Self {
        Self::new(vec![3, 8, 36, 3])
    }

    /// Width of the pooled output features.
    pub fn num_features(&self) -> usize {
        self.width * (1 << (self.layers.len().max(1) - 1)) * self.block.expansion()
    }

    /// Checks that the configuration describes a buildable model.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.layers.is_empty() || self.layers.contains(&0) {
            return Err(ModelError::InvalidConfig(format!(
                "ResNet layers {:?} must be a non-empty list of positive block counts",
                self.layers
            )));
        }
        if self.width == 0 || self.in_chans == 0 {
            return Err(ModelError::InvalidConfig(format!(
                "ResNet width ({}) and in_chans ({}) must be positive",
                self.width, self.in_chans
            )));
        }
        Ok(())
    }

    /// Builds the model: Kaiming-normal (fan-out) convolutions, BN scale 1 and shift 0.
    ///
    /// # Panics
    /// On an invalid configuration; call [`ResNetConfig::validate`] first for user input.
    pub fn init(&self, device: &Device) -> ResNet {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let conv1 = match self.stem {
            Stem::ImageNet => conv(self.in_chans, self.width, 7, 2, 3, device),
            Stem::Small => conv(self.in_chans, self.width, 3, 1, 1, device),
        };
        let mut inplanes = self.width;
        let mut stages = Vec::new();
        for (i, &blocks) in self.layers.iter().enumerate() {
            let planes = self.width << i;
            let stride = if i == 0 { 1 } else { 2 };
            let stage: Vec<_> = (0..blocks)
                .map(|j| {
                    let block = ResidualBlock::new(
                        self.block,
                        inplanes,
                        planes,
                        if j == 0 { stride } else { 1 },
                        self.zero_init_residual,
                        device,
                    );
                    inplanes = planes * self.block.expansion();
                    block
                })
                .collect();
            stages.push(stage);
        }
        ResNet {
            conv1,
            bn1: BatchNormConfig::new(self.width).init(device),
            stages,
            maxpool: self.stem == Stem::ImageNet,
            conv_kernel: self
                .conv_kernel
                .unwrap_or_else(|| Kernels::for_device(device).conv),
        }
    }
}

/// torchvision's initialisation: Kaiming-normal with fan-out and ReLU gain, no bias.
fn conv(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: true,
        })
        .init(device)
}

/// ResNet backbone; its output is the globally average-pooled last feature map.
#[derive(Module, Debug)]
pub struct ResNet {
    /// Stem convolution.
    pub conv1: Conv2d,
    /// Stem BN.
    pub bn1: BatchNorm,
    /// Stages (`layer1`, `layer2`, ... in torchvision).
    pub stages: Vec<Vec<ResidualBlock>>,
    maxpool: bool,
    #[module(skip)]
    conv_kernel: ConvKernel,
}

impl ResNet {
    /// `[batch, C, H, W]` images to `[batch, features]`.
    ///
    /// With matrix-product convolutions (the CPU default for first-stage maps of at most
    /// 16×16, see [`ConvKernel`]) the feature maps are kept channel-major (`[C, batch, H, W]`)
    /// and every convolution is a single matrix product ([`crate::gemm_conv`]); otherwise the
    /// backend's own convolutions run on the usual layout. Both compute the same function.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let [_, _, h, w] = x.dims();
        let area = match self.maxpool {
            // Stride-2 convolution, then stride-2 pooling.
            true => h.div_ceil(4) * w.div_ceil(4),
            false => h * w,
        };
        let cm = self.conv_kernel.matrix_product_at(area);
        let x = if cm { swap_batch_channels(x) } else { x };
        let mut x = conv_bn(&self.conv1, &self.bn1, x, cm, true);
        if self.maxpool {
            // Pooling acts on each plane alone: the layout does not matter.
            x = max_pool2d(
                x,
                MaxPoolOptions::new([3, 3])
                    .with_stride([2, 2])
                    .with_padding([1, 1]),
            );
        }
        for stage in &self.stages {
            for block in stage {
                x = block.forward(x, cm);
            }
        }
        let [d0, d1, h, w] = x.dims();
        let pooled = to_f32(x)
            .reshape([d0, d1, h * w])
            .mean_dim(2)
            .reshape([d0, d1]);
        if cm {
            pooled.transpose()
        } else {
            pooled
        }
    }
}

/// A convolution followed by its BatchNorm (in f32) and, when `then_relu`, ReLU, on the
/// batch-major (`cm` false) or channel-major (`cm` true) layout.
fn conv_bn(conv: &Conv2d, bn: &BatchNorm, x: Tensor<4>, cm: bool, then_relu: bool) -> Tensor<4> {
    if cm {
        return in_f32(conv2d_cm(conv, x, false), |x| bn.forward_cm(x, then_relu));
    }
    let y = in_f32(conv2d(conv, x, false), |x| bn.forward(x));
    if then_relu {
        relu(y)
    } else {
        y
    }
}

/// Residual block, basic or bottleneck (the third convolution is absent in basic blocks).
#[derive(Module, Debug)]
pub struct ResidualBlock {
    /// First convolution.
    pub conv1: Conv2d,
    /// First BN.
    pub bn1: BatchNorm,
    /// Second convolution.
    pub conv2: Conv2d,
    /// Second BN.
    pub bn2: BatchNorm,
    /// Third convolution (bottleneck only).
    pub conv3: Option<Conv2d>,
    /// Third BN (bottleneck only).
    pub bn3: Option<BatchNorm>,
    /// Projection shortcut when the shape changes.
    pub downsample: Option<Downsample>,
}

/// 1×1 strided convolution and BN on the shortcut (`downsample.0`, `downsample.1`).
#[derive(Module, Debug)]
pub struct Downsample {
    /// Convolution.
    pub conv: Conv2d,
    /// BN.
    pub bn: BatchNorm,
}

impl ResidualBlock {
    fn new(
        kind: BlockKind,
        inplanes: usize,
        planes: usize,
        stride: usize,
        zero_init_residual: bool,
        device: &Device,
    ) -> Self {
        let out = planes * kind.expansion();
        let bn = |c: usize, last: bool| {
            let mut bn = BatchNormConfig::new(c).init(device);
            if last && zero_init_residual {
                bn.gamma = Some(burn::module::Param::from_tensor(Tensor::zeros([c], device)));
            }
            bn
        };
        let downsample = (stride != 1 || inplanes != out).then(|| Downsample {
            conv: conv(inplanes, out, 1, stride, 0, device),
            bn: bn(out, false),
        });
        match kind {
            BlockKind::Basic => Self {
                conv1: conv(inplanes, planes, 3, stride, 1, device),
                bn1: bn(planes, false),
                conv2: conv(planes, planes, 3, 1, 1, device),
                bn2: bn(planes, true),
                conv3: None,
                bn3: None,
                downsample,
            },
            BlockKind::Bottleneck => Self {
                conv1: conv(inplanes, planes, 1, 1, 0, device),
                bn1: bn(planes, false),
                conv2: conv(planes, planes, 3, stride, 1, device),
                bn2: bn(planes, false),
                conv3: Some(conv(planes, out, 1, 1, 0, device)),
                bn3: Some(bn(out, true)),
                downsample,
            },
        }
    }

    fn forward(&self, x: Tensor<4>, cm: bool) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(ds) => conv_bn(&ds.conv, &ds.bn, x.clone(), cm, false),
            None => x.clone(),
        };
        let out = conv_bn(&self.conv1, &self.bn1, x, cm, true);
        let out = match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => {
                let out = conv_bn(&self.conv2, &self.bn2, out, cm, true);
                conv_bn(conv3, bn3, out, cm, false)
            }
            _ => conv_bn(&self.conv2, &self.bn2, out, cm, false),
        };
        relu(out + identity)
    }
}
