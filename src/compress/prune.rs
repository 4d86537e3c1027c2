//! The prune pass (magnitude): every selected const weight becomes a
//! `constexpr_sparse_to_dense` holding a bit mask and the kept values
//! (iOS16 attribute form with a packed uint8 mask below the iOS18 opset,
//! the iOS18 input form with a uint1 mask from it on).
//!
//! Patterns ([`Pattern`]): unstructured pruning zeroes exactly
//! `round(sparsity · numel)` weights per tensor; block pruning zeroes
//! exactly `round(sparsity · blocks)` whole blocks of `block_size`
//! consecutive elements along `dim` (default 0, as coremltools); n:m zeroes
//! exactly N of every M consecutive weights along `dim` (default 1, the
//! input axis). Ties are broken by position (see [`crate::kernels::prune`]).
//!
//! With LUT settings (`nbits`, the one-shot joint form) the kept values are
//! then palettized exactly as `palettize` does on a pruned package, so that
//! `prune --nbits` writes the same bytes as `prune` then `palettize`.

use super::config::{Entry, OptimizationConfig, PruneEntry};
use super::palettize::{
    lut_decision, lut_detail, lut_ios18_reason, palettize_weight, settings, sparsity_detail,
    split_axis, LutPlan, JOINT_NEEDS_IOS18,
};
use super::pass::{Compressed, Decision, TargetOptions, WeightData, WeightPass, WeightRewriter};
use super::select::{Selection, Weight};
use crate::kernels::prune::{block_mask, magnitude_mask, magnitude_mask_f16, nm_mask};
use crate::mil::value::BlobFiles;
use crate::mil::{Data, FunctionIndex};
use crate::package::Package;
use crate::report::Metrics;
use crate::sparsegpt::calibrate::LayerResult;
use crate::sparsegpt::{MaskRule, Pattern as SgptPattern};
use std::sync::Arc;

/// What structure to prune with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// This fraction of each tensor, smallest magnitudes first.
    Unstructured(f64),
    /// This fraction of the blocks of `block` consecutive elements along
    /// axis `dim`, smallest L2 norm first.
    Blocks {
        /// Fraction of blocks.
        sparsity: f64,
        /// Elements per block.
        block: usize,
        /// Axis along which blocks run.
        dim: usize,
    },
    /// N of every M consecutive weights along axis `dim`.
    NOutOfM {
        /// Zeros per run.
        n: usize,
        /// Run length.
        m: usize,
        /// Axis along which runs go.
        dim: usize,
    },
}

impl Pattern {
    /// The pattern an entry asks for, validated (the pre-flight checks of
    /// the command).
    pub fn of(e: &PruneEntry) -> Result<Pattern, String> {
        let p = match (e.sparsity, e.n_m) {
            (None, None) => {
                return Err("give --sparsity F or --n-m N:M (or sparsity / n_m in --config)".into())
            }
            (Some(_), Some(_)) => return Err("sparsity and n:m cannot be combined".into()),
            (Some(s), None) => {
                if !(s > 0.0 && s < 1.0) {
                    return Err(format!("sparsity {s} is outside (0, 1)"));
                }
                match e.block_size {
                    None => {
                        if let Some(d) = e.dim {
                            return Err(format!(
                                "dim {d} applies only to block and n:m pruning (give --block-size or --n-m)"
                            ));
                        }
                        Pattern::Unstructured(s)
                    }
                    Some(b) if b < 2 => return Err(format!("block size {b} must be at least 2")),
                    Some(block) => Pattern::Blocks {
                        sparsity: s,
                        block,
                        dim: e.dim.unwrap_or(0),
                    },
                }
            }
            (None, Some((n, m))) => {
                if n == 0 || n >= m {
                    return Err(format!("n:m {n}:{m} needs 0 < N < M"));
                }
                if e.block_size.is_some() {
                    return Err("block size applies to sparsity, not to n:m".into());
                }
                Pattern::NOutOfM {
                    n,
                    m,
                    dim: e.dim.unwrap_or(1),
                }
            }
        };
        match p {
            Pattern::Blocks { dim, .. } | Pattern::NOutOfM { dim, .. } if dim > 1 => {
                Err(format!("dim {dim} must be 0 or 1"))
            }
            _ => Ok(p),
        }
    }

