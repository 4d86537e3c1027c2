//! Pruning masks: which weights to zero. `true` = keep.
//!
//! - Unstructured magnitude: exactly `round(sparsity · n)` weights are
//!   pruned, the smallest by |w|; ties are broken by position (the earlier
//!   element is pruned first), so the count is exact and the mask
//!   deterministic. (coremltools instead prunes everything `<=` a numpy
//!   percentile, which overshoots on ties.)
//! - n:m: in every run of `m` consecutive elements along the pruned axis,
//!   exactly `n` are pruned (coremltools' `n_m_ratio` meaning: n of every m
//!   are zeroed), the smallest by |w|, ties by position.
//! - Blocks: runs of `block` consecutive elements along the pruned axis (at
//!   a fixed position on every other axis; the last run of an axis that is
//!   not a multiple of `block` is shorter) are pruned whole. Each block is
//!   scored by its L2 norm, as in coremltools' `OpMagnitudePrunerConfig`
//!   with `block_size` (whose zero padding adds nothing to a norm), and
//!   exactly `round(sparsity · blocks)` blocks are pruned, smallest norm
//!   first, ties by position. On an axis divisible by `block` that is
//!   `block · round(sparsity · numel / block)` zeros. (coremltools prunes
//!   every element whose block norm is `<=` a numpy percentile of the
//!   element-wise norm map, which can overshoot and split nothing finer.)
//!
//! Layout helpers describe a tensor as `(outer, axis length, inner)` around
//! the pruned axis, row-major.

use half::f16;
use std::cmp::Ordering;

/// Order of pruning: smaller magnitude first, then earlier position.
#[inline]
fn prune_order(a: (f32, usize), b: (f32, usize)) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// Number of weights unstructured pruning removes from `n` at `sparsity`.
pub fn prune_count(n: usize, sparsity: f64) -> usize {
    ((sparsity * n as f64).round() as usize).min(n)
}

/// Keep-mask pruning exactly [`prune_count`] elements of smallest |w|.
/// `magnitudes` must be non-negative and finite (callers pass |w|).
pub fn magnitude_mask(magnitudes: &[f32], sparsity: f64) -> Vec<bool> {
    let n = magnitudes.len();
    let k = prune_count(n, sparsity);
    let mut keep = vec![true; n];
    if k == 0 {
        return keep;
    }
    let mut order: Vec<(f32, usize)> = magnitudes.iter().copied().zip(0..).collect();
    if k < n {
        order.select_nth_unstable_by(k - 1, |a, b| prune_order(*a, *b));
    }
    for &(_, i) in &order[..k] {
        keep[i] = false;
    }
    keep
}

/// [`magnitude_mask`] for fp16 weights without sorting: the magnitude of a
/// finite fp16 value is ordered like its bit pattern without the sign bit,
/// so a histogram of those 15-bit keys gives the threshold key, and one
/// pass prunes every element below it plus the earliest elements at it.
/// O(n) time and 256 KiB of counters, instead of a 16-byte (|w|, position)
/// pair per element. `values` must be finite.
pub fn magnitude_mask_f16(values: &[f16], sparsity: f64) -> Vec<bool> {
    let n = values.len();
    let k = prune_count(n, sparsity);
    if k == 0 {
        return vec![true; n];
    }
    let key = |v: &f16| (v.to_bits() & 0x7fff) as usize;
    let mut counts = vec![0usize; 1 << 15];
    for v in values {
        counts[key(v)] += 1;
    }
    // The smallest threshold key whose cumulative count reaches k.
    let (mut below, mut t) = (0usize, 0usize);
    while below + counts[t] < k {
        below += counts[t];
        t += 1;
    }
    let mut at_threshold = k - below;
    values
        .iter()
        .map(|v| {
            let c = key(v);
            if c < t {
                false
            } else if c == t && at_threshold > 0 {
                at_threshold -= 1;
                false
            } else {
                true
            }
        })
        .collect()
}

