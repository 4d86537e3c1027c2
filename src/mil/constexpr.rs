//! Materialisation of `constexpr_*` ops (iOS16 and iOS18 forms) into dense
//! tensors, bit-exact with coremltools' `decompress_weights`.
//!
//! Numerics (chosen to match coremltools 9.0 bit for bit):
//! - `affine_dequantize` (iOS16): `(f32(q) - f32(zp)) * f32(scale)`, rounded
//!   once to the scale's dtype;
//! - `blockwise_shift_scale` (iOS18): data cast to the scale's dtype, then
//!   `data - offset` and `scale * data`, each op evaluated in f32 and
//!   rounded to the scale's dtype (numpy's float16 arithmetic);
//! - LUT and sparse ops only move values, so they are exact.

use super::program::{is_constexpr, op_label, param, FunctionIndex, Param};
use super::tensor::{Data, Tensor};
use super::value::{decode_value, numel, BlobFiles};
use super::{DType, MilError};
use crate::kernels::bits;
use crate::proto::mil::Operation;
use half::f16;

/// The stored parts of a `constexpr_sparse_to_dense` op.
#[derive(Debug, Clone)]
pub struct SparseParts {
    /// Dense shape.
    pub shape: Vec<usize>,
    /// One 0/1 byte per dense element, row-major.
    pub mask: Vec<u8>,
    /// The values at the 1-positions, row-major (rank 1).
    pub nonzero_data: Tensor,
}

/// Resolves parameters of constexpr ops within one function.
pub struct Evaluator<'i, 'a> {
    index: &'i FunctionIndex<'a>,
    blobs: &'i BlobFiles,
    depth: usize,
}

/// Constexpr chains are short (at most three ops in anything coremltools
/// writes); a deep chain means a cycle or a hostile file.
const MAX_DEPTH: usize = 16;

impl<'i, 'a> Evaluator<'i, 'a> {
    /// An evaluator over `index`, reading blobs from `blobs`.
    pub fn new(index: &'i FunctionIndex<'a>, blobs: &'i BlobFiles) -> Self {
        Self {
            index,
            blobs,
            depth: 0,
        }
    }

