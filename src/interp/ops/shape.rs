//! Shape and indexing ops (`iOS15/tensor_transformation.py`,
//! `tensor_operation.py`, `scatter_gather.py`): reshape, transpose,
//! expand_dims, squeeze, concat, split, stack, slice_by_index,
//! slice_by_size, tile, gather, gather_along_axis, band_part, pad, reverse,
//! flatten2d, shape, fill, range_1d.
//!
//! Semantics worth knowing:
//! - `reshape`: one `-1` is inferred; `0` copies the input's dimension when
//!   the new shape has the input's rank.
//! - `expand_dims`: axes index the *output* (negative counts from its back).
//! - `slice_by_index`: Python slicing per axis (`begin`/`end` negative from
//!   the back, clamped; any non-zero `stride`, negative walks backwards);
//!   `begin_mask`/`end_mask` ignore `begin`/`end`; `squeeze_mask` picks the
//!   single index `begin` and drops the axis.
//! - `slice_by_size`: `size = −1` takes the rest of the axis.
//! - `gather`: negative indices count from the back of `axis`; output shape
//!   `x[:axis] + indices + x[axis+1:]`.
//! - `concat(interleave=true)`: takes one slice of each input in turn.
//! - `pad`: `pad` lists (before, after) for the last `len/2` axes; modes
//!   `constant` (`constant_val`), `reflect` (edge not repeated), `replicate`.

use super::util::{axes, axis, f32t, to_i64};
use super::{bail, OpCtx, OpError, Registry};
use candle_core::{Device, Tensor};

/// Registers this family.
pub fn register(r: &mut Registry) {
    r.insert("reshape", reshape);
    r.insert("transpose", |c| {
        let x = c.tensor("x")?;
        let perm = c.ints("perm")?;
        let p = axes(&perm, x.rank())?;
        if p.len() != x.rank() {
            return bail(format!(
                "transpose: perm {perm:?} does not cover rank {}",
                x.rank()
            ));
        }
        Ok(vec![x.permute(p)?])
    });
    r.insert("expand_dims", expand_dims);
    r.insert("squeeze", squeeze);
    r.insert("concat", concat);
    r.insert("split", split);
    r.insert("stack", |c| {
        let vals = tensors(c, "values")?;
        let a = axis(
            c.int_or("axis", 0)?,
            vals.first().map_or(0, |t| t.rank()) + 1,
        )?;
        Ok(vec![Tensor::stack(&vals, a)?])
    });
    r.insert("slice_by_index", slice_by_index);
    r.insert("slice_by_size", slice_by_size);
    r.insert("tile", |c| {
        let x = c.tensor("x")?;
        let reps = c.ints("reps")?;
        if reps.len() != x.rank() || reps.iter().any(|&v| v < 1) {
            return bail(format!(
                "tile: reps {reps:?} must hold {} positive values",
                x.rank()
            ));
        }
        let reps: Vec<usize> = reps.into_iter().map(|v| v as usize).collect();
        Ok(vec![x.repeat(reps)?])
    });
    r.insert("gather", gather);
    r.insert("gather_along_axis", gather_along_axis);
    r.insert("band_part", band_part);
    r.insert("pad", pad);
    r.insert("reverse", |c| {
        let x = c.tensor("x")?;
        let ax = match c.opt_ints("axes")? {
            Some(a) => axes(&a, x.rank())?,
            None => (0..x.rank()).collect(),
        };
        let mut t = x.clone();
        for a in ax {
            let n = t.dims()[a];
            let idx: Vec<i64> = (0..n as i64).rev().collect();
            t = take(&t, a, idx)?;
        }
        Ok(vec![t])
    });
    r.insert("flatten2d", |c| {
        let x = c.tensor("x")?;
        let a = c.int_or("axis", 1)?;
        let a = if a < 0 { a + x.rank() as i64 } else { a };
        if a < 0 || a as usize > x.rank() {
            return bail(format!("flatten2d: axis {a} out of range"));
        }
        let a = a as usize;
        let outer: usize = x.dims()[..a].iter().product();
        Ok(vec![x.reshape((outer, x.elem_count() / outer.max(1)))?])
    });
    r.insert("shape", |c| {
        let x = c.tensor("x")?;
        let v: Vec<i64> = x.dims().iter().map(|&d| d as i64).collect();
        Ok(vec![Tensor::from_vec(v, x.rank(), &Device::Cpu)?])
    });
    r.insert("fill", |c| {
        let shape = dims_of(&c.ints("shape")?)?;
        let v = c.float_or("value", 0.0)?;
        Ok(vec![Tensor::full(v as f32, shape, &Device::Cpu)?])
    });
    r.insert("range_1d", |c| {
        let start = c.float_or("start", 0.0)?;
        let end = c.float_or("end", 0.0)?;
        let step = c.float_or("step", 1.0)?;
        if step == 0.0 {
            return bail("range_1d: step is 0");
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        let v: Vec<f32> = (0..n).map(|i| (start + i as f64 * step) as f32).collect();
        Ok(vec![Tensor::from_vec(v, n, &Device::Cpu)?])
    });
}

fn tensors(c: &OpCtx<'_>, p: &str) -> Result<Vec<Tensor>, OpError> {
    let vals = c.values(p)?;
    let ts: Vec<&Tensor> = vals
        .iter()
        .map(|v| {
            v.tensor()
                .ok_or_else(|| OpError(format!("'{p}' holds a non-tensor")))
        })
        .collect::<Result<_, _>>()?;
    // Mixed float/int inputs (never in practice) are unified as f32.
    if ts.windows(2).all(|w| w[0].dtype() == w[1].dtype()) {
        Ok(ts.into_iter().cloned().collect())
    } else {
        ts.into_iter().map(f32t).collect()
    }
}

fn dims_of(v: &[i64]) -> Result<Vec<usize>, OpError> {
    v.iter()
        .map(|&d| usize::try_from(d).map_err(|_| OpError(format!("negative dimension {d}"))))
        .collect()
}

fn reshape(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = c.tensor("x")?;
    let spec = c.ints("shape")?;
    let mut shape = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        shape.push(match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            0 if spec.len() == x.rank() => x.dims()[i],
            d if d > 0 => d as usize,
            _ => return bail(format!("reshape: invalid shape {spec:?}")),
        });
    }
    if let Some(i) = infer {
        let known: usize = shape.iter().product();
        if known == 0 || x.elem_count() % known != 0 {
            return bail(format!(
                "reshape: cannot infer -1 in {spec:?} for {} elements",
                x.elem_count()
            ));
        }
        shape[i] = x.elem_count() / known;
    }
    if shape.iter().product::<usize>() != x.elem_count() {
        return bail(format!(
            "reshape: {:?} has {} elements, shape {spec:?} does not",
            x.dims(),
            x.elem_count()
        ));
    }
    Ok(vec![x.reshape(shape)?])
}

