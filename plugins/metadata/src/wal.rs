//! The write-ahead log that makes a transaction durable with one `pwrite`
//! and one `fdatasync`, instead of sled's flush (its I/O threads write and
//! `sync_file_range` the log, handing the work from thread to thread) and
//! an `fdatasync` after it: the two disk round trips and the hand-offs were
//! most of the time of a metadata write.
//!
//! The file has a fixed size, set when it is made (sparse: making it is two
//! metadata syncs, not a megabyte of zeros, which a daemon's cold start
//! would pay), so writing a record never changes its size: the `fdatasync`
//! writes the record and flushes the disk's cache, and on the first pass
//! through the file also the block a record is the first to touch. Records
//! follow one another from offset 0; when the next one does not fit, the
//! store makes sled itself durable (a checkpoint) and starts again at 0.
//!
//! A record is a header (magic, payload length, sequence number, CRC-32 of
//! all of it) and a payload. Reading at open follows records from offset 0
//! for as long as each is whole (its CRC matches) and its number is above
//! the one before: a torn or unwritten record ends the log, and so does a
//! stale one left from before the last restart at 0, which always has a
//! lower number than the records written since.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
};

use corten_core::Error;

const MAGIC: u32 = 0x4c57_4331; // "1CWL" read as little-endian bytes
const HEADER: usize = 4 + 4 + 8 + 4;

/// One record read back: its number and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub payload: Vec<u8>,
}

pub struct Wal {
    file: File,
    path: PathBuf,
    size: u64,
    /// Where the next record goes. Appends are ordered by the caller (the
    /// store's transaction mutex); the lock only keeps the offset whole.
    next: Mutex<u64>,
    /// The number of the last record written into the file's pages.
    written: AtomicU64,
    /// The number of the last record a completed `fdatasync` covers.
    synced: Mutex<u64>,
    /// Set by a failed `fdatasync`: the kernel may have dropped pages it
    /// could not write, so no later sync proves anything about them.
    failed: AtomicBool,
}

fn io_err(what: &str, path: &Path) -> impl Fn(std::io::Error) -> Error {
    let context = format!("{what} {}", path.display());
    move |e| Error::internal(&context, e)
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&MAGIC.to_le_bytes());
    hasher.update(&(payload.len() as u32).to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn encode(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&checksum(seq, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The records of `file` from its start, up to the first one that is not
/// whole or does not number above the one before.
fn read_all(file: &File, len: u64) -> std::io::Result<Vec<Record>> {
    let mut records: Vec<Record> = Vec::new();
    let mut at = 0;
    let mut header = [0u8; HEADER];
    while at + HEADER as u64 <= len {
        file.read_exact_at(&mut header, at)?;
        let word = |from: usize| u32::from_le_bytes(header[from..from + 4].try_into().unwrap());
        let payload_len = u64::from(word(4));
        let seq = u64::from_le_bytes(header[8..16].try_into().unwrap());
        let after = at + HEADER as u64 + payload_len;
        if word(0) != MAGIC || after > len || records.last().is_some_and(|r| seq <= r.seq) {
            break;
        }
        let mut payload = vec![0; payload_len as usize];
        file.read_exact_at(&mut payload, at + HEADER as u64)?;
        if word(16) != checksum(seq, &payload) {
            break;
        }
        records.push(Record { seq, payload });
        at = after;
    }
    Ok(records)
}

impl Wal {
    /// Opens the log at `path`, making it first (`size` bytes, all a hole)
    /// if it does not exist, and returns the records it holds.
    pub fn open(path: &Path, size: u64) -> Result<(Wal, Vec<Record>), Error> {
        if !path.exists() {
            make(path, size)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("open", path))?;
        let len = file.metadata().map_err(io_err("stat", path))?.len();
        let records = read_all(&file, len).map_err(io_err("read", path))?;
        let wal = Wal {
            file,
            path: path.to_path_buf(),
            // A log made with another size keeps its own.
            size: len,
            next: Mutex::new(0),
            written: AtomicU64::new(0),
            synced: Mutex::new(0),
            failed: AtomicBool::new(false),
        };
        Ok((wal, records))
    }

    /// The most records a log of this size can hold: every record takes at
    /// least a header. A number this far above the highest one read at
    /// open is above any record left in the file, read or not.
    pub fn capacity(&self) -> u64 {
        self.size / HEADER as u64
    }

    /// Writes record `seq` after the last one, into the file's pages; false,
    /// writing nothing, when it does not fit before the end. The caller
    /// numbers records in the order it appends them.
    pub fn append(&self, seq: u64, payload: &[u8]) -> Result<bool, Error> {
        let record = encode(seq, payload);
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if *next + record.len() as u64 > self.size {
            return Ok(false);
        }
        self.file
            .write_all_at(&record, *next)
            .map_err(io_err("write", &self.path))?;
        *next += record.len() as u64;
        self.written.fetch_max(seq, Ordering::SeqCst);
        Ok(true)
    }

    /// Starts again at offset 0, once everything the log holds is durable
    /// elsewhere.
    pub fn restart(&self) {
        *self.next.lock().unwrap_or_else(|e| e.into_inner()) = 0;
    }

    /// Returns once record `seq`, and every record before it, is on stable
    /// storage. Callers that ask together share one `fdatasync`: any that
    /// starts after a record was written covers it. Once one has failed,
    /// every later call fails too.
    pub fn sync(&self, seq: u64) -> Result<(), Error> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::Internal(format!(
                "an earlier fdatasync of {} failed",
                self.path.display()
            )));
        }
        if *synced >= seq {
            return Ok(());
        }
        let covers = self.written.load(Ordering::SeqCst);
        if let Err(e) = self.file.sync_data() {
            self.failed.store(true, Ordering::SeqCst);
            return Err(io_err("fdatasync", &self.path)(e));
        }
        *synced = covers;
        Ok(())
    }
}

