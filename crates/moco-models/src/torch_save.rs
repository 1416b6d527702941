//! Writing `torch.save` files (PyTorch's zip format) without PyTorch: a dict
//! `{top_key: OrderedDict(name → tensor)}` of float32 tensors (and int64 ones, BN's
//! `num_batches_tracked`), the layout DeiT's and MAE's fine-tuning scripts read
//! (`checkpoint['model']`) and MoCo v3's release uses (`checkpoint['state_dict']`). The pickle
//! uses only what `torch.load(..., weights_only=True)` accepts: `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch.FloatStorage` and `torch.LongStorage`.

use std::io::{Cursor, Write};
use std::path::Path;

use burn::tensor::{DType, TensorData};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::{write_atomic, ModelError};

/// Pickle protocol 2 opcodes used here.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT: u8 = b'J';
    pub const GLOBAL: u8 = b'c';
    pub const REDUCE: u8 = b'R';
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const STOP: u8 = b'.';
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, op: u8) {
        self.0.push(op);
    }
    fn string(&mut self, s: &str) {
        self.op(op::BINUNICODE);
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
    }
    fn int(&mut self, v: usize) -> Result<(), ModelError> {
        let v = i32::try_from(v).map_err(|_| {
            ModelError::InvalidConfig(format!("{v} does not fit a 32-bit pickle integer"))
        })?;
        self.op(op::BININT);
        self.0.extend(v.to_le_bytes());
        Ok(())
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(op::GLOBAL);
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
    }
    fn int_tuple(&mut self, values: &[usize]) -> Result<(), ModelError> {
        self.op(op::MARK);
        for &v in values {
            self.int(v)?;
        }
        self.op(op::TUPLE);
        Ok(())
    }
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(op::EMPTY_TUPLE);
        self.op(op::REDUCE);
    }
}

/// The pickle of `{top_key: OrderedDict(...)}` whose tensor `i` lives in storage record `i`.
fn pickle(top_key: &str, tensors: &[(String, TensorData)]) -> Result<Vec<u8>, ModelError> {
    let mut p = Pickle(Vec::new());
    p.op(op::PROTO);
    p.op(2);
    p.op(op::EMPTY_DICT);
    p.string(top_key);
    p.ordered_dict();
    p.op(op::MARK);
    for (i, (name, data)) in tensors.iter().enumerate() {
        let shape: &[usize] = data.shape();
        let numel: usize = shape.iter().product();
        // Contiguous strides.
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        p.string(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(op::MARK);
        // Persistent id ('storage', torch.FloatStorage, key, location, numel).
        p.op(op::MARK);
        p.string("storage");
        let storage = match data.dtype() {
            DType::I64 => "LongStorage",
            _ => "FloatStorage",
        };
        p.global("torch", storage);
        p.string(&i.to_string());
        p.string("cpu");
        p.int(numel)?;
        p.op(op::TUPLE);
        p.op(op::BINPERSID);
        p.int(0)?;
        p.int_tuple(shape)?;
        p.int_tuple(&stride)?;
        p.op(op::NEWFALSE);
        p.ordered_dict();
        p.op(op::TUPLE);
        p.op(op::REDUCE);
    }
    p.op(op::SETITEMS);
    p.op(op::SETITEM);
    p.op(op::STOP);
    Ok(p.0)
}

/// Serialises `{top_key: OrderedDict(tensors)}` in `torch.save`'s zip format. Tensors are
/// written as f32 (converted), int64 ones as int64.
pub fn torch_save_bytes(
    top_key: &str,
    tensors: &[(String, TensorData)],
) -> Result<Vec<u8>, ModelError> {
    let tensors: Vec<(String, TensorData)> = tensors
        .iter()
        .map(|(n, d)| match d.dtype() {
            DType::I64 => (n.clone(), d.clone()),
            _ => (n.clone(), d.clone().convert::<f32>()),
        })
        .collect();
    let zip_err = |e: zip::result::ZipError| ModelError::InvalidConfig(format!("zip: {e}"));
    let io_err = |e: std::io::Error| ModelError::InvalidConfig(format!("zip: {e}"));
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    // Stored, 64-byte aligned records, as torch.save writes them (so mmap loading works).
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .with_alignment(64);
    let mut record = |name: &str, bytes: &[u8]| -> Result<(), ModelError> {
        zip.start_file(format!("archive/{name}"), opts)
            .map_err(zip_err)?;
        zip.write_all(bytes).map_err(io_err)
    };
    record("data.pkl", &pickle(top_key, &tensors)?)?;
    record("byteorder", b"little")?;
    for (i, (_, data)) in tensors.iter().enumerate() {
        record(&format!("data/{i}"), data.as_bytes())?;
    }
    record("version", b"3\n")?;
    Ok(zip.finish().map_err(zip_err)?.into_inner())
}

/// Writes `{top_key: OrderedDict(tensors)}` to `path` in `torch.save`'s format, atomically.
pub fn torch_save(
    path: &Path,
    top_key: &str,
    tensors: &[(String, TensorData)],
) -> Result<(), ModelError> {
    write_atomic(path, &torch_save_bytes(top_key, tensors)?)
}
