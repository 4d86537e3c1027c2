//! SparseGPT pruning of one weight matrix given its Hessian (§4 to §9).
//!
//! Inputs: `W` (`r × c`, the weight flattened to `[out, in·kh·kw]`) and
//! `H` (`c × c`). Steps, in the spec's order:
//!
//! 1. dead inputs: `H[j,j] == 0` → `H[j,j] = 1`, `W[:, j] = 0`;
//! 2. damping: `H_d = H + percdamp · mean(diag H) · I`;
//! 3. factorisation, in f64 and in place: `H_d = V Vᵀ` with `V` upper
//!    triangular (the "UL" route of §4.4: reverse the index order, take the
//!    lower Cholesky factor, reverse back). The references' factor is
//!    `U = V⁻¹` (`H_d⁻¹ = Uᵀ U`); we never form it, see below;
//! 4. the column sweep in blocks of `B` columns (§5), with the mask rule of
//!    §6 (unstructured: per block, prune every score `w²/U_jj² <=` the
//!    `⌊r·k·s⌋`-th smallest) or §7 (n:m, chosen when the sweep reaches each
//!    group, ties to the lower column);
//! 5. the loss of §9: `½ Σ (w − q)² / U_jj²`.
//!
//! **Lazy updates through `V` instead of `U = V⁻¹`.** The references apply,
//! after block `b`, `W[:, later] −= E_b · U[b, later]`, which needs all of
//! `U`: a triangular inversion costing as much as the Cholesky itself
//! (`c³/3`). Every correct sweep satisfies `ΔW = E U` (§5), so `E = ΔW V`,
//! and splitting by blocks gives, for the correction `S_b = Σ_{b'<b} E_b'
//! U_b'b` the references subtract from block `b`:
//!
//! ```text
//!   S_b = −A_b U_bb,   A_b = Σ_{b'<b} ΔW_b' V_b'b,   U_bb = V_bb⁻¹
//! ```
//!
//! (from `E_b = ΔW_b V_bb + A_b` and `ΔW_b = S_b + E_b U_bb`). So the
//! working block is `W_b = W0_b + A_b U_bb`, the lazy update becomes
//! `A[:, later] += ΔW_b · V[b, later]` (the same GEMM size as the
//! references'), and only the `B × B` diagonal blocks of `U` are needed.
//! This halves the factorisation cost (`c³/3` instead of `2c³/3` for the
//! UL route, `4c³/3` for the references' three steps); results agree with
//! the spec's route to rounding (tests compare against a literal,
//! unblocked implementation that uses `U`).
//!
//! **Memory.** The Hessian buffer is factored in place: afterwards its
//! upper triangle holds `V`. Besides the `c²` f64 matrix: `A`/`Ŵ`
//! (`r × c` f64), the output (`r × c` f32 and a mask), `O(r·B)` scratch and,
//! to allow a retry with more damping, a `c × 128` band of `H`. The
//! relative error needs no copy of `H` either: it follows from the loss
//! identity and `V` (see `relative_error`).
//!
//! **Parallelism.** The factorisation and the GEMMs use faer on the
//! current rayon pool; the sweep inside a block runs rows in parallel (rows
//! are independent once the block's mask is chosen).

use super::hessian::{mirror, Hessian, Triangle};
use super::{check_finite, Result, SparseGptError};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{
    cholesky_in_place, cholesky_in_place_scratch, LltError, LltRegularization,
};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::reborrow::ReborrowMut;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// How the unstructured mask of a block is chosen (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskRule {
    /// The references' rule: prune every score `<=` the `K`-th smallest
    /// (0-based), `K = ⌊numel·s⌋`: `K + 1` weights per block, more on ties.
    Reference,
    /// A deviation from the references: prune exactly `K` weights per block,
    /// ties by row-major position within the block.
    Exact,
    /// Exactly `round(s·numel)` weights of the whole matrix, spread over
    /// the blocks by cumulative rounding (block `[b0, b1)` prunes
    /// `round(s·r·b1) − round(s·r·b0)`), ties as [`MaskRule::Exact`]. The
    /// sparsity the command asks for is then the sparsity it writes, as
    /// with magnitude pruning (`prune --method sparsegpt` uses it).
    ExactTotal,
}

