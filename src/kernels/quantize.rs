//! Linear (affine) quantization on plain slices: one scale and zero point
//! per block of a grid over the tensor, `w ≈ scale · (q − zero_point)`.
//!
//! Ranges and parameters follow coremltools' definitions (facts, §6.4 of
//! the format notes): symmetric mode drops the most negative code of signed
//! types (int8 → [−127, 127]) and the top code of unsigned ones (uint8 →
//! [0, 254], zero point 127), so that the range is symmetric around a code
//! that decodes to exactly 0; asymmetric mode widens [min, max] to contain 0
//! and rounds the zero point to an integer code, so 0 stays exact there too.
//!
//! Rounding: the scale is rounded once to the weight's storage dtype (it is
//! stored in it); each weight then takes the code whose *decoded* value
//! (`scale · (q − zp)` rounded to the storage dtype, exactly what Core ML
//! and coremltools' decompression compute) is nearest to it. The candidate
//! is `round_half_even(w / scale)` computed in f64, then its two neighbours
//! are checked, because rounding the product to fp16 can move the decoded
//! value past the midpoint. coremltools divides and rounds in the weight's
//! own dtype (fp16 for fp16 weights), which is sometimes one code off; with
//! the same scale our error per element is therefore never larger. Ties
//! keep the round-half-even candidate (numpy's `round`, coremltools' rule).

/// Integer code types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QType {
    /// Signed 8-bit.
    Int8,
    /// Unsigned 8-bit.
    Uint8,
    /// Signed 4-bit (iOS18).
    Int4,
    /// Unsigned 4-bit (iOS18).
    Uint4,
}

impl QType {
    /// Bits per code.
    pub fn bits(self) -> u32 {
        match self {
            QType::Int8 | QType::Uint8 => 8,
            QType::Int4 | QType::Uint4 => 4,
        }
    }

    /// Whether codes are signed.
    pub fn signed(self) -> bool {
        matches!(self, QType::Int8 | QType::Int4)
    }

    /// The codes used: `[lo, hi]` (one code fewer in symmetric mode).
    pub fn range(self, symmetric: bool) -> (i32, i32) {
        let n = 1i32 << self.bits();
        let sym = i32::from(symmetric);
        if self.signed() {
            (-n / 2 + sym, n / 2 - 1)
        } else {
            (0, n - 1 - sym)
        }
    }
}

/// The dtype the weight, the scale and the decoded values are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
}

impl Store {
    /// `x` rounded to this dtype (nearest, ties to even), as f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Store::F16 => half::f16::from_f32(x).to_f32(),
            Store::F32 => x,
        }
    }

    fn round64(self, x: f64) -> f32 {
        match self {
            Store::F16 => half::f16::from_f64(x).to_f32(),
            Store::F32 => x as f32,
        }
    }

    /// The smallest positive value of the dtype.
    fn tiny(self) -> f32 {
        match self {
            Store::F16 => half::f16::from_bits(1).to_f32(),
            Store::F32 => f32::from_bits(1),
        }
    }
}

/// Quantization settings of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Code type.
    pub qtype: QType,
    /// Symmetric (zero point fixed at the middle code) or asymmetric.
    pub symmetric: bool,
}

/// Scale and zero point of one block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Scale, already a value of the storage dtype.
    pub scale: f32,
    /// Zero point (a code).
    pub zero_point: i32,
}

/// Parameters for a block whose values span `[min, max]` (finite).
pub fn params(min: f32, max: f32, spec: Spec, store: Store) -> Params {
    let (lo, hi) = spec.qtype.range(spec.symmetric);
    let steps = f64::from(hi - lo);
    let (vmin, vmax) = if spec.symmetric {
        let m = f64::from(min.abs().max(max.abs()));
        (-m, m)
    } else {
        (f64::from(min).min(0.0), f64::from(max).max(0.0))
    };
    let zero_point = if spec.symmetric {
        // Unsigned symmetric: the middle code (127 for uint8, 7 for uint4).
        if spec.qtype.signed() {
            0
        } else {
            hi / 2
        }
    } else if vmax > vmin {
        let z = (f64::from(lo) * vmax - f64::from(hi) * vmin) / (vmax - vmin);
        (z.round_ties_even() as i32).clamp(lo, hi)
    } else {
        if spec.qtype.signed() {
            0
        } else {
            lo
        }
    };
    let mut scale = store.round64((vmax - vmin) / steps);
    if vmax == vmin {
        // All zeros: any scale decodes them exactly; 1 keeps it finite.
        scale = 1.0;
    } else if scale <= 0.0 {
        // Underflow of a tiny range: the smallest positive scale.
        scale = store.tiny();
    }
    Params { scale, zero_point }
}