    fn json(&self) -> serde_json::Value {
        match *self {
            Pattern::Unstructured(s) => serde_json::json!({"sparsity": s}),
            Pattern::Blocks {
                sparsity,
                block,
                dim,
            } => serde_json::json!({"sparsity": sparsity, "block_size": block, "axis": dim}),
            Pattern::NOutOfM { n, m, dim } => serde_json::json!({"n_m": [n, m], "axis": dim}),
        }
    }

    /// Why this pattern does not apply to `w`, if it does not.
    fn unfit(&self, w: &Weight) -> Option<String> {
        let (kind, dim) = match *self {
            Pattern::Unstructured(_) => return None,
            Pattern::Blocks { dim, .. } => ("block", dim),
            Pattern::NOutOfM { dim, .. } => ("n:m", dim),
        };
        // As in coremltools: structured patterns are defined on conv and
        // linear weights ([Cout, Cin, ...]).
        if !w
            .consumers
            .iter()
            .all(|(_, t, p)| (t == "conv" || t == "linear") && p == "weight")
        {
            return Some(format!(
                "{kind} pruning applies to conv/linear weights only"
            ));
        }
        let len = w.shape[dim];
        match *self {
            Pattern::Blocks { block, .. } if 2 * block > len => Some(format!(
                "block size larger than half the axis ({len} on axis {dim}, block size {block})"
            )),
            Pattern::NOutOfM { m, .. } if !len.is_multiple_of(m) => Some(format!(
                "axis not divisible by M ({len} on axis {dim}, M = {m})"
            )),
            _ => None,
        }
    }
}

/// Options of the prune pass.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// The three-level config (flags already folded into its global level).
    pub config: OptimizationConfig<PruneEntry>,
    /// Name/op-type selection.
    pub selection: Selection,
    /// Allow a newer opset if needed.
    pub upgrade_opset: bool,
    /// Minimum output spec version.
    pub min_spec: Option<i32>,
}

impl PruneOptions {
    /// Checks every entry of the config, used or not, so that a bad
    /// setting is an error before any work: the pattern of each level
    /// (merged over the global level) and its LUT settings.
    pub fn validate(&self) -> Result<(), String> {
        let c = &self.config;
        let global = c.global_config.clone().unwrap_or_default();
        let check = |e: &PruneEntry| -> Result<(), String> {
            Pattern::of(e)?;
            if let Some(l) = e.lut()? {
                settings(&l)?;
            }
            Ok(())
        };
        // The global level needs a pattern unless op-level entries carry
        // their own (then weights none of them matches are left alone).
        let op_level = !(c.op_type_configs.is_empty() && c.op_name_configs.is_empty());
        if !op_level || global.sparsity.is_some() || global.n_m.is_some() {
            check(&global)?;
        }
        let levels = c
            .op_type_configs
            .iter()
            .map(|(k, e)| (format!("op_type_configs.{k}"), e))
            .chain(
                c.op_name_configs
                    .iter()
                    .map(|(k, e)| (format!("op_name_configs.{k}"), e)),
            );
        for (at, e) in levels {
            if let Some(e) = e {
                check(&e.over(&global)).map_err(|m| format!("{at}: {m}"))?;
            }
        }
        Ok(())
    }
}

/// What prune does with one weight: the pattern (or why it does not apply)
/// and, for the one-shot joint form, the LUT (or why not).
#[derive(Debug, Clone)]
pub struct PrunePlan {
    /// The pattern; `None` when it does not apply (then `lut` is set).
    pub pattern: Option<Pattern>,
    /// Why the pattern does not apply.
    pub pattern_skipped: Option<String>,
    /// LUT settings of the kept (or, unpruned, all) values.
    pub lut: Option<LutPlan>,
    /// Why a requested LUT does not apply.
    pub lut_skipped: Option<String>,
    /// SparseGPT's result for this weight (`prune --method sparsegpt`):
    /// the pruned, compensated values, or why the weight was left alone.
    /// `None` = magnitude pruning.
    pub sparsegpt: Option<Result<Arc<LayerResult>, String>>,
}

/// The prune pass.
pub struct Prune {
    config: OptimizationConfig<PruneEntry>,
    selection: Selection,
}

