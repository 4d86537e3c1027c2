//! SparseGPT on a whole ML Program: the interpreter runs the calibration
//! samples, a [`Hook`] turns every selected layer's input into its
//! [`Hessian`], and each layer is pruned with [`prune_layer`] in its own
//! layout.
//!
//! # Stages (sequential mode)
//!
//! The weights are cut into stages in program order. A weight's stage key
//! is the text matched by the first `--layers` regex that matches its name
//! (`down_blocks_1`, `mid_block`, …) or `(other)`; consecutive weights with
//! the same key form one stage, so the weights before the first block
//! (`conv_in`, the time embedding) and after the last one (`conv_out`) are
//! stages of their own. For each stage, in order:
//!
//! 1. the samples are run through the program as it is now (earlier stages
//!    already pruned), only as far as the stage's last weight op, and the
//!    stage's Hessians are accumulated from the hooks;
//! 2. every layer of the stage is pruned;
//! 3. the pruned weights (rounded to the weight's dtype, as they will be
//!    written) replace the dense ones in the interpreter.
//!
//! Skip connections across stages need no special handling: an up block
//! reads the activations that the already-pruned down blocks produce in the
//! same run, which is what the pruned model will compute. Within a stage
//! every layer sees the stage's dense weights, as in coremltools' layerwise
//! compressor (one forward pass per block). `--one-shot` makes the whole
//! program one stage: every Hessian comes from the dense model.
//!
//! # Memory
//!
//! A Hessian is `cols² × 8` bytes (1.06 GB for a 1280-channel 3×3 conv).
//! When a stage's Hessians do not fit the budget, the stage is calibrated
//! in several passes over the samples, each with a subset of its layers;
//! since nothing is replaced before the stage ends, the result is the same
//! as with one pass. Each Hessian is consumed (factored in place) by the
//! pruning of its layer.

use super::{
    prune_layer, ConvGeometry, Hessian, PruneParams, Result, SparseGptError, WeightLayout,
};
use crate::interp::calib::CalibSet;
use crate::interp::{self, Hook, Interpreter, WeightKind, WeightOp};
use crate::mil::{DType, Data, Tensor as MilTensor};
use candle_core::Tensor;
use half::f16;
use regex::Regex;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A weight to prune, as the prune pass planned it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The weight's value name (the const's output).
    pub weight: String,
    /// Its declared dtype (the pruned values are rounded to it).
    pub dtype: DType,
    /// Pattern and SparseGPT parameters for it.
    pub params: PruneParams,
}

/// Options of a calibrated prune.
#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    /// Stage regexes (sequential mode), matched against weight names.
    pub stages: Vec<Regex>,
    /// All Hessians from the dense model in one stage.
    pub one_shot: bool,
    /// Bytes of Hessians held at once (at least one layer per pass).
    pub hessian_budget: u64,
}

impl CalibrateOptions {
    /// The default stages: the UNet's down blocks, mid block and up blocks
    /// (diffusers names as coremltools and apple/ml-stable-diffusion write
    /// them).
    pub fn default_stages() -> Vec<Regex> {
        [r"down_blocks_\d+", r"mid_block", r"up_blocks_\d+"]
            .iter()
            .map(|r| Regex::new(r).expect("valid"))
            .collect()
    }
}

/// One pruned layer.
#[derive(Debug, Clone)]
pub struct LayerResult {
    /// The pruned and compensated weight in its own layout and dtype
    /// (zeros where pruned).
    pub values: Data,
    /// Kept elements, row-major over the weight's shape.
    pub keep: Vec<bool>,
    /// The stage it was pruned in.
    pub stage: String,
    /// Sum over groups of the loss `½ tr(ΔW H ΔWᵀ)`.
    pub loss: f64,
    /// `‖WX − ŴX‖² / ‖WX‖²` on the calibration inputs (mean over conv
    /// groups).
    pub rel_error: f64,
    /// Input columns that were never active.
    pub dead_columns: usize,
    /// Largest relative damping used (after retries).
    pub percdamp: f64,
    /// Input vectors the Hessian was built from.
    pub vectors: u64,
    /// Op types that consumed it during calibration.
    pub kind: &'static str,
}

