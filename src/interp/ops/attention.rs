//! `scaled_dot_product_attention` (`iOS18/transformers.py`):
//! `softmax(Q·Kᵀ/√E + mask)·V` over the last axis. A bool mask keeps the
//! positions where it is true (the others get −∞); a float mask is added.

use super::activation::softmax;
use super::linear_algebra::matmul;
use super::util::f32t;
use super::{bail, OpCtx, OpError, Registry};
use candle_core::Tensor;

/// Registers this family.
pub fn register(r: &mut Registry) {
    r.insert("scaled_dot_product_attention", sdpa);
}

fn sdpa(c: &OpCtx<'_>) -> Result<Vec<Tensor>, OpError> {
    let q = f32t(c.tensor("query")?)?;
    let k = f32t(c.tensor("key")?)?;
    let v = f32t(c.tensor("value")?)?;
    if q.rank() < 3 || k.rank() != q.rank() || v.rank() != q.rank() {
        return bail("scaled_dot_product_attention: query, key and value need one rank >= 3");
    }
    let e = *q.dims().last().expect("rank >= 3");
    let scores = (matmul(&q, &k, false, true)? * (1.0 / (e as f64).sqrt()))?;
    let scores = match c.opt("attn_mask")? {
        None => scores,
        Some(m) => {
            let Some(mt) = m.tensor() else {
                return bail("attn_mask is not a tensor");
            };
            if m.dtype() == crate::mil::DType::Bool {
                let neg = Tensor::full(f32::NEG_INFINITY, scores.shape(), scores.device())?;
                mt.broadcast_as(scores.shape())?.where_cond(&scores, &neg)?
            } else {
                scores.broadcast_add(&f32t(mt)?)?
            }
        }
    };
    let p = softmax(&scores, scores.rank() - 1)?;
    Ok(vec![matmul(&p, &v, false, false)?])
}
