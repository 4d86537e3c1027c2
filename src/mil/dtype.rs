//! MIL element types: the `DataType` enum of the protobuf, with the facts we
//! need about each (bit width, blob code, short name).

use crate::blob::BlobDtype;
use crate::proto::mil::DataType as P;

/// A MIL tensor element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum DType {
    Bool,
    Str,
    Fp16,
    Fp32,
    Fp64,
    Bf16,
    Int8,
    Int16,
    Int32,
    Int64,
    Int4,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Uint4,
    Uint2,
    Uint1,
    Uint6,
    Uint3,
    Fp8e4m3fn,
    Fp8e5m2,
}

impl DType {
    /// From the protobuf enum value; `None` for UNUSED_TYPE or unknown codes.
    pub fn from_proto(v: i32) -> Option<Self> {
        use DType::*;
        Some(match P::try_from(v).ok()? {
            P::UnusedType => return None,
            P::Bool => Bool,
            P::String => Str,
            P::Float16 => Fp16,
            P::Float32 => Fp32,
            P::Float64 => Fp64,
            P::Bfloat16 => Bf16,
            P::Int8 => Int8,
            P::Int16 => Int16,
            P::Int32 => Int32,
            P::Int64 => Int64,
            P::Int4 => Int4,
            P::Uint8 => Uint8,
            P::Uint16 => Uint16,
            P::Uint32 => Uint32,
            P::Uint64 => Uint64,
            P::Uint4 => Uint4,
            P::Uint2 => Uint2,
            P::Uint1 => Uint1,
            P::Uint6 => Uint6,
            P::Uint3 => Uint3,
            P::Float8e4m3fn => Fp8e4m3fn,
            P::Float8e5m2 => Fp8e5m2,
        })
    }

    /// The protobuf enum value.
    pub fn to_proto(self) -> i32 {
        use DType::*;
        (match self {
            Bool => P::Bool,
            Str => P::String,
            Fp16 => P::Float16,
            Fp32 => P::Float32,
            Fp64 => P::Float64,
            Bf16 => P::Bfloat16,
            Int8 => P::Int8,
            Int16 => P::Int16,
            Int32 => P::Int32,
            Int64 => P::Int64,
            Int4 => P::Int4,
            Uint8 => P::Uint8,
            Uint16 => P::Uint16,
            Uint32 => P::Uint32,
            Uint64 => P::Uint64,
            Uint4 => P::Uint4,
            Uint2 => P::Uint2,
            Uint1 => P::Uint1,
            Uint6 => P::Uint6,
            Uint3 => P::Uint3,
            Fp8e4m3fn => P::Float8e4m3fn,
            Fp8e5m2 => P::Float8e5m2,
        }) as i32
    }

    /// Bits per element in storage (strings report 0).
    pub fn bits(self) -> u32 {
        use DType::*;
        match self {
            Uint1 => 1,
            Uint2 => 2,
            Uint3 => 3,
            Int4 | Uint4 => 4,
            Uint6 => 6,
            Bool | Int8 | Uint8 | Fp8e4m3fn | Fp8e5m2 => 8,
            Fp16 | Bf16 | Int16 | Uint16 => 16,
            Fp32 | Int32 | Uint32 => 32,
            Fp64 | Int64 | Uint64 => 64,
            Str => 0,
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::Fp16 | DType::Fp32 | DType::Fp64 | DType::Bf16)
    }

    /// Whether elements are packed below byte granularity.
    pub fn is_sub_byte(self) -> bool {
        self.bits() > 0 && self.bits() < 8
    }

    /// The blob dtype code that stores this type, if it can live in a blob.
    pub fn blob_dtype(self) -> Option<BlobDtype> {
        use DType::*;
        Some(match self {
            Fp16 => BlobDtype::Float16,
            Fp32 => BlobDtype::Float32,
            Uint8 => BlobDtype::UInt8,
            Int8 => BlobDtype::Int8,
            Bf16 => BlobDtype::BFloat16,
            Int16 => BlobDtype::Int16,
            Uint16 => BlobDtype::UInt16,
            Int4 => BlobDtype::Int4,
            Uint1 => BlobDtype::UInt1,
            Uint2 => BlobDtype::UInt2,
            Uint4 => BlobDtype::UInt4,
            Uint3 => BlobDtype::UInt3,
            Uint6 => BlobDtype::UInt6,
            Int32 => BlobDtype::Int32,
            Uint32 => BlobDtype::UInt32,
            Fp8e4m3fn => BlobDtype::Float8E4M3FN,
            Fp8e5m2 => BlobDtype::Float8E5M2,
            Bool | Str | Fp64 | Int64 | Uint64 => return None,
        })
    }

    /// Short lowercase name as coremltools prints it (`fp16`, `uint4`, ...).
    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            Bool => "bool",
            Str => "string",
            Fp16 => "fp16",
            Fp32 => "fp32",
            Fp64 => "fp64",
            Bf16 => "bf16",
            Int8 => "int8",
            Int16 => "int16",
            Int32 => "int32",
            Int64 => "int64",
            Int4 => "int4",
            Uint8 => "uint8",
            Uint16 => "uint16",
            Uint32 => "uint32",
            Uint64 => "uint64",
            Uint4 => "uint4",
            Uint2 => "uint2",
            Uint1 => "uint1",
            Uint6 => "uint6",
            Uint3 => "uint3",
            Fp8e4m3fn => "fp8e4m3fn",
            Fp8e5m2 => "fp8e5m2",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
