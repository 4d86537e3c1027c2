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

use super::config::{
    Granularity, GroupSizeFallback, LutDType, OptimizationConfig, PalettizeEntry, ScaleAxis,
};
use super::emit::{Lut, LutStored};
use super::pass::{Compressed, Decision, TargetOptions, WeightData, WeightPass, WeightRewriter};
use super::select::{channel_axis, Selection, Source, Weight};
use crate::kernels::palettize::{
    palettize_scaled, quantize_lut, row_scale, scale_of_max, Element, GroupError, GroupError2,
    Mode, ScaledGroup,
};
use crate::kernels::pcs::{palettize_scaled_dense, square_units, Block, DenseScaled};
use crate::kernels::quantize::{QType, Spec};
use crate::kernels::vkmeans::kmeans_vectors;
use crate::mil::value::BlobFiles;
use crate::mil::DType;
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
    /// LUT entries as 8-bit codes with a scale per LUT.
    pub lut_dtype: Option<LutDType>,
    /// Per-channel scales folded into the LUTs.
    pub per_channel_scale: bool,
    /// Their layout.
    pub scale_axis: ScaleAxis,
    /// Vector length of vector palettization (1 = scalar LUTs).
    pub cluster_dim: usize,
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
    /// Seed of the vector k-means (the scalar one is exact and needs none).
    pub seed: u64,
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
    if e.per_channel_scale == Some(true) && mode != Mode::Kmeans {
        return Err("per-channel scale needs kmeans mode".into());
    }
    let cluster_dim = e.cluster_dim.unwrap_or(1);
    if cluster_dim == 0 {
        return Err("cluster dim must be positive".into());
    }
    if cluster_dim > 1 {
        if mode != Mode::Kmeans {
            return Err(format!(
                "vector palettization (cluster dim {cluster_dim}) needs kmeans mode"
            ));
        }
        if e.lut_dtype.is_some() || e.per_channel_scale == Some(true) {
            return Err(format!(
                "vector palettization (cluster dim {cluster_dim}) does not combine with quantized LUTs or per-channel scales"
            ));
        }
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
        lut_dtype: e.lut_dtype,
        per_channel_scale: e.per_channel_scale.unwrap_or(false),
        scale_axis: e.scale_axis.unwrap_or(ScaleAxis::Input),
        cluster_dim,
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
    let cd = s.cluster_dim;
    if !chans.is_multiple_of(cd) {
        return Ok(Decision::Skip(format!(
            "channels not divisible by cluster dim ({chans} on axis {axis}, cluster dim {cd})"
        )));
    }
    if s.granularity == Granularity::PerGroupedChannel
        && !chans.is_multiple_of(s.group_size)
        && s.group_size_fallback == GroupSizeFallback::Divisor
    {
        // The largest divisor of the channel count not above the request
        // (and a multiple of the cluster dim, which must divide a group):
        // groups stay as small as asked (never coarser), and the weight is
        // compressed instead of left at full size.
        if let Some(g) = (1..=s.group_size.min(chans))
            .rev()
            .find(|d| chans.is_multiple_of(*d) && d % cd == 0)
        {
            s.requested_group_size = Some(s.group_size);
            s.group_size = g;
        }
    }
    if s.granularity == Granularity::PerGroupedChannel && s.group_size % cd != 0 {
        return Ok(Decision::Skip(format!(
            "group size {} is not a multiple of cluster dim {cd}",
            s.group_size
        )));
    }
    if s.granularity == Granularity::PerGroupedChannel && !chans.is_multiple_of(s.group_size) {
        return Ok(Decision::Skip(format!(
            "channels not divisible by group size ({} on axis {axis}, group size {})",
            w.shape[axis], s.group_size
        )));
    }
    Ok(Decision::Do(LutPlan { settings: s, axis }))
}

/// Why a LUT plan needs the iOS18 opset, if it does.
pub fn lut_ios18_reason(p: &LutPlan) -> Option<&'static str> {
    let s = &p.settings;
    if s.cluster_dim > 1 {
        return Some("vector palettization (--cluster-dim)");
    }
    if s.lut_dtype.is_some() || s.per_channel_scale {
        return Some("quantized LUT entries and per-channel scales");
    }
    (s.granularity == Granularity::PerGroupedChannel || s.nbits == Some(3))
        .then_some("per-grouped-channel and 3-bit palettization")
}

/// Reason joint ops need iOS18 (they exist only from its opset on).
pub const JOINT_NEEDS_IOS18: &str = "joint sparse + palettized weights";

