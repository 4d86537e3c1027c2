//! The one weight pass that `palettize` and `prune` (and their joint form)
//! are instances of. A [`WeightPass`] says, per weight, what to do
//! ([`WeightPass::plan`]), how to compute it ([`WeightPass::compute`], pure
//! and run in parallel) and which ops replace it ([`WeightPass::build_op`]);
//! [`WeightRewriter`] does the rest, the same for every pass:
//!
//! ```text
//! plan every weight ─► output target ─► for each op in program order:
//!   planned? ─ no ─► keep (inline sparse ops are rewritten in the output's form)
//!      │ yes
//!      ▼
//!   computed? ─ no ─► compute it and the following planned weights of the
//!      │              function, up to an element budget, in parallel
//!      ▼
//!   build ops (blobs appended in program order) ─► report line
//! ```
//!
//! Work is computed ahead of the writer but written in program order, so
//! the output bytes do not depend on the thread count.

use super::driver::{OpRewriter, Rewritten};
use super::emit::{self, Emitter, JointNames, Lut, Names, Quant};
use super::select::{is_inline_sparse, stored_bytes, weight_file, weights, Source, Weight};
use super::target::{output_target, refuse_compressed, upgrade};
use crate::error::Error;
use crate::mil::constexpr::Evaluator;
use crate::mil::program::op_name;
use crate::mil::value::{
    decode_value, mapped_f16, tensor_type_of, tensor_value_type, BlobFiles, MappedF16,
};
use crate::mil::{Data, FunctionIndex, Tensor};
use crate::model::Target;
use crate::package::{Package, WeightSink};
use crate::proto::mil::{NamedValueType, Operation};
use crate::proto::spec::Model;
use crate::report::{Metrics, WeightReport};
use half::f16;
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// What to do with one weight.
#[derive(Debug, Clone)]
pub enum Decision<S> {
    /// Leave it as it is, for this reason.
    Skip(String),
    /// Compress it with these settings.
    Do(S),
}

/// A weight's values as the pass sees them.
#[derive(Debug)]
pub struct WeightData<'a> {
    /// The dense weight (zeros at pruned positions for a sparse input).
    /// When `mapped` is set, only its dtype and shape: `data` is empty.
    pub tensor: Tensor,
    /// An fp16 const's values read in place from the mapped weight file,
    /// given only to a pass whose [`WeightPass::reads_mapped`] is true.
    pub mapped: Option<MappedF16<'a>>,
    /// The input's keep mask, for a weight that is already sparse.
    pub keep: Option<Vec<bool>>,
}

/// A compressed weight: which elements are kept (sparse forms), how the
/// kept values are stored (as they are, or as LUT indices), the error
/// against the command's input, and the pass's report fields.
#[derive(Debug)]
pub struct Compressed {
    /// Keep mask over the dense shape (row-major); `None` = dense.
    pub keep: Option<Vec<bool>>,
    /// The kept values as they are (sparse without a LUT).
    pub values: Option<Data>,
    /// The kept values (or all values) as a LUT.
    pub lut: Option<Lut>,
    /// The values as linear-quantized codes (dense form).
    pub quant: Option<Quant>,
    /// Error of the reconstruction against the command's input.
    pub metrics: Metrics,
    /// Pass-specific report fields.
    pub detail: serde_json::Map<String, serde_json::Value>,
}

impl Compressed {
    /// Kept elements (all of them for a dense form).
    pub fn kept(&self, numel: usize) -> usize {
        self.keep
            .as_ref()
            .map_or(numel, |k| k.iter().filter(|&&b| b).count())
    }
}

/// One kind of weight compression.
pub trait WeightPass: Send + Sync {
    /// Per-weight settings.
    type Settings: Clone + Send + Sync;