    /// The compile-time value of `name`: a `const` op's value or the
    /// materialised output of a constexpr op.
    pub fn value(&mut self, name: &str, ctx: &str) -> Result<Tensor, MilError> {
        let (_, op) = self.index.producer_op(name).ok_or_else(|| {
            MilError::invalid(ctx, format!("'{name}' is not a compile-time value"))
        })?;
        let k = op.outputs.iter().position(|o| o.name == name).unwrap_or(0);
        if op.r#type == "const" {
            let v = op
                .attributes
                .get("val")
                .ok_or_else(|| MilError::invalid(op_label(op), "const has no 'val'"))?;
            return decode_value(v, self.blobs, &op_label(op));
        }
        if !is_constexpr(&op.r#type) {
            return Err(MilError::invalid(
                ctx,
                format!("'{name}' is computed at run time by {}", op_label(op)),
            ));
        }
        let mut outs = self.materialize(op)?;
        if k >= outs.len() {
            return Err(MilError::invalid(op_label(op), "missing output"));
        }
        Ok(outs.swap_remove(k))
    }

    fn param(&mut self, op: &Operation, p: &str) -> Result<Option<Tensor>, MilError> {
        let ctx = format!("{} parameter '{p}'", op_label(op));
        match param(op, p)? {
            None => Ok(None),
            Some(Param::Value(v)) => decode_value(v, self.blobs, &ctx).map(Some),
            Some(Param::Name(n)) => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(MilError::invalid(
                        ctx,
                        "constexpr chain is too deep (cycle?)",
                    ));
                }
                let r = self.value(n, &ctx);
                self.depth -= 1;
                r.map(Some)
            }
        }
    }

    fn required(&mut self, op: &Operation, p: &str) -> Result<Tensor, MilError> {
        self.param(op, p)?
            .ok_or_else(|| MilError::invalid(op_label(op), format!("missing parameter '{p}'")))
    }

    /// The parts of a `constexpr_sparse_to_dense` op (either form): the
    /// dense shape, the unpacked mask (0/1 per element) and the values.
    pub fn sparse_parts(&mut self, op: &Operation) -> Result<SparseParts, MilError> {
        let ctx = op_label(op);
        let nz = self.required(op, "nonzero_data")?;
        let mask = self.required(op, "mask")?;
        let (shape, m) = if let Some(shape) = self.param(op, "shape")? {
            let shape = shape_vec(&shape, &ctx)?;
            let n = numel(&shape, &ctx)?;
            let bytes = mask
                .to_storage_bytes()
                .ok_or_else(|| MilError::invalid(&ctx, "bad mask"))?;
            if mask.dtype != DType::Uint8 || bytes.len() != n.div_ceil(8) {
                return Err(MilError::invalid(
                    &ctx,
                    format!("mask must be uint8[{}] for shape {shape:?}", n.div_ceil(8)),
                ));
            }
            let m =
                bits::unpack(&bytes, 1, n).ok_or_else(|| MilError::invalid(&ctx, "short mask"))?;
            (shape, m)
        } else {
            if mask.dtype != DType::Uint1 {
                return Err(MilError::invalid(
                    &ctx,
                    format!("mask must be uint1, found {}", mask.dtype),
                ));
            }
            let Data::U8(m) = mask.data else {
                unreachable!("uint1 decodes to U8")
            };
            (mask.shape, m)
        };
        let ones = m.iter().filter(|&&b| b != 0).count();
        if nz.shape.len() != 1 || nz.numel() != ones {
            return Err(MilError::invalid(
                &ctx,
                format!(
                    "mask has {ones} set bits but nonzero_data has shape {:?}",
                    nz.shape
                ),
            ));
        }
        Ok(SparseParts {
            shape,
            mask: m,
            nonzero_data: nz,
        })
    }

    /// Materialises every output of constexpr op `op`.
    pub fn materialize(&mut self, op: &Operation) -> Result<Vec<Tensor>, MilError> {
        let ctx = op_label(op);
        let outs = match op.r#type.as_str() {
            "constexpr_lut_to_dense" => {
                let lut = self.required(op, "lut")?;
                let indices = self.required(op, "indices")?;
                if let Some(shape) = self.param(op, "shape")? {
                    vec![lut_ios16(&indices, &lut, &shape, &ctx)?]
                } else {
                    let va = self.param(op, "vector_axis")?;
                    vec![lut_ios18(&indices, &lut, va.as_ref(), &ctx)?]
                }
            }
            "constexpr_sparse_to_dense" => {
                let p = self.sparse_parts(op)?;
                vec![scatter(&p.nonzero_data, &p.mask, p.shape, &ctx)?]
            }
            "constexpr_affine_dequantize" => {
                let q = self.required(op, "quantized_data")?;
                let zp = self.required(op, "zero_point")?;
                let scale = self.required(op, "scale")?;
                let axis = self.required(op, "axis")?;
                vec![affine(&q, &zp, &scale, &axis, &ctx)?]
            }
            "constexpr_blockwise_shift_scale" => {
                let data = self.required(op, "data")?;
                let scale = self.required(op, "scale")?;
                let offset = self.param(op, "offset")?;
                vec![shift_scale(&data, &scale, offset.as_ref(), &ctx)?]
            }
            "constexpr_cast" => {
                let src = self.required(op, "source_val")?;
                let to = self.required(op, "output_dtype")?;
                if to.as_str() != Some(b"fp32") {
                    return Err(MilError::unsupported(&ctx, "output_dtype (only \"fp32\")"));
                }
                let Data::F16(v) = &src.data else {
                    return Err(MilError::invalid(&ctx, "source_val must be fp16"));
                };
                vec![Tensor {
                    dtype: DType::Fp32,
                    shape: src.shape.clone(),
                    data: Data::F32(v.iter().map(|x| x.to_f32()).collect()),
                }]
            }
            "constexpr_lut_to_sparse" => {
                let mask = self.required(op, "indices_mask")?;
                let nz = self.required(op, "indices_nonzero_data")?;
                let lut = self.required(op, "lut")?;
                let va = self.param(op, "vector_axis")?;
                let (m, dense_idx) = dense_indices(&mask, &nz, &ctx)?;
                let dense = lut_ios18(&dense_idx, &lut, va.as_ref(), &ctx)?;
                let (out_mask, vals) =
                    expand_mask_and_take(&m, &mask.shape, &dense, va.as_ref(), &ctx)?;
                vec![out_mask, vals]
            }
            "constexpr_sparse_blockwise_shift_scale" => {
                let mask = self.required(op, "data_mask")?;
                let nz = self.required(op, "nonzero_data")?;
                let scale = self.required(op, "scale")?;
                let offset = self.param(op, "offset")?;
                if mask.dtype != DType::Uint1 {
                    return Err(MilError::invalid(&ctx, "data_mask must be uint1"));
                }
                let Data::U8(m) = &mask.data else {
                    unreachable!("uint1 decodes to U8")
                };
                let dense = scatter(&nz, m, mask.shape.clone(), &ctx)?;
                let deq = shift_scale(&dense, &scale, offset.as_ref(), &ctx)?;
                let vals = take(&deq, m);
                vec![mask.clone(), vals]
            }
            other => {
                return Err(MilError::unsupported(
                    ctx,
                    format!("constexpr op '{other}'"),
                ))
            }
        };
        if outs.len() != op.outputs.len() {
            return Err(MilError::invalid(
                op_label(op),
                format!(
                    "declares {} outputs, op produces {}",
                    op.outputs.len(),
                    outs.len()
                ),
            ));
        }
        // The declared output types must agree with what we computed.
        for (t, o) in outs.iter().zip(&op.outputs) {
            let (dt, shape) = super::value::tensor_type_of(o.r#type.as_ref(), &op_label(op))?;
            if dt != t.dtype || shape != t.shape {
                return Err(MilError::invalid(
                    op_label(op),
                    format!(
                        "output '{}' declared {dt}{shape:?} but decodes to {}{:?}",
                        o.name, t.dtype, t.shape
                    ),
                ));
            }
        }
        Ok(outs)
    }
}

