//! Per-channel-scale palettization of a dense fp16 weight in its own
//! layout (coremltools' form: one scale per position off the channel axis,
//! `[1, Cin, kh, kw]` for a conv weight, and one LUT per group of channels
//! shared by every position, decoded per position as `round(s_q · d_j)`).
//!
//! [`super::palettize::palettize_scaled`] does the same on one row per
//! position, which needs the weight transposed (positions are the
//! contiguous axis) and back again. Here every pass runs along the rows of
//! the weight as stored: the histogram divides each channel row by the row
//! of position scales, and the assignment compares each value with its
//! position's thresholds, held as one row per threshold.
//!
//! The histogram weights `s_q²` are summed exactly, as integers in units of
//! 2⁻⁴⁸: an fp16 scale is `M · 2^(e−25)` with `M < 2¹¹` (or `M · 2⁻²⁴`
//! when subnormal), so `s² · 2⁴⁸ = M² · 2^(2e−2)` is an integer below
//! 2⁸⁰, and a sum of up to 2⁴⁸ of them fits in a `u128`. The sums then do
//! not depend on the order of the additions, so the histogram is built in
//! parallel and is the same for every thread count and for both of its
//! paths (counting table or sort).

use super::kmeans::Histogram;
use super::palettize::{
    f16_key_at_most, finite_f16_ascending, fit_scaled_lut, key16, nearest, GroupError, GroupError2,
    LutCodes, ASSIGN_LANES, THRESHOLD_PASSES_MAX,
};
use super::quantize::Spec;
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// `s²` of a positive finite fp16 scale (its bits) in units of 2⁻⁴⁸, exact.
pub fn square_units(bits: u16) -> u128 {
    let (e, f) = (u32::from(bits >> 10 & 0x1f), u128::from(bits & 0x3ff));
    if e == 0 {
        f * f
    } else {
        let m = f | 0x400;
        (m * m) << (2 * e - 2)
    }
}

/// 2⁻⁴⁸, the unit of [`square_units`].
const UNIT: f64 = 1.0 / (1u64 << 48) as f64;

/// A dense weight `[outer, chans, inner]` and the group of channels
/// `c0..c0 + gs` being palettized; positions are `q = oi · inner + ii`.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    /// Product of the dims before the channel axis.
    pub outer: usize,
    /// Size of the channel axis.
    pub chans: usize,
    /// Product of the dims after it.
    pub inner: usize,
    /// First channel of the group.
    pub c0: usize,
    /// Channels in the group.
    pub gs: usize,
}

impl Block {
    /// Rows of the group (one per outer index and channel).
    fn rows(&self) -> usize {
        self.outer * self.gs
    }

    /// Row `r`'s values and its first position.
    fn row<'a>(&self, x: &'a [f16], r: usize) -> (&'a [f16], usize) {
        let (oi, c) = (r / self.gs, self.c0 + r % self.gs);
        let start = (oi * self.chans + c) * self.inner;
        (&x[start..start + self.inner], oi * self.inner)
    }
}

/// One group's result: the shared LUT and, per position, the stored scale
/// and the decoded LUT.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseScaled {
    /// The shared normalised LUT (`2^nbits` entries).
    pub lut: Vec<f16>,
    /// The shared LUT as codes (`--lut-dtype`).
    pub codes: Option<LutCodes>,
    /// Per position: the stored scale.
    pub row_scale: Vec<f16>,
    /// Per position `q`: its decoded LUT, `levels[q·2^nbits..][..2^nbits]`.
    pub levels: Vec<f16>,
    /// Error of the decoded reconstruction.
    pub error: GroupError2,
}

/// From this many values a group's histogram is counted into tables
/// indexed by the fp16 pattern (below: sorted pairs).
const TABLE_MIN: usize = 1 << 16;

