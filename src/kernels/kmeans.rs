//! Exact weighted 1-D k-means (globally optimal squared error).
//!
//! In one dimension the optimal clusters are contiguous runs of the sorted
//! distinct values, so k-means is a dynamic programme over split points
//! (Wang & Song, "Ckmeans.1d.dp", R Journal 2011):
//!
//! ```text
//! D[1][i] = cost(0, i)
//! D[j][i] = min_{j-1 <= l < i} D[j-1][l] + cost(l, i)      (points 0..i in j clusters)
//! cost(a, b) = Σ w x² - (Σ w x)² / Σ w     over points a..b
//! ```
//!
//! `cost` satisfies the quadrangle inequality, so the optimal `l` is
//! non-decreasing in `i` and each layer can be solved by divide and
//! conquer in O(m log m) (here as a loop over strides, see
//! `layer_solver!`); the split of row `i` is also bounded below by the
//! previous layer's split of the same row.
//!
//! Two exact reductions cut the work roughly in half on UNet weights:
//!
//! * **Meet in the middle.** The first `k/2` layers run forward over the
//!   values and the other `k - k/2` run backward over the mirrored values;
//!   the optimum is `min_i F[k/2][i] + B[k - k/2][m - i]`. Each half only
//!   needs its own layers, and early layers are the cheap ones to prune.
//! * **Bound pruning.** A quick Lloyd run from quantile starts gives the
//!   cost `U` of *some* clustering, so no optimal path passes through a row
//!   with `D[j][i] > U` (cluster costs are non-negative). `D[j][i]` is
//!   non-decreasing in `i`, so those rows form a suffix: the divide and
//!   conquer stops descending to the right once a row exceeds `U`, and the
//!   next layer only looks at columns below it. `U` carries a margin far
//!   above the rounding error of the prefix sums, so pruning never removes
//!   a row the exact optimum needs.
//!
//! * **Skipping in the meeting layer.** The last layer of both halves is
//!   solved as one, row by row in forward order, so the meeting sum
//!   `T(i) = F[k/2][i] + B[k - k/2][m - i]` can be bounded between two
//!   computed rows `i1 < i2`: `T >= F[i1] + B[m - i2]` (F rises with `i`,
//!   B falls). Rows whose bound exceeds the best `T` found so far are
//!   solved in neither direction; on a 16 × 1280 group that is about 7,200
//!   of those two layers' 7,700 rows each, an eighth of all the rows.
//!
//! Most rows at the finest strides have one to four candidates, so their
//! cost is the latency of one vector of candidates and its reduction, not
//! the arithmetic: such rows take their leftmost minimum from a compare
//! mask, and rows are solved two at a time so their chains overlap.
//!
//! Ties pick the smallest split within each half and the leftmost meeting
//! row, which makes the result deterministic. The tests check it against
//! brute force, against the plain full DP and against an independent SMAWK
//! solver.
//!
//! Inputs are the *distinct* values with their counts: a fp16 tensor has at
//! most ~63k distinct finite values however large it is.

/// Sorted distinct values with their multiplicities.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Distinct values, ascending.
    pub values: Vec<f64>,
    /// Count (weight) of each value.
    pub counts: Vec<f64>,
}

impl Histogram {
    /// Builds a histogram from arbitrary finite values.
    pub fn from_values(xs: &[f64]) -> Self {
        let mut v: Vec<f64> = xs.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let mut h = Histogram::default();
        for x in v {
            // -0.0 and 0.0 are the same value.
            let x = if x == 0.0 { 0.0 } else { x };
            match h.values.last() {
                Some(&l) if l == x => *h.counts.last_mut().expect("non-empty") += 1.0,
                _ => {
                    h.values.push(x);
                    h.counts.push(1.0);
                }
            }
        }
        h
    }

    /// Number of distinct values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Result of a 1-D k-means.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    /// Weighted mean of each cluster, ascending (at most `k` of them).
    pub centroids: Vec<f64>,
    /// `starts[c]` = index of the first distinct value of cluster `c`.
    pub starts: Vec<usize>,
    /// Total weighted squared error of the clustering.
    pub sse: f64,
}

/// Entries past the end of the prefix sums and the DP rows, so the SIMD
/// split kernel can read whole vectors (its extra lanes are masked out).
const PAD: usize = 3;

/// Prefix sums over the (centred) histogram for O(1) cluster costs
/// (each `m + 1` long plus [`PAD`] copies of the total).
struct Prefix {
    w: Vec<f64>,
    s: Vec<f64>,
    q: Vec<f64>,
}

impl Prefix {
    /// The prefix sums of `h` and its mean (the search builds both
    /// directions at once with [`Prefix::both`]; tests use this one).
    #[cfg(test)]
    fn new(h: &Histogram) -> (Self, f64) {
        Self::build(h.values.len(), |t| (h.values[t], h.counts[t]))
    }

    /// The prefix sums of the mirrored histogram (values negated, order
    /// reversed), computed without building it: the same operations in the
    /// same order as [`Prefix::new`] on the mirrored copy, so the sums are
    /// bit-identical to that.
    #[cfg(test)]
    fn mirrored(h: &Histogram) -> Self {
        let m = h.values.len();
        Self::build(m, |t| (-h.values[m - 1 - t], h.counts[m - 1 - t])).0
    }

    /// [`Prefix::new`] and [`Prefix::mirrored`] in one pass each for the
    /// mean and the sums: the same operations in the same order per sum,
    /// so the same bits, with the two directions' dependency chains
    /// overlapping (each is bound by the latency of its additions).
    fn both(h: &Histogram) -> (Self, Self, f64) {
        let m = h.values.len();
        let (v, c) = (&h.values[..m], &h.counts[..m]);
        let (mut tf, mut sf, mut tb, mut sb) = (0.0, 0.0, 0.0, 0.0);
        for t in 0..m {
            let r = m - 1 - t;
            tf += c[t];
            sf += v[t] * c[t];
            tb += c[r];
            sb += -v[r] * c[r];
        }
        let mf = sf / f64::max(tf, 1.0);
        let mb = sb / f64::max(tb, 1.0);
        let len = m + 1 + PAD;
        // Pooled buffers: entry 0 is set here and every other one below (a
        // fresh zeroed 17k-entry array per sum and group showed up as page
        // clearing).
        let pooled = || {
            let sums = || {
                let mut v = take_f64(len);
                v[0] = 0.0;
                v
            };
            Self {
                w: sums(),
                s: sums(),
                q: sums(),
            }
        };
        let (mut f, mut b) = (pooled(), pooled());
        let (mut fw, mut fs, mut fq) = (0.0, 0.0, 0.0);
        let (mut bw, mut bs, mut bq) = (0.0, 0.0, 0.0);
        // Every slice exactly `m` long, so the loop carries no bounds
        // checks (with them, and the six output pointers spilled, this loop
        // was half of the time outside the DP layers).
        let (ofw, ofs, ofq) = (&mut f.w[1..=m], &mut f.s[1..=m], &mut f.q[1..=m]);
        let (obw, obs, obq) = (&mut b.w[1..=m], &mut b.s[1..=m], &mut b.q[1..=m]);
        for t in 0..m {
            let r = m - 1 - t;
            let (x, w) = (v[t], c[t]);
            let d = x - mf;
            fw += w;
            fs += w * d;
            fq += w * d * d;
            ofw[t] = fw;
            ofs[t] = fs;
            ofq[t] = fq;
            let (x, w) = (-v[r], c[r]);
            let d = x - mb;
            bw += w;
            bs += w * d;
            bq += w * d * d;
            obw[t] = bw;
            obs[t] = bs;
            obq[t] = bq;
        }
        for t in m + 1..len {
            (f.w[t], f.s[t], f.q[t]) = (fw, fs, fq);
            (b.w[t], b.s[t], b.q[t]) = (bw, bs, bq);
        }
        (f, b, mf)
    }

