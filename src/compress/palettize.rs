//! The palettize pass: every selected const weight becomes a
//! `constexpr_lut_to_dense` (iOS16 attribute form below the iOS18 opset, the
//! iOS18 input form with per-group LUTs from it on).
//!
//! Work is planned first (which weights, with which settings, skipped
//! why), then computed in parallel batches ahead of the writer, which
//! streams the results out in program order; output bytes therefore do not
//! depend on the thread count.

use super::config::{Granularity, OptimizationConfig, PalettizeEntry};
use super::driver::{OpRewriter, Rewritten};
use super::emit::{inline_arg, tensor_value, Names};
use super::select::{channel_axis, const_weights, stored_bytes, ConstWeight, Selection};
use super::target::{output_target, refuse_compressed, upgrade};
use crate::error::Error;
use crate::kernels::bits;
use crate::kernels::palettize::{
    palettize_f16, palettize_f32, GroupError, GroupError2, Mode, Scratch16,
};
use crate::mil::value::{
    decode_value, immediate_value, string_value, tensor_value_type, BlobFiles,
};
use crate::mil::{DType, Data, FunctionIndex, Tensor};
use crate::model::Target;
use crate::package::{Package, WeightSink};
use crate::proto::mil::{NamedValueType, Operation};
use crate::proto::spec::Model;
use crate::report::{Metrics, WeightReport};
use half::f16;
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Settings for one weight after resolving config levels and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// LUT mode.
    pub mode: Mode,
    /// Index bits (for `unique` without `--nbits`: the smallest that fits).
    pub nbits: Option<u32>,
    /// Granularity.
    pub granularity: Granularity,
    /// Channels per group.
    pub group_size: usize,
    /// Output-channel axis override.
    pub channel_axis: Option<i64>,
    /// Element-count threshold (strictly greater is compressed).
    pub weight_threshold: usize,
}

/// What to do with one weight.
#[derive(Debug, Clone)]
enum Plan {
    Skip(String),
    Do { settings: Settings, axis: usize },
}

#[derive(Debug, Clone)]
struct Planned {
    weight: ConstWeight,
    plan: Plan,
    bytes_before: u64,
}

/// A computed palettization of one weight.
#[derive(Debug)]
struct Computed {
    nbits: u32,
    groups: usize,
    axis: usize,
    group_size: usize,
    /// Unpacked indices, weight shape, row-major.
    indices: Vec<u8>,
    /// `groups * 2^nbits` entries (group-major).
    lut: Data,
    metrics: Metrics,
}

/// Options of the palettize pass.
#[derive(Debug, Clone)]
pub struct PalettizeOptions {
    /// The three-level config (flags already folded into its global level).
    pub config: OptimizationConfig,
    /// Name/op-type selection.
    pub selection: Selection,
    /// Allow moving the program to the iOS18 opset when a setting needs it.
    pub upgrade_opset: bool,
    /// Minimum deployment target requested (spec version).
    pub min_spec: Option<i32>,
}

/// Fully resolved settings, or the reason a setting is invalid.
fn settings(e: &PalettizeEntry) -> Result<Settings, String> {
    let mode = e.mode.unwrap_or(Mode::Kmeans);
    let nbits = e.nbits;
    match (mode, nbits) {
        (Mode::Kmeans | Mode::Uniform, None) => {
            return Err("--nbits is required for kmeans and uniform modes".into())
        }
        (_, Some(n)) if ![1, 2, 3, 4, 6, 8].contains(&n) => {
            return Err(format!("nbits {n} is not one of 1, 2, 3, 4, 6, 8"))
        }
        _ => {}
    }
    let granularity = e.granularity.unwrap_or(if e.group_size.is_some() {
        Granularity::PerGroupedChannel
    } else {
        Granularity::PerTensor
    });
    let group_size = e.group_size.unwrap_or(32);
    if group_size == 0 {
        return Err("group size must be positive".into());
    }
    Ok(Settings {
        mode,
        nbits,
        granularity,
        group_size,
        channel_axis: e.channel_axis,
        weight_threshold: e.weight_threshold.unwrap_or(2048),
    })
}

