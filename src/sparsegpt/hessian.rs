//! Hessian accumulation from a layer's input activations (§2, §3).
//!
//! For a layer whose output for one input vector `x ∈ R^c` is `W x`, the
//! Hessian of the reconstruction error is `H = (2/N) Σ x xᵀ` over every
//! input vector seen, with `N` the number of *samples* (the leading
//! dimension of each batch: images or sequences, not vectors). The
//! references keep a running average (`H ← H·n/(n+b)`, then add the batch
//! scaled by `2/(n+b)`); in exact arithmetic that equals the closed form,
//! which is what we compute: `G = Σ x xᵀ` in f64, scaled once by `2/N`
//! when the matrix is taken out. The spec sanctions this (§3); it is more
//! accurate, and it lets vectors of many small batches be buffered into one
//! large rank-k update (a 1280-channel conv at 8×8 gives only 64 vectors
//! per image, far too few for an efficient update on its own).
//!
//! Vectors are buffered in a `c × k` f32 panel (64 MiB of f64 products,
//! `k` ≤ 2048); a full panel is folded into the lower triangle of `G`,
//! tile by tile: each `256 × 256` tile of `X Xᵀ` on or below the diagonal
//! is one GEMM over the panel, accumulated into `G`. That is `c²k/2`
//! multiply-adds per panel, parallel over tiles. By default the products
//! are f64 (§3 [rec]); [`Precision::F32Tiles`] computes each tile in f32
//! and adds it into the f64 total, about twice as fast, but on a
//! rank-deficient Hessian (fewer vectors than columns, usual for wide
//! convs) its rounding moved the oracle check of a real fixture conv from
//! 100 % to 99.92 % mask agreement and 0.4 % in relative error. Only the
//! panel and one `c × c` matrix are ever held.
//!
//! Conv inputs are unfolded (im2col) on the fly into the panel: for image
//! `n` and output position `(oh, ow)` the vector element
//! `ci·kh·kw + i·kw + j` is `x[n, g·Cg + ci, oh·sh + i·dh − top,
//! ow·sw + j·dw − left]`, zero outside the input. That order is the C-order
//! flattening of a Core ML / torch conv weight `[Cout, Cin/groups, kh, kw]`,
//! so column `j` of `H` matches column `j` of the flattened weight. Each
//! group `g` of a grouped conv is its own layer with its own Hessian over
//! its `Cg = Cin/groups` channels (§2 [rec]; the references fail there).

use super::{check_finite, Result, SparseGptError};
use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Size of the vector panel folded into `G` at once. Large enough that the
/// rank-k update is compute-bound (k ≥ ~300 for c = 23,040), small next to
/// the `c²` matrix itself.
const PANEL_BYTES: usize = 64 << 20;
/// Side of the square tiles of `G` updated by one GEMM.
const TILE: usize = 256;
/// Panel width bounds (vectors).
const MIN_PANEL: usize = 16;
const MAX_PANEL: usize = 2048;

/// Precision of the products `x xᵀ` (the running sum is f64 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f64 products and sums: the exact choice, and the default.
    #[default]
    F64,
    /// Each tile of a panel's `X Xᵀ` as one f32 GEMM (sums of at most 2,048
    /// terms), added into the f64 total: §3's "f32 blocks summed into f64",
    /// roughly twice as fast. Relative rounding ~1e-7 of the matrix's scale,
    /// the references' own precision (their whole `H` is f32); on a
    /// rank-deficient Hessian that is enough to move a few near-threshold
    /// mask decisions.
    F32Tiles,
}

/// Geometry of a 2-D convolution, as the Core ML `conv` op applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Kernel size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Dilation `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Zero padding `[top, bottom, left, right]` (MIL `pad` order for
    /// `pad_type = custom`; resolve `same`/`valid` to explicit amounts first).
    pub padding: [usize; 4],
    /// Number of groups.
    pub groups: usize,
}

impl ConvGeometry {
    /// A `kh × kw` kernel with stride 1, no padding, no dilation, one group.
    pub fn new(kernel: [usize; 2]) -> Self {
        ConvGeometry {
            kernel,
            stride: [1, 1],
            dilation: [1, 1],
            padding: [0; 4],
            groups: 1,
        }
    }