/// The sparsity pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// A fraction `sparsity` of every block, chosen by `rule`.
    Unstructured {
        /// Fraction to prune, in `[0, 1)` (`[0, 1]` for [`MaskRule::Exact`]).
        sparsity: f64,
        /// Mask rule.
        rule: MaskRule,
    },
    /// `n` pruned out of every `m` consecutive columns of each row.
    NOfM {
        /// Pruned per group.
        n: usize,
        /// Group size.
        m: usize,
    },
}

/// Parameters of [`prune_layer`].
#[derive(Debug, Clone, PartialEq)]
pub struct PruneParams {
    /// What to prune.
    pub pattern: Pattern,
    /// Damping relative to the mean diagonal of `H` (default 0.01).
    pub percdamp: f64,
    /// Columns per block of the sweep (default 128; the unstructured mask
    /// is chosen per block).
    pub sweep_block: usize,
    /// Retries with 10× the damping when the damped Hessian is not
    /// positive definite (default 2). 0 = fail at once, as the references.
    pub damp_retries: u32,
    /// Also compute the relative reconstruction error (costs about as much
    /// as the sweep's GEMMs again, `r·c²` multiply-adds).
    pub measure_error: bool,
}

impl PruneParams {
    /// Unstructured pruning of `sparsity` with the references' mask rule
    /// and their defaults.
    pub fn unstructured(sparsity: f64) -> Self {
        Self::with_pattern(Pattern::Unstructured {
            sparsity,
            rule: MaskRule::Reference,
        })
    }

    /// `n:m` pruning with the references' defaults.
    pub fn n_of_m(n: usize, m: usize) -> Self {
        Self::with_pattern(Pattern::NOfM { n, m })
    }

    fn with_pattern(pattern: Pattern) -> Self {
        PruneParams {
            pattern,
            percdamp: 0.01,
            sweep_block: 128,
            damp_retries: 2,
            measure_error: false,
        }
    }

    fn validate(&self, rows: usize, cols: usize) -> Result<()> {
        let bad = |m: String| Err(SparseGptError::Param(m));
        if rows == 0 || cols == 0 {
            return bad(format!("empty weight matrix ({rows} × {cols})"));
        }
        if !(self.percdamp.is_finite() && self.percdamp >= 0.0) {
            return bad(format!(
                "percdamp must be finite and >= 0, got {}",
                self.percdamp
            ));
        }
        if self.sweep_block == 0 {
            return bad("sweep block must be at least 1 column".into());
        }
        match self.pattern {
            Pattern::Unstructured { sparsity, rule } => {
                let max_ok = match rule {
                    MaskRule::Reference => sparsity < 1.0,
                    MaskRule::Exact | MaskRule::ExactTotal => sparsity <= 1.0,
                };
                if !(sparsity >= 0.0 && max_ok) {
                    return bad(format!(
                        "sparsity must be in [0, 1){}, got {sparsity}",
                        if rule != MaskRule::Reference {
                            " or 1"
                        } else {
                            ""
                        }
                    ));
                }
                if rule == MaskRule::Reference {
                    // K = ⌊numel·s⌋ must index into the block's scores.
                    let widths = [self.sweep_block.min(cols), cols % self.sweep_block];
                    for w in widths.into_iter().filter(|&w| w > 0) {
                        let numel = rows * w;
                        if cut_index(numel, sparsity) >= numel {
                            return bad(format!(
                                "sparsity {sparsity} leaves nothing to keep in a block of {numel}"
                            ));
                        }
                    }
                }
            }
            Pattern::NOfM { n, m } => {
                if !(n > 0 && n < m) {
                    return bad(format!("n:m needs 0 < n < m, got {n}:{m}"));
                }
                if !self.sweep_block.is_multiple_of(m) {
                    return bad(format!(
                        "sweep block {} is not a multiple of m = {m} (groups are block-relative)",
                        self.sweep_block
                    ));
                }
                if !cols.is_multiple_of(m) {
                    return bad(format!("{cols} columns are not a multiple of m = {m}"));
                }
            }
        }
        Ok(())
    }
}

