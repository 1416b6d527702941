//! The machine a run or a benchmark ran on, recorded beside its results: a speed or a wall time
//! means little without the CPU, the cores, the GPU and the build that produced it.

use serde::{Deserialize, Serialize};

/// Where and when results were produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The CPU model as the system names it (`/proc/cpuinfo` on Linux).
    pub cpu: String,
    /// The widest vector instructions the CPU has that the matrix kernels use: `avx512`,
    /// `avx2` (with FMA), `sse2`, `neon`; CPUs of one model name differ in it (a virtual
    /// machine's `AMD EPYC` may be either), and speeds with it.
    #[serde(default)]
    pub simd: String,
    /// Hardware threads this process may use.
    pub cores: usize,
    /// The GPU that ran the work, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// Cargo features of the build that matter to speed (backends, kernels); empty where the
    /// caller did not say.
    #[serde(default)]
    pub features: Vec<String>,
    /// Version of this library.
    pub version: String,
    /// When, in UTC (`2026-12-06T03:50:00Z`).
    pub date: String,
}

impl Machine {
    /// This machine, now: CPU model, threads, version and date (no GPU, no features).
    pub fn here() -> Self {
        Machine {
            cpu: cpu_model(),
            simd: simd(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            gpu: None,
            features: Vec::new(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            date: utc_now(),
        }
    }

    /// With the GPU that ran the work.
    pub fn with_gpu(mut self, gpu: Option<String>) -> Self {
        self.gpu = gpu;
        self
    }

    /// With the build's features.
    pub fn with_features(mut self, features: &[&str]) -> Self {
        self.features = features.iter().map(|f| f.to_string()).collect();
        self
    }

    /// One line for tables and logs: `AMD EPYC, avx512, 2 threads`, the GPU first when there
    /// is one.
    pub fn describe(&self) -> String {
        let cpu = format!("{}, {}, {} threads", self.cpu, self.simd, self.cores);
        match &self.gpu {
            Some(gpu) => format!("{gpu}; {cpu}"),
            None => cpu,
        }
    }
}

/// The CPU model: `model name` (x86) or `Hardware`/`Model` (ARM) in `/proc/cpuinfo`, else the
/// architecture. A name without a model number (virtual machines report `AMD EPYC` for several
/// generations) gets the CPU family and model: `AMD EPYC (family 26, model 2)`.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key && !v.trim().is_empty()).then(|| v.trim().to_string())
        })
    };
    let name = ["model name", "Hardware", "Model"]
        .iter()
        .find_map(|key| field(key))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    match (field("cpu family"), field("model")) {
        (Some(family), Some(model)) if !name.chars().any(|c| c.is_ascii_digit()) => {
            format!("{name} (family {family}, model {model})")
        }
        _ => name,
    }
}

/// The widest vector instruction set of this CPU that matrix kernels use.
pub fn simd() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512".into();
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2".into();
        }
        return "sse2".into();
    }
    #[cfg(target_arch = "aarch64")]
    {
        return "neon".into();
    }
    #[allow(unreachable_code)]
    std::env::consts::ARCH.to_string()
}

/// The current time in UTC, ISO 8601 to the second.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_from_unix(secs)
}

/// `secs` after 1970-01-01 as `YYYY-MM-DDTHH:MM:SSZ` (the proleptic Gregorian calendar).
fn utc_from_unix(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 0000-03-01, in 400-year eras of 146,097 days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_iso() {
        assert_eq!(utc_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_from_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_from_unix(1_796_528_999), "2026-12-06T03:49:59Z");
        assert_eq!(utc_from_unix(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn this_machine_is_named() {
        let m = Machine::here().with_features(&["flex"]);
        assert!(!m.cpu.is_empty() && m.cores >= 1);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Machine>(&json).unwrap(), m);
        assert!(m.describe().contains("threads"));
    }
}