/// Palettizes group `b` of the dense fp16 weight `x` with the position
/// scales `scales` (max |w| over all channels at each position, so every
/// value is finite when they are; and their [`square_units`] `units`), writing one index
/// per value into `out` (row by row of the group: outer index, then
/// channel, then position). The same result as
/// [`super::palettize::palettize_scaled`] on the transposed rows, except
/// that the histogram weights are summed exactly (so the LUT can differ
/// where that routine's rounded sums tip a k-means tie) and the error sums
/// are added in another order.
#[allow(clippy::too_many_arguments)]
pub fn palettize_scaled_dense(
    x: &[f16],
    b: Block,
    scales: &[f16],
    units: &[u128],
    nbits: u32,
    lut_spec: Option<Spec>,
    out: &mut [u8],
) -> Result<DenseScaled, GroupError> {
    let (rows, inner) = (b.rows(), b.inner);
    let npos = b.outer * inner;
    debug_assert_eq!(out.len(), rows * inner);
    debug_assert!(scales.len() == npos && units.len() == npos);
    // The scales are the maxima of |w| over the channels, so a NaN or an
    // infinity anywhere in the weight makes its position's scale one.
    if scales.iter().any(|s| !s.is_finite()) {
        return Err(GroupError::NonFinite);
    }
    let hist = histogram(x, b, scales, units);
    let (lut, codes, data, row_scale) = fit_scaled_lut(&hist, scales, nbits, lut_spec);
    let k = 1usize << nbits;
    let tables = PositionTables::new(&row_scale, &data, k);
    let error = tables.assign(x, b, out);
    Ok(DenseScaled {
        lut,
        codes,
        row_scale,
        levels: tables.levels,
        error,
    })
}

/// `u = x / s` per value, rounded to fp16 (through f32: the quotient of two
/// fp16 values rounded to f32 and then to fp16 is correctly rounded), as
/// bit patterns with −0 folded into 0.
fn quotient_bits(x: &[f16], s: &[f16], out: &mut [u16]) {
    let mut a = [0f32; 256];
    let mut d = [0f32; 256];
    let mut h = [f16::ZERO; 256];
    for ((xc, sc), oc) in x.chunks(256).zip(s.chunks(256)).zip(out.chunks_mut(256)) {
        let n = xc.len();
        xc.convert_to_f32_slice(&mut a[..n]);
        sc.convert_to_f32_slice(&mut d[..n]);
        for (p, q) in a[..n].iter_mut().zip(&d[..n]) {
            *p /= q;
        }
        h[..n].convert_from_f32_slice(&a[..n]);
        for (o, v) in oc.iter_mut().zip(&h[..n]) {
            let bits = v.to_bits();
            *o = if bits == 0x8000 { 0 } else { bits };
        }
    }
}

/// Calls `f(bits of u, weight)` for every value of `rows` of group `b`,
/// `u = w / s_q` ([`quotient_bits`]) weighted by its position's
/// [`square_units`].
fn for_each_quotient(
    x: &[f16],
    b: Block,
    scales: &[f16],
    units: &[u128],
    rows: std::ops::Range<usize>,
    mut f: impl FnMut(u16, u128),
) {
    let quotients = quotient_kernel();
    let inner = b.inner;
    let mut u = vec![0u16; inner];
    for r in rows {
        let (xs, q0) = b.row(x, r);
        quotients(xs, &scales[q0..q0 + inner], &mut u);
        for (&bits, &w) in u.iter().zip(&units[q0..q0 + inner]) {
            f(bits, w);
        }
    }
}

/// [`quotient_bits`], with F16C and AVX where the CPU has them.
fn quotient_kernel() -> fn(&[f16], &[f16], &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
        return |x, s, out| {
            // SAFETY: the CPU has AVX2 and F16C.
            unsafe { quotient_bits_f16c(x, s, out) }
        };
    }
    quotient_bits
}

/// [`quotient_bits`] eight values at a time: widen (exact), divide in f32,
/// narrow with round-to-nearest-even, as the portable path does.
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn quotient_bits_f16c(x: &[f16], s: &[f16], out: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = x.len().min(s.len()).min(out.len());
    let n8 = n / 8 * 8;
    let negzero = _mm_set1_epi16(i16::MIN);
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 <= n, within all three slices.
        unsafe {
            let a = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i).cast()));
            let d = _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().add(i).cast()));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_div_ps(a, d));
            let h = _mm_andnot_si128(_mm_cmpeq_epi16(h, negzero), h);
            _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), h);
        }
    }
    quotient_bits(&x[n8..n], &s[n8..n], &mut out[n8..n]);
}

