//! Calibration and output data files: safetensors with one key per model
//! input (or output), stacked along a new leading sample axis.
//!
//! ```text
//! calib.safetensors
//!   sample                 F32 [N, 1, 4, 64, 64]   key[i] = input of sample i
//!   timestep               F32 [N, 1]
//!   encoder_hidden_states  F32 [N, 1, 77, 768]
//!   (other keys, e.g. reference outputs, are ignored)
//! ```
//!
//! Float inputs accept F32, F16, BF16 or F64 data; integer and bool inputs
//! accept integer data (or floats holding integers). Shapes after the
//! sample axis must match the model input (free dimensions match anything).
//! Every key must hold the same number of samples.
//!
//! Outputs are written the same way (F32, keys = output names), through a
//! temporary sibling file renamed into place, with a deterministic header
//! (sorted keys), so the same run gives the same bytes.

use super::program::{Interpreter, IoSpec, Profile};
use super::{InterpError, Result};
use crate::mil::DType;
use candle_core::{Device, Tensor};
use half::{bf16, f16};
use safetensors::{Dtype as SD, SafeTensors};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A calibration file, validated against a model's inputs and decoded.
#[derive(Debug)]
pub struct CalibSet {
    path: PathBuf,
    samples: usize,
    /// Per model input: its per-sample shape and all samples' f32 data.
    data: Vec<(Vec<usize>, Vec<f32>)>,
}

fn bad(path: &Path, reason: impl Into<String>) -> InterpError {
    InterpError::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn dtype_name(d: SD) -> String {
    format!("{d:?}")
}

/// Decodes little-endian elements of a safetensors view to f32.
fn decode(dt: SD, bytes: &[u8]) -> Option<Vec<f32>> {
    fn each<const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        b.chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunk of N")))
            .collect()
    }
    Some(match dt {
        SD::F32 => each(bytes, f32::from_le_bytes),
        SD::F16 => each(bytes, |a: [u8; 2]| f16::from_le_bytes(a).to_f32()),
        SD::BF16 => each(bytes, |a: [u8; 2]| bf16::from_le_bytes(a).to_f32()),
        SD::F64 => each(bytes, |a: [u8; 8]| f64::from_le_bytes(a) as f32),
        SD::I64 => each(bytes, |a: [u8; 8]| i64::from_le_bytes(a) as f32),
        SD::I32 => each(bytes, |a: [u8; 4]| i32::from_le_bytes(a) as f32),
        SD::I16 => each(bytes, |a: [u8; 2]| f32::from(i16::from_le_bytes(a))),
        SD::I8 => bytes.iter().map(|&b| f32::from(b as i8)).collect(),
        SD::U8 | SD::BOOL => bytes.iter().map(|&b| f32::from(b)).collect(),
        _ => return None,
    })
}

fn accepts(input: DType, dt: SD) -> bool {
    let float = matches!(dt, SD::F32 | SD::F16 | SD::BF16 | SD::F64);
    let int = matches!(dt, SD::I64 | SD::I32 | SD::I16 | SD::I8 | SD::U8 | SD::BOOL);
    if input.is_float() {
        float
    } else {
        int || float
    }
}