/// The palettize pass over one package.
pub struct Palettize<'p> {
    pkg: &'p Package,
    model_path: PathBuf,
    plans: BTreeMap<(String, usize), Planned>,
    results: BTreeMap<(String, usize), Result<Computed, String>>,
    /// The target the output is written for.
    pub out_target: &'static Target,
    ios18_ops: bool,
    /// Per-weight lines, in program order.
    pub reports: Vec<WeightReport>,
    /// Op and value names in use, per function (new op names must not
    /// collide with them).
    names: Names,
}

impl<'p> Palettize<'p> {
    /// Plans the pass: selects weights, resolves settings, checks the
    /// deployment target. Errors here are user errors (bad settings, target
    /// too old without `--upgrade-opset`).
    pub fn plan(pkg: &'p Package, opts: &PalettizeOptions) -> Result<Self, String> {
        let prog = pkg.program();
        // Already-compressed weights would need the joint path (sparse +
        // LUT) or a decompress first; refuse rather than silently skip.
        refuse_compressed(prog, "palettizing")?;
        let mut plans = BTreeMap::new();
        let mut need_ios18 = false;
        let mut any = false;
        for (fname, func) in &prog.functions {
            let index = FunctionIndex::new(fname, func)
                .map_err(|e| format!("{}: {e}", pkg.model_path().display()))?;
            for w in const_weights(&index) {
                let bytes_before = stored_bytes(&pkg.blobs, &index, &w);
                let consumers: Vec<(String, String)> = w
                    .consumers
                    .iter()
                    .map(|(n, t, _)| (n.clone(), t.clone()))
                    .collect();
                let plan = (|| -> Result<Plan, String> {
                    if let Some(b) = &w.blocked {
                        return Ok(Plan::Skip(b.clone()));
                    }
                    if let Some(r) = opts.selection.reject(&w) {
                        return Ok(Plan::Skip(r));
                    }
                    let Some(entry) = opts
                        .config
                        .resolve(&w.const_name, &consumers)
                        .map_err(|e| e.to_string())?
                    else {
                        return Ok(Plan::Skip("disabled by config".into()));
                    };
                    let s = settings(&entry)?;
                    if w.numel() <= s.weight_threshold {
                        return Ok(Plan::Skip(format!(
                            "at most weight threshold ({} <= {} elements)",
                            w.numel(),
                            s.weight_threshold
                        )));
                    }
                    if w.shape.len() < 2 {
                        return Ok(Plan::Skip("rank < 2".into()));
                    }
                    let axis = match s.channel_axis {
                        Some(a) => {
                            let r = w.shape.len() as i64;
                            if a < -r || a >= r {
                                return Err(format!(
                                    "channel axis {a} is out of range for {}",
                                    w.const_name
                                ));
                            }
                            (if a < 0 { a + r } else { a }) as usize
                        }
                        None => match channel_axis(&index, &w, &pkg.blobs) {
                            Ok(a) => a,
                            Err(e) if s.granularity == Granularity::PerGroupedChannel => {
                                return Ok(Plan::Skip(e))
                            }
                            Err(_) => 0,
                        },
                    };
                    if s.granularity == Granularity::PerGroupedChannel
                        && w.shape[axis] % s.group_size != 0
                    {
                        return Ok(Plan::Skip(format!(
                            "channels not divisible by group size ({} on axis {axis}, group size {})",
                            w.shape[axis], s.group_size
                        )));
                    }
                    Ok(Plan::Do { settings: s, axis })
                })()?;
                if let Plan::Do { settings: s, .. } = &plan {
                    any = true;
                    if s.granularity == Granularity::PerGroupedChannel || s.nbits == Some(3) {
                        need_ios18 = true;
                    }
                }
                plans.insert(
                    (fname.clone(), w.op_index),
                    Planned {
                        weight: w,
                        plan,
                        bytes_before,
                    },
                );
            }
        }
        let out_target = output_target(
            &pkg.model,
            any,
            need_ios18.then_some("per-grouped-channel and 3-bit palettization"),
            opts.upgrade_opset,
            opts.min_spec,
        )?;
        let names = Names::collect(prog)?;
        Ok(Self {
            pkg,
            model_path: pkg.model_path(),
            plans,
            results: BTreeMap::new(),
            out_target,
            ios18_ops: out_target.spec >= 9,
            reports: Vec::new(),
            names,
        })
    }