/// `⌊numel · s⌋` with the product in f64, as the references' `int(numel * s)`.
fn cut_index(numel: usize, sparsity: f64) -> usize {
    (numel as f64 * sparsity) as usize
}

/// The cut of block `[b0, b1)` of an `r`-row matrix under `rule`: the
/// references' `K` for [`MaskRule::Reference`] and [`MaskRule::Exact`],
/// the block's share of `round(s·numel)` for [`MaskRule::ExactTotal`].
fn block_cut(r: usize, b0: usize, b1: usize, sparsity: f64, rule: MaskRule) -> usize {
    match rule {
        MaskRule::Reference | MaskRule::Exact => cut_index(r * (b1 - b0), sparsity),
        MaskRule::ExactTotal => {
            let upto = |j: usize| ((r * j) as f64 * sparsity).round() as usize;
            upto(b1) - upto(b0)
        }
    }
}

/// The result of [`prune_layer`].
#[derive(Debug, Clone)]
pub struct PruneOutcome {
    /// The pruned (and compensated) weights, `rows × cols` row-major.
    /// Pruned entries are exactly `0.0`.
    pub weights: Vec<f32>,
    /// `true` where a weight was pruned (row-major).
    pub mask: Vec<bool>,
    /// Number of `true` in `mask`.
    pub pruned: usize,
    /// The loss of §9, `½ Σ (w − q)² / U_jj²`: the number the references
    /// print, `= ½ tr(ΔW H_d ΔWᵀ)`.
    pub loss: f64,
    /// Its per-row parts.
    pub row_losses: Vec<f64>,
    /// Columns whose Hessian diagonal was exactly zero (inputs never active).
    pub dead_columns: usize,
    /// Relative damping actually used (after retries).
    pub percdamp: f64,
    /// Absolute damping added to the diagonal.
    pub damp: f64,
    /// Factorisations tried (1 unless the damping had to be raised).
    pub attempts: u32,
    /// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` = `‖WX − ŴX‖² / ‖WX‖²` on the calibration
    /// data (§9), when [`PruneParams::measure_error`] is set.
    pub rel_error: Option<f64>,
}

/// Prunes `w` (`rows × cols`, row-major) with SparseGPT given its Hessian
/// `h` (consumed: factored in place, so only one `c × c` matrix exists).
pub fn prune_layer(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: Hessian,
    params: &PruneParams,
) -> Result<PruneOutcome> {
    params.validate(rows, cols)?;
    let (r, c) = (rows, cols);
    if w.len() != r * c {
        return Err(SparseGptError::Length {
            what: "weight",
            expected: r * c,
            found: w.len(),
        });
    }
    if h.cols() != c {
        return Err(SparseGptError::Shape(format!(
            "hessian has {} columns, the weight {c}",
            h.cols()
        )));
    }
    check_finite("weight", w)?;
    let mut hm = h.into_matrix();
    check_finite("hessian", &hm)?;

    // §4.2: dead inputs. `diag` is H's diagonal after that step.
    let diag: Vec<f64> = (0..c).map(|j| hm[j + j * c]).collect();
    let dead: Vec<bool> = diag.iter().map(|&d| d == 0.0).collect();
    let diag: Vec<f64> = diag
        .iter()
        .map(|&d| if d == 0.0 { 1.0 } else { d })
        .collect();
    let mean = diag.iter().sum::<f64>() / c as f64;

    let (percdamp, damp, attempts) = factor_ul(&mut hm, c, &diag, mean, params)?;
    let sweep = sweep(w, r, c, &hm, &dead, params);

    let weights: Vec<f32> = {
        let a = &sweep.a;
        let mut out = vec![0.0f32; r * c];
        out.par_chunks_mut(c).enumerate().for_each(|(row, o)| {
            for (j, v) in o.iter_mut().enumerate() {
                *v = a[row + j * r] as f32;
            }
        });
        out
    };
    let loss: f64 = sweep.row_losses.iter().sum();
    let rel_error = params
        .measure_error
        .then(|| relative_error(w, &dead, r, c, sweep.a, &hm, damp, loss));
    let pruned = sweep.mask.iter().filter(|&&m| m).count();
    Ok(PruneOutcome {
        weights,
        mask: sweep.mask,
        pruned,
        loss,
        row_losses: sweep.row_losses,
        dead_columns: dead.iter().filter(|&&d| d).count(),
        percdamp,
        damp,
        attempts,
        rel_error,
    })
}