/// Report fields of a LUT.
pub fn lut_detail(p: &LutPlan, l: &Lut) -> serde_json::Map<String, serde_json::Value> {
    if p.settings.per_channel_scale {
        // Clustered groups as asked; the stored LUTs are one per scale.
        let gs = p.settings.group_size;
        let groups = match (p.settings.granularity, &l.grid) {
            (Granularity::PerTensor, _) => 1,
            (Granularity::PerGroupedChannel, Some(g)) => g[l.axis],
            (Granularity::PerGroupedChannel, None) => l.groups / gs,
        };
        let serde_json::Value::Object(m) = serde_json::json!({
            "mode": p.settings.mode,
            "nbits": l.nbits,
            "granularity": p.settings.granularity,
            "channel_axis": l.axis,
            "group_size": (p.settings.granularity == Granularity::PerGroupedChannel).then_some(gs),
            "group_size_requested": p.settings.requested_group_size,
            "groups": groups,
            "lut_dtype": p.settings.lut_dtype,
            "per_channel_scale": true,
            "scale_axis": p.settings.scale_axis,
            "stored_luts": l.groups,
        }) else {
            unreachable!("an object literal")
        };
        return m;
    }
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
        "lut_dtype": p.settings.lut_dtype,
        "per_channel_scale": p.settings.per_channel_scale,
        "cluster_dim": p.settings.cluster_dim,
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
    seed: u64,
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
            seed: opts.seed,
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
        let d = lut_decision(index, w, blobs, &entry)?;
        if let Decision::Do(p) = &d {
            if p.settings.cluster_dim > 1 && w.source == Source::Sparse {
                return Err(format!(
                    "{} is pruned: vector palettization (cluster dim {}) of sparse weights is not supported",
                    w.const_name, p.settings.cluster_dim
                ));
            }
        }
        Ok(d)
    }

    fn ios18_reason(&self, w: &Weight, s: &LutPlan) -> Option<&'static str> {
        if w.source == Source::Sparse {
            return Some(JOINT_NEEDS_IOS18);
        }
        lut_ios18_reason(s)
    }

    /// Scalar LUTs read fp16 weights where they are mapped (the vector
    /// path takes a decoded tensor).
    fn reads_mapped(&self, p: &LutPlan) -> bool {
        p.settings.cluster_dim <= 1
    }

    fn compute(&self, input: WeightData<'_>, p: &LutPlan) -> Result<Compressed, String> {
        let (lut, e) = if p.settings.cluster_dim > 1 {
            palettize_vectors(&input.tensor, p, self.seed)?
        } else {
            match input.mapped.map(|m| m.values) {
                // fp16 read in place (see `reads_mapped`).
                Some(x) => {
                    let t = &input.tensor;
                    let r = palettize_values::<f16>(x, &t.shape, None, p)?;
                    r.into_lut(Data::F16, t.dtype, p)
                }
                None => palettize_weight(&input.tensor, input.keep.as_deref(), p)?,
            }
        };
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

/// Restarts of the vector k-means (k-means++ seeds from `--seed`); the best
/// of them is kept. coremltools runs scikit-learn once (`n_init=1`).
const VECTOR_RESTARTS: usize = 3;

/// Vector palettization of a dense weight (`--cluster-dim D`, iOS18): the
/// points are the D-vectors of consecutive channels along the plan's axis
/// at each other position; each group of `group_size` channels (or the
/// whole tensor) gets a LUT of `2^nbits` D-vector entries from
/// [`kmeans_vectors`]. The centroids are rounded to the weight's dtype and
/// every vector then takes its nearest rounded entry (lowest on ties), so
/// rounding never leaves a vector on a worse entry than the one its
/// cluster's mean gave. Groups run in parallel; the result depends only on
/// the inputs and `seed`.
pub fn palettize_vectors(t: &Tensor, p: &LutPlan, seed: u64) -> Result<(Lut, GroupError2), String> {
    match &t.data {
        Data::F16(x) => vector_lut::<f16>(x, &t.shape, p, seed, Data::F16),
        Data::F32(x) => vector_lut::<f32>(x, &t.shape, p, seed, Data::F32),
        _ => Err(format!("dtype {} is not fp16/fp32", t.dtype)),
    }
}

fn vector_lut<T: Element>(
    x: &[T],
    shape: &[usize],
    p: &LutPlan,
    seed: u64,
    wrap: fn(Vec<T>) -> Data,
) -> Result<(Lut, GroupError2), String> {
    let s = &p.settings;
    let d = s.cluster_dim;
    let nbits = s.nbits.ok_or("vector palettization needs --nbits")?;
    let k = 1usize << nbits;
    let (outer, chans, inner) = split_axis(shape, p.axis);
    let gs = match s.granularity {
        Granularity::PerTensor => chans,
        Granularity::PerGroupedChannel => s.group_size,
    };
    if d == 0 || chans % gs != 0 || gs % d != 0 {
        return Err(format!(
            "cluster dim {d} does not divide group size {gs} of {chans} channels"
        ));
    }
    if x.iter().any(|v| !v.to_f64().is_finite()) {
        return Err("contains NaN or infinity".into());
    }
    let groups = chans / gs;
    let blocks = chans / d; // channel blocks: the indices' extent on the axis
    let per = gs / d; // channel blocks per group
    let at = |o: usize, b: usize, i: usize, j: usize| x[(o * chans + b * d + j) * inner + i];
    let results: Vec<(Vec<T>, Vec<u8>, GroupError2)> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let mut pts = Vec::with_capacity(outer * per * inner * d);
            for o in 0..outer {
                for b in g * per..(g + 1) * per {
                    for i in 0..inner {
                        pts.extend((0..d).map(|j| at(o, b, i, j).to_f64()));
                    }
                }
            }
            let gseed = seed ^ (g as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let c = kmeans_vectors(&pts, d, k, gseed, VECTOR_RESTARTS);
            let mut lut: Vec<T> = c.centroids.iter().map(|&v| T::from_f64(v)).collect();
            lut.resize(k * d, T::ZERO);
            let entries: Vec<f64> = lut.iter().map(|v| v.to_f64()).collect();
            let mut idx = Vec::with_capacity(pts.len() / d);
            let mut e = GroupError2::default();
            for v in pts.chunks_exact(d) {
                let (mut best, mut best_d) = (0usize, f64::INFINITY);
                for (m, c) in entries.chunks_exact(d).enumerate() {
                    let dist: f64 = v.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
                    if dist < best_d {
                        best = m;
                        best_d = dist;
                    }
                }
                idx.push(best as u8);
                for (a, b) in v.iter().zip(&entries[best * d..(best + 1) * d]) {
                    e.signal += a * a;
                    e.sse += (a - b) * (a - b);
                    e.max_abs = e.max_abs.max((a - b).abs());
                }
            }
            (lut, idx, e)
        })
        .collect();
    // Indices in the row-major order of [outer, blocks, inner].
    let mut indices = vec![0u8; outer * blocks * inner];
    let mut luts = Vec::with_capacity(groups * k * d);
    let mut error = GroupError2::default();
    for (g, (lut, idx, e)) in results.into_iter().enumerate() {
        let mut n = 0;
        for o in 0..outer {
            for b in g * per..(g + 1) * per {
                let row = (o * blocks + b) * inner;
                indices[row..row + inner].copy_from_slice(&idx[n..n + inner]);
                n += inner;
            }
        }
        luts.extend(lut);
        error.add(&e);
    }
    Ok((
        Lut {
            nbits,
            groups,
            axis: p.axis,
            group_size: gs,
            indices,
            lut: wrap(luts),
            stored: None,
            grid: None,
            vector: d,
        },
        error,
    ))
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
            let r = palettize_values::<f16>(x, &t.shape, keep, p)?;
            Ok(r.into_lut(Data::F16, t.dtype, p))
        }
        Data::F32(x) => {
            let r = palettize_values::<f32>(x, &t.shape, keep, p)?;
            Ok(r.into_lut(Data::F32, t.dtype, p))
        }
        _ => Err(format!("dtype {} is not fp16/fp32", t.dtype)),
    }
}

