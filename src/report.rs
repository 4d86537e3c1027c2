//! The versioned JSON report that compression commands write with
//! `--report` (schema `sdcompress.report/1`), and the error metrics in it.

use serde::Serialize;

/// Version tag of the report document.
pub const SCHEMA: &str = "sdcompress.report/1";

/// Error of a reconstructed weight against the original.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// 10·log10(Σx² / Σ(x−y)²); `null` when the reconstruction is exact.
    pub snr_db: Option<f64>,
    /// sqrt(Σ(x−y)² / Σx²).
    pub rel_l2: f64,
    /// max |x − y|.
    pub max_abs_err: f64,
    /// Σ(x−y)² (for totals and comparisons).
    pub sse: f64,
}

impl Metrics {
    /// From Σx², Σ(x−y)² and max |x−y|.
    pub fn from_sums(signal: f64, sse: f64, max_abs: f64) -> Self {
        Metrics {
            snr_db: if sse > 0.0 {
                Some(10.0 * (signal / sse).log10())
            } else {
                None
            },
            rel_l2: if signal > 0.0 {
                (sse / signal).sqrt()
            } else {
                sse.sqrt()
            },
            max_abs_err: max_abs,
            sse,
        }
    }

    /// Compares `orig` with `approx` elementwise (in f64).
    pub fn between(orig: impl Iterator<Item = f64>, approx: impl Iterator<Item = f64>) -> Self {
        let (mut sig, mut err, mut mx) = (0.0f64, 0.0f64, 0.0f64);
        for (x, y) in orig.zip(approx) {
            sig += x * x;
            let d = x - y;
            err += d * d;
            mx = mx.max(d.abs());
        }
        Metrics {
            snr_db: if err > 0.0 {
                Some(10.0 * (sig / err).log10())
            } else {
                None
            },
            rel_l2: if sig > 0.0 {
                (err / sig).sqrt()
            } else {
                err.sqrt()
            },
            max_abs_err: mx,
            sse: err,
        }
    }
}

/// One weight's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct WeightReport {
    /// Function.
    pub function: String,
    /// Const name.
    pub name: String,
    /// Consuming op names.
    pub ops: Vec<String>,
    /// Consuming op types.
    pub op_types: Vec<String>,
    /// Weight shape.
    pub shape: Vec<usize>,
    /// Weight dtype.
    pub dtype: String,
    /// Bytes the dense weight occupied.
    pub bytes_before: u64,
    /// Bytes its compressed form occupies (= before when skipped).
    pub bytes_after: u64,
    /// Why it was left alone, if it was.
    pub skipped: Option<String>,
    /// Compression details (absent when skipped).
    #[serde(flatten)]
    pub detail: Option<serde_json::Value>,
    /// Reconstruction error (absent when skipped).
    #[serde(flatten)]
    pub metrics: Option<Metrics>,
}

/// Totals of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Weights seen.
    pub weights: usize,
    /// Weights compressed.
    pub compressed: usize,
    /// Weights skipped.
    pub skipped: usize,
    /// Parameters of all weights.
    pub parameters: u64,
    /// Parameters of compressed weights.
    pub compressed_parameters: u64,
    /// Weight-file bytes of the input.
    pub weight_bytes_before: u64,
    /// Weight-file bytes of the output.
    pub weight_bytes_after: u64,
    /// Stored bits per compressed parameter (indices, LUTs, masks...).
    pub bits_per_compressed_weight: Option<f64>,
    /// Weight-file bits per parameter of all weights.
    pub bits_per_weight: Option<f64>,
    /// Σ squared error / Σ squared weight over compressed weights, in dB.
    pub global_snr_db: Option<f64>,
    /// The size formula's prediction of the weights' bytes: per compressed
    /// weight `mask_bits/8 + value_bits/8 + lut_bits/8` (i.e.
    /// numel·(1 + density·nbits)/8 + LUTs for joint), plus the stored bytes
    /// of the weights left alone. `weight_bytes_after` is the actual size;
    /// it adds 64-byte blob records and alignment, and non-weight consts.
    pub predicted_bytes: u64,
    /// Wall-clock seconds (the only non-deterministic field).
    pub wall_seconds: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// `palettize`, `prune`, ...
    pub command: String,
    /// Input package.
    pub input: String,
    /// Output package.
    pub output: String,
    /// Effective options.
    pub options: serde_json::Value,
    /// Spec version before → after.
    pub specification_version: [i32; 2],
    /// Per weight, in program order.
    pub weights: Vec<WeightReport>,
    /// Totals.
    pub totals: Totals,
    /// Settings that work but do not pay (also printed on stderr).
    pub warnings: Vec<String>,
    /// Facts about how the output was made that a reader should know.
    pub notes: Vec<String>,
}