fn shape_vec(t: &Tensor, ctx: &str) -> Result<Vec<usize>, MilError> {
    t.to_i64()
        .ok_or_else(|| MilError::invalid(ctx, "shape must be integers"))?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| MilError::invalid(ctx, "negative dimension")))
        .collect()
}

/// Picks elements of `d` at `idx` (each < len).
fn gather(d: &Data, idx: impl Iterator<Item = usize>) -> Data {
    macro_rules! g {
        ($($v:ident),*) => {
            match d {
                $(Data::$v(x) => Data::$v(idx.map(|i| x[i].clone()).collect()),)*
            }
        };
    }
    g!(F16, F32, F64, Raw, U8, I8, I16, U16, I32, U32, I64, U64, Str)
}

/// Keeps elements of `t` where `mask` is non-zero, as a rank-1 tensor.
fn take(t: &Tensor, mask: &[u8]) -> Tensor {
    let idx = mask
        .iter()
        .enumerate()
        .filter(|(_, &m)| m != 0)
        .map(|(i, _)| i);
    let data = gather(&t.data, idx);
    Tensor {
        dtype: t.dtype,
        shape: vec![data.len()],
        data,
    }
}

/// Scatters `nz` into the 1-positions of `mask` (row-major); zeros elsewhere.
fn scatter(nz: &Tensor, mask: &[u8], shape: Vec<usize>, ctx: &str) -> Result<Tensor, MilError> {
    let ones = mask.iter().filter(|&&m| m != 0).count();
    if nz.shape.len() != 1 || nz.numel() != ones {
        return Err(MilError::invalid(
            ctx,
            format!(
                "mask has {ones} set bits but nonzero_data has shape {:?}",
                nz.shape
            ),
        ));
    }
    if mask.len() != numel(&shape, ctx)? {
        return Err(MilError::invalid(ctx, "mask size does not match shape"));
    }
    // Index `ones` (== nz.len()) is a sentinel meaning "zero".
    let mut k = 0usize;
    let src: Vec<usize> = mask
        .iter()
        .map(|&m| {
            if m != 0 {
                k += 1;
                k - 1
            } else {
                usize::MAX
            }
        })
        .collect();
    macro_rules! s {
        ($($v:ident => $zero:expr),*) => {
            match &nz.data {
                $(Data::$v(x) => Data::$v(src.iter().map(|&i| if i == usize::MAX { $zero } else { x[i].clone() }).collect()),)*
                Data::Str(_) => return Err(MilError::invalid(ctx, "string nonzero_data")),
            }
        };
    }
    let data = s!(F16 => f16::ZERO, F32 => 0.0, F64 => 0.0, Raw => 0, U8 => 0, I8 => 0, I16 => 0,
                  U16 => 0, I32 => 0, U32 => 0, I64 => 0, U64 => 0);
    Ok(Tensor {
        dtype: nz.dtype,
        shape,
        data,
    })
}

