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
    LutCodes, ASSIGN_BLOCK, ASSIGN_LANES, THRESHOLD_PASSES_MAX,
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
/// scales `scales` (and their [`square_units`] `units`), writing one index
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
    let finite = (0..rows).into_par_iter().all(|r| {
        let bits: &[u16] = bytemuck::cast_slice(b.row(x, r).0);
        bits.iter().fold(0u16, |m, &v| m.max(v & 0x7fff)) < 0x7c00
    });
    if !finite {
        return Err(GroupError::NonFinite);
    }
    let hist = histogram(x, b, scales, units);
    let (lut, codes, data, row_scale) = fit_scaled_lut(&hist, scales, nbits, lut_spec);
    let k = 1usize << nbits;
    let tables = PositionTables::new(&row_scale, &data, k);
    let errors: Vec<GroupError2> = out
        .par_chunks_mut(inner.max(1))
        .enumerate()
        .map(|(r, o)| {
            let (xs, q0) = b.row(x, r);
            tables.assign_row(xs, q0, o)
        })
        .collect();
    let mut error = GroupError2::default();
    for e in &errors {
        error.add(e);
    }
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

/// The histogram of `u = w / s_q` with weights `s_q²` over the group,
/// values ascending, weights summed exactly.
fn histogram(x: &[f16], b: Block, scales: &[f16], units: &[u128]) -> Histogram {
    let (rows, inner) = (b.rows(), b.inner);
    let mut hist = Histogram::default();
    let mut push = |bits: u16, sum: u128| {
        hist.values.push(f16::from_bits(bits).to_f64());
        hist.counts.push(sum as f64 * UNIT);
    };
    if rows * inner >= TABLE_MIN {
        // Row ranges in parallel, one table each, added up.
        let parts = rayon::current_num_threads().clamp(1, rows);
        let table = (0..parts)
            .into_par_iter()
            .map(|p| {
                let mut t = vec![0u128; 1 << 16];
                let mut u = vec![0u16; inner];
                for r in p * rows / parts..(p + 1) * rows / parts {
                    let (xs, q0) = b.row(x, r);
                    quotient_bits(xs, &scales[q0..q0 + inner], &mut u);
                    for (&bits, &w) in u.iter().zip(&units[q0..q0 + inner]) {
                        t[usize::from(bits)] += w;
                    }
                }
                t
            })
            .reduce_with(|mut a, c| {
                for (x, y) in a.iter_mut().zip(&c) {
                    *x += y;
                }
                a
            })
            .unwrap_or_else(|| vec![0u128; 1 << 16]);
        for bits in finite_f16_ascending() {
            let w = table[usize::from(bits)];
            if w != 0 {
                push(bits, w);
            }
        }
        return hist;
    }
    let mut pairs: Vec<(u16, u128)> = Vec::with_capacity(rows * inner);
    let mut u = vec![0u16; inner];
    for r in 0..rows {
        let (xs, q0) = b.row(x, r);
        quotient_bits(xs, &scales[q0..q0 + inner], &mut u);
        pairs.extend(
            u.iter()
                .zip(&units[q0..q0 + inner])
                .map(|(&v, &w)| (key16(v), w)),
        );
    }
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
/// entry needs: the distinct entries ascending, the lowest LUT index of
/// each, and (for LUTs of at most [`THRESHOLD_PASSES_MAX`] distinct
/// entries) the order-key thresholds between neighbours, one row per
/// threshold so that a row of values compares with a row of thresholds.
struct PositionTables {
    k: usize,
    npos: usize,
    /// `levels[q·k + j]`: entry `j` of position `q`'s decoded LUT.
    levels: Vec<f16>,
    /// `sorted[q·k + r]`: the `r`-th smallest distinct entry (f64).
    sorted: Vec<f64>,
    /// Number of distinct entries per position.
    len: Vec<u8>,
    /// `index[q·k + r]`: the lowest LUT index holding `sorted[q·k + r]`.
    index: Vec<u8>,
    /// Whether `index[q·k + r] == r` everywhere.
    identity: bool,
    /// `thresholds[j·npos + q]`: values with a larger order key rank above
    /// entry `j` (`u16::MAX` past the last entry); empty when the search
    /// path is taken.
    thresholds: Vec<u16>,
}

impl PositionTables {
    fn new(row_scale: &[f16], data: &[f64], k: usize) -> Self {
        let npos = row_scale.len();
        let passes = k <= THRESHOLD_PASSES_MAX;
        let mut levels = vec![f16::ZERO; npos * k];
        let mut sorted = vec![0f64; npos * k];
        let mut len = vec![0u8; npos];
        let mut index = vec![0u8; npos * k];
        let mut thr_t = vec![u16::MAX; if passes { npos * k } else { 0 }];
        const CHUNK: usize = 1024;
        levels
            .par_chunks_mut(CHUNK * k)
            .zip(sorted.par_chunks_mut(CHUNK * k))
            .zip(len.par_chunks_mut(CHUNK))
            .zip(index.par_chunks_mut(CHUNK * k))
            .zip(thr_t.par_chunks_mut(if passes { CHUNK * k } else { 1 }))
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
                    for (r, &(v, j)) in order.iter().enumerate() {
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
        // Transpose the thresholds to one row per threshold.
        let mut thresholds = Vec::new();
        if passes {
            thresholds = vec![u16::MAX; (k - 1) * npos];
            thresholds
                .par_chunks_mut(npos.max(1))
                .enumerate()
                .for_each(|(j, row)| {
                    for (q, t) in row.iter_mut().enumerate() {
                        *t = thr_t[q * k + j];
                    }
                });
        }
        let identity = (0..npos).all(|q| {
            index[q * k..q * k + usize::from(len[q])]
                .iter()
                .enumerate()
                .all(|(r, &j)| usize::from(j) == r)
        });
        Self {
            k,
            npos,
            levels,
            sorted,
            len,
            index,
            identity,
            thresholds,
        }
    }

    /// Indices of one row of values (positions `q0..`) into `out`, and the
    /// row's error sums.
    fn assign_row(&self, xs: &[f16], q0: usize, out: &mut [u8]) -> GroupError2 {
        if self.thresholds.is_empty() {
            return self.assign_row_search(xs, q0, out);
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.assign_row_avx2(xs, q0, out) };
        }
        self.assign_row_passes(xs, q0, out)
    }

    /// [`Self::assign_row_passes`] compiled for AVX2 (the same operations,
    /// so the same results).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn assign_row_avx2(&self, xs: &[f16], q0: usize, out: &mut [u8]) -> GroupError2 {
        self.assign_row_passes(xs, q0, out)
    }

    /// One compare pass per threshold row, in blocks on the stack; error
    /// sums in [`ASSIGN_LANES`] lanes (value `t` into lane `t % 8`).
    #[inline(always)]
    fn assign_row_passes(&self, xs: &[f16], q0: usize, out: &mut [u8]) -> GroupError2 {
        let k = self.k;
        let mut keys = [0u16; ASSIGN_BLOCK];
        let mut rank = [0u8; ASSIGN_BLOCK];
        let mut wide = [0f32; ASSIGN_BLOCK];
        const L: usize = ASSIGN_LANES;
        let (mut sig, mut sse, mut mx) = ([0f64; L], [0f64; L], [0f64; L]);
        let bits: &[u16] = bytemuck::cast_slice(xs);
        for (blk, (vals, o)) in bits
            .chunks(ASSIGN_BLOCK)
            .zip(out.chunks_mut(ASSIGN_BLOCK))
            .enumerate()
        {
            let n = vals.len();
            let q = q0 + blk * ASSIGN_BLOCK;
            let (keys, rank, wide) = (&mut keys[..n], &mut rank[..n], &mut wide[..n]);
            for (kk, &v) in keys.iter_mut().zip(vals) {
                *kk = key16(v);
            }
            rank.fill(0);
            for j in 0..k - 1 {
                let th = &self.thresholds[j * self.npos + q..j * self.npos + q + n];
                for ((r, &kk), &t) in rank.iter_mut().zip(keys.iter()).zip(th) {
                    *r += u8::from(kk > t);
                }
            }
            if self.identity {
                o.copy_from_slice(rank);
            } else {
                for (t, (oo, &r)) in o.iter_mut().zip(rank.iter()).enumerate() {
                    *oo = self.index[(q + t) * k + usize::from(r)];
                }
            }
            xs[blk * ASSIGN_BLOCK..blk * ASSIGN_BLOCK + n].convert_to_f32_slice(wide);
            // Blocks hold a multiple of L values but the last, so lane l of
            // a block is lane l of the row.
            let m = n / L * L;
            let sorted = &self.sorted[q * k..];
            for (c, (rs, ws)) in rank[..m]
                .chunks_exact(L)
                .zip(wide[..m].chunks_exact(L))
                .enumerate()
            {
                for l in 0..L {
                    let x = f64::from(ws[l]);
                    let d = (x - sorted[(c * L + l) * k + usize::from(rs[l])]).abs();
                    sig[l] += x * x;
                    sse[l] += d * d;
                    mx[l] = if d > mx[l] { d } else { mx[l] };
                }
            }
            for (l, (&r, &x)) in rank[m..].iter().zip(&wide[m..]).enumerate() {
                let x = f64::from(x);
                let d = (x - sorted[(m + l) * k + usize::from(r)]).abs();
                sig[l] += x * x;
                sse[l] += d * d;
                mx[l] = if d > mx[l] { d } else { mx[l] };
            }
        }
        lanes_total(&sig, &sse, &mx)
    }

    /// A binary search per value among its position's distinct entries
    /// (LUTs of more than [`THRESHOLD_PASSES_MAX`] entries).
    fn assign_row_search(&self, xs: &[f16], q0: usize, out: &mut [u8]) -> GroupError2 {
        let k = self.k;
        const L: usize = ASSIGN_LANES;
        let (mut sig, mut sse, mut mx) = ([0f64; L], [0f64; L], [0f64; L]);
        for (t, (o, v)) in out.iter_mut().zip(xs).enumerate() {
            let q = q0 + t;
            let sorted = &self.sorted[q * k..q * k + usize::from(self.len[q])];
            let x = v.to_f64();
            let r = nearest(sorted, x);
            *o = self.index[q * k + r];
            let d = (x - sorted[r]).abs();
            let l = t % L;
            sig[l] += x * x;
            sse[l] += d * d;
            mx[l] = if d > mx[l] { d } else { mx[l] };
        }
        lanes_total(&sig, &sse, &mx)
    }
}

fn lanes_total(sig: &[f64], sse: &[f64], mx: &[f64]) -> GroupError2 {
    GroupError2 {
        signal: sig.iter().sum(),
        sse: sse.iter().sum(),
        max_abs: mx.iter().fold(0f64, |a, &b| a.max(b)),
    }
}
