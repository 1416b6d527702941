//! Vision Transformer as MoCo v3 builds it on timm: conv patch embedding (or the ConvStem),
//! CLS token, fixed 2-D sin-cos position embedding, pre-norm blocks, CLS output.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};

use crate::activation;
use crate::kernels::{AttentionKernel, GeluKernel, Kernels, LayerNormKernel};
use crate::norm::{BatchNorm, BatchNormConfig};
use crate::precision::{conv2d, in_f32, linear, to_compute, to_f32};
use crate::ModelError;

/// MoCo v3's LayerNorm epsilon (timm's `partial(nn.LayerNorm, eps=1e-6)`).
pub const LAYER_NORM_EPS: f64 = 1e-6;

/// Configuration of a [`Vit`].
#[derive(Config, Debug, PartialEq)]
pub struct VitConfig {
    /// Side of the square input image.
    #[config(default = 224)]
    pub img_size: usize,
    /// Side of a square patch (16 with the ConvStem).
    #[config(default = 16)]
    pub patch_size: usize,
    /// Input channels (1 for grayscale).
    #[config(default = 3)]
    pub in_chans: usize,
    /// Token width `D`.
    #[config(default = 768)]
    pub embed_dim: usize,
    /// Number of transformer blocks.
    #[config(default = 12)]
    pub depth: usize,
    /// Attention heads per block.
    #[config(default = 12)]
    pub num_heads: usize,
    /// MLP hidden width as a multiple of `D`.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Bias in the fused `qkv` projection.
    #[config(default = true)]
    pub qkv_bias: bool,
    /// The paper's stability fix: the linear patch projection stays at its random
    /// initialisation (MoCo v3's `stop_grad_conv1`). It applies to the linear projection only:
    /// a ConvStem is always trained, as in the official code, whatever this says.
    #[config(default = true)]
    pub freeze_patch_embed: bool,
    /// Replace the patchify convolution by MoCo v3's ConvStem (`vit_conv_*`).
    #[config(default = false)]
    pub conv_stem: bool,
    /// How the GELU runs (the same function either way); `None`: the default of the device
    /// the model is built on ([`Kernels::for_device`]).
    pub gelu_kernel: Option<GeluKernel>,
    /// How the attention runs (the same function either way); `None`: the default of the
    /// device the model is built on ([`Kernels::for_device`]).
    pub attention_kernel: Option<AttentionKernel>,
    /// How the LayerNorms run (the same function either way); `None`: the default of the
    /// device the model is built on ([`Kernels::for_device`]).
    pub layer_norm_kernel: Option<LayerNormKernel>,
}

impl VitConfig {
    /// ViT-Tiny: 192 wide, 12 deep, 3 heads.
    pub fn vit_tiny() -> Self {
        Self::new().with_embed_dim(192).with_num_heads(3)
    }
    /// ViT-Small as MoCo v3 uses it: 384 wide, 12 deep, 12 heads.
    pub fn vit_small() -> Self {
        Self::new().with_embed_dim(384).with_num_heads(12)
    }
    /// ViT-Base: 768 wide, 12 deep, 12 heads.
    pub fn vit_base() -> Self {
        Self::new()
    }
    /// ViT-Large: 1024 wide, 24 deep, 16 heads.
    pub fn vit_large() -> Self {
        Self::new()
            .with_embed_dim(1024)
            .with_depth(24)
            .with_num_heads(16)
    }
    /// ViT-Huge/14: 1280 wide, 32 deep, 16 heads.
    pub fn vit_huge() -> Self {
        Self::new()
            .with_embed_dim(1280)
            .with_depth(32)
            .with_num_heads(16)
            .with_patch_size(14)
    }
    /// ViT-Small with the ConvStem and one block fewer.
    pub fn vit_conv_small() -> Self {
        Self::vit_small().with_depth(11).with_conv_stem(true)
    }
    /// ViT-Base with the ConvStem and one block fewer.
    pub fn vit_conv_base() -> Self {
        Self::vit_base().with_depth(11).with_conv_stem(true)
    }

    /// Whether the patch embedding is frozen: the linear projection with
    /// `freeze_patch_embed`; never a ConvStem.
    pub fn patch_embed_frozen(&self) -> bool {
        self.freeze_patch_embed && !self.conv_stem
    }