/// The decoded value of code `q`: `scale · (q − zp)` rounded to `store`.
/// The f32 product of an fp16 scale and an integer below 2^13 is exact, so
/// this is the single rounding Core ML performs.
#[inline]
pub fn dequantize(q: i32, p: Params, store: Store) -> f32 {
    store.round(p.scale * (q - p.zero_point) as f32)
}

/// The code of `w` (see the module notes on rounding), within `[lo, hi]`.
#[inline]
pub fn quantize(w: f32, p: Params, lo: i32, hi: i32, store: Store) -> i32 {
    let x = (f64::from(w) / f64::from(p.scale)).round_ties_even();
    let q0 = (x.clamp(-1e9, 1e9) as i32 + p.zero_point).clamp(lo, hi);
    let err = |q: i32| (f64::from(dequantize(q, p, store)) - f64::from(w)).abs();
    let mut best = q0;
    let mut best_err = err(q0);
    for q in [q0 - 1, q0 + 1] {
        if (lo..=hi).contains(&q) {
            let e = err(q);
            if e < best_err {
                best = q;
                best_err = e;
            }
        }
    }
    best
}

/// Why a tensor cannot be quantized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// A value is NaN or infinite.
    NonFinite,
    /// The grid does not divide the shape.
    BadGrid,
}

/// A quantized tensor.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// One code per element, row-major (two's complement bytes for signed
    /// types, so `as i8` gives the code).
    pub codes: Vec<u8>,
    /// Per block (row-major over the grid): parameters.
    pub params: Vec<Params>,
    /// Σ w², Σ (w − ŵ)², max |w − ŵ| (f64).
    pub signal: f64,
    /// Sum of squared errors.
    pub sse: f64,
    /// Largest absolute error.
    pub max_abs: f64,
}