/// Width of the band next to the diagonal in which faer's Cholesky may use
/// the unused triangle as scratch (its base case writes within 16 columns
/// of the diagonal, its recursion blocks are at most 128 wide).
const SCRATCH_BAND: usize = 128;

/// Factors `H_d = V Vᵀ` in place (`V` upper triangular, into the upper
/// triangle of `h`; the lower triangle is left as scratch). Returns the
/// relative and absolute damping used and the number of attempts.
///
/// A retry needs the Hessian again, and the factorisation has overwritten
/// one triangle. The other triangle still holds it except in a narrow band
/// by the diagonal that faer may use as scratch: that band is saved
/// before the first attempt (`c · 128` values), and a checksum of
/// everything outside it proves the rest was left alone. Should a future
/// faer write elsewhere, the retry is refused instead of working on a
/// corrupted matrix.
fn factor_ul(
    h: &mut [f64],
    c: usize,
    diag: &[f64],
    mean: f64,
    params: &PruneParams,
) -> Result<(f64, f64, u32)> {
    // Reversing the flat column-major buffer maps element (i, j) to
    // (c−1−i, c−1−j): it is P H P with P the index reversal, so the lower
    // Cholesky factor L of the reversed matrix gives V = P L P.
    h.reverse();
    let guard = (params.damp_retries > 0).then(|| UpperGuard::new(h, c));
    let par = Par::rayon(0);
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(c, par, Default::default()));
    let mut percdamp = params.percdamp;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let damp = percdamp * mean;
        for i in 0..c {
            h[i + i * c] = diag[c - 1 - i] + damp;
        }
        let m = MatMut::from_column_major_slice_mut(h, c, c);
        match cholesky_in_place(
            m,
            LltRegularization::default(),
            par,
            MemStack::new(&mut mem),
            Default::default(),
        ) {
            Ok(_) => {
                h.reverse();
                return Ok((percdamp, damp, attempts));
            }
            Err(LltError::NonPositivePivot { index }) => {
                let failed = SparseGptError::NotPositiveDefinite {
                    pivot: c - 1 - index,
                    percdamp,
                    attempts,
                };
                match &guard {
                    Some(g) if attempts <= params.damp_retries && g.restore(h, c) => {
                        mirror(h, c, Triangle::Upper);
                        percdamp = if percdamp > 0.0 {
                            percdamp * 10.0
                        } else {
                            0.01
                        };
                    }
                    _ => return Err(failed),
                }
            }
        }
    }
}

/// The strict upper triangle of a symmetric matrix, kept recoverable
/// across a Cholesky factorisation of its lower triangle: the band of
/// [`SCRATCH_BAND`] columns above the diagonal is copied, the rest is
/// checksummed per column.
struct UpperGuard {
    band: Vec<f64>,
    sums: Vec<u64>,
}

impl UpperGuard {
    fn band_rows(j: usize) -> std::ops::Range<usize> {
        j.saturating_sub(SCRATCH_BAND)..j
    }

    fn column_sums(h: &[f64], c: usize) -> Vec<u64> {
        h.par_chunks(c)
            .enumerate()
            .map(|(j, col)| {
                col[..j.saturating_sub(SCRATCH_BAND)]
                    .iter()
                    .sum::<f64>()
                    .to_bits()
            })
            .collect()
    }

    fn new(h: &[f64], c: usize) -> Self {
        let band = (0..c)
            .flat_map(|j| Self::band_rows(j).map(move |i| h[i + j * c]))
            .collect();
        UpperGuard {
            band,
            sums: Self::column_sums(h, c),
        }
    }