/// A palettized tensor before it becomes a [`Lut`].
struct Palettized<T> {
    /// Decoded entries of every stored LUT.
    lut: Vec<T>,
    indices: Vec<u8>,
    nbits: u32,
    /// Stored LUTs along the axis, and channels per stored LUT.
    groups: usize,
    group_size: usize,
    error: GroupError2,
    /// How the entries are stored when not as they are.
    stored: Option<StoredParts<T>>,
    /// LUT block grid when LUTs vary along other axes too.
    grid: Option<Vec<usize>>,
}

/// Entries stored through a `constexpr_blockwise_shift_scale`: per stored
/// LUT a scale and zero point, and its entries as codes or as values.
struct StoredParts<T> {
    codes: Option<Vec<i32>>,
    values: Vec<T>,
    scales: Vec<T>,
    zero_points: Vec<i32>,
    /// Grid of `scales` when coarser than the LUTs'.
    scale_grid: Option<Vec<usize>>,
}

impl<T: Element> Palettized<T> {
    fn into_lut(self, wrap: fn(Vec<T>) -> Data, dtype: DType, p: &LutPlan) -> (Lut, GroupError2) {
        let stored = self.stored.map(|st| {
            let any_offset = st.zero_points.iter().any(|&z| z != 0);
            let zps = &st.zero_points;
            let (dtype, data, offset) = match (st.codes, p.settings.lut_dtype) {
                (None, _) => (dtype, wrap(st.values), None),
                (Some(c), Some(LutDType::Int8)) => (
                    DType::Int8,
                    Data::I8(c.iter().map(|&c| c as i8).collect()),
                    any_offset.then(|| Data::I8(zps.iter().map(|&z| z as i8).collect())),
                ),
                (Some(c), _) => (
                    DType::Uint8,
                    Data::U8(c.iter().map(|&c| c as u8).collect()),
                    any_offset.then(|| Data::U8(zps.iter().map(|&z| z as u8).collect())),
                ),
            };
            LutStored {
                dtype,
                data,
                scale: wrap(st.scales),
                offset,
                scale_grid: st.scale_grid,
            }
        });
        (
            Lut {
                nbits: self.nbits,
                groups: self.groups,
                axis: p.axis,
                group_size: self.group_size,
                indices: self.indices,
                lut: wrap(self.lut),
                stored,
                grid: self.grid,
                vector: 1,
            },
            self.error,
        )
    }
}

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
    let lut_spec = s.lut_dtype.map(|d| Spec {
        qtype: match d {
            LutDType::Int8 => QType::Int8,
            LutDType::Uint8 => QType::Uint8,
        },
        symmetric: true,
    });
    if s.per_channel_scale && s.scale_axis == ScaleAxis::Input {
        return scaled_values_input(x, shape, p.axis, keep, gs, nbits, lut_spec);
    }
    if s.per_channel_scale {
        return scaled_values(x, (outer, chans, inner), keep, gs, nbits, lut_spec);
    }
    // Indices land at dense positions first; a sparse weight then keeps
    // those of its kept elements, in row-major order. A contiguous group
    // writes straight into its run of the dense buffer.
    let mut dense = vec![0u8; x.len()];
    // Quantized LUT entries: indices are re-assigned to the decoded
    // entries after clustering, so each group's result is needed whole.
    let mut all_codes = lut_spec.map(|_| Vec::with_capacity(groups));
    let res: Vec<Result<(Vec<T>, GroupError2), GroupError>> = if let Some(spec) = lut_spec {
        let res: Vec<_> = (0..groups)
            .into_par_iter()
            .map_init(T::Scratch::default, |sc, g| {
                let v = values(g);
                T::palettize(&v, nbits, s.mode, sc).map(|mut gr| {
                    let codes = quantize_lut(&v, &mut gr, spec);
                    (gr, codes)
                })
            })
            .collect();
        let mut out = Vec::with_capacity(groups);
        for (g, r) in res.into_iter().enumerate() {
            out.push(r.map(|(gr, codes)| {
                all_codes.as_mut().expect("set with lut_spec").push(codes);
                if contiguous {
                    dense[g * gs * inner..(g + 1) * gs * inner].copy_from_slice(&gr.indices);
                } else {
                    for (p, v) in positions(g).into_iter().zip(gr.indices) {
                        dense[p] = v;
                    }
                }
                (gr.lut, gr.error)
            }));
        }
        out
    } else if contiguous {
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
    let stored = all_codes.map(|codes| StoredParts {
        codes: Some(codes.iter().flat_map(|c| c.codes.iter().copied()).collect()),
        values: Vec::new(),
        scales: codes.iter().map(|c| T::from_f32(c.params.scale)).collect(),
        zero_points: codes.iter().map(|c| c.params.zero_point).collect(),
        scale_grid: None,
    });
    Ok(Palettized {
        lut,
        indices,
        nbits,
        groups,
        group_size: gs,
        error: acc,
        stored,
        grid: None,
    })
}