/// The histogram of `u = w / s_q` with weights `s_q²` over the group,
/// values ascending, weights summed exactly.
fn histogram(x: &[f16], b: Block, scales: &[f16], units: &[u128]) -> Histogram {
    histogram_by(x, b, scales, units, b.rows() * b.inner >= TABLE_MIN)
}

/// [`histogram`] with the path chosen: counting tables or sorted pairs.
fn histogram_by(x: &[f16], b: Block, scales: &[f16], units: &[u128], table: bool) -> Histogram {
    let (rows, inner) = (b.rows(), b.inner);
    let mut hist = Histogram::default();
    let mut push = |bits: u16, sum: u128| {
        hist.values.push(f16::from_bits(bits).to_f64());
        hist.counts.push(sum as f64 * UNIT);
    };
    if table {
        // Row ranges in parallel, one table each, added up. Weights below
        // 2⁶⁴ (scales below 256) go into u64 tables whose rare carries are
        // listed apart: one 8-byte add per value instead of two, and half
        // the table.
        let narrow = units.iter().all(|&w| w >> 64 == 0);
        let parts = rayon::current_num_threads().clamp(1, rows);
        let range = |p: usize| p * rows / parts..(p + 1) * rows / parts;
        let mut sums: Vec<u128>;
        if narrow {
            let tables: Vec<(Vec<u64>, Vec<u16>)> = (0..parts)
                .into_par_iter()
                .map(|p| {
                    let mut lo = vec![0u64; 1 << 16];
                    let mut carries = Vec::new();
                    for_each_quotient(x, b, scales, units, range(p), |bits, w| {
                        let i = usize::from(bits);
                        let (v, c) = lo[i].overflowing_add(w as u64);
                        lo[i] = v;
                        if c {
                            carries.push(bits);
                        }
                    });
                    (lo, carries)
                })
                .collect();
            sums = vec![0u128; 1 << 16];
            for (lo, carries) in &tables {
                for (s, &l) in sums.iter_mut().zip(lo) {
                    *s += u128::from(l);
                }
                for &c in carries {
                    sums[usize::from(c)] += 1u128 << 64;
                }
            }
        } else {
            sums = (0..parts)
                .into_par_iter()
                .map(|p| {
                    let mut t = vec![0u128; 1 << 16];
                    for_each_quotient(x, b, scales, units, range(p), |bits, w| {
                        t[usize::from(bits)] += w;
                    });
                    t
                })
                .reduce_with(|mut a, c| {
                    for (x, y) in a.iter_mut().zip(&c) {
                        *x += y;
                    }
                    a
                })
                .unwrap_or_else(|| vec![0u128; 1 << 16]);
        }
        for bits in finite_f16_ascending() {
            let w = sums[usize::from(bits)];
            if w != 0 {
                push(bits, w);
            }
        }
        return hist;
    }
    let mut pairs: Vec<(u16, u128)> = Vec::with_capacity(rows * inner);
    for_each_quotient(x, b, scales, units, 0..rows, |bits, w| {
        pairs.push((key16(bits), w));
    });
    pairs.sort_unstable_by_key(|p| p.0);
    let mut i = 0;
    while i < pairs.len() {
        let key = pairs[i].0;
        let mut sum = 0u128;
        while i < pairs.len() && pairs[i].0 == key {
            sum += pairs[i].1;
            i += 1;
        }
        // key16 inverted: negative patterns are stored complemented.
        let bits = if key & 0x8000 != 0 {
            key & 0x7fff
        } else {
            !key
        };
        push(bits, sum);
    }
    hist
}

