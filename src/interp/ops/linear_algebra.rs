//! `linear`, `matmul` and `einsum` (`iOS15/linear.py`), all lowered to
//! candle's batched matmul (the gemm crate).
//!
//! - `linear(x, weight, bias)`: `x · weightᵀ + bias`, weight `[out, in]`;
//!   leading dimensions of `x` are folded into the rows of one gemm.
//! - `matmul(x, y, transpose_x, transpose_y)`: NumPy `matmul` (1-D operands
//!   promoted and the inserted axis removed again, batch dimensions
//!   broadcast).
//! - `einsum(values, equation)`: any two-operand equation without repeated
//!   indices within one operand or ellipses. coremltools only emits the
//!   `nchw,nwhu->nchu` family (apple/ml-stable-diffusion's split attention
//!   uses `bkhc,bchq->bkhq` and `bchk,bkhq->bchq`), which is covered; so are
//!   permutations, batch broadcasting (size-1 batch axes) and indices summed
//!   away from one operand. A one-operand equation permutes and sums.

use super::util::{broadcast_shape, f32t};
use super::{bail, OpCtx, OpError, Registry};
use candle_core::Tensor;

/// Registers this family.
pub fn register(r: &mut Registry) {
    r.insert("linear", linear);
    r.insert("matmul", |c| {
        let x = f32t(c.tensor("x")?)?;
        let y = f32t(c.tensor("y")?)?;
        let tx = c.bool_or("transpose_x", false)?;
        let ty = c.bool_or("transpose_y", false)?;
        Ok(vec![matmul(&x, &y, tx, ty)?])
    });
    r.insert("einsum", |c| {
        let vals = c.values("values")?;
        let eq = c.str_or("equation", "")?;
        let ts = vals
            .iter()
            .map(|v| {
                v.tensor()
                    .ok_or_else(|| OpError("einsum operand is not a tensor".into()))
                    .and_then(f32t)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![einsum(eq, &ts)?])
    });
}

fn linear(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = f32t(c.tensor("x")?)?;
    let w = f32t(c.tensor("weight")?)?;
    let b = c.opt_tensor("bias")?.map(f32t).transpose()?;
    Ok(vec![linear_f32(&x, &w, b.as_ref())?])
}

/// `x · wᵀ + b` with `w` `[out, in]`.
pub fn linear_f32(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor, OpError> {
    let (out_f, in_f) = w.dims2()?;
    let dims = x.dims();
    let Some(&last) = dims.last() else {
        return bail("linear: x must have rank >= 1");
    };
    if last != in_f {
        return bail(format!(
            "linear: x has {last} features, weight expects {in_f}"
        ));
    }
    let rows = x.elem_count() / in_f.max(1);
    let y = x.reshape((rows, in_f))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(&b.reshape((1, out_f))?)?,
        None => y,
    };
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = out_f;
    Ok(y.reshape(shape)?)
}

/// NumPy `matmul` with optional transposes of the last two axes.
pub fn matmul(x: &Tensor, y: &Tensor, tx: bool, ty: bool) -> Result<Tensor, OpError> {
    let (mut a, mut b) = (x.clone(), y.clone());
    if tx && a.rank() >= 2 {
        a = a.t()?;
    }
    if ty && b.rank() >= 2 {
        b = b.t()?;
    }
    let (a1, b1) = (a.rank() == 1, b.rank() == 1);
    if a.rank() == 0 || b.rank() == 0 {
        return bail("matmul: operands must have rank >= 1");
    }
    if a1 {
        a = a.unsqueeze(0)?;
    }
    if b1 {
        b = b.unsqueeze(1)?;
    }
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k) = (a.dims()[ra - 2], a.dims()[ra - 1]);
    let (k2, n) = (b.dims()[rb - 2], b.dims()[rb - 1]);
    if k != k2 {
        return bail(format!(
            "matmul: inner dimensions differ ({:?} x {:?})",
            x.dims(),
            y.dims()
        ));
    }
    let out = if rb == 2 {
        // A shared right operand (a weight): fold every batch of `a` into
        // the rows of one gemm.
        let batch = a.dims()[..ra - 2].to_vec();
        let rows = a.elem_count() / k.max(1);
        let r = a.contiguous()?.reshape((rows, k))?.matmul(&b)?;
        let mut shape = batch;
        shape.extend([m, n]);
        r.reshape(shape)?
    } else {
        let batch = broadcast_shape(&a.dims()[..ra - 2], &b.dims()[..rb - 2])?;
        let nb: usize = batch.iter().product();
        let mut sa = batch.clone();
        sa.extend([m, k]);
        let mut sb = batch.clone();
        sb.extend([k, n]);
        let a3 = a.broadcast_as(sa)?.contiguous()?.reshape((nb, m, k))?;
        let b3 = b.broadcast_as(sb)?.contiguous()?.reshape((nb, k, n))?;
        let mut shape = batch;
        shape.extend([m, n]);
        a3.matmul(&b3)?.reshape(shape)?
    };
    let mut out = out;
    if b1 {
        out = out.squeeze(out.rank() - 1)?;
    }
    if a1 {
        out = out.squeeze(out.rank() - if b1 { 1 } else { 2 })?;
    }
    Ok(out)
}

