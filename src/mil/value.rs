//! Decoding MIL `Value`s (immediate or blob-backed) into [`Tensor`]s, and
//! building the `Value`/`ValueType` messages that the writer emits.

use super::dtype::DType;
use super::tensor::{Data, Tensor};
use super::MilError;
use crate::blob::{BlobFile, BlobRecord};
use crate::kernels::bits;
use crate::proto::mil::{
    self, dimension, tensor_value, value, value_type, Dimension, TensorType, TensorValue, ValueType,
};
use half::f16;
use std::collections::BTreeMap;

/// Blob files of a package, keyed by the `fileName` the program uses
/// (for example `@model_path/weights/weight.bin`).
pub type BlobFiles = BTreeMap<String, BlobFile>;

/// Dtype and static shape of a tensor type. Fails on non-tensor types and
/// on unknown dimensions (compile-time values always have static shapes).
pub fn tensor_type_of(vt: Option<&ValueType>, ctx: &str) -> Result<(DType, Vec<usize>), MilError> {
    let Some(value_type::Type::TensorType(tt)) = vt.and_then(|v| v.r#type.as_ref()) else {
        return Err(MilError::invalid(ctx, "expected a tensor type"));
    };
    static_shape(tt, ctx)
}

/// Dtype and static shape of a `TensorType`.
pub fn static_shape(tt: &TensorType, ctx: &str) -> Result<(DType, Vec<usize>), MilError> {
    let dtype = DType::from_proto(tt.data_type).ok_or_else(|| {
        MilError::invalid(ctx, format!("unknown data type code {}", tt.data_type))
    })?;
    if tt.rank < 0 || tt.rank as usize != tt.dimensions.len() {
        return Err(MilError::invalid(
            ctx,
            format!(
                "rank {} does not match {} dimensions",
                tt.rank,
                tt.dimensions.len()
            ),
        ));
    }
    let mut shape = Vec::with_capacity(tt.dimensions.len());
    for d in &tt.dimensions {
        match &d.dimension {
            Some(dimension::Dimension::Constant(c)) => {
                let s = usize::try_from(c.size).map_err(|_| {
                    MilError::invalid(ctx, format!("dimension {} too large", c.size))
                })?;
                shape.push(s);
            }
            _ => return Err(MilError::invalid(ctx, "dimension is not a known constant")),
        }
    }
    Ok((dtype, shape))
}

/// Element count of a shape, or an error on overflow.
pub fn numel(shape: &[usize], ctx: &str) -> Result<usize, MilError> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| MilError::invalid(ctx, format!("shape {shape:?} overflows")))
}

/// Resolves a blob reference: the file, the record, checked against the
/// declared dtype and shape.
pub fn blob_record<'a>(
    blobs: &'a BlobFiles,
    bv: &mil::value::BlobFileValue,
    dtype: DType,
    shape: &[usize],
    ctx: &str,
) -> Result<(&'a BlobFile, BlobRecord), MilError> {
    let file = blobs.get(&bv.file_name).ok_or_else(|| {
        MilError::invalid(
            ctx,
            format!("references unknown weight file '{}'", bv.file_name),
        )
    })?;
    let rec = *file.record(bv.offset)?;
    let expect = dtype.blob_dtype().ok_or_else(|| {
        MilError::invalid(ctx, format!("dtype {dtype} cannot be stored in a blob"))
    })?;
    if rec.dtype != expect {
        return Err(MilError::invalid(
            ctx,
            format!(
                "blob at offset {} holds {:?} but the program declares {dtype}",
                bv.offset, rec.dtype
            ),
        ));
    }
    let n = numel(shape, ctx)?;
    let want = bits::packed_len(n, dtype.bits())
        .ok_or_else(|| MilError::invalid(ctx, "blob size overflows"))? as u64;
    if rec.size != want {
        return Err(MilError::invalid(
            ctx,
            format!(
                "blob at offset {} has {} bytes but {dtype}{shape:?} needs {want}",
                bv.offset, rec.size
            ),
        ));
    }
    if dtype.is_sub_byte() && rec.padding_bits != bits::padding_bits(n, dtype.bits()) {
        return Err(MilError::invalid(
            ctx,
            format!(
                "blob at offset {} declares {} padding bits, {dtype}{shape:?} needs {}",
                bv.offset,
                rec.padding_bits,
                bits::padding_bits(n, dtype.bits())
            ),
        ));
    }
    Ok((file, rec))
}