/// What a calibrated prune produced: results by weight name, and the
/// weights it could not handle with the reason.
#[derive(Debug, Default)]
pub struct Calibrated {
    /// Pruned layers.
    pub layers: BTreeMap<String, LayerResult>,
    /// Weights left alone, with why.
    pub skipped: BTreeMap<String, String>,
    /// Stages in the order they ran: (name, layers, passes over the samples).
    pub stages: Vec<(String, usize, usize)>,
    /// Calibration samples used.
    pub samples: usize,
}

/// Progress events.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A pass over the samples starts: stage, pass index, passes, layers.
    Pass(&'a str, usize, usize, usize),
    /// A sample has run.
    Sample(usize),
    /// A layer has been pruned (layers pruned so far, in all).
    Pruned(usize, usize),
}

/// Runs SparseGPT on `targets` of the interpreter's program, calibrated on
/// the samples of `calib`.
pub fn calibrate(
    it: &mut Interpreter,
    calib: &CalibSet,
    targets: &[Target],
    opts: &CalibrateOptions,
    progress: &dyn Fn(Event<'_>),
) -> Result<Calibrated> {
    let by_name: HashMap<&str, &Target> = targets.iter().map(|t| (t.weight.as_str(), t)).collect();
    let ops = it.weight_ops();
    // Every use of a target weight, in program order.
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for op in &ops {
        if let Some(t) = by_name.get(op.weight.as_str()) {
            if !last_use.contains_key(t.weight.as_str()) {
                order.push(&t.weight);
            }
            last_use.insert(&t.weight, op.position);
        }
    }
    let mut out = Calibrated {
        samples: calib.samples(),
        ..Default::default()
    };
    for t in targets {
        if !last_use.contains_key(t.weight.as_str()) {
            out.skipped.insert(
                t.weight.clone(),
                "sparsegpt: not the weight of a conv, linear or matmul that the calibration runs"
                    .into(),
            );
        }
    }
    let shapes: HashMap<&str, Vec<usize>> = ops
        .iter()
        .map(|o| (o.weight.as_str(), o.shape.clone()))
        .collect();
    let stages = make_stages(&order, &opts.stages, opts.one_shot);
    let total = order.len();
    let mut done = 0usize;
    for (stage, names) in stages {
        // Passes within the Hessian budget.
        let mut passes: Vec<Vec<&str>> = Vec::new();
        let mut used = u64::MAX;
        for &n in &names {
            let need = hessian_bytes(&shapes[n]);
            if used.saturating_add(need) > opts.hessian_budget || passes.is_empty() {
                passes.push(Vec::new());
                used = 0;
            }
            used = used.saturating_add(need);
            passes.last_mut().expect("pushed").push(n);
        }
        let mut pending: Vec<(String, LayerResult)> = Vec::new();
        let npasses = passes.len();
        for (pi, pass) in passes.into_iter().enumerate() {
            progress(Event::Pass(&stage, pi, npasses, pass.len()));
            let last = pass.iter().map(|n| last_use[n]).max().expect("non-empty");
            let mut col = Collector::new(&pass);
            for s in 0..calib.samples() {
                let inputs = calib.sample(s).map_err(calib_err)?;
                it.run_hooks_until(&inputs, &mut col, last)
                    .map_err(calib_err)?;
                progress(Event::Sample(s + 1));
            }
            for (name, acc) in pass.iter().zip(col.acc) {
                let t = by_name[name];
                let w = it
                    .weight(name)
                    .ok_or_else(|| SparseGptError::Calibration(format!("no weight '{name}'")))?;
                let shape = w.dims().to_vec();
                let w = w
                    .flatten_all()
                    .and_then(|w| w.to_vec1::<f32>())
                    .map_err(|e| SparseGptError::Calibration(e.to_string()))?;
                let r = prune_one(name, t, &w, &shape, acc, &stage)?;
                done += 1;
                progress(Event::Pruned(done, total));
                pending.push((name.to_string(), r));
            }
        }
        out.stages.push((stage.clone(), names.len(), npasses));
        for (name, r) in pending {
            let t = MilTensor {
                dtype: by_name[name.as_str()].dtype,
                shape: shapes[name.as_str()].clone(),
                data: r.values.clone(),
            };
            if !opts.one_shot {
                it.set_weight(&name, &t).map_err(calib_err)?;
            }
            out.layers.insert(name, r);
        }
    }
    Ok(out)
}

fn calib_err(e: interp::InterpError) -> SparseGptError {
    SparseGptError::Calibration(e.to_string())
}

/// Stages in program order: consecutive weights with the same key.
fn make_stages<'a>(
    order: &[&'a str],
    regexes: &[Regex],
    one_shot: bool,
) -> Vec<(String, Vec<&'a str>)> {
    let mut stages: Vec<(String, Vec<&str>)> = Vec::new();
    for &n in order {
        let key = if one_shot {
            "(all)".to_string()
        } else {
            regexes
                .iter()
                .find_map(|r| r.find(n).map(|m| m.as_str().to_string()))
                .unwrap_or_else(|| "(other)".into())
        };
        match stages.last_mut() {
            Some((k, v)) if *k == key => v.push(n),
            _ => stages.push((key, vec![n])),
        }
    }
    stages
}

/// An upper estimate of the Hessian bytes of a weight (one group; matmul
/// weights are counted by their larger side, as the layout is only known
/// when the op runs).
fn hessian_bytes(shape: &[usize]) -> u64 {
    let cols = match shape {
        [_, rest @ ..] if shape.len() >= 3 => rest.iter().product::<usize>(),
        [a, b] => (*a).max(*b),
        _ => shape.iter().product(),
    } as u64;
    cols * cols * 8
}

/// The Hessians of one weight, built as its consumers run.
struct Accum {
    layout: Option<WeightLayout>,
    hessians: Vec<Hessian>,
    kind: &'static str,
}

struct Collector {
    index: HashMap<String, usize>,
    acc: Vec<Accum>,
}

impl Collector {
    fn new(names: &[&str]) -> Self {
        Collector {
            index: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i))
                .collect(),
            acc: names
                .iter()
                .map(|_| Accum {
                    layout: None,
                    hessians: Vec::new(),
                    kind: "",
                })
                .collect(),
        }
    }
}