/// Parses `"ab,bc->ac"` into operand index lists and the output list.
fn parse(eq: &str, n: usize) -> Result<(Vec<Vec<char>>, Vec<char>), OpError> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let Some((lhs, out)) = eq.split_once("->") else {
        return bail(format!("einsum: equation '{eq}' has no '->'"));
    };
    let ins: Vec<Vec<char>> = lhs.split(',').map(|s| s.chars().collect()).collect();
    let out: Vec<char> = out.chars().collect();
    if ins.len() != n {
        return bail(format!(
            "einsum: equation '{eq}' has {} operands, {n} values given",
            ins.len()
        ));
    }
    for term in ins.iter().chain(std::iter::once(&out)) {
        for (i, c) in term.iter().enumerate() {
            if !c.is_ascii_alphabetic() {
                return bail(format!(
                    "einsum: equation '{eq}': only letters are supported (no ellipsis)"
                ));
            }
            if term[..i].contains(c) {
                return bail(format!(
                    "einsum: equation '{eq}': repeated index '{c}' in one term is not supported"
                ));
            }
        }
    }
    for c in &out {
        if !ins.iter().any(|t| t.contains(c)) {
            return bail(format!("einsum: output index '{c}' appears in no operand"));
        }
    }
    Ok((ins, out))
}

/// Sums `t` (indexed by `idx`) over every index not in `keep`.
fn sum_away(t: Tensor, idx: &[char], keep: &[char]) -> Result<(Tensor, Vec<char>), OpError> {
    let mut t = t;
    let mut idx = idx.to_vec();
    for i in (0..idx.len()).rev() {
        if !keep.contains(&idx[i]) {
            t = t.sum(i)?;
            idx.remove(i);
        }
    }
    Ok((t, idx))
}

fn permute_to(t: &Tensor, idx: &[char], order: &[char]) -> Result<Tensor, OpError> {
    let perm: Vec<usize> = order
        .iter()
        .map(|c| idx.iter().position(|x| x == c).expect("index present"))
        .collect();
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return Ok(t.clone());
    }
    Ok(t.permute(perm)?)
}

