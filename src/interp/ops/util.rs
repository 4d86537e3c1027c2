//! Small helpers shared by the op families: axis normalisation, broadcast
//! shapes, and direct access to a tensor's f32 elements for the kernels
//! that candle does not have (softmax, norms, im2col).

use super::{bail, OpError};
use candle_core::{DType as CD, Device, Storage, Tensor};

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