    /// Prefix sums over `m` (value, count) pairs given in ascending order.
    #[cfg(test)]
    #[inline(always)]
    fn build(m: usize, at: impl Fn(usize) -> (f64, f64)) -> (Self, f64) {
        let (mut total, mut sum) = (0.0, 0.0);
        for t in 0..m {
            let (x, c) = at(t);
            total += c;
            sum += x * c;
        }
        let mean = sum / f64::max(total, 1.0);
        let len = m + 1 + PAD;
        let (mut w, mut s, mut q) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
        let (mut aw, mut as_, mut aq) = (0.0, 0.0, 0.0);
        for t in 0..m {
            let (x, c) = at(t);
            // Centring keeps Σwx² - (Σwx)²/Σw from cancelling badly.
            let d = x - mean;
            aw += c;
            as_ += c * d;
            aq += c * d * d;
            w[t + 1] = aw;
            s[t + 1] = as_;
            q[t + 1] = aq;
        }
        for t in m + 1..len {
            (w[t], s[t], q[t]) = (aw, as_, aq);
        }
        (Self { w, s, q }, mean)
    }

    /// Hands the sums back to this thread's buffer pool.
    fn recycle(self) {
        give_back([self.w, self.s, self.q], []);
    }

    /// Cluster cost without the clamp at zero (rounding can make it a hair
    /// negative; the DP only compares sums of these).
    #[cfg(test)]
    #[inline(always)]
    fn cost_raw(&self, a: usize, b: usize) -> f64 {
        let w = self.w[b] - self.w[a];
        let s = self.s[b] - self.s[a];
        (self.q[b] - self.q[a]) - s * s / w
    }

    /// Squared error of one cluster holding points `a..b` (a < b).
    #[inline(always)]
    fn cost(&self, a: usize, b: usize) -> f64 {
        let w = self.w[b] - self.w[a];
        let s = self.s[b] - self.s[a];
        let c = (self.q[b] - self.q[a]) - s * s / w;
        if c > 0.0 {
            c
        } else {
            0.0
        }
    }
}

/// Optimal weighted k-means of `h` into at most `k` clusters.
///
/// With fewer distinct values than `k`, every value is its own cluster
/// (zero error).
pub fn kmeans_1d(h: &Histogram, k: usize) -> Clustering {
    kmeans_1d_with(h, k, Kernel::detect())
}

/// The split kernel the DP layers run: all give bit-identical results
/// (same operations per candidate, same tie rule), so the choice is only
/// about speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }
}

fn kmeans_1d_with(h: &Histogram, k: usize, kernel: Kernel) -> Clustering {
    let m = h.len();
    if m == 0 || k == 0 {
        return Clustering {
            centroids: vec![],
            starts: vec![],
            sse: 0.0,
        };
    }
    if m <= k {
        return Clustering {
            centroids: h.values.clone(),
            starts: (0..m).collect(),
            sse: 0.0,
        };
    }
    let (p, rp, mean) = Prefix::both(h);
    let c = if k == 1 {
        finish(h, vec![0], p.cost(0, m))
    } else {
        // Margin: each D value is a sum of at most k cluster costs, each
        // off by a few ulps of the largest prefix sum. 1e-13 relative per
        // cluster is ~500x that, and still tiny next to any real gap
        // between clusterings.
        let bound = lloyd_bound(&p, &h.values, mean, k);
        let u = bound * (1.0 + 1e-9) + k as f64 * 1e-13 * p.q[m].abs();
        meet_in_the_middle(h, &p, &rp, k, u, kernel).unwrap_or_else(|| {
            // Unreachable in exact arithmetic (the Lloyd clustering itself
            // is a path under the bound); kept so rounding can never lose
            // the answer.
            meet_in_the_middle(h, &p, &rp, k, f64::INFINITY, kernel)
                .expect("an unbounded search always finds a path")
        })
    };
    p.recycle();
    rp.recycle();
    c
}

/// Centroids of the clusters starting at `starts`.
fn finish(h: &Histogram, starts: Vec<usize>, sse: f64) -> Clustering {
    let m = h.len();
    let k = starts.len();
    let centroids = (0..k)
        .map(|c| {
            let (a, b) = (starts[c], if c + 1 < k { starts[c + 1] } else { m });
            let (mut sw, mut sx) = (0.0, 0.0);
            for t in a..b {
                sw += h.counts[t];
                sx += h.counts[t] * h.values[t];
            }
            sx / sw
        })
        .collect();
    Clustering {
        centroids,
        starts,
        sse,
    }
}

/// Cost of a quick Lloyd clustering (an upper bound on the optimum).
///
/// Starts at weight quantiles; each iteration is O(k log m) because cluster
/// sums come from the prefix sums and boundaries from a binary search.
fn lloyd_bound(p: &Prefix, values: &[f64], mean: f64, k: usize) -> f64 {
    let m = values.len();
    let total = p.w[m];
    let mut starts: Vec<usize> = (0..k)
        .map(|c| {
            p.w.partition_point(|&w| w <= total * c as f64 / k as f64)
                .saturating_sub(1)
        })
        .collect();
    // Make the starts strictly increasing and leave room for every later
    // cluster, so each cluster is non-empty.
    starts[0] = 0;
    for c in 1..k {
        starts[c] = starts[c].max(starts[c - 1] + 1);
    }
    for c in (0..k).rev() {
        starts[c] = starts[c].min(m - (k - c));
    }
    let end = |st: &[usize], c: usize| if c + 1 < k { st[c + 1] } else { m };
    let cost_of = |st: &[usize]| -> f64 { (0..k).map(|c| p.cost(st[c], end(st, c))).sum() };
    let mut best = cost_of(&starts);
    let mut next = vec![0usize; k];
    for _ in 0..100 {
        let centre = |c: usize| {
            let (a, b) = (starts[c], end(&starts, c));
            (p.s[b] - p.s[a]) / (p.w[b] - p.w[a]) + mean
        };
        for (c, n) in next.iter_mut().enumerate().skip(1) {
            let mid = 0.5 * (centre(c - 1) + centre(c));
            *n = partition_near(values, starts[c], |v| v < mid);
        }
        if next == starts || (1..k).any(|c| next[c] <= next[c - 1] || next[c] >= m) {
            break;
        }
        let cost = cost_of(&next);
        if cost >= best {
            break;
        }
        best = cost;
        starts.copy_from_slice(&next);
    }
    best
}

/// `values.partition_point(pred)` (`pred` true on a prefix), found by
/// galloping from `guess`: Lloyd's boundaries move a few values per
/// iteration, so this takes a handful of probes where a binary search over
/// all values takes ~14 hard-to-predict ones. Same result.
fn partition_near(values: &[f64], guess: usize, pred: impl Fn(f64) -> bool) -> usize {
    let m = values.len();
    let guess = guess.min(m);
    // Find lo < hi with pred true below lo (or lo = 0) and false at hi (or
    // hi = m), the answer in lo..=hi.
    let (mut lo, mut hi);
    if guess < m && pred(values[guess]) {
        lo = guess + 1;
        let mut step = 1;
        hi = loop {
            let probe = guess + step;
            if probe >= m {
                break m;
            }
            if !pred(values[probe]) {
                break probe;
            }
            lo = probe + 1;
            step *= 2;
        };
    } else {
        hi = guess;
        let mut step = 1;
        lo = loop {
            if step > guess {
                break 0;
            }
            let probe = guess - step;
            if pred(values[probe]) {
                break probe + 1;
            }
            hi = probe;
            step *= 2;
        };
    }
    lo + values[lo..hi].partition_point(|&v| pred(v))
}

/// One half of the search: layers `1..=layers` of the DP over `p`, rows
/// pruned by `u`. `last[i]` is the last layer's value (infinite on every
/// row it did not solve), `arg[(j - 1) * (m + 1) + i]` the split of row
/// `i` in layer `j` (layer 1 has none); only rows a layer solved hold one.
struct Half {
    last: Vec<f64>,
    arg: Vec<u32>,
    /// The last row of `last` within the bound: the next layer's splits
    /// stay at or below it.
    hi: usize,
    /// Rows of the last layer below this one have their split in `arg`.
    end: usize,
}