    /// What to do with `w`. `Err` is a user error that stops the command
    /// (invalid settings); reasons to leave one weight alone are `Skip`.
    fn plan(
        &self,
        index: &FunctionIndex<'_>,
        w: &Weight,
        blobs: &BlobFiles,
    ) -> Result<Decision<Self::Settings>, String>;

    /// Why `s` on `w` needs the iOS18 opset, if it does.
    fn ios18_reason(&self, w: &Weight, s: &Self::Settings) -> Option<&'static str>;

    /// Compresses one weight (pure; runs on worker threads).
    fn compute(&self, input: WeightData<'_>, s: &Self::Settings) -> Result<Compressed, String>;

    /// Whether `compute` reads [`WeightData::mapped`]: fp16 consts are
    /// then given in place, without the copy a decoded tensor costs.
    fn reads_mapped(&self, _s: &Self::Settings) -> bool {
        false
    }

    /// The ops that replace the weight. The default writes the form
    /// `c` describes (see [`Builder::weight_ops`]).
    fn build_op(
        &self,
        b: &mut Builder<'_, '_, '_>,
        w: &Weight,
        c: &Compressed,
    ) -> Result<Vec<Operation>, Error> {
        b.weight_ops(w, c)
    }
}

/// Target options shared by every pass.
#[derive(Debug, Clone, Default)]
pub struct TargetOptions {
    /// Allow moving the program to the iOS18 opset when a setting needs it.
    pub upgrade_opset: bool,
    /// Minimum deployment target requested (spec version).
    pub min_spec: Option<i32>,
}

#[derive(Debug, Clone)]
struct Planned<S> {
    weight: Weight,
    decision: Decision<S>,
    bytes_before: u64,
}

/// Runs a [`WeightPass`] over a package (an [`OpRewriter`] for
/// [`super::rewrite_package`]).
pub struct WeightRewriter<'p, P: WeightPass> {
    pkg: &'p Package,
    model_path: PathBuf,
    pass: P,
    plans: BTreeMap<(String, usize), Planned<P::Settings>>,
    results: BTreeMap<(String, usize), Result<Compressed, String>>,
    /// The target the output is written for.
    pub out_target: &'static Target,
    names: Names,
    /// Per-weight lines, in program order.
    pub reports: Vec<WeightReport>,
}

impl<'p, P: WeightPass> WeightRewriter<'p, P> {
    /// Plans `pass` over `pkg`: every weight's decision, then the output
    /// target. `what` names the action for refusals ("palettizing");
    /// `sparse_input` allows inputs whose only compressed ops are inline
    /// `constexpr_sparse_to_dense` (the joint path). Errors are user
    /// errors.
    pub fn plan(
        pkg: &'p Package,
        pass: P,
        target: &TargetOptions,
        what: &str,
        sparse_input: bool,
    ) -> Result<Self, String> {
        let prog = pkg.program();
        refuse_compressed(prog, what, sparse_input)?;
        let mut plans = BTreeMap::new();
        let mut reasons = BTreeSet::new();
        let mut any = false;
        for (fname, func) in &prog.functions {
            let index = FunctionIndex::new(fname, func)
                .map_err(|e| format!("{}: {e}", pkg.model_path().display()))?;
            for w in weights(&index) {
                let bytes_before = stored_bytes(&pkg.blobs, &index, &w);
                let decision = match &w.blocked {
                    Some(b) => Decision::Skip(b.clone()),
                    None => pass.plan(&index, &w, &pkg.blobs)?,
                };
                if let Decision::Do(s) = &decision {
                    any = true;
                    reasons.extend(pass.ios18_reason(&w, s));
                }
                plans.insert(
                    (fname.clone(), w.op_index),
                    Planned {
                        weight: w,
                        decision,
                        bytes_before,
                    },
                );
            }
        }
        let why =
            (!reasons.is_empty()).then(|| reasons.into_iter().collect::<Vec<_>>().join(" and "));
        let out_target = output_target(
            &pkg.model,
            any,
            why.as_deref(),
            target.upgrade_opset,
            target.min_spec,
            sparse_input,
        )?;
        Ok(Self {
            pkg,
            model_path: pkg.model_path(),
            pass,
            plans,
            results: BTreeMap::new(),
            out_target,
            names: Names::collect(prog)?,
            reports: Vec::new(),
        })
    }

