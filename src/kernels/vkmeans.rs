//! k-means in `d` dimensions, for vector palettization (`palettize
//! --cluster-dim`): LUT entries are `d`-vectors, and the objective is the
//! squared Euclidean error over whole vectors.
//!
//! Unlike one dimension there is no exact polynomial algorithm, so this is
//! Lloyd's algorithm from k-means++ seeds (Arthur & Vassilvitskii 2007), run
//! to convergence (assignments unchanged) from several seeds, keeping the
//! lowest error. Everything is deterministic: the seeds come from a
//! SplitMix64 stream of `seed` and the restart number, sums run in point
//! order, and ties go to the lower centroid.

/// A clustering of `n` points of dimension `d`.
#[derive(Debug, Clone, PartialEq)]
pub struct VecClustering {
    /// `k · d` coordinates, centroid-major.
    pub centroids: Vec<f64>,
    /// The centroid of each point.
    pub assign: Vec<u32>,
    /// Σ squared distances of the points to their centroids.
    pub sse: f64,
}

/// SplitMix64: a small, portable, well-mixed stream (enough for seeding).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Nearest centroid of `p` (lowest index on ties) and its squared distance.
#[cfg(test)]
fn nearest(p: &[f64], centroids: &[f64], d: usize) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (j, c) in centroids.chunks_exact(d).enumerate() {
        let e = dist2(p, c);
        if e < best.1 {
            best = (j, e);
        }
    }
    best
}

/// k-means++ seeding: the first centre uniformly, each next one with
/// probability proportional to the squared distance to the nearest chosen
/// centre.
fn seed_plus_plus(points: &[f64], d: usize, k: usize, rng: &mut SplitMix64) -> Vec<f64> {
    let n = points.len() / d;
    let first = ((rng.unit() * n as f64) as usize).min(n - 1);
    let mut centroids = points[first * d..(first + 1) * d].to_vec();
    let mut d2: Vec<f64> = points
        .chunks_exact(d)
        .map(|p| dist2(p, &centroids))
        .collect();
    while centroids.len() < k * d {
        let total: f64 = d2.iter().sum();
        let pick = if total > 0.0 {
            let mut r = rng.unit() * total;
            let mut i = 0;
            while i + 1 < n && (r >= d2[i] || d2[i] == 0.0) {
                r -= d2[i];
                i += 1;
            }
            i
        } else {
            // Every point sits on a centre already: duplicate one.
            0
        };
        let c = points[pick * d..(pick + 1) * d].to_vec();
        for (p, e) in points.chunks_exact(d).zip(d2.iter_mut()) {
            *e = e.min(dist2(p, &c));
        }
        centroids.extend(c);
    }
    centroids
}

/// Lloyd's algorithm from `centroids` until no assignment changes (or
/// `max_iter` rounds). An emptied cluster keeps its centroid.
/// The clustering of `points` by `assign`, with its squared error.
fn clustering(points: &[f64], d: usize, centroids: Vec<f64>, assign: Vec<u32>) -> VecClustering {
    let sse = points
        .chunks_exact(d)
        .zip(&assign)
        .map(|(p, &a)| dist2(p, &centroids[a as usize * d..(a as usize + 1) * d]))
        .sum();
    VecClustering {
        centroids,
        assign,
        sse,
    }
}

/// Moves each centroid to the mean of its points (sums in point order; a
/// centroid without points stays) and returns how far each moved.
fn update_centroids(points: &[f64], d: usize, assign: &[u32], centroids: &mut [f64]) -> Vec<f64> {
    let k = centroids.len() / d;
    let mut sum = vec![0f64; k * d];
    let mut count = vec![0usize; k];
    for (p, &a) in points.chunks_exact(d).zip(assign) {
        let a = a as usize;
        count[a] += 1;
        for (s, x) in sum[a * d..(a + 1) * d].iter_mut().zip(p) {
            *s += x;
        }
    }
    let mut moved = vec![0f64; k];
    for j in 0..k {
        if count[j] > 0 {
            let c = &mut centroids[j * d..(j + 1) * d];
            let old = c.to_vec();
            for (t, x) in c.iter_mut().enumerate() {
                *x = sum[j * d + t] / count[j] as f64;
            }
            moved[j] = dist2(&old, c).sqrt();
        }
    }
    moved
}

