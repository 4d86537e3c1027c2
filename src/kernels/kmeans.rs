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
//! conquer in O(m log m); the split of row `i` is also bounded below by
//! the previous layer's split of the same row. Ties pick the smallest `l`
//! (leftmost split), which makes the result deterministic. The tests check
//! it against brute force and against an independent SMAWK solver.
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

/// Prefix sums over the (centred) histogram for O(1) cluster costs.
struct Prefix {
    w: Vec<f64>,
    s: Vec<f64>,
    q: Vec<f64>,
}

impl Prefix {
    fn new(h: &Histogram) -> (Self, f64) {
        let total: f64 = h.counts.iter().sum();
        let mean = h
            .values
            .iter()
            .zip(&h.counts)
            .map(|(x, w)| x * w)
            .sum::<f64>()
            / total.max(1.0);
        let m = h.len();
        let (mut w, mut s, mut q) = (
            Vec::with_capacity(m + 1),
            Vec::with_capacity(m + 1),
            Vec::with_capacity(m + 1),
        );
        w.push(0.0);
        s.push(0.0);
        q.push(0.0);
        let (mut aw, mut as_, mut aq) = (0.0, 0.0, 0.0);
        for (&x, &c) in h.values.iter().zip(&h.counts) {
            // Centring keeps Σwx² - (Σwx)²/Σw from cancelling badly.
            let d = x - mean;
            aw += c;
            as_ += c * d;
            aq += c * d * d;
            w.push(aw);
            s.push(as_);
            q.push(aq);
        }
        (Self { w, s, q }, mean)
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
    let (p, _) = Prefix::new(h);
    // prev[i] = D[j-1][i]; cur[i] = D[j][i] for i in 1..=m.
    let mut prev: Vec<f64> = (0..=m)
        .map(|i| if i == 0 { 0.0 } else { p.cost(0, i) })
        .collect();
    let mut cur = vec![f64::INFINITY; m + 1];
    // arg[j][i] = split l for the j-th layer (j >= 1), to backtrack.
    let mut buf = Box::new([0.0f64; CHUNK]);
    let mut arg: Vec<Vec<u32>> = Vec::with_capacity(k);
    arg.push(vec![0; m + 1]);
    for j in 2..=k {
        let mut a = vec![0u32; m + 1];
        // Rows i in [j, m - (k - j)] are the only ones later layers need;
        // the last layer needs row m alone.
        let lo = if j == k { m } else { j };
        let hi = m - (k - j);
        for v in cur.iter_mut() {
            *v = f64::INFINITY;
        }
        // Divide and conquer over rows, with the split bounded below by
        // the previous layer's split for the same row: allowing one more
        // cluster never moves the last cluster's start to the left.
        solve_layer(
            &p,
            &prev,
            &arg[j - 2],
            &mut cur,
            &mut a,
            lo,
            hi,
            j - 1,
            hi - 1,
            &mut buf,
        );
        arg.push(a);
        std::mem::swap(&mut prev, &mut cur);
    }
    // Backtrack the split points.
    let mut starts = vec![0usize; k];
    let mut i = m;
    for j in (1..k).rev() {
        let l = arg[j][i] as usize;
        starts[j] = l;
        i = l;
    }
    let mut centroids = Vec::with_capacity(k);
    for c in 0..k {
        let a = starts[c];
        let b = if c + 1 < k { starts[c + 1] } else { m };
        let (mut sw, mut sx) = (0.0, 0.0);
        for t in a..b {
            sw += h.counts[t];
            sx += h.counts[t] * h.values[t];
        }
        centroids.push(sx / sw);
    }
    Clustering {
        centroids,
        starts,
        sse: prev[m],
    }
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

/// Fills `cur[i]` for `i` in `lo..=hi` with the best split in
/// `opt_lo..=min(opt_hi, i-1)`, recursing on the monotone split bound.
#[allow(clippy::too_many_arguments)]
fn solve_layer(
    p: &Prefix,
    prev: &[f64],
    prev_arg: &[u32],
    cur: &mut [f64],
    arg: &mut [u32],
    lo: usize,
    hi: usize,
    opt_lo: usize,
    opt_hi: usize,
    buf: &mut [f64; CHUNK],
) {
    if lo > hi {
        return;
    }
    let mid = (lo + hi) / 2;
    let end = opt_hi.min(mid - 1);
    let start = opt_lo.max(prev_arg[mid] as usize).min(end);
    let (best, best_l) = best_split(p, prev, mid, start, end, buf);
    cur[mid] = best;
    arg[mid] = best_l as u32;
    if mid > lo {
        solve_layer(
            p,
            prev,
            prev_arg,
            cur,
            arg,
            lo,
            mid - 1,
            opt_lo,
            best_l,
            buf,
        );
    }
    solve_layer(
        p,
        prev,
        prev_arg,
        cur,
        arg,
        mid + 1,
        hi,
        best_l,
        opt_hi,
        buf,
    );
}

/// Scan chunk of [`best_split`]; the buffer is allocated once per k-means
/// (zeroing it per call was a measurable share of the run time).
const CHUNK: usize = 256;

/// The leftmost `l` in `a..=b` minimising `prev[l] + cost(l, i)`.
///
/// Written as straight-line passes over slices so the compiler vectorises
/// the cost evaluation (the division dominates); the arg-min is a second,
/// cheap pass.
#[inline]
fn best_split(
    p: &Prefix,
    prev: &[f64],
    i: usize,
    a: usize,
    b: usize,
    buf: &mut [f64; CHUNK],
) -> (f64, usize) {
    let (wi, si, qi) = (p.w[i], p.s[i], p.q[i]);
    let n = b + 1 - a;
    let (ws, ss, qs, ps) = (&p.w[a..=b], &p.s[a..=b], &p.q[a..=b], &prev[a..=b]);
    if n < 32 {
        // Most divide-and-conquer nodes scan only a few columns: one
        // plain pass is cheaper than the vectorised two-pass form.
        let mut best = f64::INFINITY;
        let mut best_t = 0;
        for t in 0..n {
            let s = si - ss[t];
            let v = ps[t] + ((qi - qs[t]) - s * s / (wi - ws[t]));
            if v < best {
                best = v;
                best_t = t;
            }
        }
        return (best, a + best_t);
    }
    let mut best = f64::INFINITY;
    let mut best_l = a;
    let mut start = 0;
    while start < n {
        let len = (n - start).min(CHUNK);
        let out = &mut buf[..len];
        let (w2, s2, q2, p2) = (
            &ws[start..start + len],
            &ss[start..start + len],
            &qs[start..start + len],
            &ps[start..start + len],
        );
        for t in 0..len {
            let s = si - s2[t];
            out[t] = p2[t] + ((qi - q2[t]) - s * s / (wi - w2[t]));
        }
        let m = out.iter().copied().fold(f64::INFINITY, f64::min);
        if m < best {
            best = m;
            best_l = a + start + out.iter().position(|&v| v == m).unwrap_or(0);
        }
        start += len;
    }
    (best, best_l)
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