/// Each position's decoded LUT, and what assigning a value to its nearest
/// entry needs. For LUTs of at most [`THRESHOLD_PASSES_MAX`] distinct
/// entries everything is held as rows over the positions (one row per
/// rank), so that a row of values is compared with a row of thresholds and
/// picks its entries from rows read in order: the order-key thresholds
/// between neighbouring distinct entries, the distinct entries ascending
/// (fp16 bits) and the lowest LUT index of each. Larger LUTs keep, per
/// position, the sorted entries for a binary search.
struct PositionTables {
    k: usize,
    npos: usize,
    /// `levels[q·k + j]`: entry `j` of position `q`'s decoded LUT.
    levels: Vec<f16>,
    /// Search path: `sorted[q·k + r]`, the `r`-th smallest distinct entry,
    /// `index[q·k + r]` the lowest LUT index holding it, `len[q]` how many.
    sorted: Vec<f64>,
    index: Vec<u8>,
    len: Vec<u8>,
    /// Passes path: `thresholds[j·npos + q]` (values whose order key,
    /// offset by 2¹⁵ into an `i16`, is larger rank above distinct entry
    /// `j`; `i16::MAX` past the last one),
    /// `entry_rows[r·npos + q]` the bits of distinct entry `r` (repeated
    /// past the last one) and `index_rows[r·npos + q]` its LUT index.
    thresholds: Vec<i16>,
    entry_rows: Vec<u16>,
    index_rows: Vec<u8>,
    /// Whether a value's rank among the distinct entries is its LUT index
    /// at every position (no duplicate entries, LUT ascending).
    identity: bool,
}

impl PositionTables {
    fn new(row_scale: &[f16], data: &[f64], k: usize) -> Self {
        let npos = row_scale.len();
        let passes = k <= THRESHOLD_PASSES_MAX;
        let mut levels = vec![f16::ZERO; npos * k];
        let mut sorted = vec![0f64; npos * k];
        let mut len = vec![0u8; npos];
        let mut index = vec![0u8; npos * k];
        let mut thr = vec![u16::MAX; if passes { npos * k } else { 0 }];
        const CHUNK: usize = 1024;
        levels
            .par_chunks_mut(CHUNK * k)
            .zip(sorted.par_chunks_mut(CHUNK * k))
            .zip(len.par_chunks_mut(CHUNK))
            .zip(index.par_chunks_mut(CHUNK * k))
            .zip(thr.par_chunks_mut(if passes { CHUNK * k } else { 1 }))
            .enumerate()
            .for_each(|(c, ((((lv, so), ln), ix), th))| {
                let mut order: Vec<(f64, usize)> = Vec::with_capacity(k);
                for (i, l) in ln.iter_mut().enumerate() {
                    let s = row_scale[c * CHUNK + i].to_f64();
                    let lv = &mut lv[i * k..(i + 1) * k];
                    for (v, &d) in lv.iter_mut().zip(data) {
                        // Core ML multiplies in fp16: one rounding of the exact product.
                        *v = f16::from_f64(s * d);
                    }
                    order.clear();
                    order.extend(lv.iter().map(|v| v.to_f64()).zip(0..));
                    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                    order.dedup_by(|b, a| a.0 == b.0);
                    *l = order.len() as u8;
                    for r in 0..k {
                        // Past the last distinct entry: the last one again.
                        let (v, j) = order[r.min(order.len() - 1)];
                        so[i * k + r] = v;
                        ix[i * k + r] = j as u8;
                    }
                    if passes {
                        for (r, w) in order.windows(2).enumerate() {
                            th[i * k + r] = f16_key_at_most(0.5 * (w[0].0 + w[1].0));
                        }
                    }
                }
            });
        let identity = (0..npos).all(|q| {
            index[q * k..q * k + usize::from(len[q])]
                .iter()
                .enumerate()
                .all(|(r, &j)| usize::from(j) == r)
        });
        let (mut thresholds, mut entry_rows, mut index_rows) = (Vec::new(), Vec::new(), Vec::new());
        if passes {
            // Transposed to one row per rank.
            thresholds = rows_of(&thr, npos, k, k - 1, signed_key);
            entry_rows = rows_of(&sorted, npos, k, k, |v| f16::from_f64(v).to_bits());
            if !identity {
                index_rows = rows_of(&index, npos, k, k, |j| j);
            }
            sorted = Vec::new();
            index = Vec::new();
        }
        Self {
            k,
            npos,
            levels,
            sorted,
            index,
            len,
            thresholds,
            entry_rows,
            index_rows,
            identity,
        }
    }