impl Prune {
    /// Plans the pass over `pkg` (after [`PruneOptions::validate`]).
    pub fn plan<'p>(
        pkg: &'p Package,
        opts: &PruneOptions,
    ) -> Result<WeightRewriter<'p, Prune>, String> {
        opts.validate()?;
        let pass = Prune {
            config: opts.config.clone(),
            selection: opts.selection.clone(),
        };
        let target = TargetOptions {
            upgrade_opset: opts.upgrade_opset,
            min_spec: opts.min_spec,
        };
        WeightRewriter::plan(pkg, pass, &target, "pruning", false)
    }
}

impl WeightPass for Prune {
    type Settings = PrunePlan;

    fn plan(
        &self,
        index: &FunctionIndex<'_>,
        w: &Weight,
        blobs: &BlobFiles,
    ) -> Result<Decision<PrunePlan>, String> {
        if let Some(r) = self.selection.reject(w) {
            return Ok(Decision::Skip(r));
        }
        let consumers: Vec<(String, String)> = w
            .consumers
            .iter()
            .map(|(n, t, _)| (n.clone(), t.clone()))
            .collect();
        let Some(entry) = self.config.resolve(&w.const_name, &consumers)? else {
            return Ok(Decision::Skip("disabled by config".into()));
        };
        if entry.sparsity.is_none() && entry.n_m.is_none() {
            // Only op-level entries set a pattern, and none matched.
            return Ok(Decision::Skip(
                "no config entry sets a pattern for it".into(),
            ));
        }
        let pattern = Pattern::of(&entry)?;
        let threshold = entry.weight_threshold.unwrap_or(2048);
        if w.numel() <= threshold {
            return Ok(Decision::Skip(format!(
                "at most weight threshold ({} <= {threshold} elements)",
                w.numel()
            )));
        }
        if w.shape.len() < 2 {
            return Ok(Decision::Skip("rank < 2".into()));
        }
        let (lut, lut_skipped) = match entry.lut()? {
            None => (None, None),
            Some(l) => match lut_decision(index, w, blobs, &l)? {
                Decision::Do(p) => (Some(p), None),
                Decision::Skip(r) => (None, Some(r)),
            },
        };
        let unfit = pattern.unfit(w);
        if let (Some(r), None) = (&unfit, &lut) {
            return Ok(Decision::Skip(r.clone()));
        }
        Ok(Decision::Do(PrunePlan {
            pattern: unfit.is_none().then_some(pattern),
            pattern_skipped: unfit,
            lut,
            lut_skipped,
            sparsegpt: None,
        }))
    }

