//! TensorBoard event files: a [`MetricSink`] that writes the loop's scalars (loss, learning
//! rate, momentum, global and per-layer-group gradient norms, kNN top-1/top-5, images per
//! second) as `events.out.tfevents.*`, the format `tensorboard --logdir RUN_DIR` reads, and a
//! reader of those scalars.
//!
//! The format: a sequence of records `[length: u64][masked CRC-32C of length: u32][data]
//! [masked CRC-32C of data: u32]`, little-endian, each `data` a protocol-buffer `Event`
//! (`wall_time` = 1, `step` = 2, `file_version` = 3, `summary` = 5), a `Summary` holding
//! `Value`s (`tag` = 1, `simple_value` = 2).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::metrics::{Event, MetricSink};
use crate::TrainError;

/// Writes the events of a run to a new event file in a folder (created on the first event).
pub struct TensorBoardSink {
    dir: PathBuf,
    file: Option<std::fs::File>,
    failed: bool,
}

impl TensorBoardSink {
    /// Event files go to `dir` (`RUN_DIR/tensorboard`): one new file per invocation, so a
    /// resumed run adds a file and TensorBoard drops the steps that ran again.
    pub fn new(dir: &Path) -> Self {
        TensorBoardSink {
            dir: dir.to_path_buf(),
            file: None,
            failed: false,
        }
    }