/// Buffers of the searches run on this thread, reused from one group to
/// the next: a 16 x 1280 group has ~10^4 rows per layer, and zeroing or
/// filling fresh buffers for every layer cost about 5 % of the search. The
/// layers never read a row that was not written for this search (see
/// `half`), so stale contents are harmless.
#[derive(Default)]
struct Pool {
    f64s: Vec<Vec<f64>>,
    u32s: Vec<Vec<u32>>,
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = std::cell::RefCell::new(Pool::default());
}

/// A pooled buffer of at least `len` entries (contents unspecified).
fn take_f64(len: usize) -> Vec<f64> {
    let mut v = POOL.with(|p| p.borrow_mut().f64s.pop()).unwrap_or_default();
    v.resize(len, f64::INFINITY);
    v
}

fn take_u32(len: usize) -> Vec<u32> {
    let mut v = POOL.with(|p| p.borrow_mut().u32s.pop()).unwrap_or_default();
    v.resize(len, 0);
    v
}

/// Hands buffers back to this thread's pool.
fn give_back(f64s: impl IntoIterator<Item = Vec<f64>>, u32s: impl IntoIterator<Item = Vec<u32>>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.f64s.extend(f64s);
        p.u32s.extend(u32s);
    });
}

impl Half {
    /// Hands the buffers back to this thread's pool.
    fn recycle(self) {
        give_back([self.last], [self.arg]);
    }
}

/// Layers `1..=layers` of one direction of the DP over `p`.
///
/// What is read of the buffers, and so what must be written first:
/// a layer reads the previous layer's values only at splits up to the
/// last row within the bound (all solved), its own `arg` only at rows of
/// coarser strides (solved), and the previous layer's `arg` of the same
/// row only where that layer solved it (`prev_end`). Only the last layer
/// can be read everywhere (by the meeting scan of
/// [`meet_in_the_middle_small`]), so it alone is filled with +inf before
/// it is solved.
fn half(p: &Prefix, m: usize, k: usize, layers: usize, u: f64, kernel: Kernel) -> Option<Half> {
    let len = m + 1 + PAD;
    let mut prev = take_f64(len);
    if layers == 1 {
        prev.fill(f64::INFINITY);
    }
    prev[0] = 0.0;
    // Admissible rows of the current layer are 1..=hi.
    let mut hi = 0;
    for (i, v) in prev.iter_mut().enumerate().take(m - (k - 1) + 1).skip(1) {
        let c = p.cost(0, i);
        if c > u {
            break;
        }
        *v = c;
        hi = i;
    }
    let stride = m + 1;
    let mut arg = take_u32(layers * stride);
    let mut cur = take_f64(len);
    // Layer 1 has no splits: every bound from it is 0.
    let mut prev_end = 0;
    for j in 2..=layers {
        if hi < j - 1 {
            give_back([prev, cur], [arg]);
            return None;
        }
        if j == layers {
            cur.fill(f64::INFINITY);
        }
        let (done, rest) = arg.split_at_mut((j - 1) * stride);
        let layer = Layer {
            p,
            prev: &prev,
            prev_arg: &done[(j - 2) * stride..],
            prev_end,
            u,
            lo: j,
            hi: m - (k - j),
            opt_lo: j - 1,
            opt_hi: hi,
        };
        let dead = layer.solve(kernel, &mut cur, &mut rest[..stride]);
        // Rows solved: every position before `dead`, and the row at `dead`
        // itself (solved, above the bound). Rows of coarser strides past it
        // may have been solved too; they are not counted, and a bound of 0
        // is as valid as theirs.
        let n = m - (k - j) + 1 - j;
        prev_end = j + dead.min(n);
        // Every row before the first one above the bound was computed and
        // is within it.
        hi = j + dead - 2;
        std::mem::swap(&mut prev, &mut cur);
    }
    if hi < layers {
        give_back([prev, cur], [arg]);
        return None;
    }
    give_back([cur], []);
    Some(Half {
        last: prev,
        arg,
        hi,
        end: prev_end,
    })
}

fn meet_in_the_middle(
    h: &Histogram,
    p: &Prefix,
    rp: &Prefix,
    k: usize,
    u: f64,
    kernel: Kernel,
) -> Option<Clustering> {
    let m = h.len();
    let a = k / 2;
    let b = k - a;
    if a < 2 {
        return meet_in_the_middle_small(h, p, rp, k, u, kernel);
    }
    // Both halves up to the layer before the meeting one; that layer is
    // solved for both directions at once (see `joint_solver!`).
    let bw = half(rp, m, k, b - 1, u, kernel)?;
    let Some(fw) = half(p, m, k, a - 1, u, kernel) else {
        bw.recycle();
        return None;
    };
    let len = m + 1 + PAD;
    let (mut fc, mut bc) = (take_f64(len), take_f64(len));
    let (mut fa, mut ba) = (take_u32(len), take_u32(len));
    fc[a..=m - b].fill(f64::INFINITY);
    bc[a..=m - b].fill(f64::INFINITY);
    let joint = Joint {
        p,
        rp,
        fw: &fw,
        bw: &bw,
        fw_prev_arg: if a > 2 {
            &fw.arg[(a - 2) * (m + 1)..]
        } else {
            &[]
        },
        bw_prev_arg: if b > 2 {
            &bw.arg[(b - 2) * (m + 1)..]
        } else {
            &[]
        },
        a,
        b,
        m,
        u,
        margin: k as f64 * 1e-13 * p.q[m].abs(),
    };
    joint.solve(kernel, &mut fc, &mut fa, &mut bc, &mut ba);
    #[cfg(test)]
    tests::MEET_ROWS.with(|c| {
        let solved = fc[a..=m - b].iter().filter(|v| v.is_finite()).count();
        c.set((solved, m - b + 1 - a));
    });
    let (best, meet) = meeting_row(a, m - b, |i| fc[i] + bc[i]);
    let found = best.is_finite().then(|| {
        let mut starts = vec![0usize; k];
        starts[a] = meet;
        let (fl, bl) = (fa[meet] as usize, ba[meet] as usize);
        starts[a - 1] = fl;
        trace(&fw.arg, m, a - 2, fl, |j, i| starts[j] = i);
        // Mirrored row r covers original values m-r..m; a mirrored split l
        // starts the original cluster at m-l.
        starts[k - b + 1] = m - bl;
        trace(&bw.arg, m, b - 2, bl, |j, l| starts[k - j] = m - l);
        finish(h, starts, best)
    });
    give_back([fc, bc], [fa, ba]);
    bw.recycle();
    fw.recycle();
    found
}

/// [`meet_in_the_middle`] for `k < 4`, where a half has a single layer:
/// both halves in full, then the meeting scan.
fn meet_in_the_middle_small(
    h: &Histogram,
    p: &Prefix,
    rp: &Prefix,
    k: usize,
    u: f64,
    kernel: Kernel,
) -> Option<Clustering> {
    let m = h.len();
    let a = k / 2;
    let b = k - a;
    let bw = half(rp, m, k, b, u, kernel)?;
    let Some(fw) = half(p, m, k, a, u, kernel) else {
        bw.recycle();
        return None;
    };
    let (best, meet) = meeting_row(a, m - b, |i| fw.last[i] + bw.last[m - i]);
    let found = best.is_finite().then(|| {
        let mut starts = vec![0usize; k];
        starts[a] = meet;
        trace(&fw.arg, m, a - 1, meet, |j, i| starts[j] = i);
        trace(&bw.arg, m, b - 1, m - meet, |j, l| starts[k - j] = m - l);
        finish(h, starts, best)
    });
    bw.recycle();
    fw.recycle();
    found
}