    fn ios18_reason(&self, _w: &Weight, s: &PrunePlan) -> Option<&'static str> {
        match (&s.pattern, &s.lut) {
            (Some(_), Some(_)) => Some(JOINT_NEEDS_IOS18),
            (None, Some(l)) => lut_ios18_reason(l),
            _ => None,
        }
    }

    fn compute(&self, input: WeightData<'_>, p: &PrunePlan) -> Result<Compressed, String> {
        let t = input.tensor;
        let mut detail = serde_json::Map::new();
        if let (Some(sg), Some(pattern)) = (&p.sparsegpt, p.pattern) {
            let r = sg.as_ref().map_err(|e| e.clone())?;
            return sparsegpt_compressed(&t, r, pattern, p, detail);
        }
        detail.insert("method".into(), "magnitude".into());
        let Some(pattern) = p.pattern else {
            // The pattern does not fit this weight, but a LUT was asked
            // for: palettize it densely, as `palettize` would after `prune`.
            let lut = p.lut.as_ref().expect("planned with a LUT");
            let (l, e) = palettize_weight(&t, None, lut)?;
            detail.insert("pattern".into(), serde_json::Value::Null);
            detail.insert("prune_skipped".into(), p.pattern_skipped.clone().into());
            detail.extend(lut_detail(lut, &l));
            return Ok(Compressed {
                quant: None,
                keep: None,
                values: None,
                lut: Some(l),
                metrics: Metrics::from_sums(e.signal, e.sse, e.max_abs),
                detail,
            });
        };
        if !finite(&t.data)? {
            return Err("contains NaN or infinity".into());
        }
        // |w| as f32 for the structured patterns (block norms only need
        // squares); fp16 unstructured pruning needs no copy at all.
        let mags = || -> Vec<f32> {
            match &t.data {
                Data::F16(v) => v.iter().map(|x| x.to_f32().abs()).collect(),
                Data::F32(v) => v.iter().map(|x| x.abs()).collect(),
                _ => unreachable!("checked by finite()"),
            }
        };
        let keep = match (pattern, &t.data) {
            (Pattern::Unstructured(s), Data::F16(v)) => magnitude_mask_f16(v, s),
            (Pattern::Unstructured(s), _) => magnitude_mask(&mags(), s),
            (
                Pattern::Blocks {
                    sparsity,
                    block,
                    dim,
                },
                _,
            ) => {
                let (outer, len, inner) = split_axis(&t.shape, dim);
                block_mask(&mags(), outer, len, inner, block, sparsity)
            }
            (Pattern::NOutOfM { n, m, dim }, _) => {
                let (outer, len, inner) = split_axis(&t.shape, dim);
                nm_mask(&mags(), outer, len, inner, n, m)
            }
        };
        if !keep.iter().any(|&k| k) {
            return Err("pruning would zero the whole weight".into());
        }
        let (mut sig, mut sse, mut mx) = (0.0f64, 0.0f64, 0.0f64);
        let mut add = |v: f64, k: bool| {
            sig += v * v;
            if !k {
                sse += v * v;
                mx = mx.max(v.abs());
            }
        };
        match &t.data {
            Data::F16(x) => x.iter().zip(&keep).for_each(|(v, &k)| add(v.to_f64(), k)),
            Data::F32(x) => x
                .iter()
                .zip(&keep)
                .for_each(|(v, &k)| add(f64::from(*v), k)),
            _ => unreachable!("checked by finite()"),
        }
        detail.insert("pattern".into(), pattern.json());
        detail.extend(sparsity_detail(&keep));
        let (values, lut) = match &p.lut {
            Some(lp) => {
                let (l, e) = palettize_weight(&t, Some(&keep), lp)?;
                sse += e.sse;
                mx = mx.max(e.max_abs);
                detail.extend(lut_detail(lp, &l));
                detail.insert("lut_values".into(), "nonzero".into());
                (None, Some(l))
            }
            None => (Some(kept_values(&t.data, &keep, &t.dtype)?), None),
        };
        if let Some(r) = &p.lut_skipped {
            detail.insert("lut_skipped".into(), r.clone().into());
        }
        Ok(Compressed {
            quant: None,
            keep: Some(keep),
            values,
            lut,
            metrics: Metrics::from_sums(sig, sse, mx),
            detail,
        })
    }
}

impl Pattern {
    /// The SparseGPT form of this pattern: unstructured (exactly
    /// `round(s·numel)` per weight) or n:m along the Hessian's columns (the
    /// flattened input axis: `Cin·kh·kw` for a conv, as coremltools). Block
    /// pruning has no SparseGPT form.
    pub fn sparsegpt(&self) -> Result<SgptPattern, String> {
        match *self {
            Pattern::Unstructured(sparsity) => Ok(SgptPattern::Unstructured {
                sparsity,
                rule: MaskRule::ExactTotal,
            }),
            Pattern::NOutOfM { n, m, dim: 1 } => Ok(SgptPattern::NOfM { n, m }),
            Pattern::NOutOfM { dim, .. } => Err(format!(
                "sparsegpt n:m runs along the input axis (dim 1), not dim {dim}"
            )),
            Pattern::Blocks { .. } => {
                Err("block pruning (--block-size) is magnitude-only; sparsegpt prunes single weights or n:m".into())
            }
        }
    }
}

