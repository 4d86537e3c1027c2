//! The prune pass (magnitude): every selected const weight becomes a
//! `constexpr_sparse_to_dense` holding a bit mask and the kept values
//! (iOS16 attribute form with a packed uint8 mask below the iOS18 opset,
//! the iOS18 input form with a uint1 mask from it on).
//!
//! Unstructured pruning zeroes exactly `round(sparsity · numel)` weights per
//! tensor; `--n-m N:M` zeroes exactly N of every M consecutive weights
//! along the input axis (axis 1 of conv/linear weights). Ties are broken
//! by position (see [`crate::kernels::prune`]).

use super::driver::{OpRewriter, Rewritten};
use super::emit::{inline_arg, tensor_value, Names};
use super::select::{const_weights, stored_bytes, ConstWeight, Selection};
use super::target::{output_target, refuse_compressed, upgrade};
use crate::error::Error;
use crate::kernels::bits;
use crate::kernels::prune::{magnitude_mask, nm_mask};
use crate::mil::value::{
    decode_value, immediate_value, string_value, tensor_value_type, BlobFiles,
};
use crate::mil::{DType, Data, FunctionIndex, Tensor};
use crate::model::Target;
use crate::package::{Package, WeightSink};
use crate::proto::mil::{NamedValueType, Operation};
use crate::proto::spec::Model;
use crate::report::{Metrics, WeightReport};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What structure to prune with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// This fraction of each tensor, smallest magnitudes first.
    Unstructured(f64),
    /// N of every M consecutive weights along the input axis.
    NOutOfM(usize, usize),
}

/// Options of the prune pass.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Sparsity pattern.
    pub pattern: Pattern,
    /// Compress only weights with more elements than this.
    pub weight_threshold: usize,
    /// Name/op-type selection.
    pub selection: Selection,
    /// Allow a newer opset if needed.
    pub upgrade_opset: bool,
    /// Minimum output spec version.
    pub min_spec: Option<i32>,
}

#[derive(Debug, Clone)]
struct Planned {
    weight: ConstWeight,
    skip: Option<String>,
    bytes_before: u64,
}

struct Computed {
    keep: Vec<bool>,
    kept: Data,
    metrics: Metrics,
}

/// The prune pass over one package.
pub struct Prune<'p> {
    pkg: &'p Package,
    model_path: PathBuf,
    pattern: Pattern,
    plans: BTreeMap<(String, usize), Planned>,
    results: BTreeMap<(String, usize), Result<Computed, String>>,
    /// The target the output is written for.
    pub out_target: &'static Target,
    names: Names,
    /// Per-weight lines, in program order.
    pub reports: Vec<WeightReport>,
}

impl<'p> Prune<'p> {
    /// Plans the pass; errors are user errors.
    pub fn plan(pkg: &'p Package, opts: &PruneOptions) -> Result<Self, String> {
        match opts.pattern {
            Pattern::Unstructured(s) if !(s > 0.0 && s < 1.0) => {
                return Err(format!("sparsity {s} is outside (0, 1)"))
            }
            Pattern::NOutOfM(n, m) if m == 0 || n == 0 || n >= m => {
                return Err(format!("--n-m {n}:{m} needs 0 < N < M"))
            }
            _ => {}
        }
        let prog = pkg.program();
        refuse_compressed(prog, "pruning")?;
        let mut plans = BTreeMap::new();
        let mut any = false;
        for (fname, func) in &prog.functions {
            let index = FunctionIndex::new(fname, func)
                .map_err(|e| format!("{}: {e}", pkg.model_path().display()))?;
            for w in const_weights(&index) {
                let bytes_before = stored_bytes(&pkg.blobs, &index, &w);
                let skip = if let Some(b) = &w.blocked {
                    Some(b.clone())
                } else if let Some(r) = opts.selection.reject(&w) {
                    Some(r)
                } else if w.numel() <= opts.weight_threshold {
                    Some(format!(
                        "at most weight threshold ({} <= {} elements)",
                        w.numel(),
                        opts.weight_threshold
                    ))
                } else if w.shape.len() < 2 {
                    Some("rank < 2".into())
                } else if let Pattern::NOutOfM(_, m) = opts.pattern {
                    if !w
                        .consumers
                        .iter()
                        .all(|(_, t, p)| (t == "conv" || t == "linear") && p == "weight")
                    {
                        Some("n:m pruning applies to conv/linear weights only".into())
                    } else if w.shape[1] % m != 0 {
                        Some(format!(
                            "input axis not divisible by M ({} on axis 1, M = {m})",
                            w.shape[1]
                        ))
                    } else {
                        None
                    }
                } else {
                    None
                };
                any |= skip.is_none();
                plans.insert(
                    (fname.clone(), w.op_index),
                    Planned {
                        weight: w,
                        skip,
                        bytes_before,
                    },
                );
            }
        }
        let out_target = output_target(&pkg.model, any, None, opts.upgrade_opset, opts.min_spec)?;
        Ok(Self {
            pkg,
            model_path: pkg.model_path(),
            pattern: opts.pattern,
            plans,
            results: BTreeMap::new(),
            out_target,
            names: Names::collect(prog)?,
            reports: Vec::new(),
        })
    }

