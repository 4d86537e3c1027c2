//! The palettize pass: every selected weight becomes a
//! `constexpr_lut_to_dense` (iOS16 attribute form below the iOS18 opset, the
//! iOS18 input form with per-group LUTs from it on). A weight that is
//! already pruned (`constexpr_sparse_to_dense`) gets the joint form
//! instead: only its kept values are clustered, and it becomes
//! `constexpr_lut_to_sparse` → `constexpr_sparse_to_dense` (iOS18 only).
//! coremltools clusters the dense weight, zeros included, which spends one
//! LUT entry on 0.0; the mask already says where the zeros are.
//!
//! The LUT of one tensor ([`palettize_weight`]) is also the second half of
//! `prune --nbits` (the one-shot joint form).

use super::config::{Granularity, GroupSizeFallback, OptimizationConfig, PalettizeEntry};
use super::emit::Lut;
use super::pass::{Compressed, Decision, TargetOptions, WeightData, WeightPass, WeightRewriter};
use super::select::{channel_axis, Selection, Source, Weight};
use crate::kernels::palettize::{Element, GroupError, GroupError2, Mode};
use crate::mil::value::BlobFiles;
use crate::mil::{Data, FunctionIndex, Tensor};
use crate::package::Package;
use crate::report::Metrics;
use half::f16;
use rayon::prelude::*;
use std::collections::BTreeSet;

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
    /// What to do when the channels are not a multiple of the group size.
    pub group_size_fallback: GroupSizeFallback,
    /// The group size asked for, when the fallback chose another.
    pub requested_group_size: Option<usize>,
}

/// A weight's LUT settings and grouping axis.
#[derive(Debug, Clone, PartialEq)]
pub struct LutPlan {
    /// Resolved settings.
    pub settings: Settings,
    /// Grouping (output-channel) axis.
    pub axis: usize,
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
pub fn settings(e: &PalettizeEntry) -> Result<Settings, String> {
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
        group_size_fallback: e.group_size_fallback.unwrap_or(GroupSizeFallback::Divisor),
        requested_group_size: None,
    })
}

/// Whether `entry` palettizes `w`, and how: settings, size threshold, rank,
/// grouping axis and group divisibility. Shared by `palettize` and the
/// one-shot `prune --nbits`, so that both decide alike.
pub fn lut_decision(
    index: &FunctionIndex<'_>,
    w: &Weight,
    blobs: &BlobFiles,
    entry: &PalettizeEntry,
) -> Result<Decision<LutPlan>, String> {
    let mut s = settings(entry)?;
    if w.numel() <= s.weight_threshold {
        return Ok(Decision::Skip(format!(
            "at most weight threshold ({} <= {} elements)",
            w.numel(),
            s.weight_threshold
        )));
    }
    if w.shape.len() < 2 {
        return Ok(Decision::Skip("rank < 2".into()));
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
        None => match channel_axis(index, w, blobs) {
            Ok(a) => a,
            Err(e) if s.granularity == Granularity::PerGroupedChannel => {
                return Ok(Decision::Skip(e))
            }
            Err(_) => 0,
        },
    };
    let chans = w.shape[axis];
    if s.granularity == Granularity::PerGroupedChannel
        && chans % s.group_size != 0
        && s.group_size_fallback == GroupSizeFallback::Divisor
    {
        // The largest divisor of the channel count not above the request:
        // groups stay as small as asked (never coarser), and the weight is
        // compressed instead of left at full size.
        let g = (1..=s.group_size.min(chans))
            .rev()
            .find(|d| chans % d == 0)
            .expect("1 divides everything");
        s.requested_group_size = Some(s.group_size);
        s.group_size = g;
    }
    if s.granularity == Granularity::PerGroupedChannel && chans % s.group_size != 0 {
        return Ok(Decision::Skip(format!(
            "channels not divisible by group size ({} on axis {axis}, group size {})",
            w.shape[axis], s.group_size
        )));
    }
    Ok(Decision::Do(LutPlan { settings: s, axis }))
}

/// Why a LUT plan needs the iOS18 opset, if it does.
pub fn lut_ios18_reason(p: &LutPlan) -> Option<&'static str> {
    (p.settings.granularity == Granularity::PerGroupedChannel || p.settings.nbits == Some(3))
        .then_some("per-grouped-channel and 3-bit palettization")
}