    /// The weights that will be compressed, with their settings (a
    /// data-aware pass such as SparseGPT fills its results in here).
    pub fn planned_mut(&mut self) -> impl Iterator<Item = (&Weight, &mut P::Settings)> {
        self.plans
            .values_mut()
            .filter_map(|p| match &mut p.decision {
                Decision::Do(s) => Some((&p.weight, s)),
                Decision::Skip(_) => None,
            })
    }

    /// Number of weights that will be compressed.
    pub fn planned(&self) -> usize {
        self.plans
            .values()
            .filter(|p| matches!(p.decision, Decision::Do(_)))
            .count()
    }

    /// Computes every not-yet-computed planned weight of `index` from op
    /// `from` onwards, up to an element budget, in parallel.
    fn compute_batch(&mut self, index: &FunctionIndex<'_>, from: usize) {
        const BUDGET: usize = 64 << 20; // elements per batch
        let mut batch = Vec::new();
        let mut total = 0usize;
        for ((f, i), p) in self.plans.range((index.name.to_string(), from)..) {
            if f != index.name {
                break;
            }
            let Decision::Do(s) = &p.decision else {
                continue;
            };
            if self.results.contains_key(&(f.clone(), *i)) {
                continue;
            }
            if !batch.is_empty() && total + p.weight.numel() > BUDGET {
                break;
            }
            total += p.weight.numel();
            batch.push((*i, p.weight.source, s.clone(), p.weight.numel()));
        }
        // Largest first: a big weight started last would leave the other
        // cores idle at the end of the batch. Results are keyed by op index,
        // so the order of computation does not reach the output.
        batch.sort_by_key(|&(i, _, _, numel)| (std::cmp::Reverse(numel), i));
        let blobs = &self.pkg.blobs;
        let pass = &self.pass;
        let out: Vec<(usize, Result<Compressed, String>)> = batch
            .into_par_iter()
            .with_max_len(1)
            .map(|(i, source, s, _)| {
                let r = load(index, i, source, blobs, pass.reads_mapped(&s)).and_then(|d| {
                    let (mapped, r) = (d.mapped, pass.compute(d, &s));
                    // Done with the mapped pages (a streamed multi-GB model
                    // keeps a small resident set).
                    if let Some(m) = mapped {
                        m.release();
                    }
                    r
                });
                (i, r)
            })
            .collect();
        for (i, r) in out {
            self.results.insert((index.name.to_string(), i), r);
        }
    }

    /// The inline sparse op `op` again, in the output's form (iOS16
    /// attribute form and iOS18 input form differ, and the output may have
    /// moved to iOS18).
    fn reemit_sparse(
        &mut self,
        index: &FunctionIndex<'_>,
        op: &Operation,
        sink: &mut WeightSink<'_>,
    ) -> Result<Operation, Error> {
        let parts = Evaluator::new(index, &self.pkg.blobs)
            .sparse_parts(op)
            .map_err(|e| Error::mil(&self.model_path, e))?;
        let name = op_name(op).unwrap_or_else(|| op.outputs[0].name.clone());
        let mut em = Emitter {
            sink,
            file: weight_file(op),
            spec: self.out_target.spec,
            model_path: &self.model_path,
        };
        emit::sparse_to_dense(
            &mut em,
            &name,
            op.outputs[0].clone(),
            &parts.shape,
            &parts.mask,
            &parts.nonzero_data,
        )
    }
}