/// Decodes storage bytes (blob payload or immediate `bytes`) of `n`
/// elements of `dtype`.
pub fn decode_storage(bytes: &[u8], dtype: DType, n: usize, ctx: &str) -> Result<Data, MilError> {
    let short = || {
        MilError::invalid(
            ctx,
            format!("{} bytes are too few for {n} x {dtype}", bytes.len()),
        )
    };
    let need = bits::packed_len(n, dtype.bits()).ok_or_else(short)?;
    if bytes.len() != need {
        return Err(MilError::invalid(
            ctx,
            format!("{} bytes, expected {need} for {n} x {dtype}", bytes.len()),
        ));
    }
    fn chunks<const N: usize, T: bytemuck::Pod>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        debug_assert_eq!(std::mem::size_of::<T>(), N);
        if cfg!(target_endian = "little") {
            // The storage bytes are the elements' memory: one copy, not an
            // element loop (a weight blob is a memcpy away from its tensor).
            let n = b.len() / N;
            let mut v: Vec<T> = Vec::with_capacity(n);
            // SAFETY: `v` has room for `n` elements = `n * N` bytes, `b` has
            // at least that many, the regions are distinct, and `T: Pod`
            // makes every byte pattern a valid `T`.
            unsafe {
                std::ptr::copy_nonoverlapping(b.as_ptr(), v.as_mut_ptr().cast::<u8>(), n * N);
                v.set_len(n);
            }
            return v;
        }
        b.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    use DType::*;
    Ok(match dtype {
        Fp16 => Data::F16(chunks(bytes, |a: [u8; 2]| {
            f16::from_bits(u16::from_le_bytes(a))
        })),
        Fp32 => Data::F32(chunks(bytes, f32::from_le_bytes)),
        Fp64 => Data::F64(chunks(bytes, f64::from_le_bytes)),
        Bf16 | Fp8e4m3fn | Fp8e5m2 => Data::Raw(bytes.to_vec()),
        Uint8 | Bool => Data::U8(bytes.to_vec()),
        Int8 => Data::I8(bytes.iter().map(|&b| b as i8).collect()),
        Int16 => Data::I16(chunks(bytes, i16::from_le_bytes)),
        Uint16 => Data::U16(chunks(bytes, u16::from_le_bytes)),
        Int32 => Data::I32(chunks(bytes, i32::from_le_bytes)),
        Uint32 => Data::U32(chunks(bytes, u32::from_le_bytes)),
        Int64 => Data::I64(chunks(bytes, i64::from_le_bytes)),
        Uint64 => Data::U64(chunks(bytes, u64::from_le_bytes)),
        Int4 => Data::I8(bits::sign_extend_4(
            &bits::unpack(bytes, 4, n).ok_or_else(short)?,
        )),
        Uint1 | Uint2 | Uint3 | Uint4 | Uint6 => {
            Data::U8(bits::unpack(bytes, dtype.bits(), n).ok_or_else(short)?)
        }
        Str => return Err(MilError::invalid(ctx, "strings have no byte storage")),
    })
}

/// An fp16 weight read in place from its memory-mapped blob: the values,
/// and where they live (to release the pages afterwards).
#[derive(Debug, Clone, Copy)]
pub struct MappedF16<'a> {
    /// The weight's values, borrowed from the mapping.
    pub values: &'a [f16],
    file: &'a BlobFile,
    rec: BlobRecord,
}

impl MappedF16<'_> {
    /// Lets the mapped pages go (as [`decode_value`] does after its copy).
    pub fn release(&self) {
        self.file.release(&self.rec);
    }
}

/// `v` read in place when it is a blob-backed fp16 tensor whose payload is
/// 2-byte aligned in memory (it always is in a mapped file: payloads start
/// on 64-byte boundaries) on a little-endian machine; `None` otherwise, for
/// [`decode_value`]. Validated like [`decode_value`] validates.
pub fn mapped_f16<'a>(
    v: &mil::Value,
    blobs: &'a BlobFiles,
    ctx: &str,
) -> Result<Option<MappedF16<'a>>, MilError> {
    let Some(value::Value::BlobFileValue(bv)) = &v.value else {
        return Ok(None);
    };
    let (dtype, shape) = tensor_type_of(v.r#type.as_ref(), ctx)?;
    if dtype != DType::Fp16 || cfg!(target_endian = "big") {
        return Ok(None);
    }
    let (file, rec) = blob_record(blobs, bv, dtype, &shape, ctx)?;
    Ok(bytemuck::try_cast_slice::<u8, f16>(file.payload(&rec))
        .ok()
        .map(|values| MappedF16 { values, file, rec }))
}