fn check_lut_dtype(lut: &Tensor, ctx: &str) -> Result<(), MilError> {
    match lut.dtype {
        DType::Fp16 | DType::Fp32 | DType::Int8 | DType::Uint8 => Ok(()),
        d => Err(MilError::invalid(
            ctx,
            format!("lut dtype {d} is not fp16/fp32/int8/uint8"),
        )),
    }
}

fn lut_ios16(
    indices: &Tensor,
    lut: &Tensor,
    shape: &Tensor,
    ctx: &str,
) -> Result<Tensor, MilError> {
    check_lut_dtype(lut, ctx)?;
    let shape = shape_vec(shape, ctx)?;
    let n = numel(&shape, ctx)?;
    let nbits = match lut.numel() {
        2 => 1,
        4 => 2,
        16 => 4,
        64 => 6,
        256 => 8,
        k => {
            return Err(MilError::invalid(
                ctx,
                format!("iOS16 lut has {k} entries (must be 2, 4, 16, 64 or 256)"),
            ))
        }
    };
    if lut.shape.len() != 1 || indices.dtype != DType::Uint8 {
        return Err(MilError::invalid(
            ctx,
            "iOS16 lut must be rank 1 and indices uint8",
        ));
    }
    let bytes = indices.to_storage_bytes().unwrap_or_default();
    if Some(bytes.len()) != bits::packed_len(n, nbits) {
        return Err(MilError::invalid(
            ctx,
            format!(
                "indices hold {} bytes, {n} x {nbits}-bit needs {:?}",
                bytes.len(),
                bits::packed_len(n, nbits)
            ),
        ));
    }
    let idx =
        bits::unpack(&bytes, nbits, n).ok_or_else(|| MilError::invalid(ctx, "short indices"))?;
    let data = gather(&lut.data, idx.into_iter().map(usize::from));
    Ok(Tensor {
        dtype: lut.dtype,
        shape,
        data,
    })
}

fn vector_axis(va: Option<&Tensor>, rank: usize, ctx: &str) -> Result<Option<usize>, MilError> {
    let Some(va) = va else { return Ok(None) };
    let v = va
        .to_i64()
        .and_then(|v| v.first().copied())
        .ok_or_else(|| MilError::invalid(ctx, "vector_axis must be an integer scalar"))?;
    let r = rank as i64;
    if v < -r || v >= r {
        return Err(MilError::invalid(
            ctx,
            format!("vector_axis {v} out of range for rank {rank}"),
        ));
    }
    Ok(Some(if v < 0 { (v + r) as usize } else { v as usize }))
}