fn expand_dims(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = c.tensor("x")?;
    let a = c.ints("axes")?;
    let out_rank = x.rank() + a.len();
    let mut ax = axes(&a, out_rank)?;
    ax.sort_unstable();
    let mut shape = x.dims().to_vec();
    for &p in &ax {
        shape.insert(p, 1);
    }
    Ok(vec![x.reshape(shape)?])
}

fn squeeze(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = c.tensor("x")?;
    let ax = match c.opt_ints("axes")? {
        Some(a) => axes(&a, x.rank())?,
        None => (0..x.rank()).filter(|&i| x.dims()[i] == 1).collect(),
    };
    for &a in &ax {
        if x.dims()[a] != 1 {
            return bail(format!(
                "squeeze: axis {a} of {:?} has size {}",
                x.dims(),
                x.dims()[a]
            ));
        }
    }
    let shape: Vec<usize> = x
        .dims()
        .iter()
        .enumerate()
        .filter(|(i, _)| !ax.contains(i))
        .map(|(_, &d)| d)
        .collect();
    Ok(vec![x.reshape(shape)?])
}

fn concat(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let vals = tensors(c, "values")?;
    let Some(first) = vals.first() else {
        return bail("concat: no values");
    };
    let a = axis(c.int_or("axis", 0)?, first.rank())?;
    if c.bool_or("interleave", false)? {
        if vals.iter().any(|t| t.dims() != first.dims()) {
            return bail("concat: interleave needs inputs of one shape");
        }
        let s = Tensor::stack(&vals, a + 1)?;
        let mut shape = first.dims().to_vec();
        shape[a] *= vals.len();
        return Ok(vec![s.reshape(shape)?]);
    }
    Ok(vec![Tensor::cat(&vals, a)?])
}

