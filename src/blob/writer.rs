//! Streaming writer for blob storage files.

use super::format::{align64, BlobDtype, HEADER_LEN, RECORD_LEN, SENTINEL, STORAGE_VERSION};
use super::BlobError;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Appends blobs to a new storage file; the header's count is written by
/// [`BlobWriter::finish`].
pub struct BlobWriter {
    path: PathBuf,
    out: BufWriter<File>,
    pos: u64,
    count: u32,
}

impl BlobWriter {
    /// Creates (truncates) `path` and writes a placeholder header.
    pub fn create(path: &Path) -> Result<Self, BlobError> {
        let file = File::create(path).map_err(|source| BlobError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut w = Self {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
            pos: 0,
            count: 0,
        };
        w.write_all(&header(0))?;
        Ok(w)
    }

    fn io(&self, source: std::io::Error) -> BlobError {
        BlobError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn write_all(&mut self, b: &[u8]) -> Result<(), BlobError> {
        self.out.write_all(b).map_err(|e| self.io(e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Appends one blob and returns the offset of its record (the value to
    /// store in `BlobFileValue.offset`). `padding_bits` is the number of
    /// unused bits in the last byte of sub-byte payloads.
    pub fn append(
        &mut self,
        dtype: BlobDtype,
        payload: &[u8],
        padding_bits: u8,
    ) -> Result<u64, BlobError> {
        let rec_at = align64(self.pos).expect("blob file offset overflow");
        let gap = (rec_at - self.pos) as usize;
        if gap > 0 {
            self.write_all(&[0u8; 64][..gap])?;
        }
        let data_at = rec_at + RECORD_LEN;
        let mut rec = [0u8; RECORD_LEN as usize];
        rec[0..4].copy_from_slice(&SENTINEL.to_le_bytes());
        rec[4..8].copy_from_slice(&dtype.code().to_le_bytes());
        rec[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        rec[16..24].copy_from_slice(&data_at.to_le_bytes());
        rec[24..32].copy_from_slice(&u64::from(padding_bits).to_le_bytes());
        self.write_all(&rec)?;
        self.write_all(payload)?;
        self.count = self
            .count
            .checked_add(1)
            .ok_or_else(|| self.io(std::io::Error::other("more than 2^32 blobs")))?;
        Ok(rec_at)
    }

    /// Number of blobs written so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.pos
    }

    /// Whether nothing but the header was written.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes the final header, flushes and syncs; returns the file size.
    pub fn finish(mut self) -> Result<u64, BlobError> {
        self.out.flush().map_err(|e| self.io(e))?;
        let count = self.count;
        let pos = self.pos;
        let path = self.path.clone();
        let io = |source| BlobError::Io {
            path: path.clone(),
            source,
        };
        let mut file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header(count)).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(pos)
    }
}

fn header(count: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(&count.to_le_bytes());
    h[4..8].copy_from_slice(&STORAGE_VERSION.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::super::{BlobFile, BlobRecord};
    use super::*;

    #[test]
    fn layout_matches_coremltools() {
        // Three blobs as in the format doc: records at 64, 9344, 13504 and no
        // padding after the last payload.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weight.bin");
        let mut w = BlobWriter::create(&p).unwrap();
        assert_eq!(
            w.append(BlobDtype::Float16, &vec![1u8; 9216], 0).unwrap(),
            64
        );
        assert_eq!(
            w.append(BlobDtype::Float16, &vec![2u8; 4096], 0).unwrap(),
            9344
        );
        assert_eq!(
            w.append(BlobDtype::UInt4, &[0x21, 0xf3, 0x09], 4).unwrap(),
            13504
        );
        assert_eq!(w.finish().unwrap(), 13504 + 64 + 3);
        let f = BlobFile::open(&p).unwrap();
        assert_eq!(f.len(), 13571);
        let r: Vec<BlobRecord> = f.records().copied().collect();
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].data_offset, 13568);
        assert_eq!(r[2].padding_bits, 4);
        assert_eq!(f.payload(&r[2]), &[0x21, 0xf3, 0x09]);
        assert!(f.record(65).is_err());
    }
}