/// Lloyd's algorithm with Hamerly's bounds (Hamerly 2010): per point an
/// upper bound on the distance to its centroid and a lower bound on the
/// distance to any other; after the centroids move, the bounds move by the
/// distances moved, and a point whose upper bound stays below its lower
/// bound keeps its centroid without computing any distance. The
/// assignments, and so the iterations and the result, are those of plain
/// Lloyd (tested): the skip test carries a relative margin far above the
/// rounding of the bounds, and every other point is assigned exactly as
/// plain Lloyd does it (nearest, lowest index on ties).
fn lloyd(points: &[f64], d: usize, mut centroids: Vec<f64>, max_iter: usize) -> VecClustering {
    const MARGIN: f64 = 1e-9;
    let n = points.len() / d;
    let mut assign = vec![u32::MAX; n];
    let mut upper = vec![f64::INFINITY; n];
    let mut lower = vec![0f64; n];
    let mut first = true;
    for _ in 0..max_iter {
        let mut changed = false;
        for (i, p) in points.chunks_exact(d).enumerate() {
            if !first && upper[i] * (1.0 + MARGIN) + 1e-300 < lower[i] {
                continue;
            }
            // Exact pass for this point: nearest and second nearest.
            let (mut best, mut b1, mut b2) = (0usize, f64::INFINITY, f64::INFINITY);
            for (j, c) in centroids.chunks_exact(d).enumerate() {
                let e = dist2(p, c);
                if e < b1 {
                    b2 = b1;
                    b1 = e;
                    best = j;
                } else if e < b2 {
                    b2 = e;
                }
            }
            upper[i] = b1.sqrt();
            lower[i] = b2.sqrt();
            if assign[i] != best as u32 {
                assign[i] = best as u32;
                changed = true;
            }
        }
        first = false;
        if !changed {
            break;
        }
        let moved = update_centroids(points, d, &assign, &mut centroids);
        let max_moved = moved.iter().copied().fold(0f64, f64::max);
        for (i, &a) in assign.iter().enumerate() {
            upper[i] += moved[a as usize];
            lower[i] -= max_moved;
        }
    }
    clustering(points, d, centroids, assign)
}