    /// Indices of every value of group `b` into `out` (row by row), and
    /// the error sums. Tasks take [`ROWS_PER_TASK`] rows and walk them
    /// tile by tile of [`TILE`] positions, so that a tile's tables stay in
    /// L1 while its rows pass over them; the sums go into [`ASSIGN_LANES`]
    /// lanes by position (`t % 8`) per task, tasks added in order, so they
    /// do not depend on the thread count.
    fn assign(&self, x: &[f16], b: Block, out: &mut [u8]) -> GroupError2 {
        let inner = b.inner.max(1);
        let per: Vec<GroupError2> = out
            .par_chunks_mut(ROWS_PER_TASK * inner)
            .enumerate()
            .map(|(task, o)| {
                let r0 = task * ROWS_PER_TASK;
                let mut w = Box::new(Work::default());
                for t0 in (0..b.inner).step_by(TILE) {
                    let t1 = (t0 + TILE).min(b.inner);
                    for (i, oi) in o.chunks_mut(inner).enumerate() {
                        let (xs, q0) = b.row(x, r0 + i);
                        let bits: &[u16] = bytemuck::cast_slice(&xs[t0..t1]);
                        self.segment(bits, q0 + t0, &mut oi[t0..t1], &mut w);
                    }
                }
                w.lanes.total()
            })
            .collect();
        let mut error = GroupError2::default();
        for e in &per {
            error.add(e);
        }
        error
    }

    /// One segment of a row (at most [`TILE`] values at positions `q..`).
    fn segment(&self, bits: &[u16], q: usize, out: &mut [u8], w: &mut Work) {
        if self.thresholds.is_empty() {
            return self.segment_search(bits, q, out, w);
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU has AVX2 and F16C.
            return unsafe { self.segment_avx2(bits, q, out, w) };
        }
        self.segment_passes(bits, q, out, w, widen_portable, false)
    }

    /// [`Self::segment_passes`] compiled for AVX2, widening with F16C
    /// (exact conversions and the same operations, so the same results).
    ///
    /// # Safety
    /// The CPU must have AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn segment_avx2(&self, bits: &[u16], q: usize, out: &mut [u8], w: &mut Work) {
        self.segment_passes(bits, q, out, w, |b, o| unsafe { widen_f16c(b, o) }, true)
    }

    /// One compare pass per threshold row over 16 values at a time: a
    /// value's rank is the number of its position's thresholds below its
    /// order key, and its entry is taken from the entry row of each
    /// threshold it passes.
    #[inline(always)]
    fn segment_passes(
        &self,
        bits: &[u16],
        q: usize,
        out: &mut [u8],
        w: &mut Work,
        widen: impl Fn(&[u16], &mut [f32]),
        avx2: bool,
    ) {
        const V: usize = 16;
        let (k, np, n) = (self.k, self.npos, bits.len());
        let Work {
            rank,
            entry,
            wx,
            we,
            lanes,
        } = w;
        let nv = if avx2 { n / V * V } else { 0 };
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: `avx2` is only set when the CPU has AVX2 and F16C.
            unsafe { self.passes_avx2(bits, q, nv, rank, entry) };
        }
        for c in nv..n {
            let kk = signed_key(key16(bits[c]));
            let (mut r, mut e) = (0u8, self.entry_rows[q + c]);
            for j in 0..k - 1 {
                let at = j * np + q + c;
                if kk > self.thresholds[at] {
                    r += 1;
                    e = self.entry_rows[at + np];
                }
            }
            rank[c] = r;
            entry[c] = e;
        }
        if self.identity {
            out.copy_from_slice(&rank[..n]);
        } else {
            for (t, (o, &r)) in out.iter_mut().zip(&rank[..n]).enumerate() {
                *o = self.index_rows[usize::from(r) * np + q + t];
            }
        }
        widen(bits, &mut wx[..n]);
        widen(&entry[..n], &mut we[..n]);
        lanes.add(&wx[..n], &we[..n]);
    }

    /// The compare passes for values `0..nv` (a multiple of 16) of a
    /// segment, 16 at a time on 256-bit vectors: the same ranks and entries
    /// as the scalar loop.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn passes_avx2(
        &self,
        bits: &[u16],
        q: usize,
        nv: usize,
        rank: &mut [u8; TILE],
        entry: &mut [u16; TILE],
    ) {
        use std::arch::x86_64::*;
        let (k, np) = (self.k, self.npos);
        assert!(nv <= bits.len() && nv <= TILE);
        assert!(q + nv <= np && self.thresholds.len() >= (k - 1) * np);
        assert!(self.entry_rows.len() >= k * np);
        let (th0, en0) = (self.thresholds.as_ptr(), self.entry_rows.as_ptr());
        for c in (0..nv).step_by(16) {
            // SAFETY: c + 16 <= nv, and every row read below has
            // q + c + 16 <= npos entries (asserted above).
            unsafe {
                let sk = signed_keys_avx2(_mm256_loadu_si256(bits.as_ptr().add(c).cast()));
                let mut r = _mm256_setzero_si256();
                let mut e = _mm256_loadu_si256(en0.add(q + c).cast());
                for j in 0..k - 1 {
                    let at = j * np + q + c;
                    let th = _mm256_loadu_si256(th0.add(at).cast());
                    let nx = _mm256_loadu_si256(en0.add(at + np).cast());
                    let above = _mm256_cmpgt_epi16(sk, th);
                    r = _mm256_sub_epi16(r, above);
                    e = _mm256_blendv_epi8(e, nx, above);
                }
                // Ranks are at most 31: pack to bytes, in order.
                let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi16(r, r));
                _mm_storeu_si128(
                    rank.as_mut_ptr().add(c).cast(),
                    _mm256_castsi256_si128(packed),
                );
                _mm256_storeu_si256(entry.as_mut_ptr().add(c).cast(), e);
            }
        }
    }

    /// A binary search per value among its position's distinct entries
    /// (LUTs of more than [`THRESHOLD_PASSES_MAX`] entries).
    fn segment_search(&self, bits: &[u16], q: usize, out: &mut [u8], w: &mut Work) {
        let k = self.k;
        let n = bits.len();
        let Work { wx, we, lanes, .. } = w;
        widen_portable(bits, &mut wx[..n]);
        for (t, (o, &x)) in out.iter_mut().zip(&wx[..n]).enumerate() {
            let p = q + t;
            let sorted = &self.sorted[p * k..p * k + usize::from(self.len[p])];
            let r = nearest(sorted, f64::from(x));
            *o = self.index[p * k + r];
            // An fp16 value: exact in f32.
            we[t] = sorted[r] as f32;
        }
        lanes.add(&wx[..n], &we[..n]);
    }
}