    fn compute_batch(&mut self, index: &FunctionIndex<'_>, from: usize) {
        const BUDGET: usize = 64 << 20;
        let mut batch = Vec::new();
        let mut total = 0usize;
        for ((f, i), p) in self.plans.range((index.name.to_string(), from)..) {
            if f != index.name {
                break;
            }
            if p.skip.is_some() || self.results.contains_key(&(f.clone(), *i)) {
                continue;
            }
            if !batch.is_empty() && total + p.weight.numel() > BUDGET {
                break;
            }
            total += p.weight.numel();
            batch.push((*i, p.weight.clone()));
        }
        let blobs = &self.pkg.blobs;
        let pattern = self.pattern;
        let out: Vec<(usize, Result<Computed, String>)> = batch
            .into_par_iter()
            .map(|(i, w)| (i, compute(index.ops[i].1, &w, pattern, blobs)))
            .collect();
        for (i, r) in out {
            self.results.insert((index.name.to_string(), i), r);
        }
    }
}

fn compute(
    op: &Operation,
    w: &ConstWeight,
    pattern: Pattern,
    blobs: &BlobFiles,
) -> Result<Computed, String> {
    let val = op.attributes.get("val").ok_or("const has no value")?;
    let t = decode_value(val, blobs, &w.const_name).map_err(|e| e.to_string())?;
    let x = t.to_f32().ok_or("weight is not a float tensor")?;
    if x.iter().any(|v| !v.is_finite()) {
        return Err("contains NaN or infinity".into());
    }
    let mags: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let keep = match pattern {
        Pattern::Unstructured(s) => magnitude_mask(&mags, s),
        Pattern::NOutOfM(n, m) => {
            let inner: usize = t.shape[2..].iter().product();
            nm_mask(&mags, t.shape[0], t.shape[1], inner, n, m)
        }
    };
    let (mut sig, mut sse, mut mx) = (0.0f64, 0.0f64, 0.0f64);
    for (&v, &k) in x.iter().zip(&keep) {
        let v = f64::from(v);
        sig += v * v;
        if !k {
            sse += v * v;
            mx = mx.max(v.abs());
        }
    }
    let kept = match &t.data {
        Data::F16(v) => Data::F16(
            v.iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(v, _)| *v)
                .collect(),
        ),
        Data::F32(v) => Data::F32(
            v.iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(v, _)| *v)
                .collect(),
        ),
        _ => return Err(format!("dtype {} is not fp16/fp32", t.dtype)),
    };
    Ok(Computed {
        keep,
        kept,
        metrics: Metrics::from_sums(sig, sse, mx),
    })
}

impl Prune<'_> {
    fn build_op(
        &self,
        w: &ConstWeight,
        c: &Computed,
        file: &str,
        sink: &mut WeightSink<'_>,
        op_name: &str,
    ) -> Result<Operation, Error> {
        let spec = self.out_target.spec;
        let mp = &self.model_path;
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_string(), string_value(op_name));
        let mut inputs = BTreeMap::new();
        let nz = Tensor {
            dtype: w.dtype,
            shape: vec![c.kept.len()],
            data: c.kept.clone(),
        };
        let mask_bits: Vec<u8> = c.keep.iter().map(|&k| u8::from(k)).collect();
        if spec >= 9 {
            let mask = Tensor {
                dtype: DType::Uint1,
                shape: w.shape.clone(),
                data: Data::U8(mask_bits),
            };
            inputs.insert(
                "nonzero_data".to_string(),
                inline_arg(tensor_value(&nz, sink, file, spec, mp)?),
            );
            inputs.insert(
                "mask".to_string(),
                inline_arg(tensor_value(&mask, sink, file, spec, mp)?),
            );
        } else {
            let packed = bits::pack(&mask_bits, 1);
            let mask = Tensor {
                dtype: DType::Uint8,
                shape: vec![packed.len()],
                data: Data::U8(packed),
            };
            let shape = Tensor {
                dtype: DType::Uint32,
                shape: vec![w.shape.len()],
                data: Data::U32(w.shape.iter().map(|&d| d as u32).collect()),
            };
            attributes.insert(
                "nonzero_data".to_string(),
                tensor_value(&nz, sink, file, spec, mp)?,
            );
            attributes.insert(
                "mask".to_string(),
                tensor_value(&mask, sink, file, spec, mp)?,
            );
            attributes.insert(
                "shape".to_string(),
                immediate_value(&shape).map_err(|e| Error::mil(mp, e))?,
            );
        }
        Ok(Operation {
            r#type: "constexpr_sparse_to_dense".into(),
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

impl OpRewriter for Prune<'_> {
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
            skipped: planned.skip.clone(),
            detail: None,
            metrics: None,
        };
        if planned.skip.is_some() {
            self.reports.push(report);
            return Ok(Rewritten::Keep);
        }
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
        let name = self
            .names
            .fresh(index.name, &format!("{}_sparsified", w.const_name));
        let new_op = self.build_op(w, &c, &file, sink, &name)?;
        report.bytes_after = sink.bytes_written(&file) - before;
        let n = c.keep.len();
        let kept = c.kept.len();
        report.detail = Some(serde_json::json!({
            "method": "magnitude",
            "pattern": match self.pattern {
                Pattern::Unstructured(s) => serde_json::json!({"sparsity": s}),
                Pattern::NOutOfM(a, b) => serde_json::json!({"n_m": [a, b], "axis": 1}),
            },
            "sparsity": (n - kept) as f64 / n as f64,
            "pruned": n - kept,
            "nonzero": kept,
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
