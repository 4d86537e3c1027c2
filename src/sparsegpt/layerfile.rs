//! One layer in a `.safetensors` file, in the format of the shared numpy
//! oracle (`shared/oracle/sparsegpt_ref.py`), and the whole single-layer
//! job: load, build the Hessian(s), prune every group, write the result.
//! The `sparsegpt_layer` example and the oracle tests use it; it is the
//! seam through which the kernel is checked and benchmarked in isolation.
//!
//! Input keys: `W` (`[out, in]` or conv `[out, in/groups, kh, kw]`), and
//! either `X` (linear: `[n, in]`, each row one sample as the oracle counts
//! them, or `[b, t, in]`; conv: `[N, C, H, W]`) or `H` (`[cols, cols]`, or
//! `[groups, cols, cols]`). F16, F32 and F64 are read.
//! Output keys: `W` (f32, the input's shape), `mask` (u8, 1 = pruned),
//! `row_losses` (f64).

use super::hessian::{ConvGeometry, Hessian, Precision};
use super::layout::WeightLayout;
use super::prune::{prune_layer, PruneParams};
use super::{Result, SparseGptError};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;
use std::time::Instant;

fn file_err(path: &Path, reason: impl Into<String>) -> SparseGptError {
    SparseGptError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A tensor read from a layer file: shape and elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Elements.
    pub data: Vec<T>,
}

/// An open layer file (memory-mapped; tensors are decoded on request).
pub struct LayerFile {
    path: std::path::PathBuf,
    map: Mmap,
}

impl LayerFile {
    /// Opens and maps `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| file_err(path, e.to_string()))?;
        // SAFETY: a read-only private mapping; the file is not modified
        // while we hold it (a concurrent writer could only change values,
        // and every access goes through safetensors' bounds checks).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| file_err(path, e.to_string()))?;
        SafeTensors::deserialize(&map).map_err(|e| file_err(path, e.to_string()))?;
        Ok(LayerFile {
            path: path.to_path_buf(),
            map,
        })
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.map).expect("validated by open")
    }

    /// Whether the file holds tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors().tensor(name).is_ok()
    }

    /// Tensor `name` converted to f64.
    pub fn read_f64(&self, name: &str) -> Result<Loaded<f64>> {
        self.read(name, |x| x)
    }

    /// Tensor `name` converted to f32 (f64 values are rounded).
    pub fn read_f32(&self, name: &str) -> Result<Loaded<f32>> {
        self.read(name, |x| x as f32)
    }

    fn read<T>(&self, name: &str, conv: impl Fn(f64) -> T) -> Result<Loaded<T>> {
        let st = self.tensors();
        let t = st
            .tensor(name)
            .map_err(|_| file_err(&self.path, format!("no tensor '{name}'")))?;
        let bytes = t.data();
        let data: Vec<T> = match t.dtype() {
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| conv(f64::from_le_bytes(b.try_into().expect("8 bytes"))))
                .collect(),
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| {
                    conv(f64::from(f32::from_le_bytes(
                        b.try_into().expect("4 bytes"),
                    )))
                })
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| {
                    let h = half::f16::from_le_bytes(b.try_into().expect("2 bytes"));
                    conv(f64::from(h.to_f32()))
                })
                .collect(),
            other => {
                return Err(file_err(
                    &self.path,
                    format!("tensor '{name}' has dtype {other:?}, expected F16, F32 or F64"),
                ))
            }
        };
        // The decoded copy is what we keep: let the mapped pages go so a
        // 1 GB Hessian is not resident twice.
        let start = bytes.as_ptr() as usize - self.map.as_ptr() as usize;
        release(&self.map, start, bytes.len());
        Ok(Loaded {
            shape: t.shape().to_vec(),
            data,
        })
    }
}