    /// Output height and width for an `h × w` input, or `None` when the
    /// dilated kernel does not fit into the padded input.
    pub fn output_size(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let one = |len: usize, pad_a: usize, pad_b: usize, k: usize, s: usize, d: usize| {
            let padded = len.checked_add(pad_a)?.checked_add(pad_b)?;
            let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
            let room = padded.checked_sub(span)?;
            Some(room / s + 1)
        };
        let [kh, kw] = self.kernel;
        let [pt, pb, pl, pr] = self.padding;
        Some([
            one(h, pt, pb, kh, self.stride[0], self.dilation[0])?,
            one(w, pl, pr, kw, self.stride[1], self.dilation[1])?,
        ])
    }

    /// Hessian size (columns of the flattened weight) for `in_channels`
    /// input channels: `(in_channels / groups) · kh · kw`.
    pub fn cols(&self, in_channels: usize) -> usize {
        in_channels / self.groups.max(1) * self.kernel[0] * self.kernel[1]
    }

    fn validate(&self) -> Result<()> {
        let zero = |v: &[usize]| v.contains(&0);
        if zero(&self.kernel) || zero(&self.stride) || zero(&self.dilation) || self.groups == 0 {
            return Err(SparseGptError::Param(format!(
                "conv kernel, stride, dilation and groups must be positive, got {self:?}"
            )));
        }
        Ok(())
    }
}

/// Where the matrix came from: accumulated (`G`, scaled by `2/N` at the
/// end) or given as a finished `H`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Accumulated,
    Given,
}

/// A streaming Hessian accumulator for one layer (or one conv group).
#[derive(Debug)]
pub struct Hessian {
    cols: usize,
    nsamples: u64,
    vectors: u64,
    source: Source,
    /// `c × c`, column-major; the lower triangle (diagonal included) is
    /// authoritative until [`Hessian::into_matrix`] mirrors it.
    g: Vec<f64>,
    /// Buffered vectors, each contiguous (`c × panel_cap` column-major).
    panel: Vec<f32>,
    panel_len: usize,
    /// The panel widened to f64 for the GEMMs ([`Precision::F64`]).
    panel64: Vec<f64>,
    precision: Precision,
}

impl Hessian {
    /// An empty accumulator for `cols` input features, f64 products.
    /// Allocates the `cols² × 8` bytes matrix (zeroed lazily by the OS).
    pub fn new(cols: usize) -> Result<Self> {
        Self::with_precision(cols, Precision::F64)
    }

    /// An empty accumulator with the given product precision.
    pub fn with_precision(cols: usize, precision: Precision) -> Result<Self> {
        let n = Self::checked_square(cols)?;
        Ok(Hessian {
            cols,
            nsamples: 0,
            vectors: 0,
            source: Source::Accumulated,
            g: vec![0.0; n],
            panel: Vec::new(),
            panel_len: 0,
            panel64: Vec::new(),
            precision,
        })
    }

    /// A finished Hessian `H` (`cols × cols`; only the lower triangle,
    /// diagonal included, is read) computed elsewhere from `nsamples`
    /// samples. It is used as is: no `2/N` scaling.
    pub fn from_matrix(cols: usize, h: Vec<f64>, nsamples: u64) -> Result<Self> {
        let n = Self::checked_square(cols)?;
        if h.len() != n {
            return Err(SparseGptError::Length {
                what: "hessian",
                expected: n,
                found: h.len(),
            });
        }
        Ok(Hessian {
            cols,
            nsamples,
            vectors: 0,
            source: Source::Given,
            g: h,
            panel: Vec::new(),
            panel_len: 0,
            panel64: Vec::new(),
            precision: Precision::F64,
        })
    }

    fn checked_square(cols: usize) -> Result<usize> {
        if cols == 0 {
            return Err(SparseGptError::Param(
                "a hessian needs at least one column".into(),
            ));
        }
        cols.checked_mul(cols)
            .filter(|n| n.checked_mul(8).is_some())
            .ok_or_else(|| SparseGptError::Param(format!("{cols} columns: hessian too large")))
    }

    /// Number of columns (input features after im2col).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Samples seen so far: `N` in `H = (2/N) Σ x xᵀ`.
    pub fn nsamples(&self) -> u64 {
        self.nsamples
    }

    /// Vectors seen so far (tokens, or conv output positions × images).
    pub fn vectors(&self) -> u64 {
        self.vectors
    }