fn split(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = c.tensor("x")?;
    let a = axis(c.int_or("axis", 0)?, x.rank())?;
    let len = x.dims()[a];
    let sizes: Vec<usize> = match c.opt_ints("split_sizes")? {
        Some(s) => dims_of(&s)?,
        None => {
            let n = c.int_or("num_splits", c.n_outputs() as i64)?;
            if n < 1 || len % n as usize != 0 {
                return bail(format!("split: {len} is not divisible into {n} parts"));
            }
            vec![len / n as usize; n as usize]
        }
    };
    if sizes.iter().sum::<usize>() != len {
        return bail(format!("split: sizes {sizes:?} do not add up to {len}"));
    }
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for s in sizes {
        out.push(x.narrow(a, start, s)?);
        start += s;
    }
    Ok(out)
}

/// `index_select` along `a` with i64 indices.
fn take(t: &Tensor, a: usize, idx: Vec<i64>) -> Result<Tensor, OpError> {
    let n = idx.len();
    let i = Tensor::from_vec(idx, n, &Device::Cpu)?;
    Ok(t.contiguous()?.index_select(&i, a)?)
}

/// Python's `slice(b, e, s).indices(n)` as the list of indices taken.
fn py_slice(b: Option<i64>, e: Option<i64>, s: i64, n: i64) -> Vec<i64> {
    let (lower, upper) = if s > 0 { (0, n) } else { (-1, n - 1) };
    let clamp = |v: i64| {
        if v < 0 {
            (v + n).max(lower)
        } else {
            v.min(upper)
        }
    };
    let start = b.map_or(if s > 0 { lower } else { upper }, clamp);
    let stop = e.map_or(if s > 0 { upper } else { lower }, clamp);
    let mut out = Vec::new();
    let mut i = start;
    while (s > 0 && i < stop) || (s < 0 && i > stop) {
        out.push(i);
        i += s;
    }
    out
}

fn slice_by_index(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = c.tensor("x")?;
    let rank = x.rank();
    let begin = c.ints("begin")?;
    let end = c.ints("end")?;
    let stride = c.opt_ints("stride")?.unwrap_or_else(|| vec![1; rank]);
    let no = vec![false; rank];
    let bm = c.opt_bools("begin_mask")?.unwrap_or_else(|| no.clone());
    let em = c.opt_bools("end_mask")?.unwrap_or_else(|| no.clone());
    let sm = c.opt_bools("squeeze_mask")?.unwrap_or_else(|| no.clone());
    if [
        begin.len(),
        end.len(),
        stride.len(),
        bm.len(),
        em.len(),
        sm.len(),
    ]
    .iter()
    .any(|&l| l != rank)
    {
        return bail(format!(
            "slice_by_index: begin/end/stride/masks must have {rank} entries"
        ));
    }
    let mut t = x.clone();
    let mut keep = Vec::with_capacity(rank);
    for a in 0..rank {
        let n = x.dims()[a] as i64;
        if sm[a] {
            let i = if begin[a] < 0 { begin[a] + n } else { begin[a] };
            if i < 0 || i >= n {
                return bail(format!(
                    "slice_by_index: index {} is out of range for axis {a} of size {n}",
                    begin[a]
                ));
            }
            t = t.narrow(a, i as usize, 1)?;
            continue;
        }
        keep.push(a);
        let s = stride[a];
        if s == 0 {
            return bail("slice_by_index: stride 0");
        }
        let idx = py_slice(
            (!bm[a]).then_some(begin[a]),
            (!em[a]).then_some(end[a]),
            s,
            n,
        );
        if s == 1 {
            let start = idx.first().copied().unwrap_or(0) as usize;
            t = t.narrow(a, start.min(n as usize), idx.len())?;
        } else {
            t = take(&t, a, idx)?;
        }
    }
    let shape: Vec<usize> = keep.iter().map(|&a| t.dims()[a]).collect();
    Ok(vec![t.reshape(shape)?])
}

fn slice_by_size(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = c.tensor("x")?;
    let begin = c.ints("begin")?;
    let size = c.ints("size")?;
    if begin.len() != x.rank() || size.len() != x.rank() {
        return bail(format!(
            "slice_by_size: begin and size must have {} entries",
            x.rank()
        ));
    }
    let mut t = x.clone();
    for a in 0..x.rank() {
        let n = x.dims()[a] as i64;
        let b = if begin[a] < 0 { begin[a] + n } else { begin[a] };
        let len = if size[a] == -1 { n - b } else { size[a] };
        if b < 0 || len < 0 || b + len > n {
            return bail(format!(
                "slice_by_size: begin {} size {} do not fit axis {a} of size {n}",
                begin[a], size[a]
            ));
        }
        t = t.narrow(a, b as usize, len as usize)?;
    }
    Ok(vec![t])
}

