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
//!
//! Layout helpers describe a tensor as `(outer, axis length, inner)` around
//! the pruned axis, row-major.

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
    debug_assert!(m > 0 && n <= m && len % m == 0);
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

    #[test]
    fn counts_round_to_nearest() {
        assert_eq!(prune_count(4608, 0.4), 1843);
        assert_eq!(prune_count(10, 0.25), 3); // 2.5 rounds away from zero
        assert_eq!(prune_count(10, 1.0), 10);
        assert_eq!(prune_count(10, 0.0), 0);
    }
}