/// The leftmost row `i` in `lo..=hi` with the smallest meeting sum `t(i)`,
/// and that sum.
fn meeting_row(lo: usize, hi: usize, t: impl Fn(usize) -> f64) -> (f64, usize) {
    let (mut best, mut meet) = (f64::INFINITY, 0);
    for i in lo..=hi {
        let v = t(i);
        if v < best {
            best = v;
            meet = i;
        }
    }
    (best, meet)
}

/// Walks a half's splits back from row `i` of layer `top + 1`: for layers
/// `top + 1` down to 2, `put(j, l)` with `l` the split of the current row in
/// layer `j + 1` (the start of cluster `j` counted from that end), which is
/// then the row of layer `j`. `arg` holds layer `j`'s splits at
/// `(j - 1) * (m + 1)`.
fn trace(arg: &[u32], m: usize, top: usize, mut i: usize, mut put: impl FnMut(usize, usize)) {
    for j in (1..=top).rev() {
        i = arg[j * (m + 1) + i] as usize;
        put(j, i);
    }
}

/// The meeting layer: layer `a` of the forward half and layer `b` of the
/// backward half, solved together over the rows `i` of the forward
/// direction (backward row `m - i`). Only the sum
/// `T(i) = F[a][i] + B[b][m - i]` matters there, F non-decreasing in `i`
/// and `B[b][m - i]` non-increasing, so between two solved rows
/// `i1 < i2` every row has `T >= F[a][i1] + B[b][m - i2]`. Rows whose bound
/// is above the best `T` so far (at first the Lloyd bound) cannot be the
/// meeting row and are solved in neither direction; on a 16 x 1280 group
/// that is about 7,200 of 7,700 rows of each of the two layers.
struct Joint<'a> {
    p: &'a Prefix,
    rp: &'a Prefix,
    fw: &'a Half,
    bw: &'a Half,
    /// The split of each row in layer `a - 1` (empty when that is layer 1,
    /// which has none; then `fw.end` is 0).
    fw_prev_arg: &'a [u32],
    bw_prev_arg: &'a [u32],
    a: usize,
    b: usize,
    m: usize,
    u: f64,
    /// Slack for the skip test: rounding can make computed rows decrease
    /// by a few ulps where exact ones are non-decreasing.
    margin: f64,
}

impl Joint<'_> {
    /// Fills the rows `a..=m - b` that it solves: `fc`, `fa` with the
    /// forward layer's value and split, `bc`, `ba` with the backward
    /// layer's (indexed by forward row, the split in mirrored
    /// coordinates). The others keep the value the caller gave (+inf);
    /// `fa` is [`SKIPPED`] at skipped rows.
    fn solve(
        &self,
        kernel: Kernel,
        fc: &mut [f64],
        fa: &mut [u32],
        bc: &mut [f64],
        ba: &mut [u32],
    ) {
        match kernel {
            // SAFETY: the portable kernel has no requirements.
            Kernel::Portable => unsafe { solve_joint_portable(self, fc, fa, bc, ba) },
            // SAFETY: `Kernel::Avx2` is only chosen when the CPU has AVX2.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { solve_joint_avx2(self, fc, fa, bc, ba) },
        }
    }
}

/// `v[i]` without a bounds check, for the solver loops that check their
/// index ranges once on entry.
///
/// # Safety
/// `i < v.len()`.
#[inline(always)]
unsafe fn at<T: Copy>(v: &[T], i: usize) -> T {
    debug_assert!(i < v.len());
    // SAFETY: the caller guarantees `i < v.len()`.
    unsafe { *v.get_unchecked(i) }
}

/// `v[i] = x` without a bounds check (see [`at`]).
///
/// # Safety
/// `i < v.len()`.
#[inline(always)]
unsafe fn put<T>(v: &mut [T], i: usize, x: T) {
    debug_assert!(i < v.len());
    // SAFETY: the caller guarantees `i < v.len()`.
    unsafe { *v.get_unchecked_mut(i) = x }
}

/// The meeting layer's loop ([`Joint`]), coarse to fine by position as
/// `layer_solver!`, instantiated once per split kernel. A row's forward
/// split lies between those of its solved neighbours; its backward split
/// too, with the neighbours' roles swapped (the right one in forward
/// order is the left one in mirrored order). A row next to a skipped one
/// is skipped too (all rows between two skipped-over neighbours were
/// covered by the bound that skipped them).
macro_rules! joint_solver {
    ($(#[$attr:meta])* $vis:vis unsafe fn $name:ident => $split:ident) => {
        $(#[$attr])*
        $vis unsafe fn $name(
            j: &Joint,
            fc: &mut [f64],
            fa: &mut [u32],
            bc: &mut [f64],
            ba: &mut [u32],
        ) {
            let (lo, hi, m) = (j.a, j.m - j.b, j.m);
            if lo > hi {
                return;
            }
            let n = hi + 1 - lo;
            // Rows are in `lo..=hi`, mirrored rows in `m - hi..=m - lo`, and
            // the previous layers' splits are read below their `end`:
            // checked once here, so the loop goes without bounds checks.
            assert!(fc.len() > hi && fa.len() > hi && bc.len() > hi && ba.len() > hi);
            assert!(j.fw.end == 0 || j.fw_prev_arg.len() >= j.fw.end);
            assert!(j.bw.end == 0 || j.bw_prev_arg.len() >= j.bw.end);
            let mut s = 1usize << (usize::BITS - 1 - n.leading_zeros());
            // First position whose forward row is above the bound (n + 1:
            // none yet); rows right of it are too.
            let mut dead = n + 1;
            let mut best_t = j.u;
            loop {
                let mut r = s;
                while r <= n && r < dead {
                    let row = lo + r - 1;
                    let rp = (r + s).min(dead);
                    let left = (r > s).then(|| row - s);
                    let right = (rp <= n).then(|| lo + rp - 1);
                    let skip = match (left, right) {
                        (Some(x), _) if at(fa, x) == SKIPPED => true,
                        (_, Some(y)) if at(fa, y) == SKIPPED => true,
                        // Without a right neighbour the bound takes the
                        // last row's backward value, 0 (one value per
                        // cluster).
                        (Some(x), y) => {
                            at(fc, x) + y.map_or(0.0, |y| at(bc, y)) > best_t + j.margin
                        }
                        (None, _) => false,
                    };
                    if skip {
                        put(fa, row, SKIPPED);
                        r += 2 * s;
                        continue;
                    }
                    // Forward split: between the neighbours', at least the
                    // previous layer's of the same row, below the row.
                    let f_end = right.map_or(j.fw.hi, |y| at(fa, y) as usize).min(row - 1);
                    let f_below = if row < j.fw.end { at(j.fw_prev_arg, row) as usize } else { 0 };
                    let f_start = left
                        .map_or(j.a - 1, |x| at(fa, x) as usize)
                        .max(f_below)
                        .min(f_end);
                    // Backward split of the mirrored row.
                    let ri = m - row;
                    let b_end = left.map_or(j.bw.hi, |x| at(ba, x) as usize).min(ri - 1);
                    let b_below = if ri < j.bw.end { at(j.bw_prev_arg, ri) as usize } else { 0 };
                    let b_start = right
                        .map_or(j.b - 1, |y| at(ba, y) as usize)
                        .max(b_below)
                        .min(b_end);
                    // SAFETY: the caller guarantees the kernel's target features.
                    let (fv, fl) = unsafe { $split(j.p, &j.fw.last, row, f_start, f_end) };
                    // SAFETY: as above.
                    let (bv, bl) = unsafe { $split(j.rp, &j.bw.last, ri, b_start, b_end) };
                    put(fc, row, fv);
                    put(fa, row, fl as u32);
                    put(bc, row, bv);
                    put(ba, row, bl as u32);
                    best_t = best_t.min(fv + bv);
                    if fv > j.u {
                        dead = r;
                        break;
                    }
                    r += 2 * s;
                }
                if s == 1 {
                    return;
                }
                s /= 2;
            }
        }
    };
}

joint_solver!(
    /// The meeting layer with the portable split kernel.
    ///
    /// # Safety
    /// None (`unsafe` only to share the macro with the SIMD form).
    unsafe fn solve_joint_portable => best_split_unsafe
);

#[cfg(target_arch = "x86_64")]
joint_solver!(
    /// The meeting layer with the AVX2 split kernel.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn solve_joint_avx2 => best_split_avx2
);

/// The plain full DP (all layers, no pruning): the reference the pruned
/// search is tested against.
#[cfg(test)]
fn kmeans_full(h: &Histogram, k: usize) -> f64 {
    let m = h.len();
    let (p, _) = Prefix::new(h);
    if m <= k {
        return 0.0;
    }
    half(&p, m, k, k, f64::INFINITY, Kernel::detect())
        .expect("unbounded")
        .last[m]
}

#[cfg(test)]
/// Row minima of a totally monotone matrix `f(row, col)` (SMAWK: Aggarwal,
/// Klawe, Moran, Shor, Wilber 1987), leftmost on ties. `argmin[row]`
/// receives the column. O(rows + cols) evaluations of `f`.
fn smawk(rows: &[usize], cols: &[usize], f: &impl Fn(usize, usize) -> f64, argmin: &mut [usize]) {
    if rows.is_empty() {
        return;
    }
    // REDUCE: drop columns that cannot hold any row's minimum, leaving at
    // most |rows| columns.
    let mut stack: Vec<usize> = Vec::with_capacity(rows.len());
    for &c in cols {
        while let Some(&top) = stack.last() {
            let r = rows[stack.len() - 1];
            if f(r, top) <= f(r, c) {
                break;
            }
            stack.pop();
        }
        if stack.len() < rows.len() {
            stack.push(c);
        }
    }
    // Recurse on the odd rows.
    let odd: Vec<usize> = rows.iter().skip(1).step_by(2).copied().collect();
    smawk(&odd, &stack, f, argmin);
    // INTERPOLATE the even rows between their odd neighbours' minima.
    let mut ci = 0usize;
    for (k, &r) in rows.iter().enumerate().step_by(2) {
        let last = if k + 1 < rows.len() {
            argmin[rows[k + 1]]
        } else {
            *stack.last().expect("at least one column")
        };
        let mut best = f64::INFINITY;
        let mut best_c = stack[ci];
        loop {
            let c = stack[ci];
            let v = f(r, c);
            if v < best {
                best = v;
                best_c = c;
            }
            if c == last {
                break;
            }
            ci += 1;
        }
        argmin[r] = best_c;
    }
}

/// One layer of the DP: row `i` takes the best split `l` (with `prev[l]`
/// finite) of `prev[l] + cost(l, i)`, for rows `lo..=hi` and splits in
/// `opt_lo..=opt_hi`.
struct Layer<'a> {
    p: &'a Prefix,
    prev: &'a [f64],
    prev_arg: &'a [u32],
    /// Rows below this one have their split in `prev_arg`; the others
    /// were not solved by the previous layer and take the bound 0.
    prev_end: usize,
    u: f64,
    lo: usize,
    hi: usize,
    opt_lo: usize,
    opt_hi: usize,
}

/// `arg` of a row the meeting layer skipped.
const SKIPPED: u32 = u32::MAX;

impl Layer<'_> {
    /// Fills `cur[lo..=hi]` and `arg[lo..=hi]` up to the first row above
    /// the bound (rows past it are left as they are, or hold values that
    /// are above it too). Returns that row's position `row - lo + 1`
    /// (`hi - lo + 2` if there is none).
    fn solve(&self, kernel: Kernel, cur: &mut [f64], arg: &mut [u32]) -> usize {
        match kernel {
            // SAFETY: the portable kernel has no requirements.
            Kernel::Portable => unsafe { solve_layer_portable(self, cur, arg) },
            // SAFETY: `Kernel::Avx2` is only chosen when the CPU has AVX2.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { solve_layer_avx2(self, cur, arg) },
        }
    }
}

