//! The quantize pass: every selected weight becomes linear-quantized codes
//! with a scale (and zero point) per tensor, per output channel or per
//! block of input channels: `constexpr_blockwise_shift_scale` on the iOS18
//! opset, `constexpr_affine_dequantize` (int8/uint8, per tensor or per
//! channel) below it. Numerics are in [`crate::kernels::quantize`].

use super::config::{OptimizationConfig, QuantGranularity, QuantMode, QuantizeEntry};
use super::emit::Quant;
use super::palettize::sparsity_detail;
use super::pass::{Compressed, Decision, TargetOptions, WeightData, WeightPass, WeightRewriter};
use super::select::{channel_axis, Selection, Source, Weight};

/// Reason joint sparse + quantized ops need iOS18.
pub const JOINT_QUANT_NEEDS_IOS18: &str = "joint sparse + quantized weights";
use crate::kernels::quantize::{
    quantize_blocks, quantize_blocks_f16, QType, QuantError, Spec, Store,
};
use crate::mil::value::BlobFiles;
use crate::mil::{DType, Data, FunctionIndex};
use crate::package::Package;
use crate::report::Metrics;
use half::f16;

/// A weight's resolved quantization settings and block grid.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantPlan {
    /// Code type.
    pub qtype: QType,
    /// Mode.
    pub mode: QuantMode,
    /// Granularity.
    pub granularity: QuantGranularity,
    /// Input channels per block (per block only).
    pub block_size: Option<usize>,
    /// Output-channel axis (per channel / per block).
    pub axis: Option<usize>,
    /// Scale shape.
    pub grid: Vec<usize>,
}

/// Options of the quantize pass.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// The three-level config (flags already folded into its global level).
    pub config: OptimizationConfig<QuantizeEntry>,
    /// Name/op-type selection.
    pub selection: Selection,
    /// Allow moving the program to the iOS18 opset when a setting needs it.
    pub upgrade_opset: bool,
    /// Minimum deployment target requested (spec version).
    pub min_spec: Option<i32>,
}

/// The quantize pass.
pub struct Quantize {
    config: OptimizationConfig<QuantizeEntry>,
    selection: Selection,
}

impl Quantize {
    /// Plans the pass over `pkg` (errors are user errors: bad settings,
    /// target too old without `--upgrade-opset`, compressed input).
    pub fn plan<'p>(
        pkg: &'p Package,
        opts: &QuantizeOptions,
    ) -> Result<WeightRewriter<'p, Quantize>, String> {
        let pass = Quantize {
            config: opts.config.clone(),
            selection: opts.selection.clone(),
        };
        let target = TargetOptions {
            upgrade_opset: opts.upgrade_opset,
            min_spec: opts.min_spec,
        };
        WeightRewriter::plan(pkg, pass, &target, "quantizing", true)
    }
}

/// Defaults as coremltools' `OpLinearQuantizerConfig`: int8, symmetric,
/// per channel (per block when only a block size is given), block size 32.
fn resolve(e: &QuantizeEntry) -> Result<(QType, QuantMode, QuantGranularity, usize), String> {
    let granularity = e.granularity.unwrap_or(if e.block_size.is_some() {
        QuantGranularity::PerBlock
    } else {
        QuantGranularity::PerChannel
    });
    if e.block_size.is_some() && granularity != QuantGranularity::PerBlock {
        return Err("block size needs per-block granularity".into());
    }
    let bs = e.block_size.unwrap_or(32);
    if bs == 0 {
        return Err("block size must be positive".into());
    }
    Ok((
        e.dtype.unwrap_or(QType::Int8),
        e.mode.unwrap_or(QuantMode::LinearSymmetric),
        granularity,
        bs,
    ))
}

impl WeightPass for Quantize {
    type Settings = QuantPlan;

    fn plan(
        &self,
        index: &FunctionIndex<'_>,
        w: &Weight,
        blobs: &BlobFiles,
    ) -> Result<Decision<QuantPlan>, String> {
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
        let (qtype, mode, granularity, bs) = resolve(&entry)?;
        let threshold = entry.weight_threshold.unwrap_or(2048);
        if w.numel() <= threshold {
            return Ok(Decision::Skip(format!(
                "at most weight threshold ({} <= {threshold} elements)",
                w.numel()
            )));
        }
        // coremltools leaves rank-1 consts (biases, norm scales) dense, citing
        // a Core ML bug with 1-D constexpr outputs; so do palettize and prune.
        if w.shape.len() < 2 {
            return Ok(Decision::Skip("rank < 2".into()));
        }
        if !matches!(w.dtype, DType::Fp16 | DType::Fp32) {
            return Ok(Decision::Skip(format!(
                "dtype {} is not fp16/fp32",
                w.dtype
            )));
        }
        let rank = w.shape.len();
        let mut grid = vec![1usize; rank];
        let (axis, block_size) = match granularity {
            QuantGranularity::PerTensor => (None, None),
            QuantGranularity::PerChannel => {
                let a = match channel_axis(index, w, blobs) {
                    Ok(a) => a,
                    Err(e) => return Ok(Decision::Skip(e)),
                };
                grid[a] = w.shape[a];
                (Some(a), None)
            }
            QuantGranularity::PerBlock => {
                let a = match channel_axis(index, w, blobs) {
                    Ok(a) => a,
                    Err(e) => return Ok(Decision::Skip(e)),
                };
                // The input axis: the other of the first two axes of a
                // conv/linear (or rank-2 matmul) weight.
                let input = match (rank, a) {
                    (2.., 0) => 1,
                    (2, 1) => 0,
                    (3.., 1) if w.consumers.iter().all(|c| c.1 == "conv_transpose") => 0,
                    _ => {
                        return Ok(Decision::Skip(format!(
                            "no input-channel axis for per-block quantization (output axis {a}, rank {rank})"
                        )))
                    }
                };
                if !w.shape[input].is_multiple_of(bs) {
                    return Ok(Decision::Skip(format!(
                        "input channels not divisible by block size ({} on axis {input}, block size {bs})",
                        w.shape[input]
                    )));
                }
                grid[a] = w.shape[a];
                grid[input] = w.shape[input] / bs;
                (Some(a), Some(bs))
            }
        };
        Ok(Decision::Do(QuantPlan {
            qtype,
            mode,
            granularity,
            block_size,
            axis,
            grid,
        }))
    }

