//! How a recorded training step is held to a reference: per-tensor tolerances, the rules that
//! pick one for each named tensor, and the report.

use std::collections::BTreeMap;
use std::fmt;

use burn::tensor::TensorData;

/// Forward-output tolerance: `|a − b| ≤ FORWARD_TOL · (1 + |b|)`.
pub const FORWARD_TOL: f32 = 1e-4;

/// Named tensors of one recorded step (`eval.*`, `train.*`, `grad.NAME`, `after.NAME`, in
/// PyTorch's names and layouts), as the golden files hold them.
pub type Record = BTreeMap<String, TensorData>;

/// How a tensor is held to the reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Tolerance {
    /// Every element: `|a − b| ≤ 1e-4 · (1 + |b|)`. Forward outputs, losses, EMA and BN state.
    Elementwise,
    /// The whole tensor: `max|a − b| ≤ 1e-4 · (1 + max|b|)`. Gradients are sums over the batch
    /// and the tokens whose rounding error scales with the largest term, not with each
    /// element; the CLS token's gradient passes a LayerNorm of a near-zero input (std 1e-6,
    /// eps 1e-6), which multiplies that error by about 1/√eps = 1000 in both implementations.
    TensorScaled,
    /// Elementwise, plus `2·lr` for elements whose reference gradient is zero within the
    /// gradient tolerance: AdamW's first step moves such an element by `lr·g/(|g| + eps)`, a
    /// value in `[−lr, lr]` whose sign and size are rounding noise (the key bias and the biases
    /// feeding a BN have an exactly zero true gradient).
    AdamNoise {
        /// The step's learning rate.
        lr: f32,
        /// Which elements have a rounding-level reference gradient.
        noisy: Vec<bool>,
    },
}

impl Tolerance {
    fn describe(&self) -> &'static str {
        match self {
            Tolerance::Elementwise => "1e-4(1+|b|)",
            Tolerance::TensorScaled => "1e-4(1+max|b|)",
            Tolerance::AdamNoise { .. } => "1e-4(1+|b|)+2lr@g~0",
        }
    }
}

/// One compared tensor.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was compared.
    pub name: String,
    /// Largest `|a − b|`.
    pub max_abs: f32,
    /// Largest `|a − b| / |b|` over elements with `b ≠ 0`.
    pub max_rel: f32,
    /// Largest ratio of the error to what the tolerance allows; the check passes at ≤ 1.
    pub worst: f32,
    /// The tolerance rule applied.
    pub rule: &'static str,
    /// Absolute allowance added to the rule: the noise floor of an ill-conditioned tensor
    /// (see [`compare_records`]); 0 against PyTorch.
    pub floor: f32,
    /// Failure other than a numeric one (shape mismatch, missing tensor).
    pub error: Option<String>,
}

fn floats(data: &TensorData) -> Vec<f32> {
    data.clone()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

impl Check {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.worst <= 1.0
    }

    /// A failed check with a message.
    pub fn failed(name: impl Into<String>, error: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            max_abs: f32::NAN,
            max_rel: f32::NAN,
            worst: f32::NAN,
            rule: "",
            floor: 0.0,
            error: Some(error.into()),
        }
    }

    /// Compares `actual` with `expected` under `tolerance`.
    pub fn compare(
        name: impl Into<String>,
        actual: &TensorData,
        expected: &TensorData,
        tolerance: Tolerance,
    ) -> Self {
        Self::compare_above(name, actual, expected, tolerance, 0.0)
    }

    /// [`Check::compare`] with `floor` added to what every element may differ by.
    pub fn compare_above(
        name: impl Into<String>,
        actual: &TensorData,
        expected: &TensorData,
        tolerance: Tolerance,
        floor: f32,
    ) -> Self {
        let name = name.into();
        if actual.shape() != expected.shape() {
            return Self::failed(
                name,
                format!(
                    "shape {:?}, expected {:?}",
                    actual.shape(),
                    expected.shape()
                ),
            );
        }
        let (a, b) = (floats(actual), floats(expected));
        let max_b = b.iter().fold(0f32, |m, y| m.max(y.abs()));
        let (mut max_abs, mut max_rel, mut worst) = (0f32, 0f32, 0f32);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let d = (x - y).abs();
            // NaN anywhere fails the check.
            let d = if d.is_nan() { f32::INFINITY } else { d };
            max_abs = max_abs.max(d);
            if *y != 0.0 {
                max_rel = max_rel.max(d / y.abs());
            }
            let allowed = match &tolerance {
                Tolerance::Elementwise => FORWARD_TOL * (1.0 + y.abs()),
                Tolerance::TensorScaled => FORWARD_TOL * (1.0 + max_b),
                Tolerance::AdamNoise { lr, noisy } => {
                    FORWARD_TOL * (1.0 + y.abs())
                        + if noisy.get(i).copied().unwrap_or(false) {
                            2.0 * lr
                        } else {
                            0.0
                        }
                }
            };
            worst = worst.max(d / (allowed + floor));
        }
        Check {
            name,
            max_abs,
            max_rel,
            worst,
            rule: tolerance.describe(),
            floor,
            error: None,
        }
    }
}