/// Decodes a compile-time `Value` into a dense tensor.
pub fn decode_value(v: &mil::Value, blobs: &BlobFiles, ctx: &str) -> Result<Tensor, MilError> {
    let (dtype, shape) = tensor_type_of(v.r#type.as_ref(), ctx)?;
    let n = numel(&shape, ctx)?;
    let data = match &v.value {
        Some(value::Value::BlobFileValue(bv)) => {
            let (file, rec) = blob_record(blobs, bv, dtype, &shape, ctx)?;
            let d = decode_storage(file.payload(&rec), dtype, n, ctx)?;
            // The decoded copy is all we need now: let the mapped pages go
            // so streaming a multi-GB model keeps a small resident set.
            file.release(&rec);
            d
        }
        Some(value::Value::ImmediateValue(iv)) => match &iv.value {
            Some(mil::value::immediate_value::Value::Tensor(tv)) => {
                decode_immediate(tv, dtype, n, ctx)?
            }
            _ => return Err(MilError::invalid(ctx, "immediate value is not a tensor")),
        },
        None => {
            return Err(MilError::invalid(
                ctx,
                "value has neither data nor a blob reference",
            ))
        }
    };
    Ok(Tensor { dtype, shape, data })
}

fn decode_immediate(tv: &TensorValue, dtype: DType, n: usize, ctx: &str) -> Result<Data, MilError> {
    use tensor_value::Value as V;
    use DType::*;
    let count = |len: usize| -> Result<(), MilError> {
        if len == n {
            Ok(())
        } else {
            Err(MilError::invalid(
                ctx,
                format!("immediate {dtype} value has {len} elements, shape needs {n}"),
            ))
        }
    };
    let Some(val) = &tv.value else {
        // An empty tensor may omit the data field entirely.
        return if n == 0 {
            Ok(empty(dtype))
        } else {
            Err(MilError::invalid(ctx, "immediate value has no data"))
        };
    };
    Ok(match (dtype, val) {
        (Fp32, V::Floats(f)) => {
            count(f.values.len())?;
            Data::F32(f.values.clone())
        }
        (Fp64, V::Doubles(f)) => {
            count(f.values.len())?;
            Data::F64(f.values.clone())
        }
        (Int32, V::Ints(f)) => {
            count(f.values.len())?;
            Data::I32(f.values.clone())
        }
        (Int16, V::Ints(f)) => {
            count(f.values.len())?;
            Data::I16(f.values.iter().map(|&x| x as i16).collect())
        }
        (Uint16, V::Ints(f)) => {
            count(f.values.len())?;
            Data::U16(f.values.iter().map(|&x| x as u16).collect())
        }
        (Int64, V::LongInts(f)) => {
            count(f.values.len())?;
            Data::I64(f.values.clone())
        }
        (Uint64, V::LongInts(f)) => {
            count(f.values.len())?;
            Data::U64(f.values.iter().map(|&x| x as u64).collect())
        }
        (Bool, V::Bools(f)) => {
            count(f.values.len())?;
            Data::U8(f.values.iter().map(|&b| u8::from(b)).collect())
        }
        (Str, V::Strings(s)) => {
            count(s.values.len())?;
            Data::Str(s.values.clone())
        }
        (_, V::Bytes(b)) if dtype != Str && dtype != Bool => {
            decode_storage(&b.values, dtype, n, ctx)?
        }
        _ => {
            return Err(MilError::invalid(
                ctx,
                format!("immediate {dtype} value is stored in an unexpected field"),
            ))
        }
    })
}

fn empty(dtype: DType) -> Data {
    use DType::*;
    match dtype {
        Fp16 => Data::F16(vec![]),
        Fp32 => Data::F32(vec![]),
        Fp64 => Data::F64(vec![]),
        Int8 | Int4 => Data::I8(vec![]),
        Int16 => Data::I16(vec![]),
        Uint16 => Data::U16(vec![]),
        Int32 => Data::I32(vec![]),
        Uint32 => Data::U32(vec![]),
        Int64 => Data::I64(vec![]),
        Uint64 => Data::U64(vec![]),
        Str => Data::Str(vec![]),
        Bf16 | Fp8e4m3fn | Fp8e5m2 => Data::Raw(vec![]),
        _ => Data::U8(vec![]),
    }
}

/// A `ValueType` for a tensor of static shape.
pub fn tensor_value_type(dtype: DType, shape: &[usize]) -> ValueType {
    ValueType {
        r#type: Some(value_type::Type::TensorType(TensorType {
            data_type: dtype.to_proto(),
            rank: shape.len() as i64,
            dimensions: shape
                .iter()
                .map(|&s| Dimension {
                    dimension: Some(dimension::Dimension::Constant(
                        mil::dimension::ConstantDimension { size: s as u64 },
                    )),
                })
                .collect(),
            attributes: BTreeMap::new(),
        })),
    }
}

