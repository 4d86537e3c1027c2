//! Palettization of one group of values: a lookup table of at most
//! `2^nbits` entries plus one index per value.
//!
//! The LUT is stored in the weight's own dtype. For fp16 weights we work on
//! the fp16 bit patterns directly: a histogram over the (at most 63,488
//! distinct finite) values, exact k-means on it ([`super::kmeans`]),
//! centroids rounded to fp16, then every distinct value is mapped to its
//! *nearest* fp16 LUT entry. Assigning to the nearest rounded entry (rather
//! than to the cluster the value came from, as coremltools does) can only
//! lower the error.

use super::kmeans::{kmeans_1d, Histogram};
use super::quantize::{dequantize, params, quantize, Params, Spec, Store};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// How LUT entries are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Optimal 1-D k-means.
    Kmeans,
    /// `2^n` evenly spaced values from min to max.
    Uniform,
    /// The distinct values themselves (lossless; fails if there are too many).
    Unique,
}

/// Why a group could not be palettized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupError {
    /// NaN or infinity in the data.
    NonFinite,
    /// `unique` mode with more distinct values than entries.
    TooManyUnique(usize),
}

/// LUT and indices of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group<T> {
    /// Exactly `2^nbits` entries, ascending over the used ones; unused
    /// entries are 0.
    pub lut: Vec<T>,
    /// One index per input value.
    pub indices: Vec<u8>,
    /// Error accounting of the reconstruction `lut[indices]`.
    pub error: GroupError2,
}

/// Sums that give SNR, relative L2 and max error of a group (and of a
/// whole tensor, by adding groups up).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupError2 {
    /// Σ x².
    pub signal: f64,
    /// Σ (x − lut[idx])².
    pub sse: f64,
    /// max |x − lut[idx]|.
    pub max_abs: f64,
}

impl GroupError2 {
    /// Adds another group's sums.
    pub fn add(&mut self, o: &GroupError2) {
        self.signal += o.signal;
        self.sse += o.sse;
        self.max_abs = self.max_abs.max(o.max_abs);
    }
}

/// Writes the finite fp16 patterns other than -0 whose count is non-zero
/// into `order`, in ascending value order (as [`finite_f16_ascending`]),
/// and returns how many there are.
///
/// Patterns go sixteen at a time: a chunk with no count is skipped after
/// one vector test (large magnitudes and most subnormals are absent from
/// weights), the others are compacted without a branch per pattern
/// (present patterns come in no predictable order). A plain walk over the
/// 63k patterns cost as much as the histogram itself on 16 x 1280 groups.
pub(crate) fn present_f16_ascending(counts: &[u32; 1 << 16], order: &mut [u16; 1 << 16]) -> usize {
    const CHUNK: usize = 16;
    let mut n = 0usize;
    let mut take = |range: std::ops::Range<usize>, descending: bool, n: &mut usize| {
        if counts[range.clone()].iter().fold(0u32, |a, &c| a | c) == 0 {
            return;
        }
        let mut put = |b: usize| {
            order[*n] = b as u16;
            *n += usize::from(counts[b] != 0);
        };
        if descending {
            range.rev().for_each(&mut put);
        } else {
            range.for_each(&mut put);
        }
    };
    // Negatives: 0xfbff (the most negative) down to 0x8001.
    let mut hi = 0xfc00usize;
    while hi > 0x8001 {
        let lo = hi.saturating_sub(CHUNK).max(0x8001);
        take(lo..hi, true, &mut n);
        hi = lo;
    }
    // Then 0 up to 0x7bff (the largest finite).
    for lo in (0..0x7c00usize).step_by(CHUNK) {
        take(lo..(lo + CHUNK).min(0x7c00), false, &mut n);
    }
    n
}

/// The finite fp16 bit patterns other than -0, in ascending value order:
/// negatives from the largest magnitude (0xfbff) down, then 0 and up.
pub(crate) fn finite_f16_ascending() -> impl Iterator<Item = u16> {
    (0x8001..0xfc00u16).rev().chain(0..0x7c00u16)
}

/// Order-preserving key of a finite fp16 bit pattern (`-0` maps to `+0`).
#[inline]
pub(crate) fn key16(bits: u16) -> u16 {
    let bits = if bits == 0x8000 { 0 } else { bits };
    if bits & 0x8000 != 0 {
        !bits
    } else {
        bits | 0x8000
    }
}

#[inline]
fn unkey16(k: u16) -> u16 {
    if k & 0x8000 != 0 {
        k & 0x7fff
    } else {
        !k
    }
}

/// Reusable per-thread buffers for fp16 groups: a count and an index per
/// fp16 bit pattern. Fixed-size arrays, indexed by `u16`, so the hot loops
/// carry no bounds checks.
pub struct Scratch16 {
    counts: Box<[u32; 1 << 16]>,
    index_of: Box<[u8; 1 << 16]>,
    order: Box<[u16; 1 << 16]>,
}

impl Default for Scratch16 {
    fn default() -> Self {
        Self {
            counts: vec![0u32; 1 << 16]
                .into_boxed_slice()
                .try_into()
                .expect("65536 entries"),
            index_of: vec![0u8; 1 << 16]
                .into_boxed_slice()
                .try_into()
                .expect("65536 entries"),
            order: vec![0u16; 1 << 16]
                .into_boxed_slice()
                .try_into()
                .expect("65536 entries"),
        }
    }
}

/// Whether an fp16 bit pattern is NaN or infinite (exponent all ones).
#[inline]
fn non_finite16(bits: u16) -> bool {
    bits & 0x7c00 == 0x7c00
}

/// Below this many values a group's histogram comes from sorting its keys;
/// from it on, from counting into the 64k table and scanning the table.
const TABLE_MIN: usize = 4096;

/// Palettizes fp16 values into `2^nbits` entries.
pub fn palettize_f16(
    values: &[f16],
    nbits: u32,
    mode: Mode,
    sc: &mut Scratch16,
) -> Result<Group<f16>, GroupError> {
    let mut indices = vec![0u8; values.len()];
    let (lut, error) = palettize_f16_into(values, nbits, mode, sc, &mut indices)?;
    Ok(Group {
        lut,
        indices,
        error,
    })
}

