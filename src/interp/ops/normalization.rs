//! Normalisations (`iOS15/normalization.py`): `layer_norm`, `batch_norm`,
//! `instance_norm`, `l2_norm`.
//!
//! - `layer_norm(x, axes, gamma, beta, epsilon)`: mean and (biased)
//!   variance over `axes` (default: all), `(x − μ)/√(σ² + ε)·γ + β`; `γ`
//!   and `β` have the shape of `x` on the normalised axes (in increasing axis
//!   order). apple/ml-stable-diffusion's layer norm normalises axis 1 of
//!   `[B, C, 1, S]`, which is handled without a transpose.
//! - `batch_norm(x, mean, variance, gamma, beta, epsilon)`: per channel
//!   (axis 1) with the given statistics. coremltools' GroupNorm lowering
//!   uses it with mean 0, variance 1 for the affine part.
//! - `instance_norm`: statistics over the spatial axes (2..) per sample and
//!   channel, then per-channel `γ`, `β`.
//! - `l2_norm(x, epsilon)`: `x / √(max(Σx², ε))` over every axis but the
//!   first (the batch).
//!
//! `epsilon` defaults to 1e-5 (1e-6 for `l2_norm`, as coremltools). Means
//! and variances accumulate in f64 (two passes), so a long row of large
//! values does not lose the variance.

use super::util::{axes, channel_affine, f32_vec, f32t, from_f32, with_f32};
use super::{bail, OpCtx, OpError, Registry};
use candle_core::Tensor;
use rayon::prelude::*;

/// Registers this family.
pub fn register(r: &mut Registry) {
    r.insert("layer_norm", layer_norm);
    r.insert("batch_norm", batch_norm);
    r.insert("instance_norm", instance_norm);
    r.insert("l2_norm", l2_norm);
}

fn layer_norm(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = f32t(c.tensor("x")?)?;
    let rank = x.rank();
    let mut ax = match c.opt_ints("axes")? {
        Some(a) => axes(&a, rank)?,
        None => (0..rank).collect(),
    };
    ax.sort_unstable();
    let eps = c.float_or("epsilon", 1e-5)?;
    let gamma = c.opt_tensor("gamma")?.map(f32t).transpose()?;
    let beta = c.opt_tensor("beta")?.map(f32t).transpose()?;
    Ok(vec![layer_norm_f32(
        &x,
        &ax,
        gamma.as_ref(),
        beta.as_ref(),
        eps,
    )?])
}

