//! `conv` (`iOS15/conv.py`), 1-D and 2-D, as im2col + one gemm per sample
//! and group.
//!
//! Parameters and defaults: `strides` and `dilations` all 1, `groups` 1,
//! `pad_type` `valid`. `custom` takes `pad = [before₀, after₀, before₁,
//! after₁]`. `same` pads a total of `max(0, (⌈i/s⌉ − 1)·s + (k − 1)·d + 1 −
//! i)` per axis with the odd element after (`same_lower`: before), so the
//! output size is `⌈i/s⌉`. Output size is `⌊(i + pads − ((k − 1)·d + 1)) / s⌋
//! + 1`. A 1×1 convolution with stride 1 and no padding skips im2col.

use super::util::{channel_affine, f32_vec, f32t, from_f32, with_f32};
use super::{bail, OpCtx, OpError, Registry};
use crate::interp::ConvGeometry;
use candle_core::Tensor;
use rayon::prelude::*;

/// Registers this family.
pub fn register(r: &mut Registry) {
    r.insert("conv", |c| {
        let x = f32t(c.tensor("x")?)?;
        let w = f32t(c.tensor("weight")?)?;
        let g = geometry(c, x.dims(), w.dims())?;
        let b = c.opt_tensor("bias")?.map(f32t).transpose()?;
        Ok(vec![conv(&x, &w, b.as_ref(), &g)?])
    });
}

/// Resolves the op's strides, padding, dilations and groups for an input of
/// shape `x` and a weight of shape `w`.
pub fn geometry(c: &OpCtx<'_>, x: &[usize], w: &[usize]) -> Result<ConvGeometry, OpError> {
    if x.len() < 3 || x.len() > 4 {
        return bail(format!(
            "conv: only 1-D and 2-D convolutions are supported (x has shape {x:?})"
        ));
    }
    if w.len() != x.len() {
        return bail(format!(
            "conv: weight rank {} does not match x rank {}",
            w.len(),
            x.len()
        ));
    }
    let nd = x.len() - 2;
    let vec_or = |p: &str, d: i64| -> Result<Vec<usize>, OpError> {
        let v = c.opt_ints(p)?.unwrap_or_else(|| vec![d; nd]);
        if v.len() != nd || v.iter().any(|&s| s < 1) {
            return bail(format!(
                "conv: '{p}' must hold {nd} positive values, got {v:?}"
            ));
        }
        Ok(v.into_iter().map(|s| s as usize).collect())
    };
    let strides = vec_or("strides", 1)?;
    let dilations = vec_or("dilations", 1)?;
    let groups = c.int_or("groups", 1)?;
    if groups < 1 {
        return bail(format!("conv: groups must be positive, got {groups}"));
    }
    let pad_type = c.str_or("pad_type", "valid")?;
    let mut pads = Vec::with_capacity(nd);
    for i in 0..nd {
        let input = x[2 + i];
        let eff = (w[2 + i].max(1) - 1) * dilations[i] + 1;
        pads.push(match pad_type {
            "valid" => (0, 0),
            "custom" => {
                let p = c.ints("pad")?;
                if p.len() != 2 * nd || p.iter().any(|&v| v < 0) {
                    return bail(format!(
                        "conv: 'pad' must hold {} non-negative values, got {p:?}",
                        2 * nd
                    ));
                }
                (p[2 * i] as usize, p[2 * i + 1] as usize)
            }
            "same" | "same_lower" => {
                let out = input.div_ceil(strides[i]);
                let total = ((out.max(1) - 1) * strides[i] + eff).saturating_sub(input);
                let (small, big) = (total / 2, total - total / 2);
                if pad_type == "same" {
                    (small, big)
                } else {
                    (big, small)
                }
            }
            other => return bail(format!("conv: unknown pad_type '{other}'")),
        });
    }
    Ok(ConvGeometry {
        strides,
        pads,
        dilations,
        groups: groups as usize,
    })
}

