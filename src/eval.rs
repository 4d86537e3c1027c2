//! Output quality of a compressed model against its reference: both run on
//! the same calibration samples through the [interpreter](crate::interp),
//! compared per output, per sample and over all samples.
//!
//! # Metrics
//!
//! For a reference output `r` and the compressed model's output `c` (n
//! elements):
//!
//! - **PSNR** (dB) = `20·log10(max|c| / RMSE)`, `RMSE = √(Σ(c − r)²/n)`.
//!   This is apple/ml-stable-diffusion's `compute_psnr(a, b)` as its
//!   palettization tools call it (`a` the reference, `b` the test output,
//!   peak taken from `b`), without its two epsilons (`+1e-5` on the peak,
//!   `+1e-10` on the RMSE), so identical outputs give +∞ instead of ~200 dB.
//!   Their tools average per-sample PSNRs and treat < 35 dB as failing.
//! - **relative L2** = `‖c − r‖ / ‖r‖`.
//! - **max abs error** = `max |c − r|`.
//!
//! Aggregates per output: `mean` (arithmetic mean of the per-sample values,
//! as Apple averages PSNR; +∞ if a sample is exact), `worst` (lowest PSNR,
//! highest relative L2 and max error) and `all` (every sample pooled into
//! one array). In JSON an infinite value is the string `"Infinity"` (or
//! `"-Infinity"`, when the compressed output is all zeros and the reference
//! is not), and `"exact": true` says every element is identical.

use crate::interp::calib::CalibSet;
use crate::interp::{InterpError, Interpreter};
use serde::Serialize;

/// Errors between one reference array and one test array.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// PSNR in dB (may be ±∞).
    pub psnr_db: f64,
    /// Relative L2 error (∞ when the reference is zero and the error not).
    pub rel_l2: f64,
    /// Largest absolute difference.
    pub max_abs_err: f64,
}

/// Sums that [`Metrics`] are made of, so samples can be pooled exactly.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    n: usize,
    err2: f64,
    ref2: f64,
    peak: f64,
    max_abs: f64,
}

impl Sums {
    fn of(reference: &[f32], test: &[f32]) -> Self {
        let mut s = Sums {
            n: reference.len(),
            ..Default::default()
        };
        for (&r, &c) in reference.iter().zip(test) {
            let (r, c) = (f64::from(r), f64::from(c));
            let d = c - r;
            s.err2 += d * d;
            s.ref2 += r * r;
            s.peak = s.peak.max(c.abs());
            s.max_abs = s.max_abs.max(d.abs());
        }
        s
    }

    fn add(&mut self, o: &Sums) {
        self.n += o.n;
        self.err2 += o.err2;
        self.ref2 += o.ref2;
        self.peak = self.peak.max(o.peak);
        self.max_abs = self.max_abs.max(o.max_abs);
    }

    fn metrics(&self) -> Metrics {
        let psnr_db = if self.err2 == 0.0 {
            f64::INFINITY
        } else {
            let rmse = (self.err2 / self.n.max(1) as f64).sqrt();
            20.0 * (self.peak / rmse).log10()
        };
        let rel_l2 = if self.err2 == 0.0 {
            0.0
        } else if self.ref2 == 0.0 {
            f64::INFINITY
        } else {
            (self.err2 / self.ref2).sqrt()
        };
        Metrics {
            psnr_db,
            rel_l2,
            max_abs_err: self.max_abs,
        }
    }
}

/// [`Metrics`] of `test` against `reference` (same length).
pub fn metrics(reference: &[f32], test: &[f32]) -> Metrics {
    Sums::of(reference, test).metrics()
}

/// A number in a report: finite values as JSON numbers, infinities as the
/// strings `"Infinity"` / `"-Infinity"` (which Python's `float()` and
/// JavaScript's `Number()` both parse).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Num(pub f64);

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            x if x.is_finite() => s.serialize_f64(x),
            x if x == f64::INFINITY => s.serialize_str("Infinity"),
            x if x == f64::NEG_INFINITY => s.serialize_str("-Infinity"),
            _ => s.serialize_str("NaN"),
        }
    }
}

/// [`Metrics`] as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsJson {
    /// PSNR in dB (`"Infinity"` for identical outputs).
    pub psnr_db: Num,
    /// Every element is identical (max abs error 0).
    pub exact: bool,
    /// Relative L2 error.
    pub rel_l2: Num,
    /// Largest absolute difference.
    pub max_abs_err: Num,
}

impl From<Metrics> for MetricsJson {
    fn from(m: Metrics) -> Self {
        MetricsJson {
            psnr_db: Num(m.psnr_db),
            exact: m.max_abs_err == 0.0,
            rel_l2: Num(m.rel_l2),
            max_abs_err: Num(m.max_abs_err),
        }
    }
}