fn release(map: &Mmap, start: usize, len: usize) {
    const PAGE: usize = 4096;
    let a = start.div_ceil(PAGE) * PAGE;
    let b = (start + len) / PAGE * PAGE;
    if b > a {
        // SAFETY: a read-only private file mapping; MADV_DONTNEED drops our
        // page-table entries only, later reads fault the same bytes back in.
        #[cfg(unix)]
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a) };
    }
}

/// An output tensor.
pub enum OutTensor<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f64 elements.
    F64(&'a [f64]),
    /// u8 elements.
    U8(&'a [u8]),
}

/// Writes `tensors` (name, shape, data) to `path` as safetensors.
pub fn write(path: &Path, tensors: &[(&str, Vec<usize>, OutTensor<'_>)]) -> Result<()> {
    let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, t)| {
            let (dtype, bytes): (Dtype, Vec<u8>) = match t {
                OutTensor::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                OutTensor::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                OutTensor::U8(v) => (Dtype::U8, v.to_vec()),
            };
            (name.to_string(), dtype, shape.clone(), bytes)
        })
        .collect();
    let views = owned
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| file_err(path, format!("tensor '{n}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| file_err(path, e.to_string()))
}

/// Everything needed to prune one layer file.
#[derive(Debug, Clone)]
pub struct LayerJob {
    /// Pruning parameters.
    pub params: PruneParams,
    /// Conv geometry (kernel taken from `W`); ignored for 2-D weights.
    pub conv: ConvGeometry,
    /// Sample count `N` to scale `H` with (default: as counted).
    pub nsamples: Option<u64>,
    /// Precision of the Hessian's products when it is built from `X`.
    pub precision: Precision,
    /// Also write the Hessian built from `X` to this file (key `H`, f64,
    /// `[cols, cols]` or `[groups, cols, cols]`), e.g. to give another
    /// implementation exactly the same matrix.
    pub dump_hessian: Option<std::path::PathBuf>,
}

/// The result of [`run_layer`].
pub struct LayerResult {
    /// The weight's shape.
    pub shape: Vec<usize>,
    /// Pruned weights in the weight's own layout.
    pub weights: Vec<f32>,
    /// Mask in the weight's own layout (1 = pruned).
    pub mask: Vec<u8>,
    /// Row losses, all groups in row order.
    pub row_losses: Vec<f64>,
    /// Sum of the groups' losses (§9).
    pub loss: f64,
    /// Pruned weights.
    pub pruned: usize,
    /// Dead input columns over all groups.
    pub dead_columns: usize,
    /// Largest number of factorisation attempts over the groups.
    pub attempts: u32,
    /// Relative reconstruction error of each group (empty unless measured).
    pub rel_errors: Vec<f64>,
    /// Seconds spent building the Hessians (0 when `H` was given).
    pub hessian_seconds: f64,
    /// Seconds spent in [`prune_layer`] (all groups).
    pub prune_seconds: f64,
}

/// Loads `W` and `X`/`H` from `file` and prunes every group.
pub fn run_layer(file: &LayerFile, job: &LayerJob) -> Result<LayerResult> {
    let w = file.read_f32("W")?;
    let layout = match w.shape.len() {
        2 => WeightLayout::OutIn {
            out: w.shape[0],
            inp: w.shape[1],
        },
        4 => WeightLayout::conv(&w.shape, job.conv.groups)?,
        _ => {
            return Err(file_err(
                &file.path,
                format!("W must be 2-D or 4-D, got {:?}", w.shape),
            ))
        }
    };
    let (groups, cols) = (layout.groups(), layout.cols());
    let t0 = Instant::now();
    let hessians: Vec<Hessian> = if file.contains("X") {
        let x = file.read_f32("X")?;
        let mut hs = (0..groups)
            .map(|_| Hessian::with_precision(cols, job.precision))
            .collect::<Result<Vec<_>>>()?;
        if let WeightLayout::Conv { kh, kw, .. } = layout {
            let shape: [usize; 4] = x.shape.as_slice().try_into().map_err(|_| {
                file_err(
                    &file.path,
                    format!("a conv weight needs X [N, C, H, W], got {:?}", x.shape),
                )
            })?;
            let geom = ConvGeometry {
                kernel: [kh, kw],
                ..job.conv
            };
            Hessian::add_conv_groups(&mut hs, &x.data, shape, &geom)?;
        } else {
            // As the oracle: each row of a 2-D X is one sample.
            let shape = match *x.shape.as_slice() {
                [n, i] => vec![n, 1, i],
                _ => x.shape.clone(),
            };
            hs[0].add_linear(&x.data, &shape)?;
        }
        hs.iter_mut().for_each(Hessian::finish);
        match job.nsamples {
            Some(n) => hs
                .into_iter()
                .map(|h| {
                    let counted = h.nsamples();
                    let mut m = h.into_matrix();
                    let s = counted as f64 / n as f64;
                    m.iter_mut().for_each(|v| *v *= s);
                    Hessian::from_matrix(cols, m, n)
                })
                .collect::<Result<_>>()?,
            None => hs,
        }
    } else {
        let h = file.read_f64("H")?;
        let want: Vec<usize> = if groups == 1 {
            vec![cols, cols]
        } else {
            vec![groups, cols, cols]
        };
        if h.shape != want {
            return Err(file_err(
                &file.path,
                format!("H has shape {:?}, expected {want:?} (or give X)", h.shape),
            ));
        }
        let n = job.nsamples.unwrap_or(1);
        if groups == 1 {
            vec![Hessian::from_matrix(cols, h.data, n)?]
        } else {
            h.data
                .chunks(cols * cols)
                .map(|m| Hessian::from_matrix(cols, m.to_vec(), n))
                .collect::<Result<_>>()?
        }
    };
    let hessian_seconds = if file.contains("X") {
        t0.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let hessians = match &job.dump_hessian {
        Some(path) => dump(path, hessians, cols)?,
        None => hessians,
    };

    let t1 = Instant::now();
    let mut weights = vec![0.0f32; w.data.len()];
    let mut mask = vec![0u8; w.data.len()];
    let mut row_losses = Vec::new();
    let (mut loss, mut pruned, mut dead, mut attempts) = (0.0, 0, 0, 0);
    let mut rel_errors = Vec::new();
    let rows = layout.rows();
    for (g, h) in hessians.into_iter().enumerate() {
        let wg = layout.extract(&w.data, g)?;
        let out = prune_layer(&wg, rows, cols, h, &job.params)?;
        layout.insert(&mut weights, g, &out.weights)?;
        let m: Vec<u8> = out.mask.iter().map(|&b| u8::from(b)).collect();
        layout.insert(&mut mask, g, &m)?;
        row_losses.extend_from_slice(&out.row_losses);
        loss += out.loss;
        pruned += out.pruned;
        dead += out.dead_columns;
        attempts = attempts.max(out.attempts);
        rel_errors.extend(out.rel_error);
    }
    Ok(LayerResult {
        shape: w.shape,
        weights,
        mask,
        row_losses,
        loss,
        pruned,
        dead_columns: dead,
        attempts,
        rel_errors,
        hessian_seconds,
        prune_seconds: t1.elapsed().as_secs_f64(),
    })
}

/// Writes the finished Hessians to `path` and hands them back.
fn dump(path: &Path, hessians: Vec<Hessian>, cols: usize) -> Result<Vec<Hessian>> {
    let groups = hessians.len();
    let parts: Vec<(u64, Vec<f64>)> = hessians
        .into_iter()
        .map(|h| (h.nsamples(), h.into_matrix()))
        .collect();
    let all: Vec<f64> = parts.iter().flat_map(|(_, m)| m.iter().copied()).collect();
    let shape = if groups == 1 {
        vec![cols, cols]
    } else {
        vec![groups, cols, cols]
    };
    write(path, &[("H", shape, OutTensor::F64(&all))])?;
    drop(all);
    parts
        .into_iter()
        .map(|(n, m)| Hessian::from_matrix(cols, m, n))
        .collect()
}