/// [`palettize_f16`] writing the indices into `out` (one per value): the
/// tensor-level code hands each group its slice of the weight's index
/// buffer, so indices are written once, where they end up.
pub fn palettize_f16_into(
    values: &[f16],
    nbits: u32,
    mode: Mode,
    sc: &mut Scratch16,
    out: &mut [u8],
) -> Result<(Vec<f16>, GroupError2), GroupError> {
    assert_eq!(values.len(), out.len(), "one index per value");
    let k = 1usize << nbits;
    // Histogram: counts per raw bit pattern; `present` lists the distinct
    // patterns in ascending value order (-0 folded into +0).
    let mut present: Vec<u16> = Vec::new();
    if values.len() >= TABLE_MIN {
        let counts = &mut *sc.counts;
        for v in values {
            counts[usize::from(v.to_bits())] += 1;
        }
        // NaN/inf patterns: 0x7c00..=0x7fff and 0xfc00..=0xffff.
        let bad = counts[0x7c00..0x8000]
            .iter()
            .chain(&counts[0xfc00..])
            .any(|&c| c != 0);
        if bad {
            counts.fill(0);
            return Err(GroupError::NonFinite);
        }
        counts[0] += std::mem::take(&mut counts[0x8000]);
        // Branch-free compaction of the patterns present, in value order
        // (negative values from the largest magnitude, bits 0xfbff, down;
        // then 0 up): about a third of the 63k patterns are present in a
        // typical group, in no predictable pattern, so a branch per
        // pattern would mispredict often.
        let n = present_f16_ascending(counts, &mut sc.order);
        present.extend_from_slice(&sc.order[..n]);
    } else {
        if values.iter().any(|v| non_finite16(v.to_bits())) {
            return Err(GroupError::NonFinite);
        }
        let mut keys: Vec<u16> = values.iter().map(|v| key16(v.to_bits())).collect();
        keys.sort_unstable();
        let counts = &mut *sc.counts;
        for key in keys {
            let bits = unkey16(key);
            if counts[usize::from(bits)] == 0 {
                present.push(bits);
            }
            counts[usize::from(bits)] += 1;
        }
    }
    let hist = Histogram {
        values: present
            .iter()
            .map(|&bits| f16::from_bits(bits).to_f64())
            .collect(),
        counts: present
            .iter()
            .map(|&bits| f64::from(sc.counts[usize::from(bits)]))
            .collect(),
    };
    for &bits in &present {
        sc.counts[usize::from(bits)] = 0;
    }
    let mut lut: Vec<f16> = match mode {
        Mode::Kmeans => kmeans_1d(&hist, k)
            .centroids
            .iter()
            .map(|&c| f16::from_f64(c))
            .collect(),
        Mode::Unique => {
            if hist.len() > k {
                return Err(GroupError::TooManyUnique(hist.len()));
            }
            hist.values.iter().map(|&v| f16::from_f64(v)).collect()
        }
        Mode::Uniform => {
            let lo = hist.values.first().copied().unwrap_or(0.0);
            let hi = hist.values.last().copied().unwrap_or(0.0);
            let step = (hi - lo) / (k - 1) as f64;
            (0..k)
                .map(|i| f16::from_f64(lo + step * i as f64))
                .collect()
        }
    };
    // Nearest entry for every distinct value: both lists are sorted, so one
    // merge-like walk suffices (ties go to the lower entry).
    let lutf: Vec<f64> = lut.iter().map(|x| x.to_f64()).collect();
    let mut j = 0usize;
    // The error is accounted on the histogram: O(distinct values), not
    // O(values).
    let mut error = GroupError2::default();
    let index_of = &mut *sc.index_of;
    for ((&bits, &x), &c) in present.iter().zip(&hist.values).zip(&hist.counts) {
        while j + 1 < lutf.len() && (lutf[j + 1] - x).abs() < (lutf[j] - x).abs() {
            j += 1;
        }
        index_of[usize::from(bits)] = j as u8;
        let d = x - lutf[j];
        error.signal += c * x * x;
        error.sse += c * d * d;
        error.max_abs = error.max_abs.max(d.abs());
    }
    // -0 was folded into +0 above.
    index_of[0x8000] = index_of[0];
    if k <= 16 && values.len() >= TABLE_MIN {
        // The index is a step function of the value, so it can be taken
        // as the number of thresholds below it: `thr[j]` is the largest
        // present value whose index is at most `j` (i16::MIN when there is
        // none). Vector compares do that at about twice the speed of a
        // table lookup per value.
        let mut thr = [i16::MAX; 15];
        let mut last = [None::<i16>; 16];
        for &bits in &present {
            last[usize::from(index_of[usize::from(bits)])] = Some(ordered16(bits));
        }
        let mut t = i16::MIN;
        for j in 0..k - 1 {
            t = last[j].unwrap_or(t);
            thr[j] = t;
        }
        map_by_thresholds(values, &thr, out);
    } else {
        for (o, v) in out.iter_mut().zip(values) {
            *o = index_of[usize::from(v.to_bits())];
        }
    }
    lut.resize(k, f16::ZERO);
    Ok((lut, error))
}

/// A finite fp16 bit pattern as an `i16` that orders like the values:
/// non-negative patterns as they are, negative ones with their magnitude
/// bits flipped (-0 becomes -1, just below +0; -65504 becomes -31744, so
/// `i16::MIN` is below every finite value).
#[inline(always)]
fn ordered16(bits: u16) -> i16 {
    let s = bits as i16;
    s ^ ((s >> 15) & 0x7fff)
}

/// `out[i]` = the number of thresholds strictly below `values[i]` (in
/// [`ordered16`] order); unused thresholds are `i16::MAX`. At most 15
/// thresholds: 4-bit indices.
fn map_by_thresholds(values: &[f16], thr: &[i16; 15], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { map_by_thresholds_avx2(values, thr, out) };
    }
    map_by_thresholds_body(values, thr, out)
}

/// [`map_by_thresholds`] on 256-bit vectors.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn map_by_thresholds_avx2(values: &[f16], thr: &[i16; 15], out: &mut [u8]) {
    map_by_thresholds_body(values, thr, out)
}

/// Blocks of 32 values, written so that the compiler keeps a block's keys
/// and counts in vector registers (SSE2/NEON as the baseline, AVX2 above).
#[inline(always)]
fn map_by_thresholds_body(values: &[f16], thr: &[i16; 15], out: &mut [u8]) {
    const B: usize = 32;
    let used = thr.iter().take_while(|&&t| t != i16::MAX).count();
    let thr = &thr[..used];
    let whole = values.len() / B * B;
    for (o, c) in out[..whole]
        .chunks_exact_mut(B)
        .zip(values[..whole].chunks_exact(B))
    {
        let mut key = [0i16; B];
        for (k, v) in key.iter_mut().zip(c) {
            *k = ordered16(v.to_bits());
        }
        let mut n = [0i16; B];
        for &t in thr {
            for (n, &k) in n.iter_mut().zip(&key) {
                *n += i16::from(k > t);
            }
        }
        for (o, &n) in o.iter_mut().zip(&n) {
            *o = n as u8;
        }
    }
    for (o, v) in out[whole..].iter_mut().zip(&values[whole..]) {
        let k = ordered16(v.to_bits());
        *o = thr.iter().filter(|&&t| k > t).count() as u8;
    }
}

/// Palettizes f32 values into `2^nbits` entries (f32 LUT).
pub fn palettize_f32(values: &[f32], nbits: u32, mode: Mode) -> Result<Group<f32>, GroupError> {
    let k = 1usize << nbits;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(GroupError::NonFinite);
    }
    let xs: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    let hist = Histogram::from_values(&xs);
    let mut lut: Vec<f32> = match mode {
        Mode::Kmeans => kmeans_1d(&hist, k)
            .centroids
            .iter()
            .map(|&c| c as f32)
            .collect(),
        Mode::Unique => {
            if hist.len() > k {
                return Err(GroupError::TooManyUnique(hist.len()));
            }
            hist.values.iter().map(|&v| v as f32).collect()
        }
        Mode::Uniform => {
            let lo = hist.values.first().copied().unwrap_or(0.0);
            let hi = hist.values.last().copied().unwrap_or(0.0);
            let step = (hi - lo) / (k - 1) as f64;
            (0..k).map(|i| (lo + step * i as f64) as f32).collect()
        }
    };
    let lutf: Vec<f64> = lut.iter().map(|&x| f64::from(x)).collect();
    let mut error = GroupError2::default();
    let indices = values
        .iter()
        .map(|&v| {
            let x = f64::from(v);
            let i = nearest(&lutf, x);
            let d = x - lutf[i];
            error.signal += x * x;
            error.sse += d * d;
            error.max_abs = error.max_abs.max(d.abs());
            i as u8
        })
        .collect();
    lut.resize(k, 0.0);
    Ok(Group {
        lut,
        indices,
        error,
    })
}

