//! MoCo v3's asymmetric two-view augmentation and the evaluation transform, with presets for
//! ImageNet, CIFAR and the 28 px grayscale datasets.

use serde::{Deserialize, Serialize};

use crate::image::Image;
use crate::rng::Rng;
use crate::transforms::*;

/// The random augmentation of one view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewConfig {
    /// Output side.
    pub size: usize,
    /// RandomResizedCrop area fraction range (`crop_min`, 1).
    pub scale: (f64, f64),
    /// RandomResizedCrop aspect-ratio range.
    pub ratio: (f64, f64),
    /// Probability of applying colour jitter.
    pub jitter_p: f64,
    /// Brightness jitter strength (factor in `[1 − b, 1 + b]`).
    pub brightness: f64,
    /// Contrast jitter strength.
    pub contrast: f64,
    /// Saturation jitter strength (ignored for one channel).
    pub saturation: f64,
    /// Hue jitter (shift in `[−h, h]` turns; ignored for one channel).
    pub hue: f64,
    /// Probability of converting to grayscale.
    pub grayscale_p: f64,
    /// Probability of a Gaussian blur.
    pub blur_p: f64,
    /// Blur σ range, pixels.
    pub blur_sigma: (f64, f64),
    /// Probability of solarising (threshold 128/255).
    pub solarize_p: f64,
    /// Probability of a horizontal flip.
    pub flip_p: f64,
}

impl ViewConfig {
    /// MoCo v3's first view at `size` px: crop, jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale
    /// p 0.2, blur σ ∈ [0.1, 2] p 1.0, flip.
    pub fn moco_view1(size: usize, crop_min: f64) -> Self {
        ViewConfig {
            size,
            scale: (crop_min, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            jitter_p: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
            grayscale_p: 0.2,
            blur_p: 1.0,
            blur_sigma: (0.1, 2.0),
            solarize_p: 0.0,
            flip_p: 0.5,
        }
    }

    /// MoCo v3's second view: blur p 0.1 and solarise p 0.2.
    pub fn moco_view2(size: usize, crop_min: f64) -> Self {
        ViewConfig {
            blur_p: 0.1,
            solarize_p: 0.2,
            ..Self::moco_view1(size, crop_min)
        }
    }

    /// Applies the view's random augmentation (without normalisation).
    pub fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        let b = sample_crop(rng, img.height, img.width, self.scale, self.ratio);
        let mut out = resized_crop(img, b, self.size, self.size);
        if rng.chance(self.jitter_p) {
            let factor = |rng: &mut Rng, s: f64| rng.range((1.0 - s).max(0.0), 1.0 + s) as f32;
            let bf = factor(rng, self.brightness);
            let cf = factor(rng, self.contrast);
            let sf = factor(rng, self.saturation);
            let hf = rng.range(-self.hue, self.hue) as f32;
            let mut order = [0, 1, 2, 3];
            rng.shuffle(&mut order);
            for op in order {
                match op {
                    0 if self.brightness > 0.0 => adjust_brightness(&mut out, bf),
                    1 if self.contrast > 0.0 => adjust_contrast(&mut out, cf),
                    2 if self.saturation > 0.0 => adjust_saturation(&mut out, sf),
                    3 if self.hue > 0.0 => adjust_hue(&mut out, hf),
                    _ => {}
                }
            }
        }
        if rng.chance(self.grayscale_p) {
            grayscale(&mut out);
        }
        if rng.chance(self.blur_p) {
            let sigma = rng.range(self.blur_sigma.0, self.blur_sigma.1) as f32;
            gaussian_blur(&mut out, sigma);
        }
        if rng.chance(self.solarize_p) {
            solarize(&mut out, 128.0 / 255.0);
        }
        if rng.chance(self.flip_p) {
            hflip(&mut out);
        }
        out
    }
}

/// The two-view pipeline plus normalisation and the evaluation transform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// First view (the stronger blur).
    pub view1: ViewConfig,
    /// Second view (solarisation).
    pub view2: ViewConfig,
    /// Per-channel mean for normalisation.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
    /// Evaluation: shorter side resized to this…
    pub eval_resize: usize,
    /// …then the centre `eval_size` square.
    pub eval_size: usize,
}

