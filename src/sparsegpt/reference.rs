//! Test-only reference: the spec written out literally and naively, in f64,
//! with none of the kernel's shortcuts (no blocking of the updates, the
//! references' three-step `U`, explicit im2col), plus seeded test data.

use super::hessian::ConvGeometry;
use super::prune::{MaskRule, Pattern, PruneParams};

/// SplitMix64 with Box–Muller normals: portable and seeded.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal() as f32).collect()
    }
}

/// A random weight `rows × cols` and strongly correlated inputs `n × cols`
/// with per-channel scales and a few outlier channels (like real
/// activations, and like the oracle's `make_correlated`).
pub fn correlated_layer(rows: usize, cols: usize, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| (rng.normal() / (cols as f64).sqrt()) as f32)
        .collect();
    let rank = (cols / 4).max(1);
    let a: Vec<f64> = (0..rank * cols).map(|_| rng.normal()).collect();
    let scale: Vec<f64> = (0..cols)
        .map(|j| (rng.normal() * 0.5).exp() * if j % 53 == 7 { 10.0 } else { 1.0 })
        .collect();
    let mut x = vec![0.0f32; n * cols];
    for t in 0..n {
        let z: Vec<f64> = (0..rank).map(|_| rng.normal()).collect();
        for j in 0..cols {
            let s: f64 = (0..rank).map(|q| z[q] * a[q * cols + j]).sum();
            x[t * cols + j] = ((s + 0.1 * rng.normal()) * scale[j]) as f32;
        }
    }
    (w, x)
}

/// `(2/nsamples) Σ x xᵀ` over the rows of `x` (`n × c`), full, f64.
pub fn naive_hessian(x: &[f32], c: usize, nsamples: u64) -> Vec<f64> {
    let mut h = vec![0.0f64; c * c];
    for v in x.chunks(c) {
        for i in 0..c {
            for j in 0..c {
                h[i + j * c] += f64::from(v[i]) * f64::from(v[j]);
            }
        }
    }
    let s = 2.0 / nsamples as f64;
    h.iter_mut().for_each(|v| *v *= s);
    h
}

/// im2col written from the definition: pad, then read every patch.
pub fn naive_conv_vectors(
    x: &[f32],
    shape: [usize; 4],
    g: &ConvGeometry,
    group: usize,
) -> Vec<Vec<f64>> {
    let [n, ch, h, w] = shape;
    let [pt, pb, pl, pr] = g.padding;
    let (hp, wp) = (h + pt + pb, w + pl + pr);
    let padded = |img: usize, c: usize, i: usize, j: usize| -> f64 {
        if i < pt || i >= pt + h || j < pl || j >= pl + w {
            0.0
        } else {
            f64::from(x[((img * ch + c) * h + (i - pt)) * w + (j - pl)])
        }
    };
    let [kh, kw] = g.kernel;
    let ho = (hp - g.dilation[0] * (kh - 1) - 1) / g.stride[0] + 1;
    let wo = (wp - g.dilation[1] * (kw - 1) - 1) / g.stride[1] + 1;
    let cg = ch / g.groups;
    let mut out = Vec::new();
    for img in 0..n {
        for oh in 0..ho {
            for ow in 0..wo {
                let mut v = Vec::new();
                for ci in 0..cg {
                    for i in 0..kh {
                        for j in 0..kw {
                            v.push(padded(
                                img,
                                group * cg + ci,
                                oh * g.stride[0] + i * g.dilation[0],
                                ow * g.stride[1] + j * g.dilation[1],
                            ));
                        }
                    }
                }
                out.push(v);
            }
        }
    }
    out
}

/// Lower Cholesky factor of the row-major `n × n` matrix `a`.
fn cholesky(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for j in 0..n {
        let s: f64 = (0..j).map(|k| l[j * n + k] * l[j * n + k]).sum();
        let d = a[j * n + j] - s;
        assert!(d > 0.0, "reference cholesky: not positive definite at {j}");
        l[j * n + j] = d.sqrt();
        for i in j + 1..n {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
        }
    }
    l
}