/// Per-channel-scale palettization (see [`palettize_scaled`]): groups of
/// `gs` channels share a normalised LUT, each channel has its own scale.
/// Below iOS26 the scale must sit on the LUT side, and a
/// `constexpr_lut_to_dense` LUT can only vary per block of the indices, so
/// the stored form has one LUT per channel: the group's LUT (or its codes)
/// repeated for each of its channels, scaled by the channel's scale.
fn scaled_values<T: Element>(
    x: &[T],
    (outer, chans, inner): (usize, usize, usize),
    keep: Option<&[bool]>,
    gs: usize,
    nbits: u32,
    lut_spec: Option<Spec>,
) -> Result<Palettized<T>, String> {
    let chan_positions = |o: usize| -> Vec<usize> {
        let mut v = Vec::with_capacity(outer * inner);
        for oi in 0..outer {
            let start = (oi * chans + o) * inner;
            match keep {
                None => v.extend(start..start + inner),
                Some(k) => v.extend((start..start + inner).filter(|&i| k[i])),
            }
        }
        v
    };
    let res: Vec<_> = (0..chans / gs)
        .into_par_iter()
        .map(|g| {
            let rows: Vec<Vec<T>> = (g * gs..(g + 1) * gs)
                .map(|o| chan_positions(o).into_iter().map(|i| x[i]).collect())
                .collect();
            palettize_scaled(&rows, None, nbits, lut_spec)
        })
        .collect();
    let k = 1usize << nbits;
    let mut dense = vec![0u8; x.len()];
    let mut lut = Vec::with_capacity(chans * k);
    let mut acc = GroupError2::default();
    let mut st = StoredParts {
        codes: lut_spec.map(|_| Vec::with_capacity(chans * k)),
        values: Vec::new(),
        scales: Vec::with_capacity(chans),
        zero_points: Vec::with_capacity(chans),
        scale_grid: None,
    };
    for (g, r) in res.into_iter().enumerate() {
        let sg = r.map_err(group_err)?;
        acc.add(&sg.error);
        for (j, o) in (g * gs..(g + 1) * gs).enumerate() {
            for (p, &v) in chan_positions(o).into_iter().zip(&sg.indices[j]) {
                dense[p] = v;
            }
            lut.extend_from_slice(&sg.levels[j]);
            match (&mut st.codes, &sg.codes) {
                (Some(all), Some(c)) => {
                    all.extend_from_slice(&c.codes);
                    st.zero_points.push(c.params.zero_point);
                }
                _ => {
                    st.values.extend_from_slice(&sg.lut);
                    st.zero_points.push(0);
                }
            }
            st.scales.push(sg.row_scale[j]);
        }
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
    Ok(Palettized {
        lut,
        indices,
        nbits,
        groups: chans,
        group_size: 1,
        error: acc,
        stored: Some(st),
        grid: None,
    })
}

/// [`row_scale`] of every position's values across all `chans` channels
/// of a dense `[outer, chans, inner]` weight, read row by row (max |w| in
/// f32 is exact, as in `row_scale`).
fn position_scales<T: Element>(x: &[T], outer: usize, chans: usize, inner: usize) -> Vec<T> {
    position_maxima(x, outer, chans, inner)
        .into_iter()
        .map(scale_of_max)
        .collect()
}

/// max |w| at every position (NaN where a NaN is among the values).
fn position_maxima<T: Element>(x: &[T], outer: usize, chans: usize, inner: usize) -> Vec<f32> {
    // Tiles of positions in parallel (a linear or conv weight has one
    // outer index: its positions are the only parallelism); each reads
    // every channel's contiguous run of the tile.
    const PTILE: usize = 4096;
    let tiles = inner.div_ceil(PTILE).max(1);
    let per_tile: Vec<Vec<f32>> = (0..outer * tiles)
        .into_par_iter()
        .map(|k| {
            let (oi, t0) = (k / tiles, k % tiles * PTILE);
            let len = PTILE.min(inner - t0);
            let start = oi * chans * inner + t0;
            T::abs_max_runs(&x[start..], chans, inner, len)
        })
        .collect();
    per_tile.into_iter().flatten().collect()
}

/// Positions per tile when [`scaled_values_input`] transposes a weight.
const TILE: usize = 64;

/// Per-channel scales in coremltools' layout: one scale per position off
/// the channel axis (`s = max |w|` over the channels, `[1, Cin, kh, kw]`
/// for a conv weight). A LUT group of `gs` channels then needs one stored
/// LUT per position, the grid `[groups, Cin, kh, kw]`: the group's LUT
/// repeated and scaled per position. Each group is clustered with the
/// positions' scales as weights ([`palettize_scaled`]).
fn scaled_values_input<T: Element>(
    x: &[T],
    shape: &[usize],
    axis: usize,
    keep: Option<&[bool]>,
    gs: usize,
    nbits: u32,
    lut_spec: Option<Spec>,
) -> Result<Palettized<T>, String> {
    let (outer, chans, inner) = split_axis(shape, axis);
    if keep.is_none() {
        if let Some(x16) = T::as_f16(x) {
            return scaled_dense_f16(x16, (outer, chans, inner), axis, shape, gs, nbits, lut_spec);
        }
    }
    let groups = chans / gs;
    let npos = outer * inner;
    let kept = |i: usize| keep.is_none_or(|k| k[i]);
    // Each position's values across a run of channels. Dense weights are
    // read row by row in tiles of positions (the channel axis is strided:
    // gathering one position's column at a time misses the cache once per
    // value on large convs); pruned ones go through the kept mask.
    let column = |q: usize, cs: std::ops::Range<usize>| -> Vec<T> {
        let (oi, ii) = (q / inner, q % inner);
        let base = oi * chans * inner + ii;
        cs.map(|c| base + c * inner)
            .filter(|&i| kept(i))
            .map(|i| x[i])
            .collect()
    };
    let columns = |cs: std::ops::Range<usize>| -> Vec<Vec<T>> {
        if keep.is_some() {
            return (0..npos).map(|q| column(q, cs.clone())).collect();
        }
        let mut rows: Vec<Vec<T>> = (0..npos).map(|_| vec![T::ZERO; cs.len()]).collect();
        for oi in 0..outer {
            let block = &x[oi * chans * inner..(oi + 1) * chans * inner];
            for t0 in (0..inner).step_by(TILE) {
                let t1 = (t0 + TILE).min(inner);
                // Row by row of the tile: the tile's channel lines stay in
                // cache while each position's values are written in order.
                for (t, row) in (t0..t1).zip(&mut rows[oi * inner + t0..oi * inner + t1]) {
                    for (d, c) in row.iter_mut().zip(cs.clone()) {
                        *d = block[c * inner + t];
                    }
                }
            }
        }
        rows
    };
    let scales: Vec<T> = if keep.is_some() {
        columns(0..chans).par_iter().map(|v| row_scale(v)).collect()
    } else {
        position_scales(x, outer, chans, inner)
    };
    let res: Vec<_> = (0..groups)
        .into_par_iter()
        .map(|g| {
            palettize_scaled(
                &columns(g * gs..(g + 1) * gs),
                Some(&scales),
                nbits,
                lut_spec,
            )
        })
        .collect();
    let res: Vec<ScaledGroup<T>> = res
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(group_err)?;
    let mut dense = vec![0u8; x.len()];
    let mut acc = GroupError2::default();
    for (g, sg) in res.iter().enumerate() {
        acc.add(&sg.error);
        if keep.is_none() {
            // The transpose back, tile by tile.
            for oi in 0..outer {
                for t0 in (0..inner).step_by(TILE) {
                    let t1 = (t0 + TILE).min(inner);
                    let idx = &sg.indices[oi * inner + t0..oi * inner + t1];
                    for (j, c) in (g * gs..(g + 1) * gs).enumerate() {
                        let dst = &mut dense
                            [(oi * chans + c) * inner + t0..(oi * chans + c) * inner + t1];
                        for (d, r) in dst.iter_mut().zip(idx) {
                            *d = r[j];
                        }
                    }
                }
            }
            continue;
        }
        for (q, idx) in sg.indices.iter().enumerate() {
            let (oi, ii) = (q / inner, q % inner);
            let base = oi * chans * inner + ii;
            let pos = (g * gs..(g + 1) * gs)
                .map(|c| base + c * inner)
                .filter(|&i| kept(i));
            for (p, &v) in pos.zip(idx) {
                dense[p] = v;
            }
        }
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
    let parts = res
        .into_iter()
        .map(|sg| ScaledParts {
            levels: sg.levels.concat(),
            lut: sg.lut,
            row_scale: sg.row_scale,
            codes: sg.codes,
        })
        .collect();
    let geometry = ScaledGeometry {
        outer,
        groups,
        inner,
        gs,
        nbits,
        axis,
    };
    Ok(assemble_scaled(
        parts, scales, geometry, shape, lut_spec, indices, acc,
    ))
}

/// Where the groups of a per-channel-scale weight lie (coremltools'
/// layout): `groups` LUT groups of `gs` channels along `axis`, between
/// `outer` and `inner` positions.
struct ScaledGeometry {
    outer: usize,
    groups: usize,
    inner: usize,
    gs: usize,
    nbits: u32,
    axis: usize,
}

/// One LUT group's result in the weight's element type: per position `q`
/// its decoded LUT `levels[q·2^nbits..][..2^nbits]` and stored scale, and
/// the shared LUT (or its codes).
struct ScaledParts<T> {
    levels: Vec<T>,
    lut: Vec<T>,
    row_scale: Vec<T>,
    codes: Option<crate::kernels::palettize::LutCodes>,
}

/// The stored form of a per-channel-scale weight from its groups' parts:
/// one LUT per (outer, group, position) block in row-major order of the
/// grid, with its scale and zero point; entries stored as values share
/// the position scales `scales` across groups (as coremltools stores them).
fn assemble_scaled<T: Element>(
    parts: Vec<ScaledParts<T>>,
    scales: Vec<T>,
    geo: ScaledGeometry,
    shape: &[usize],
    lut_spec: Option<Spec>,
    indices: Vec<u8>,
    error: GroupError2,
) -> Palettized<T> {
    let ScaledGeometry {
        outer,
        groups,
        inner,
        gs,
        nbits,
        axis,
    } = geo;
    let k = 1usize << nbits;
    let nblocks = outer * groups * inner;
    let mut lut = Vec::with_capacity(nblocks * k);
    let mut st = StoredParts {
        codes: lut_spec.map(|_| Vec::with_capacity(nblocks * k)),
        values: Vec::new(),
        scales: Vec::with_capacity(nblocks),
        zero_points: Vec::with_capacity(nblocks),
        scale_grid: None,
    };
    for oi in 0..outer {
        for p in &parts {
            for q in oi * inner..(oi + 1) * inner {
                lut.extend_from_slice(&p.levels[q * k..(q + 1) * k]);
                match (&mut st.codes, &p.codes) {
                    (Some(all), Some(c)) => {
                        all.extend_from_slice(&c.codes);
                        st.zero_points.push(c.params.zero_point);
                    }
                    _ => {
                        st.values.extend_from_slice(&p.lut);
                        st.zero_points.push(0);
                    }
                }
                st.scales.push(p.row_scale[q]);
            }
        }
    }
    let mut grid = shape.to_vec();
    grid[axis] = groups;
    if st.codes.is_none() {
        // Entries stored as values: the scale is the position's alone, one
        // per position shared by every group (as coremltools stores it).
        st.scales = scales;
        st.zero_points.truncate(outer * inner);
        let mut g = shape.to_vec();
        g[axis] = 1;
        st.scale_grid = Some(g);
    }
    Palettized {
        lut,
        indices,
        nbits,
        groups: nblocks,
        group_size: gs,
        error,
        stored: Some(st),
        grid: Some(grid),
    }
}

/// [`scaled_values_input`] for a dense fp16 weight, in the weight's own
/// layout ([`palettize_scaled_dense`]: no transposes, the histogram and
/// the assignment parallel inside each group as well as across groups).
#[allow(clippy::too_many_arguments)]
fn scaled_dense_f16<T: Element>(
    x: &[f16],
    (outer, chans, inner): (usize, usize, usize),
    axis: usize,
    shape: &[usize],
    gs: usize,
    nbits: u32,
    lut_spec: Option<Spec>,
) -> Result<Palettized<T>, String> {
    let groups = chans / gs;
    let maxima = position_maxima(x, outer, chans, inner);
    if maxima.iter().any(|m| !m.is_finite()) {
        return Err(group_err(GroupError::NonFinite));
    }
    let scales: Vec<f16> = maxima.into_iter().map(scale_of_max).collect();
    let units: Vec<u128> = scales.iter().map(|s| square_units(s.to_bits())).collect();
    let block = |g: usize| Block {
        outer,
        chans,
        inner,
        c0: g * gs,
        gs,
    };
    let run = |g: usize, o: &mut [u8]| {
        palettize_scaled_dense(x, block(g), &scales, &units, nbits, lut_spec, o)
    };
    let mut dense = vec![0u8; x.len()];
    let res: Vec<DenseScaled> = if outer == 1 {
        // Each group's indices are one run of the output.
        dense
            .par_chunks_mut((gs * inner).max(1))
            .enumerate()
            .map(|(g, o)| run(g, o))
            .collect::<Result<_, _>>()
            .map_err(group_err)?
    } else {
        let per: Vec<(DenseScaled, Vec<u8>)> = (0..groups)
            .into_par_iter()
            .map(|g| {
                let mut o = vec![0u8; outer * gs * inner];
                run(g, &mut o).map(|d| (d, o))
            })
            .collect::<Result<_, _>>()
            .map_err(group_err)?;
        per.into_iter()
            .enumerate()
            .map(|(g, (d, o))| {
                for (r, src) in o.chunks(inner.max(1)).enumerate() {
                    let (oi, j) = (r / gs, r % gs);
                    let start = (oi * chans + g * gs + j) * inner;
                    dense[start..start + inner].copy_from_slice(src);
                }
                d
            })
            .collect()
    };
    let mut acc = GroupError2::default();
    for d in &res {
        acc.add(&d.error);
    }
    let parts = res
        .into_iter()
        .map(|d| ScaledParts {
            levels: T::from_f16_vec(d.levels),
            lut: T::from_f16_vec(d.lut),
            row_scale: T::from_f16_vec(d.row_scale),
            codes: d.codes,
        })
        .collect();
    let geometry = ScaledGeometry {
        outer,
        groups,
        inner,
        gs,
        nbits,
        axis,
    };
    Ok(assemble_scaled(
        parts,
        T::from_f16_vec(scales),
        geometry,
        shape,
        lut_spec,
        dense,
        acc,
    ))
}

fn group_err(e: GroupError) -> String {
    match e {
        GroupError::NonFinite => "contains NaN or infinity".into(),
        GroupError::TooManyUnique(n) => {
            format!("{n} unique values do not fit the requested nbits (mode unique)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// A NaN or an infinity anywhere in a dense fp16 weight is refused by
    /// the per-channel-scale path (its position scale is then not finite),
    /// at every group size, as the per-position path refuses it.
    #[test]
    fn dense_scaled_path_refuses_non_finite() {
        let shape = [32usize, 20, 3];
        let n: usize = shape.iter().product();
        for bad in [f16::NAN, f16::INFINITY, f16::NEG_INFINITY] {
            for at in [0, 7, n - 1] {
                let mut x: Vec<f16> = (0..n)
                    .map(|i| f16::from_f64(((i * 37 % 101) as f64 - 50.0) * 1e-3))
                    .collect();
                x[at] = bad;
                for gs in [32, 16] {
                    let e = scaled_values_input(&x, &shape, 0, None, gs, 4, None)
                        .err()
                        .expect("refused");
                    assert!(e.contains("NaN or infinity"), "{e}");
                }
            }
        }
    }

    /// The dense fp16 path (the weight's own layout, exact histogram sums)
    /// gives what the per-position rows of the pruned path (here with
    /// everything kept) give: same indices, LUTs and scales, and the same
    /// error up to the order of the additions, with positions on both
    /// sides of the channel axis and rows that are not a multiple of the
    /// assignment's block.
    #[test]
    fn tiled_columns_equal_the_gather() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        // (shape, axis, group size, distinct values: 0 = continuous, 2 =
        // ±0.05). The fourth has rows longer than one assignment tile; the
        // last two have LUTs padded with zeros: duplicate entries, and with
        // ±0.05 alone the zero padding sorts between them (indices are not
        // ranks).
        let cases: [(&[usize], usize, usize, usize); 6] = [
            (&[3, 32, 70, 2], 1, 16, 0),
            (&[3, 32, 70, 2], 1, 32, 0),
            (&[3, 32, 70, 2], 0, 3, 0),
            (&[40, 20, 33], 0, 8, 0),
            (&[16, 40, 3], 0, 16, 3),
            (&[16, 40, 3], 0, 8, 2),
        ];
        for (shape, axis, gs, distinct) in cases {
            let n: usize = shape.iter().product();
            let x: Vec<f16> = (0..n)
                .map(|_| {
                    let u = next() - 0.5;
                    let u = if distinct == 2 {
                        0.5 * u.signum()
                    } else if distinct > 0 {
                        (u * distinct as f64).round() / distinct as f64
                    } else {
                        u
                    };
                    f16::from_f64(u * 0.1)
                })
                .collect();
            let all = vec![true; n];
            let a = scaled_values_input(&x, shape, axis, None, gs, 4, None).expect("dense");
            let b = scaled_values_input(&x, shape, axis, Some(&all), gs, 4, None).expect("kept");
            assert_eq!(a.indices, b.indices, "{shape:?} axis {axis} gs {gs}");
            assert_eq!(a.lut, b.lut);
            assert_eq!(a.grid, b.grid);
            let (ea, eb) = (a.error.sse, b.error.sse);
            assert!((ea - eb).abs() <= 1e-12 * eb, "sse {ea} vs {eb}");
            assert_eq!(a.error.max_abs, b.error.max_abs);
            let (sa, sb) = (a.stored.expect("stored"), b.stored.expect("stored"));
            assert_eq!(sa.scales, sb.scales);
            assert_eq!(sa.values, sb.values);
        }
    }
}