/// Reason joint ops need iOS18 (they exist only from its opset on).
pub const JOINT_NEEDS_IOS18: &str = "joint sparse + palettized weights";

/// Report fields of a LUT.
pub fn lut_detail(p: &LutPlan, l: &Lut) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(m) = serde_json::json!({
        "mode": p.settings.mode,
        "nbits": l.nbits,
        "granularity": p.settings.granularity,
        "channel_axis": l.axis,
        "group_size": if l.groups > 1 || p.settings.granularity == Granularity::PerGroupedChannel {
            Some(l.group_size)
        } else {
            None
        },
        "group_size_requested": p.settings.requested_group_size,
        "groups": l.groups,
    }) else {
        unreachable!("an object literal")
    };
    m
}

/// Report fields of a sparse weight's mask.
pub fn sparsity_detail(keep: &[bool]) -> serde_json::Map<String, serde_json::Value> {
    let n = keep.len();
    let kept = keep.iter().filter(|&&k| k).count();
    let serde_json::Value::Object(m) = serde_json::json!({
        "sparsity": (n - kept) as f64 / n as f64,
        "pruned": n - kept,
        "nonzero": kept,
    }) else {
        unreachable!("an object literal")
    };
    m
}

/// The palettize pass: settings from a three-level config and a selection.
pub struct Palettize {
    config: OptimizationConfig,
    selection: Selection,
}

impl Palettize {
    /// Plans the pass over `pkg`: selects weights, resolves settings, checks
    /// the deployment target. Errors are user errors (bad settings, target
    /// too old without `--upgrade-opset`, compressed input other than
    /// pruned weights).
    pub fn plan<'p>(
        pkg: &'p Package,
        opts: &PalettizeOptions,
    ) -> Result<WeightRewriter<'p, Palettize>, String> {
        let pass = Palettize {
            config: opts.config.clone(),
            selection: opts.selection.clone(),
        };
        let target = TargetOptions {
            upgrade_opset: opts.upgrade_opset,
            min_spec: opts.min_spec,
        };
        WeightRewriter::plan(pkg, pass, &target, "palettizing", true)
    }
}

impl WeightPass for Palettize {
    type Settings = LutPlan;

    fn plan(
        &self,
        index: &FunctionIndex<'_>,
        w: &Weight,
        blobs: &BlobFiles,
    ) -> Result<Decision<LutPlan>, String> {
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
        lut_decision(index, w, blobs, &entry)
    }

    fn ios18_reason(&self, w: &Weight, s: &LutPlan) -> Option<&'static str> {
        if w.source == Source::Sparse {
            return Some(JOINT_NEEDS_IOS18);
        }
        lut_ios18_reason(s)
    }

    fn compute(&self, input: WeightData, p: &LutPlan) -> Result<Compressed, String> {
        let (lut, e) = palettize_weight(&input.tensor, input.keep.as_deref(), p)?;
        let mut detail = lut_detail(p, &lut);
        if let Some(k) = &input.keep {
            detail.extend(sparsity_detail(k));
            detail.insert("lut_values".into(), "nonzero".into());
        }
        Ok(Compressed {
            quant: None,
            keep: input.keep,
            values: None,
            lut: Some(lut),
            // Pruned positions are 0 in the input and stay 0: the error is
            // the LUT's on the kept values, the signal the whole weight's.
            metrics: Metrics::from_sums(e.signal, e.sse, e.max_abs),
            detail,
        })
    }
}

/// Splits `shape` around `axis`: (outer, channels, inner).
pub(crate) fn split_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// Palettizes one weight with plan `p`: the kept values only when `keep`
/// is given (indices in row-major order of the kept elements), else every
/// value (indices of the dense shape). Groups are runs of `group_size`
/// channels along the plan's axis, whatever is kept in them.
pub fn palettize_weight(
    t: &Tensor,
    keep: Option<&[bool]>,
    p: &LutPlan,
) -> Result<(Lut, GroupError2), String> {
    match &t.data {
        Data::F16(x) => {
            let (lut, indices, nbits, groups, gs, e) =
                palettize_values::<f16>(x, &t.shape, keep, p)?;
            Ok((
                lut_of(Data::F16(lut), indices, nbits, groups, gs, p.axis),
                e,
            ))
        }
        Data::F32(x) => {
            let (lut, indices, nbits, groups, gs, e) =
                palettize_values::<f32>(x, &t.shape, keep, p)?;
            Ok((
                lut_of(Data::F32(lut), indices, nbits, groups, gs, p.axis),
                e,
            ))
        }
        _ => Err(format!("dtype {} is not fp16/fp32", t.dtype)),
    }
}