/// The comparison of one output.
#[derive(Debug, Clone, Serialize)]
pub struct OutputEval {
    /// Output name.
    pub name: String,
    /// Shape of one sample's output.
    pub shape: Vec<usize>,
    /// Means over samples (PSNR in dB averaged, as Apple does).
    pub mean: MetricsJson,
    /// Worst sample per metric.
    pub worst: MetricsJson,
    /// All samples pooled.
    pub all: MetricsJson,
    /// One entry per sample.
    pub per_sample: Vec<MetricsJson>,
    /// Mean PSNR as a number (±∞ allowed), for gates and printing.
    #[serde(skip)]
    pub mean_psnr_db: f64,
    /// The means with infinities, for printing.
    #[serde(skip)]
    pub mean_raw: Metrics,
    /// Per-sample metrics with infinities, for printing.
    #[serde(skip)]
    pub samples_raw: Vec<Metrics>,
}

/// What `sdcompress eval` reports (schema `sdcompress.eval/1`).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// `sdcompress.eval/1`.
    pub schema: &'static str,
    /// Reference package.
    pub reference: String,
    /// Compressed package.
    pub compressed: String,
    /// Calibration file.
    pub inputs: String,
    /// Samples compared.
    pub samples: usize,
    /// How PSNR is defined.
    pub psnr: &'static str,
    /// Per output.
    pub outputs: Vec<OutputEval>,
    /// The `--min-psnr` gate, if given.
    pub min_psnr_db: Option<f64>,
    /// Whether every output's mean PSNR reaches the gate (`null` without one).
    pub passed: Option<bool>,
    /// Wall time of the whole comparison (the only non-deterministic field).
    pub wall_seconds: f64,
}

/// The PSNR definition, as recorded in reports.
pub const PSNR_DEFINITION: &str =
    "20*log10(max|compressed| / rms(compressed - reference)) per sample, \
    averaged over samples: apple/ml-stable-diffusion's compute_psnr without its epsilons";

/// Runs both models on every sample of `calib` and compares their outputs.
/// `progress(done)` is called after each sample.
pub fn evaluate(
    reference: &Interpreter,
    compressed: &Interpreter,
    calib: &CalibSet,
    progress: &dyn Fn(usize),
) -> Result<Vec<OutputEval>, InterpError> {
    let refs = reference.outputs();
    let outs = compressed.outputs();
    let names = |v: &[crate::interp::IoSpec]| v.iter().map(|o| o.name.clone()).collect::<Vec<_>>();
    if names(refs) != names(outs) {
        return Err(InterpError::Usage(format!(
            "the models have different outputs: {:?} vs {:?}",
            names(refs),
            names(outs)
        )));
    }
    let k = refs.len();
    let mut sums: Vec<Vec<Sums>> = vec![Vec::new(); k];
    let mut shapes: Vec<Vec<usize>> = vec![Vec::new(); k];
    for i in 0..calib.samples() {
        let x = calib.sample(i)?;
        let a = reference.run(&x, None)?;
        let b = compressed.run(&x, None)?;
        for j in 0..k {
            if a[j].dims() != b[j].dims() {
                return Err(InterpError::Usage(format!(
                    "output '{}' has shape {:?} in the reference and {:?} in the compressed model",
                    refs[j].name,
                    a[j].dims(),
                    b[j].dims()
                )));
            }
            let va = flat(&a[j])?;
            let vb = flat(&b[j])?;
            sums[j].push(Sums::of(&va, &vb));
            shapes[j] = a[j].dims().to_vec();
        }
        progress(i + 1);
    }
    Ok(refs
        .iter()
        .zip(sums)
        .zip(shapes)
        .map(|((spec, s), shape)| summarize(&spec.name, shape, &s))
        .collect())
}

fn flat(t: &candle_core::Tensor) -> Result<Vec<f32>, InterpError> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| InterpError::Usage(e.to_string()))
}

fn summarize(name: &str, shape: Vec<usize>, per: &[Sums]) -> OutputEval {
    let ms: Vec<Metrics> = per.iter().map(Sums::metrics).collect();
    let n = ms.len().max(1) as f64;
    let mean = Metrics {
        psnr_db: ms.iter().map(|m| m.psnr_db).sum::<f64>() / n,
        rel_l2: ms.iter().map(|m| m.rel_l2).sum::<f64>() / n,
        max_abs_err: ms.iter().map(|m| m.max_abs_err).sum::<f64>() / n,
    };
    let worst = Metrics {
        psnr_db: ms.iter().map(|m| m.psnr_db).fold(f64::INFINITY, f64::min),
        rel_l2: ms.iter().map(|m| m.rel_l2).fold(0.0, f64::max),
        max_abs_err: ms.iter().map(|m| m.max_abs_err).fold(0.0, f64::max),
    };
    let mut all = Sums::default();
    for s in per {
        all.add(s);
    }
    OutputEval {
        name: name.to_string(),
        shape,
        mean: mean.into(),
        worst: worst.into(),
        all: all.metrics().into(),
        per_sample: ms.iter().map(|&m| m.into()).collect(),
        mean_psnr_db: mean.psnr_db,
        mean_raw: mean,
        samples_raw: ms,
    }
}
