//! Elementwise ops: binary arithmetic and comparisons with NumPy
//! broadcasting, unary math, `clip`, `cast`, `select`.
//!
//! Binary ops follow MIL (`iOS15/elementwise_binary.py`): `x` and `y`
//! broadcast NumPy-style; `real_div` is true division, `floor_div` floors
//! the quotient, `mod` takes the sign of the divisor (NumPy). Unary ops with
//! an `epsilon` use coremltools' defaults: `rsqrt` 1e-12, `inverse` 1e-4,
//! `log` 1e-45 (`log(x + eps)`). `round` rounds half to even.

use super::util::{broadcast_f32, broadcast_shape, f32t, from_f32, with_f32};
use super::{OpCtx, OpError, Registry};
use candle_core::{DType as CD, Tensor};

/// Registers this family.
pub fn register(r: &mut Registry) {
    r.insert("add", |c| arith(c, |a, b| a.broadcast_add(b), |a, b| a + b));
    r.insert("sub", |c| arith(c, |a, b| a.broadcast_sub(b), |a, b| a - b));
    r.insert("mul", |c| arith(c, |a, b| a.broadcast_mul(b), |a, b| a * b));
    r.insert("real_div", |c| zip(c, |a, b| a / b));
    r.insert("maximum", |c| {
        arith(c, |a, b| a.broadcast_maximum(b), f32::max)
    });
    r.insert("minimum", |c| {
        arith(c, |a, b| a.broadcast_minimum(b), f32::min)
    });
    r.insert("pow", |c| zip(c, f32::powf));
    r.insert("floor_div", |c| zip(c, |a, b| (a / b).floor()));
    r.insert("mod", |c| zip(c, |a, b| a - (a / b).floor() * b));
    r.insert("equal", |c| compare(c, |a, b| a.broadcast_eq(b)));
    r.insert("not_equal", |c| compare(c, |a, b| a.broadcast_ne(b)));
    r.insert("less", |c| compare(c, |a, b| a.broadcast_lt(b)));
    r.insert("less_equal", |c| compare(c, |a, b| a.broadcast_le(b)));
    r.insert("greater", |c| compare(c, |a, b| a.broadcast_gt(b)));
    r.insert("greater_equal", |c| compare(c, |a, b| a.broadcast_ge(b)));
    r.insert("logical_and", |c| {
        zip(c, |a, b| bool_f(a != 0.0 && b != 0.0))
    });
    r.insert("logical_or", |c| {
        zip(c, |a, b| bool_f(a != 0.0 || b != 0.0))
    });
    r.insert("logical_xor", |c| {
        zip(c, |a, b| bool_f((a != 0.0) != (b != 0.0)))
    });
    r.insert("logical_not", |c| map(c, |a| bool_f(a == 0.0)));

    r.insert("sqrt", |c| Ok(vec![x(c)?.sqrt()?]));
    r.insert("square", |c| Ok(vec![x(c)?.sqr()?]));
    r.insert("exp", |c| Ok(vec![x(c)?.exp()?]));
    r.insert("exp2", |c| map(c, f32::exp2));
    r.insert("sin", |c| Ok(vec![x(c)?.sin()?]));
    r.insert("cos", |c| Ok(vec![x(c)?.cos()?]));
    r.insert("tan", |c| map(c, f32::tan));
    r.insert("tanh", |c| Ok(vec![x(c)?.tanh()?]));
    r.insert("sinh", |c| map(c, f32::sinh));
    r.insert("cosh", |c| map(c, f32::cosh));
    r.insert("asin", |c| map(c, f32::asin));
    r.insert("acos", |c| map(c, f32::acos));
    r.insert("atan", |c| map(c, f32::atan));
    r.insert("atanh", |c| map(c, f32::atanh));
    r.insert("abs", |c| Ok(vec![x(c)?.abs()?]));
    r.insert("floor", |c| Ok(vec![x(c)?.floor()?]));
    r.insert("ceil", |c| Ok(vec![x(c)?.ceil()?]));
    r.insert("round", |c| map(c, f32::round_ties_even));
    r.insert("sign", |c| {
        map(c, |a| {
            if a > 0.0 {
                1.0
            } else if a < 0.0 {
                -1.0
            } else {
                0.0
            }
        })
    });
    r.insert("erf", |c| Ok(vec![x(c)?.erf()?]));
    r.insert("rsqrt", |c| {
        let eps = c.float_or("epsilon", 1e-12)?;
        Ok(vec![(x(c)? + eps)?.sqrt()?.recip()?])
    });
    r.insert("inverse", |c| {
        let eps = c.float_or("epsilon", 1e-4)?;
        Ok(vec![(x(c)? + eps)?.recip()?])
    });
    r.insert("log", |c| {
        let eps = c.float_or("epsilon", 1e-45)?;
        Ok(vec![(x(c)? + eps)?.log()?])
    });
    r.insert("threshold", |c| {
        let alpha = c.float_or("alpha", 0.0)? as f32;
        map(c, move |a| a.max(alpha))
    });
    r.insert("clip", |c| {
        let lo = c.float_or("alpha", f64::NEG_INFINITY)? as f32;
        let hi = c.float_or("beta", f64::INFINITY)? as f32;
        map(c, move |a| a.max(lo).min(hi))
    });
    // The runner converts to the declared dtype (truncation towards zero for
    // integers, non-zero for bool), which is exactly the cast.
    r.insert("cast", |c| Ok(vec![c.tensor("x")?.clone()]));
    r.insert("identity", |c| Ok(vec![c.tensor("x")?.clone()]));
    r.insert("select", select);
}