/// Makes the log under a temporary name, synced, renamed into place, and
/// the directory synced, so a crash leaves the whole file or none. A hole
/// reads as zeros, which no record header matches.
fn make(path: &Path, size: u64) -> Result<(), Error> {
    let temporary = path.with_extension("wal-new");
    let file = File::create(&temporary).map_err(io_err("create", &temporary))?;
    file.set_len(size).map_err(io_err("size", &temporary))?;
    file.sync_all().map_err(io_err("fsync", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io_err("rename", path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(records: &[Record]) -> Vec<(u64, Vec<u8>)> {
        records.iter().map(|r| (r.seq, r.payload.clone())).collect()
    }

    #[test]
    fn records_read_back_in_order_until_the_first_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.wal");
        let (wal, records) = Wal::open(&path, 4096).unwrap();
        assert!(records.is_empty());
        for seq in 1..=3 {
            assert!(wal.append(seq, &[seq as u8; 100]).unwrap());
        }
        wal.sync(3).unwrap();
        drop(wal);
        let (_, records) = Wal::open(&path, 4096).unwrap();
        assert_eq!(
            payloads(&records),
            (1..=3).map(|s| (s, vec![s as u8; 100])).collect::<Vec<_>>()
        );

        // A torn second record ends the log there.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], (HEADER + 100 + HEADER + 50) as u64).unwrap();
        let (_, records) = Wal::open(&path, 4096).unwrap();
        assert_eq!(payloads(&records), vec![(1, vec![1; 100])]);
    }

    #[test]
    fn a_restart_leaves_stale_records_behind_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.wal");
        let (wal, _) = Wal::open(&path, 1024).unwrap();
        let mut seq = 0;
        // Fills the log: the fourth 300-byte record does not fit.
        for _ in 0..3 {
            seq += 1;
            assert!(wal.append(seq, &[7; 280]).unwrap());
        }
        assert!(!wal.append(seq + 1, &[7; 280]).unwrap());
        wal.restart();
        // A new record over the first: the old second one, whole but
        // numbered lower, follows it and is not read.
        seq += 1;
        assert!(wal.append(seq, &[9; 280]).unwrap());
        wal.sync(seq).unwrap();
        drop(wal);
        let (wal, records) = Wal::open(&path, 1024).unwrap();
        assert_eq!(payloads(&records), vec![(4, vec![9; 280])]);
        assert_eq!(wal.capacity(), 1024 / HEADER as u64);
    }

    #[test]
    fn a_crash_while_making_the_log_leaves_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.wal");
        std::fs::write(path.with_extension("wal-new"), b"partial").unwrap();
        let (wal, records) = Wal::open(&path, 2048).unwrap();
        assert!(records.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2048);
        assert!(wal.append(1, b"x").unwrap());
    }
}
