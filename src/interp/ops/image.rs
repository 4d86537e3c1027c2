//! Image resizing (`iOS15/image_resizing.py`): `upsample_nearest_neighbor`
//! over the last two axes. The output size is `⌊H·scale⌋ × ⌊W·scale⌋`
//! (scales default to 1, integer or fractional) and output pixel `i` reads
//! input pixel `⌊i / scale⌋`, which for an integer scale repeats every pixel
//! `scale` times.

use super::{bail, OpCtx, OpError, Registry};
use candle_core::{Device, Tensor};

/// Registers this family.
pub fn register(r: &mut Registry) {
    r.insert("upsample_nearest_neighbor", |c: &OpCtx<'_>| {
        let x = c.tensor("x")?;
        let sh = c.float_or("scale_factor_height", 1.0)?;
        let sw = c.float_or("scale_factor_width", 1.0)?;
        Ok(vec![upsample_nearest(x, sh, sw)?])
    });
}

/// Nearest-neighbour upsampling of the last two axes of `x`.
pub fn upsample_nearest(x: &Tensor, sh: f64, sw: f64) -> Result<Tensor, OpError> {
    let r = x.rank();
    if r < 2 || sh <= 0.0 || sw <= 0.0 {
        return bail(format!(
            "upsample_nearest_neighbor: needs rank >= 2 and positive scales (got {sh}, {sw})"
        ));
    }
    let mut t = x.contiguous()?;
    for (a, s) in [(r - 2, sh), (r - 1, sw)] {
        let n = t.dims()[a];
        let m = (n as f64 * s).floor() as usize;
        if m == n {
            continue;
        }
        let idx: Vec<u32> = (0..m)
            .map(|i| (((i as f64) / s).floor() as usize).min(n - 1) as u32)
            .collect();
        let idx = Tensor::from_vec(idx, m, &Device::Cpu)?;
        t = t.index_select(&idx, a)?;
    }
    Ok(t)
}