/// Evaluates a one- or two-operand einsum equation.
pub fn einsum(eq: &str, vals: &[Tensor]) -> Result<Tensor, OpError> {
    let (ins, out) = parse(eq, vals.len())?;
    for (t, idx) in vals.iter().zip(&ins) {
        if t.rank() != idx.len() {
            return bail(format!(
                "einsum: operand of shape {:?} does not match '{}'",
                t.dims(),
                idx.iter().collect::<String>()
            ));
        }
    }
    if vals.len() == 1 {
        let (t, idx) = sum_away(vals[0].clone(), &ins[0], &out)?;
        return Ok(permute_to(&t, &idx, &out)?.contiguous()?);
    }
    if vals.len() != 2 {
        return bail("einsum: only one or two operands are supported");
    }
    let (ia, ib) = (&ins[0], &ins[1]);
    // Indices that only one operand has and the output drops are summed
    // away first; every remaining index is batch, free or contracted.
    let keep_a: Vec<char> = ia
        .iter()
        .copied()
        .filter(|c| ib.contains(c) || out.contains(c))
        .collect();
    let keep_b: Vec<char> = ib
        .iter()
        .copied()
        .filter(|c| ia.contains(c) || out.contains(c))
        .collect();
    let (a, ia) = sum_away(vals[0].clone(), ia, &keep_a)?;
    let (b, ib) = sum_away(vals[1].clone(), ib, &keep_b)?;
    let batch: Vec<char> = out
        .iter()
        .copied()
        .filter(|c| ia.contains(c) && ib.contains(c))
        .collect();
    let free_a: Vec<char> = out
        .iter()
        .copied()
        .filter(|c| ia.contains(c) && !ib.contains(c))
        .collect();
    let free_b: Vec<char> = out
        .iter()
        .copied()
        .filter(|c| ib.contains(c) && !ia.contains(c))
        .collect();
    let contr: Vec<char> = ia
        .iter()
        .copied()
        .filter(|c| ib.contains(c) && !out.contains(c))
        .collect();
    let size = |t: &Tensor, idx: &[char], c: char| {
        idx.iter().position(|&x| x == c).map_or(1, |p| t.dims()[p])
    };
    let mut batch_dims = Vec::new();
    for &c in &batch {
        let (x, y) = (size(&a, &ia, c), size(&b, &ib, c));
        if x != y && x != 1 && y != 1 {
            return bail(format!("einsum: index '{c}' has sizes {x} and {y}"));
        }
        batch_dims.push(x.max(y));
    }
    for &c in &contr {
        let (x, y) = (size(&a, &ia, c), size(&b, &ib, c));
        if x != y {
            return bail(format!(
                "einsum: contracted index '{c}' has sizes {x} and {y}"
            ));
        }
    }
    let m: Vec<usize> = free_a.iter().map(|&c| size(&a, &ia, c)).collect();
    let n: Vec<usize> = free_b.iter().map(|&c| size(&b, &ib, c)).collect();
    let kd: Vec<usize> = contr.iter().map(|&c| size(&a, &ia, c)).collect();
    let (nb, mm, nn, kk) = (
        batch_dims.iter().product::<usize>(),
        m.iter().product::<usize>(),
        n.iter().product::<usize>(),
        kd.iter().product::<usize>(),
    );
    let order_a: Vec<char> = batch.iter().chain(&free_a).chain(&contr).copied().collect();
    let order_b: Vec<char> = batch.iter().chain(&contr).chain(&free_b).copied().collect();
    let mut full_a = batch_dims.clone();
    full_a.extend(&m);
    full_a.extend(&kd);
    let mut full_b = batch_dims.clone();
    full_b.extend(&kd);
    full_b.extend(&n);
    let a3 = permute_to(&a, &ia, &order_a)?
        .broadcast_as(full_a)?
        .contiguous()?
        .reshape((nb, mm, kk))?;
    let b3 = permute_to(&b, &ib, &order_b)?
        .broadcast_as(full_b)?
        .contiguous()?
        .reshape((nb, kk, nn))?;
    let mut rshape = batch_dims;
    rshape.extend(&m);
    rshape.extend(&n);
    let r = a3.matmul(&b3)?.reshape(rshape)?;
    let ridx: Vec<char> = batch
        .iter()
        .chain(&free_a)
        .chain(&free_b)
        .copied()
        .collect();
    Ok(permute_to(&r, &ridx, &out)?.contiguous()?)
}
