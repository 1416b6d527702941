//! The keys of the configuration: every field by its flat name (the first, flat
//! `config.json` format; the study's overrides) and by its place in the sections
//! (`schedule.batch_size`), with a builder method each (`with_batch_size`).

use serde_json::Value;

use super::{PretrainConfig, CONFIG_VERSION};

/// Declares every key once: its builder, its flat name, its type and its place.
macro_rules! keys {
    ($($with:ident, $flat:ident: $ty:ty => $($place:ident).+;)*) => {
        /// Every key: its flat name and its place in the sections.
        pub const KEYS: &[(&str, &str)] = &[$((stringify!($flat), stringify!($($place).+))),*];

        impl PretrainConfig {
            $(
                #[doc = concat!("Sets `", stringify!($($place).+), "`.")]
                pub fn $with(mut self, value: $ty) -> Self {
                    self.$($place).+ = value;
                    self
                }
            )*

            /// Sets the field `key` names (flat, `batch_size`, or by its place,
            /// `schedule.batch_size`) from a JSON value.
            pub fn set(&mut self, key: &str, value: Value) -> Result<(), String> {
                $(
                    if key == stringify!($flat) || key == stringify!($($place).+) {
                        self.$($place).+ = serde_json::from_value::<$ty>(value)
                            .map_err(|e| format!("{key}: {e}"))?;
                        return Ok(());
                    }
                )*
                Err(format!(
                    "unknown field '{key}' (fields: {})",
                    KEYS.iter().map(|(flat, _)| *flat).collect::<Vec<_>>().join(", ")
                ))
            }
        }
    };
}

keys! {
    with_preset, preset: String => preset;
    with_method, method: crate::Method => method;
    with_temperature, temperature: f64 => temperature;
    with_seed, seed: u64 => seed;
    with_precision, precision: Option<moco_models::Precision> => precision;
    with_skip_nonfinite, skip_nonfinite: bool => skip_nonfinite;
    with_arch, arch: String => model.arch;
    with_img_size, img_size: usize => model.img_size;
    with_patch_size, patch_size: usize => model.patch_size;
    with_in_chans, in_chans: usize => model.in_chans;
    with_embed_dim, embed_dim: Option<usize> => model.embed_dim;
    with_depth, depth: Option<usize> => model.depth;
    with_num_heads, num_heads: Option<usize> => model.num_heads;
    with_width, width: Option<usize> => model.width;
    with_stem, stem: Option<moco_models::Stem> => model.stem;
    with_mlp_dim, mlp_dim: usize => model.mlp_dim;
    with_out_dim, out_dim: usize => model.out_dim;
    with_freeze_patch_embed, freeze_patch_embed: bool => model.freeze_patch_embed;
    with_gelu_kernel, gelu_kernel: Option<moco_models::GeluKernel> => model.gelu_kernel;
    with_attention_kernel, attention_kernel: Option<moco_models::AttentionKernel> => model.attention_kernel;
    with_layer_norm_kernel, layer_norm_kernel: Option<moco_models::LayerNormKernel> => model.layer_norm_kernel;
    with_conv_kernel, conv_kernel: Option<moco_models::ConvKernel> => model.conv_kernel;
    with_optimizer, optimizer: super::OptimizerName => optimizer.name;
    with_base_lr, base_lr: f64 => optimizer.base_lr;
    with_peak_lr, peak_lr: Option<f64> => optimizer.peak_lr;
    with_weight_decay, weight_decay: f64 => optimizer.weight_decay;
    with_clip_grad, clip_grad: Option<f64> => optimizer.clip_grad;
    with_batch_size, batch_size: usize => schedule.batch_size;
    with_grad_accum, grad_accum: usize => schedule.grad_accum;
    with_epochs, epochs: f64 => schedule.epochs;
    with_steps, steps: Option<u64> => schedule.steps;
    with_max_steps, max_steps: Option<u64> => schedule.max_steps;
    with_warmup_epochs, warmup_epochs: f64 => schedule.warmup_epochs;
    with_momentum, momentum: f64 => schedule.momentum;
    with_data, data: Option<String> => data.path;
    with_dataset, dataset: Option<moco_data::DatasetKind> => data.format;
    with_crop_min, crop_min: f64 => data.crop_min;
    with_workers, workers: usize => data.workers;
    with_strict, strict: bool => data.strict;
    with_knn_every, knn_every: u64 => monitors.knn_every;
    with_knn_k, knn_k: usize => monitors.knn_k;
    with_knn_temperature, knn_temperature: f64 => monitors.knn_temperature;
    with_knn_memory, knn_memory: usize => monitors.knn_memory;
    with_knn_eval, knn_eval: usize => monitors.knn_eval;
    with_dip_threshold, dip_threshold: Option<f64> => monitors.dip_threshold;
    with_spike_factor, spike_factor: f64 => monitors.spike_factor;
    with_spike_window, spike_window: usize => monitors.spike_window;
    with_log_every, log_every: u64 => monitors.log_every;
    with_checkpoint_every, checkpoint_every: u64 => checkpoints.every;
    with_keep_checkpoints, keep_checkpoints: usize => checkpoints.keep;
}

impl PretrainConfig {
    /// Reads a configuration from JSON: the sectioned format (with `version`), or the flat
    /// format of the first versions (every field at the top level, by its flat name). Missing
    /// fields take their defaults.
    pub fn from_json(value: Value) -> Result<Self, String> {
        let Value::Object(mut map) = value else {
            return Err("a configuration is a JSON object".into());
        };
        let mut config = PretrainConfig::default();
        if map.contains_key("version") {
            let version = map.remove("version").and_then(|v| v.as_u64()).unwrap_or(0);
            if version > CONFIG_VERSION as u64 {
                return Err(format!(
                    "configuration version {version} is newer than this version of moco ({CONFIG_VERSION})"
                ));
            }
            for (section, value) in map {
                match (section.as_str(), value) {
                    ("model", v) => config.model = section_from(&section, v)?,
                    ("optimizer", v) => config.optimizer = section_from(&section, v)?,
                    ("schedule", v) => config.schedule = section_from(&section, v)?,
                    ("data", v) => config.data = section_from(&section, v)?,
                    ("monitors", v) => config.monitors = section_from(&section, v)?,
                    ("checkpoints", v) => config.checkpoints = section_from(&section, v)?,
                    (key, v) => config.set(key, v)?,
                }
            }
        } else {
            for (key, value) in map {
                config.set(&key, value)?;
            }
        }
        Ok(config)
    }
}

fn section_from<T: serde::de::DeserializeOwned>(name: &str, value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_placed_keys_set_the_same_field() {
        let mut a = PretrainConfig::new();
        a.set("batch_size", Value::from(64)).unwrap();
        let mut b = PretrainConfig::new();
        b.set("schedule.batch_size", Value::from(64)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.schedule.batch_size, 64);
        assert_eq!(a, PretrainConfig::new().with_batch_size(64));
        let e = a.set("batchsize", Value::from(1)).unwrap_err();
        assert!(e.contains("unknown field 'batchsize'"), "{e}");
        let e = a.set("batch_size", Value::from("many")).unwrap_err();
        assert!(e.starts_with("batch_size:"), "{e}");
    }

    #[test]
    fn a_configuration_round_trips_through_json() {
        for name in crate::TRAIN_PRESETS {
            let config = PretrainConfig::preset(name).unwrap();
            let text = serde_json::to_string(&config).unwrap();
            let back: PretrainConfig = serde_json::from_str(&text).unwrap();
            assert_eq!(back, config, "{name}");
        }
    }
}
