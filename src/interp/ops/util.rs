//! Small helpers shared by the op families: axis normalisation, broadcast
//! shapes, and direct access to a tensor's f32 elements for the kernels
//! that candle does not have (softmax, norms, im2col).

use super::{bail, OpError};
use candle_core::{DType as CD, Device, Storage, Tensor};
use rayon::prelude::*;

/// Normalises axis `a` (negative counts from the back) for rank `rank`.
pub fn axis(a: i64, rank: usize) -> Result<usize, OpError> {
    let r = rank as i64;
    let x = if a < 0 { a + r } else { a };
    if x < 0 || x >= r {
        return bail(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(x as usize)
}

/// Normalises a list of axes, rejecting duplicates.
pub fn axes(a: &[i64], rank: usize) -> Result<Vec<usize>, OpError> {
    let mut out = Vec::with_capacity(a.len());
    for &x in a {
        let n = axis(x, rank)?;
        if out.contains(&n) {
            return bail(format!("axis {x} is repeated"));
        }
        out.push(n);
    }
    Ok(out)
}

/// NumPy broadcast of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, OpError> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let y = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return bail(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

/// Elements widened to i64 (integer, bool or float tensors; floats are
/// truncated).
pub fn to_i64(t: &Tensor) -> Result<Vec<i64>, OpError> {
    let t = t.flatten_all()?;
    let t = if t.dtype() == CD::I64 {
        t
    } else {
        t.to_dtype(CD::I64)?
    };
    Ok(t.to_vec1::<i64>()?)
}

/// The tensor as f32 (a no-op for the interpreter's float values).
pub fn f32t(t: &Tensor) -> Result<Tensor, OpError> {
    Ok(if t.dtype() == CD::F32 {
        t.clone()
    } else {
        t.to_dtype(CD::F32)?
    })
}

/// Calls `f` with the contiguous f32 elements of `t` (row-major).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R, OpError> {
    let t = f32t(t)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return bail("tensor is not on the CPU");
    };
    let all = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    let n = layout.shape().elem_count();
    match all.get(start..start + n) {
        Some(s) => Ok(f(s)),
        None => bail("tensor storage is shorter than its layout"),
    }
}

/// A new f32 tensor.
pub fn from_f32(v: Vec<f32>, shape: &[usize]) -> Result<Tensor, OpError> {
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Splits `shape` around `axis` into (outer, len, inner) element counts.
pub fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// Elementwise `f(a, b)` with NumPy broadcasting, on f32 data.
///
/// Output axes are merged wherever both operands step through them
/// uniformly, so the inner loop runs over the longest possible stretch with
/// each operand either contiguous or constant (`[1,C,H,W] · [1,C,1,1]`
/// becomes C runs of H·W against one value). Large outputs are split
/// across threads by output rows; results do not depend on the split.
pub fn broadcast_f32(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Tensor, OpError> {
    let shape = broadcast_shape(a.dims(), b.dims())?;
    let n: usize = shape.iter().product();
    let rank = shape.len();
    // Strides of each operand in output coordinates (0 where broadcast).
    let strides = |d: &[usize]| -> Vec<usize> {
        let mut s = vec![0; rank];
        let mut acc = 1;
        for i in (0..d.len()).rev() {
            let o = rank - d.len() + i;
            s[o] = if d[i] == 1 { 0 } else { acc };
            acc *= d[i];
        }
        s
    };
    let (sa, sb) = (strides(a.dims()), strides(b.dims()));
    // Merge adjacent axes (from the back) while both operands stay uniform.
    let mut dims: Vec<(usize, usize, usize)> = Vec::new(); // (len, stride a, stride b)
    for i in (0..rank).rev() {
        let (len, x, y) = (shape[i], sa[i], sb[i]);
        if len == 1 {
            continue;
        }
        if let Some(last) = dims.last_mut() {
            if x == last.1 * last.0 && y == last.2 * last.0 {
                last.0 *= len;
                continue;
            }
        }
        dims.push((len, x, y));
    }
    dims.reverse();
    let (inner, ia, ib) = dims.pop().unwrap_or((1, 0, 0));
    let outer_dims = dims;
    let out = with_f32(a, |xa| {
        with_f32(b, |xb| {
            let mut out = vec![0f32; n];
            let row = |r: usize, dst: &mut [f32]| {
                // Offsets of row `r` in each operand.
                let (mut oa, mut ob, mut rem) = (0, 0, r);
                for &(len, x, y) in outer_dims.iter().rev() {
                    let k = rem % len;
                    rem /= len;
                    oa += k * x;
                    ob += k * y;
                }
                match (ia, ib) {
                    (1, 1) => {
                        for ((d, &p), &q) in dst.iter_mut().zip(&xa[oa..]).zip(&xb[ob..]) {
                            *d = f(p, q);
                        }
                    }
                    (1, 0) => {
                        let q = xb[ob];
                        for (d, &p) in dst.iter_mut().zip(&xa[oa..]) {
                            *d = f(p, q);
                        }
                    }
                    (0, 1) => {
                        let p = xa[oa];
                        for (d, &q) in dst.iter_mut().zip(&xb[ob..]) {
                            *d = f(p, q);
                        }
                    }
                    _ => {
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = f(xa[oa + j * ia], xb[ob + j * ib]);
                        }
                    }
                }
            };
            if n >= 1 << 16 {
                out.par_chunks_mut(inner.max(1))
                    .enumerate()
                    .for_each(|(r, d)| row(r, d));
            } else {
                for (r, d) in out.chunks_mut(inner.max(1)).enumerate() {
                    row(r, d);
                }
            }
            out
        })
    })??;
    from_f32(out, &shape)
}

/// `x·scale[c] + shift[c]` with `c` the index along axis 1 of `x` (rank ≥
/// 2); a missing scale is 1, a missing shift 0.
pub fn channel_affine(
    x: &Tensor,
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
) -> Result<Tensor, OpError> {
    let dims = x.dims().to_vec();
    if dims.len() < 2 {
        return bail("per-channel affine needs rank >= 2");
    }
    let ch = dims[1];
    for v in [scale, shift].into_iter().flatten() {
        if v.len() != ch {
            return bail(format!("{} per-channel values for {ch} channels", v.len()));
        }
    }
    let inner: usize = dims[2..].iter().product();
    let out = with_f32(x, |s| {
        let mut o = s.to_vec();
        o.par_chunks_mut(inner.max(1))
            .enumerate()
            .for_each(|(r, run)| {
                let c = r % ch;
                let k = scale.map_or(1.0, |v| v[c]);
                let b = shift.map_or(0.0, |v| v[c]);
                run.iter_mut().for_each(|v| *v = *v * k + b);
            });
        o
    })?;
    from_f32(out, &dims)
}

/// The f32 elements of `t` (row-major copy).
pub fn f32_vec(t: &Tensor) -> Result<Vec<f32>, OpError> {
    with_f32(t, |s| s.to_vec())
}