/// The references' `U`: `L = chol(H_d)`, `H_d⁻¹ = L⁻ᵀ L⁻¹`, `U = chol(H_d⁻¹)ᵀ`.
pub fn three_step_u(hd: &[f64], n: usize) -> Vec<f64> {
    let l = cholesky(hd, n);
    // Linv: forward substitution column by column.
    let mut li = vec![0.0; n * n];
    for j in 0..n {
        li[j * n + j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let s: f64 = (j..i).map(|k| l[i * n + k] * li[k * n + j]).sum();
            li[i * n + j] = -s / l[i * n + i];
        }
    }
    let mut inv = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            inv[i * n + j] = (i.max(j)..n).map(|k| li[k * n + i] * li[k * n + j]).sum();
        }
    }
    let lu = cholesky(&inv, n);
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            u[i * n + j] = lu[j * n + i];
        }
    }
    u
}

/// The result of [`naive_prune`].
pub struct NaiveOutcome {
    pub weights: Vec<f64>,
    pub mask: Vec<bool>,
    pub loss: f64,
    pub damp: f64,
}

/// SparseGPT exactly as §4–§9 state it, column by column, with every
/// update applied to all later columns at once (no lazy batching).
pub fn naive_prune(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    p: &PruneParams,
) -> NaiveOutcome {
    let (r, c) = (rows, cols);
    let mut h = h.to_vec();
    let mut wk: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    for j in 0..c {
        if h[j * c + j] == 0.0 {
            h[j * c + j] = 1.0;
            for row in 0..r {
                wk[row * c + j] = 0.0;
            }
        }
    }
    let damp = p.percdamp * (0..c).map(|j| h[j * c + j]).sum::<f64>() / c as f64;
    for j in 0..c {
        h[j * c + j] += damp;
    }
    let u = three_step_u(&h, c);
    let mut mask = vec![false; r * c];
    let mut loss = 0.0;
    for b0 in (0..c).step_by(p.sweep_block) {
        let b1 = (b0 + p.sweep_block).min(c);
        if let Pattern::Unstructured { sparsity, rule } = p.pattern {
            let mut sc = Vec::new();
            for row in 0..r {
                for j in b0..b1 {
                    let x = wk[row * c + j];
                    sc.push((x * x / (u[j * c + j] * u[j * c + j]), row, j));
                }
            }
            let kcut = match rule {
                // The block's share of round(s·numel) (cumulative rounding).
                MaskRule::ExactTotal => {
                    ((r * b1) as f64 * sparsity).round() as usize
                        - ((r * b0) as f64 * sparsity).round() as usize
                }
                _ => (sc.len() as f64 * sparsity) as usize,
            };
            match rule {
                MaskRule::Reference => {
                    let mut s: Vec<f64> = sc.iter().map(|t| t.0).collect();
                    s.sort_by(f64::total_cmp);
                    let th = s[kcut];
                    for &(v, row, j) in &sc {
                        mask[row * c + j] = v <= th;
                    }
                }
                MaskRule::Exact | MaskRule::ExactTotal => {
                    // Stable sort of the row-major list keeps position order on ties.
                    let mut s = sc.clone();
                    s.sort_by(|a, b| a.0.total_cmp(&b.0));
                    for &(_, row, j) in &s[..kcut] {
                        mask[row * c + j] = true;
                    }
                }
            }
        }
        for i in b0..b1 {
            if let Pattern::NOfM { n, m } = p.pattern {
                if (i - b0) % m == 0 {
                    for row in 0..r {
                        let mut g: Vec<(f64, usize)> = (i..i + m)
                            .map(|j| {
                                let x = wk[row * c + j];
                                (x * x / (u[j * c + j] * u[j * c + j]), j)
                            })
                            .collect();
                        g.sort_by(|a, b| a.0.total_cmp(&b.0));
                        for &(_, j) in &g[..n] {
                            mask[row * c + j] = true;
                        }
                    }
                }
            }
            let d = u[i * c + i];
            for row in 0..r {
                let wv = wk[row * c + i];
                let q = if mask[row * c + i] { 0.0 } else { wv };
                loss += 0.5 * (wv - q) * (wv - q) / (d * d);
                let e = (wv - q) / d;
                for j in i..c {
                    wk[row * c + j] -= e * u[i * c + j];
                }
                wk[row * c + i] = q;
            }
        }
    }
    NaiveOutcome {
        weights: wk,
        mask,
        loss,
        damp,
    }
}
