//! What a weight file holds, decided by its content, never by its name: a `torch.save` file
//! (zip or legacy pickle), a safetensors file, or one of our burnpack files — a MoCo
//! checkpoint, a backbone checkpoint (each records its kind in its metadata) or the model of a
//! training run's checkpoint folder — or the same three written with Burn 0.21 (MessagePack
//! records, whose field names tell them apart).

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
    /// The model of a training run's checkpoint folder (`RUN/checkpoints/step-N/model.bpk`,
    /// `model.mpk` from Burn 0.21), read with the run's `config.json`.
    RunModel,
}

/// How many leading bytes decide the kind (our records name their fields near the start).
const HEAD: u64 = 4096;

/// The first bytes of a burnpack file (its magic number, little-endian).
const BURNPACK_MAGIC: &[u8] = b"NRUB";

/// The most metadata of a burnpack file read to tell its kind.
const BURNPACK_METADATA_MAX: u64 = 64 << 20;

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
    let read = |n: u64| {
        let mut head = Vec::with_capacity(n.min(HEAD) as usize);
        std::fs::File::open(path)
            .and_then(|f| f.take(n).read_to_end(&mut head))
            .map(|_| head)
            .map_err(|e| ModelError::file(path, format!("cannot read: {e}")))
    };
    let mut head = read(HEAD)?;
    if head.starts_with(BURNPACK_MAGIC) && head.len() >= 10 {
        // The header (magic, version, metadata size) and the metadata, where the kind is.
        let size = u32::from_le_bytes(head[6..10].try_into().expect("4 bytes")) as u64;
        head = read(10 + size.min(BURNPACK_METADATA_MAX))?;
    }
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
    if head.starts_with(BURNPACK_MAGIC) {
        // Our metadata as CBOR text: the key `moco.kind` (9 bytes, 0x69) and its value.
        return Some(if contains(b"\x69moco.kind\x68backbone") {
            WeightFile::BackboneCheckpoint
        } else if contains(b"\x69moco.kind\x65model") {
            WeightFile::MocoCheckpoint
        } else {
            WeightFile::RunModel
        });
    }
    match head {
        // A legacy (pre-zip) torch.save file: a pickle PROTO opcode and its version.
        [0x80, 2..=5, ..] => Some(WeightFile::Torch),
        // A Burn 0.21 record in named MessagePack: a map whose first key is a string.
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
