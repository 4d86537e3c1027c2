//! Reductions (`iOS15/reduction.py`): `reduce_{sum,mean,max,min,prod,
//! l1_norm,l2_norm,sum_square,log_sum,log_sum_exp}` over `axes` (default:
//! every axis) with `keep_dims` (default false), and `reduce_argmax` /
//! `reduce_argmin` over one `axis` (default −1), first index on ties.

use super::util::{axes, axis, f32t};
use super::{OpCtx, OpError, Registry};
use candle_core::{DType as CD, Device, Tensor};

/// Registers this family.
pub fn register(r: &mut Registry) {
    r.insert("reduce_sum", |c| reduce(c, Kind::Sum));
    r.insert("reduce_mean", |c| reduce(c, Kind::Mean));
    r.insert("reduce_max", |c| reduce(c, Kind::Max));
    r.insert("reduce_min", |c| reduce(c, Kind::Min));
    r.insert("reduce_prod", |c| reduce(c, Kind::Prod));
    r.insert("reduce_l1_norm", |c| reduce(c, Kind::L1));
    r.insert("reduce_l2_norm", |c| reduce(c, Kind::L2));
    r.insert("reduce_sum_square", |c| reduce(c, Kind::SumSquare));
    r.insert("reduce_log_sum", |c| reduce(c, Kind::LogSum));
    r.insert("reduce_log_sum_exp", |c| reduce(c, Kind::LogSumExp));
    r.insert("reduce_argmax", |c| arg(c, true));
    r.insert("reduce_argmin", |c| arg(c, false));
}

#[derive(Clone, Copy)]
enum Kind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    SumSquare,
    LogSum,
    LogSumExp,
}

fn reduce(c: &OpCtx<'_>, k: Kind) -> Result<Vec<Tensor>, OpError> {
    let x = c.tensor("x")?;
    let rank = x.rank();
    let mut ax = match c.opt_ints("axes")? {
        Some(a) => axes(&a, rank)?,
        None => (0..rank).collect(),
    };
    ax.sort_unstable();
    let keep = c.bool_or("keep_dims", false)?;
    // Integer sums stay exact in i64; everything else is computed in f32.
    let x = match (k, x.dtype()) {
        (Kind::Sum | Kind::Max | Kind::Min, CD::I64) => x.clone(),
        _ => f32t(x)?,
    };
    let y = reduce_keep(&x, &ax, k)?;
    Ok(vec![if keep { y } else { drop_axes(&y, &ax)? }])
}

fn reduce_keep(x: &Tensor, ax: &[usize], k: Kind) -> Result<Tensor, OpError> {
    if ax.is_empty() {
        return Ok(x.clone());
    }
    let each = |t: Tensor, f: &dyn Fn(&Tensor, usize) -> candle_core::Result<Tensor>| {
        ax.iter().try_fold(t, |t, &a| f(&t, a))
    };
    Ok(match k {
        Kind::Sum => x.sum_keepdim(ax)?,
        Kind::Mean => x.mean_keepdim(ax)?,
        Kind::Max => each(x.clone(), &|t, a| t.max_keepdim(a))?,
        Kind::Min => each(x.clone(), &|t, a| t.min_keepdim(a))?,
        Kind::Prod => each(x.clone(), &|t, a| {
            // A product is a sum of logs only for positive values; multiply
            // slice by slice instead (axes are short in practice).
            let n = t.dims()[a];
            let mut acc = t.narrow(a, 0, 1)?;
            for i in 1..n {
                acc = acc.mul(&t.narrow(a, i, 1)?)?;
            }
            Ok(acc)
        })?,
        Kind::L1 => x.abs()?.sum_keepdim(ax)?,
        Kind::L2 => x.sqr()?.sum_keepdim(ax)?.sqrt()?,
        Kind::SumSquare => x.sqr()?.sum_keepdim(ax)?,
        Kind::LogSum => x.sum_keepdim(ax)?.log()?,
        Kind::LogSumExp => {
            let m = each(x.clone(), &|t, a| t.max_keepdim(a))?;
            let s = x.broadcast_sub(&m)?.exp()?.sum_keepdim(ax)?;
            (s.log()? + m)?
        }
    })
}

/// Removes the (size-1) axes `ax` from `y`.
fn drop_axes(y: &Tensor, ax: &[usize]) -> Result<Tensor, OpError> {
    let shape: Vec<usize> = y
        .dims()
        .iter()
        .enumerate()
        .filter(|(i, _)| !ax.contains(i))
        .map(|(_, &d)| d)
        .collect();
    Ok(y.reshape(shape)?)
}

fn arg(c: &OpCtx<'_>, max: bool) -> Result<Vec<Tensor>, OpError> {
    let x = f32t(c.tensor("x")?)?;
    let a = axis(c.int_or("axis", -1)?, x.rank())?;
    let keep = c.bool_or("keep_dims", false)?;
    let (outer, len, inner) = super::util::around(x.dims(), a);
    let v = super::util::with_f32(&x, |s| {
        let mut out = vec![0i64; outer * inner];
        for o in 0..outer {
            for i in 0..inner {
                let mut best = 0usize;
                for j in 1..len {
                    let cand = s[(o * len + j) * inner + i];
                    let cur = s[(o * len + best) * inner + i];
                    if (max && cand > cur) || (!max && cand < cur) {
                        best = j;
                    }
                }
                out[o * inner + i] = best as i64;
            }
        }
        out
    })?;
    let mut shape = x.dims().to_vec();
    shape[a] = 1;
    let t = Tensor::from_vec(v, shape, &Device::Cpu)?;
    Ok(vec![if keep { t } else { drop_axes(&t, &[a])? }])
}