/// Layer norm of `x` over sorted axes `ax`.
pub fn layer_norm_f32(
    x: &Tensor,
    ax: &[usize],
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor, OpError> {
    let rank = x.rank();
    if ax.is_empty() {
        return bail("layer_norm: no axes to normalise");
    }
    let consecutive = ax.windows(2).all(|w| w[1] == w[0] + 1);
    // Non-adjacent axes: move them to the back, normalise, move back.
    let (xt, perm) = if consecutive {
        (x.clone(), None)
    } else {
        let mut perm: Vec<usize> = (0..rank).filter(|a| !ax.contains(a)).collect();
        perm.extend(ax);
        (x.permute(perm.clone())?.contiguous()?, Some(perm))
    };
    let (first, last) = if consecutive {
        (ax[0], ax[ax.len() - 1])
    } else {
        (rank - ax.len(), rank - 1)
    };
    let dims = xt.dims().to_vec();
    let outer: usize = dims[..first].iter().product();
    let len: usize = dims[first..=last].iter().product();
    let inner: usize = dims[last + 1..].iter().product();
    let y = from_f32(
        with_f32(&xt, |s| normalize(s, outer, len, inner, eps))?,
        &dims,
    )?;
    // γ and β cover the normalised axes; elsewhere they broadcast.
    let mut gshape = vec![1usize; rank];
    gshape[first..=last].copy_from_slice(&dims[first..=last]);
    let affine = |y: Tensor, p: Option<&Tensor>, mul: bool| -> Result<Tensor, OpError> {
        let Some(p) = p else { return Ok(y) };
        if p.elem_count() != len {
            return bail(format!(
                "layer_norm: gamma/beta have {} values, the normalised axes {len}",
                p.elem_count()
            ));
        }
        let p = p.reshape(gshape.as_slice())?;
        Ok(if mul {
            y.broadcast_mul(&p)?
        } else {
            y.broadcast_add(&p)?
        })
    };
    let y = affine(y, gamma, true)?;
    let y = affine(y, beta, false)?;
    Ok(match perm {
        None => y,
        Some(p) => {
            let mut inv = vec![0; rank];
            for (i, &q) in p.iter().enumerate() {
                inv[q] = i;
            }
            y.permute(inv)?.contiguous()?
        }
    })
}

/// `(x − μ)/√(σ² + ε)` over the middle axis of `[outer, len, inner]`.
fn normalize(src: &[f32], outer: usize, len: usize, inner: usize, eps: f64) -> Vec<f32> {
    let block = (len * inner).max(1);
    let mut out = vec![0f32; src.len()];
    out.par_chunks_mut(block)
        .zip(src.par_chunks(block))
        .take(outer)
        .for_each(|(o, s)| {
            let n = len as f64;
            if inner == 1 {
                let mean = s.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = s
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n;
                let k = (1.0 / (var + eps).sqrt()) as f32;
                let m = mean as f32;
                for (d, &v) in o.iter_mut().zip(s) {
                    *d = (v - m) * k;
                }
                return;
            }
            let mut mean = vec![0f64; inner];
            for row in s.chunks_exact(inner) {
                for (a, &v) in mean.iter_mut().zip(row) {
                    *a += f64::from(v);
                }
            }
            mean.iter_mut().for_each(|a| *a /= n);
            let mut var = vec![0f64; inner];
            for row in s.chunks_exact(inner) {
                for ((a, &v), &m) in var.iter_mut().zip(row).zip(&mean) {
                    *a += (f64::from(v) - m).powi(2);
                }
            }
            let k: Vec<f32> = var
                .iter()
                .map(|&v| (1.0 / (v / n + eps).sqrt()) as f32)
                .collect();
            let m: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
            for (orow, srow) in o.chunks_exact_mut(inner).zip(s.chunks_exact(inner)) {
                for j in 0..inner {
                    orow[j] = (srow[j] - m[j]) * k[j];
                }
            }
        });
    out
}

fn batch_norm(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = f32t(c.tensor("x")?)?;
    if x.rank() < 2 {
        return bail("batch_norm: x must have rank >= 2");
    }
    let ch = x.dims()[1];
    let eps = c.float_or("epsilon", 1e-5)?;
    let mean = channel_values(c.tensor("mean")?, ch, "mean")?;
    let var = channel_values(c.tensor("variance")?, ch, "variance")?;
    let gamma = c
        .opt_tensor("gamma")?
        .map(|g| channel_values(g, ch, "gamma"))
        .transpose()?;
    let beta = c
        .opt_tensor("beta")?
        .map(|b| channel_values(b, ch, "beta"))
        .transpose()?;
    // One pass: y = x·k + (β − μ·k) with k = γ/√(σ² + ε).
    let k: Vec<f32> = (0..ch)
        .map(|i| {
            let g = gamma.as_ref().map_or(1.0, |g| f64::from(g[i]));
            (g / (f64::from(var[i]) + eps).sqrt()) as f32
        })
        .collect();
    let shift: Vec<f32> = (0..ch)
        .map(|i| beta.as_ref().map_or(0.0, |b| b[i]) - mean[i] * k[i])
        .collect();
    Ok(vec![channel_affine(&x, Some(&k), Some(&shift))?])
}

fn instance_norm(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = f32t(c.tensor("x")?)?;
    if x.rank() < 3 {
        return bail("instance_norm: x must have rank >= 3");
    }
    let ch = x.dims()[1];
    let eps = c.float_or("epsilon", 1e-5)?;
    let rows = x.dims()[0] * ch;
    let spatial = x.elem_count() / rows.max(1);
    let y = from_f32(
        with_f32(&x, |s| normalize(s, rows, spatial, 1, eps))?,
        x.dims(),
    )?;
    let gamma = c
        .opt_tensor("gamma")?
        .map(|g| channel_values(g, ch, "gamma"))
        .transpose()?;
    let beta = c
        .opt_tensor("beta")?
        .map(|b| channel_values(b, ch, "beta"))
        .transpose()?;
    Ok(vec![channel_affine(&y, gamma.as_deref(), beta.as_deref())?])
}

/// A per-channel parameter as f32 values, checked against the channel count.
fn channel_values(v: &Tensor, ch: usize, what: &str) -> Result<Vec<f32>, OpError> {
    if v.elem_count() != ch {
        return bail(format!(
            "{what} has {} values for {ch} channels",
            v.elem_count()
        ));
    }
    f32_vec(v)
}

fn l2_norm(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = f32t(c.tensor("x")?)?;
    let eps = c.float_or("epsilon", 1e-6)?;
    if x.rank() < 1 {
        return bail("l2_norm: x must have rank >= 1");
    }
    let n = x.dims()[0].max(1);
    let row = x.elem_count() / n;
    let out = with_f32(&x, |s| {
        let mut o = s.to_vec();
        for r in o.chunks_exact_mut(row.max(1)) {
            let ss: f64 = r.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let k = (1.0 / ss.max(eps).sqrt()) as f32;
            r.iter_mut().for_each(|v| *v *= k);
        }
        o
    })?;
    Ok(vec![from_f32(out, x.dims())?])
}