    /// Puts the band back; false if anything outside it changed.
    fn restore(&self, h: &mut [f64], c: usize) -> bool {
        if Self::column_sums(h, c) != self.sums {
            return false;
        }
        let mut k = 0;
        for j in 0..c {
            for i in Self::band_rows(j) {
                h[i + j * c] = self.band[k];
                k += 1;
            }
        }
        true
    }
}

struct Sweep {
    /// `r × c` column-major: the lazy-update accumulator `A`, overwritten
    /// block by block with the final weights.
    a: Vec<f64>,
    mask: Vec<bool>,
    row_losses: Vec<f64>,
}

/// The blocked column sweep (§5–§7), `v` holding `V` in its upper triangle.
fn sweep(w: &[f32], r: usize, c: usize, v: &[f64], dead: &[bool], params: &PruneParams) -> Sweep {
    let par = Par::rayon(0);
    let bs = params.sweep_block.min(c);
    let mut a = vec![0.0f64; r * c];
    let mut mask = vec![false; r * c];
    let mut row_losses = vec![0.0f64; r];
    // Row-major r × k block buffers and the k × k diagonal block of U.
    let mut w1 = vec![0.0f64; r * bs];
    let mut dw = vec![0.0f64; r * bs];
    let mut m1 = vec![false; r * bs];
    let mut ubb = vec![0.0f64; bs * bs];
    let mut scores = Vec::new();
    let nm = match params.pattern {
        Pattern::NOfM { n, m } => Some((n, m)),
        Pattern::Unstructured { .. } => None,
    };
    let vmat = MatRef::from_column_major_slice(v, c, c);

    for b0 in (0..c).step_by(bs) {
        let k = bs.min(c - b0);
        let b1 = b0 + k;
        let (w1, dw, m1, ubb) = (
            &mut w1[..r * k],
            &mut dw[..r * k],
            &mut m1[..r * k],
            &mut ubb[..k * k],
        );
        invert_upper_block(v, c, b0, k, ubb);
        let d: Vec<f64> = (0..k).map(|i| ubb[i * k + i]).collect();

        // W1 = W0_b + A_b U_bb (A_b = 0 for the first block).
        {
            let mut dst = MatMut::from_row_major_slice_mut(w1, r, k);
            if b0 == 0 {
                dst.fill(0.0);
            } else {
                let ab = MatRef::from_column_major_slice(&a, r, c).subcols(b0, k);
                let u = MatRef::from_row_major_slice(ubb, k, k);
                triangular::matmul(
                    dst,
                    BlockStructure::Rectangular,
                    Accum::Replace,
                    ab,
                    BlockStructure::Rectangular,
                    u,
                    BlockStructure::TriangularUpper,
                    1.0,
                    par,
                );
            }
        }
        w1.par_chunks_mut(k).enumerate().for_each(|(row, out)| {
            let src = &w[row * c + b0..row * c + b1];
            for ((o, &s), &is_dead) in out.iter_mut().zip(src).zip(&dead[b0..b1]) {
                if !is_dead {
                    *o += f64::from(s);
                }
            }
        });

        m1.fill(false);
        if let Pattern::Unstructured { sparsity, rule } = params.pattern {
            let cut = block_cut(r, b0, b1, sparsity, rule);
            select_unstructured(w1, &d, k, cut, rule, m1, &mut scores);
        }
        let ubb = &*ubb;
        w1.par_chunks_mut(k)
            .zip(m1.par_chunks_mut(k))
            .zip(row_losses.par_iter_mut())
            .for_each(|((row, mrow), loss)| *loss += sweep_row(row, mrow, ubb, &d, nm));

        // ΔW_b = W0_b − Q_b; the block's final weights go into A.
        dw.par_chunks_mut(k)
            .zip(w1.par_chunks(k))
            .enumerate()
            .for_each(|(row, (o, q))| {
                let src = &w[row * c + b0..row * c + b1];
                for i in 0..k {
                    let w0 = if dead[b0 + i] { 0.0 } else { f64::from(src[i]) };
                    o[i] = w0 - q[i];
                }
            });
        MatMut::from_column_major_slice_mut(&mut a, r, c)
            .subcols_mut(b0, k)
            .copy_from(MatRef::from_row_major_slice(w1, r, k));
        mask.par_chunks_mut(c)
            .zip(m1.par_chunks(k))
            .for_each(|(o, mrow)| o[b0..b1].copy_from_slice(mrow));

        // Lazy update of all later columns: A[:, b1..] += ΔW_b · V[b, b1..].
        if b1 < c {
            let dst = MatMut::from_column_major_slice_mut(&mut a, r, c).subcols_mut(b1, c - b1);
            matmul(
                dst,
                Accum::Add,
                MatRef::from_row_major_slice(dw, r, k),
                vmat.submatrix(b0, b1, k, c - b1),
                1.0,
                par,
            );
        }
    }
    Sweep {
        a,
        mask,
        row_losses,
    }
}