impl Report {
    /// Warnings about the run, from the per-weight lines: sparse forms
    /// whose mask costs more than it saves. A mask costs 1 bit per element
    /// and saves `bits` per pruned one (`bits` = LUT index bits, or the
    /// dtype's width without a LUT), so sparse storage is smaller than the
    /// same values stored densely iff sparsity > 1/bits; for joint storage
    /// that is numel·(1 + density·nbits)/8 < numel·nbits/8.
    pub fn warnings_for(weights: &[WeightReport]) -> Vec<String> {
        let mut by_bits: std::collections::BTreeMap<(bool, u64), usize> = Default::default();
        for w in weights {
            let Some(d) = &w.detail else { continue };
            if d.get("sparse_pays") == Some(&serde_json::Value::Bool(false)) {
                let lut = d.get("nbits").and_then(|v| v.as_u64());
                let bits = lut.unwrap_or_else(|| if w.dtype == "fp32" { 32 } else { 16 });
                *by_bits.entry((lut.is_some(), bits)).or_default() += 1;
            }
        }
        by_bits
            .into_iter()
            .map(|((lut, bits), n)| {
                let what = if lut {
                    format!("sparse + {bits}-bit LUT is not smaller than the {bits}-bit LUT alone")
                } else {
                    format!("sparse storage is not smaller than the dense {bits}-bit weight")
                };
                format!(
                    "{n} weight(s): {what} at sparsity <= 1/{bits} = {:.4}; prune more or leave them dense",
                    1.0 / bits as f64
                )
            })
            .collect()
    }

    /// Notes about the run, from the per-weight lines.
    pub fn notes_for(weights: &[WeightReport]) -> Vec<String> {
        let joint = weights.iter().any(|w| {
            w.detail
                .as_ref()
                .and_then(|d| d.get("lut_values"))
                .is_some()
        });
        let mut v = Vec::new();
        if joint {
            v.push(
                "joint sparse + LUT weights: only the kept (non-zero) values are clustered; coremltools clusters the dense weight, zeros included, and spends one LUT entry on 0.0"
                    .to_string(),
            );
        }
        v
    }
}

impl Totals {
    /// Totals over per-weight lines, with the weight-file sizes before and
    /// after and the wall time.
    pub fn from_weights(
        weights: &[WeightReport],
        before: u64,
        after: u64,
        wall_seconds: f64,
    ) -> Self {
        let mut t = Totals {
            weight_bytes_before: before,
            weight_bytes_after: after,
            wall_seconds,
            ..Totals::default()
        };
        let (mut sig, mut err, mut cbytes) = (0.0f64, 0.0f64, 0u64);
        for w in weights {
            let n: u64 = w.shape.iter().product::<usize>() as u64;
            t.weights += 1;
            t.parameters += n;
            if w.skipped.is_some() {
                t.skipped += 1;
                t.predicted_bytes += w.bytes_after;
                continue;
            }
            t.compressed += 1;
            t.compressed_parameters += n;
            cbytes += w.bytes_after;
            t.predicted_bytes += w
                .detail
                .as_ref()
                .and_then(|d| d.get("predicted_bytes"))
                .and_then(|v| v.as_u64())
                .unwrap_or(w.bytes_after);
            if let Some(m) = &w.metrics {
                err += m.sse;
                // Σx² of the weight, recovered from its SNR (exact weights
                // add no error and are left out of the ratio).
                if let Some(s) = m.snr_db {
                    sig += m.sse * 10f64.powf(s / 10.0);
                }
            }
        }
        if t.compressed_parameters > 0 {
            t.bits_per_compressed_weight =
                Some(cbytes as f64 * 8.0 / t.compressed_parameters as f64);
        }
        if t.parameters > 0 {
            t.bits_per_weight = Some(after as f64 * 8.0 / t.parameters as f64);
        }
        if err > 0.0 {
            t.global_snr_db = Some(10.0 * (sig / err).log10());
        }
        t
    }
}