/// One assignment task's buffers (a segment's ranks, entries and widened
/// values, reused segment after segment) and its error sums.
struct Work {
    rank: [u8; TILE],
    entry: [u16; TILE],
    wx: [f32; TILE],
    we: [f32; TILE],
    lanes: Lanes,
}

impl Default for Work {
    fn default() -> Self {
        Self {
            rank: [0; TILE],
            entry: [0; TILE],
            wx: [0.0; TILE],
            we: [0.0; TILE],
            lanes: Lanes::default(),
        }
    }
}

/// Error sums in [`ASSIGN_LANES`] lanes: value `t` of a segment (segments
/// start at multiples of the lane count) goes into lane `t % 8`.
#[derive(Default)]
struct Lanes {
    sig: [f64; ASSIGN_LANES],
    sse: [f64; ASSIGN_LANES],
    mx: [f64; ASSIGN_LANES],
}

impl Lanes {
    /// Adds values `x` decoded as `e` (both exact fp16 values).
    #[inline(always)]
    fn add(&mut self, x: &[f32], e: &[f32]) {
        const L: usize = ASSIGN_LANES;
        let m = x.len() / L * L;
        for (xc, ec) in x[..m].chunks_exact(L).zip(e[..m].chunks_exact(L)) {
            for l in 0..L {
                self.one(l, xc[l], ec[l]);
            }
        }
        for (l, (&xv, &ev)) in x[m..].iter().zip(&e[m..]).enumerate() {
            self.one(l, xv, ev);
        }
    }

    #[inline(always)]
    fn one(&mut self, l: usize, x: f32, e: f32) {
        let x = f64::from(x);
        let d = (x - f64::from(e)).abs();
        self.sig[l] += x * x;
        self.sse[l] += d * d;
        self.mx[l] = if d > self.mx[l] { d } else { self.mx[l] };
    }

    fn total(&self) -> GroupError2 {
        GroupError2 {
            signal: self.sig.iter().sum(),
            sse: self.sse.iter().sum(),
            max_abs: self.mx.iter().fold(0f64, |a, &b| a.max(b)),
        }
    }
}

