//! `weight.bin`: MIL blob storage, version 2.
//!
//! ```text
//! offset 0   header (64 B): count u32 | version u32 (=2) | 7 x u64 reserved
//! offset 64  record (64 B): sentinel u32 (0xDEADBEEF) | dtype u32 | size u64
//!                           | data offset u64 | padding bits u64 | 4 x u64 reserved
//!            payload (size B), then zero bytes up to the next multiple of 64
//!            record, payload, ...      (no padding after the last payload)
//! ```
//!
//! A program's `BlobFileValue.offset` points at a *record*, never at a
//! payload. All integers are little-endian.
//!
//! [`BlobFile`] memory-maps a file and validates every record up front with
//! checked arithmetic, so later lookups cannot read out of bounds.
//! [`BlobWriter`] streams records to disk and returns their offsets, so a
//! compressor never holds the output in memory.

mod format;
mod reader;
mod writer;

pub use format::{align64, BlobDtype, HEADER_LEN, RECORD_LEN, SENTINEL, STORAGE_VERSION};
pub use reader::{BlobFile, BlobRecord};
pub use writer::BlobWriter;

use std::path::PathBuf;

/// Everything that can be wrong with a blob storage file.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The file could not be opened, mapped, or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is shorter than the 64-byte header.
    #[error("{path}: truncated blob storage: {len} bytes, shorter than the 64-byte header")]
    TruncatedHeader {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The header names a storage version other than 2.
    #[error("{path}: unsupported blob storage version {version} (expected 2)")]
    BadVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// A record or payload extends past the end of the file.
    #[error("{path}: truncated blob storage: {what} at offset {offset} needs {needed} bytes, file has {len}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// "record" or "payload".
        what: &'static str,
        /// Where it starts.
        offset: u64,
        /// Where it would end.
        needed: u64,
        /// File length.
        len: u64,
    },
    /// A record does not start with 0xDEADBEEF.
    #[error("{path}: blob record at offset {offset}: wrong sentinel {found:#010x} (expected 0xdeadbeef)")]
    BadSentinel {
        /// The file.
        path: PathBuf,
        /// Record offset.
        offset: u64,
        /// The value found.
        found: u32,
    },
    /// A record names a dtype code that Core ML does not define.
    #[error("{path}: blob record at offset {offset}: unknown dtype code {code}")]
    UnknownDtype {
        /// The file.
        path: PathBuf,
        /// Record offset.
        offset: u64,
        /// The code found.
        code: u32,
    },
    /// A record's payload offset is not 64-aligned or overlaps a record.
    #[error("{path}: blob record at offset {offset}: {reason}")]
    BadLayout {
        /// The file.
        path: PathBuf,
        /// Record offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The program references an offset where no record starts.
    #[error("{path}: no blob record at offset {offset} (referenced by the program)")]
    NoRecord {
        /// The file.
        path: PathBuf,
        /// The offset referenced.
        offset: u64,
    },
}
