//! Activations (`iOS15/activation.py`): relu family, sigmoid, silu, gelu in
//! its three modes, softmax along any axis, softplus and friends.
//!
//! gelu: `EXACT` is `0.5·x·(1 + erf(x/√2))`, `TANH_APPROXIMATION` is
//! `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, `SIGMOID_APPROXIMATION` is
//! `x·sigmoid(1.702·x)`. softmax defaults to `axis = -1` and subtracts the
//! maximum first (so large logits do not overflow).

use super::elementwise::map_f32;
use super::util::{around, axis, f32t, from_f32, with_f32};
use super::{bail, OpCtx, OpError, Registry};
use candle_core::Tensor;
use rayon::prelude::*;

/// Registers this family.
pub fn register(r: &mut Registry) {
    r.insert("relu", |c| Ok(vec![x(c)?.relu()?]));
    r.insert("relu6", |c| un(c, |v| v.clamp(0.0, 6.0)));
    r.insert("sigmoid", |c| un(c, sigmoid));
    r.insert("silu", |c| Ok(vec![x(c)?.silu()?]));
    r.insert("softsign", |c| un(c, |v| v / (1.0 + v.abs())));
    r.insert("softplus", |c| un(c, softplus));
    r.insert("gelu", gelu);
    r.insert("softmax", |c| {
        let t = x(c)?;
        let ax = axis(c.int_or("axis", -1)?, t.rank())?;
        Ok(vec![softmax(&t, ax)?])
    });
    r.insert("leaky_relu", |c| {
        let a = c.float_or("alpha", 0.01)? as f32;
        un(c, move |v| if v >= 0.0 { v } else { a * v })
    });
    r.insert("elu", |c| {
        let a = c.float_or("alpha", 1.0)? as f32;
        un(c, move |v| if v > 0.0 { v } else { a * (v.exp() - 1.0) })
    });
    r.insert("thresholded_relu", |c| {
        let a = c.float_or("alpha", 1.0)? as f32;
        un(c, move |v| if v >= a { v } else { 0.0 })
    });
    r.insert("clamped_relu", |c| {
        let a = c.float_or("alpha", 0.0)? as f32;
        let b = c.float_or("beta", 6.0)? as f32;
        un(c, move |v| if v >= 0.0 { v.min(b) } else { (a * v).min(b) })
    });
    r.insert("sigmoid_hard", |c| {
        let a = c.float_or("alpha", 0.2)? as f32;
        let b = c.float_or("beta", 0.5)? as f32;
        un(c, move |v| (a * v + b).clamp(0.0, 1.0))
    });
    r.insert("linear_activation", |c| {
        let a = c.float_or("alpha", 1.0)? as f32;
        let b = c.float_or("beta", 0.0)? as f32;
        un(c, move |v| a * v + b)
    });
    r.insert("scaled_tanh", |c| {
        let a = c.float_or("alpha", 1.0)? as f32;
        let b = c.float_or("beta", 1.0)? as f32;
        un(c, move |v| a * (b * v).tanh())
    });
    r.insert("prelu", prelu);
}

fn x(c: &OpCtx<'_>) -> Result<Tensor, OpError> {
    f32t(c.tensor("x")?)
}

fn un(c: &OpCtx<'_>, f: impl Fn(f32) -> f32) -> Result<Vec<Tensor>, OpError> {
    Ok(vec![map_f32(c.tensor("x")?, f)?])
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

fn softplus(v: f32) -> f32 {
    // log(1 + e^v) without overflow for large v.
    if v > 20.0 {
        v
    } else {
        v.exp().ln_1p()
    }
}

fn gelu(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let t = x(c)?;
    Ok(vec![match c.str_or("mode", "EXACT")? {
        "EXACT" => t.gelu_erf()?,
        "TANH_APPROXIMATION" => {
            let k = (2.0 / std::f32::consts::PI).sqrt();
            map_f32(&t, |v| {
                0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh())
            })?
        }
        "SIGMOID_APPROXIMATION" => map_f32(&t, |v| v * sigmoid(1.702 * v))?,
        m => return bail(format!("unknown gelu mode '{m}'")),
    }])
}

/// `prelu(x, alpha)`: per-channel (axis 1) slope for negative values.
fn prelu(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let t = x(c)?;
    let alpha = f32t(c.tensor("alpha")?)?;
    if t.rank() < 2 || alpha.elem_count() != t.dims()[1] {
        return bail("prelu: alpha must have one value per channel (axis 1)");
    }
    let mut shape = vec![1; t.rank()];
    shape[1] = t.dims()[1];
    let a = alpha.reshape(shape)?.broadcast_as(t.shape())?;
    let pos = t.relu()?;
    let neg = t.minimum(0f64)?.mul(&a)?;
    Ok(vec![(pos + neg)?])
}

/// Softmax of `t` along `ax` (f32 result).
pub fn softmax(t: &Tensor, ax: usize) -> Result<Tensor, OpError> {
    let (outer, len, inner) = around(t.dims(), ax);
    if len == 0 {
        return Ok(t.clone());
    }
    let out = with_f32(t, |src| {
        let mut out = vec![0f32; src.len()];
        let block = len * inner;
        out.par_chunks_mut(block.max(1))
            .zip(src.par_chunks(block.max(1)))
            .take(outer)
            .for_each(|(o, s)| softmax_block(s, o, inner));
        out
    })?;
    from_f32(out, t.dims())
}

/// One `[len, inner]` block, normalised along `len`.
fn softmax_block(s: &[f32], o: &mut [f32], inner: usize) {
    if inner == 1 {
        let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0f32;
        for (d, &v) in o.iter_mut().zip(s) {
            let e = (v - m).exp();
            *d = e;
            sum += e;
        }
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|d| *d *= inv);
        return;
    }
    // Strided case: reduce over rows of length `inner`, so every pass is a
    // contiguous sweep.
    let mut m = s[..inner].to_vec();
    for row in s.chunks_exact(inner).skip(1) {
        for (a, &b) in m.iter_mut().zip(row) {
            *a = a.max(b);
        }
    }
    let mut sum = vec![0f32; inner];
    for (orow, srow) in o.chunks_exact_mut(inner).zip(s.chunks_exact(inner)) {
        for j in 0..inner {
            let e = (srow[j] - m[j]).exp();
            orow[j] = e;
            sum[j] += e;
        }
    }
    for v in &mut sum {
        *v = 1.0 / *v;
    }
    for orow in o.chunks_exact_mut(inner) {
        for (d, &k) in orow.iter_mut().zip(&sum) {
            *d *= k;
        }
    }
}