/// Decodes a weight's values (on a worker thread); with `in_place`, an
/// fp16 const is borrowed from the mapped weight file instead.
fn load<'b>(
    index: &FunctionIndex<'_>,
    i: usize,
    source: Source,
    blobs: &'b BlobFiles,
    in_place: bool,
) -> Result<WeightData<'b>, String> {
    let op = index.ops[i].1;
    match source {
        Source::Const => {
            let val = op.attributes.get("val").ok_or("const has no value")?;
            let ctx = op_name(op).unwrap_or_default();
            if in_place {
                if let Some(m) = mapped_f16(val, blobs, &ctx).map_err(|e| e.to_string())? {
                    let (dtype, shape) =
                        tensor_type_of(val.r#type.as_ref(), &ctx).map_err(|e| e.to_string())?;
                    return Ok(WeightData {
                        tensor: Tensor {
                            dtype,
                            shape,
                            data: Data::F16(Vec::new()),
                        },
                        mapped: Some(m),
                        keep: None,
                    });
                }
            }
            let tensor = decode_value(val, blobs, &ctx).map_err(|e| e.to_string())?;
            Ok(WeightData {
                tensor,
                mapped: None,
                keep: None,
            })
        }
        Source::Sparse => {
            let p = Evaluator::new(index, blobs)
                .sparse_parts(op)
                .map_err(|e| e.to_string())?;
            let keep: Vec<bool> = p.mask.iter().map(|&b| b != 0).collect();
            fn scatter<T: Copy>(zero: T, nz: &[T], keep: &[bool]) -> Vec<T> {
                let mut it = nz.iter();
                keep.iter()
                    .map(|&k| {
                        if k {
                            *it.next().expect("counted")
                        } else {
                            zero
                        }
                    })
                    .collect()
            }
            let data = match &p.nonzero_data.data {
                Data::F16(v) => Data::F16(scatter(f16::ZERO, v, &keep)),
                Data::F32(v) => Data::F32(scatter(0.0, v, &keep)),
                _ => return Err(format!("dtype {} is not fp16/fp32", p.nonzero_data.dtype)),
            };
            Ok(WeightData {
                tensor: Tensor {
                    dtype: p.nonzero_data.dtype,
                    shape: p.shape,
                    data,
                },
                mapped: None,
                keep: Some(keep),
            })
        }
    }
}

/// What [`WeightPass::build_op`] writes with: the output's weight file and
/// target, and fresh op names in the weight's function.
pub struct Builder<'e, 's, 'a> {
    /// Where tensors go.
    pub em: Emitter<'s, 'a>,
    names: &'e mut Names,
    function: &'e str,
    /// The op being replaced.
    op: &'e Operation,
}

