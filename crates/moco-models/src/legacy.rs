//! Checkpoints written with Burn 0.21: its records in named MessagePack (`.mpk`), read without
//! Burn's record types, which 0.22 no longer has.
//!
//! A record is a map `{metadata, item}`; inside the item a module is a map of its fields (an
//! enum a one-entry map named by its variant, a list an array), and each parameter a map
//! `{id, param}` whose `param` is the tensor `{bytes, shape, dtype}` (little-endian values,
//! row-major) and whose `id` is the parameter id. The tensors come back named by their path,
//! with their ids, as the tensors of a burnpack file are; fields that are not modules (a
//! version, a configuration) come back by name.

use std::collections::BTreeMap;

use burn::module::ParamId;
use burn::tensor::{Bytes, DType};
use burn_store::burn_pack::Tensor as PackTensor;
use rmpv::Value;

/// The contents of a Burn 0.21 record.
#[derive(Debug, Default)]
pub struct LegacyRecord {
    /// Every parameter, named by its path from the item (`model.base_encoder.…`).
    pub tensors: Vec<PackTensor>,
    /// The item's top-level fields that are strings or integers, by name.
    pub fields: BTreeMap<String, String>,
}

impl LegacyRecord {
    /// The tensors under `prefix` (a field of the item), renamed relative to it.
    pub fn take_prefix(&mut self, prefix: &str) -> Vec<PackTensor> {
        let start = format!("{prefix}.");
        let (mut inside, outside): (Vec<_>, Vec<_>) = std::mem::take(&mut self.tensors)
            .into_iter()
            .partition(|t| t.name.starts_with(&start));
        self.tensors = outside;
        for t in &mut inside {
            t.name = t.name[start.len()..].to_string();
        }
        inside
    }
}

/// Whether `bytes` start like a Burn 0.21 record (a MessagePack map whose first key is
/// `metadata`).
pub fn is_legacy_record(bytes: &[u8]) -> bool {
    bytes.len() > 10 && matches!(bytes[0], 0x80..=0x8f) && bytes[1..].starts_with(b"\xa8metadata")
}

/// Reads a Burn 0.21 record of a module (or of a struct of modules and plain fields).
pub fn read_record(bytes: &[u8]) -> Result<LegacyRecord, String> {
    let item = item_of(bytes)?;
    let mut record = LegacyRecord::default();
    match &item {
        Value::Map(entries) => {
            for (key, value) in entries {
                let key = key_name(key)?;
                match value {
                    Value::String(s) => {
                        let s = s.as_str().ok_or("a field that is not UTF-8")?;
                        record.fields.insert(key, s.to_string());
                    }
                    Value::Integer(i) => {
                        record.fields.insert(key, i.to_string());
                    }
                    other => collect(other, &mut vec![key], &mut record.tensors)?,
                }
            }
        }
        other => collect(other, &mut Vec::new(), &mut record.tensors)?,
    }
    Ok(record)
}

/// The state of a Burn 0.21 optimizer record: per parameter id, the rank of the parameter
/// and the state's fields (tensors and integers), by name.
pub type LegacyOptimizerState = Vec<(ParamId, usize, Vec<(String, LegacyValue)>)>;

/// A field of an optimizer's state.
#[derive(Debug, Clone)]
pub enum LegacyValue {
    /// A tensor (`f32` values and shape).
    Tensor(PackTensor),
    /// An unsigned integer (a step count).
    UInt(u64),
}

/// Reads a Burn 0.21 optimizer record (`{id: {"V1": {"Rank<D>": state}}}`, the state a map of
/// tensors, integers and absent fields).
pub fn read_optimizer(bytes: &[u8]) -> Result<LegacyOptimizerState, String> {
    let Value::Map(entries) = item_of(bytes)? else {
        return Err("the optimizer state is not a map of parameters".into());
    };
    let mut out = Vec::with_capacity(entries.len());
    for (key, value) in &entries {
        let id_text = key_name(key)?;
        let id: ParamId = id_text
            .parse()
            .map_err(|_| format!("'{id_text}' is not a parameter id"))?;
        let (rank, state) = versioned_state(value)
            .ok_or_else(|| format!("parameter {id_text}: not a `V1` / `Rank<D>` state"))?;
        let Value::Map(fields) = state else {
            return Err(format!("parameter {id_text}: the state is not a map"));
        };
        let mut values = Vec::new();
        for (name, field) in fields {
            let name = key_name(name)?;
            match field {
                Value::Nil => {}
                Value::Integer(i) => {
                    let v = i
                        .as_u64()
                        .ok_or_else(|| format!("parameter {id_text}: {name} is negative"))?;
                    values.push((name, LegacyValue::UInt(v)));
                }
                Value::Map(_) => {
                    let t = tensor(field, &format!("{id_text}.{name}"), Some(id))?;
                    values.push((name, LegacyValue::Tensor(t)));
                }
                _ => {
                    return Err(format!(
                        "parameter {id_text}: {name} is neither a tensor nor a count"
                    ))
                }
            }
        }
        out.push((id, rank, values));
    }
    Ok(out)
}