/// A weight element type that can be palettized (fp16 and fp32), so that
/// tensor-level code is written once for both.
pub trait Element: Copy + Send + Sync + 'static {
    /// Per-thread reusable buffers.
    type Scratch: Default + Send;
    /// The zero of the type (unused LUT entries, empty groups).
    const ZERO: Self;
    /// Palettizes one group into `2^nbits` entries.
    fn palettize(
        values: &[Self],
        nbits: u32,
        mode: Mode,
        sc: &mut Self::Scratch,
    ) -> Result<Group<Self>, GroupError>;
    /// Like [`Element::palettize`], with the indices written into `out`
    /// (one per value); returns the LUT and the error sums.
    fn palettize_into(
        values: &[Self],
        nbits: u32,
        mode: Mode,
        sc: &mut Self::Scratch,
        out: &mut [u8],
    ) -> Result<(Vec<Self>, GroupError2), GroupError> {
        let g = Self::palettize(values, nbits, mode, sc)?;
        out.copy_from_slice(&g.indices);
        Ok((g.lut, g.error))
    }
    /// The bit pattern (distinct patterns are distinct LUT entries in
    /// `unique` mode).
    fn pattern(self) -> u32;
    /// The storage dtype, for values decoded from integer codes.
    const STORE: Store;
    /// Exact widening.
    fn to_f64(self) -> f64;
    /// `x`, already a value of this type (exact).
    fn from_f32(x: f32) -> Self;
    /// `x` rounded to this type (nearest, ties to even).
    fn from_f64(x: f64) -> Self;
    /// Exact widening of a slice into `dst` (same length).
    fn widen_slice(src: &[Self], dst: &mut [f32]);
    /// `max |x|` at each of `len` positions over `rows` runs of `x`: run
    /// `r` starts at `r * stride` (the channels of a weight at a tile of
    /// positions). NaN never wins the float max; a non-finite weight is
    /// refused later anyway.
    fn abs_max_runs(x: &[Self], rows: usize, stride: usize, len: usize) -> Vec<f32> {
        let mut m = vec![0f32; len];
        let mut wide = vec![0f32; len];
        for r in 0..rows {
            Self::widen_slice(&x[r * stride..r * stride + len], &mut wide);
            for (a, w) in m.iter_mut().zip(&wide) {
                *a = a.max(w.abs());
            }
        }
        m
    }
    /// The values as fp16, when that is their type.
    fn as_f16(_x: &[Self]) -> Option<&[f16]> {
        None
    }
    /// fp16 values (exactly representable in this type) converted to it.
    fn from_f16_vec(v: Vec<f16>) -> Vec<Self> {
        v.into_iter().map(|x| Self::from_f64(x.to_f64())).collect()
    }
    /// Whether every value is finite (`buf` is scratch for widening).
    fn all_finite(src: &[Self], buf: &mut Vec<f32>) -> bool {
        buf.resize(src.len(), 0f32);
        Self::widen_slice(src, buf);
        buf.iter().all(|x| x.is_finite())
    }
    /// `dst[i] = src[i] / s` rounded once to this type (nearest, ties to
    /// even); `dst` has `src`'s length.
    fn divide_slice(src: &[Self], s: Self, dst: &mut [Self]) {
        let s = s.to_f64();
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = Self::from_f64(v.to_f64() / s);
        }
    }
}

impl Element for f16 {
    /// On the bits: the magnitude bits of finite fp16 values order as their
    /// absolute values, so the max is an integer max (no widening).
    fn abs_max_runs(x: &[f16], rows: usize, stride: usize, len: usize) -> Vec<f32> {
        let bits: &[u16] = bytemuck::cast_slice(x);
        let mut m = vec![0u16; len];
        for r in 0..rows {
            for (a, &b) in m.iter_mut().zip(&bits[r * stride..r * stride + len]) {
                *a = (*a).max(b & 0x7fff);
            }
        }
        m.into_iter().map(|b| f16::from_bits(b).to_f32()).collect()
    }

    fn as_f16(x: &[f16]) -> Option<&[f16]> {
        Some(x)
    }
    fn from_f16_vec(v: Vec<f16>) -> Vec<f16> {
        v
    }
    /// On the bits: finite iff the exponent is not all ones (no widening).
    fn all_finite(src: &[f16], _buf: &mut Vec<f32>) -> bool {
        let bits: &[u16] = bytemuck::cast_slice(src);
        bits.iter().fold(0u16, |m, &b| m.max(b & 0x7fff)) < 0x7c00
    }

    type Scratch = Scratch16;
    const ZERO: Self = f16::ZERO;
    fn palettize(
        values: &[Self],
        nbits: u32,
        mode: Mode,
        sc: &mut Scratch16,
    ) -> Result<Group<Self>, GroupError> {
        palettize_f16(values, nbits, mode, sc)
    }
    fn palettize_into(
        values: &[Self],
        nbits: u32,
        mode: Mode,
        sc: &mut Scratch16,
        out: &mut [u8],
    ) -> Result<(Vec<Self>, GroupError2), GroupError> {
        palettize_f16_into(values, nbits, mode, sc, out)
    }
    fn pattern(self) -> u32 {
        u32::from(self.to_bits())
    }
    const STORE: Store = Store::F16;
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn from_f64(x: f64) -> Self {
        f16::from_f64(x)
    }
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    /// Through f32: the quotient of two fp16 values rounded to f32 and then
    /// to fp16 is the correctly rounded quotient (f32 carries 24 ≥ 2·11 + 2
    /// bits, so the double rounding is innocuous for division), and both
    /// conversions run in bulk (F16C where the CPU has it).
    fn divide_slice(src: &[Self], s: Self, dst: &mut [Self]) {
        let s = s.to_f32();
        let mut buf = [0f32; 256];
        for (sc, dc) in src.chunks(256).zip(dst.chunks_mut(256)) {
            let b = &mut buf[..sc.len()];
            sc.convert_to_f32_slice(b);
            for x in b.iter_mut() {
                *x /= s;
            }
            dc.convert_from_f32_slice(b);
        }
    }
}

