//! Constants and dtype codes of MIL blob storage v2.

/// Size of the file header and of every per-blob record.
pub const HEADER_LEN: u64 = 64;
/// Size of a per-blob metadata record.
pub const RECORD_LEN: u64 = 64;
/// First four bytes of every record (`ef be ad de` on disk).
pub const SENTINEL: u32 = 0xDEAD_BEEF;
/// The only storage version Core ML reads.
pub const STORAGE_VERSION: u32 = 2;

/// Rounds `x` up to a multiple of 64, or `None` on overflow.
pub fn align64(x: u64) -> Option<u64> {
    x.checked_add(63).map(|v| v & !63)
}

/// Element type of a blob. These codes differ from MIL's `DataType` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobDtype {
    /// IEEE binary16.
    Float16,
    /// IEEE binary32.
    Float32,
    /// u8.
    UInt8,
    /// i8.
    Int8,
    /// bfloat16 (top half of an f32).
    BFloat16,
    /// i16.
    Int16,
    /// u16.
    UInt16,
    /// 4-bit two's complement, packed.
    Int4,
    /// 1-bit, packed.
    UInt1,
    /// 2-bit, packed.
    UInt2,
    /// 4-bit, packed.
    UInt4,
    /// 3-bit, packed.
    UInt3,
    /// 6-bit, packed.
    UInt6,
    /// i32.
    Int32,
    /// u32.
    UInt32,
    /// fp8 e4m3fn.
    Float8E4M3FN,
    /// fp8 e5m2.
    Float8E5M2,
}

impl BlobDtype {
    /// Decodes a record's dtype code.
    pub fn from_code(code: u32) -> Option<Self> {
        use BlobDtype::*;
        Some(match code {
            1 => Float16,
            2 => Float32,
            3 => UInt8,
            4 => Int8,
            5 => BFloat16,
            6 => Int16,
            7 => UInt16,
            8 => Int4,
            9 => UInt1,
            10 => UInt2,
            11 => UInt4,
            12 => UInt3,
            13 => UInt6,
            14 => Int32,
            15 => UInt32,
            16 => Float8E4M3FN,
            17 => Float8E5M2,
            _ => return None,
        })
    }

    /// The code written in a record.
    pub fn code(self) -> u32 {
        use BlobDtype::*;
        match self {
            Float16 => 1,
            Float32 => 2,
            UInt8 => 3,
            Int8 => 4,
            BFloat16 => 5,
            Int16 => 6,
            UInt16 => 7,
            Int4 => 8,
            UInt1 => 9,
            UInt2 => 10,
            UInt4 => 11,
            UInt3 => 12,
            UInt6 => 13,
            Int32 => 14,
            UInt32 => 15,
            Float8E4M3FN => 16,
            Float8E5M2 => 17,
        }
    }

    /// Bits per element.
    pub fn bits(self) -> u32 {
        use BlobDtype::*;
        match self {
            UInt1 => 1,
            UInt2 => 2,
            UInt3 => 3,
            Int4 | UInt4 => 4,
            UInt6 => 6,
            UInt8 | Int8 | Float8E4M3FN | Float8E5M2 => 8,
            Float16 | BFloat16 | Int16 | UInt16 => 16,
            Float32 | Int32 | UInt32 => 32,
        }
    }

    /// Whether elements are packed below byte granularity.
    pub fn is_sub_byte(self) -> bool {
        self.bits() < 8
    }
}