/// Row of position `r` at stride `s` and its split range: between the
/// splits of the solved neighbours at `r - s` and `r + s` (or the layer's
/// limits; the row at `dead` when `r + s` is past it), at least the
/// previous layer's split of the same row, and below the row.
#[inline(always)]
fn split_range(
    l: &Layer,
    arg: &[u32],
    s: usize,
    n: usize,
    r: usize,
    dead: usize,
) -> (usize, usize, usize) {
    let row = l.lo + r - 1;
    // SAFETY (all three reads): rows are at most `l.hi`, which the layer
    // loop checked against the lengths of `arg` and `prev_arg` on entry.
    let left = if r > s {
        unsafe { at(arg, row - s) as usize }
    } else {
        l.opt_lo
    };
    let rp = (r + s).min(dead);
    let right = if rp <= n {
        unsafe { at(arg, l.lo + rp - 1) as usize }
    } else {
        l.opt_hi
    };
    let end = right.min(row - 1);
    let below = if row < l.prev_end {
        unsafe { at(l.prev_arg, row) as usize }
    } else {
        0
    };
    (row, left.max(below).min(end), end)
}

/// The layer loop, instantiated once per split kernel (the AVX2 one must
/// be inlined into a function compiled with AVX2, which a generic
/// parameter cannot express for `#[target_feature]` functions).
///
/// The optimal split is non-decreasing in the row, so a row's split lies
/// between its computed neighbours' splits. Rows are visited coarse to
/// fine by position `r = row - lo + 1`: first the multiples of the largest
/// power of two, then at each finer stride `s` the odd multiples of `s`,
/// whose neighbours `r ± s` were computed before. That is divide and
/// conquer without recursion, a plain loop per stride. The split of row
/// `i` is also bounded below by the previous layer's split of the same row
/// (one more cluster never moves the last cluster's start left). Rows are
/// non-decreasing in value, so past a row above the bound `u` all are:
/// those are skipped.
macro_rules! layer_solver {
    ($(#[$attr:meta])* $vis:vis unsafe fn $name:ident => $split:ident) => {
        $(#[$attr])*
        $vis unsafe fn $name(l: &Layer, cur: &mut [f64], arg: &mut [u32]) -> usize {
            if l.lo > l.hi {
                return 1;
            }
            let n = l.hi + 1 - l.lo;
            // Every row and split below is at most `l.hi` (splits are below
            // their row): checked once here, so the loop reads and writes
            // without per-access bounds checks.
            assert!(cur.len() > l.hi && arg.len() > l.hi && l.prev.len() > l.hi);
            assert!(l.p.w.len() > l.hi && l.p.s.len() > l.hi && l.p.q.len() > l.hi);
            assert!(l.prev_end == 0 || l.prev_arg.len() >= l.prev_end);
            let mut s = 1usize << (usize::BITS - 1 - n.leading_zeros());
            // First position whose row is above the bound (n + 1: none yet).
            let mut dead = n + 1;
            loop {
                let mut r = s;
                while r <= n && r < dead {
                    let (row, start, end) = split_range(l, arg, s, n, r, dead);
                    let r2 = r + 2 * s;
                    if r2 <= n && r2 < dead {
                        // Two independent rows of the stride back to back,
                        // so their dependency chains overlap (the second
                        // one only counts if the first is within the
                        // bound, as it would have been solved then).
                        let (row2, start2, end2) = split_range(l, arg, s, n, r2, dead);
                        // SAFETY: the caller guarantees the kernel's target features.
                        let (best, best_l) = unsafe { $split(l.p, l.prev, row, start, end) };
                        // SAFETY: as above.
                        let (best2, best_l2) = unsafe { $split(l.p, l.prev, row2, start2, end2) };
                        // SAFETY: rows are at most `l.hi` (checked on entry).
                        unsafe {
                            put(cur, row, best);
                            put(arg, row, best_l as u32);
                        }
                        if best > l.u {
                            dead = r;
                            break;
                        }
                        // SAFETY: as above.
                        unsafe {
                            put(cur, row2, best2);
                            put(arg, row2, best_l2 as u32);
                        }
                        if best2 > l.u {
                            dead = r2;
                            break;
                        }
                        r += 4 * s;
                        continue;
                    }
                    // SAFETY: the caller guarantees the kernel's target features.
                    let (best, best_l) = unsafe { $split(l.p, l.prev, row, start, end) };
                    // SAFETY: as above.
                    unsafe {
                        put(cur, row, best);
                        put(arg, row, best_l as u32);
                    }
                    if best > l.u {
                        dead = r;
                        break;
                    }
                    r += 2 * s;
                }
                if s == 1 {
                    return dead;
                }
                s /= 2;
            }
        }
    };
}

layer_solver!(
    /// The layer loop with the portable split kernel.
    ///
    /// # Safety
    /// None (`unsafe` only to share the macro with the SIMD form).
    unsafe fn solve_layer_portable => best_split_unsafe
);

/// [`best_split`] behind the calling convention the macro uses.
///
/// # Safety
/// None.
#[inline(always)]
unsafe fn best_split_unsafe(
    p: &Prefix,
    prev: &[f64],
    i: usize,
    a: usize,
    b: usize,
) -> (f64, usize) {
    best_split(p, prev, i, a, b)
}

#[cfg(target_arch = "x86_64")]
layer_solver!(
    /// The layer loop with the AVX2 split kernel.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn solve_layer_avx2 => best_split_avx2
);

/// The leftmost `l` in `a..=b` minimising `prev[l] + cost(l, i)`.
///
/// Four independent running minima (merged leftmost-first at the end) keep
/// one compare chain from serialising the divisions.
#[inline]
fn best_split(p: &Prefix, prev: &[f64], i: usize, a: usize, b: usize) -> (f64, usize) {
    let (wi, si, qi) = (p.w[i], p.s[i], p.q[i]);
    let n = b + 1 - a;
    let (ws, ss, qs, ps) = (&p.w[a..=b], &p.s[a..=b], &p.q[a..=b], &prev[a..=b]);
    let value = |t: usize| {
        let s = si - ss[t];
        ps[t] + ((qi - qs[t]) - s * s / (wi - ws[t]))
    };
    let mut lane_best = [f64::INFINITY; 4];
    let mut lane_arg = [usize::MAX; 4];
    let full = n / 4 * 4;
    for t in (0..full).step_by(4) {
        for lane in 0..4 {
            let v = value(t + lane);
            if v < lane_best[lane] {
                lane_best[lane] = v;
                lane_arg[lane] = t + lane;
            }
        }
    }
    let (mut best, mut best_t) = (f64::INFINITY, usize::MAX);
    for lane in 0..4 {
        if lane_best[lane] < best || (lane_best[lane] == best && lane_arg[lane] < best_t) {
            best = lane_best[lane];
            best_t = lane_arg[lane];
        }
    }
    for t in full..n {
        let v = value(t);
        if v < best {
            best = v;
            best_t = t;
        }
    }
    // All candidates infinite (pruned columns): any split will do, the
    // row is marked unreachable by its value.
    (best, a + if best_t == usize::MAX { 0 } else { best_t })
}

/// [`best_split`] four candidates at a time with AVX2: the same operations
/// on each candidate (IEEE sub, mul, div and add are exact-rounded in both)
/// and the same leftmost tie rule, so the result is bit-identical. No
/// branch depends on the data, so the out-of-order core overlaps
/// consecutive rows (most rows have only a handful of candidates).
///
/// # Safety
/// The CPU must support AVX2. `i` must index the prefix arrays, and they
/// and `prev` must hold [`PAD`] readable entries past `b` (their values
/// are masked out).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn best_split_avx2(p: &Prefix, prev: &[f64], i: usize, a: usize, b: usize) -> (f64, usize) {
    use std::arch::x86_64::*;
    let n = b + 1 - a;
    debug_assert!(a + 4 * n.div_ceil(4) <= prev.len().min(p.w.len()));
    let (ws, ss, qs, ps) = (
        p.w.as_ptr().add(a),
        p.s.as_ptr().add(a),
        p.q.as_ptr().add(a),
        prev.as_ptr().add(a),
    );
    let (wi, si, qi) = (
        _mm256_set1_pd(at(&p.w, i)),
        _mm256_set1_pd(at(&p.s, i)),
        _mm256_set1_pd(at(&p.q, i)),
    );
    let inf = _mm256_set1_pd(f64::INFINITY);
    if n <= 4 {
        // One vector (most rows at the fine strides): the candidates'
        // offsets are the lanes, so the leftmost minimum is the lowest set
        // bit of a compare mask, without a second cross-lane reduction.
        //
        // Lanes from `n` on are not candidates. They are masked on the
        // inputs, which are loads ready long before the division: their
        // value becomes +inf and their divisor 1 (no 0/0). Everything after
        // the division is on the row's critical path, and with about ten
        // vector operations per row waiting there the scheduler, not the
        // arithmetic, limits how many rows overlap. Live lanes compute the
        // same operations as the loop below, and none of them is NaN (the
        // candidates' `prev` are written, their divisor is a positive
        // count), so there is nothing else to mask.
        let live = _mm256_castsi256_pd(_mm256_cmpgt_epi64(
            _mm256_set1_epi64x(n as i64),
            _mm256_setr_epi64x(0, 1, 2, 3),
        ));
        let w = _mm256_blendv_pd(
            _mm256_set1_pd(1.0),
            _mm256_sub_pd(wi, _mm256_loadu_pd(ws)),
            live,
        );
        let pv = _mm256_blendv_pd(inf, _mm256_loadu_pd(ps), live);
        let d = _mm256_sub_pd(si, _mm256_loadu_pd(ss));
        let cost = _mm256_sub_pd(
            _mm256_sub_pd(qi, _mm256_loadu_pd(qs)),
            _mm256_div_pd(_mm256_mul_pd(d, d), w),
        );
        let best = _mm256_add_pd(pv, cost);
        let m1 = _mm256_min_pd(best, _mm256_permute_pd::<0b0101>(best));
        let mn = _mm256_min_pd(m1, _mm256_permute2f128_pd::<1>(m1, m1));
        let bv = _mm256_cvtsd_f64(mn);
        // All +inf: every lane matches and the offset is 0, as below.
        let at = _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_EQ_OQ>(best, mn)) as u32;
        return (bv, a + at.trailing_zeros() as usize);
    }
    let chunks = n.div_ceil(4);
    let none = _mm256_set1_pd(f64::MAX);
    let four = _mm256_set1_pd(4.0);
    // Through i32: one conversion instruction (rows are far below 2^31).
    let count = _mm256_set1_pd(n as i32 as f64);
    let mut best = inf;
    // Candidate offsets as exact small integers in f64 lanes; MAX = none.
    let mut best_t = none;
    let mut idx = _mm256_setr_pd(0.0, 1.0, 2.0, 3.0);
    for c in 0..chunks {
        let t = 4 * c;
        let d = _mm256_sub_pd(si, _mm256_loadu_pd(ss.add(t)));
        let cost = _mm256_sub_pd(
            _mm256_sub_pd(qi, _mm256_loadu_pd(qs.add(t))),
            _mm256_div_pd(
                _mm256_mul_pd(d, d),
                _mm256_sub_pd(wi, _mm256_loadu_pd(ws.add(t))),
            ),
        );
        let v = _mm256_add_pd(_mm256_loadu_pd(ps.add(t)), cost);
        // Lanes past the last candidate (padding) never win.
        let v = _mm256_blendv_pd(inf, v, _mm256_cmp_pd::<_CMP_LT_OQ>(idx, count));
        let lt = _mm256_cmp_pd::<_CMP_LT_OQ>(v, best);
        best = _mm256_blendv_pd(best, v, lt);
        best_t = _mm256_blendv_pd(best_t, idx, lt);
        idx = _mm256_add_pd(idx, four);
    }
    // Leftmost minimum across lanes: the minimum value, then the smallest
    // offset among the lanes that hold it.
    let m1 = _mm256_min_pd(best, _mm256_permute_pd::<0b0101>(best));
    let mn = _mm256_min_pd(m1, _mm256_permute2f128_pd::<1>(m1, m1));
    let at = _mm256_blendv_pd(none, best_t, _mm256_cmp_pd::<_CMP_EQ_OQ>(best, mn));
    let t1 = _mm256_min_pd(at, _mm256_permute_pd::<0b0101>(at));
    let tn = _mm256_min_pd(t1, _mm256_permute2f128_pd::<1>(t1, t1));
    let (bv, bt) = (_mm256_cvtsd_f64(mn), _mm256_cvtsd_f64(tn));
    (
        bv,
        a + if bt == f64::MAX {
            0
        } else {
            bt as i32 as usize
        },
    )
}