/// `U_bb = V_bb⁻¹` for the diagonal block of `V` (upper triangle of the
/// column-major `c × c` buffer `v`) at `b0`, size `k`, into `u` (row-major,
/// zero below the diagonal). Back substitution: `k³/6` multiply-adds.
fn invert_upper_block(v: &[f64], c: usize, b0: usize, k: usize, u: &mut [f64]) {
    let vv = |i: usize, j: usize| v[(b0 + i) + (b0 + j) * c];
    u.fill(0.0);
    for j in 0..k {
        u[j * k + j] = 1.0 / vv(j, j);
        for i in (0..j).rev() {
            let s: f64 = (i + 1..=j).map(|t| vv(i, t) * u[t * k + j]).sum();
            u[i * k + j] = -s / vv(i, i);
        }
    }
}

/// The unstructured mask of one block (§6) from the block-start weights
/// `w1` (`r × k` row-major) and `d = diag(U_bb)`.
fn select_unstructured(
    w1: &[f64],
    d: &[f64],
    k: usize,
    cut: usize,
    rule: MaskRule,
    mask: &mut [bool],
    scratch: &mut Vec<f64>,
) {
    let numel = w1.len();
    let score = |idx: usize| {
        let (x, di) = (w1[idx], d[idx % k]);
        x * x / (di * di)
    };
    match rule {
        MaskRule::Reference => {
            scratch.clear();
            scratch.extend((0..numel).map(score));
            let (_, &mut thresh, _) = scratch.select_nth_unstable_by(cut, f64::total_cmp);
            mask.par_iter_mut()
                .enumerate()
                .for_each(|(idx, m)| *m = score(idx) <= thresh);
        }
        MaskRule::Exact | MaskRule::ExactTotal => {
            if cut == 0 {
                return;
            }
            let mut order: Vec<(f64, usize)> = (0..numel).map(|i| (score(i), i)).collect();
            let cmp = |a: &(f64, usize), b: &(f64, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
            if cut < numel {
                order.select_nth_unstable_by(cut - 1, cmp);
            }
            for &(_, i) in &order[..cut] {
                mask[i] = true;
            }
        }
    }
}

/// Sweeps one row of a block (§5 step 3): masked weights become 0 and
/// their error, scaled by `U_bb`'s row, is taken off the row's later
/// columns. In n:m mode the group mask is chosen from the current values
/// when the sweep reaches the group. Returns the row's loss `½ Σ e²`.
fn sweep_row(
    row: &mut [f64],
    mrow: &mut [bool],
    ubb: &[f64],
    d: &[f64],
    nm: Option<(usize, usize)>,
) -> f64 {
    let k = row.len();
    let mut loss = 0.0;
    for i in 0..k {
        if let Some((n, m)) = nm {
            if i % m == 0 {
                choose_n_of_m(&row[i..i + m], &d[i..i + m], n, &mut mrow[i..i + m]);
            }
        }
        if mrow[i] {
            let e = row[i] / d[i];
            loss += e * e;
            row[i] = 0.0;
            let u = &ubb[i * k..(i + 1) * k];
            for (x, &uj) in row[i + 1..].iter_mut().zip(&u[i + 1..]) {
                *x -= e * uj;
            }
        }
    }
    0.5 * loss
}

/// Marks the `n` smallest scores `x²/d²` of a group, ties to the lower
/// column (§7 [rec]). Groups are small; `n` passes of a linear scan.
fn choose_n_of_m(x: &[f64], d: &[f64], n: usize, mask: &mut [bool]) {
    for _ in 0..n {
        let mut best: Option<(usize, f64)> = None;
        for t in 0..x.len() {
            if mask[t] {
                continue;
            }
            let s = x[t] * x[t] / (d[t] * d[t]);
            if best.is_none_or(|(_, b)| s.total_cmp(&b).is_lt()) {
                best = Some((t, s));
            }
        }
        if let Some((t, _)) = best {
            mask[t] = true;
        }
    }
}

/// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` with `ΔW = W − Ŵ` (§9), without `H`
/// (the factorisation consumed it):
///
/// - numerator: the loss identity `loss = ½ tr(ΔW H_d ΔWᵀ)` with
///   `H_d = H + damp·I` gives `2·loss − damp·‖ΔW‖²`;
/// - denominator: `H_d = V Vᵀ` gives `‖W V‖² − damp·‖W‖²`.
///
/// `W` is the dead-zeroed weight: dead inputs have zero rows and columns
/// in `H`, so they change neither trace. `what` holds `Ŵ` column-major
/// and is used as scratch; `v` holds `V` in its upper triangle.
#[allow(clippy::too_many_arguments)]
fn relative_error(
    w: &[f32],
    dead: &[bool],
    r: usize,
    c: usize,
    mut what: Vec<f64>,
    v: &[f64],
    damp: f64,
    loss: f64,
) -> f64 {
    // W0 (dead-zeroed) column-major, and ‖ΔW‖².
    let dw2: f64 = what
        .par_chunks_mut(r)
        .enumerate()
        .map(|(j, col)| {
            let mut s = 0.0;
            for (row, x) in col.iter_mut().enumerate() {
                let w0 = if dead[j] {
                    0.0
                } else {
                    f64::from(w[row * c + j])
                };
                s += (w0 - *x) * (w0 - *x);
                *x = w0;
            }
            s
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    let w2: f64 = what.iter().map(|x| x * x).sum();
    let wv2 = frobenius_times_upper(&what, r, c, v);
    let num = 2.0 * loss - damp * dw2;
    let den = wv2 - damp * w2;
    if den > 0.0 {
        (num / den).max(0.0)
    } else {
        0.0
    }
}

/// `‖M V‖²_F` for `M` (`r × c` column-major) and the upper triangle `V` of
/// the column-major `c × c` buffer `v`, by column panels of `M V` so the
/// scratch stays `r × 256`.
fn frobenius_times_upper(m: &[f64], r: usize, c: usize, v: &[f64]) -> f64 {
    const P: usize = 256;
    let par = Par::rayon(0);
    let mm = MatRef::from_column_major_slice(m, r, c);
    let vm = MatRef::from_column_major_slice(v, c, c);
    let mut y = vec![0.0f64; r * P];
    let mut total = 0.0;
    for j0 in (0..c).step_by(P) {
        let p = P.min(c - j0);
        let mut ym = MatMut::from_column_major_slice_mut(&mut y[..r * p], r, p);
        // (M V)[:, J] = M[:, ..j0] V[..j0, J] + M[:, J] triu(V[J, J]).
        triangular::matmul(
            ym.rb_mut(),
            BlockStructure::Rectangular,
            Accum::Replace,
            mm.subcols(j0, p),
            BlockStructure::Rectangular,
            vm.submatrix(j0, j0, p, p),
            BlockStructure::TriangularUpper,
            1.0,
            par,
        );
        if j0 > 0 {
            matmul(
                ym.rb_mut(),
                Accum::Add,
                mm.subcols(0, j0),
                vm.submatrix(0, j0, j0, p),
                1.0,
                par,
            );
        }
        total += y[..r * p].iter().map(|x| x * x).sum::<f64>();
    }
    total
}

#[cfg(test)]
mod tests;