/// ImageNet's channel mean.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's channel standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl AugmentConfig {
    /// MoCo v3 on ImageNet: 224 px, `crop_min` 0.08 (ViT, ResNet-50 100 ep) or 0.2 (ResNet-50
    /// 300+ ep); evaluation resize 256, centre crop 224.
    pub fn imagenet(crop_min: f64) -> Self {
        AugmentConfig {
            view1: ViewConfig::moco_view1(224, crop_min),
            view2: ViewConfig::moco_view2(224, crop_min),
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
            eval_resize: 256,
            eval_size: 224,
        }
    }

    /// CIFAR at 32 px (solo-learn's MoCo v3 recipe): no blur, solarise p 0.2 on view 2,
    /// `crop_min` 0.08.
    pub fn cifar(cifar100: bool) -> Self {
        let view1 = ViewConfig {
            blur_p: 0.0,
            ..ViewConfig::moco_view1(32, 0.08)
        };
        let view2 = ViewConfig {
            blur_p: 0.0,
            solarize_p: 0.2,
            ..view1.clone()
        };
        let (mean, std) = if cifar100 {
            (vec![0.5071, 0.4865, 0.4409], vec![0.2673, 0.2564, 0.2762])
        } else {
            (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616])
        };
        AugmentConfig {
            view1,
            view2,
            mean,
            std,
            eval_resize: 32,
            eval_size: 32,
        }
    }

    /// Fashion-MNIST / MNIST (one channel) at `size` px: crop with `crop_min`, brightness and
    /// contrast jitter 0.4 p 0.8 (no hue, saturation or grayscale: there is no colour), a light
    /// blur σ ∈ [0.1, 1] (p 0.5 / 0.1), solarise p 0.2 on view 2, flip.
    pub fn grayscale_28(size: usize, crop_min: f64, mean: f32, std: f32) -> Self {
        let view1 = ViewConfig {
            saturation: 0.0,
            hue: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.5,
            blur_sigma: (0.1, 1.0),
            ..ViewConfig::moco_view1(size, crop_min)
        };
        let view2 = ViewConfig {
            blur_p: 0.1,
            solarize_p: 0.2,
            ..view1.clone()
        };
        AugmentConfig {
            view1,
            view2,
            mean: vec![mean],
            std: vec![std],
            eval_resize: size,
            eval_size: size,
        }
    }

    /// Fashion-MNIST's preset (mean 0.2860, std 0.3530).
    pub fn fashion_mnist(size: usize, crop_min: f64) -> Self {
        Self::grayscale_28(size, crop_min, 0.2860, 0.3530)
    }

    /// MNIST's preset (mean 0.1307, std 0.3081).
    pub fn mnist(size: usize, crop_min: f64) -> Self {
        Self::grayscale_28(size, crop_min, 0.1307, 0.3081)
    }

    /// Sets the crop's minimum area fraction of both views.
    pub fn with_crop_min(mut self, crop_min: f64) -> Self {
        self.view1.scale.0 = crop_min;
        self.view2.scale.0 = crop_min;
        self
    }

    /// The two normalised views of `img` for sample `index` of `epoch`.
    pub fn two_views(&self, img: &Image, seed: u64, epoch: u64, index: u64) -> (Image, Image) {
        let mut v1 = self
            .view1
            .apply(img, &mut Rng::for_sample(seed, epoch, index, 1));
        let mut v2 = self
            .view2
            .apply(img, &mut Rng::for_sample(seed, epoch, index, 2));
        normalize(&mut v1, &self.mean, &self.std);
        normalize(&mut v2, &self.mean, &self.std);
        (v1, v2)
    }

    /// The deterministic evaluation view: resize, centre crop, normalise.
    pub fn eval_view(&self, img: &Image) -> Image {
        let mut out = resize_center_crop(img, self.eval_resize, self.eval_size);
        normalize(&mut out, &self.mean, &self.std);
        out
    }

    /// The view of supervised training on top of a pretrained backbone (MoCo v3's linear
    /// probe): RandomResizedCrop (the preset's scale range, 0.08–1 on ImageNet; ratio 3/4–4/3)
    /// to `eval_size`, horizontal flip, normalise. No colour jitter, blur or solarisation.
    pub fn supervised_view(&self, img: &Image, seed: u64, epoch: u64, index: u64) -> Image {
        let view = ViewConfig {
            size: self.eval_size,
            jitter_p: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.0,
            solarize_p: 0.0,
            flip_p: 0.5,
            ..self.view1.clone()
        };
        let mut out = view.apply(img, &mut Rng::for_sample(seed, epoch, index, 3));
        normalize(&mut out, &self.mean, &self.std);
        out
    }

    /// Side of the images this pipeline produces.
    pub fn size(&self) -> usize {
        self.view1.size
    }
}