/// Weighted squared error of assigning every value to its nearest centre.
pub fn sse_nearest(h: &Histogram, centres: &[f64]) -> f64 {
    h.values
        .iter()
        .zip(&h.counts)
        .map(|(&x, &w)| {
            let d = centres
                .iter()
                .map(|c| (x - c) * (x - c))
                .fold(f64::INFINITY, f64::min);
            w * d
        })
        .sum()
}

/// One Lloyd iteration from `centres` (used by tests as the yardstick the
/// exact solution must beat).
pub fn lloyd_step(h: &Histogram, centres: &[f64]) -> Vec<f64> {
    let mut sw = vec![0.0; centres.len()];
    let mut sx = vec![0.0; centres.len()];
    for (&x, &w) in h.values.iter().zip(&h.counts) {
        let (mut best, mut bi) = (f64::INFINITY, 0);
        for (i, c) in centres.iter().enumerate() {
            let d = (x - c) * (x - c);
            if d < best {
                best = d;
                bi = i;
            }
        }
        sw[bi] += w;
        sx[bi] += w * x;
    }
    centres
        .iter()
        .enumerate()
        .map(|(i, &c)| if sw[i] > 0.0 { sx[i] / sw[i] } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The fused builder gives the bits of the two separate ones.
        #[test]
        fn fused_prefix_sums_are_bit_identical(raw in prop::collection::vec((-1000i32..1000, 1u32..50), 1..300)) {
            let xs: Vec<f64> = raw.iter().flat_map(|&(v, c)| std::iter::repeat_n(f64::from(v) / 977.0, c as usize)).collect();
            let h = Histogram::from_values(&xs);
            let (f, b, mean) = Prefix::both(&h);
            let (f0, mean0) = Prefix::new(&h);
            let b0 = Prefix::mirrored(&h);
            prop_assert_eq!(mean.to_bits(), mean0.to_bits());
            for (x, y) in [(&f, &f0), (&b, &b0)] {
                for (u, v) in [(&x.w, &y.w), (&x.s, &y.s), (&x.q, &y.q)] {
                    prop_assert!(u.iter().zip(v.iter()).all(|(a, c)| a.to_bits() == c.to_bits()));
                    prop_assert_eq!(u.len(), v.len());
                }
            }
        }
    }

    /// Exhaustive search over all ways to cut m sorted points into k runs.
    fn brute(h: &Histogram, k: usize) -> f64 {
        let m = h.len();
        fn rec(h: &Histogram, start: usize, k: usize) -> f64 {
            let m = h.len();
            let cost = |a: usize, b: usize| {
                let (mut w, mut s) = (0.0, 0.0);
                for t in a..b {
                    w += h.counts[t];
                    s += h.counts[t] * h.values[t];
                }
                let mu = s / w;
                (a..b)
                    .map(|t| h.counts[t] * (h.values[t] - mu).powi(2))
                    .sum::<f64>()
            };
            if k == 1 {
                return cost(start, m);
            }
            let mut best = f64::INFINITY;
            for e in start + 1..=m - (k - 1) {
                best = best.min(cost(start, e) + rec(h, e, k - 1));
            }
            best
        }
        if m <= k {
            0.0
        } else {
            rec(h, 0, k)
        }
    }

    fn hist_strategy() -> impl Strategy<Value = Histogram> {
        prop::collection::vec((-1000i32..1000, 1u32..20), 1..12).prop_map(|v| {
            let mut xs = Vec::new();
            for (x, c) in v {
                for _ in 0..c {
                    xs.push(f64::from(x) / 100.0);
                }
            }
            Histogram::from_values(&xs)
        })
    }

    proptest! {
        /// Galloping from any guess finds what a binary search finds.
        #[test]
        fn partition_near_equals_partition_point(
            mut xs in prop::collection::vec(-50i32..50, 0..200),
            guess in 0usize..250,
            cut in -60i32..60,
        ) {
            xs.sort_unstable();
            let values: Vec<f64> = xs.iter().map(|&x| f64::from(x)).collect();
            let cut = f64::from(cut);
            prop_assert_eq!(
                partition_near(&values, guess, |v| v < cut),
                values.partition_point(|&v| v < cut)
            );
        }
    }

    proptest! {
        #[test]
        fn exact_against_brute_force(h in hist_strategy(), k in 1usize..6) {
            let c = kmeans_1d(&h, k);
            let b = brute(&h, k);
            prop_assert!((c.sse - b).abs() <= 1e-9 * (1.0 + b), "dp {} brute {}", c.sse, b);
            // The reported SSE is what the centroids achieve on their runs.
            prop_assert!(sse_nearest(&h, &c.centroids) <= c.sse + 1e-9 * (1.0 + c.sse));
            prop_assert!(c.centroids.len() <= k);
            prop_assert!(c.centroids.windows(2).all(|w| w[0] < w[1]));
        }

        #[test]
        fn never_worse_than_lloyd(xs in prop::collection::vec(-3.0f64..3.0, 20..400), k in 2usize..17, seed in 0usize..1000) {
            let h = Histogram::from_values(&xs);
            let c = kmeans_1d(&h, k);
            // Any Lloyd iteration from any start is a local method; the
            // exact optimum can never be beaten by it.
            let kk = k.min(h.len());
            let mut centres: Vec<f64> = (0..kk).map(|i| h.values[(i * 7919 + seed) % h.len()]).collect();
            for _ in 0..5 {
                centres = lloyd_step(&h, &centres);
                prop_assert!(c.sse <= sse_nearest(&h, &centres) + 1e-9 * (1.0 + c.sse));
            }
        }
    }

    /// SSE of the runs given by `starts`, computed directly.
    fn sse_of_starts(h: &Histogram, starts: &[usize]) -> f64 {
        let m = h.len();
        (0..starts.len())
            .map(|c| {
                let (a, b) = (starts[c], starts.get(c + 1).copied().unwrap_or(m));
                let (mut w, mut s) = (0.0, 0.0);
                for t in a..b {
                    w += h.counts[t];
                    s += h.counts[t] * h.values[t];
                }
                (a..b)
                    .map(|t| h.counts[t] * (h.values[t] - s / w).powi(2))
                    .sum::<f64>()
            })
            .sum()
    }

    thread_local! {
        /// (rows the last meeting layer solved, rows it had) on this thread.
        pub(super) static MEET_ROWS: std::cell::Cell<(usize, usize)> =
            const { std::cell::Cell::new((0, 0)) };
    }

    /// The meeting layer skips most of its rows on weight-like data (both
    /// directions at once). Exactness tests cannot see a skip test that
    /// never fires; this one does.
    #[test]
    fn meeting_layer_skips_most_rows() {
        for (n, seed) in [(20480, 1), (184320, 2)] {
            let h = unet_like(n, seed);
            let got = kmeans_1d(&h, 16);
            let (solved, rows) = MEET_ROWS.with(|c| c.get());
            assert_eq!(got, kmeans_1d_with(&h, 16, Kernel::Portable));
            assert!(rows > 1000, "m {} rows {rows}", h.len());
            assert!(
                solved * 5 < rows,
                "the meeting layer solved {solved} of {rows} rows (m {})",
                h.len()
            );
            eprintln!(
                "m {}: meeting layer solved {solved} of {rows} rows",
                h.len()
            );
        }
    }

    /// fp16-rounded values shaped like a conv/linear weight group: normal
    /// with per-row scales and a few large outliers.
    fn unet_like(n: usize, seed: u64) -> Histogram {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let xs: Vec<f64> = (0..n)
            .map(|t| {
                let (u1, u2) = (next().max(1e-300), next());
                let g = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let row_scale = 1.0 + 0.5 * ((t / 64) % 5) as f64 / 5.0;
                let x = if next() < 0.002 { 8.0 * g.signum() } else { g };
                half::f16::from_f64(0.03 * row_scale * x).to_f64()
            })
            .collect();
        Histogram::from_values(&xs)
    }

    #[test]
    fn pruned_search_matches_full_dp_on_weight_like_data() {
        for (n, seed) in [(2000, 1), (5120, 2), (20480, 3)] {
            let h = unet_like(n, seed);
            for k in [2, 3, 4, 7, 16, 64, 256] {
                let c = kmeans_1d(&h, k);
                let full = kmeans_full(&h, k);
                assert!(
                    (c.sse - full).abs() <= 1e-9 * full,
                    "n {n} k {k}: pruned {} full {full}",
                    c.sse
                );
                assert_eq!(c.starts.len(), k);
                assert!(c.starts.windows(2).all(|w| w[0] < w[1]));
                let direct = sse_of_starts(&h, &c.starts);
                assert!((direct - c.sse).abs() <= 1e-9 * full, "n {n} k {k}");
            }
        }
    }

    proptest! {
        #[test]
        fn pruned_search_matches_full_dp_with_ties(xs in prop::collection::vec(-40i32..40, 10..300), k in 1usize..20) {
            // Small integers: many exact ties between splits.
            let xs: Vec<f64> = xs.iter().map(|&x| f64::from(x)).collect();
            let h = Histogram::from_values(&xs);
            let c = kmeans_1d(&h, k);
            let full = kmeans_full(&h, k);
            prop_assert!((c.sse - full).abs() <= 1e-9 * (1.0 + full), "pruned {} full {}", c.sse, full);
            if h.len() > k {
                let direct = sse_of_starts(&h, &c.starts);
                prop_assert!((direct - c.sse).abs() <= 1e-9 * (1.0 + full));
            }
        }
    }

    /// Independent layered solver (SMAWK row minima, no cross-layer
    /// bound) to cross-check the production divide-and-conquer on sizes
    /// brute force cannot reach.
    fn sse_smawk(h: &Histogram, k: usize) -> f64 {
        let m = h.len();
        if m <= k {
            return 0.0;
        }
        let (p, _) = Prefix::new(h);
        let mut prev: Vec<f64> = (0..=m)
            .map(|i| if i == 0 { 0.0 } else { p.cost(0, i) })
            .collect();
        for j in 2..=k {
            let (lo, hi) = (j, m - (k - j));
            let rows: Vec<usize> = (lo..=hi).collect();
            let cols: Vec<usize> = (j - 1..hi).collect();
            let f = |i: usize, l: usize| {
                if l < i {
                    prev[l] + p.cost_raw(l, i)
                } else {
                    f64::INFINITY
                }
            };
            let mut argmin = vec![0usize; m + 1];
            smawk(&rows, &cols, &f, &mut argmin);
            let mut cur = vec![f64::INFINITY; m + 1];
            for &i in &rows {
                cur[i] = f(i, argmin[i]);
            }
            prev = cur;
        }
        prev[m]
    }

    proptest! {
        #[test]
        fn divide_and_conquer_matches_smawk(xs in prop::collection::vec(-500i32..500, 30..600), k in 2usize..24) {
            let h = Histogram::from_values(&xs.iter().map(|&x| f64::from(x) * 0.01).collect::<Vec<_>>());
            let a = kmeans_1d(&h, k).sse;
            let b = sse_smawk(&h, k);
            prop_assert!((a - b).abs() <= 1e-9 * (1.0 + b), "dc {} smawk {}", a, b);
        }
    }

    /// Every kernel this CPU runs gives the same clustering, bit for bit,
    /// as the portable one: weight-like groups of every size class, ties,
    /// and short histograms (candidate ranges shorter than a vector).
    #[test]
    fn simd_kernel_is_bit_identical_to_portable() {
        let best = Kernel::detect();
        if best == Kernel::Portable {
            eprintln!("skipped: this CPU has no SIMD split kernel");
            return;
        }
        let mut hists: Vec<Histogram> = [(300, 1), (2000, 2), (5120, 3), (20480, 4), (60000, 5)]
            .iter()
            .map(|&(n, seed)| unet_like(n, seed))
            .collect();
        // Small integers: exact ties between splits everywhere.
        for n in [20usize, 57, 300, 4000] {
            let xs: Vec<f64> = (0..n).map(|t| ((t * 7919) % 41) as f64 - 20.0).collect();
            hists.push(Histogram::from_values(&xs));
        }
        for h in &hists {
            for k in [2, 3, 4, 5, 8, 16, 64, 256] {
                let a = kmeans_1d_with(h, k, Kernel::Portable);
                let b = kmeans_1d_with(h, k, best);
                assert_eq!(a, b, "m {} k {k}", h.len());
                assert_eq!(a.sse.to_bits(), b.sse.to_bits());
            }
        }
    }

    proptest! {
        /// The split kernels pick the leftmost minimum, ties included: with
        /// flat prefix sums every cluster costs 0, so the value of a split
        /// is `prev[l]`, here small integers full of exact ties.
        #[test]
        fn split_kernels_take_the_leftmost_minimum(
            // 4 stands for +inf: pruned candidates, and rows with nothing else.
            prev in prop::collection::vec(0u8..5, 1..40),
            a in 0usize..40,
            len in 1usize..40,
        ) {
            let m = prev.len() + 1;
            let a = a % prev.len();
            let b = (a + len - 1).min(prev.len() - 1);
            let i = m - 1;
            let p = Prefix {
                w: (0..m + PAD).map(|t| t as f64).collect(),
                s: vec![0.0; m + PAD],
                q: vec![0.0; m + PAD],
            };
            let mut pv: Vec<f64> = prev
                .iter()
                .map(|&x| if x == 4 { f64::INFINITY } else { f64::from(x) })
                .collect();
            pv.resize(m + PAD, f64::INFINITY);
            let want = (a..=b).fold((f64::INFINITY, a), |(bv, bl), l| {
                if pv[l] < bv { (pv[l], l) } else { (bv, bl) }
            });
            prop_assert_eq!(best_split(&p, &pv, i, a, b), want);
            #[cfg(target_arch = "x86_64")]
            if Kernel::detect() == Kernel::Avx2 {
                // SAFETY: the CPU has AVX2; the arrays carry PAD entries.
                prop_assert_eq!(unsafe { best_split_avx2(&p, &pv, i, a, b) }, want);
            }
        }
    }

    #[test]
    fn fewer_values_than_clusters() {
        let h = Histogram::from_values(&[1.0, 1.0, 2.0, -0.0, 0.0]);
        assert_eq!(h.values, vec![0.0, 1.0, 2.0]);
        let c = kmeans_1d(&h, 16);
        assert_eq!(c.centroids, vec![0.0, 1.0, 2.0]);
        assert_eq!(c.sse, 0.0);
    }

    #[test]
    fn two_obvious_clusters() {
        let h = Histogram::from_values(&[0.0, 0.1, 0.2, 10.0, 10.1, 10.2]);
        let c = kmeans_1d(&h, 2);
        assert!((c.centroids[0] - 0.1).abs() < 1e-12 && (c.centroids[1] - 10.1).abs() < 1e-12);
        assert_eq!(c.starts, vec![0, 3]);
    }
}