impl Builder<'_, '_, '_> {
    /// `base`, or `base_1`, ... if the name is taken.
    pub fn fresh(&mut self, base: &str) -> String {
        self.names.fresh(self.function, base)
    }

    /// A fresh name for the op that decodes a scaled LUT (empty when the
    /// LUT is stored as it is, so no name is taken).
    fn scale_op_name(&mut self, lut_op: &str, l: &Lut) -> String {
        if l.stored.is_some() {
            self.fresh(&format!("{lut_op}_lut"))
        } else {
            String::new()
        }
    }

    /// The ops for `c`: `constexpr_lut_to_dense` (dense LUT),
    /// `constexpr_sparse_to_dense` (sparse values), or the joint
    /// `constexpr_lut_to_sparse` → `constexpr_sparse_to_dense`. The op that
    /// consumers read keeps the weight's output name; a sparse op that was
    /// already in the input keeps its op name too, so that pruning then
    /// palettizing names things as the one-shot form does.
    pub fn weight_ops(&mut self, w: &Weight, c: &Compressed) -> Result<Vec<Operation>, Error> {
        let mask = || -> Vec<u8> {
            c.keep
                .as_ref()
                .expect("sparse forms have a mask")
                .iter()
                .map(|&k| u8::from(k))
                .collect()
        };
        let sparse_name = |b: &mut Self| match w.source {
            Source::Sparse => op_name(b.op).unwrap_or_else(|| w.value_name.clone()),
            Source::Const => b.fresh(&format!("{}_sparsified", w.const_name)),
        };
        if let (Some(keep), Some(q)) = (&c.keep, &c.quant) {
            // Joint sparse + quantized: the codes of the kept elements only.
            let kept_codes = match &q.codes {
                Data::I8(v) => Data::I8(
                    v.iter()
                        .zip(keep)
                        .filter(|(_, &k)| k)
                        .map(|(&c, _)| c)
                        .collect(),
                ),
                Data::U8(v) => Data::U8(
                    v.iter()
                        .zip(keep)
                        .filter(|(_, &k)| k)
                        .map(|(&c, _)| c)
                        .collect(),
                ),
                _ => unreachable!("codes are I8 or U8"),
            };
            let q = Quant {
                codes: kept_codes,
                ..q.clone()
            };
            let sparse = sparse_name(self);
            let sq_op = self.fresh(&format!("{sparse}_nonzero_data_quantized"));
            let out0 = self.fresh(&format!("{sq_op}_0"));
            let out1 = self.fresh(&format!("{sq_op}_1"));
            let names = JointNames {
                lut_op: &sq_op,
                scale_op: "",
                lut_outputs: [&out0, &out1],
                sparse_op: &sparse,
                output: &w.value_name,
            };
            return Ok(emit::sparse_quantized(
                &mut self.em,
                &names,
                w.dtype,
                &w.shape,
                &mask(),
                &q,
            )?
            .into());
        }
        if let (None, Some(q)) = (&c.keep, &c.quant) {
            let name = self.fresh(&format!("{}_quantized", w.const_name));
            return Ok(vec![emit::quantized(
                &mut self.em,
                &name,
                &w.value_name,
                w.dtype,
                &w.shape,
                q,
            )?]);
        }
        match (&c.keep, &c.values, &c.lut) {
            (None, _, Some(l)) => {
                let name = self.fresh(&format!("{}_palettized", w.const_name));
                let scale_op = self.scale_op_name(&name, l);
                emit::lut_to_dense(
                    &mut self.em,
                    &name,
                    &scale_op,
                    &w.value_name,
                    w.dtype,
                    &w.shape,
                    l,
                )
            }
            (Some(_), Some(v), None) => {
                let name = sparse_name(self);
                let nz = Tensor {
                    dtype: w.dtype,
                    shape: vec![v.len()],
                    data: v.clone(),
                };
                Ok(vec![emit::sparse_to_dense(
                    &mut self.em,
                    &name,
                    NamedValueType {
                        name: w.value_name.clone(),
                        r#type: Some(tensor_value_type(w.dtype, &w.shape)),
                    },
                    &w.shape,
                    &mask(),
                    &nz,
                )?])
            }
            (Some(_), None, Some(l)) => {
                let sparse = sparse_name(self);
                let lut_op = self.fresh(&format!("{sparse}_nonzero_data_palettized"));
                let out0 = self.fresh(&format!("{lut_op}_0"));
                let out1 = self.fresh(&format!("{lut_op}_1"));
                let scale_op = self.scale_op_name(&lut_op, l);
                let names = JointNames {
                    lut_op: &lut_op,
                    scale_op: &scale_op,
                    lut_outputs: [&out0, &out1],
                    sparse_op: &sparse,
                    output: &w.value_name,
                };
                emit::lut_to_sparse(&mut self.em, &names, w.dtype, &w.shape, &mask(), l)
            }
            _ => unreachable!("a pass's compute returns one of the three forms"),
        }
    }
}