fn lut_of(lut: Data, indices: Vec<u8>, nbits: u32, groups: usize, gs: usize, axis: usize) -> Lut {
    Lut {
        nbits,
        groups,
        axis,
        group_size: gs,
        indices,
        lut,
    }
}

type Palettized<T> = (Vec<T>, Vec<u8>, u32, usize, usize, GroupError2);

fn palettize_values<T: Element>(
    x: &[T],
    shape: &[usize],
    keep: Option<&[bool]>,
    p: &LutPlan,
) -> Result<Palettized<T>, String> {
    let s = &p.settings;
    let (outer, chans, inner) = split_axis(shape, p.axis);
    let (groups, gs) = match s.granularity {
        Granularity::PerTensor => (1, chans),
        Granularity::PerGroupedChannel => (chans / s.group_size, s.group_size),
    };
    // Values of group g: for every outer index, channels [g*gs, (g+1)*gs),
    // kept ones only. A dense group of a dense tensor is one slice.
    let contiguous = outer == 1 && keep.is_none();
    let positions = |g: usize| -> Vec<usize> {
        let mut v = Vec::with_capacity(outer * gs * inner);
        for o in 0..outer {
            let start = (o * chans + g * gs) * inner;
            match keep {
                None => v.extend(start..start + gs * inner),
                Some(k) => v.extend((start..start + gs * inner).filter(|&i| k[i])),
            }
        }
        v
    };
    let values = |g: usize| -> std::borrow::Cow<'_, [T]> {
        if contiguous {
            std::borrow::Cow::Borrowed(&x[g * gs * inner..(g + 1) * gs * inner])
        } else {
            std::borrow::Cow::Owned(positions(g).into_iter().map(|i| x[i]).collect())
        }
    };
    // Unique mode without nbits: the smallest width that fits every group.
    let nbits = match s.nbits {
        Some(n) => n,
        None => {
            let m = (0..groups)
                .map(|g| {
                    values(g)
                        .iter()
                        .map(|v| v.pattern())
                        .collect::<BTreeSet<_>>()
                        .len()
                })
                .max()
                .unwrap_or(0);
            [1u32, 2, 3, 4, 6, 8]
                .into_iter()
                .find(|&b| m <= 1 << b)
                .ok_or(format!("{m} unique values need more than 8 bits"))?
        }
    };
    // Indices land at dense positions first; a sparse weight then keeps
    // those of its kept elements, in row-major order. A contiguous group
    // writes straight into its run of the dense buffer.
    let mut dense = vec![0u8; x.len()];
    let res: Vec<Result<(Vec<T>, GroupError2), GroupError>> = if contiguous {
        dense
            .par_chunks_mut((gs * inner).max(1))
            .enumerate()
            .map_init(T::Scratch::default, |sc, (g, out)| {
                T::palettize_into(&values(g), nbits, s.mode, sc, out)
            })
            .collect()
    } else {
        let res: Vec<_> = (0..groups)
            .into_par_iter()
            .map_init(T::Scratch::default, |sc, g| {
                T::palettize(&values(g), nbits, s.mode, sc)
            })
            .collect();
        let mut out = Vec::with_capacity(groups);
        for (g, r) in res.into_iter().enumerate() {
            out.push(r.map(|gr| {
                for (p, v) in positions(g).into_iter().zip(gr.indices) {
                    dense[p] = v;
                }
                (gr.lut, gr.error)
            }));
        }
        out
    };
    let mut lut = Vec::with_capacity(groups << nbits);
    let mut acc = GroupError2::default();
    for r in res {
        let (l, e) = r.map_err(group_err)?;
        acc.add(&e);
        lut.extend(l);
    }
    let indices = match keep {
        None => dense,
        Some(k) => dense
            .into_iter()
            .zip(k)
            .filter(|(_, &k)| k)
            .map(|(v, _)| v)
            .collect(),
    };
    Ok((lut, indices, nbits, groups, gs, acc))
}

fn group_err(e: GroupError) -> String {
    match e {
        GroupError::NonFinite => "contains NaN or infinity".into(),
        GroupError::TooManyUnique(n) => {
            format!("{n} unique values do not fit the requested nbits (mode unique)")
        }
    }
}
