//! Features from a pretrained network: an official MoCo v3 checkpoint (`.pth.tar`), a run
//! directory of `moco pretrain`, a checkpoint `.bpk` (or a Burn 0.21 `.mpk`) or a `.safetensors` export, loaded as a backbone;
//! its features of a few bundled Fashion-MNIST images, and how similar they are.
//!
//! `cargo run --release --example checkpoint_features -- [PATH [HEADS]]` (default: the small
//! 4-head ViT of `tests/golden`, a checkpoint in the official release's format; HEADS is the
//! ViT's attention-head count where its width has no preset).

use std::path::PathBuf;

use burn::prelude::*;
use moco::data::{bundled_fashion_mnist, Image};
use moco::models::{Backbone, BackboneConfig, Stem};
use moco::train::config::augment_for;
use moco::train::load_pretrained;

/// The side of the images the backbone was trained on.
fn input_side(config: &BackboneConfig) -> usize {
    match config {
        BackboneConfig::Vit(c) => c.img_size,
        BackboneConfig::ResNet(c) if c.stem == Stem::Small => 32,
        BackboneConfig::ResNet(_) => 224,
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, heads) = match args.as_slice() {
        [] => (
            PathBuf::from("tests/golden/vit_tiny_p8_32.pth.tar"),
            Some(4),
        ),
        [path] => (PathBuf::from(path), None),
        [path, heads, ..] => (
            PathBuf::from(path),
            Some(
                heads
                    .parse()
                    .map_err(|_| format!("HEADS: '{heads}' is not a number"))?,
            ),
        ),
    };
    let device = Device::flex();
    let pretrained = load_pretrained(&path, heads, &device).map_err(|e| e.to_string())?;
    let config = &pretrained.backbone_config;
    println!("{}: {}", pretrained.source, config.describe());

    // Eight images seen through the evaluation transform at the backbone's input size; a
    // grayscale image is repeated over the channels an RGB backbone expects.
    let (side, channels) = (input_side(config), config.in_chans());
    let transform = augment_for(Some(moco::data::DatasetKind::Folder), side, 0.2);
    let (images, _) = bundled_fashion_mnist().map_err(|e| e.to_string())?;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for i in 0..8 {
        let sample = images.get(i).map_err(|e| e.to_string())?;
        let plane = sample.image.data.clone();
        let rgb = Image {
            channels,
            height: sample.image.height,
            width: sample.image.width,
            data: plane.repeat(channels),
        };
        pixels.extend(transform.eval_view(&rgb).data);
        labels.push(images.classes()[sample.label].clone());
    }
    let x = Tensor::<4>::from_data(TensorData::new(pixels, [8, channels, side, side]), &device);
    let features = pretrained.backbone.forward(x);
    println!(
        "features: {:?} ({} wide)",
        features.dims(),
        pretrained.backbone.num_features()
    );

    let unit = moco::loss::normalize(features);
    let similarity = unit.clone().matmul(unit.transpose());
    let s: Vec<f32> = similarity
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    println!("cosine similarity of the features:");
    for (i, name) in labels.iter().enumerate() {
        let row: Vec<String> = (0..8).map(|j| format!("{:5.2}", s[i * 8 + j])).collect();
        println!("  {name:>12} {}", row.join(" "));
    }
    Ok(())
}
