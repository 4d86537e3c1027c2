//! Dense tensors decoded from MIL values: typed element storage plus shape.

use super::dtype::DType;
use half::f16;
use std::borrow::Cow;

/// Element storage. Sub-byte unsigned types are unpacked to one `u8` per
/// element, `int4` to one `i8`, `bool` to 0/1 bytes.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Data {
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// bf16 and fp8 kept as raw little-endian bytes (never computed on).
    Raw(Vec<u8>),
    U8(Vec<u8>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    Str(Vec<Vec<u8>>),
}

impl Data {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F16(v) => v.len(),
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::Raw(v) => v.len(),
            Data::U8(v) => v.len(),
            Data::I8(v) => v.len(),
            Data::I16(v) => v.len(),
            Data::U16(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::U32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::U64(v) => v.len(),
            Data::Str(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dense tensor: dtype, shape (row-major) and elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Element type as declared in the program.
    pub dtype: DType,
    /// Shape; empty for scalars.
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: Data,
}

impl Tensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Elements widened to i64 for integer-valued types (indices, axes,
    /// shapes); `None` for floats and strings.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        Some(match &self.data {
            Data::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Data::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Data::I16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Data::U16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Data::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Data::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Data::I64(v) => v.clone(),
            Data::U64(v) => v.iter().map(|&x| x as i64).collect(),
            _ => return None,
        })
    }

    /// Elements as f32 for float and integer types (exact for fp16 and for
    /// integers up to 2^24).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        Some(match &self.data {
            Data::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Data::F32(v) => v.clone(),
            Data::F64(v) => v.iter().map(|&x| x as f32).collect(),
            _ => self.to_i64()?.into_iter().map(|x| x as f32).collect(),
        })
    }

    /// The single string of a string scalar.
    pub fn as_str(&self) -> Option<&[u8]> {
        match &self.data {
            Data::Str(v) if v.len() == 1 => Some(&v[0]),
            _ => None,
        }
    }

    /// Little-endian storage bytes as Core ML stores this tensor in a blob
    /// (sub-byte types packed). `None` for types that cannot live in a blob.
    pub fn to_storage_bytes(&self) -> Option<Vec<u8>> {
        self.storage_bytes().map(Cow::into_owned)
    }

    /// [`Tensor::to_storage_bytes`] without a copy where the elements'
    /// memory already is those bytes (byte-sized types, and on a
    /// little-endian machine every multi-byte type): a weight's codes go to
    /// the blob writer straight from the buffer the kernel filled.
    pub fn storage_bytes(&self) -> Option<Cow<'_, [u8]>> {
        storage_bytes(self.dtype, &self.data)
    }
}

/// The storage bytes of `data` as elements of `dtype` (see
/// [`Tensor::storage_bytes`]).
pub fn storage_bytes(dtype: DType, data: &Data) -> Option<Cow<'_, [u8]>> {
    use crate::kernels::bits;
    let bits_n = dtype.bits();
    fn le<T: bytemuck::Pod, const N: usize>(v: &[T], f: impl Fn(&T) -> [u8; N]) -> Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(v))
        } else {
            Cow::Owned(v.iter().flat_map(f).collect())
        }
    }
    Some(match data {
        Data::F16(v) => le(v, |x| x.to_bits().to_le_bytes()),
        Data::F32(v) => le(v, |x| x.to_le_bytes()),
        Data::F64(v) => le(v, |x| x.to_le_bytes()),
        Data::Raw(v) => Cow::Borrowed(v),
        Data::U8(v) if dtype.is_sub_byte() => Cow::Owned(bits::pack(v, bits_n)),
        Data::U8(v) => Cow::Borrowed(v),
        Data::I8(v) if dtype.is_sub_byte() => {
            let raw: Vec<u8> = v.iter().map(|&x| (x as u8) & 0x0f).collect();
            Cow::Owned(bits::pack(&raw, bits_n))
        }
        Data::I8(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        Data::I16(v) => le(v, |x| x.to_le_bytes()),
        Data::U16(v) => le(v, |x| x.to_le_bytes()),
        Data::I32(v) => le(v, |x| x.to_le_bytes()),
        Data::U32(v) => le(v, |x| x.to_le_bytes()),
        Data::I64(v) => le(v, |x| x.to_le_bytes()),
        Data::U64(v) => le(v, |x| x.to_le_bytes()),
        Data::Str(_) => return None,
    })
}