/// Storage fields every compressed weight reports, and the size formula:
/// `mask_bits` (1 per element for sparse forms), `value_bits` (kept values
/// at `nbits`, or at the dtype's width without a LUT), `lut_bits`, their
/// sum in bytes as `predicted_bytes`, and for sparse forms whether the mask
/// pays for itself (`sparse_pays`).
fn storage_detail(w: &Weight, c: &Compressed) -> serde_json::Map<String, serde_json::Value> {
    let numel = w.numel();
    let kept = c.kept(numel);
    let dtype_bits = u64::from(w.dtype.bits());
    let mask_bits = if c.keep.is_some() { numel as u64 } else { 0 };
    let (value_bits, lut_bits) = match (&c.lut, &c.quant) {
        // A vector LUT has one index per `vector` elements and `vector`
        // values per entry.
        (Some(l), _) => (
            (kept / l.vector) as u64 * u64::from(l.nbits),
            match &l.stored {
                None => ((l.groups as u64) << l.nbits) * l.vector as u64 * dtype_bits,
                // Stored entries, plus a scale (and offset) per LUT.
                Some(st) => {
                    let g = l.groups as u64;
                    let scales = st.scale.len() as u64;
                    (g << l.nbits) * u64::from(st.dtype.bits())
                        + scales * dtype_bits
                        + st.offset
                            .as_ref()
                            .map_or(0, |o| o.len() as u64 * u64::from(st.dtype.bits()))
                }
            },
        ),
        (None, Some(q)) => (kept as u64 * u64::from(q.qdtype.bits()), 0),
        (None, None) => (kept as u64 * dtype_bits, 0),
    };
    // Quantization parameters: a scale per block, and a zero point per
    // block when stored (always in the iOS16 form; counted as stored in
    // the iOS18 form only when nonzero, as written).
    let (scale_bits, offset_bits) = match &c.quant {
        Some(q) => {
            let blocks = q.scale.len() as u64;
            (
                blocks * dtype_bits,
                if q.offset.is_some() {
                    blocks * u64::from(q.qdtype.bits())
                } else {
                    0
                },
            )
        }
        None => (0, 0),
    };
    let mut m = serde_json::Map::new();
    m.insert("mask_bits".into(), mask_bits.into());
    m.insert("value_bits".into(), value_bits.into());
    m.insert("lut_bits".into(), lut_bits.into());
    if c.quant.is_some() {
        m.insert("scale_bits".into(), scale_bits.into());
        m.insert("offset_bits".into(), offset_bits.into());
    }
    m.insert(
        "predicted_bytes".into(),
        (mask_bits.div_ceil(8)
            + value_bits.div_ceil(8)
            + lut_bits / 8
            + scale_bits / 8
            + offset_bits.div_ceil(8))
        .into(),
    );
    if c.keep.is_some() {
        // The mask costs 1 bit per element and saves `bits` per pruned
        // element: it pays iff sparsity > 1/bits (see README).
        let bits = c.lut.as_ref().map_or(dtype_bits, |l| u64::from(l.nbits));
        let sparsity = (numel - kept) as f64 / numel as f64;
        m.insert("sparse_pays".into(), (sparsity * bits as f64 > 1.0).into());
    }
    m
}