#[cfg(test)]
fn lloyd_plain(
    points: &[f64],
    d: usize,
    mut centroids: Vec<f64>,
    max_iter: usize,
) -> VecClustering {
    let n = points.len() / d;
    let mut assign = vec![u32::MAX; n];
    for _ in 0..max_iter {
        let mut changed = false;
        for (i, p) in points.chunks_exact(d).enumerate() {
            let (j, _) = nearest(p, &centroids, d);
            if assign[i] != j as u32 {
                assign[i] = j as u32;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        update_centroids(points, d, &assign, &mut centroids);
    }
    clustering(points, d, centroids, assign)
}

/// Clusters `points` (`n · d` coordinates, point-major) into at most `k`
/// centroids: `restarts` runs of k-means++ seeding + Lloyd, the lowest
/// error kept (the first on ties). Fewer points than `k` give one centroid
/// per point.
pub fn kmeans_vectors(
    points: &[f64],
    d: usize,
    k: usize,
    seed: u64,
    restarts: usize,
) -> VecClustering {
    assert!(
        d > 0 && points.len().is_multiple_of(d),
        "points are d-vectors"
    );
    let n = points.len() / d;
    if n == 0 {
        return VecClustering {
            centroids: vec![],
            assign: vec![],
            sse: 0.0,
        };
    }
    let k = k.min(n).max(1);
    let mut best: Option<VecClustering> = None;
    for r in 0..restarts.max(1) {
        let mut rng = SplitMix64(seed ^ (r as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        let c = lloyd(points, d, seed_plus_plus(points, d, k, &mut rng), 300);
        if best.as_ref().is_none_or(|b| c.sse < b.sse) {
            best = Some(c);
        }
    }
    best.expect("at least one restart")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud(n: usize, d: usize, seed: u64) -> Vec<f64> {
        let mut r = SplitMix64(seed);
        (0..n * d).map(|_| r.unit() * 2.0 - 1.0).collect()
    }

    /// Well-separated blobs are found exactly, whatever the seed.
    #[test]
    fn separated_blobs_are_recovered() {
        let centres = [[-5.0, -5.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]];
        let noise = cloud(400, 2, 1);
        let pts: Vec<f64> = noise
            .chunks_exact(2)
            .enumerate()
            .flat_map(|(i, e)| {
                let c = centres[i % 4];
                [c[0] + 0.1 * e[0], c[1] + 0.1 * e[1]]
            })
            .collect();
        for seed in 0..5 {
            let c = kmeans_vectors(&pts, 2, 4, seed, 3);
            for (i, &a) in c.assign.iter().enumerate() {
                assert_eq!(a, c.assign[i % 4], "point {i} with its blob");
            }
            assert!(c.sse < 400.0 * 2.0 * 0.01, "sse {}", c.sse);
        }
    }

    /// Lloyd's invariants at convergence: each point is at its nearest
    /// centroid, each used centroid is the mean of its points, and the
    /// reported error is the sum; more restarts never do worse; the same
    /// seed gives the same result.
    #[test]
    fn converged_and_deterministic() {
        for (n, d, k) in [(300, 2, 4), (500, 4, 16), (7, 3, 16), (1000, 1, 8)] {
            let pts = cloud(n, d, n as u64);
            let c = kmeans_vectors(&pts, d, k, 7, 4);
            assert_eq!(c, kmeans_vectors(&pts, d, k, 7, 4));
            let kk = c.centroids.len() / d;
            assert_eq!(kk, k.min(n));
            let mut sse = 0.0;
            let mut sum = vec![0f64; kk * d];
            let mut count = vec![0usize; kk];
            for (p, &a) in pts.chunks_exact(d).zip(&c.assign) {
                let (j, e) = nearest(p, &c.centroids, d);
                assert_eq!(j as u32, a);
                sse += e;
                count[j] += 1;
                for t in 0..d {
                    sum[j * d + t] += p[t];
                }
            }
            assert!((sse - c.sse).abs() <= 1e-9 * (1.0 + sse));
            for j in 0..kk {
                if count[j] > 0 {
                    for t in 0..d {
                        let m = sum[j * d + t] / count[j] as f64;
                        assert!((m - c.centroids[j * d + t]).abs() < 1e-9);
                    }
                }
            }
            let one = kmeans_vectors(&pts, d, k, 7, 1);
            assert!(c.sse <= one.sse);
        }
    }

    /// Hamerly's bounds skip distance computations but not decisions: from
    /// the same seeds the accelerated and the plain Lloyd give the same
    /// assignments, centroids and error, on clouds, on clustered points,
    /// on points with many duplicates and on grids full of ties.
    #[test]
    fn bounds_give_plain_lloyd() {
        let mut sets: Vec<(Vec<f64>, usize)> = vec![
            (cloud(2000, 2, 3), 2),
            (cloud(1500, 4, 5), 4),
            (cloud(800, 1, 9), 1),
        ];
        // Integer grid (exact ties between centroids and points).
        sets.push((
            (0..900)
                .flat_map(|i| [f64::from(i % 30), f64::from(i / 30)])
                .collect(),
            2,
        ));
        // Heavy duplicates: 10 distinct points repeated.
        let base = cloud(10, 2, 11);
        sets.push((
            (0..1000)
                .flat_map(|i| base[(i % 10) * 2..(i % 10) * 2 + 2].to_vec())
                .collect(),
            2,
        ));
        for (pts, d) in &sets {
            for k in [2usize, 4, 16] {
                for seed in 0..3u64 {
                    let mut rng = SplitMix64(seed);
                    let init = seed_plus_plus(pts, *d, k.min(pts.len() / d), &mut rng);
                    let a = lloyd(pts, *d, init.clone(), 300);
                    let b = lloyd_plain(pts, *d, init, 300);
                    assert_eq!(a.assign, b.assign, "d {d} k {k} seed {seed}");
                    assert_eq!(a.centroids, b.centroids, "d {d} k {k} seed {seed}");
                    assert_eq!(a.sse.to_bits(), b.sse.to_bits());
                }
            }
        }
    }
}