impl CalibSet {
    /// Reads `path` and checks it against `inputs`; `limit` keeps the first
    /// `limit` samples (it must not exceed what the file holds).
    pub fn open(path: &Path, inputs: &[IoSpec], limit: Option<usize>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
        let mut samples: Option<(usize, &str)> = None;
        let mut data = Vec::with_capacity(inputs.len());
        for spec in inputs {
            let key = spec.name.as_str();
            let view = st.tensor(key).map_err(|_| {
                let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
                bad(
                    path,
                    format!(
                        "missing key '{key}' (the model's inputs are: {})",
                        names.join(", ")
                    ),
                )
            })?;
            if !accepts(spec.dtype, view.dtype()) {
                return Err(bad(
                    path,
                    format!(
                        "key '{key}' holds {} data, model input '{key}' is {} (expected {})",
                        dtype_name(view.dtype()),
                        spec.dtype,
                        if spec.dtype.is_float() {
                            "F32, F16, BF16 or F64"
                        } else {
                            "integers"
                        }
                    ),
                ));
            }
            let shape = view.shape();
            let want = format!(
                "[N,{}]",
                spec.shape_text()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
            );
            if shape.is_empty() || !spec.accepts(&shape[1..]) {
                return Err(bad(
                    path,
                    format!(
                        "key '{key}' has shape {shape:?}; model input '{key}' needs {want} (a leading sample axis, then the input's shape {})",
                        spec.shape_text()
                    ),
                ));
            }
            match samples {
                None => samples = Some((shape[0], key)),
                Some((n, k)) if n != shape[0] => {
                    return Err(bad(
                        path,
                        format!(
                            "key '{key}' holds {} samples but key '{k}' holds {n}",
                            shape[0]
                        ),
                    ))
                }
                _ => {}
            }
            let v = decode(view.dtype(), view.data())
                .ok_or_else(|| bad(path, format!("key '{key}': unsupported dtype")))?;
            if !spec.dtype.is_float() && v.iter().any(|x| x.fract() != 0.0) {
                return Err(bad(
                    path,
                    format!("key '{key}' holds non-integer values for integer input '{key}'"),
                ));
            }
            data.push((shape[1..].to_vec(), v));
        }
        let n = samples.map_or(0, |(n, _)| n);
        if n == 0 && !inputs.is_empty() {
            return Err(bad(path, "holds no samples (the leading axis is 0)"));
        }
        let samples = match limit {
            None => n,
            Some(0) => return Err(bad(path, "--samples must be at least 1")),
            Some(k) if k > n => {
                return Err(bad(
                    path,
                    format!("--samples {k} asks for more samples than the file holds ({n})"),
                ))
            }
            Some(k) => k,
        };
        Ok(Self {
            path: path.to_path_buf(),
            samples,
            data,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of samples that will be used.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The inputs of sample `i`, in the order of the model's inputs.
    pub fn sample(&self, i: usize) -> Result<Vec<Tensor>> {
        self.data
            .iter()
            .map(|(shape, v)| {
                let n: usize = shape.iter().product();
                let s = v
                    .get(i * n..(i + 1) * n)
                    .ok_or_else(|| InterpError::Usage(format!("sample {i} is out of range")))?;
                Tensor::from_slice(s, shape.as_slice(), &Device::Cpu)
                    .map_err(|e| InterpError::Usage(e.to_string()))
            })
            .collect()
    }
}

/// Reads an f32 (or f16/bf16/f64/int) tensor `key` of a safetensors file:
/// (shape, values). For tests and tools that compare against references.
pub fn read_tensor(path: &Path, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
    let view = st
        .tensor(key)
        .map_err(|_| bad(path, format!("missing key '{key}'")))?;
    let v = decode(view.dtype(), view.data())
        .ok_or_else(|| bad(path, format!("key '{key}': unsupported dtype")))?;
    Ok((view.shape().to_vec(), v))
}

/// Tensors by name: (shape, f32 values in row-major order).
pub type Stacked = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Runs `it` on every sample of `calib` and stacks each output along a new
/// leading sample axis: output name → (shape `[samples, ..]`, f32 values).
/// `progress(done)` is called after each sample; `profile` collects op
/// times.
pub fn run_samples(
    it: &Interpreter,
    calib: &CalibSet,
    progress: &dyn Fn(usize),
    mut profile: Option<&mut Profile>,
) -> Result<Stacked> {
    let n = calib.samples();
    let mut data: Vec<(Vec<usize>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); it.outputs().len()];
    for i in 0..n {
        let outs = it.run_profiled(&calib.sample(i)?, None, profile.as_deref_mut())?;
        for (d, t) in data.iter_mut().zip(&outs) {
            d.0 = t.dims().to_vec();
            let v = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| InterpError::Usage(e.to_string()))?;
            d.1.extend(v);
        }
        progress(i + 1);
    }
    Ok(it
        .outputs()
        .iter()
        .zip(data)
        .map(|(spec, (shape, v))| {
            let mut s = vec![n];
            s.extend(shape);
            (spec.name.clone(), (s, v))
        })
        .collect())
}

/// Fails early if `out` cannot be written: it exists (without `force`), is
/// a directory, or its directory does not exist.
pub fn check_output(out: &Path, force: bool) -> Result<()> {
    if out.is_dir() {
        return Err(bad(out, "output is a directory"));
    }
    if std::fs::symlink_metadata(out).is_ok() && !force {
        return Err(bad(out, "output already exists (use --force to overwrite)"));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(bad(out, "output directory does not exist"));
    }
    if out.file_name().is_none() {
        return Err(bad(out, "output has no file name"));
    }
    Ok(())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Writes `tensors` (name → shape, f32 values) and string `metadata` as a
/// safetensors file at `out`: into a temporary sibling, renamed at the end.
/// Refuses an existing `out` unless `force`.
pub fn write_safetensors(
    out: &Path,
    force: bool,
    tensors: &Stacked,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    check_output(out, force)?;
    let name = out
        .file_name()
        .ok_or_else(|| bad(out, "output has no file name"))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Header: __metadata__ first, then tensors in name order, offsets in
    // that order (a BTreeMap makes the bytes deterministic).
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::Value::Object(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        ),
    );
    let mut offset = 0usize;
    for (k, (shape, v)) in tensors {
        let n: usize = shape.iter().product();
        if n != v.len() {
            return Err(InterpError::Usage(format!(
                "tensor '{k}': shape {shape:?} does not match {} values",
                v.len()
            )));
        }
        let end = offset + 4 * n;
        header.insert(
            k.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| InterpError::Usage(e.to_string()))?;
    // Pad the header with spaces so the data starts 8-byte aligned.
    while (8 + h.len()) % 8 != 0 {
        h.push(b' ');
    }
    let tmp = parent.join(format!(
        ".{}.sdcompress-tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        for (_, v) in tensors.values() {
            for x in v {
                w.write_all(&x.to_le_bytes())?;
            }
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, out)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        bad(out, e.to_string())
    })
}