    fn ios18_reason(&self, w: &Weight, s: &QuantPlan) -> Option<&'static str> {
        if w.source == Source::Sparse {
            return Some(JOINT_QUANT_NEEDS_IOS18);
        }
        (s.qtype.bits() == 4 || s.granularity == QuantGranularity::PerBlock)
            .then_some("4-bit and per-block quantization")
    }

    /// fp16 weights are quantized where they are mapped: no decoded copy.
    fn reads_mapped(&self, _p: &QuantPlan) -> bool {
        true
    }

    fn compute(&self, input: WeightData<'_>, p: &QuantPlan) -> Result<Compressed, String> {
        let t = input.tensor;
        let spec = Spec {
            qtype: p.qtype,
            symmetric: p.mode == QuantMode::LinearSymmetric,
        };
        // fp16 weights are read in place (widened 8 values at a time).
        let (q, store) = match (&t.data, input.mapped.map(|m| m.values)) {
            (_, Some(v)) => (quantize_blocks_f16(v, &t.shape, &p.grid, spec), Store::F16),
            (Data::F16(v), None) => (quantize_blocks_f16(v, &t.shape, &p.grid, spec), Store::F16),
            (Data::F32(v), None) => (
                quantize_blocks(v, &t.shape, &p.grid, spec, Store::F32),
                Store::F32,
            ),
            _ => return Err(format!("dtype {} is not fp16/fp32", t.dtype)),
        };
        let q = q.map_err(|e| match e {
            QuantError::NonFinite => "contains NaN or infinity".to_string(),
            QuantError::BadGrid => "block grid does not divide the shape".to_string(),
        })?;
        let scale = match store {
            Store::F16 => Data::F16(q.params.iter().map(|p| f16::from_f32(p.scale)).collect()),
            Store::F32 => Data::F32(q.params.iter().map(|p| p.scale).collect()),
        };
        let any_offset = q.params.iter().any(|p| p.zero_point != 0);
        let (qdtype, codes, offset) = if p.qtype.signed() {
            (
                if p.qtype.bits() == 8 {
                    DType::Int8
                } else {
                    DType::Int4
                },
                // Same size and alignment: collected in place, no copy.
                Data::I8(q.codes.into_iter().map(|c| c as i8).collect()),
                any_offset.then(|| Data::I8(q.params.iter().map(|p| p.zero_point as i8).collect())),
            )
        } else {
            (
                if p.qtype.bits() == 8 {
                    DType::Uint8
                } else {
                    DType::Uint4
                },
                Data::U8(q.codes),
                any_offset.then(|| Data::U8(q.params.iter().map(|p| p.zero_point as u8).collect())),
            )
        };
        let quant = Quant {
            qdtype,
            codes,
            grid: p.grid.clone(),
            scale,
            offset,
            axis: match p.granularity {
                QuantGranularity::PerChannel => p.axis,
                _ => None,
            },
        };
        let serde_json::Value::Object(mut detail) = serde_json::json!({
            "quant_dtype": p.qtype,
            "mode": p.mode,
            "granularity": p.granularity,
            "channel_axis": p.axis,
            "block_size": p.block_size,
            "scale_shape": p.grid,
            "zero_point": if quant.offset.is_some() { "stored" } else { "zero" },
        }) else {
            unreachable!("an object literal")
        };
        // A pruned input keeps its mask: pruned positions decode to exactly
        // 0 and are not stored; its zeros lie inside every block's range
        // (symmetric, or widened to contain 0), so they do not change the
        // scales of the kept values.
        if let Some(k) = &input.keep {
            detail.extend(sparsity_detail(k));
        }
        Ok(Compressed {
            quant: Some(quant),
            keep: input.keep,
            values: None,
            lut: None,
            metrics: Metrics::from_sums(q.signal, q.sse, q.max_abs),
            detail,
        })
    }
}