fn gather(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = c.tensor("x")?;
    let ind = c.tensor("indices")?;
    let a = axis(c.int_or("axis", 0)?, x.rank())?;
    if c.int_or("batch_dims", 0)? != 0 {
        return bail("gather: batch_dims other than 0 is not supported");
    }
    let n = x.dims()[a] as i64;
    let idx = fix_indices(to_i64(ind)?, n)?;
    let r = take(x, a, idx)?;
    let mut shape = x.dims()[..a].to_vec();
    shape.extend(ind.dims());
    shape.extend(&x.dims()[a + 1..]);
    Ok(vec![r.reshape(shape)?])
}

fn fix_indices(v: Vec<i64>, n: i64) -> Result<Vec<i64>, OpError> {
    v.into_iter()
        .map(|i| {
            let j = if i < 0 { i + n } else { i };
            if j < 0 || j >= n {
                bail(format!("index {i} is out of range for an axis of size {n}"))
            } else {
                Ok(j)
            }
        })
        .collect()
}

fn gather_along_axis(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = c.tensor("x")?;
    let ind = c.tensor("indices")?;
    let a = axis(c.int_or("axis", 0)?, x.rank())?;
    let n = x.dims()[a] as i64;
    let idx = fix_indices(to_i64(ind)?, n)?;
    let i = Tensor::from_vec(idx, ind.dims(), &Device::Cpu)?;
    Ok(vec![x.contiguous()?.gather(&i, a)?])
}

fn band_part(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = c.tensor("x")?;
    let lower = c.int_or("lower", -1)?;
    let upper = c.int_or("upper", -1)?;
    if x.rank() < 2 {
        return bail("band_part: x must have rank >= 2");
    }
    let (m, n) = (x.dims()[x.rank() - 2], x.dims()[x.rank() - 1]);
    let mut mask = vec![0u8; m * n];
    for i in 0..m as i64 {
        for j in 0..n as i64 {
            let keep = (lower < 0 || i - j <= lower) && (upper < 0 || j - i <= upper);
            mask[(i * n as i64 + j) as usize] = u8::from(keep);
        }
    }
    let mask = Tensor::from_vec(mask, (m, n), &Device::Cpu)?.broadcast_as(x.shape())?;
    let zero = x.zeros_like()?;
    Ok(vec![mask.where_cond(x, &zero)?])
}

fn pad(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = f32t(c.tensor("x")?)?;
    let p = c.ints("pad")?;
    let mode = c.str_or("mode", "constant")?;
    let val = c.float_or("constant_val", 0.0)? as f32;
    if p.len() % 2 != 0 || p.len() / 2 > x.rank() || p.iter().any(|&v| v < 0) {
        return bail(format!("pad: invalid pad {p:?} for rank {}", x.rank()));
    }
    let first = x.rank() - p.len() / 2;
    let mut t = x;
    for (k, a) in (first..t.rank()).enumerate() {
        let (b, e) = (p[2 * k] as usize, p[2 * k + 1] as usize);
        if b == 0 && e == 0 {
            continue;
        }
        let n = t.dims()[a];
        t = match mode {
            "constant" => {
                let mut parts = Vec::new();
                let mut shape = t.dims().to_vec();
                if b > 0 {
                    shape[a] = b;
                    parts.push(Tensor::full(val, shape.as_slice(), &Device::Cpu)?);
                }
                parts.push(t.clone());
                if e > 0 {
                    shape[a] = e;
                    parts.push(Tensor::full(val, shape.as_slice(), &Device::Cpu)?);
                }
                Tensor::cat(&parts, a)?
            }
            "reflect" | "replicate" => {
                let ni = n as i64;
                if mode == "reflect" && (b >= n || e >= n) {
                    return bail("pad: reflect padding must be smaller than the axis");
                }
                let idx: Vec<i64> = (-(b as i64)..ni + e as i64)
                    .map(|i| match mode {
                        "reflect" if i < 0 => -i,
                        "reflect" if i >= ni => 2 * (ni - 1) - i,
                        _ => i.clamp(0, ni - 1),
                    })
                    .collect();
                take(&t, a, idx)?
            }
            m => return bail(format!("pad: unknown mode '{m}'")),
        };
    }
    Ok(vec![t])
}