/// iOS18 LUT: `lut` is `[g0..g(K-1), P, V]` over an index tensor of rank K.
fn lut_ios18(
    indices: &Tensor,
    lut: &Tensor,
    va: Option<&Tensor>,
    ctx: &str,
) -> Result<Tensor, MilError> {
    check_lut_dtype(lut, ctx)?;
    let Data::U8(idx) = &indices.data else {
        return Err(MilError::invalid(
            ctx,
            format!(
                "indices dtype {} is not an unsigned sub-byte type or uint8",
                indices.dtype
            ),
        ));
    };
    if !matches!(
        indices.dtype,
        DType::Uint1 | DType::Uint2 | DType::Uint3 | DType::Uint4 | DType::Uint6 | DType::Uint8
    ) {
        return Err(MilError::invalid(
            ctx,
            format!("indices dtype {} is not uint1..uint8", indices.dtype),
        ));
    }
    let k = indices.shape.len();
    if lut.shape.len() != k + 2 || k == 0 {
        return Err(MilError::invalid(
            ctx,
            format!("lut rank {} must be indices rank {k} + 2", lut.shape.len()),
        ));
    }
    let palette = lut.shape[k];
    let vsize = lut.shape[k + 1];
    if palette != 1usize << indices.dtype.bits() {
        return Err(MilError::invalid(
            ctx,
            format!(
                "lut has {palette} entries but indices are {}",
                indices.dtype
            ),
        ));
    }
    let mut block = Vec::with_capacity(k);
    for i in 0..k {
        let g = lut.shape[i];
        if g == 0 || !indices.shape[i].is_multiple_of(g) {
            return Err(MilError::invalid(
                ctx,
                format!(
                    "indices dim {i} ({}) is not divisible by lut dim {g}",
                    indices.shape[i]
                ),
            ));
        }
        block.push(indices.shape[i] / g);
    }
    let va = vector_axis(va, k, ctx)?;
    if vsize > 1 && va.is_none() {
        return Err(MilError::invalid(
            ctx,
            "vector_axis is required for vector palettization",
        ));
    }
    // Strides of the LUT's group grid, in units of one palette (P*V values).
    let mut gstride = vec![0usize; k];
    let mut s = 1usize;
    for i in (0..k).rev() {
        gstride[i] = s;
        s *= lut.shape[i];
    }
    let n = idx.len();
    let pv = palette * vsize;
    // Source offset into the flattened LUT for every index position.
    let mut src = Vec::with_capacity(n * vsize);
    let mut pos = vec![0usize; k];
    let mut out_shape = indices.shape.clone();
    if let (Some(a), true) = (va, vsize > 1) {
        out_shape[a] *= vsize;
    }
    let mut bases = Vec::with_capacity(n);
    for &ix in idx.iter() {
        let mut g = 0usize;
        for i in 0..k {
            g += (pos[i] / block[i]) * gstride[i];
        }
        bases.push(g * pv + usize::from(ix) * vsize);
        for i in (0..k).rev() {
            pos[i] += 1;
            if pos[i] < indices.shape[i] {
                break;
            }
            pos[i] = 0;
        }
    }
    if vsize == 1 {
        src = bases;
    } else {
        // out[p with p[a] -> p[a]*V + j] = lut[...][idx[p]][j]
        let a = va.unwrap_or(0);
        let outer: usize = indices.shape[..a].iter().product();
        let da = indices.shape[a];
        let inner: usize = indices.shape[a + 1..].iter().product();
        src.resize(n * vsize, 0);
        for o in 0..outer {
            for p in 0..da {
                for j in 0..vsize {
                    for q in 0..inner {
                        let in_flat = (o * da + p) * inner + q;
                        let out_flat = (o * da * vsize + p * vsize + j) * inner + q;
                        src[out_flat] = bases[in_flat] + j;
                    }
                }
            }
        }
    }
    let data = gather(&lut.data, src.into_iter());
    Ok(Tensor {
        dtype: lut.dtype,
        shape: out_shape,
        data,
    })
}