fn bool_f(b: bool) -> f32 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// `x` as f32.
fn x(c: &OpCtx<'_>) -> Result<Tensor, OpError> {
    f32t(c.tensor("x")?)
}

/// `x` and `y`, both as f32 unless both are integers (shape arithmetic
/// stays exact in i64).
fn operands(c: &OpCtx<'_>) -> Result<(Tensor, Tensor), OpError> {
    let a = c.tensor("x")?;
    let b = c.tensor("y")?;
    if a.dtype() == b.dtype() {
        Ok((a.clone(), b.clone()))
    } else {
        Ok((f32t(a)?, f32t(b)?))
    }
}

fn floats(c: &OpCtx<'_>) -> Result<(Tensor, Tensor), OpError> {
    Ok((f32t(c.tensor("x")?)?, f32t(c.tensor("y")?)?))
}

/// Integer operands (shape arithmetic) go through candle in i64 so they
/// stay exact; floats (and bools) through [`broadcast_f32`].
fn arith(
    c: &OpCtx<'_>,
    int: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    float: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Vec<Tensor>, OpError> {
    let (a, b) = operands(c)?;
    if a.dtype() == CD::I64 {
        return Ok(vec![int(&a, &b)?]);
    }
    Ok(vec![broadcast_f32(&a, &b, float)?])
}

fn compare(
    c: &OpCtx<'_>,
    f: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<Vec<Tensor>, OpError> {
    let (a, b) = operands(c)?;
    Ok(vec![f(&a, &b)?])
}

/// Elementwise `f` over broadcast `x` and `y` in f32.
fn zip(c: &OpCtx<'_>, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Vec<Tensor>, OpError> {
    let (a, b) = floats(c)?;
    Ok(vec![broadcast_f32(&a, &b, f)?])
}

/// Elementwise `f` over `x` in f32.
fn map(c: &OpCtx<'_>, f: impl Fn(f32) -> f32) -> Result<Vec<Tensor>, OpError> {
    let t = c.tensor("x")?;
    Ok(vec![map_f32(t, f)?])
}

/// Elementwise `f` over a tensor.
pub fn map_f32(t: &Tensor, f: impl Fn(f32) -> f32) -> Result<Tensor, OpError> {
    let out = with_f32(t, |x| x.iter().map(|&v| f(v)).collect::<Vec<f32>>())?;
    from_f32(out, t.dims())
}

/// `select(cond, a, b)`: `a` where `cond` is true, else `b`, broadcast.
fn select(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let cond = c.tensor("cond")?;
    let a = c.tensor("a")?;
    let b = c.tensor("b")?;
    let shape = broadcast_shape(&broadcast_shape(cond.dims(), a.dims())?, b.dims())?;
    let (a, b) = if a.dtype() == b.dtype() {
        (a.clone(), b.clone())
    } else {
        (f32t(a)?, f32t(b)?)
    };
    let cond = cond.ne(0f64)?.broadcast_as(shape.as_slice())?;
    Ok(vec![cond.where_cond(
        &a.broadcast_as(shape.as_slice())?,
        &b.broadcast_as(shape.as_slice())?,
    )?])
}
