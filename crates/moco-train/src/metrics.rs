//! What the training loop reports, and where it goes: every step, kNN evaluation, dip, spike,
//! skipped step and speed window is an [`Event`] handed to each [`MetricSink`] of the loop.
//! [`JsonlSink`] writes them as `metrics.jsonl` (one JSON object per line, with a `type`
//! field), which the plots and `moco study` read; a library user adds their own sink.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// One optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps taken, this one included.
    pub step: u64,
    /// Fractional epoch where the step started.
    pub epoch: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Momentum of the target network.
    pub momentum: f64,
    /// Loss (mean over micro-batches and replicas).
    pub loss: f64,
    /// Global gradient norm (before clipping).
    pub grad_norm: f64,
    /// Gradient norm per layer group, first layer first.
    pub grad_norms: serde_json::Map<String, serde_json::Value>,
}

/// A report of the training loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// An optimizer step.
    Step(StepRecord),
    /// A kNN evaluation of the backbone.
    Knn {
        /// Steps taken.
        step: u64,
        /// Top-1 accuracy, %.
        top1: f64,
        /// Top-5 accuracy, %.
        top5: f64,
        /// Time it took.
        seconds: f64,
    },
    /// A kNN top-1 drop larger than the dip threshold.
    Dip {
        /// Step of the lower accuracy.
        step: u64,
        /// Top-1 before.
        before: f64,
        /// Top-1 after.
        after: f64,
    },
    /// A gradient norm far above its running median.
    Spike {
        /// Step.
        step: u64,
        /// Layer group.
        layer: String,
        /// The norm.
        norm: f64,
        /// The running median.
        median: f64,
    },
    /// A step with a non-finite loss or gradient.
    #[serde(rename = "nonfinite")]
    NonFinite {
        /// Step.
        step: u64,
        /// The loss, as text (`NaN`, `inf`).
        loss: String,
        /// First layer group with a non-finite gradient.
        layer: Option<String>,
    },
    /// The machine that runs the steps from here on (written when a run starts or resumes).
    Machine {
        /// Steps taken before.
        step: u64,
        /// CPU, threads, GPU, build and date.
        #[serde(flatten)]
        machine: crate::Machine,
    },
    /// Throughput since the previous speed report.
    Speed {
        /// Step.
        step: u64,
        /// Images per second.
        images_per_sec: f64,
        /// Seconds spent waiting for data.
        data_wait_s: f64,
        /// The process's resident memory, MiB (where the system reports it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resident_mib: Option<f64>,
    },
}

impl Event {
    /// The step the event belongs to.
    pub fn step(&self) -> u64 {
        match self {
            Event::Step(r) => r.step,
            Event::Knn { step, .. }
            | Event::Dip { step, .. }
            | Event::Spike { step, .. }
            | Event::NonFinite { step, .. }
            | Event::Machine { step, .. }
            | Event::Speed { step, .. } => *step,
        }
    }
}

/// Receives the events of a run.
pub trait MetricSink {
    /// One event, in the order the loop produces them.
    fn record(&mut self, event: &Event);

    /// A write of this sink that failed since the last call: the run stops with it.
    fn failure(&mut self) -> Option<TrainError> {
        None
    }
}

/// Keeps every event in memory (for tests and notebooks).
#[derive(Clone, Debug, Default)]
pub struct MemorySink {
    /// The events so far.
    pub events: Vec<Event>,
}

impl MetricSink for MemorySink {
    fn record(&mut self, event: &Event) {
        self.events.push(event.clone());
    }
}

/// A closure as a sink.
impl<F: FnMut(&Event)> MetricSink for F {
    fn record(&mut self, event: &Event) {
        self(event)
    }
}

/// Appends events to a JSON-lines file (`metrics.jsonl` of a run directory).
pub struct JsonlSink {
    file: std::fs::File,
    path: PathBuf,
    failure: Option<TrainError>,
}

impl JsonlSink {
    /// Opens `path`. With `resume_step`, the lines of steps after it are dropped (those steps
    /// run again); without, the file starts empty.
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<Self, TrainError> {
        let kept = match resume_step {
            Some(step) => std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            None => String::new(),
        };
        let err = |e: std::io::Error| TrainError::Io(format!("{}: {e}", path.display()));
        std::fs::write(path, kept).map_err(err)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(err)?;
        Ok(JsonlSink {
            file,
            path: path.to_path_buf(),
            failure: None,
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl MetricSink for JsonlSink {
    fn record(&mut self, event: &Event) {
        let Ok(line) = serde_json::to_string(event) else {
            return;
        };
        if let Err(e) = writeln!(self.file, "{line}") {
            self.failure.get_or_insert_with(|| {
                TrainError::Io(format!("{}: cannot write: {e}", self.path.display()))
            });
        }
    }

    fn failure(&mut self) -> Option<TrainError> {
        self.failure.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_failed_write_is_reported_with_the_file() {
        // Every write to /dev/full fails with "no space left on device".
        let mut sink = JsonlSink::open(Path::new("/dev/full"), None).unwrap();
        assert!(sink.failure().is_none());
        sink.record(&Event::Speed {
            step: 1,
            images_per_sec: 1.0,
            data_wait_s: 0.0,
            resident_mib: None,
        });
        let e = sink.failure().expect("the failure is reported").to_string();
        assert!(e.contains("/dev/full: cannot write"), "{e}");
        assert!(sink.failure().is_none(), "reported once");
    }

    #[test]
    fn events_keep_the_metrics_file_format() {
        let e = Event::Knn {
            step: 3,
            top1: 50.0,
            top5: 90.0,
            seconds: 1.5,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(
            line,
            r#"{"type":"knn","step":3,"top1":50.0,"top5":90.0,"seconds":1.5}"#
        );
        let n = Event::NonFinite {
            step: 4,
            loss: "NaN".into(),
            layer: None,
        };
        assert!(serde_json::to_string(&n)
            .unwrap()
            .starts_with(r#"{"type":"nonfinite""#));
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
    }
}