    /// Adds the input of a linear layer (or of a matmul with a constant
    /// weight, its inputs arranged as `[..., in]`): `x` is row-major with
    /// `shape = [..., cols]`. Every leading index is one vector. A rank-2
    /// input counts as one sample, a higher rank as `shape[0]` samples (§3:
    /// the leading dimension counts samples, as in the references).
    pub fn add_linear(&mut self, x: &[f32], shape: &[usize]) -> Result<()> {
        let (&last, lead) = shape
            .split_last()
            .filter(|(_, lead)| !lead.is_empty())
            .ok_or_else(|| {
                SparseGptError::Shape(format!("linear input must have rank >= 2, got {shape:?}"))
            })?;
        if last != self.cols {
            return Err(SparseGptError::Shape(format!(
                "linear input {shape:?} has {last} features, the hessian {} columns",
                self.cols
            )));
        }
        let vectors = lead
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| SparseGptError::Shape(format!("input shape {shape:?} overflows")))?;
        let expected = vectors.saturating_mul(last);
        if x.len() != expected {
            return Err(SparseGptError::Length {
                what: "linear input",
                expected,
                found: x.len(),
            });
        }
        check_finite("activations", x)?;
        let samples = if lead.len() == 1 { 1 } else { lead[0] as u64 };
        let c = self.cols;
        self.push(samples, vectors, |v, out| {
            out.copy_from_slice(&x[v * c..(v + 1) * c])
        });
        Ok(())
    }

    /// Adds the input `x` (`[N, C, H, W]`, row-major) of a conv layer with
    /// geometry `geom`, for group `group` (use 0 for an ungrouped conv). `N`
    /// samples; `N · Ho · Wo` vectors of `(C/groups) · kh · kw` elements.
    pub fn add_conv(
        &mut self,
        x: &[f32],
        shape: [usize; 4],
        geom: &ConvGeometry,
        group: usize,
    ) -> Result<()> {
        self.check_conv(x, shape, geom, group)?;
        check_finite("activations", x)?;
        self.add_conv_checked(x, shape, geom, group);
        Ok(())
    }

    /// One Hessian per group of a (possibly grouped) conv, all fed from the
    /// same input batch. `hessians.len()` must equal `geom.groups`.
    pub fn add_conv_groups(
        hessians: &mut [Hessian],
        x: &[f32],
        shape: [usize; 4],
        geom: &ConvGeometry,
    ) -> Result<()> {
        if hessians.len() != geom.groups {
            return Err(SparseGptError::Shape(format!(
                "{} hessians for a conv with {} groups",
                hessians.len(),
                geom.groups
            )));
        }
        for (g, h) in hessians.iter().enumerate() {
            h.check_conv(x, shape, geom, g)?;
        }
        check_finite("activations", x)?;
        for (g, h) in hessians.iter_mut().enumerate() {
            h.add_conv_checked(x, shape, geom, g);
        }
        Ok(())
    }

    fn check_conv(
        &self,
        x: &[f32],
        shape: [usize; 4],
        geom: &ConvGeometry,
        group: usize,
    ) -> Result<()> {
        geom.validate()?;
        let [n, ch, h, w] = shape;
        let expected = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| SparseGptError::Shape(format!("conv input {shape:?} overflows")))?;
        if x.len() != expected {
            return Err(SparseGptError::Length {
                what: "conv input",
                expected,
                found: x.len(),
            });
        }
        if ch % geom.groups != 0 || group >= geom.groups {
            return Err(SparseGptError::Shape(format!(
                "conv input with {ch} channels: group {group} of {} does not exist",
                geom.groups
            )));
        }
        if geom.cols(ch) != self.cols {
            return Err(SparseGptError::Shape(format!(
                "conv input {shape:?} with kernel {:?} and {} groups unfolds to {} columns, \
                 the hessian has {}",
                geom.kernel,
                geom.groups,
                geom.cols(ch),
                self.cols
            )));
        }
        if n == 0 || geom.output_size(h, w).is_none() {
            return Err(SparseGptError::Shape(format!(
                "conv input {shape:?} is too small for kernel {:?}, dilation {:?}, padding {:?}",
                geom.kernel, geom.dilation, geom.padding
            )));
        }
        Ok(())
    }

    fn add_conv_checked(
        &mut self,
        x: &[f32],
        shape: [usize; 4],
        geom: &ConvGeometry,
        group: usize,
    ) {
        let [n, ch, h, w] = shape;
        let [ho, wo] = geom.output_size(h, w).expect("checked by check_conv");
        let [kh, kw] = geom.kernel;
        let [sh, sw] = geom.stride;
        let [dh, dw] = geom.dilation;
        let [pt, _, pl, _] = geom.padding;
        let cg = ch / geom.groups;
        let c0 = group * cg;
        let positions = ho * wo;
        self.push(n as u64, n * positions, |v, out| {
            let (img, pos) = (v / positions, v % positions);
            let (oh, ow) = (pos / wo, pos % wo);
            let mut k = 0;
            for ci in 0..cg {
                let plane = &x[(img * ch + c0 + ci) * h * w..][..h * w];
                for i in 0..kh {
                    // Row in the unpadded input, if inside it.
                    let row = (oh * sh + i * dh).checked_sub(pt).filter(|&r| r < h);
                    for j in 0..kw {
                        out[k] = match row {
                            Some(r) => (ow * sw + j * dw)
                                .checked_sub(pl)
                                .filter(|&col| col < w)
                                .map_or(0.0, |col| plane[r * w + col]),
                            None => 0.0,
                        };
                        k += 1;
                    }
                }
            }
        });
    }

    /// Counts `samples`, then appends `count` vectors produced by
    /// `fill(index, out)` (in parallel), folding full panels into `G`.
    fn push(&mut self, samples: u64, count: usize, fill: impl Fn(usize, &mut [f32]) + Sync) {
        self.nsamples += samples;
        self.vectors += count as u64;
        let c = self.cols;
        let width = match self.precision {
            Precision::F64 => 8,
            Precision::F32Tiles => 4,
        };
        let cap = (PANEL_BYTES / (width * c)).clamp(MIN_PANEL, MAX_PANEL);
        if self.panel.len() != cap * c {
            self.panel = vec![0.0; cap * c];
            self.panel_len = 0;
        }
        let mut done = 0;
        while done < count {
            let take = (cap - self.panel_len).min(count - done);
            let start = done;
            self.panel[self.panel_len * c..(self.panel_len + take) * c]
                .par_chunks_mut(c)
                .enumerate()
                .for_each(|(t, out)| fill(start + t, out));
            self.panel_len += take;
            done += take;
            if self.panel_len == cap {
                self.flush();
            }
        }
    }

    /// Folds the buffered vectors into `G` (lower triangle). Public so that
    /// a caller can account the time of the last partial panel; taking the
    /// matrix out does it anyway.
    pub fn finish(&mut self) {
        self.flush();
        self.panel = Vec::new();
        self.panel64 = Vec::new();
    }

    /// Folds the buffered vectors into the lower triangle of `G`, tile by
    /// tile (`T × T` on or below the diagonal); column panels of `G` go to
    /// rayon workers and each tile is one sequential GEMM, so no sum depends
    /// on the thread count.
    fn flush(&mut self) {
        let (c, k) = (self.cols, self.panel_len);
        if k == 0 {
            return;
        }
        match self.precision {
            Precision::F64 => {
                self.panel64.resize(k * c, 0.0);
                self.panel64
                    .par_chunks_mut(c)
                    .zip(self.panel[..k * c].par_chunks(c))
                    .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &v)| *o = f64::from(v)));
                let x = MatRef::from_column_major_slice(&self.panel64[..k * c], c, k);
                self.g
                    .par_chunks_mut(c * TILE)
                    .enumerate()
                    .for_each(|(jt, gpanel)| {
                        let (j0, tj) = (jt * TILE, gpanel.len() / c);
                        let mut g = MatMut::from_column_major_slice_mut(gpanel, c, tj);
                        for i0 in (j0..c).step_by(TILE) {
                            let ti = TILE.min(c - i0);
                            matmul(
                                g.rb_mut().submatrix_mut(i0, 0, ti, tj),
                                Accum::Add,
                                x.subrows(i0, ti),
                                x.subrows(j0, tj).transpose(),
                                1.0,
                                Par::Seq,
                            );
                        }
                    });
            }
            Precision::F32Tiles => {
                let x = MatRef::from_column_major_slice(&self.panel[..k * c], c, k);
                self.g.par_chunks_mut(c * TILE).enumerate().for_each_init(
                    || vec![0.0f32; TILE * TILE],
                    |tile, (jt, gpanel)| {
                        let (j0, tj) = (jt * TILE, gpanel.len() / c);
                        for i0 in (j0..c).step_by(TILE) {
                            let ti = TILE.min(c - i0);
                            let tm =
                                MatMut::from_column_major_slice_mut(&mut tile[..ti * tj], ti, tj);
                            matmul(
                                tm,
                                Accum::Replace,
                                x.subrows(i0, ti),
                                x.subrows(j0, tj).transpose(),
                                1.0f32,
                                Par::Seq,
                            );
                            for jj in 0..tj {
                                let g = &mut gpanel[jj * c + i0..jj * c + i0 + ti];
                                for (gv, &tv) in g.iter_mut().zip(&tile[jj * ti..(jj + 1) * ti]) {
                                    *gv += f64::from(tv);
                                }
                            }
                        }
                    },
                );
            }
        }
        self.panel_len = 0;
    }

    /// The finished, symmetric Hessian (`cols × cols`, column-major, which
    /// for a symmetric matrix is also row-major): `(2/N)·G` for an
    /// accumulated one (all zeros when nothing was added), the given matrix
    /// otherwise.
    pub fn into_matrix(mut self) -> Vec<f64> {
        self.finish();
        let c = self.cols;
        let scale = match self.source {
            Source::Given => 1.0,
            Source::Accumulated if self.nsamples == 0 => 0.0,
            Source::Accumulated => 2.0 / self.nsamples as f64,
        };
        let mut g = std::mem::take(&mut self.g);
        if scale != 1.0 {
            g.par_chunks_mut(c)
                .enumerate()
                .for_each(|(j, col)| col[j..].iter_mut().for_each(|v| *v *= scale));
        }
        mirror(&mut g, c, Triangle::Lower);
        g
    }
}