impl<P: WeightPass> OpRewriter for WeightRewriter<'_, P> {
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
            if is_inline_sparse(op) {
                return Ok(Rewritten::Replace(vec![
                    self.reemit_sparse(index, op, sink)?
                ]));
            }
            return Ok(Rewritten::Keep);
        };
        let w = &planned.weight;
        let file = weight_file(op);
        let before = sink.bytes_written(&file);
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
        let computed = match &planned.decision {
            Decision::Skip(r) => Err(r.clone()),
            Decision::Do(_) => {
                if !self.results.contains_key(&key) {
                    self.compute_batch(index, op_index);
                }
                self.results.remove(&key).expect("computed above")
            }
        };
        let c = match computed {
            Ok(c) => c,
            Err(reason) => {
                report.skipped = Some(reason);
                let r = if w.source == Source::Sparse {
                    let new = self.reemit_sparse(index, op, sink)?;
                    report.bytes_after = sink.bytes_written(&file) - before;
                    Rewritten::Replace(vec![new])
                } else {
                    Rewritten::Keep
                };
                self.reports.push(report);
                return Ok(r);
            }
        };
        let mut b = Builder {
            em: Emitter {
                sink,
                file: file.clone(),
                spec: self.out_target.spec,
                model_path: &self.model_path,
            },
            names: &mut self.names,
            function: index.name,
            op,
        };
        let ops = self.pass.build_op(&mut b, w, &c)?;
        report.bytes_after = sink.bytes_written(&file) - before;
        let mut detail = c.detail.clone();
        detail.extend(storage_detail(w, &c));
        report.detail = Some(serde_json::Value::Object(detail));
        report.metrics = Some(c.metrics);
        self.reports.push(report);
        Ok(Rewritten::Replace(ops))
    }

    fn finish_model(&mut self, model: &mut Model) -> Result<(), Error> {
        upgrade(model, self.out_target);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::DType;

    fn weight(n: usize) -> Weight {
        Weight {
            op_index: 0,
            source: Source::Const,
            const_name: "w".into(),
            value_name: "w".into(),
            dtype: DType::Fp16,
            shape: vec![n / 8, 8],
            consumers: vec![],
            blocked: None,
        }
    }

    fn joint(n: usize, pruned: usize, nbits: u32, groups: usize) -> Compressed {
        Compressed {
            keep: Some((0..n).map(|i| i >= pruned).collect()),
            values: None,
            lut: Some(Lut {
                nbits,
                groups,
                axis: 0,
                group_size: 1,
                indices: vec![0; n - pruned],
                lut: Data::F16(vec![f16::ZERO; groups << nbits]),
                stored: None,
                grid: None,
                vector: 1,
            }),
            quant: None,
            metrics: Metrics::default(),
            detail: Default::default(),
        }
    }

    /// The size formula, and the 1/nbits break-even of joint storage
    /// (equal size at exactly 1/nbits sparsity counts as not paying).
    #[test]
    fn size_formula_and_break_even() {
        let w = weight(4096);
        // 40 %, 4-bit, 2 LUTs: 4096 mask bits + 2458 · 4 index bits + 2 · 16 · 16 LUT bits.
        let d = storage_detail(&w, &joint(4096, 1638, 4, 2));
        assert_eq!(d["mask_bits"], 4096);
        assert_eq!(d["value_bits"], 2458 * 4);
        assert_eq!(d["lut_bits"], 2 * 16 * 16);
        assert_eq!(d["predicted_bytes"], 512 + 1229 + 64);
        assert_eq!(d["sparse_pays"], true);
        // Exactly 1/4: 4096 · (1 + 0.75 · 4) / 8 = 4096 · 4 / 8, no gain.
        assert_eq!(
            storage_detail(&w, &joint(4096, 1024, 4, 1))["sparse_pays"],
            false
        );
        assert_eq!(
            storage_detail(&w, &joint(4096, 1025, 4, 1))["sparse_pays"],
            true
        );
        // 1 bit never pays; 8 bits from above 12.5 %.
        assert_eq!(
            storage_detail(&w, &joint(4096, 4000, 1, 1))["sparse_pays"],
            false
        );
        assert_eq!(
            storage_detail(&w, &joint(4096, 512, 8, 1))["sparse_pays"],
            false
        );
        assert_eq!(
            storage_detail(&w, &joint(4096, 513, 8, 1))["sparse_pays"],
            true
        );
        // Sparse fp16 without a LUT: above 1/16.
        let mut c = joint(4096, 256, 4, 1);
        c.lut = None;
        c.values = Some(Data::F16(vec![f16::ZERO; 4096 - 256]));
        let d = storage_detail(&w, &c);
        assert_eq!(d["value_bits"], (4096 - 256) * 16);
        assert_eq!(d["sparse_pays"], false);
    }
}
