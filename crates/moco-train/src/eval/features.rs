//! Feature export: the backbone features (and the projector / predictor outputs when the
//! checkpoint holds the heads) of a dataset split or of the user's own image tensors, written
//! as safetensors for any downstream tool.

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::*;
use moco_data::SharedDataset;
use moco_models::{write_atomic, BackboneConfig};
use safetensors::{Dtype, SafeTensors};

use super::{EvalData, Pretrained};
use crate::TrainError;

/// Named output tensors in host memory.
pub type Outputs = Vec<(String, TensorData)>;

/// Batch size of feature extraction.
const BATCH: usize = 256;

/// Runs the network on one batch: `features`, then `projection` and `prediction` when present.
fn forward_all(model: &Pretrained, x: Tensor<4>) -> Vec<Tensor<2>> {
    let features = model.backbone.forward(x);
    let mut out = vec![features.clone()];
    if let Some(projector) = &model.projector {
        let projection = projector.forward(features);
        if let Some(predictor) = &model.predictor {
            out.push(projection.clone());
            out.push(predictor.forward(projection));
        } else {
            out.push(projection);
        }
    }
    out
}

fn names(model: &Pretrained) -> Vec<&'static str> {
    let mut names = vec!["features"];
    if model.projector.is_some() {
        names.push("projection");
    }
    if model.predictor.is_some() {
        names.push("prediction");
    }
    names
}

fn collect(names: &[&str], parts: Vec<Vec<TensorData>>) -> Outputs {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut values = Vec::new();
            let mut rows = 0;
            let mut cols = 0;
            for batch in &parts {
                let d = &batch[i];
                rows += d.shape()[0];
                cols = d.shape()[1];
                values.extend(d.try_to_vec::<f32>().expect("f32 outputs"));
            }
            (name.to_string(), TensorData::new(values, [rows, cols]))
        })
        .collect()
}

/// Features (and head outputs) of every image of `set` under the evaluation transform, in
/// dataset order, with `labels` (i64). Pass a module of a backend without autodiff: eval mode.
pub fn features_of_dataset(
    model: &Pretrained,
    data: &EvalData,
    set: &SharedDataset,
    device: &Device,
) -> Result<Outputs, TrainError> {
    let loader = data.eval_loader(set, BATCH)?;
    let mut parts = Vec::new();
    let mut labels = Vec::new();
    for batch in loader.epoch(0, 0) {
        let mut batch = batch?;
        let x = Tensor::<4>::from_data(
            TensorData::new(batch.views.swap_remove(0), batch.shape),
            device,
        );
        parts.push(
            forward_all(model, x)
                .into_iter()
                .map(|t| t.into_data().convert::<f32>())
                .collect(),
        );
        labels.extend(batch.labels.iter().map(|&l| l as i64));
    }
    let mut out = collect(&names(model), parts);
    let n = labels.len();
    out.push(("labels".to_string(), TensorData::new(labels, [n])));
    Ok(out)
}

/// Reads the `images` tensor `[N, C, H, W]` (f32, already normalised) of a safetensors file and
/// checks it against the backbone's input.
pub fn read_images(path: &Path, config: &BackboneConfig) -> Result<TensorData, TrainError> {
    let err = |m: String| TrainError::Config(format!("{}: {m}", path.display()));
    let bytes =
        std::fs::read(path).map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let view = st.tensor("images").map_err(|_| {
        err(format!(
            "no tensor named 'images' (found: {})",
            st.names().join(", ")
        ))
    })?;
    if view.dtype() != Dtype::F32 {
        return Err(err(format!("'images' is {:?}; expected F32", view.dtype())));
    }
    let shape = view.shape().to_vec();
    let (chans, size) = match config {
        BackboneConfig::Vit(v) => (v.in_chans, Some(v.img_size)),
        BackboneConfig::ResNet(r) => (r.in_chans, None),
    };
    if shape.len() != 4 || shape[1] != chans {
        return Err(err(format!(
            "'images' has shape {shape:?}; expected [N, {chans}, H, W]"
        )));
    }
    if let Some(s) = size {
        if shape[2] != s || shape[3] != s {
            return Err(err(format!(
                "'images' has shape {shape:?}; this ViT takes {s}×{s} inputs"
            )));
        }
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(TensorData::new(values, shape))
}

/// Features (and head outputs) of user-supplied images `[N, C, H, W]`.
pub fn features_of_images(model: &Pretrained, images: TensorData, device: &Device) -> Outputs {
    let all = Tensor::<4>::from_data(images, device);
    let n = all.dims()[0];
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + BATCH).min(n);
        let x = all.clone().narrow(0, start, end - start);
        parts.push(
            forward_all(model, x)
                .into_iter()
                .map(|t| t.into_data().convert::<f32>())
                .collect(),
        );
        start = end;
    }
    collect(&names(model), parts)
}

/// Writes named tensors (f32 or i64) and string metadata as safetensors, atomically.
pub fn write_outputs(
    path: &Path,
    outputs: &Outputs,
    metadata: HashMap<String, String>,
) -> Result<(), TrainError> {
    let views = outputs
        .iter()
        .map(|(name, data)| {
            let dtype = match data.dtype() {
                burn::tensor::DType::I64 => Dtype::I64,
                _ => Dtype::F32,
            };
            safetensors::tensor::TensorView::new(dtype, data.shape().to_vec(), data.as_bytes())
                .map(|v| (name.clone(), v))
                .map_err(|e| TrainError::Io(format!("tensor '{name}': {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
    write_atomic(path, &bytes)?;
    Ok(())
}