/// [`signed_key`]`(`[`key16`]`(v))` of 16 fp16 patterns: `v` for positive
/// values, `v ^ 0x7fff` for negative ones, 0 for −0.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn signed_keys_avx2(v: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let neg = _mm256_srai_epi16::<15>(v);
    let sk = _mm256_xor_si256(v, _mm256_and_si256(neg, _mm256_set1_epi16(0x7fff)));
    _mm256_andnot_si256(_mm256_cmpeq_epi16(v, _mm256_set1_epi16(i16::MIN)), sk)
}

/// Positions per tile of [`PositionTables::assign`] (a multiple of
/// [`ASSIGN_LANES`]): 2·2⁴ rows of 2-byte entries per position stay well
/// inside L1.
const TILE: usize = 512;

/// Rows per parallel task of [`PositionTables::assign`].
const ROWS_PER_TASK: usize = 32;

/// An order key as an `i16` with the same order (so that compares are
/// signed ones, which every SIMD set has).
#[inline(always)]
fn signed_key(k: u16) -> i16 {
    (k ^ 0x8000) as i16
}

/// Rows `0..rows` of the per-position table `t` (`k` entries per position)
/// as one row per entry: `out[r·npos + q] = f(t[q·k + r])`.
fn rows_of<A: Copy + Sync, B: Copy + Default + Send>(
    t: &[A],
    npos: usize,
    k: usize,
    rows: usize,
    f: impl Fn(A) -> B + Sync,
) -> Vec<B> {
    let mut out = vec![B::default(); rows * npos];
    out.par_chunks_mut(npos.max(1))
        .enumerate()
        .for_each(|(r, row)| {
            for (q, o) in row.iter_mut().enumerate() {
                *o = f(t[q * k + r]);
            }
        });
    out
}

/// Exact widening of fp16 bits.
fn widen_portable(bits: &[u16], out: &mut [f32]) {
    bytemuck::cast_slice::<u16, f16>(bits).convert_to_f32_slice(out);
}