fn to_vec(t: &Tensor) -> std::result::Result<Vec<f32>, String> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())
}

impl Hook for Collector {
    fn before_weight_op(
        &mut self,
        op: &WeightOp<'_>,
        input: &Tensor,
    ) -> std::result::Result<(), String> {
        let Some(&i) = self.index.get(op.weight) else {
            return Ok(());
        };
        let a = &mut self.acc[i];
        let ws = op.weight_shape;
        let (layout, kind) = match &op.kind {
            WeightKind::Conv(g) => {
                let (shape, geom) = conv_geometry(ws, g)?;
                (
                    WeightLayout::conv(&shape, geom.groups).map_err(|e| e.to_string())?,
                    "conv",
                )
            }
            WeightKind::Linear => match *ws {
                [out, inp] => (WeightLayout::OutIn { out, inp }, "linear"),
                _ => return Err(format!("linear weight of shape {ws:?}")),
            },
            WeightKind::Matmul {
                weight_is_x,
                transpose_x,
                transpose_y,
            } => {
                let [a0, a1] = *ws else {
                    return Err(format!("matmul weight of rank {} (need 2)", ws.len()));
                };
                // The const is stored as [out, in] when the product reads
                // it that way, [in, out] otherwise.
                let out_in = if *weight_is_x {
                    !transpose_x
                } else {
                    *transpose_y
                };
                let l = if out_in {
                    WeightLayout::OutIn { out: a0, inp: a1 }
                } else {
                    WeightLayout::InOut { inp: a0, out: a1 }
                };
                (l, "matmul")
            }
        };
        match &a.layout {
            None => {
                a.hessians = (0..layout.groups())
                    .map(|_| Hessian::new(layout.cols()))
                    .collect::<Result<_>>()
                    .map_err(|e| e.to_string())?;
                a.layout = Some(layout);
                a.kind = kind;
            }
            Some(l) if *l == layout => {}
            Some(l) => {
                return Err(format!(
                    "weight '{}' is used as {l:?} and as {layout:?}; sparsegpt needs one layout",
                    op.weight
                ))
            }
        }
        match &op.kind {
            WeightKind::Conv(g) => {
                let (_, geom) = conv_geometry(ws, g)?;
                let d = input.dims();
                let shape4 = match *d {
                    [n, c, h, w] => [n, c, h, w],
                    [n, c, l] => [n, c, 1, l],
                    _ => return Err(format!("conv input of rank {}", d.len())),
                };
                let x = to_vec(input)?;
                Hessian::add_conv_groups(&mut a.hessians, &x, shape4, &geom)
                    .map_err(|e| e.to_string())
            }
            WeightKind::Linear => {
                let x = to_vec(input)?;
                a.hessians[0]
                    .add_linear(&x, input.dims())
                    .map_err(|e| e.to_string())
            }
            WeightKind::Matmul {
                weight_is_x,
                transpose_x,
                transpose_y,
            } => {
                // Bring the activation to [..., in] (one vector per row).
                let d = input.dims().len();
                if d < 2 {
                    return Err(format!("matmul activation of rank {d}"));
                }
                let rows_are_vectors = if *weight_is_x {
                    *transpose_y
                } else {
                    !transpose_x
                };
                let t = if rows_are_vectors {
                    input.clone()
                } else {
                    input
                        .transpose(d - 2, d - 1)
                        .and_then(|t| t.contiguous())
                        .map_err(|e| e.to_string())?
                };
                let x = to_vec(&t)?;
                a.hessians[0]
                    .add_linear(&x, t.dims())
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// The weight as a 4-D conv weight and the Hessian's view of the geometry
/// (a 1-D conv is a 2-D conv of height 1).
fn conv_geometry(
    ws: &[usize],
    g: &interp::ConvGeometry,
) -> std::result::Result<(Vec<usize>, ConvGeometry), String> {
    let (shape, kernel, stride, dilation, padding) = match (ws, g.strides.len()) {
        ([co, ci, kh, kw], 2) => (
            vec![*co, *ci, *kh, *kw],
            [*kh, *kw],
            [g.strides[0], g.strides[1]],
            [g.dilations[0], g.dilations[1]],
            [g.pads[0].0, g.pads[0].1, g.pads[1].0, g.pads[1].1],
        ),
        ([co, ci, k], 1) => (
            vec![*co, *ci, 1, *k],
            [1, *k],
            [1, g.strides[0]],
            [1, g.dilations[0]],
            [0, 0, g.pads[0].0, g.pads[0].1],
        ),
        _ => {
            return Err(format!(
                "conv weight of shape {ws:?} (only 1-D and 2-D convs)"
            ))
        }
    };
    Ok((
        shape,
        ConvGeometry {
            kernel,
            stride,
            dilation,
            padding,
            groups: g.groups,
        },
    ))
}

/// Prunes one weight from its accumulated Hessians.
fn prune_one(
    name: &str,
    t: &Target,
    w: &[f32],
    shape: &[usize],
    acc: Accum,
    stage: &str,
) -> Result<LayerResult> {
    let ctx = |e: SparseGptError| SparseGptError::Calibration(format!("layer '{name}': {e}"));
    let Some(layout) = acc.layout else {
        return Err(SparseGptError::Calibration(format!(
            "layer '{name}': its op never ran during calibration"
        )));
    };
    let mut params = t.params.clone();
    params.measure_error = true;
    let mut pruned = w.to_vec();
    let mut keep = vec![true; w.len()];
    let (mut loss, mut err_sum) = (0.0, 0.0);
    let groups = acc.hessians.len();
    let (mut dead, mut percdamp, mut vectors) = (0usize, 0.0f64, 0u64);
    for (g, h) in acc.hessians.into_iter().enumerate() {
        let m = layout.extract(w, g).map_err(ctx)?;
        vectors += h.vectors();
        let o = prune_layer(&m, layout.rows(), layout.cols(), h, &params).map_err(ctx)?;
        layout.insert(&mut pruned, g, &o.weights).map_err(ctx)?;
        let kept: Vec<bool> = o.mask.iter().map(|&p| !p).collect();
        layout.insert(&mut keep, g, &kept).map_err(ctx)?;
        loss += o.loss;
        // Groups have equal sizes: their mean is the tensor's figure (up to
        // the groups' different output energies).
        err_sum += o.rel_error.unwrap_or(f64::NAN);
        dead += o.dead_columns;
        percdamp = percdamp.max(o.percdamp);
    }
    debug_assert_eq!(shape.iter().product::<usize>(), w.len());
    let values = match t.dtype {
        DType::Fp16 => Data::F16(pruned.iter().map(|&x| f16::from_f32(x)).collect()),
        _ => Data::F32(pruned),
    };
    Ok(LayerResult {
        values,
        keep,
        stage: stage.to_string(),
        loss,
        rel_error: err_sum / groups as f64,
        dead_columns: dead,
        percdamp,
        vectors,
        kind: acc.kind,
    })
}

/// The calibration file for `it`'s inputs.
pub fn open_calibration(it: &Interpreter, path: &Path, samples: Option<usize>) -> Result<CalibSet> {
    CalibSet::open(path, it.inputs(), samples).map_err(calib_err)
}