/// What the optimizer of the compared step was, for the after-step rule.
#[derive(Clone, Copy, Debug)]
pub struct StepKind {
    /// AdamW (whose first step turns rounding-level gradients into moves of ±lr).
    pub adamw: bool,
    /// The learning rate.
    pub lr: f64,
}

/// How much larger than the spread of two exact CPU formulations a difference may be.
pub const NOISE_FACTOR: f32 = 4.0;

/// Compares every tensor of `actual` with `expected`: forward outputs elementwise, gradients
/// tensor-scaled, the after-step state elementwise (with AdamW's noise allowance). A tensor on
/// one side only fails: a gradient we compute for a parameter the reference keeps frozen, one
/// the reference has and we lack, a state tensor missing on either side. `input.*` and BN
/// batch counters are not compared.
///
/// With `spread`, a second record of the same step computed another exact way, each tensor
/// may also differ by [`NOISE_FACTOR`] times the largest difference between `expected` and
/// `spread`: where the step is ill-conditioned (a max-pool tie, a BN channel of near-constant
/// input), rounding alone moves results past the fixed tolerances, and two correct f32
/// implementations disagree as much.
pub fn compare_records(
    actual: &Record,
    expected: &Record,
    step: StepKind,
    spread: Option<&Record>,
) -> Vec<Check> {
    let skipped = |k: &str| k.starts_with("input.") || k.ends_with("num_batches_tracked");
    let mut checks = Vec::new();
    for (name, data) in actual.iter().filter(|(k, _)| !skipped(k)) {
        let Some(want) = expected.get(name) else {
            checks.push(Check::failed(
                name,
                match name.starts_with("grad.") {
                    true => "frozen in the reference, but we computed a gradient",
                    false => "not in the reference",
                },
            ));
            continue;
        };
        let floor = spread
            .and_then(|s| s.get(name))
            .map_or(0.0, |other| NOISE_FACTOR * max_abs_difference(want, other));
        checks.push(Check::compare_above(
            name,
            data,
            want,
            tolerance(name, expected, step),
            floor,
        ));
    }
    for name in expected.keys().filter(|k| !skipped(k)) {
        if !actual.contains_key(name) {
            checks.push(Check::failed(
                name,
                match name.starts_with("grad.") {
                    true => "the reference has a gradient, we have none",
                    false => "missing from our results",
                },
            ));
        }
    }
    checks
}

/// `max |a − b|` (infinite when the shapes differ).
fn max_abs_difference(a: &TensorData, b: &TensorData) -> f32 {
    if a.shape() != b.shape() {
        return f32::INFINITY;
    }
    floats(a)
        .iter()
        .zip(floats(b))
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// The tolerance of tensor `name` (see [`compare_records`]).
fn tolerance(name: &str, expected: &Record, step: StepKind) -> Tolerance {
    if name.starts_with("grad.") {
        return Tolerance::TensorScaled;
    }
    let grad = name
        .strip_prefix("after.")
        .and_then(|p| expected.get(&format!("grad.{p}")));
    match grad {
        Some(g) if step.adamw => {
            let g = floats(g);
            let g_tol = FORWARD_TOL * (1.0 + g.iter().fold(0f32, |m, x| m.max(x.abs())));
            Tolerance::AdamNoise {
                lr: step.lr as f32,
                noisy: g.iter().map(|x| x.abs() <= g_tol).collect(),
            }
        }
        _ => Tolerance::Elementwise,
    }
}

/// The checks of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// Case name.
    pub tag: String,
    /// Every check, in order.
    pub checks: Vec<Check>,
}

impl CaseReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(Check::passed)
    }

    /// The check with the largest error relative to its tolerance.
    pub fn worst(&self) -> Option<&Check> {
        self.checks
            .iter()
            .max_by(|a, b| match (a.error.is_some(), b.error.is_some()) {
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => a.worst.total_cmp(&b.worst),
            })
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "case {}", self.tag)?;
        writeln!(
            f,
            "  {:<52} {:>10} {:>10} {:>11}  {:<30} result",
            "tensor", "max|a-b|", "max rel", "err/allowed", "tolerance"
        )?;
        for c in &self.checks {
            match &c.error {
                Some(e) => writeln!(f, "  {:<52} FAIL: {e}", c.name)?,
                None => writeln!(
                    f,
                    "  {:<52} {:>10.3e} {:>10.3e} {:>11.3e}  {:<30} {}",
                    c.name,
                    c.max_abs,
                    c.max_rel,
                    c.worst,
                    match c.floor > 0.0 {
                        true => format!("{} + {:.1e}", c.rule, c.floor),
                        false => c.rule.to_string(),
                    },
                    if c.passed() { "pass" } else { "FAIL" }
                )?,
            }
        }
        Ok(())
    }
}