/// A 1-D or 2-D convolution of `x` `[N, C, *S]` with `w` `[O, C/g, *K]`.
pub fn conv(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    g: &ConvGeometry,
) -> Result<Tensor, OpError> {
    let one_d = x.rank() == 3;
    let (x, w) = if one_d {
        (x.unsqueeze(2)?, w.unsqueeze(2)?)
    } else {
        (x.clone(), w.clone())
    };
    let (s, p, d) = if one_d {
        ([1, g.strides[0]], [(0, 0), g.pads[0]], [1, g.dilations[0]])
    } else {
        (
            [g.strides[0], g.strides[1]],
            [g.pads[0], g.pads[1]],
            [g.dilations[0], g.dilations[1]],
        )
    };
    let (n, c, h, wd) = x.dims4()?;
    let (o, cg, kh, kw) = w.dims4()?;
    let groups = g.groups;
    if c != cg * groups || o % groups != 0 {
        return bail(format!(
            "conv: {c} input channels, weight {:?} and {groups} groups do not fit",
            w.dims()
        ));
    }
    let eff_h = (kh - 1) * d[0] + 1;
    let eff_w = (kw - 1) * d[1] + 1;
    let (ph, pw) = (h + p[0].0 + p[0].1, wd + p[1].0 + p[1].1);
    if ph < eff_h || pw < eff_w {
        return bail(format!(
            "conv: kernel {:?} (dilated) is larger than the padded input {:?}",
            [eff_h, eff_w],
            [ph, pw]
        ));
    }
    let oh = (ph - eff_h) / s[0] + 1;
    let ow = (pw - eff_w) / s[1] + 1;
    let og = o / groups;
    let k = cg * kh * kw;
    let plane = oh * ow;
    let pointwise = kh == 1 && kw == 1 && s == [1, 1] && p == [(0, 0), (0, 0)];
    let wg = w.reshape((groups, og, k))?;
    let mut outs = Vec::with_capacity(n);
    for i in 0..n {
        let xi = x.get(i)?;
        let cols = if pointwise {
            xi.reshape((groups, k, plane))?
        } else {
            let v = with_f32(&xi, |src| im2col(src, c, h, wd, kh, kw, oh, ow, s, p, d))?;
            from_f32(v, &[groups, k, plane])?
        };
        outs.push(wg.matmul(&cols)?.reshape((o, oh, ow))?);
    }
    let mut y = Tensor::stack(&outs, 0)?;
    if let Some(b) = b {
        if b.elem_count() != o {
            return bail(format!(
                "conv: bias has {} values for {o} output channels",
                b.elem_count()
            ));
        }
        y = channel_affine(&y, None, Some(&f32_vec(b)?))?;
    }
    if one_d {
        y = y.squeeze(2)?;
    }
    Ok(y)
}

/// Unfolds one sample `[C, H, W]` into `[C·KH·KW, OH·OW]` (zero padding),
/// row `(c, i, j)` holding input pixel `(oh·s₀ − p₀ + i·d₀, ow·s₁ − p₁ +
/// j·d₁)` of channel `c` for every output position.
#[allow(clippy::too_many_arguments)]
fn im2col(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    s: [usize; 2],
    p: [(usize, usize); 2],
    d: [usize; 2],
) -> Vec<f32> {
    let plane = oh * ow;
    let mut out = vec![0f32; c * kh * kw * plane];
    out.par_chunks_mut(kh * kw * plane)
        .enumerate()
        .for_each(|(ch, rows)| {
            let img = &src[ch * h * w..(ch + 1) * h * w];
            for i in 0..kh {
                for j in 0..kw {
                    let row = &mut rows[(i * kw + j) * plane..(i * kw + j + 1) * plane];
                    for y in 0..oh {
                        let iy = (y * s[0] + i * d[0]) as isize - p[0].0 as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let line = &img[iy as usize * w..(iy as usize + 1) * w];
                        let dst = &mut row[y * ow..(y + 1) * ow];
                        for (x, v) in dst.iter_mut().enumerate() {
                            let ix = (x * s[1] + j * d[1]) as isize - p[1].0 as isize;
                            if ix >= 0 && (ix as usize) < w {
                                *v = line[ix as usize];
                            }
                        }
                    }
                }
            }
        });
    out
}
