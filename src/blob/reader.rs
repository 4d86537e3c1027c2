//! Memory-mapped, validated reader for blob storage files.

use super::format::{align64, BlobDtype, HEADER_LEN, RECORD_LEN, SENTINEL, STORAGE_VERSION};
use super::BlobError;
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// One validated metadata record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRecord {
    /// Offset of the 64-byte record (what the program references).
    pub offset: u64,
    /// Element type.
    pub dtype: BlobDtype,
    /// Payload size in bytes.
    pub size: u64,
    /// Absolute offset of the payload.
    pub data_offset: u64,
    /// Unused bits in the last payload byte (sub-byte types).
    pub padding_bits: u8,
}

/// A blob storage file, memory-mapped, with every record validated.
#[derive(Debug)]
pub struct BlobFile {
    path: PathBuf,
    map: Option<Mmap>,
    records: BTreeMap<u64, BlobRecord>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl BlobFile {
    /// Maps and validates `path`.
    pub fn open(path: &Path) -> Result<Self, BlobError> {
        let io = |source| BlobError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // SAFETY: the file is opened read-only and we never hand out
        // references that outlive `self`. Another process truncating the file
        // while we read it would fault; that is the accepted risk of every
        // mmap-based reader (Core ML's own included).
        let map = if len == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&file) }.map_err(io)?)
        };
        #[cfg(unix)]
        if let Some(m) = &map {
            // We read payloads front to back; ask for aggressive read-ahead.
            let _ = m.advise(memmap2::Advice::Sequential);
        }
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let records = Self::validate(path, bytes)?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            records,
        })
    }

    /// Validates a whole storage image held in memory (used by `open` and
    /// by the fuzz target).
    pub fn validate(path: &Path, bytes: &[u8]) -> Result<BTreeMap<u64, BlobRecord>, BlobError> {
        let p = || path.to_path_buf();
        let len = bytes.len() as u64;
        if len < HEADER_LEN {
            return Err(BlobError::TruncatedHeader { path: p(), len });
        }
        let count = u32_at(bytes, 0);
        let version = u32_at(bytes, 4);
        if version != STORAGE_VERSION {
            return Err(BlobError::BadVersion { path: p(), version });
        }
        let mut records = BTreeMap::new();
        let mut at = HEADER_LEN;
        for _ in 0..count {
            let rec_end = at.saturating_add(RECORD_LEN);
            if rec_end > len {
                return Err(BlobError::Truncated {
                    path: p(),
                    what: "record",
                    offset: at,
                    needed: rec_end,
                    len,
                });
            }
            let r = &bytes[at as usize..rec_end as usize];
            let sentinel = u32_at(r, 0);
            if sentinel != SENTINEL {
                return Err(BlobError::BadSentinel {
                    path: p(),
                    offset: at,
                    found: sentinel,
                });
            }
            let code = u32_at(r, 4);
            let dtype = BlobDtype::from_code(code).ok_or(BlobError::UnknownDtype {
                path: p(),
                offset: at,
                code,
            })?;
            let size = u64_at(r, 8);
            let data_offset = u64_at(r, 16);
            let padding = u64_at(r, 24);
            let bad = |reason: String| BlobError::BadLayout {
                path: p(),
                offset: at,
                reason,
            };
            if !data_offset.is_multiple_of(64) {
                return Err(bad(format!(
                    "payload offset {data_offset} is not 64-byte aligned"
                )));
            }
            if data_offset < rec_end {
                return Err(bad(format!(
                    "payload offset {data_offset} overlaps the record or an earlier blob"
                )));
            }
            let data_end = data_offset.saturating_add(size);
            if data_end > len {
                return Err(BlobError::Truncated {
                    path: p(),
                    what: "payload",
                    offset: data_offset,
                    needed: data_end,
                    len,
                });
            }
            if padding >= 8 || (padding != 0 && !dtype.is_sub_byte()) {
                return Err(bad(format!(
                    "invalid padding of {padding} bits for {dtype:?}"
                )));
            }
            if dtype.is_sub_byte() && size == 0 && padding != 0 {
                return Err(bad("padding bits on an empty payload".into()));
            }
            if !dtype.is_sub_byte() && !size.is_multiple_of(u64::from(dtype.bits() / 8)) {
                return Err(bad(format!(
                    "payload of {size} bytes is not a whole number of {dtype:?} elements"
                )));
            }
            records.insert(
                at,
                BlobRecord {
                    offset: at,
                    dtype,
                    size,
                    data_offset,
                    padding_bits: padding as u8,
                },
            );
            at = align64(data_end).unwrap_or(u64::MAX);
        }
        Ok(records)
    }

    /// The file this storage was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record that starts at `offset`.
    pub fn record(&self, offset: u64) -> Result<&BlobRecord, BlobError> {
        self.records.get(&offset).ok_or(BlobError::NoRecord {
            path: self.path.clone(),
            offset,
        })
    }

    /// All records, by offset.
    pub fn records(&self) -> impl Iterator<Item = &BlobRecord> {
        self.records.values()
    }

    /// The payload bytes of a record obtained from this file.
    pub fn payload(&self, rec: &BlobRecord) -> &[u8] {
        let bytes: &[u8] = self.map.as_deref().unwrap_or(&[]);
        // In bounds: checked in `validate` for every record of this file.
        bytes
            .get(rec.data_offset as usize..(rec.data_offset + rec.size) as usize)
            .unwrap_or(&[])
    }

    /// Lets the OS drop the pages of a payload we are done with, so that
    /// streaming through a multi-GB file does not grow the resident set to
    /// the file's size. The data stays in the page cache; a later read
    /// faults it back in.
    pub fn release(&self, rec: &BlobRecord) {
        let Some(map) = &self.map else { return };
        const PAGE: u64 = 4096;
        let start = rec.data_offset / PAGE * PAGE;
        let end = (rec.data_offset + rec.size).min(map.len() as u64);
        if end <= start {
            return;
        }
        // SAFETY: the mapping is a read-only, private mapping of a file;
        // MADV_DONTNEED on it only discards our page-table entries, and any
        // later access re-reads the same bytes from the file. No `&[u8]`
        // handed out becomes invalid.
        #[cfg(unix)]
        let _ = unsafe {
            map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start as usize,
                (end - start) as usize,
            )
        };
    }

    /// File length in bytes.
    pub fn len(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.len() as u64)
    }

    /// Whether the file is empty (never true for a valid file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