    /// Number of patches along each side.
    pub fn grid_size(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Hidden width of each block's MLP.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Checks that the configuration describes a buildable model.
    pub fn validate(&self) -> Result<(), ModelError> {
        let err = |msg: String| Err(ModelError::InvalidConfig(msg));
        if self.embed_dim == 0 || self.depth == 0 || self.num_heads == 0 || self.in_chans == 0 {
            return err(format!(
                "ViT embed_dim ({}), depth ({}), num_heads ({}) and in_chans ({}) must be positive",
                self.embed_dim, self.depth, self.num_heads, self.in_chans
            ));
        }
        if !self.embed_dim.is_multiple_of(4) {
            return err(format!(
                "ViT embed_dim {} must be divisible by 4 for the 2-D sin-cos position embedding",
                self.embed_dim
            ));
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return err(format!(
                "ViT embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.patch_size == 0
            || self.img_size == 0
            || !self.img_size.is_multiple_of(self.patch_size)
        {
            return err(format!(
                "ViT img_size {} is not divisible by patch_size {}",
                self.img_size, self.patch_size
            ));
        }
        if self.conv_stem && self.patch_size != 16 {
            return err(format!(
                "the ConvStem downsamples by 16: patch_size must be 16, got {}",
                self.patch_size
            ));
        }
        if self.conv_stem && !self.embed_dim.is_multiple_of(8) {
            return err(format!(
                "the ConvStem starts at embed_dim/8 channels: embed_dim {} must be divisible by 8",
                self.embed_dim
            ));
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 || self.mlp_hidden() == 0 {
            return err(format!("ViT mlp_ratio {} must be positive", self.mlp_ratio));
        }
        Ok(())
    }

    /// Builds the model with MoCo v3's initialisation.
    ///
    /// # Panics
    /// On an invalid configuration; call [`VitConfig::validate`] first for user input.
    pub fn init(&self, device: &Device) -> Vit {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let d = self.embed_dim;
        let patch_embed = if self.conv_stem {
            PatchEmbed::ConvStem(ConvStem::new(self.in_chans, d, device))
        } else {
            let p = self.patch_size;
            // Xavier-uniform bound of the equivalent linear layer (fan-in C·p·p, fan-out D).
            let bound = (6.0 / (self.in_chans * p * p + d) as f64).sqrt();
            let init = Initializer::Uniform {
                min: -bound,
                max: bound,
            };
            let mut proj = Conv2dConfig::new([self.in_chans, d], [p, p])
                .with_stride([p, p])
                .with_initializer(init)
                .init(device);
            proj.bias = Some(Param::from_tensor(Tensor::zeros([d], device)));
            PatchEmbed::Patchify(Patchify { proj })
        };
        let patch_embed = if self.patch_embed_frozen() {
            patch_embed.no_grad()
        } else {
            patch_embed
        };
        let cls_token = Initializer::Normal {
            mean: 0.0,
            std: 1e-6,
        }
        .init([1, 1, d], device);
        let grid = self.grid_size();
        let pos = sincos_pos_embed(grid, grid, d);
        let pos_embed = Param::from_tensor(Tensor::<3>::from_data(
            TensorData::new(pos, [1, grid * grid + 1, d]),
            device,
        ))
        .set_require_grad(false);
        let blocks = (0..self.depth).map(|_| Block::new(self, device)).collect();
        Vit {
            cls_token,
            pos_embed,
            patch_embed,
            blocks,
            norm: LayerNormConfig::new(d)
                .with_epsilon(LAYER_NORM_EPS)
                .init(device),
            num_heads: self.num_heads,
            freeze_patch_embed: self.patch_embed_frozen(),
            kernels: {
                let default = Kernels::for_device(device);
                Kernels {
                    gelu: self.gelu_kernel.unwrap_or(default.gelu),
                    attention: self.attention_kernel.unwrap_or(default.attention),
                    layer_norm: self.layer_norm_kernel.unwrap_or(default.layer_norm),
                    ..default
                }
            },
        }
    }
}

/// MoCo v3's fixed 2-D sin-cos position embedding for an `h × w` patch grid, CLS row first
/// (zeros), row-major `[(1 + h·w) · dim]`.
///
/// Token `t` uses `a = t div h`, `b = t mod h`, as MoCo v3's `meshgrid(arange(w), arange(h))`
/// does; on non-square grids this is not (row, column), and released checkpoints depend on it.
pub fn sincos_pos_embed(h: usize, w: usize, dim: usize) -> Vec<f32> {
    let pos_dim = dim / 4;
    let mut out = vec![0f32; (1 + h * w) * dim];
    for t in 0..h * w {
        let (a, b) = ((t / h) as f64, (t % h) as f64);
        let row = &mut out[(1 + t) * dim..(2 + t) * dim];
        for d in 0..pos_dim {
            // Computed in f32 as PyTorch does: omega = 1 / 10000^(d / pos_dim).
            let omega = 1.0f32 / 10000f32.powf(d as f32 / pos_dim as f32);
            let (wa, wb) = (a as f32 * omega, b as f32 * omega);
            row[d] = wa.sin();
            row[pos_dim + d] = wa.cos();
            row[2 * pos_dim + d] = wb.sin();
            row[3 * pos_dim + d] = wb.cos();
        }
    }
    out
}

/// The Vision Transformer backbone; its output is the CLS token after the final LayerNorm.
#[derive(Module, Debug)]
pub struct Vit {
    /// Learned CLS token `[1, 1, D]`.
    pub cls_token: Param<Tensor<3>>,
    /// Fixed sin-cos position embedding `[1, 1 + N, D]`; saved with the weights, never trained.
    pub pos_embed: Param<Tensor<3>>,
    /// Patch projection.
    pub patch_embed: PatchEmbed,
    /// Transformer blocks.
    pub blocks: Vec<Block>,
    /// Final LayerNorm.
    pub norm: LayerNorm,
    num_heads: usize,
    freeze_patch_embed: bool,
    #[module(skip)]
    kernels: Kernels,
}

impl Vit {
    /// `[batch, C, H, W]` images to `[batch, D]` CLS features.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_drop_path(x, 0.0)
    }

    /// All tokens after the final LayerNorm, `[batch, 1 + N, D]`.
    pub fn forward_tokens(&self, x: Tensor<4>) -> Tensor<3> {
        to_f32(self.forward_tokens_drop_path(x, 0.0))
    }

    /// [`forward`](Self::forward) with stochastic depth for fine-tuning: block `i` of `L`
    /// drops its residual branches per sample with probability `rate · i / (L − 1)` (timm's
    /// linear rule), scaling kept ones by `1 / keep`. Only on an autodiff backend (training);
    /// elsewhere it is the plain forward.
    pub fn forward_drop_path(&self, x: Tensor<4>, rate: f64) -> Tensor<2> {
        let tokens = self.forward_tokens_drop_path(x, rate);
        let [b, _, d] = tokens.dims();
        to_f32(tokens.slice([0..b, 0..1, 0..d]).reshape([b, d]))
    }

    fn forward_tokens_drop_path(&self, x: Tensor<4>, rate: f64) -> Tensor<3> {
        let x = self.patch_embed.forward(x, self.freeze_patch_embed);
        let [b, n, d] = x.dims();
        let cls = to_compute(self.cls_token.val()).repeat_dim(0, b);
        let pos = to_compute(self.pos_embed.val().detach());
        debug_assert_eq!(pos.dims(), [1, n + 1, d]);
        let mut x = Tensor::cat(vec![cls, x], 1).add(pos);
        let training = rate > 0.0 && x.device().is_autodiff();
        let depth = self.blocks.len();
        for (i, block) in self.blocks.iter().enumerate() {
            let p = if training && depth > 1 {
                rate * i as f64 / (depth - 1) as f64
            } else {
                0.0
            };
            x = block.forward(x, self.num_heads, &self.kernels, p);
        }
        layer_norm(&self.norm, x, self.kernels.layer_norm)
    }

    /// Whether the patch projection is frozen (never for a ConvStem).
    pub fn patch_embed_frozen(&self) -> bool {
        self.freeze_patch_embed
    }
}

/// The two patch embeddings MoCo v3 uses.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum PatchEmbed {
    /// One convolution with kernel = stride = patch size.
    Patchify(Patchify),
    /// MoCo v3's ConvStem.
    ConvStem(ConvStem),
}

impl PatchEmbed {
    /// `[batch, C, H, W]` to `[batch, N, D]`; `frozen` cuts the gradient to its weights.
    pub fn forward(&self, x: Tensor<4>, frozen: bool) -> Tensor<3> {
        let x = match self {
            PatchEmbed::Patchify(p) => p.forward(x, frozen),
            PatchEmbed::ConvStem(s) => s.forward(x, frozen),
        };
        let [b, d, h, w] = x.dims();
        x.reshape([b, d, h * w]).swap_dims(1, 2)
    }
}

/// Patchify convolution (`patch_embed.proj` in timm).
#[derive(Module, Debug)]
pub struct Patchify {
    /// The convolution.
    pub proj: Conv2d,
}

impl Patchify {
    fn forward(&self, x: Tensor<4>, frozen: bool) -> Tensor<4> {
        conv_forward(&self.proj, x, frozen)
    }
}

/// Runs a convolution (in the compute precision); with `frozen` its weights are detached so
/// no gradient reaches them, whatever optimizer or loading path produced the module.
fn conv_forward(conv: &Conv2d, x: Tensor<4>, frozen: bool) -> Tensor<4> {
    conv2d(conv, x, frozen)
}

/// MoCo v3's ConvStem: four 3×3 stride-2 convolutions (no bias) with BN and ReLU, from D/8 to
/// D channels, then a 1×1 convolution.
#[derive(Module, Debug)]
pub struct ConvStem {
    /// The five convolutions (`proj.0, 3, 6, 9, 12` in PyTorch).
    pub convs: Vec<Conv2d>,
    /// The four BNs (`proj.1, 4, 7, 10`).
    pub norms: Vec<BatchNorm>,
}

impl ConvStem {
    fn new(in_chans: usize, dim: usize, device: &Device) -> Self {
        let (mut convs, mut norms) = (Vec::new(), Vec::new());
        let (mut c_in, mut c_out) = (in_chans, dim / 8);
        for _ in 0..4 {
            convs.push(
                Conv2dConfig::new([c_in, c_out], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .with_bias(false)
                    .init(device),
            );
            norms.push(BatchNormConfig::new(c_out).init(device));
            c_in = c_out;
            c_out *= 2;
        }
        convs.push(Conv2dConfig::new([c_in, dim], [1, 1]).init(device));
        Self { convs, norms }
    }

    fn forward(&self, mut x: Tensor<4>, frozen: bool) -> Tensor<4> {
        for (conv, norm) in self.convs.iter().zip(&self.norms) {
            x = relu(in_f32(conv_forward(conv, x, frozen), |x| norm.forward(x)));
        }
        conv_forward(&self.convs[self.convs.len() - 1], x, frozen)
    }
}

/// Pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    /// LayerNorm before attention.
    pub norm1: LayerNorm,
    /// Multi-head self-attention.
    pub attn: Attention,
    /// LayerNorm before the MLP.
    pub norm2: LayerNorm,
    /// Two-layer GELU MLP.
    pub mlp: Mlp,
}

impl Block {
    fn new(cfg: &VitConfig, device: &Device) -> Self {
        let d = cfg.embed_dim;
        let ln = LayerNormConfig::new(d).with_epsilon(LAYER_NORM_EPS);
        // MoCo v3 treats q, k and v as three separate [D, D] matrices for Xavier's bound.
        let qkv_bound = (6.0 / (d + d) as f64).sqrt();
        let qkv = LinearConfig::new(d, 3 * d)
            .with_bias(cfg.qkv_bias)
            .with_initializer(Initializer::Uniform {
                min: -qkv_bound,
                max: qkv_bound,
            })
            .init(device);
        Self {
            norm1: ln.init(device),
            attn: Attention {
                qkv: zero_bias(qkv, device),
                proj: xavier_linear(d, d, device),
            },
            norm2: ln.init(device),
            mlp: Mlp {
                fc1: xavier_linear(d, cfg.mlp_hidden(), device),
                fc2: xavier_linear(cfg.mlp_hidden(), d, device),
            },
        }
    }

    fn forward(
        &self,
        x: Tensor<3>,
        num_heads: usize,
        kernels: &Kernels,
        drop_path: f64,
    ) -> Tensor<3> {
        let h = layer_norm(&self.norm1, x.clone(), kernels.layer_norm);
        let x = x + drop_path_branch(
            self.attn.forward(h, num_heads, kernels.attention),
            drop_path,
        );
        let h = layer_norm(&self.norm2, x.clone(), kernels.layer_norm);
        x + drop_path_branch(self.mlp.forward(h, kernels.gelu), drop_path)
    }
}

/// A LayerNorm (MoCo v3's ε) in f32, fused on flex when `kernel` asks for it.
fn layer_norm(norm: &LayerNorm, x: Tensor<3>, kernel: LayerNormKernel) -> Tensor<3> {
    in_f32(x, |x| {
        #[cfg(feature = "flex")]
        let x = match (&norm.beta, kernel) {
            (Some(beta), LayerNormKernel::Fused) => {
                match crate::flex::layer_norm(x, norm.gamma.val(), beta.val(), LAYER_NORM_EPS) {
                    Ok(y) => return y,
                    Err((x, _, _)) => x,
                }
            }
            _ => x,
        };
        #[cfg(not(feature = "flex"))]
        let _ = kernel;
        norm.forward(x)
    })
}

/// Zeroes a residual branch per sample with probability `p`, scaling the rest by `1/(1−p)`.
fn drop_path_branch(branch: Tensor<3>, p: f64) -> Tensor<3> {
    if p <= 0.0 {
        return branch;
    }
    let keep = 1.0 - p;
    let [b, _, _] = branch.dims();
    let mask = Tensor::<3>::random(
        [b, 1, 1],
        burn::tensor::Distribution::Bernoulli(keep),
        &branch.device(),
    );
    branch.mul(to_compute(mask.div_scalar(keep)))
}

/// Xavier-uniform weight, zero bias: MoCo v3's initialisation of every non-qkv linear layer.
fn xavier_linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    let linear = LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::XavierUniform { gain: 1.0 })
        .init(device);
    zero_bias(linear, device)
}

fn zero_bias(mut linear: Linear, device: &Device) -> Linear {
    if let Some(bias) = &linear.bias {
        let [n] = bias.dims();
        linear.bias = Some(Param::from_tensor(Tensor::zeros([n], device)));
    }
    linear
}

/// Multi-head self-attention with a fused `qkv` projection.
#[derive(Module, Debug)]
pub struct Attention {
    /// `[D, 3D]` projection to queries, keys and values.
    pub qkv: Linear,
    /// Output projection.
    pub proj: Linear,
}

impl Attention {
    fn forward(&self, x: Tensor<3>, num_heads: usize, kernel: AttentionKernel) -> Tensor<3> {
        // The fused operation computes in f32; half precision keeps the composition.
        let f32_compute = crate::precision::compute_dtype().is_none();
        if kernel == AttentionKernel::Fused
            && f32_compute
            && crate::kernels::flex_backend(&x.device())
        {
            return self.forward_fused(x, num_heads);
        }
        self.forward_composed(x, num_heads)
    }