/// Dense index tensor (zeros where the mask is 0) for `lut_to_sparse`.
fn dense_indices(mask: &Tensor, nz: &Tensor, ctx: &str) -> Result<(Vec<u8>, Tensor), MilError> {
    if mask.dtype != DType::Uint1 {
        return Err(MilError::invalid(ctx, "indices_mask must be uint1"));
    }
    let Data::U8(m) = &mask.data else {
        unreachable!("uint1 decodes to U8")
    };
    let mut dense = scatter(nz, m, mask.shape.clone(), ctx)?;
    dense.dtype = nz.dtype;
    Ok((m.clone(), dense))
}

/// Repeats the mask `V` times along `vector_axis` and takes the values of
/// `dense` at the expanded mask's 1-positions (row-major).
fn expand_mask_and_take(
    m: &[u8],
    mshape: &[usize],
    dense: &Tensor,
    va: Option<&Tensor>,
    ctx: &str,
) -> Result<(Tensor, Tensor), MilError> {
    let k = mshape.len();
    let vsize = if k > 0 && dense.shape.len() == k {
        dense.numel() / m.len().max(1)
    } else {
        1
    };
    let (em, eshape) = if vsize > 1 {
        let a = vector_axis(va, k, ctx)?.unwrap_or(0);
        let outer: usize = mshape[..a].iter().product();
        let da = mshape[a];
        let inner: usize = mshape[a + 1..].iter().product();
        let mut out = Vec::with_capacity(m.len() * vsize);
        for o in 0..outer {
            for p in 0..da {
                for _ in 0..vsize {
                    let s = (o * da + p) * inner;
                    out.extend_from_slice(&m[s..s + inner]);
                }
            }
        }
        let mut sh = mshape.to_vec();
        sh[a] *= vsize;
        (out, sh)
    } else {
        (m.to_vec(), mshape.to_vec())
    };
    let vals = take(dense, &em);
    Ok((
        Tensor {
            dtype: DType::Uint1,
            shape: eshape,
            data: Data::U8(em),
        },
        vals,
    ))
}

fn affine(
    q: &Tensor,
    zp: &Tensor,
    scale: &Tensor,
    axis: &Tensor,
    ctx: &str,
) -> Result<Tensor, MilError> {
    let r = q.shape.len() as i64;
    let a = axis
        .to_i64()
        .and_then(|v| v.first().copied())
        .ok_or_else(|| MilError::invalid(ctx, "axis must be an integer scalar"))?;
    if r == 0 || a < -r || a >= r {
        return Err(MilError::invalid(
            ctx,
            format!("axis {a} out of range for rank {r}"),
        ));
    }
    let a = if a < 0 { a + r } else { a } as usize;
    let qv = q
        .to_f32()
        .ok_or_else(|| MilError::invalid(ctx, "quantized_data must be int8/uint8"))?;
    if !matches!(q.dtype, DType::Int8 | DType::Uint8) {
        return Err(MilError::invalid(ctx, "quantized_data must be int8/uint8"));
    }
    let zv = zp
        .to_f32()
        .ok_or_else(|| MilError::invalid(ctx, "bad zero_point"))?;
    let sv = scale
        .to_f32()
        .ok_or_else(|| MilError::invalid(ctx, "bad scale"))?;
    let c = q.shape[a];
    let per = |t: &[f32], what: &str| -> Result<(), MilError> {
        if t.len() == 1 || t.len() == c {
            Ok(())
        } else {
            Err(MilError::invalid(
                ctx,
                format!("{what} has {} elements, axis has {c}", t.len()),
            ))
        }
    };
    per(&zv, "zero_point")?;
    per(&sv, "scale")?;
    let inner: usize = q.shape[a + 1..].iter().product();
    let f = |i: usize| {
        let ch = (i / inner.max(1)) % c.max(1);
        let z = if zv.len() == 1 { zv[0] } else { zv[ch] };
        let s = if sv.len() == 1 { sv[0] } else { sv[ch] };
        (qv[i] - z) * s
    };
    let data = match scale.dtype {
        DType::Fp16 => Data::F16((0..qv.len()).map(|i| f16::from_f32(f(i))).collect()),
        DType::Fp32 => Data::F32((0..qv.len()).map(f).collect()),
        d => {
            return Err(MilError::invalid(
                ctx,
                format!("scale dtype {d} is not fp16/fp32"),
            ))
        }
    };
    Ok(Tensor {
        dtype: scale.dtype,
        shape: q.shape.clone(),
        data,
    })
}