/// Keep-mask for n:m sparsity along the middle axis of an
/// `(outer, len, inner)` layout: each run of `m` consecutive positions
/// along that axis loses its `n` smallest. `len % m` must be 0.
pub fn nm_mask(
    magnitudes: &[f32],
    outer: usize,
    len: usize,
    inner: usize,
    n: usize,
    m: usize,
) -> Vec<bool> {
    debug_assert_eq!(magnitudes.len(), outer * len * inner);
    debug_assert!(m > 0 && n <= m && len.is_multiple_of(m));
    let mut keep = vec![true; magnitudes.len()];
    let mut run: Vec<(f32, usize)> = Vec::with_capacity(m);
    for o in 0..outer {
        for r in 0..len / m {
            for i in 0..inner {
                run.clear();
                for t in 0..m {
                    let p = (o * len + r * m + t) * inner + i;
                    run.push((magnitudes[p], p));
                }
                run.sort_unstable_by(|a, b| prune_order(*a, *b));
                for &(_, p) in &run[..n] {
                    keep[p] = false;
                }
            }
        }
    }
    keep
}

/// Keep-mask pruning whole blocks along the middle axis of an
/// `(outer, len, inner)` layout: block `b` at `(o, i)` holds positions
/// `(o, b·block .. min((b+1)·block, len), i)`. Exactly
/// `round(sparsity · blocks)` blocks go, smallest L2 norm first, ties by
/// position. `values` must be finite; `block >= 1`.
pub fn block_mask(
    values: &[f32],
    outer: usize,
    len: usize,
    inner: usize,
    block: usize,
    sparsity: f64,
) -> Vec<bool> {
    debug_assert_eq!(values.len(), outer * len * inner);
    debug_assert!(block > 0);
    let per_axis = len.div_ceil(block);
    let nblocks = outer * per_axis * inner;
    // Blocks in position order: (o, b, i) lexicographic is the row-major
    // order of their first elements.
    let mut scores: Vec<(f64, usize)> = Vec::with_capacity(nblocks);
    for o in 0..outer {
        for b in 0..per_axis {
            for i in 0..inner {
                let mut s = 0.0f64;
                for t in b * block..((b + 1) * block).min(len) {
                    let v = f64::from(values[(o * len + t) * inner + i]);
                    s += v * v;
                }
                // The squared norm orders blocks as the norm does.
                scores.push((s, scores.len()));
            }
        }
    }
    let k = prune_count(nblocks, sparsity);
    let mut keep = vec![true; values.len()];
    if k == 0 {
        return keep;
    }
    if k < nblocks {
        scores.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    }
    for &(_, id) in &scores[..k] {
        let i = id % inner;
        let ob = id / inner;
        let (o, b) = (ob / per_axis, ob % per_axis);
        for t in b * block..((b + 1) * block).min(len) {
            keep[(o * len + t) * inner + i] = false;
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn exact_count_and_smallest(v in prop::collection::vec(0u8..20, 1..400), s in 0.0f64..1.0) {
            // Many ties on purpose (values from 0..20).
            let mags: Vec<f32> = v.iter().map(|&x| f32::from(x)).collect();
            let keep = magnitude_mask(&mags, s);
            let pruned = keep.iter().filter(|k| !**k).count();
            prop_assert_eq!(pruned, prune_count(mags.len(), s));
            // Every pruned weight is <= every kept one.
            let max_pruned = mags.iter().zip(&keep).filter(|(_, k)| !**k).map(|(m, _)| *m).fold(f32::MIN, f32::max);
            let min_kept = mags.iter().zip(&keep).filter(|(_, k)| **k).map(|(m, _)| *m).fold(f32::MAX, f32::min);
            prop_assert!(max_pruned <= min_kept);
            // Ties: among equal magnitudes, earlier ones go first.
            for (i, j) in (0..mags.len()).flat_map(|i| (i + 1..mags.len()).map(move |j| (i, j))) {
                if mags[i] == mags[j] && keep[i] && !keep[j] {
                    prop_assert!(false, "tie broken out of order at {} {}", i, j);
                }
            }
        }

        #[test]
        fn n_of_every_m(outer in 1usize..4, runs in 1usize..6, inner in 1usize..4,
                        (n, m) in prop::sample::select(vec![(1usize, 2usize), (2, 4), (1, 4), (4, 8), (3, 4)]),
                        seed in any::<u64>()) {
            let len = runs * m;
            let total = outer * len * inner;
            let mut x = seed | 1;
            let mags: Vec<f32> = (0..total).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x % 7) as f32 }).collect();
            let keep = nm_mask(&mags, outer, len, inner, n, m);
            for o in 0..outer {
                for r in 0..runs {
                    for i in 0..inner {
                        let pos: Vec<usize> = (0..m).map(|t| (o * len + r * m + t) * inner + i).collect();
                        let zeros = pos.iter().filter(|&&p| !keep[p]).count();
                        prop_assert_eq!(zeros, n);
                        let max_pruned = pos.iter().filter(|&&p| !keep[p]).map(|&p| mags[p]).fold(f32::MIN, f32::max);
                        let min_kept = pos.iter().filter(|&&p| keep[p]).map(|&p| mags[p]).fold(f32::MAX, f32::min);
                        prop_assert!(max_pruned <= min_kept);
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn whole_blocks_by_norm(outer in 1usize..4, len in 1usize..13, inner in 1usize..4,
                                block in 1usize..5, s in 0.0f64..1.0, seed in any::<u64>()) {
            let total = outer * len * inner;
            let mut x = seed | 1;
            // Few distinct values, so that ties happen.
            let vals: Vec<f32> = (0..total).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x % 5) as f32 - 2.0 }).collect();
            let keep = block_mask(&vals, outer, len, inner, block, s);
            let per_axis = len.div_ceil(block);
            let mut pruned_blocks = 0;
            let mut pruned_norms = Vec::new();
            let mut kept_norms = Vec::new();
            for o in 0..outer {
                for b in 0..per_axis {
                    for i in 0..inner {
                        let pos: Vec<usize> = (b * block..((b + 1) * block).min(len)).map(|t| (o * len + t) * inner + i).collect();
                        let z = pos.iter().filter(|&&p| !keep[p]).count();
                        // A block is pruned whole or not at all.
                        prop_assert!(z == 0 || z == pos.len());
                        let norm: f64 = pos.iter().map(|&p| f64::from(vals[p]).powi(2)).sum();
                        if z > 0 { pruned_blocks += 1; pruned_norms.push(norm) } else { kept_norms.push(norm) }
                    }
                }
            }
            prop_assert_eq!(pruned_blocks, prune_count(outer * per_axis * inner, s));
            let mx = pruned_norms.iter().copied().fold(f64::MIN, f64::max);
            let mn = kept_norms.iter().copied().fold(f64::MAX, f64::min);
            prop_assert!(mx <= mn);
        }
    }

    proptest! {
        #[test]
        fn f16_histogram_path_equals_sorting(raw in prop::collection::vec(any::<u16>(), 1..600), s in 0.0f64..1.0) {
            // Any finite fp16 bit pattern, both zeros, many ties.
            let vals: Vec<f16> = raw.iter().map(|&b| {
                let v = f16::from_bits((b % 24) | (b & 0x8000) | if b & 0x4000 != 0 { 0x3c00 } else { 0 });
                if v.is_finite() { v } else { f16::ZERO }
            }).collect();
            let mags: Vec<f32> = vals.iter().map(|v| v.to_f32().abs()).collect();
            prop_assert_eq!(magnitude_mask_f16(&vals, s), magnitude_mask(&mags, s));
        }
    }

    #[test]
    fn block_example_of_coremltools_docs() {
        // The 4 x 2 example of OpMagnitudePrunerConfig (block_size 2 along
        // axis 0, 50%): the blocks with norms 6.08 and 3.61 go.
        let w = [1.0f32, 3.0, -6.0, -7.0, 0.0, 3.0, -9.0, 2.0];
        // Axis 0 as the middle axis: outer 1, len 4, inner 2.
        let keep = block_mask(&w, 1, 4, 2, 2, 0.5);
        let pruned: Vec<f32> = w
            .iter()
            .zip(&keep)
            .map(|(v, k)| if *k { *v } else { 0.0 })
            .collect();
        assert_eq!(pruned, [0.0, 3.0, 0.0, -7.0, 0.0, 0.0, -9.0, 0.0]);
    }

    #[test]
    fn counts_round_to_nearest() {
        assert_eq!(prune_count(4608, 0.4), 1843);
        assert_eq!(prune_count(10, 0.25), 3); // 2.5 rounds away from zero
        assert_eq!(prune_count(10, 1.0), 10);
        assert_eq!(prune_count(10, 0.0), 0);
    }
}