/// Calls `f(element, block)` for every element of `shape` in row-major
/// order, `block` being its row-major index in `grid` (block extents are
/// `shape[i] / grid[i]`).
fn for_each_block(shape: &[usize], grid: &[usize], mut f: impl FnMut(usize, usize)) {
    let k = shape.len();
    if k == 0 {
        f(0, 0);
        return;
    }
    let ext: Vec<usize> = shape.iter().zip(grid).map(|(s, g)| s / g).collect();
    let mut gstride = vec![1usize; k];
    for i in (0..k.saturating_sub(1)).rev() {
        gstride[i] = gstride[i + 1] * grid[i + 1];
    }
    let n: usize = shape.iter().product();
    if n == 0 {
        return;
    }
    let last = k - 1;
    let row = shape[last];
    let mut idx = vec![0usize; k];
    let mut e = 0;
    while e < n {
        let base: usize = (0..last).map(|i| idx[i] / ext[i] * gstride[i]).sum();
        for j in 0..row {
            f(e + j, base + j / ext[last] * gstride[last]);
        }
        e += row;
        // Advance the outer multi-index.
        let mut d = last;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Quantizes `x` (row-major, `shape`) with one set of parameters per block
/// of `grid` (same rank; `shape[i] % grid[i] == 0`).
pub fn quantize_blocks(
    x: &[f32],
    shape: &[usize],
    grid: &[usize],
    spec: Spec,
    store: Store,
) -> Result<Quantized, QuantError> {
    if grid.len() != shape.len()
        || shape.iter().zip(grid).any(|(&s, &g)| g == 0 || s % g != 0)
        || shape.iter().product::<usize>() != x.len()
    {
        return Err(QuantError::BadGrid);
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite);
    }
    let blocks: usize = grid.iter().product();
    let mut mins = vec![f32::INFINITY; blocks];
    let mut maxs = vec![f32::NEG_INFINITY; blocks];
    for_each_block(shape, grid, |e, b| {
        mins[b] = mins[b].min(x[e]);
        maxs[b] = maxs[b].max(x[e]);
    });
    let params: Vec<Params> = mins
        .iter()
        .zip(&maxs)
        .map(|(&lo, &hi)| params(lo, hi, spec, store))
        .collect();
    let (lo, hi) = spec.qtype.range(spec.symmetric);
    let mut codes = vec![0u8; x.len()];
    let (mut signal, mut sse, mut max_abs) = (0f64, 0f64, 0f64);
    for_each_block(shape, grid, |e, b| {
        let p = params[b];
        let w = x[e];
        let q = quantize(w, p, lo, hi, store);
        codes[e] = q as u8;
        let d = f64::from(dequantize(q, p, store)) - f64::from(w);
        signal += f64::from(w) * f64::from(w);
        sse += d * d;
        max_abs = max_abs.max(d.abs());
    });
    Ok(Quantized {
        codes,
        params,
        signal,
        sse,
        max_abs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    const ALL: [QType; 4] = [QType::Int8, QType::Uint8, QType::Int4, QType::Uint4];

    /// A deterministic pseudo-random stream (xorshift), values in
    /// [-scale, scale), rounded to `store`.
    fn values(n: usize, seed: u64, scale: f32, store: Store) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                store.round(((u * 2.0 - 1.0) * f64::from(scale)) as f32)
            })
            .collect()
    }

    fn decode(q: &Quantized, shape: &[usize], grid: &[usize], store: Store, t: QType) -> Vec<f32> {
        let mut out = vec![0f32; q.codes.len()];
        for_each_block(shape, grid, |e, b| {
            let c = if t.signed() {
                i32::from(q.codes[e] as i8)
            } else {
                i32::from(q.codes[e])
            };
            out[e] = dequantize(c, q.params[b], store);
        });
        out
    }

    #[test]
    fn ranges_are_coremltools() {
        assert_eq!(QType::Int8.range(true), (-127, 127));
        assert_eq!(QType::Int8.range(false), (-128, 127));
        assert_eq!(QType::Uint8.range(true), (0, 254));
        assert_eq!(QType::Uint8.range(false), (0, 255));
        assert_eq!(QType::Int4.range(true), (-7, 7));
        assert_eq!(QType::Int4.range(false), (-8, 7));
        assert_eq!(QType::Uint4.range(true), (0, 14));
        assert_eq!(QType::Uint4.range(false), (0, 15));
    }

    /// Property: for every code type, mode, storage dtype and many random
    /// tensors, every element decodes within scale/2 of its value (plus half
    /// an ulp of the stored result for fp16), codes stay in range, the
    /// reported error sums are the decoded ones, and 0 decodes to exactly 0.
    #[test]
    fn round_trip_error_at_most_half_a_step() {
        for &t in &ALL {
            for symmetric in [true, false] {
                for store in [Store::F16, Store::F32] {
                    for seed in 0..20u64 {
                        let shape = [6usize, 10, 3];
                        let grid = [3usize, if seed % 2 == 0 { 1 } else { 5 }, 1];
                        let mut x = values(180, seed + 1, 0.5 + seed as f32, store);
                        x[7] = 0.0;
                        x[100] = 0.0;
                        let spec = Spec {
                            qtype: t,
                            symmetric,
                        };
                        let q = quantize_blocks(&x, &shape, &grid, spec, store).unwrap();
                        let d = decode(&q, &shape, &grid, store, t);
                        let (lo, hi) = t.range(symmetric);
                        let mut sse = 0f64;
                        for_each_block(&shape, &grid, |e, b| {
                            let c = if t.signed() {
                                i32::from(q.codes[e] as i8)
                            } else {
                                i32::from(q.codes[e])
                            };
                            assert!((lo..=hi).contains(&c), "{t:?} code {c}");
                            let s = q.params[b].scale;
                            let ulp = match store {
                                Store::F16 => f16::from_f32(x[e]).to_f32().abs() * 2f32.powi(-11),
                                Store::F32 => x[e].abs() * 2f32.powi(-24),
                            };
                            let err = (d[e] - x[e]).abs();
                            assert!(
                                err <= s / 2.0 + ulp + 1e-12,
                                "{t:?} sym={symmetric} {store:?}: |{} - {}| > {s}/2",
                                d[e],
                                x[e]
                            );
                            sse += f64::from(d[e] - x[e]).powi(2);
                        });
                        assert!((sse - q.sse).abs() <= 1e-9 * (1.0 + sse));
                        assert_eq!(d[7], 0.0, "zero stays exactly zero");
                        assert_eq!(d[100], 0.0, "zero stays exactly zero");
                    }
                }
            }
        }
    }

    /// The code chosen is the best possible for the block's scale: no other
    /// code decodes closer (this is what makes our error per weight never
    /// larger than coremltools' with the same scale).
    #[test]
    fn code_is_the_nearest_decoded_level() {
        for &t in &ALL {
            for symmetric in [true, false] {
                let x = values(2000, 7, 3.0, Store::F16);
                let q = quantize_blocks(
                    &x,
                    &[2000],
                    &[1],
                    Spec {
                        qtype: t,
                        symmetric,
                    },
                    Store::F16,
                )
                .unwrap();
                let p = q.params[0];
                let (lo, hi) = t.range(symmetric);
                for (e, &w) in x.iter().enumerate() {
                    let c = if t.signed() {
                        i32::from(q.codes[e] as i8)
                    } else {
                        i32::from(q.codes[e])
                    };
                    let mine = (dequantize(c, p, Store::F16) - w).abs();
                    for other in lo..=hi {
                        assert!(mine <= (dequantize(other, p, Store::F16) - w).abs());
                    }
                }
            }
        }
    }

    /// The extremes of a symmetric block use the end codes, and the scale
    /// is the fp16 value of max|w| / (2^(b-1) − 1).
    #[test]
    fn symmetric_scale_and_extremes() {
        let x = [-2.0f32, 1.0, 0.5, 0.0];
        let q = quantize_blocks(
            &x,
            &[4],
            &[1],
            Spec {
                qtype: QType::Int8,
                symmetric: true,
            },
            Store::F16,
        )
        .unwrap();
        assert_eq!(q.params[0].scale, f16::from_f64(2.0 / 127.0).to_f32());
        assert_eq!(q.params[0].zero_point, 0);
        assert_eq!(q.codes[0] as i8, -127);
        assert_eq!(q.codes[3] as i8, 0);
        let u = quantize_blocks(
            &x,
            &[4],
            &[1],
            Spec {
                qtype: QType::Uint4,
                symmetric: true,
            },
            Store::F32,
        )
        .unwrap();
        assert_eq!(u.params[0].zero_point, 7);
        assert_eq!(u.codes[0], 0);
        assert_eq!(u.codes[3], 7);
    }

    /// Asymmetric: an all-positive block still contains 0 in its range
    /// (coremltools widens it) and the zero point is the code of 0.
    #[test]
    fn asymmetric_range_contains_zero() {
        let x = [1.0f32, 3.0, 2.0, 1.5];
        let q = quantize_blocks(
            &x,
            &[4],
            &[1],
            Spec {
                qtype: QType::Uint8,
                symmetric: false,
            },
            Store::F32,
        )
        .unwrap();
        assert_eq!(q.params[0].zero_point, 0);
        assert_eq!(q.params[0].scale, 3.0 / 255.0);
        assert_eq!(q.codes[1], 255);
        let q = quantize_blocks(
            &[-1.0, 3.0, 0.0, 2.0],
            &[4],
            &[1],
            Spec {
                qtype: QType::Int8,
                symmetric: false,
            },
            Store::F32,
        )
        .unwrap();
        // zp = round((-128·3 − 127·(−1)) / 4) = round(−64.25) = −64.
        assert_eq!(q.params[0].zero_point, -64);
        assert_eq!(q.codes[2] as i8, -64);
    }

    #[test]
    fn all_zero_and_non_finite_blocks() {
        let spec = Spec {
            qtype: QType::Int8,
            symmetric: true,
        };
        let q = quantize_blocks(&[0.0; 8], &[2, 4], &[2, 1], spec, Store::F16).unwrap();
        assert!(q.codes.iter().all(|&c| c == 0));
        assert_eq!(q.sse, 0.0);
        assert_eq!(
            quantize_blocks(&[0.0, f32::NAN], &[2], &[1], spec, Store::F16).unwrap_err(),
            QuantError::NonFinite
        );
        assert_eq!(
            quantize_blocks(&[0.0; 6], &[6], &[4], spec, Store::F16).unwrap_err(),
            QuantError::BadGrid
        );
    }

    /// Blocks are laid out as the grid says: per-channel on axis 1 of a
    /// [2, 3, 2] tensor gives each of the 3 channels its own scale.
    #[test]
    fn block_layout() {
        let mut seen = Vec::new();
        for_each_block(&[2, 3, 2], &[1, 3, 1], |e, b| seen.push((e, b)));
        let blocks: Vec<usize> = seen.iter().map(|p| p.1).collect();
        assert_eq!(blocks, vec![0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]);
        let mut seen = Vec::new();
        for_each_block(&[4, 4], &[2, 2], |_, b| seen.push(b));
        assert_eq!(seen, vec![0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]);
    }
}
