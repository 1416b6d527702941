//! Parameter names: Burn module paths to the PyTorch names of MoCo v3's checkpoints
//! (timm for the ViT, torchvision for the ResNet, `nn.Sequential` indices for the heads).

/// Which naming family the backbone follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// timm ViT: the projector is the encoder's `head`.
    Vit,
    /// torchvision ResNet: the projector is the encoder's `fc`.
    ResNet,
}

impl Family {
    /// Name of the projector inside a MoCo v3 encoder.
    pub fn projector_name(self) -> &'static str {
        match self {
            Family::Vit => "head",
            Family::ResNet => "fc",
        }
    }
}

/// Translates a Burn path, as collected with PyTorch leaf names (`weight`/`bias` for norms),
/// into the PyTorch key, e.g. `base_encoder.projector.norms.1.running_var` →
/// `base_encoder.head.4.running_var`, `stages.0.1.downsample.conv.weight` →
/// `layer1.1.downsample.0.weight`.
pub fn burn_to_torch(path: &str, family: Family) -> String {
    let segs: Vec<&str> = path.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(segs.len());
    let mut i = 0;
    while i < segs.len() {
        let seg = segs[i];
        let index = segs.get(i + 1).and_then(|s| s.parse::<usize>().ok());
        let prev = if i > 0 { segs[i - 1] } else { "" };
        match (seg, index) {
            ("backbone", _) => {}
            ("projector", _) => out.push(family.projector_name().to_string()),
            ("stages", Some(n)) => {
                out.push(format!("layer{}", n + 1));
                i += 1;
            }
            ("linears", Some(n)) => {
                out.push((3 * n).to_string());
                i += 1;
            }
            ("convs", Some(n)) => {
                out.push("proj".to_string());
                out.push((3 * n).to_string());
                i += 1;
            }
            ("norms", Some(n)) => {
                if prev == "patch_embed" {
                    out.push("proj".to_string());
                }
                out.push((3 * n + 1).to_string());
                i += 1;
            }
            ("conv", _) if prev == "downsample" => out.push("0".to_string()),
            ("bn", _) if prev == "downsample" => out.push("1".to_string()),
            _ => out.push(seg.to_string()),
        }
        i += 1;
    }
    out.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_every_kind_of_path() {
        let cases = [
            (
                "base_encoder.backbone.cls_token",
                Family::Vit,
                "base_encoder.cls_token",
            ),
            (
                "base_encoder.backbone.blocks.3.attn.qkv.weight",
                Family::Vit,
                "base_encoder.blocks.3.attn.qkv.weight",
            ),
            (
                "base_encoder.projector.linears.2.weight",
                Family::Vit,
                "base_encoder.head.6.weight",
            ),
            (
                "momentum_encoder.projector.norms.2.running_mean",
                Family::Vit,
                "momentum_encoder.head.7.running_mean",
            ),
            (
                "base_encoder.projector.norms.0.weight",
                Family::ResNet,
                "base_encoder.fc.1.weight",
            ),
            (
                "predictor.linears.1.weight",
                Family::ResNet,
                "predictor.3.weight",
            ),
            (
                "patch_embed.convs.4.bias",
                Family::Vit,
                "patch_embed.proj.12.bias",
            ),
            (
                "patch_embed.norms.3.running_var",
                Family::Vit,
                "patch_embed.proj.10.running_var",
            ),
            (
                "patch_embed.proj.weight",
                Family::Vit,
                "patch_embed.proj.weight",
            ),
            (
                "stages.3.0.downsample.bn.weight",
                Family::ResNet,
                "layer4.0.downsample.1.weight",
            ),
            (
                "stages.0.2.conv3.weight",
                Family::ResNet,
                "layer1.2.conv3.weight",
            ),
        ];
        for (burn, family, torch) in cases {
            assert_eq!(burn_to_torch(burn, family), torch, "{burn}");
        }
    }
}