impl Element for f32 {
    type Scratch = ();
    const ZERO: Self = 0.0;
    fn palettize(
        values: &[Self],
        nbits: u32,
        mode: Mode,
        _: &mut (),
    ) -> Result<Group<Self>, GroupError> {
        palettize_f32(values, nbits, mode)
    }
    fn pattern(self) -> u32 {
        self.to_bits()
    }
    const STORE: Store = Store::F32;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

/// Index of the nearest of `levels` (any order) for each value, and the
/// error sums. Equal levels resolve to the lowest index, ties between two
/// levels to the lower level, so the result is deterministic.
pub fn assign_nearest<T: Element>(values: &[T], levels: &[f64]) -> (Vec<u8>, GroupError2) {
    let mut order: Vec<(f64, usize)> = levels.iter().copied().zip(0..).collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    order.dedup_by(|b, a| a.0 == b.0);
    let sorted: Vec<f64> = order.iter().map(|p| p.0).collect();
    if T::STORE == Store::F16 && sorted.len() <= THRESHOLD_PASSES_MAX {
        return assign_nearest_f16(values, &sorted, &order);
    }
    assign_nearest_by_search(values, &sorted, &order)
}

/// [`assign_nearest`] by a binary search per value.
fn assign_nearest_by_search<T: Element>(
    values: &[T],
    sorted: &[f64],
    order: &[(f64, usize)],
) -> (Vec<u8>, GroupError2) {
    let mut error = GroupError2::default();
    let indices = values
        .iter()
        .map(|&v| {
            let x = v.to_f64();
            let i = nearest(sorted, x);
            let d = x - sorted[i];
            error.signal += x * x;
            error.sse += d * d;
            error.max_abs = error.max_abs.max(d.abs());
            order[i].1 as u8
        })
        .collect();
    (indices, error)
}

/// Up to this many distinct levels, fp16 values are assigned by one
/// compare pass per threshold (below: a binary search per value).
pub(crate) const THRESHOLD_PASSES_MAX: usize = 32;

/// [`assign_nearest`] for fp16 values, same indices: the midpoint of two
/// adjacent fp16 levels is exact in f64, and a value goes to the lower
/// level when it is at most the midpoint, i.e. when its order key is at
/// most that of the largest fp16 value not above the midpoint. So a value's
/// rank among the sorted levels is the number of such key thresholds below
/// its key: one pass of 16-bit compares per threshold, which vectorises,
/// instead of a binary search with a float compare per step.
///
/// The work runs in blocks of [`ASSIGN_BLOCK`] values on the stack, and the
/// error sums in [`ASSIGN_LANES`] lanes (value `t` into lane `t % 8`,
/// lanes added in order at the end), which the compiler vectorises: the
/// sums are deterministic, though not bit-equal to an element-order sum.
fn assign_nearest_f16<T: Element>(
    values: &[T],
    sorted: &[f64],
    order: &[(f64, usize)],
) -> (Vec<u8>, GroupError2) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { assign_nearest_f16_avx2(values, sorted, order) };
    }
    assign_nearest_f16_body(values, sorted, order)
}

/// [`assign_nearest_f16`] compiled for AVX2: the same operations in the
/// same order per lane (no reassociation, no FMA), so the same bits, with
/// the key compares and lane sums on 256-bit vectors.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn assign_nearest_f16_avx2<T: Element>(
    values: &[T],
    sorted: &[f64],
    order: &[(f64, usize)],
) -> (Vec<u8>, GroupError2) {
    assign_nearest_f16_body(values, sorted, order)
}

#[inline(always)]
fn assign_nearest_f16_body<T: Element>(
    values: &[T],
    sorted: &[f64],
    order: &[(f64, usize)],
) -> (Vec<u8>, GroupError2) {
    let thresholds: Vec<u16> = sorted
        .windows(2)
        .map(|w| f16_key_at_most(0.5 * (w[0] + w[1])))
        .collect();
    let index: Vec<u8> = order.iter().map(|p| p.1 as u8).collect();
    let mut indices = vec![0u8; values.len()];
    let mut keys = [0u16; ASSIGN_BLOCK];
    let mut rank = [0u8; ASSIGN_BLOCK];
    let mut xs = [0f32; ASSIGN_BLOCK];
    const L: usize = ASSIGN_LANES;
    let (mut sig, mut sse, mut mx) = ([0f64; L], [0f64; L], [0f64; L]);
    for (vals, out) in values
        .chunks(ASSIGN_BLOCK)
        .zip(indices.chunks_mut(ASSIGN_BLOCK))
    {
        let n = vals.len();
        let (keys, rank, xs) = (&mut keys[..n], &mut rank[..n], &mut xs[..n]);
        for (k, v) in keys.iter_mut().zip(vals) {
            *k = key16(v.pattern() as u16);
        }
        rank.fill(0);
        for &t in &thresholds {
            for (r, &k) in rank.iter_mut().zip(keys.iter()) {
                *r += u8::from(k > t);
            }
        }
        T::widen_slice(vals, xs);
        for (o, &r) in out.iter_mut().zip(rank.iter()) {
            *o = index[usize::from(r)];
        }
        // Blocks hold a multiple of L values but the last, so lane l of a
        // block is lane l of the whole row.
        let m = n / L * L;
        for (rs, xs) in rank[..m].chunks_exact(L).zip(xs[..m].chunks_exact(L)) {
            for l in 0..L {
                let x = f64::from(xs[l]);
                let d = (x - sorted[usize::from(rs[l])]).abs();
                sig[l] += x * x;
                sse[l] += d * d;
                mx[l] = if d > mx[l] { d } else { mx[l] };
            }
        }
        for (l, (&r, &x)) in rank[m..].iter().zip(&xs[m..]).enumerate() {
            let x = f64::from(x);
            let d = (x - sorted[usize::from(r)]).abs();
            sig[l] += x * x;
            sse[l] += d * d;
            mx[l] = if d > mx[l] { d } else { mx[l] };
        }
    }
    let error = GroupError2 {
        signal: sig.iter().sum(),
        sse: sse.iter().sum(),
        max_abs: mx.iter().fold(0f64, |a, &b| a.max(b)),
    };
    (indices, error)
}

/// Values per block of [`assign_nearest_f16`] (a multiple of
/// [`ASSIGN_LANES`]).
const ASSIGN_BLOCK: usize = 512;

/// Partial sums per error sum in [`assign_nearest_f16`].
pub(crate) const ASSIGN_LANES: usize = 8;

/// The order key ([`key16`]) of the largest fp16 value (infinities
/// included) that is at most `x`; `x` is not NaN.
pub(crate) fn f16_key_at_most(x: f64) -> u16 {
    let mut k = key16(f16::from_f64(x).to_bits());
    // `from_f64` rounds to nearest (and is off by one ulp in some subnormal
    // cases): step to the exact answer. Keys 0x03ff and 0xfc00 are -inf and
    // +inf, the ends of the non-NaN range.
    while k > 0x03ff && f16::from_bits(unkey16(k)).to_f64() > x {
        k -= 1;
    }
    while k < 0xfc00 && f16::from_bits(unkey16(k + 1)).to_f64() <= x {
        k += 1;
    }
    k
}

/// A group's LUT stored as integer codes: entry `k` decodes to
/// `scale · (codes[k] − zero_point)` rounded to the weight's dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct LutCodes {
    /// One code per LUT entry.
    pub codes: Vec<i32>,
    /// The LUT's scale and zero point.
    pub params: Params,
}

