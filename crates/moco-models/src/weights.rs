//! What a weight file holds, decided by its content, never by its name: a `torch.save` file
//! (zip or legacy pickle), a safetensors file, or one of our Burn records — a MoCo
//! checkpoint, a backbone checkpoint (each records its kind in its own fields) or the model
//! record of a training run's checkpoint folder.

use std::io::Read;
use std::path::Path;

use crate::ModelError;

/// The kind of a weight file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFile {
    /// A `torch.save` file: the official MoCo v3 release, a linear-probe or DeiT-style file,
    /// or our `torch.save` export.
    Torch,
    /// A safetensors file (our timm / torchvision export, or anyone's).
    Safetensors,
    /// Our checkpoint of a whole MoCo model with its configuration
    /// ([`crate::save_checkpoint`]).
    MocoCheckpoint,
    /// Our checkpoint of a backbone alone with its configuration
    /// ([`crate::save_backbone_checkpoint`]).
    BackboneCheckpoint,
    /// The model record of a training run's checkpoint folder (`RUN/checkpoints/step-N/
    /// model.mpk`), read with the run's `config.json`.
    RunModel,
}

/// How many leading bytes decide the kind (our records name their fields near the start).
const HEAD: u64 = 4096;

/// Reads the start of `path` and says what kind of weight file it is.
pub fn sniff(path: &Path) -> Result<WeightFile, ModelError> {
    let meta =
        std::fs::metadata(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(ModelError::file(path, "not a regular file"));
    }
    if meta.len() == 0 {
        return Err(ModelError::file(path, "the file is empty"));
    }
    let mut head = Vec::with_capacity(HEAD as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(HEAD).read_to_end(&mut head))
        .map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
    kind_of(&head, meta.len()).ok_or_else(|| {
        ModelError::file(
            path,
            "not a weight file this library reads (expected a PyTorch checkpoint, a safetensors file or a moco checkpoint)",
        )
    })
}

/// The kind of a file of `len` bytes starting with `head`.
pub fn kind_of(head: &[u8], len: u64) -> Option<WeightFile> {
    let contains = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    // torch.save's zip archive.
    if head.starts_with(b"PK\x03\x04") {
        return Some(WeightFile::Torch);
    }
    // safetensors: an 8-byte little-endian header length, then the JSON header.
    if head.len() > 8 {
        let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if head[8] == b'{' && n >= 2 && 8 + n <= len {
            return Some(WeightFile::Safetensors);
        }
    }
    match head {
        // A legacy (pre-zip) torch.save file: a pickle PROTO opcode and its version.
        [0x80, 2..=5, ..] => Some(WeightFile::Torch),
        // A Burn record in named MessagePack: a map whose first key is a string.
        [0x80..=0x8f | 0xde | 0xdf, 0xa0..=0xbf | 0xd9, ..] => Some(
            // The field names of our records, as MessagePack strings (0xaf: 15 bytes, 0xa6:
            // 6); Burn's own metadata comes first and names neither.
            if contains(b"\xafbackbone_config") {
                WeightFile::BackboneCheckpoint
            } else if contains(b"\xa6config") {
                WeightFile::MocoCheckpoint
            } else {
                WeightFile::RunModel
            },
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_decides() {
        assert_eq!(kind_of(b"PK\x03\x04rest", 100), Some(WeightFile::Torch));
        assert_eq!(kind_of(b"\x80\x02}q\x00", 100), Some(WeightFile::Torch));
        let mut st = 20u64.to_le_bytes().to_vec();
        st.extend(b"{\"a\":{}}");
        assert_eq!(kind_of(&st, 40), Some(WeightFile::Safetensors));
        assert_eq!(kind_of(&st, 10), None, "a header longer than the file");
        let record = b"\x82\xa8metadata\x80\xa4item\x83\xa7version\x01\xa6config\xa2{}";
        assert_eq!(kind_of(record, 100), Some(WeightFile::MocoCheckpoint));
        let backbone = b"\x82\xa8metadata\x80\xa4item\x83\xafbackbone_config\xa2{}";
        assert_eq!(kind_of(backbone, 100), Some(WeightFile::BackboneCheckpoint));
        let run = b"\x82\xa8metadata\x81\xa7version\xa10\xa4item\x81\xa5model\x80";
        assert_eq!(kind_of(run, 100), Some(WeightFile::RunModel));
        assert_eq!(kind_of(b"hello world", 11), None);
    }
}
