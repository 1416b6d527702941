//! MoCo v3 around your own Burn module, on your own in-memory dataset, with the kNN monitor.
//!
//! The backbone is a small MLP-Mixer defined below (any `Module` that maps
//! images to feature vectors can be one: implement `moco::models::Backbone`); the images come
//! from a `burn::data::dataset::InMemDataset` of the project's own item type (here filled
//! from the bundled Fashion-MNIST images). It pretrains for a few hundred steps on the CPU
//! and prints the kNN accuracy curve of the backbone on held-out images.
//!
//! `cargo run --release --example custom_backbone`

use std::sync::Arc;

use burn::data::dataset::InMemDataset;
use burn::nn::{Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use moco::data::{AugmentConfig, FromBurn, Image, Loader, LoaderConfig, Sample, Views};
use moco::models::{Backbone, Heads};
use moco::train::{Event, KnnMonitor, LoopSettings, OptimConfig, Schedule, Siamese, Trainer};

/// Side of a patch: a 28×28 image is 16 patches of 7×7.
const PATCH: usize = 7;

/// The user's network, an MLP-Mixer: 16 patches of 7×7 pixels embedded to 128 channels, two
/// blocks that mix across patches then across channels, and the mean over patches:
/// `[batch, 1, 28, 28]` to `[batch, 128]`.
#[derive(Module, Debug)]
struct Mixer {
    embed: Linear,
    blocks: Vec<MixerBlock>,
    norm: LayerNorm,
}

#[derive(Module, Debug)]
struct MixerBlock {
    norm1: LayerNorm,
    tokens1: Linear,
    tokens2: Linear,
    norm2: LayerNorm,
    channels1: Linear,
    channels2: Linear,
    gelu: Gelu,
}

impl Mixer {
    fn new(device: &Device) -> Self {
        let (patches, width) = ((28 / PATCH) * (28 / PATCH), 128);
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        Mixer {
            embed: linear(PATCH * PATCH, width),
            blocks: (0..2)
                .map(|_| MixerBlock {
                    norm1: LayerNormConfig::new(width).init(device),
                    tokens1: linear(patches, 64),
                    tokens2: linear(64, patches),
                    norm2: LayerNormConfig::new(width).init(device),
                    channels1: linear(width, 256),
                    channels2: linear(256, width),
                    gelu: Gelu::new(),
                })
                .collect(),
            norm: LayerNormConfig::new(width).init(device),
        }
    }
}

impl MixerBlock {
    /// `[batch, patches, channels]` to the same shape.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let t = self.norm1.forward(x.clone()).swap_dims(1, 2);
        let t = self
            .tokens2
            .forward(self.gelu.forward(self.tokens1.forward(t)));
        let x = x + t.swap_dims(1, 2);
        let c = self.norm2.forward(x.clone());
        x + self
            .channels2
            .forward(self.gelu.forward(self.channels1.forward(c)))
    }
}

/// What MoCo v3 needs of a backbone: images to features, and the feature width. The
/// gradient monitor groups the parameters by their first field (`embed`, `blocks.0`, …), so
/// the first layer's gradient norm comes first, as the paper watches it.
impl Backbone for Mixer {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let [n, c, h, w] = images.dims();
        let (ph, pw) = (h / PATCH, w / PATCH);
        // [n, c, ph, 7, pw, 7] → [n, ph, pw, c, 7, 7] → [n, patches, c·49]
        let patches = images
            .reshape([n, c, ph, PATCH, pw, PATCH])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([n, ph * pw, c * PATCH * PATCH]);
        let mut x = self.embed.forward(patches);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x).mean_dim(1).squeeze_dim(1)
    }

    fn num_features(&self) -> usize {
        self.embed.weight.dims()[1]
    }
}

/// The project's own item type: 28×28 grayscale bytes and a label.
#[derive(Clone, Debug)]
struct Item {
    pixels: Vec<u8>,
    label: usize,
}

/// The project's in-memory datasets: training images and held-out images.
fn in_memory_items() -> Result<(InMemDataset<Item>, InMemDataset<Item>), String> {
    let (images, _) = moco::data::bundled_fashion_mnist().map_err(|e| e.to_string())?;
    let mut items = Vec::with_capacity(images.len());
    for i in 0..images.len() {
        let s = images.get(i).map_err(|e| e.to_string())?;
        let pixels = s
            .image
            .data
            .iter()
            .map(|v| (v * 255.0).round() as u8)
            .collect();
        items.push(Item {
            pixels,
            label: s.label,
        });
    }
    let held_out = items.split_off(items.len() - 2000);
    Ok((InMemDataset::new(items), InMemDataset::new(held_out)))
}

fn to_sample(item: Item) -> Sample {
    Sample {
        image: Image::from_u8_chw(1, 28, 28, &item.pixels),
        label: item.label,
    }
}

fn main() -> Result<(), String> {
    let device = Device::flex().autodiff();
    device.seed(0);
    let (train, held_out) = in_memory_items()?;
    let train = Arc::new(FromBurn::new(train, to_sample).with_name("train"));
    let held_out = Arc::new(FromBurn::new(held_out, to_sample).with_name("held-out"));

    // MoCo v3's asymmetric two-view augmentations at 28 px; the kNN monitor uses their
    // evaluation view.
    let augment = Arc::new(AugmentConfig::fashion_mnist(28, 0.2));
    let loader = Loader::new(
        train.clone(),
        Views::Two(augment.clone()),
        LoaderConfig::train(128, 0),
    )
    .map_err(|e| e.to_string())?;
    let knn = KnnMonitor::new(train, held_out, augment, 50, 2)
        .map_err(|e| e.to_string())?
        .with_knn(20, 0.07);

    // MoCo v3 around the user's backbone: projector and predictor as for a ViT.
    let heads = Heads::vit(128, 512, 128);
    let model = Siamese::moco_v3(heads.init(|| Mixer::new(&device), &device));
    let schedule = Schedule {
        epochs: 6.0,
        warmup_epochs: 1.0,
        peak_lr: 3e-3,
        base_momentum: 0.99,
        batches_per_epoch: loader.batches_per_epoch(),
        grad_accum: 1,
    };
    let optim = OptimConfig::adamw(0.1).init();
    // A metric sink of our own: it keeps the kNN curve (every event also reaches it).
    let curve = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = curve.clone();
    let (_model, summary) = Trainer::new(model, optim, loader, LoopSettings::new(schedule), device)
        .with_knn(knn)
        .with_sink(move |event: &Event| {
            if let Event::Knn { step, top1, .. } = event {
                record.lock().unwrap().push((*step, *top1));
            }
        })
        .run()
        .map_err(|e| e.to_string())?;
    println!("kNN curve of the backbone (held-out top-1):");
    for (step, top1) in curve.lock().unwrap().iter() {
        println!(
            "  step {step:>4}  {top1:5.1}%  {}",
            "#".repeat((*top1 / 2.0) as usize)
        );
    }
    println!(
        "{} steps, kNN top-1 {:.1}% before training, {:.1}% after (best {:.1}%)",
        summary.steps,
        summary.initial_knn.map_or(0.0, |r| r.top1),
        summary.final_knn.map_or(0.0, |r| r.top1),
        summary.best_top1.unwrap_or(0.0)
    );
    Ok(())
}