/// [`widen_portable`] with F16C, eight at a time, inlined into its caller.
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn widen_f16c(bits: &[u16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = bits.len().min(out.len());
    let n8 = n / 8 * 8;
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 <= n, within both slices.
        unsafe {
            let h = _mm_loadu_si128(bits.as_ptr().add(i).cast());
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    widen_portable(&bits[n8..n], &mut out[n8..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// The vector key transform is the scalar one on every fp16 pattern.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_keys_equal_scalar_keys() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for c in all.chunks(16) {
            let mut out = [0i16; 16];
            // SAFETY: the CPU has AVX2; both buffers hold 16 values.
            unsafe {
                use std::arch::x86_64::*;
                let v = _mm256_loadu_si256(c.as_ptr().cast());
                _mm256_storeu_si256(out.as_mut_ptr().cast(), signed_keys_avx2(v));
            }
            for (&b, &o) in c.iter().zip(&out) {
                assert_eq!(o, signed_key(key16(b)), "{b:#x}");
            }
        }
    }

    /// Every positive finite fp16 scale: the integer is s² · 2⁴⁸ exactly
    /// (s² of an fp16 value is exact in f64).
    #[test]
    fn square_units_are_exact() {
        for bits in 1..0x7c00u16 {
            let s = f16::from_bits(bits).to_f64();
            let w = square_units(bits);
            assert!(w >> 80 == 0);
            assert_eq!(w as f64 * UNIT, s * s, "{bits:#x}");
        }
    }

    /// The F16C quotients are the portable ones, bit for bit (every fp16
    /// pattern divided by scales across the range, −0 folded, NaN and
    /// infinities included).
    #[test]
    fn f16c_quotients_equal_portable() {
        let xs: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        for sb in [0x0001u16, 0x0400, 0x2e66, 0x3c00, 0x3c01, 0x5640, 0x7bff] {
            let s = vec![f16::from_bits(sb); xs.len()];
            let (mut a, mut b) = (vec![0u16; xs.len()], vec![0u16; xs.len()]);
            quotient_bits(&xs, &s, &mut a);
            quotient_kernel()(&xs, &s, &mut b);
            assert_eq!(a, b, "scale {sb:#x}");
            assert!(!a.contains(&0x8000));
        }
    }

    fn weight(outer: usize, chans: usize, inner: usize, seed: u64) -> Vec<f16> {
        let mut r = rng(seed);
        (0..outer * chans * inner)
            .map(|t| {
                let g = r() - 0.5 + (r() - 0.5) * 0.5;
                let big = if r() < 0.002 { 20.0 } else { 1.0 };
                f16::from_f64(0.04 * g * big * (1.0 + (t % inner % 7) as f64 / 7.0))
            })
            .collect()
    }

    fn scales_of(x: &[f16], outer: usize, chans: usize, inner: usize) -> Vec<f16> {
        let mut s = vec![f16::ZERO; outer * inner];
        for oi in 0..outer {
            for ii in 0..inner {
                let m = (0..chans)
                    .map(|c| x[(oi * chans + c) * inner + ii].to_f64().abs())
                    .fold(0.0, f64::max);
                s[oi * inner + ii] = if m == 0.0 { f16::ONE } else { f16::from_f64(m) };
            }
        }
        s
    }

    /// The counting tables (u64 with carries, and u128 when a weight needs
    /// it) and the sorted pairs give the same histogram, bit for bit.
    #[test]
    fn histogram_paths_agree() {
        let (outer, chans, inner) = (2usize, 24usize, 1500usize);
        let x = weight(outer, chans, inner, 7);
        for big in [false, true] {
            let mut scales = scales_of(&x, outer, chans, inner);
            if big {
                // A scale of 300 needs a u128 weight.
                scales[5] = f16::from_f64(300.0);
            }
            let units: Vec<u128> = scales.iter().map(|s| square_units(s.to_bits())).collect();
            assert_eq!(units.iter().any(|&w| w >> 64 != 0), big);
            let b = Block {
                outer,
                chans,
                inner,
                c0: 8,
                gs: 16,
            };
            let table = histogram_by(&x, b, &scales, &units, true);
            let sorted = histogram_by(&x, b, &scales, &units, false);
            assert_eq!(table, sorted);
            assert!(table.len() > 1000);
        }
    }

    /// The AVX2 passes give the portable loop's indices, entries and error
    /// sums, on segments of every length up to a tile past a multiple of
    /// 16, with duplicate entries (non-identity indices) and without.
    #[test]
    fn segment_kernels_agree() {
        let mut r = rng(3);
        let npos = 700;
        let row_scale: Vec<f16> = (0..npos).map(|_| f16::from_f64(0.01 + r() * 0.2)).collect();
        for data in [
            (0..16).map(|j| -1.0 + j as f64 / 7.5).collect::<Vec<f64>>(),
            // Unsorted, with duplicates (a padded LUT).
            vec![
                0.5, -0.25, 0.125, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            ],
        ] {
            let t = PositionTables::new(&row_scale, &data, 16);
            let bits: Vec<u16> = (0..npos)
                .map(|_| {
                    f16::from_f64((r() - 0.5) * 0.3).to_bits() | if r() < 0.01 { 0x8000 } else { 0 }
                })
                .collect();
            for (q, n) in [
                (0usize, 512usize),
                (3, 17),
                (100, 31),
                (650, 50),
                (40, 16),
                (0, 1),
            ] {
                let (mut oa, mut ob) = (vec![0u8; n], vec![0u8; n]);
                let (mut wa, mut wb) = (Box::new(Work::default()), Box::new(Work::default()));
                t.segment(&bits[q..q + n], q, &mut oa, &mut wa);
                t.segment_passes(&bits[q..q + n], q, &mut ob, &mut wb, widen_portable, false);
                assert_eq!(oa, ob, "q {q} n {n}");
                let (ea, eb) = (wa.lanes.total(), wb.lanes.total());
                assert_eq!(ea.sse.to_bits(), eb.sse.to_bits());
                assert_eq!(ea.signal.to_bits(), eb.signal.to_bits());
                // Each index is the nearest decoded entry of its position.
                for (i, &o) in oa.iter().enumerate() {
                    let p = q + i;
                    let xv = f16::from_bits(bits[p]).to_f64();
                    let lv = &t.levels[p * 16..(p + 1) * 16];
                    let best = lv
                        .iter()
                        .map(|l| (xv - l.to_f64()).abs())
                        .fold(f64::INFINITY, f64::min);
                    assert_eq!((xv - lv[usize::from(o)].to_f64()).abs(), best);
                }
            }
        }
    }
}