/// The compressed form of a SparseGPT result: the kept values are the
/// compensated ones (they differ from the input), so the error against the
/// input is reported, and, with a LUT, the compensated kept values are
/// palettized exactly as `palettize` would.
fn sparsegpt_compressed(
    t: &crate::mil::Tensor,
    r: &LayerResult,
    pattern: Pattern,
    p: &PrunePlan,
    mut detail: serde_json::Map<String, serde_json::Value>,
) -> Result<Compressed, String> {
    let keep = r.keep.clone();
    if !keep.iter().any(|&k| k) {
        return Err("pruning would zero the whole weight".into());
    }
    let pruned_t = crate::mil::Tensor {
        dtype: t.dtype,
        shape: t.shape.clone(),
        data: r.values.clone(),
    };
    detail.insert("method".into(), "sparsegpt".into());
    detail.insert("pattern".into(), pattern.json());
    detail.extend(sparsity_detail(&keep));
    detail.insert("stage".into(), r.stage.clone().into());
    detail.insert("layer_kind".into(), r.kind.into());
    detail.insert("layer_loss".into(), r.loss.into());
    detail.insert("output_rel_error".into(), r.rel_error.into());
    detail.insert("dead_inputs".into(), r.dead_columns.into());
    detail.insert("percdamp".into(), r.percdamp.into());
    detail.insert("calibration_vectors".into(), r.vectors.into());
    let as_f64 = |d: &Data| -> Result<Vec<f64>, String> {
        match d {
            Data::F16(v) => Ok(v.iter().map(|x| x.to_f64()).collect()),
            Data::F32(v) => Ok(v.iter().map(|&x| f64::from(x)).collect()),
            _ => Err("weight is not an fp16/fp32 tensor".into()),
        }
    };
    let orig = as_f64(&t.data)?;
    let (values, lut, decoded) = match &p.lut {
        Some(lp) => {
            let (l, _) = palettize_weight(&pruned_t, Some(&keep), lp)?;
            let dec = decode_sparse_lut(&l, &t.shape, &keep)?;
            detail.extend(lut_detail(lp, &l));
            detail.insert("lut_values".into(), "nonzero".into());
            (None, Some(l), dec)
        }
        None => {
            let all = as_f64(&r.values)?;
            let dec: Vec<f64> = all
                .iter()
                .zip(&keep)
                .map(|(&v, &k)| if k { v } else { 0.0 })
                .collect();
            (Some(kept_values(&r.values, &keep, &t.dtype)?), None, dec)
        }
    };
    if let Some(reason) = &p.lut_skipped {
        detail.insert("lut_skipped".into(), reason.clone().into());
    }
    let (mut sig, mut sse, mut mx) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in orig.iter().zip(&decoded) {
        sig += a * a;
        sse += (a - b) * (a - b);
        mx = mx.max((a - b).abs());
    }
    Ok(Compressed {
        quant: None,
        keep: Some(keep),
        values,
        lut,
        metrics: Metrics::from_sums(sig, sse, mx),
        detail,
    })
}

/// The dense values a sparse LUT decodes to (zeros where not kept).
fn decode_sparse_lut(
    l: &crate::compress::emit::Lut,
    shape: &[usize],
    keep: &[bool],
) -> Result<Vec<f64>, String> {
    let table: Vec<f64> = match &l.lut {
        Data::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        Data::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        _ => return Err("LUT is not fp16/fp32".into()),
    };
    let inner: usize = shape[l.axis + 1..].iter().product();
    let len = shape[l.axis];
    let k = 1usize << l.nbits;
    let mut idx = l.indices.iter();
    Ok(keep
        .iter()
        .enumerate()
        .map(|(e, &kept)| {
            if !kept {
                return 0.0;
            }
            let i = *idx.next().expect("one index per kept element") as usize;
            let g = if l.groups == 1 {
                0
            } else {
                ((e / inner) % len) / l.group_size
            };
            table[g * k + i]
        })
        .collect())
}

/// The values at kept positions, in row-major order (the sparse form's
/// non-zero data).
fn kept_values(d: &Data, keep: &[bool], dtype: &crate::mil::DType) -> Result<Data, String> {
    fn take<T: Copy>(v: &[T], keep: &[bool]) -> Vec<T> {
        v.iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(v, _)| *v)
            .collect()
    }
    match d {
        Data::F16(v) => Ok(Data::F16(take(v, keep))),
        Data::F32(v) => Ok(Data::F32(take(v, keep))),
        _ => Err(format!("dtype {dtype} is not fp16/fp32")),
    }
}

/// Whether every value is finite; `Err` for a non-float tensor.
fn finite(d: &Data) -> Result<bool, String> {
    match d {
        Data::F16(v) => Ok(v.iter().all(|x| x.is_finite())),
        Data::F32(v) => Ok(v.iter().all(|x| x.is_finite())),
        _ => Err("weight is not an fp16/fp32 tensor".into()),
    }
}