    /// Number of weights that will be compressed.
    pub fn planned(&self) -> usize {
        self.plans
            .values()
            .filter(|p| matches!(p.plan, Plan::Do { .. }))
            .count()
    }

    /// Computes every not-yet-computed planned weight of `func` from
    /// `from` onwards, up to an element budget, in parallel.
    fn compute_batch(&mut self, index: &FunctionIndex<'_>, from: usize) {
        const BUDGET: usize = 64 << 20; // elements per batch
        let mut batch = Vec::new();
        let mut total = 0usize;
        for ((f, i), p) in self.plans.range((index.name.to_string(), from)..) {
            if f != index.name {
                break;
            }
            if let Plan::Do { settings, axis } = &p.plan {
                if self.results.contains_key(&(f.clone(), *i)) {
                    continue;
                }
                if !batch.is_empty() && total + p.weight.numel() > BUDGET {
                    break;
                }
                total += p.weight.numel();
                batch.push((*i, p.weight.clone(), settings.clone(), *axis));
            }
        }
        let blobs = &self.pkg.blobs;
        let out: Vec<(usize, Result<Computed, String>)> = batch
            .into_par_iter()
            .map(|(i, w, s, axis)| {
                let op = index.ops[i].1;
                let r = compute(op, &w, &s, axis, blobs);
                (i, r)
            })
            .collect();
        for (i, r) in out {
            self.results.insert((index.name.to_string(), i), r);
        }
    }
}

/// LUT and indices of one group, or why it failed.
type GroupResult<T> = Result<(Vec<T>, Vec<u8>, GroupError2), GroupError>;

/// Splits `shape` around `axis`: (outer, channels, inner).
fn split_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

