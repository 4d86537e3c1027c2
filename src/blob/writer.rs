//! Streaming writer for blob storage files.
//!
//! The bytes go to the file from a background thread: the caller tracks
//! offsets itself (they depend only on the sizes appended), hands finished
//! chunks of about a megabyte over a bounded channel and goes back to
//! computing the next weights while the kernel copies this chunk into the
//! page cache. The file's content is the same as with direct writes.

use super::format::{align64, BlobDtype, HEADER_LEN, RECORD_LEN, SENTINEL, STORAGE_VERSION};
use super::BlobError;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Bytes collected before a chunk is handed to the writing thread.
const CHUNK: usize = 1 << 20;
/// Chunks in flight at most (bounds the memory the writer can hold).
const IN_FLIGHT: usize = 16;

/// Appends blobs to a new storage file; the header's count is written by
/// [`BlobWriter::finish`].
pub struct BlobWriter {
    path: PathBuf,
    pending: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    /// Chunks the thread has written, back for reuse: a fresh megabyte
    /// would cost 256 page faults each time.
    free: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<std::io::Result<File>>>,
    pos: u64,
    count: u32,
}

impl BlobWriter {
    /// Creates (truncates) `path` and writes a placeholder header.
    pub fn create(path: &Path) -> Result<Self, BlobError> {
        let mut file = File::create(path).map_err(|source| BlobError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (tx, rx) = sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (back, free) = channel::<Vec<u8>>();
        let thread = std::thread::Builder::new()
            .name("blob-writer".into())
            .spawn(move || {
                // Stops at the first error; the sender sees the channel
                // closed and `finish` reports the error.
                for mut chunk in rx {
                    file.write_all(&chunk)?;
                    chunk.clear();
                    // The writer may be gone (finishing): then the chunk is
                    // simply dropped.
                    let _ = back.send(chunk);
                }
                Ok(file)
            })
            .map_err(|source| BlobError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let mut w = Self {
            path: path.to_path_buf(),
            pending: Vec::with_capacity(CHUNK),
            tx: Some(tx),
            free,
            thread: Some(thread),
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

    fn write_all(&mut self, mut b: &[u8]) -> Result<(), BlobError> {
        self.pos += b.len() as u64;
        // In chunks of at most CHUNK bytes, so that a large payload never
        // grows (reallocates) the pending buffer.
        while !b.is_empty() {
            let take = (CHUNK - self.pending.len().min(CHUNK)).min(b.len()).max(1);
            self.pending.extend_from_slice(&b[..take]);
            b = &b[take..];
            if self.pending.len() >= CHUNK {
                self.send()?;
            }
        }
        Ok(())
    }

    /// Hands the pending bytes to the writing thread.
    fn send(&mut self) -> Result<(), BlobError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let next = self
            .free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let chunk = std::mem::replace(&mut self.pending, next);
        let sent = self.tx.as_ref().map(|tx| tx.send(chunk).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        // The thread stopped: its own error says why.
        Err(self
            .join()
            .err()
            .unwrap_or_else(|| self.io(std::io::Error::other("blob writer thread stopped"))))
    }

    /// Closes the channel and waits for the thread; the file on success.
    fn join(&mut self) -> Result<File, BlobError> {
        self.tx = None;
        let thread = self
            .thread
            .take()
            .ok_or_else(|| self.io(std::io::Error::other("blob writer already finished")))?;
        match thread.join() {
            Ok(Ok(file)) => Ok(file),
            Ok(Err(e)) => Err(self.io(e)),
            Err(_) => Err(self.io(std::io::Error::other("blob writer thread panicked"))),
        }
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
        self.send()?;
        let mut file = self.join()?;
        let count = self.count;
        let pos = self.pos;
        let path = self.path.clone();
        let io = |source| BlobError::Io {
            path: path.clone(),
            source,
        };
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header(count)).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(pos)
    }
}

impl Drop for BlobWriter {
    /// An unfinished writer (an error elsewhere) still waits for its
    /// thread, so nothing writes into the staging directory after it is
    /// gone.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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

    /// Payloads larger than a chunk, and many chunks (so written chunks
    /// come back and are reused): every payload reads back intact at the
    /// offsets the writer returned.
    #[test]
    fn large_payloads_cross_reused_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weight.bin");
        let mut w = BlobWriter::create(&p).unwrap();
        let sizes = [3 * CHUNK + 17, 5, CHUNK, CHUNK - 64, 40 * CHUNK + 1, 1];
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| (i * 31 + k * 7 + i / 4096) as u8).collect())
            .collect();
        let offsets: Vec<u64> = payloads
            .iter()
            .map(|b| w.append(BlobDtype::UInt8, b, 0).unwrap())
            .collect();
        w.finish().unwrap();
        let f = BlobFile::open(&p).unwrap();
        for (b, &o) in payloads.iter().zip(&offsets) {
            assert_eq!(f.payload(f.record(o).unwrap()), &b[..]);
        }
    }

    /// A write error on the background thread reaches the caller, at a
    /// later append or at `finish`, as an error naming the file.
    #[test]
    fn write_errors_are_reported() {
        let full = Path::new("/dev/full");
        if !full.exists() {
            eprintln!("skipped: no /dev/full on this system");
            return;
        }
        let mut w = BlobWriter::create(full).unwrap();
        let payload = vec![7u8; 3 << 20];
        let mut failed = None;
        for _ in 0..64 {
            if let Err(e) = w.append(BlobDtype::UInt8, &payload, 0) {
                failed = Some(e);
                break;
            }
        }
        let e = match failed {
            Some(e) => e,
            None => w.finish().expect_err("writing to /dev/full must fail"),
        };
        assert!(e.to_string().contains("/dev/full"), "{e}");
    }
}
