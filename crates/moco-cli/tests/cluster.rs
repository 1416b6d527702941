//! Runs on a cluster, end to end through the binary: what SIGTERM, SIGUSR1 and a second
//! SIGTERM do, `--resume auto` as the one command line of a requeued job, one writer per run
//! directory, and a checkpoint write that fails under a file-size limit.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A ViT small enough for tens of steps a second on a debug build; checkpoints only when
/// asked, so that any checkpoint seen comes from a signal or the end of the run.
const TINY: &[&str] = &[
    "pretrain",
    "--device",
    "cpu",
    "--data",
    "bundled",
    "--embed-dim",
    "32",
    "--depth",
    "1",
    "--num-heads",
    "2",
    "--mlp-dim",
    "64",
    "--out-dim",
    "32",
    "--batch-size",
    "16",
    "--knn-every",
    "0",
    "--knn-memory",
    "256",
    "--knn-eval",
    "128",
    "--workers",
    "1",
    "--log-every",
    "1",
    "--checkpoint-every",
    "100000",
    "--quiet",
];

struct Tmp(PathBuf);
impl Tmp {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("moco-cluster-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn command(out: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moco"));
    c.args(TINY)
        .args(["--max-steps", &steps.to_string(), "--out"])
        .arg(out)
        .args(extra);
    c
}

fn run(out: &Path, steps: u64, extra: &[&str]) -> Output {
    command(out, steps, extra).output().expect("moco runs")
}

fn start(out: &Path, steps: u64, extra: &[&str]) -> Child {
    command(out, steps, extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("moco starts")
}

fn losses(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "step")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// Waits until the run has logged `steps` steps.
fn wait_for_steps(run_dir: &Path, steps: usize, child: &mut Child) {
    let start = Instant::now();
    while losses(run_dir).len() < steps {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before step {steps}"
        );
        assert!(start.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn checkpoints(run_dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(run_dir.join("checkpoints"))
        .map(|d| {
            d.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default();
    steps.sort();
    steps
}

fn stderr_of(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sigterm_checkpoints_the_step_in_flight_and_the_same_command_resumes_exactly() {
    let tmp = Tmp::new("sigterm");
    let whole = tmp.0.join("whole");
    let out = run(&whole, 40, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = losses(&whole);
    assert_eq!(reference.len(), 40);

    let run_dir = tmp.0.join("stopped");
    let mut child = start(&run_dir, 40, &["--resume", "auto"]);
    wait_for_steps(&run_dir, 5, &mut child);
    signal(&child, "TERM");
    let (code, stderr) = stderr_of(child);
    assert_eq!(code, Some(75), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    let done = losses(&run_dir).len() as u64;
    assert!((5..40).contains(&done), "stopped after {done} steps");
    assert_eq!(
        checkpoints(&run_dir),
        vec![done],
        "a checkpoint of the step it stopped at"
    );

    // The requeued job runs the same command line and ends where the whole run ended.
    let out = run(&run_dir, 40, &["--resume", "auto"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed = losses(&run_dir);
    assert_eq!(resumed.len(), 40);
    for (step, (a, b)) in resumed.iter().zip(&reference).enumerate() {
        assert!((a - b).abs() < 1e-5, "step {}: {a} vs {b}", step + 1);
    }
}

#[test]
fn sigusr1_writes_a_checkpoint_and_the_run_goes_on() {
    let tmp = Tmp::new("sigusr1");
    let run_dir = tmp.0.join("run");
    let mut child = start(&run_dir, 60, &[]);
    wait_for_steps(&run_dir, 5, &mut child);
    signal(&child, "USR1");
    let (code, stderr) = stderr_of(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("SIGUSR1"), "{stderr}");
    let written = checkpoints(&run_dir);
    assert_eq!(written.len(), 2, "{written:?}");
    assert!(
        written[0] >= 5 && written[0] < 60 && written[1] == 60,
        "{written:?}"
    );
    assert_eq!(losses(&run_dir).len(), 60);
}

#[test]
fn a_second_writer_is_refused_with_the_holder_named_and_a_killed_holder_blocks_nothing() {
    let tmp = Tmp::new("lock");
    let run_dir = tmp.0.join("run");
    let mut first = start(&run_dir, 100_000, &[]);
    wait_for_steps(&run_dir, 1, &mut first);
    let second = run(&run_dir, 10, &["--resume", "auto"]);
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        said.contains("being written by another run")
            && said.contains(&format!("process {}", first.id())),
        "{said}"
    );
    // Readers are not blocked while the run goes on.
    assert!(first.try_wait().unwrap().is_none());
    first.kill().unwrap();
    first.wait().unwrap();
    // Killed: the kernel released the lock, and the directory can be written again.
    let again = run(&run_dir, 3, &["--resume", "auto"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn a_checkpoint_that_cannot_be_written_keeps_the_previous_one_and_says_why() {
    let tmp = Tmp::new("fsize");
    let run_dir = tmp.0.join("run");
    let out = run(&run_dir, 4, &["--stop-after", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(checkpoints(&run_dir), vec![2]);
    // Files of at most 16 KiB from here on: the model record (about 100 KiB) cannot be
    // written. The shell ignores SIGXFSZ, so the write fails with EFBIG instead of killing.
    let line = format!(
        "ulimit -f 16; trap '' XFSZ; exec \"$0\" \"$@\" --max-steps 4 --out '{}' --resume auto",
        run_dir.display()
    );
    let out = Command::new("sh")
        .args(["-c", &line, env!("CARGO_BIN_EXE_moco")])
        .args(TINY)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("model.bpk") && said.contains("step-00000002 is kept"),
        "{said}"
    );
    assert_eq!(checkpoints(&run_dir), vec![2], "no partial checkpoint left");
    // Without the limit the run continues from the kept checkpoint.
    let out = run(&run_dir, 4, &["--resume", "auto"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(checkpoints(&run_dir), vec![2, 4]);
    assert_eq!(losses(&run_dir).len(), 4);
}

#[test]
fn a_metrics_file_that_cannot_grow_stops_the_run_and_names_the_file() {
    let tmp = Tmp::new("metrics-fsize");
    let run_dir = tmp.0.join("run");
    // 16 blocks: a few tens of step records fit in metrics.jsonl, not 400.
    let line = format!(
        "ulimit -f 16; trap '' XFSZ; exec \"$0\" \"$@\" --max-steps 400 --out '{}'",
        run_dir.display()
    );
    let out = Command::new("sh")
        .args(["-c", &line, env!("CARGO_BIN_EXE_moco")])
        .args(TINY)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("metrics.jsonl: cannot write"), "{said}");
    let logged = losses(&run_dir).len();
    assert!((1..400).contains(&logged), "{logged} steps logged");
}