/// A `Value` referencing a blob record.
pub fn blob_value(dtype: DType, shape: &[usize], file_name: &str, offset: u64) -> mil::Value {
    mil::Value {
        doc_string: String::new(),
        r#type: Some(tensor_value_type(dtype, shape)),
        value: Some(value::Value::BlobFileValue(mil::value::BlobFileValue {
            file_name: file_name.to_string(),
            offset,
        })),
    }
}

/// An immediate `Value` holding `t`, encoded as coremltools does (§2.7 of
/// the format notes).
pub fn immediate_value(t: &Tensor) -> Result<mil::Value, MilError> {
    use tensor_value::{
        RepeatedBools, RepeatedBytes, RepeatedDoubles, RepeatedFloats, RepeatedInts,
        RepeatedLongInts, RepeatedStrings, Value as V,
    };
    let v = match (&t.data, t.dtype) {
        (Data::F32(v), _) => V::Floats(RepeatedFloats { values: v.clone() }),
        (Data::F64(v), _) => V::Doubles(RepeatedDoubles { values: v.clone() }),
        (Data::I32(v), _) => V::Ints(RepeatedInts { values: v.clone() }),
        (Data::I16(v), _) => V::Ints(RepeatedInts {
            values: v.iter().map(|&x| i32::from(x)).collect(),
        }),
        (Data::U16(v), _) => V::Ints(RepeatedInts {
            values: v.iter().map(|&x| i32::from(x)).collect(),
        }),
        (Data::I64(v), _) => V::LongInts(RepeatedLongInts { values: v.clone() }),
        (Data::U64(v), _) => V::LongInts(RepeatedLongInts {
            values: v.iter().map(|&x| x as i64).collect(),
        }),
        (Data::U8(v), DType::Bool) => V::Bools(RepeatedBools {
            values: v.iter().map(|&x| x != 0).collect(),
        }),
        (Data::Str(v), _) => V::Strings(RepeatedStrings { values: v.clone() }),
        _ => V::Bytes(RepeatedBytes {
            values: t
                .to_storage_bytes()
                .ok_or_else(|| MilError::invalid("immediate value", "cannot encode"))?,
        }),
    };
    Ok(mil::Value {
        doc_string: String::new(),
        r#type: Some(tensor_value_type(t.dtype, &t.shape)),
        value: Some(value::Value::ImmediateValue(mil::value::ImmediateValue {
            value: Some(mil::value::immediate_value::Value::Tensor(TensorValue {
                value: Some(v),
            })),
        })),
    })
}

/// A string scalar `Value` (op `name` attributes).
pub fn string_value(s: &str) -> mil::Value {
    immediate_value(&Tensor {
        dtype: DType::Str,
        shape: vec![],
        data: Data::Str(vec![s.as_bytes().to_vec()]),
    })
    .expect("string scalars always encode")
}

/// Whether coremltools would store a tensor of this dtype and size in the
/// weight file rather than inline (`should_use_weight_file`).
pub fn goes_to_blob(dtype: DType, n: usize, spec_version: i32) -> bool {
    use DType::*;
    if n < 10 {
        return false;
    }
    match dtype {
        Fp16 | Fp32 | Uint8 | Int8 | Int4 | Uint1 | Uint2 | Uint3 | Uint4 | Uint6 => true,
        Int16 | Uint16 | Int32 | Uint32 => spec_version >= 9,
        _ => false,
    }
}