fn compute(
    op: &Operation,
    w: &ConstWeight,
    s: &Settings,
    axis: usize,
    blobs: &BlobFiles,
) -> Result<Computed, String> {
    let val = op.attributes.get("val").ok_or("const has no value")?;
    let t = decode_value(val, blobs, &w.const_name).map_err(|e| e.to_string())?;
    let (outer, chans, inner) = split_axis(&t.shape, axis);
    let (groups, gs) = match s.granularity {
        Granularity::PerTensor => (1, chans),
        Granularity::PerGroupedChannel => (chans / s.group_size, s.group_size),
    };
    // Positions of group g: for every outer index, channels [g*gs, (g+1)*gs).
    let gather = |g: usize| -> Vec<usize> {
        let mut v = Vec::with_capacity(outer * gs * inner);
        for o in 0..outer {
            let start = (o * chans + g * gs) * inner;
            v.extend(start..start + gs * inner);
        }
        v
    };
    let contiguous = outer == 1;
    let nbits_for_unique =
        |count: usize| [1u32, 2, 3, 4, 6, 8].into_iter().find(|&b| count <= 1 << b);
    match &t.data {
        Data::F16(x) => {
            // Unique mode without nbits: smallest width that fits every group.
            let nbits = match s.nbits {
                Some(n) => n,
                None => {
                    let mut m = 0usize;
                    for g in 0..groups {
                        let vals: BTreeSet<u16> = if contiguous {
                            x[g * gs * inner..(g + 1) * gs * inner]
                                .iter()
                                .map(|v| v.to_bits())
                                .collect()
                        } else {
                            gather(g).into_iter().map(|i| x[i].to_bits()).collect()
                        };
                        m = m.max(vals.len());
                    }
                    nbits_for_unique(m).ok_or(format!("{m} unique values need more than 8 bits"))?
                }
            };
            let res: Vec<GroupResult<f16>> = (0..groups)
                .into_par_iter()
                .map_init(Scratch16::default, |sc, g| {
                    let r = if contiguous {
                        palettize_f16(&x[g * gs * inner..(g + 1) * gs * inner], nbits, s.mode, sc)
                    } else {
                        let vals: Vec<f16> = gather(g).into_iter().map(|i| x[i]).collect();
                        palettize_f16(&vals, nbits, s.mode, sc)
                    };
                    r.map(|gr| (gr.lut, gr.indices, gr.error))
                })
                .collect();
            let mut indices = vec![0u8; x.len()];
            let mut lut = Vec::with_capacity(groups << nbits);
            let mut acc = GroupError2::default();
            for (g, r) in res.into_iter().enumerate() {
                let (l, idx, e) = r.map_err(group_err)?;
                acc.add(&e);
                if contiguous {
                    indices[g * gs * inner..(g + 1) * gs * inner].copy_from_slice(&idx);
                } else {
                    for (p, v) in gather(g).into_iter().zip(idx) {
                        indices[p] = v;
                    }
                }
                lut.extend(l);
            }
            let metrics = Metrics::from_sums(acc.signal, acc.sse, acc.max_abs);
            Ok(Computed {
                nbits,
                groups,
                axis,
                group_size: gs,
                indices,
                lut: Data::F16(lut),
                metrics,
            })
        }
        Data::F32(x) => {
            let nbits = match s.nbits {
                Some(n) => n,
                None => {
                    let m = x.iter().map(|v| v.to_bits()).collect::<BTreeSet<_>>().len();
                    nbits_for_unique(m).ok_or(format!("{m} unique values need more than 8 bits"))?
                }
            };
            let res: Vec<GroupResult<f32>> = (0..groups)
                .into_par_iter()
                .map(|g| {
                    let vals: Vec<f32> = gather(g).into_iter().map(|i| x[i]).collect();
                    palettize_f32(&vals, nbits, s.mode).map(|gr| (gr.lut, gr.indices, gr.error))
                })
                .collect();
            let mut indices = vec![0u8; x.len()];
            let mut lut = Vec::with_capacity(groups << nbits);
            let mut acc = GroupError2::default();
            for (g, r) in res.into_iter().enumerate() {
                let (l, idx, e) = r.map_err(group_err)?;
                acc.add(&e);
                for (p, v) in gather(g).into_iter().zip(idx) {
                    indices[p] = v;
                }
                lut.extend(l);
            }
            let metrics = Metrics::from_sums(acc.signal, acc.sse, acc.max_abs);
            Ok(Computed {
                nbits,
                groups,
                axis,
                group_size: gs,
                indices,
                lut: Data::F32(lut),
                metrics,
            })
        }
        _ => Err(format!("dtype {} is not fp16/fp32", t.dtype)),
    }
}

fn group_err(e: GroupError) -> String {
    match e {
        GroupError::NonFinite => "contains NaN or infinity".into(),
        GroupError::TooManyUnique(n) => {
            format!("{n} unique values do not fit the requested nbits (mode unique)")
        }
    }
}

fn uint_dtype(nbits: u32) -> DType {
    match nbits {
        1 => DType::Uint1,
        2 => DType::Uint2,
        3 => DType::Uint3,
        4 => DType::Uint4,
        6 => DType::Uint6,
        _ => DType::Uint8,
    }
}