/// Which triangle of a square matrix holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Triangle {
    Lower,
    Upper,
}

/// Makes the column-major `c × c` matrix `a` symmetric by copying the
/// strict triangle `from` onto the other one.
pub(crate) fn mirror(a: &mut [f64], c: usize, from: Triangle) {
    mirror_view(MatMut::from_column_major_slice_mut(a, c, c), from);
}

/// Recursive halving: the off-diagonal quadrant is one (transposing) copy,
/// the two diagonal quadrants recurse in parallel.
fn mirror_view(m: MatMut<'_, f64>, from: Triangle) {
    let n = m.nrows();
    if n <= 64 {
        let mut m = m;
        for j in 0..n {
            for i in j + 1..n {
                match from {
                    Triangle::Lower => m[(j, i)] = m[(i, j)],
                    Triangle::Upper => m[(i, j)] = m[(j, i)],
                }
            }
        }
        return;
    }
    let k = n / 2;
    let (tl, mut tr, mut bl, br) = m.split_at_mut(k, k);
    // Tile by tile, so that both the rows read and the columns written
    // stay in cache.
    const T: usize = 64;
    let (rows, cols) = (tr.nrows(), tr.ncols());
    for j0 in (0..cols).step_by(T) {
        let tw = T.min(cols - j0);
        for i0 in (0..rows).step_by(T) {
            let th = T.min(rows - i0);
            match from {
                Triangle::Lower => tr
                    .rb_mut()
                    .submatrix_mut(i0, j0, th, tw)
                    .copy_from(bl.rb().submatrix(j0, i0, tw, th).transpose()),
                Triangle::Upper => bl
                    .rb_mut()
                    .submatrix_mut(j0, i0, tw, th)
                    .copy_from(tr.rb().submatrix(i0, j0, th, tw).transpose()),
            }
        }
    }
    rayon::join(|| mirror_view(tl, from), || mirror_view(br, from));
}