/// Re-fits group `g` of `values` to a LUT of integer codes with one scale
/// (`spec`'s code type and mode, scale from the LUT's own range, as a
/// linear quantization of the LUT would choose it).
///
/// Rounding the entries to the code grid moves them, so the values are
/// re-assigned to the nearest *decoded* entry, and then, for the fixed
/// grid, alternately each entry moves to the grid level nearest its
/// cluster's mean (the best level for that cluster) and the values are
/// re-assigned, while the error falls. Each step can only lower the error,
/// so the result is never worse than quantizing the entries and keeping
/// the indices (coremltools' joint palettize + quantize).
pub fn quantize_lut<T: Element>(values: &[T], g: &mut Group<T>, spec: Spec) -> LutCodes {
    let store = T::STORE;
    let (lo, hi) = spec.qtype.range(spec.symmetric);
    let lutf: Vec<f32> = g.lut.iter().map(|&x| x.to_f64() as f32).collect();
    let (mn, mx) = lutf
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let p = params(mn, mx, spec, store);
    let mut codes: Vec<i32> = lutf
        .iter()
        .map(|&x| quantize(x, p, lo, hi, store))
        .collect();
    let levels = |codes: &[i32]| -> Vec<f64> {
        codes
            .iter()
            .map(|&q| f64::from(dequantize(q, p, store)))
            .collect()
    };
    let (mut indices, mut error) = assign_nearest(values, &levels(&codes));
    for _ in 0..16 {
        let mut sum = vec![0f64; codes.len()];
        let mut count = vec![0f64; codes.len()];
        for (&v, &i) in values.iter().zip(&indices) {
            sum[i as usize] += v.to_f64();
            count[i as usize] += 1.0;
        }
        let next: Vec<i32> = codes
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                if count[k] > 0.0 {
                    quantize((sum[k] / count[k]) as f32, p, lo, hi, store)
                } else {
                    c
                }
            })
            .collect();
        if next == codes {
            break;
        }
        let (ni, ne) = assign_nearest(values, &levels(&next));
        if ne.sse >= error.sse {
            break;
        }
        codes = next;
        indices = ni;
        error = ne;
    }
    g.lut = codes
        .iter()
        .map(|&q| T::from_f32(dequantize(q, p, store)))
        .collect();
    g.indices = indices;
    g.error = error;
    LutCodes { codes, params: p }
}

/// A group of channels palettized with a scale per channel: one shared
/// LUT `L` over the normalised values, channel `o` decoding to
/// `round(r_o · d_j)` where `d` is `L` (or its codes minus the zero point)
/// and `r_o` the channel's stored scale.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaledGroup<T> {
    /// The shared normalised LUT (`2^nbits` entries; its decoded values
    /// when stored as codes).
    pub lut: Vec<T>,
    /// The shared LUT as codes (`--lut-dtype`).
    pub codes: Option<LutCodes>,
    /// Per channel: the stored scale `r_o`.
    pub row_scale: Vec<T>,
    /// Per channel: its decoded LUT (`2^nbits` entries).
    pub levels: Vec<Vec<T>>,
    /// Per channel: one index per value.
    pub indices: Vec<Vec<u8>>,
    /// Error of the decoded reconstruction.
    pub error: GroupError2,
}

/// The weighted histogram of `u = w / S_o` (rounded to the dtype; −0 is
/// 0) with weights `S_o²`, values ascending.
///
/// fp16 values with many elements are counted into a table indexed by
/// their bit pattern, in element order, which gives the same sums, bit for
/// bit, as sorting the (u, weight) pairs stably and summing runs (the
/// general path, kept for f32 and small inputs; a test compares the two).
fn scaled_histogram<T: Element>(rows: &[Vec<T>], scales: &[T]) -> Histogram {
    let n: usize = rows.iter().map(Vec::len).sum();
    scaled_histogram_by(
        rows,
        scales,
        T::STORE == Store::F16 && n >= SCALED_TABLE_MIN,
    )
}