/// `{"V1": {"Rank<D>": state}}` → `(D, state)`.
fn versioned_state(value: &Value) -> Option<(usize, &Value)> {
    let (version, inner) = single_entry(value)?;
    if version != "V1" {
        return None;
    }
    let (rank, state) = single_entry(inner)?;
    let rank = rank.strip_prefix("Rank")?.parse().ok()?;
    Some((rank, state))
}

fn single_entry(value: &Value) -> Option<(&str, &Value)> {
    match value {
        Value::Map(entries) if entries.len() == 1 => Some((entries[0].0.as_str()?, &entries[0].1)),
        _ => None,
    }
}

/// The `item` of a record `{metadata, item, …}`.
fn item_of(bytes: &[u8]) -> Result<Value, String> {
    let mut reader = bytes;
    let value = rmpv::decode::read_value(&mut reader)
        .map_err(|e| format!("not a MessagePack record: {e}"))?;
    let Value::Map(entries) = value else {
        return Err("not a Burn record (no top-level map)".into());
    };
    entries
        .into_iter()
        .find(|(k, _)| k.as_str() == Some("item"))
        .map(|(_, v)| v)
        .ok_or_else(|| "not a Burn record (no `item`)".into())
}

fn key_name(key: &Value) -> Result<String, String> {
    key.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("a field name that is not a string: {key}"))
}

/// Every parameter under `value`, at `path`.
fn collect(value: &Value, path: &mut Vec<String>, out: &mut Vec<PackTensor>) -> Result<(), String> {
    match value {
        Value::Map(entries) => {
            if let Some((id, param)) = as_param(entries) {
                let name = path.join(".");
                let id: ParamId = id
                    .parse()
                    .map_err(|_| format!("{name}: '{id}' is not a parameter id"))?;
                out.push(tensor(param, &name, Some(id))?);
                return Ok(());
            }
            for (key, v) in entries {
                path.push(key_name(key)?);
                collect(v, path, out)?;
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                collect(v, path, out)?;
                path.pop();
            }
        }
        // Constants of a module (recorded as nothing) and absent optional modules.
        _ => {}
    }
    Ok(())
}

/// `{id, param}`: a parameter.
fn as_param(entries: &[(Value, Value)]) -> Option<(&str, &Value)> {
    if entries.len() != 2 {
        return None;
    }
    let field = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|e| &e.1)
    };
    Some((field("id")?.as_str()?, field("param")?))
}

/// A tensor `{bytes, shape, dtype}` named `name`.
fn tensor(value: &Value, name: &str, id: Option<ParamId>) -> Result<PackTensor, String> {
    let Value::Map(entries) = value else {
        return Err(format!("{name}: not a tensor"));
    };
    let field = |f: &str| {
        entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(f))
            .map(|e| &e.1)
    };
    let bytes = field("bytes")
        .and_then(Value::as_slice)
        .ok_or_else(|| format!("{name}: a tensor without its bytes"))?;
    let shape = field("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{name}: a tensor without its shape"))?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| format!("{name}: a shape that is not a list of sizes"))?;
    let dtype = match field("dtype").and_then(Value::as_str) {
        Some("F32") => DType::F32,
        Some("F64") => DType::F64,
        Some("I64") => DType::I64,
        Some("I32") => DType::I32,
        other => return Err(format!("{name}: element type {other:?} is not read")),
    };
    let expected = shape.iter().product::<usize>() * dtype.size();
    if bytes.len() != expected {
        return Err(format!(
            "{name}: {} bytes for shape {shape:?} of {dtype:?} ({expected} expected)",
            bytes.len()
        ));
    }
    Ok(PackTensor::new(
        name.to_string(),
        dtype,
        shape,
        id.map(|id| id.val()),
        Bytes::from_bytes_vec(bytes.to_vec()),
    ))
}