#[cfg(test)]
mod tests {
    use super::super::reference::{naive_conv_vectors, naive_hessian, Rng};
    use super::*;

    /// Elementwise within `rel` of the largest entry.
    fn assert_close(a: &[f64], b: &[f64], rel: f64, what: &str) {
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= rel * scale,
                "{what}: element {k}: {x} vs {y} (scale {scale})"
            );
        }
    }

    #[test]
    fn linear_matches_naive_outer_products_and_counts_samples() {
        let mut rng = Rng::new(7);
        let c = 37;
        // Three batches: a 2-D one (one sample) and two 3-D ones.
        let b1 = rng.normals(50 * c);
        let b2 = rng.normals(4 * 9 * c);
        let b3 = rng.normals(2 * 1000 * c);
        let mut h = Hessian::new(c).unwrap();
        h.add_linear(&b1, &[50, c]).unwrap();
        h.add_linear(&b2, &[4, 9, c]).unwrap();
        h.add_linear(&b3, &[2, 1000, c]).unwrap();
        assert_eq!(h.nsamples(), 1 + 4 + 2);
        assert_eq!(h.vectors(), 50 + 36 + 2000);
        let all: Vec<f32> = [b1, b2, b3].concat();
        let want = naive_hessian(&all, c, 7);
        let got = h.into_matrix();
        assert_close(&got, &want, 1e-13, "linear hessian");
        // Exactly symmetric.
        for i in 0..c {
            for j in 0..c {
                assert_eq!(got[i + j * c], got[j + i * c]);
            }
        }
    }

    #[test]
    fn closed_form_equals_the_references_running_average() {
        // The references: H <- H n/(n+b); n += b; H += (2/n) Σ x xᵀ.
        let mut rng = Rng::new(3);
        let c = 16;
        let batches: Vec<(Vec<f32>, usize)> = (1..6).map(|b| (rng.normals(b * 5 * c), b)).collect();
        let mut run = vec![0.0f64; c * c];
        let mut n = 0usize;
        let mut h = Hessian::new(c).unwrap();
        for (x, b) in &batches {
            for v in run.iter_mut() {
                *v *= n as f64 / (n + b) as f64;
            }
            n += b;
            let s = 2.0 / n as f64;
            for t in 0..b * 5 {
                let xv = &x[t * c..(t + 1) * c];
                for i in 0..c {
                    for j in 0..c {
                        run[i + j * c] += s * f64::from(xv[i]) * f64::from(xv[j]);
                    }
                }
            }
            h.add_linear(x, &[*b, 5, c]).unwrap();
        }
        assert_close(&h.into_matrix(), &run, 1e-13, "running average");
    }

    #[test]
    fn f32_tiles_are_close_to_f64() {
        let mut rng = Rng::new(8);
        let c = 300;
        let x = rng.normals(700 * c);
        let mut a = Hessian::new(c).unwrap();
        let mut b = Hessian::with_precision(c, Precision::F32Tiles).unwrap();
        a.add_linear(&x, &[700, c]).unwrap();
        b.add_linear(&x, &[700, c]).unwrap();
        let (a, b) = (a.into_matrix(), b.into_matrix());
        assert_close(&b, &a, 1e-6, "f32 tiles vs f64");
        assert!(a != b, "f32 tiles should round differently from f64");
    }

    #[test]
    fn hand_checked_tiny_linear() {
        // x1 = (1, 2), x2 = (3, -1), one sample: H = 2 (x1 x1ᵀ + x2 x2ᵀ).
        let mut h = Hessian::new(2).unwrap();
        h.add_linear(&[1.0, 2.0, 3.0, -1.0], &[2, 2]).unwrap();
        assert_eq!(h.into_matrix(), vec![20.0, -2.0, -2.0, 10.0]);
    }

    #[test]
    fn hand_checked_tiny_conv_with_padding() {
        // One channel 2×2 input [[1, 2], [3, 4]], 2×2 kernel, padding 1 on
        // top and left only, stride 1: output 2×2, patches (row-major
        // kernel order) [0,0,0,1], [0,0,1,2], [0,1,0,3], [1,2,3,4].
        let mut g = ConvGeometry::new([2, 2]);
        g.padding = [1, 0, 1, 0];
        let mut h = Hessian::new(4).unwrap();
        h.add_conv(&[1.0, 2.0, 3.0, 4.0], [1, 1, 2, 2], &g, 0)
            .unwrap();
        let patches = [
            [0.0, 0.0, 0.0, 1.0],
            [0.0, 0.0, 1.0, 2.0],
            [0.0, 1.0, 0.0, 3.0],
            [1.0, 2.0, 3.0, 4.0],
        ];
        let mut want = vec![0.0; 16];
        for p in &patches {
            for i in 0..4 {
                for j in 0..4 {
                    want[i + 4 * j] += 2.0 * p[i] * p[j];
                }
            }
        }
        assert_eq!(h.into_matrix(), want);
    }

    #[test]
    fn conv_matches_naive_im2col_with_stride_dilation_padding_groups() {
        let mut rng = Rng::new(11);
        for (shape, geom) in [
            (
                [2, 6, 9, 8],
                ConvGeometry {
                    kernel: [3, 2],
                    stride: [2, 1],
                    dilation: [1, 2],
                    padding: [1, 2, 0, 1],
                    groups: 3,
                },
            ),
            (
                [3, 4, 5, 5],
                ConvGeometry {
                    kernel: [3, 3],
                    stride: [1, 1],
                    dilation: [1, 1],
                    padding: [1, 1, 1, 1],
                    groups: 1,
                },
            ),
            // Apple's [B, C, 1, S] attention layout: 1×1 conv, tokens on W.
            ([2, 5, 1, 7], ConvGeometry::new([1, 1])),
        ] {
            let x = rng.normals(shape.iter().product());
            let cols = geom.cols(shape[1]);
            let mut hs: Vec<Hessian> = (0..geom.groups)
                .map(|_| Hessian::new(cols).unwrap())
                .collect();
            Hessian::add_conv_groups(&mut hs, &x, shape, &geom).unwrap();
            for (g, h) in hs.into_iter().enumerate() {
                assert_eq!(h.nsamples(), shape[0] as u64);
                let vecs = naive_conv_vectors(&x, shape, &geom, g);
                let flat: Vec<f32> = vecs.iter().flatten().map(|&v| v as f32).collect();
                let want = naive_hessian(&flat, cols, shape[0] as u64);
                assert_close(
                    &h.into_matrix(),
                    &want,
                    1e-13,
                    &format!("conv {geom:?} group {g}"),
                );
            }
        }
    }

    #[test]
    fn many_small_batches_span_several_panels() {
        // c = 4096 gives a 2048-vector panel: 3 × 1500 vectors need two flushes.
        let mut rng = Rng::new(5);
        let c = 4096;
        let mut h = Hessian::new(c).unwrap();
        let mut all = Vec::new();
        for _ in 0..3 {
            let x = rng.normals(1500 * c);
            h.add_linear(&x, &[1500, c]).unwrap();
            all.extend(x);
        }
        let got = h.into_matrix();
        // Spot-check a few entries against direct dot products.
        for &(i, j) in &[(0, 0), (17, 4000), (4095, 1), (2048, 2047)] {
            let terms = (0..4500).map(|t| f64::from(all[t * c + i]) * f64::from(all[t * c + j]));
            let want: f64 = terms.clone().sum::<f64>() * 2.0 / 3.0;
            let size: f64 = terms.map(f64::abs).sum::<f64>() * 2.0 / 3.0;
            assert!((got[i + j * c] - want).abs() <= 1e-13 * size, "({i},{j})");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut h = Hessian::new(4).unwrap();
        assert!(matches!(
            h.add_linear(&[0.0; 8], &[8]),
            Err(SparseGptError::Shape(_))
        ));
        assert!(matches!(
            h.add_linear(&[0.0; 8], &[2, 3]),
            Err(SparseGptError::Shape(_))
        ));
        assert!(matches!(
            h.add_linear(&[0.0; 7], &[2, 4]),
            Err(SparseGptError::Length { .. })
        ));
        let mut x = vec![0.0; 8];
        x[5] = f32::NAN;
        assert!(matches!(
            h.add_linear(&x, &[2, 4]),
            Err(SparseGptError::NonFinite { index: 5, .. })
        ));
        let g = ConvGeometry::new([3, 3]);
        let mut h9 = Hessian::new(9).unwrap();
        // Input smaller than the kernel.
        assert!(matches!(
            h9.add_conv(&[0.0; 4], [1, 1, 2, 2], &g, 0),
            Err(SparseGptError::Shape(_))
        ));
        // Wrong channel count for the hessian.
        assert!(matches!(
            h9.add_conv(&[0.0; 18], [1, 2, 3, 3], &g, 0),
            Err(SparseGptError::Shape(_))
        ));
        assert!(Hessian::new(0).is_err());
        assert_eq!(h9.nsamples(), 0);
    }
}