/// [`scaled_histogram`] with the path chosen: `table` (fp16 only) or sort.
fn scaled_histogram_by<T: Element>(rows: &[Vec<T>], scales: &[T], table: bool) -> Histogram {
    let n: usize = rows.iter().map(Vec::len).sum();
    let mut hist = Histogram::default();
    let mut u = Vec::new();
    if table {
        let mut table = vec![0f64; 1 << 16];
        let mut seen = vec![false; 1 << 16];
        for (r, s) in rows.iter().zip(scales) {
            u.resize(r.len(), T::ZERO);
            T::divide_slice(r, *s, &mut u);
            let s = s.to_f64();
            for &q in &u {
                // -0 counts as 0 (this path is fp16-only: -0 is 0x8000).
                let b = q.pattern() as usize;
                let b = if b == 0x8000 { 0 } else { b };
                table[b] += s * s;
                seen[b] = true;
            }
        }
        for bits in finite_f16_ascending() {
            let b = usize::from(bits);
            if seen[b] {
                hist.values.push(f16::from_bits(bits).to_f64());
                hist.counts.push(table[b]);
            }
        }
        return hist;
    }
    let mut pairs: Vec<(f64, f64)> = Vec::with_capacity(n);
    for (r, s) in rows.iter().zip(scales) {
        u.resize(r.len(), T::ZERO);
        T::divide_slice(r, *s, &mut u);
        let s = s.to_f64();
        for &q in &u {
            // -0 counts as 0.
            let q = q.to_f64();
            pairs.push((if q == 0.0 { 0.0 } else { q }, s * s));
        }
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (u, w) in pairs {
        match hist.values.last() {
            Some(&l) if l == u => *hist.counts.last_mut().expect("non-empty") += w,
            _ => {
                hist.values.push(u);
                hist.counts.push(w);
            }
        }
    }
    hist
}

/// Elements from which [`scaled_histogram`] counts fp16 values into a
/// table (zeroing and scanning it costs about as much as sorting this many).
const SCALED_TABLE_MIN: usize = 16_384;

/// Palettizes the channels `rows` of one group with a per-channel scale.
///
/// Each channel's scale is `S_o = max |w|` over the channel (1 for an
/// all-zero channel), stored in the weight's dtype; the normalised values
/// `u = w / S_o` (rounded to the dtype) are clustered with weights `S_o²`,
/// which is the exact k-means objective in the weight's own units:
/// `(w − S_o·c)² = S_o²·(u − c)²`. An unweighted clustering of `u` (what
/// coremltools does) spends entries on channels whose errors are scaled
/// down. Every value then takes the nearest of its channel's *decoded*
/// entries, so the error is that of the stored model.
///
/// `scales` gives each row's scale when it is not its own max |w| (a scale
/// shared with rows of other groups).
pub fn palettize_scaled<T: Element>(
    rows: &[Vec<T>],
    scales: Option<&[T]>,
    nbits: u32,
    lut_spec: Option<Spec>,
) -> Result<ScaledGroup<T>, GroupError> {
    let mut wide = Vec::new();
    if !rows.iter().all(|r| T::all_finite(r, &mut wide)) {
        return Err(GroupError::NonFinite);
    }
    let scales: Vec<T> = match scales {
        Some(s) => s.to_vec(),
        None => rows.iter().map(|r| row_scale(r)).collect(),
    };
    let hist = scaled_histogram(rows, &scales);
    let (lut, codes, data, row_scale) = fit_scaled_lut(&hist, &scales, nbits, lut_spec);
    // Rows are independent (a tensor in one group can have thousands):
    // assigned in parallel, their error sums added in row order.
    let per_row: Vec<(Vec<T>, Vec<u8>, GroupError2)> = rows
        .par_iter()
        .zip(&row_scale)
        .map(|(r, s)| {
            // Core ML multiplies in the dtype: one rounding of the exact product.
            let lv: Vec<T> = data.iter().map(|&d| T::from_f64(s.to_f64() * d)).collect();
            let lf: Vec<f64> = lv.iter().map(|x| x.to_f64()).collect();
            let (idx, e) = assign_nearest(r, &lf);
            (lv, idx, e)
        })
        .collect();
    let mut error = GroupError2::default();
    let mut levels = Vec::with_capacity(rows.len());
    let mut indices = Vec::with_capacity(rows.len());
    for (lv, idx, e) in per_row {
        error.add(&e);
        levels.push(lv);
        indices.push(idx);
    }
    Ok(ScaledGroup {
        lut,
        codes,
        row_scale,
        levels,
        indices,
        error,
    })
}

/// The shared LUT of a per-channel-scale group from its weighted histogram
/// of normalised values: the LUT (in the weight's dtype, or decoded from
/// its codes), the codes, the stored entries `d_j` as f64 and each
/// channel's (or position's) stored scale `r_o`.
pub(crate) fn fit_scaled_lut<T: Element>(
    hist: &Histogram,
    scales: &[T],
    nbits: u32,
    lut_spec: Option<Spec>,
) -> (Vec<T>, Option<LutCodes>, Vec<f64>, Vec<T>) {
    let k = 1usize << nbits;
    let mut lut: Vec<T> = kmeans_1d(hist, k)
        .centroids
        .iter()
        .map(|&c| T::from_f64(c))
        .collect();
    lut.resize(k, T::ZERO);
    let store = T::STORE;
    // The stored entries d_j and each channel's stored scale r_o.
    let (data, codes, row_scale): (Vec<f64>, Option<LutCodes>, Vec<T>) = match lut_spec {
        None => (
            lut.iter().map(|x| x.to_f64()).collect(),
            None,
            scales.to_vec(),
        ),
        Some(spec) => {
            let (lo, hi) = spec.qtype.range(spec.symmetric);
            let lf: Vec<f32> = lut.iter().map(|x| x.to_f64() as f32).collect();
            let (mn, mx) = lf
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            let p = params(mn, mx, spec, store);
            let q: Vec<i32> = lf.iter().map(|&x| quantize(x, p, lo, hi, store)).collect();
            lut = q
                .iter()
                .map(|&c| T::from_f32(dequantize(c, p, store)))
                .collect();
            let rs = scales
                .iter()
                .map(|s| T::from_f64(s.to_f64() * f64::from(p.scale)))
                .collect();
            (
                q.iter().map(|&c| f64::from(c - p.zero_point)).collect(),
                Some(LutCodes {
                    codes: q,
                    params: p,
                }),
                rs,
            )
        }
    };
    (lut, codes, data, row_scale)
}

/// The scale of values `r`: max |w| in the weight's dtype, 1 when all are
/// zero (so that nothing is divided by 0).
pub fn row_scale<T: Element>(r: &[T]) -> T {
    let mut buf = [0f32; 256];
    let mut m = 0f32;
    for c in r.chunks(256) {
        let b = &mut buf[..c.len()];
        T::widen_slice(c, b);
        m = b.iter().fold(m, |m, x| m.max(x.abs()));
    }
    scale_of_max(m)
}

/// The scale stored for a max |w| of `m`: `m` in the weight's dtype, 1
/// when that is 0.
pub fn scale_of_max<T: Element>(m: f32) -> T {
    let s = T::from_f64(f64::from(m));
    if s.to_f64() > 0.0 {
        s
    } else {
        T::from_f64(1.0)
    }
}

/// Index of the entry of sorted `lut` nearest to `x` (lower on ties).
pub(crate) fn nearest(lut: &[f64], x: f64) -> usize {
    let p = lut.partition_point(|&c| c < x);
    if p == 0 {
        return 0;
    }
    if p == lut.len() {
        return lut.len() - 1;
    }
    if (x - lut[p - 1]).abs() <= (lut[p] - x).abs() {
        p - 1
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_preserve_order() {
        let vals = [-65504.0f32, -1.0, -1e-7, -0.0, 0.0, 1e-7, 0.5, 65504.0];
        let keys: Vec<u16> = vals
            .iter()
            .map(|&v| key16(f16::from_f32(v).to_bits()))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{keys:?}");
        for &v in &vals {
            let b = f16::from_f32(v).to_bits();
            let b = if b == 0x8000 { 0 } else { b };
            assert_eq!(unkey16(key16(b)), b);
        }
    }

    /// Seeded xorshift64 stream (test data only).
    fn xorshift(mut s: u64) -> impl FnMut() -> u64 {
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    /// The chunked compaction lists exactly the patterns a plain walk over
    /// all finite patterns lists, in the same order: sparse, dense and
    /// empty tables, counts at chunk edges, at 0x8001 and 0x7bff, and on
    /// NaN/inf/-0 patterns (which must never be listed).
    #[test]
    fn present_patterns_equal_the_plain_walk() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut counts = Box::new([0u32; 1 << 16]);
        let mut order = Box::new([0u16; 1 << 16]);
        for case in 0..12 {
            counts.fill(0);
            let density = [0u64, 1, 3, 50, 500, 1000][case % 6];
            for c in counts.iter_mut() {
                if next() % 1000 < density {
                    *c = 1 + (next() % 7) as u32;
                }
            }
            if case >= 6 {
                for b in [
                    0x8001usize,
                    0xfbff,
                    0x7bff,
                    0,
                    0x000f,
                    0x0010,
                    0xfbf0,
                    0x8010,
                    0x8011,
                ] {
                    counts[b] = 1;
                }
                // Patterns that are not listed even when counted.
                for b in [0x8000usize, 0x7c00, 0x7fff, 0xfc00, 0xffff] {
                    counts[b] = 3;
                }
            }
            let want: Vec<u16> = finite_f16_ascending()
                .filter(|&b| counts[usize::from(b)] != 0)
                .collect();
            let n = present_f16_ascending(&counts, &mut order);
            assert_eq!(&order[..n], &want[..], "case {case}");
        }
    }

    proptest! {
        #[test]
        fn lut_and_indices_are_valid(raw in prop::collection::vec(-2000i16..2000, 1..3000),
                                     nbits in prop::sample::select(vec![1u32, 2, 3, 4, 6, 8])) {
            let vals: Vec<f16> = raw.iter().map(|&r| f16::from_f32(f32::from(r) / 512.0)).collect();
            let mut sc = Scratch16::default();
            let g = palettize_f16(&vals, nbits, Mode::Kmeans, &mut sc).unwrap();
            prop_assert_eq!(g.lut.len(), 1usize << nbits);
            prop_assert_eq!(g.indices.len(), vals.len());
            prop_assert!(g.indices.iter().all(|&i| (i as usize) < (1usize << nbits)));
            // Scratch tables are left clean for the next group.
            prop_assert!(sc.counts.iter().all(|&c| c == 0));
            // Error is the exact optimum's up to fp16 rounding of centroids:
            // never worse than the clustering with unrounded centroids plus
            // the rounding step.
            let xs: Vec<f64> = vals.iter().map(|v| v.to_f64()).collect();
            let h = Histogram::from_values(&xs);
            let opt = kmeans_1d(&h, 1 << nbits);
            let err: f64 = vals.iter().zip(&g.indices).map(|(v, &i)| (v.to_f64() - g.lut[i as usize].to_f64()).powi(2)).sum();
            // The histogram-based accounting agrees with the direct sum.
            prop_assert!((err - g.error.sse).abs() <= 1e-9 * (1.0 + err));
            let tol = vals.len() as f64 * (1.0 / 512.0f64).powi(2) * 0.25 + 1e-12;
            prop_assert!(err <= opt.sse + tol, "err {} opt {}", err, opt.sse);
        }

        #[test]
        fn unique_is_lossless(raw in prop::collection::vec(0u8..6, 1..500)) {
            let vals: Vec<f16> = raw.iter().map(|&r| f16::from_f32(f32::from(r) * 0.25 - 0.5)).collect();
            let g = palettize_f16(&vals, 3, Mode::Unique, &mut Scratch16::default()).unwrap();
            for (v, &i) in vals.iter().zip(&g.indices) {
                prop_assert_eq!(g.lut[i as usize], *v);
            }
        }
    }

    proptest! {
        /// A LUT of int8/uint8 codes is never worse than quantizing the
        /// entries and keeping the indices, every entry is a decoded code,
        /// and the error sums are the decoded ones.
        #[test]
        fn quantized_lut_never_worse_than_rounding_entries(
            raw in prop::collection::vec(-3000i16..3000, 20..2000),
            nbits in prop::sample::select(vec![1u32, 2, 4, 6]),
            signed in any::<bool>(),
        ) {
            use crate::kernels::quantize::QType;
            let vals: Vec<f16> = raw.iter().map(|&r| f16::from_f32(f32::from(r) / 700.0)).collect();
            let mut g = palettize_f16(&vals, nbits, Mode::Kmeans, &mut Scratch16::default()).unwrap();
            let before = g.clone();
            let spec = Spec { qtype: if signed { QType::Int8 } else { QType::Uint8 }, symmetric: true };
            let c = quantize_lut(&vals, &mut g, spec);
            let (lo, hi) = spec.qtype.range(true);
            let naive: f64 = vals.iter().zip(&before.indices).map(|(v, &i)| {
                let q = quantize(before.lut[i as usize].to_f32(), c.params, lo, hi, Store::F16);
                (v.to_f64() - f64::from(dequantize(q, c.params, Store::F16))).powi(2)
            }).sum();
            prop_assert!(g.error.sse <= naive * (1.0 + 1e-12) + 1e-18, "{} > {}", g.error.sse, naive);
            let mut sse = 0f64;
            for (v, &i) in vals.iter().zip(&g.indices) {
                let d = v.to_f64() - g.lut[i as usize].to_f64();
                sse += d * d;
            }
            prop_assert!((sse - g.error.sse).abs() <= 1e-9 * (1.0 + sse));
            for (e, &q) in g.lut.iter().zip(&c.codes) {
                prop_assert!((lo..=hi).contains(&q));
                prop_assert_eq!(e.to_f32(), dequantize(q, c.params, Store::F16));
            }
        }
    }

    /// Groups of at least `TABLE_MIN` values take the counting-table path:
    /// every fp16 class (±0, subnormals, both signs, ±65504) must land in
    /// the histogram in value order, exactly as `Histogram::from_values`
    /// builds it, and a NaN/inf anywhere must be refused with the scratch
    /// tables left clean.
    #[test]
    fn counting_table_path_matches_reference() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let special = [
            0x0000u16, 0x8000, 0x0001, 0x8001, 0x03ff, 0x83ff, 0x7bff, 0xfbff,
        ];
        let mut sc = Scratch16::default();
        for (n, nbits) in [(TABLE_MIN, 4u32), (3 * TABLE_MIN + 5, 2), (20_000, 8)] {
            let vals: Vec<f16> = (0..n)
                .map(|t| {
                    let r = next();
                    let bits = if t % 97 == 0 {
                        special[(r % 8) as usize]
                    } else {
                        // Normal-ish magnitudes with a random sign.
                        (0x1c00 + (r % 0x2800) as u16) | (((r >> 20) & 1) as u16) << 15
                    };
                    f16::from_bits(bits)
                })
                .collect();
            let g = palettize_f16(&vals, nbits, Mode::Kmeans, &mut sc).unwrap();
            prop_assert_clean(&sc);
            let xs: Vec<f64> = vals.iter().map(|v| v.to_f64()).collect();
            let h = Histogram::from_values(&xs);
            let want: Vec<f16> = kmeans_1d(&h, 1 << nbits)
                .centroids
                .iter()
                .map(|&c| f16::from_f64(c))
                .collect();
            assert_eq!(&g.lut[..want.len()], &want[..], "n {n}");
            let lutf: Vec<f64> = g.lut[..want.len()].iter().map(|x| x.to_f64()).collect();
            let mut sse = 0.0;
            for (v, &i) in vals.iter().zip(&g.indices) {
                let x = v.to_f64();
                let d = (x - lutf[i as usize]).abs();
                // Nearest entry, lower one on ties.
                assert_eq!(i as usize, nearest(&lutf, x), "value {x}");
                sse += d * d;
            }
            assert!((sse - g.error.sse).abs() <= 1e-9 * (1.0 + sse));
            // One NaN or infinity anywhere: refused, tables clean.
            for bad in [0x7c00u16, 0xfc00, 0x7e00, 0xffff] {
                let mut v = vals.clone();
                v[n / 3] = f16::from_bits(bad);
                assert_eq!(
                    palettize_f16(&v, nbits, Mode::Kmeans, &mut sc),
                    Err(GroupError::NonFinite)
                );
                prop_assert_clean(&sc);
            }
        }
    }

    /// `ordered16` sorts the finite patterns exactly as their values, with
    /// -0 directly below +0 and every finite value above `i16::MIN`.
    #[test]
    fn ordered16_follows_the_values() {
        let asc: Vec<u16> = finite_f16_ascending().collect();
        for w in asc.windows(2) {
            assert!(ordered16(w[0]) < ordered16(w[1]), "{:#x} {:#x}", w[0], w[1]);
        }
        assert_eq!(ordered16(0x8000), ordered16(0) - 1);
        assert!(ordered16(0xfbff) > i16::MIN);
    }

    proptest! {
        /// The vector threshold count equals a scalar count of the
        /// thresholds below each value, on every length (block tails) and
        /// with thresholds at `i16::MIN`, repeated, or unused.
        #[test]
        fn threshold_map_counts_thresholds_below(
            raw in prop::collection::vec(any::<u16>(), 0..200),
            mut t in prop::collection::vec(any::<i16>(), 1..16),
            min_first in any::<bool>(),
        ) {
            let vals: Vec<f16> = raw.iter().map(|&b| f16::from_bits(if non_finite16(b) { b & 0x83ff } else { b })).collect();
            t.sort_unstable();
            t.truncate(15);
            if min_first { t[0] = i16::MIN; }
            t.retain(|&x| x != i16::MAX);
            let mut thr = [i16::MAX; 15];
            thr[..t.len()].copy_from_slice(&t);
            let mut out = vec![0u8; vals.len()];
            map_by_thresholds(&vals, &thr, &mut out);
            for (v, &o) in vals.iter().zip(&out) {
                let k = ordered16(v.to_bits());
                prop_assert_eq!(o as usize, t.iter().filter(|&&x| k > x).count());
            }
        }
    }

    fn prop_assert_clean(sc: &Scratch16) {
        assert!(
            sc.counts.iter().all(|&c| c == 0),
            "scratch counts left dirty"
        );
    }

    proptest! {
        /// The fp16 threshold path assigns exactly as the binary search:
        /// values drawn around the levels and exactly on their midpoints,
        /// zeros of both signs, subnormals, equal levels, rows spanning
        /// several blocks.
        #[test]
        fn f16_threshold_assignment_equals_search(
            level_bits in prop::collection::vec(prop_oneof![0u16..0x7c00, 0x8000u16..0xfc00], 1..20),
            raw in prop::collection::vec(prop_oneof![0u16..0x7c00, 0x8000u16..0xfc00], 0..1400),
            on_mid in prop::collection::vec((0usize..20, 0usize..20), 0..40),
        ) {
            let levels: Vec<f64> = level_bits.iter().map(|&b| f16::from_bits(b).to_f64()).collect();
            let mut values: Vec<f16> = raw.iter().map(|&b| f16::from_bits(b)).collect();
            for (a, b) in on_mid {
                let (x, y) = (levels[a % levels.len()], levels[b % levels.len()]);
                let mid = f16::from_f64(0.5 * (x + y));
                values.push(mid);
                values.push(f16::from_bits(mid.to_bits().wrapping_add(1)));
                values.push(f16::from_bits(mid.to_bits().wrapping_sub(1)));
            }
            values.retain(|v| v.is_finite());
            let mut order: Vec<(f64, usize)> = levels.iter().copied().zip(0..).collect();
            order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            order.dedup_by(|b, a| a.0 == b.0);
            let sorted: Vec<f64> = order.iter().map(|p| p.0).collect();
            let (fast, fe) = assign_nearest_f16(&values, &sorted, &order);
            // The dispatched (AVX2 where present) and portable builds agree bit for bit.
            let (plain, pe) = assign_nearest_f16_body(&values, &sorted, &order);
            prop_assert_eq!(&plain, &fast);
            prop_assert_eq!(pe.sse.to_bits(), fe.sse.to_bits());
            prop_assert_eq!(pe.signal.to_bits(), fe.signal.to_bits());
            let (slow, se) = assign_nearest_by_search(&values, &sorted, &order);
            prop_assert_eq!(fast, slow);
            // Lane-wise sums of non-negative terms: equal up to reordering.
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
            prop_assert!(close(fe.sse, se.sse), "{} {}", fe.sse, se.sse);
            prop_assert!(close(fe.signal, se.signal), "{} {}", fe.signal, se.signal);
            prop_assert_eq!(fe.max_abs.to_bits(), se.max_abs.to_bits());
        }
    }

    #[test]
    fn f16_divide_slice_is_correctly_rounded() {
        // Every finite fp16 numerator against divisors spread over the
        // range (subnormal to large, both signs), against one rounding of
        // the f64 quotient (exact to 53 bits, far more than needed).
        let nums: Vec<f16> = finite_f16_ascending().map(f16::from_bits).collect();
        let mut got = vec![f16::ZERO; nums.len()];
        let divisors = (1..0x7c00u16)
            .step_by(97)
            .chain([0x0001, 0x03ff, 0x0400, 0x3c00, 0x7bff])
            .flat_map(|b| [b, b | 0x8000])
            .map(f16::from_bits);
        for d in divisors {
            f16::divide_slice(&nums, d, &mut got);
            for (v, g) in nums.iter().zip(&got) {
                let want = f16::from_f64(v.to_f64() / d.to_f64());
                assert_eq!(g.to_bits(), want.to_bits(), "{v} / {d}");
            }
        }
    }

    #[test]
    fn f16_key_at_most_is_exact() {
        // Every finite fp16 value, and points between neighbours.
        for bits in finite_f16_ascending() {
            let x = f16::from_bits(bits).to_f64();
            assert_eq!(f16_key_at_most(x), key16(bits), "{x}");
            let up = f16::from_bits(unkey16(key16(bits).wrapping_add(1))).to_f64();
            if up.is_finite() && up > x {
                assert_eq!(f16_key_at_most(0.5 * (x + up)), key16(bits), "{x}..{up}");
            }
        }
        assert_eq!(f16_key_at_most(f64::INFINITY), 0xfc00);
        assert_eq!(f16_key_at_most(f64::NEG_INFINITY), 0x03ff);
        assert_eq!(f16_key_at_most(-1e300), 0x03ff);
    }

    /// fp16's column-wise max |x| on bits equals the widened float max, on
    /// every finite bit pattern laid out over strided runs.
    #[test]
    fn f16_abs_max_runs_on_bits() {
        let (rows, stride, len) = (61, 1100, 1075);
        let x: Vec<f16> = (0..rows * stride)
            .map(|i| {
                f16::from_bits(
                    ((((i as u32).wrapping_mul(2_654_435_761) >> 16) as u16) % 0x7c00)
                        | ((i as u16 & 1) << 15),
                )
            })
            .collect();
        let got = f16::abs_max_runs(&x, rows, stride, len);
        for (t, &g) in got.iter().enumerate() {
            let want = (0..rows)
                .map(|r| x[r * stride + t].to_f32().abs())
                .fold(0f32, f32::max);
            assert_eq!(g.to_bits(), want.to_bits(), "position {t}");
        }
        let wide: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        assert_eq!(f32::abs_max_runs(&wide, rows, stride, len), got);
    }

    /// fp16's finite test on bits agrees with the widened one on every bit
    /// pattern, alone and after finite values; `palettize_scaled` refuses a
    /// group with one infinity in its last row.
    #[test]
    fn f16_all_finite_on_bits() {
        let mut buf = Vec::new();
        for b in 0..=u16::MAX {
            let x = f16::from_bits(b);
            let xs = [f16::ONE, f16::from_f32(-0.5), x];
            assert_eq!(f16::all_finite(&xs, &mut buf), x.is_finite(), "{b:#06x}");
        }
        let rows = vec![vec![f16::ONE; 8], vec![f16::ONE, f16::NEG_INFINITY]];
        assert_eq!(
            palettize_scaled(&rows, None, 2, None).err(),
            Some(GroupError::NonFinite)
        );
    }

    #[test]
    fn non_finite_is_refused() {
        let v = [f16::from_f32(1.0), f16::INFINITY];
        assert_eq!(
            palettize_f16(&v, 4, Mode::Kmeans, &mut Scratch16::default()),
            Err(GroupError::NonFinite)
        );
        assert_eq!(
            palettize_f32(&[1.0, f32::NAN], 4, Mode::Kmeans),
            Err(GroupError::NonFinite)
        );
    }

    #[test]
    fn uniform_spans_min_to_max() {
        let v: Vec<f32> = (0..100).map(|i| i as f32 / 99.0).collect();
        let g = palettize_f32(&v, 2, Mode::Uniform).unwrap();
        assert_eq!(g.lut, vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]);
    }

    /// The fp16 table path of the scaled histogram gives the sort path's
    /// values and sums bit for bit (zeros of both signs, ties across rows,
    /// an all-zero row, scales of different sizes).
    #[test]
    fn scaled_histogram_table_equals_sort() {
        let mut st = 12345u64;
        let mut next = || {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            (st >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut rows: Vec<Vec<f16>> = (0..24)
            .map(|r| {
                (0..900)
                    .map(|i| {
                        let x = (next() * 2.0 - 1.0) * 0.05 * (1.0 + r as f64);
                        f16::from_f64(if i % 37 == 0 {
                            -0.0
                        } else if i % 41 == 0 {
                            0.0
                        } else {
                            x
                        })
                    })
                    .collect()
            })
            .collect();
        rows[5] = vec![f16::ZERO; 900];
        let scales: Vec<f16> = rows.iter().map(|r| row_scale(r)).collect();
        let a = scaled_histogram_by(&rows, &scales, true);
        let b = scaled_histogram_by(&rows, &scales, false);
        assert_eq!(a.values.len(), b.values.len());
        for (x, y) in a.values.iter().zip(&b.values) {
            assert_eq!(x.to_bits(), y.to_bits());
        }
        for (x, y) in a.counts.iter().zip(&b.counts) {
            assert_eq!(x.to_bits(), y.to_bits());
        }
    }
}