    /// Queries, keys and values come from three products with column blocks of the fused
    /// `qkv` weight (the scale folded into the query block), each reshaped to heads as a
    /// strided view that the batched products read directly: no copies of the activations.
    fn forward_composed(&self, x: Tensor<3>, num_heads: usize) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let hd = d / num_heads;
        let scale = (hd as f64).powf(-0.5);
        let rows = to_compute(x).reshape([b * n, d]);
        let weight = to_compute(self.qkv.weight.val());
        let bias = self.qkv.bias.as_ref().map(|b| to_compute(b.val()));
        let heads = |i: usize, s: f64| {
            let scaled = |t: Tensor<2>| if s == 1.0 { t } else { t.mul_scalar(s) };
            let w = scaled(weight.clone().slice([0..d, i * d..(i + 1) * d]));
            let y = rows.clone().matmul(w);
            let y = match &bias {
                Some(bias) => y + scaled(bias.clone().narrow(0, i * d, d).unsqueeze()),
                None => y,
            };
            y.reshape([b, n, num_heads, hd]).swap_dims(1, 2)
        };
        let (q, k, v) = (heads(0, scale), heads(1, 1.0), heads(2, 1.0));
        linear(&self.proj, attend(q, k, v))
    }

    /// One `qkv` product, then the fused attention of the flex backend, which reads q, k and
    /// v where the product wrote them (the composition on those rows if it declines them).
    fn forward_fused(&self, x: Tensor<3>, num_heads: usize) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let hd = d / num_heads;
        let scale = (hd as f64).powf(-0.5);
        let qkv = linear(&self.qkv, x.reshape([b * n, d]));
        #[cfg(feature = "flex")]
        let qkv = {
            let shape = crate::flex::AttentionShape {
                batch: b,
                tokens: n,
                heads: num_heads,
                dim: d,
                scale: scale as f32,
            };
            match crate::flex::attention(qkv, shape) {
                Ok(out) => return linear(&self.proj, out.reshape([b, n, d])),
                Err(qkv) => qkv,
            }
        };
        let heads = |i: usize| {
            qkv.clone()
                .slice([0..b * n, i * d..(i + 1) * d])
                .reshape([b, n, num_heads, hd])
                .swap_dims(1, 2)
        };
        linear(
            &self.proj,
            attend(heads(0).mul_scalar(scale), heads(1), heads(2)),
        )
    }
}

/// `softmax(q·kᵀ)·v` over `[batch, heads, tokens, head_dim]` heads (the scale already in
/// `q`), the heads merged back to `[batch, tokens, D]`.
fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<3> {
    let [b, h, n, hd] = q.dims();
    let attn = in_f32(q.matmul(k.swap_dims(2, 3)), |s| softmax(s, 3));
    attn.matmul(v).swap_dims(1, 2).reshape([b, n, h * hd])
}

/// Transformer MLP with exact (erf) GELU.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Expansion layer.
    pub fc1: Linear,
    /// Contraction layer.
    pub fc2: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>, gelu: GeluKernel) -> Tensor<3> {
        linear(&self.fc2, activation::gelu(linear(&self.fc1, x), gelu))
    }
}