    fn open(&mut self) -> Result<&mut std::fs::File, TrainError> {
        if self.file.is_none() {
            let err = |e: std::io::Error| TrainError::Io(format!("{}: {e}", self.dir.display()));
            std::fs::create_dir_all(&self.dir).map_err(err)?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let name = format!(
                "events.out.tfevents.{}.moco.{}.{}",
                now.as_secs(),
                std::process::id(),
                now.subsec_nanos()
            );
            let mut file = std::fs::File::create(self.dir.join(name)).map_err(err)?;
            let header = encode_event(wall_time(), 0, Body::FileVersion("brain.Event:2"));
            file.write_all(&record(&header)).map_err(err)?;
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    fn write(&mut self, step: u64, scalars: &[(String, f64)]) {
        if self.failed || scalars.is_empty() {
            return;
        }
        let event = encode_event(wall_time(), step, Body::Scalars(scalars));
        let written = self.open().and_then(|f| {
            f.write_all(&record(&event))
                .map_err(|e| TrainError::Io(e.to_string()))
        });
        if let Err(e) = written {
            // A metrics side channel: say it once, keep training.
            eprintln!("warning: TensorBoard events not written: {e}");
            self.failed = true;
        }
    }
}

/// The scalars of an event, by TensorBoard tag.
pub fn scalars_of(event: &Event) -> Vec<(String, f64)> {
    match event {
        Event::Step(r) => {
            let mut out = vec![
                ("train/loss".to_string(), r.loss),
                ("train/lr".to_string(), r.lr),
                ("train/momentum".to_string(), r.momentum),
                ("grad_norm/global".to_string(), r.grad_norm),
            ];
            for (group, norm) in &r.grad_norms {
                if let Some(n) = norm.as_f64() {
                    out.push((format!("grad_norm/{group}"), n));
                }
            }
            out
        }
        Event::Knn { top1, top5, .. } => vec![
            ("knn/top1".to_string(), *top1),
            ("knn/top5".to_string(), *top5),
        ],
        Event::Speed {
            images_per_sec,
            resident_mib,
            ..
        } => {
            let mut out = vec![("speed/images_per_sec".to_string(), *images_per_sec)];
            out.extend(resident_mib.map(|m| ("memory/resident_mib".to_string(), m)));
            out
        }
        Event::Dip { after, .. } => vec![("events/dip_top1".to_string(), *after)],
        Event::Spike { norm, .. } => vec![("events/spike_norm".to_string(), *norm)],
        Event::NonFinite { .. } => vec![("events/nonfinite".to_string(), 1.0)],
        Event::Machine { .. } => Vec::new(),
    }
}

impl MetricSink for TensorBoardSink {
    fn record(&mut self, event: &Event) {
        self.write(event.step(), &scalars_of(event));
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

enum Body<'a> {
    FileVersion(&'a str),
    Scalars(&'a [(String, f64)]),
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field: its key, its length, its bytes.
fn bytes_field(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint((field << 3) | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// The protocol-buffer encoding of an `Event`.
fn encode_event(wall_time: f64, step: u64, body: Body) -> Vec<u8> {
    let mut out = vec![0x09];
    out.extend_from_slice(&wall_time.to_le_bytes());
    out.push(0x10);
    varint(step, &mut out);
    match body {
        Body::FileVersion(v) => bytes_field(3, v.as_bytes(), &mut out),
        Body::Scalars(scalars) => {
            let mut summary = Vec::new();
            for (tag, value) in scalars {
                let mut v = Vec::new();
                bytes_field(1, tag.as_bytes(), &mut v);
                v.push(0x15);
                v.extend_from_slice(&(*value as f32).to_le_bytes());
                bytes_field(1, &v, &mut summary);
            }
            bytes_field(5, &summary, &mut out);
        }
    }
    out
}

/// CRC-32C (Castagnoli), bit-reflected.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// TensorFlow's masked CRC: rotated right by 15 bits plus a constant.
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// One scalar read back from an event file.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    /// The tag (`train/loss`, …).
    pub tag: String,
    /// The step.
    pub step: u64,
    /// The value (stored as f32).
    pub value: f32,
}

/// Every scalar of the event file `path`, checking each record's checksums.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>, TrainError> {
    let bytes =
        std::fs::read(path).map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
    let bad = |what: &str| TrainError::Io(format!("{}: {what}", path.display()));
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let head = bytes
            .get(at..at + 12)
            .ok_or_else(|| bad("truncated record"))?;
        let len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) as usize;
        if u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) != masked_crc(&head[..8]) {
            return Err(bad("length checksum"));
        }
        let data = bytes
            .get(at + 12..at + 12 + len)
            .ok_or_else(|| bad("truncated record"))?;
        let crc = bytes
            .get(at + 12 + len..at + 16 + len)
            .ok_or_else(|| bad("truncated record"))?;
        if u32::from_le_bytes(crc.try_into().expect("4 bytes")) != masked_crc(data) {
            return Err(bad("data checksum"));
        }
        decode_event(data, &mut out).ok_or_else(|| bad("not an Event"))?;
        at += 16 + len;
    }
    Ok(out)
}

/// The fields of a protocol-buffer message: (field number, wire type, payload).
fn fields(mut data: &[u8]) -> Option<Vec<(u64, u8, &[u8])>> {
    fn read_varint(data: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = data.split_first()?;
            *data = rest;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let key = read_varint(&mut data)?;
        let (field, wire) = (key >> 3, (key & 7) as u8);
        let n = match wire {
            0 => {
                let start = data;
                read_varint(&mut data)?;
                out.push((field, wire, &start[..start.len() - data.len()]));
                continue;
            }
            1 => 8,
            5 => 4,
            2 => read_varint(&mut data)? as usize,
            _ => return None,
        };
        let (payload, rest) = (data.get(..n)?, data.get(n..)?);
        out.push((field, wire, payload));
        data = rest;
    }
    Some(out)
}

fn decode_event(data: &[u8], out: &mut Vec<Scalar>) -> Option<()> {
    let mut step = 0;
    let mut summary = None;
    for (field, _, payload) in fields(data)? {
        match field {
            2 => {
                step = payload
                    .iter()
                    .enumerate()
                    .fold(0u64, |v, (i, b)| v | (((b & 0x7f) as u64) << (7 * i)))
            }
            5 => summary = Some(payload),
            _ => {}
        }
    }
    for (field, _, value) in fields(summary.unwrap_or_default())? {
        if field != 1 {
            continue;
        }
        let (mut tag, mut simple) = (None, None);
        for (f, _, payload) in fields(value)? {
            match f {
                1 => tag = Some(String::from_utf8_lossy(payload).into_owned()),
                2 => simple = Some(f32::from_le_bytes(payload.try_into().ok()?)),
                _ => {}
            }
        }
        if let (Some(tag), Some(value)) = (tag, simple) {
            out.push(Scalar { tag, step, value });
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn events_are_read_back() {
        let dir = std::env::temp_dir().join(format!("moco-tb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sink = TensorBoardSink::new(&dir);
        let step = crate::metrics::StepRecord {
            step: 3,
            epoch: 0.1,
            lr: 1e-3,
            momentum: 0.99,
            loss: 2.5,
            grad_norm: 0.75,
            grad_norms: [("patch_embed".to_string(), serde_json::json!(0.5))]
                .into_iter()
                .collect(),
        };
        sink.record(&Event::Step(step));
        sink.record(&Event::Knn {
            step: 300,
            top1: 71.25,
            top5: 95.5,
            seconds: 1.0,
        });
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        assert!(files[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("events.out.tfevents."));
        let scalars = read_scalars(&files[0]).unwrap();
        let get = |tag: &str| scalars.iter().find(|s| s.tag == tag).cloned().unwrap();
        assert_eq!((get("train/loss").step, get("train/loss").value), (3, 2.5));
        assert_eq!(get("grad_norm/patch_embed").value, 0.5);
        assert_eq!((get("knn/top1").step, get("knn/top1").value), (300, 71.25));
        assert_eq!(scalars.len(), 7);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