fn shift_scale(
    data: &Tensor,
    scale: &Tensor,
    offset: Option<&Tensor>,
    ctx: &str,
) -> Result<Tensor, MilError> {
    let k = data.shape.len();
    if scale.shape.len() != k {
        return Err(MilError::invalid(ctx, "scale rank differs from data rank"));
    }
    if let Some(o) = offset {
        if o.shape != scale.shape {
            return Err(MilError::invalid(
                ctx,
                "offset shape differs from scale shape",
            ));
        }
    }
    let mut block = Vec::with_capacity(k);
    for i in 0..k {
        if scale.shape[i] == 0 || !data.shape[i].is_multiple_of(scale.shape[i]) {
            return Err(MilError::invalid(
                ctx,
                format!("data dim {i} not divisible by scale dim"),
            ));
        }
        block.push(data.shape[i] / scale.shape[i]);
    }
    let dv = data
        .to_f32()
        .ok_or_else(|| MilError::invalid(ctx, "bad data dtype"))?;
    let sv = scale
        .to_f32()
        .ok_or_else(|| MilError::invalid(ctx, "bad scale dtype"))?;
    let ov = match offset {
        Some(o) => Some(
            o.to_f32()
                .ok_or_else(|| MilError::invalid(ctx, "bad offset dtype"))?,
        ),
        None => None,
    };
    // Flat index into scale for every data position.
    let mut sstride = vec![0usize; k];
    let mut s = 1;
    for i in (0..k).rev() {
        sstride[i] = s;
        s *= scale.shape[i];
    }
    let mut pos = vec![0usize; k];
    let mut sidx = Vec::with_capacity(dv.len());
    for _ in 0..dv.len() {
        sidx.push(
            (0..k)
                .map(|i| (pos[i] / block[i]) * sstride[i])
                .sum::<usize>(),
        );
        for i in (0..k).rev() {
            pos[i] += 1;
            if pos[i] < data.shape[i] {
                break;
            }
            pos[i] = 0;
        }
    }
    let out = match scale.dtype {
        DType::Fp16 => {
            let r = |x: f32| f16::from_f32(x).to_f32();
            Data::F16(
                dv.iter()
                    .zip(&sidx)
                    .map(|(&d, &j)| {
                        let mut x = r(d);
                        if let Some(o) = &ov {
                            x = r(x - r(o[j]));
                        }
                        f16::from_f32(sv[j] * x)
                    })
                    .collect(),
            )
        }
        DType::Fp32 => Data::F32(
            dv.iter()
                .zip(&sidx)
                .map(|(&d, &j)| {
                    let x = match &ov {
                        Some(o) => d - o[j],
                        None => d,
                    };
                    sv[j] * x
                })
                .collect(),
        ),
        d => {
            return Err(MilError::invalid(
                ctx,
                format!("scale dtype {d} is not fp16/fp32"),
            ))
        }
    };
    Ok(Tensor {
        dtype: scale.dtype,
        shape: data.shape.clone(),
        data: out,
    })
}