impl Palettize<'_> {
    fn build_op(
        &self,
        w: &ConstWeight,
        c: &Computed,
        file: &str,
        sink: &mut WeightSink<'_>,
        op_name: &str,
    ) -> Result<Operation, Error> {
        let k = 1usize << c.nbits;
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_string(), string_value(op_name));
        let mut inputs = BTreeMap::new();
        let lut_dtype = w.dtype;
        if self.ios18_ops {
            let idx = Tensor {
                dtype: uint_dtype(c.nbits),
                shape: w.shape.clone(),
                data: Data::U8(c.indices.clone()),
            };
            let mut lshape = vec![1usize; w.shape.len() + 2];
            lshape[c.axis] = c.groups;
            lshape[w.shape.len()] = k;
            let lut = Tensor {
                dtype: lut_dtype,
                shape: lshape,
                data: c.lut.clone(),
            };
            inputs.insert(
                "indices".to_string(),
                inline_arg(tensor_value(
                    &idx,
                    sink,
                    file,
                    self.out_target.spec,
                    &self.model_path,
                )?),
            );
            inputs.insert(
                "lut".to_string(),
                inline_arg(tensor_value(
                    &lut,
                    sink,
                    file,
                    self.out_target.spec,
                    &self.model_path,
                )?),
            );
        } else {
            // iOS16 form: packed indices as a flat uint8 vector, a rank-1 LUT
            // and the shape as uint32, all as attributes.
            let packed = bits::pack(&c.indices, c.nbits);
            let idx = Tensor {
                dtype: DType::Uint8,
                shape: vec![packed.len()],
                data: Data::U8(packed),
            };
            let lut = Tensor {
                dtype: lut_dtype,
                shape: vec![k],
                data: c.lut.clone(),
            };
            let shape = Tensor {
                dtype: DType::Uint32,
                shape: vec![w.shape.len()],
                data: Data::U32(w.shape.iter().map(|&d| d as u32).collect()),
            };
            attributes.insert(
                "indices".to_string(),
                tensor_value(&idx, sink, file, self.out_target.spec, &self.model_path)?,
            );
            attributes.insert(
                "lut".to_string(),
                tensor_value(&lut, sink, file, self.out_target.spec, &self.model_path)?,
            );
            attributes.insert(
                "shape".to_string(),
                immediate_value(&shape).map_err(|e| Error::mil(&self.model_path, e))?,
            );
        }
        Ok(Operation {
            r#type: "constexpr_lut_to_dense".into(),
            inputs,
            outputs: vec![NamedValueType {
                name: w.value_name.clone(),
                r#type: Some(tensor_value_type(w.dtype, &w.shape)),
            }],
            blocks: vec![],
            attributes,
        })
    }
}

impl OpRewriter for Palettize<'_> {
    fn rewrite(
        &mut self,
        index: &FunctionIndex<'_>,
        op_index: usize,
        op: &Operation,
        _blobs: &BlobFiles,
        sink: &mut WeightSink<'_>,
    ) -> Result<Rewritten, Error> {
        let key = (index.name.to_string(), op_index);
        let Some(planned) = self.plans.get(&key).cloned() else {
            return Ok(Rewritten::Keep);
        };
        let w = &planned.weight;
        let mut report = WeightReport {
            function: index.name.to_string(),
            name: w.const_name.clone(),
            ops: w.consumers.iter().map(|c| c.0.clone()).collect(),
            op_types: w.consumers.iter().map(|c| c.1.clone()).collect(),
            shape: w.shape.clone(),
            dtype: w.dtype.to_string(),
            bytes_before: planned.bytes_before,
            bytes_after: planned.bytes_before,
            skipped: None,
            detail: None,
            metrics: None,
        };
        let Plan::Do { settings, .. } = &planned.plan else {
            if let Plan::Skip(r) = &planned.plan {
                report.skipped = Some(r.clone());
            }
            self.reports.push(report);
            return Ok(Rewritten::Keep);
        };
        if !self.results.contains_key(&key) {
            self.compute_batch(index, op_index);
        }
        let c = match self.results.remove(&key).expect("computed above") {
            Ok(c) => c,
            Err(reason) => {
                report.skipped = Some(reason);
                self.reports.push(report);
                return Ok(Rewritten::Keep);
            }
        };
        let file = match op.attributes.get("val").and_then(|v| v.value.as_ref()) {
            Some(crate::proto::mil::value::Value::BlobFileValue(bv)) => bv.file_name.clone(),
            _ => crate::package::DEFAULT_WEIGHT_FILE.to_string(),
        };
        let before = sink.bytes_written(&file);
        let op_name = self
            .names
            .fresh(index.name, &format!("{}_palettized", w.const_name));
        let new_op = self.build_op(w, &c, &file, sink, &op_name)?;
        report.bytes_after = sink.bytes_written(&file) - before;
        report.detail = Some(serde_json::json!({
            "mode": settings.mode,
            "nbits": c.nbits,
            "granularity": settings.granularity,
            "channel_axis": c.axis,
            "group_size": if c.groups > 1 { Some(c.group_size) } else { None },
            "groups": c.groups,
        }));
        report.metrics = Some(c.metrics);
        self.reports.push(report);
        Ok(Rewritten::Replace(vec![new_op]))
    }

    fn finish_model(&mut self, model: &mut Model) -> Result<(), Error> {
        upgrade(model, self.out_target);
        Ok(())
    }
}
