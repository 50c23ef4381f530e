//! One ingest: bytes appended in order, hashed as they arrive, verified and
//! moved into the blob store at commit.
//!
//! A writer holds its ref exclusively until dropped. Resuming an ingest
//! re-reads what is on disk to restore the running digest, so a client that
//! died mid-stream can continue from the offset the next writer reports.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{Seek, SeekFrom, Write},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::Arc,
    time::SystemTime,
};

use corten_core::{
    content::{self, IngestRecord, Record, Status, WriteOptions, Writer},
    digest::{Algorithm, Digest},
    identifiers, labels, leases, metadata,
    namespaces::{self, Namespaces},
    Error,
};

use crate::{
    backend::{io_err, read_meta, write_meta, IngestMeta},
    hasher::Hasher,
    hashpipe::HashPipe,
    plugin::SharingPolicy,
    store::Inner,
};

/// Bytes written between two writeback starts.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Asks the kernel to start writing `len` bytes from `from` to disk now,
/// without waiting: data then reaches the disk while more arrives, and the
/// fsync at commit finds little left to do. Only advisory, so a failure is
/// ignored (the fsync still makes the data durable).
fn start_writeback(file: &File, from: u64, len: u64) {
    let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range takes plain integers and reads no memory of
    // ours; the descriptor belongs to `file`, which outlives the call.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        tracing::debug!("start writeback: {}", std::io::Error::last_os_error());
    }
}

/// How long an ingest written without a lease stays a GC root.
const UNLEASED_INGEST_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The trees an ingest's transactions touch.
const TREES: &[&str] = &[
    content::TREE,
    content::INGESTS_TREE,
    namespaces::TREE,
    leases::TREE,
    leases::RESOURCES_TREE,
];

/// Holds a ref against a second writer; released on drop.
struct RefLock {
    inner: Arc<Inner>,
    key: String,
}

impl RefLock {
    fn take(inner: &Arc<Inner>, key: &str, reference: &str) -> Result<RefLock, Error> {
        let mut locked = inner.locked.lock().unwrap_or_else(|e| e.into_inner());
        if !locked.insert(key.to_string()) {
            return Err(Error::Unavailable(format!("ref {reference} locked")));
        }
        Ok(RefLock {
            inner: inner.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for RefLock {
    fn drop(&mut self) {
        self.inner
            .locked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

pub struct IngestWriter {
    inner: Arc<Inner>,
    ns: String,
    reference: String,
    dir: PathBuf,
    file: File,
    hasher: HashPipe,
    offset: u64,
    meta: IngestMeta,
    expected: Option<Digest>,
    updated_at: SystemTime,
    lease: Option<String>,
    /// The size of an already stored blob this ingest may complete with
    /// without any bytes (shared content policy).
    shared: Option<u64>,
    /// Where the writeback started so far ends.
    written_back: u64,
    done: bool,
    _lock: RefLock,
}

fn ingest_resource(reference: &str) -> leases::Resource {
    leases::Resource {
        id: reference.to_string(),
        kind: "ingests".into(),
    }
}

fn content_resource(digest: &Digest) -> leases::Resource {
    leases::Resource {
        id: digest.to_string(),
        kind: "content".into(),
    }
}

impl IngestWriter {
    pub fn open(inner: &Arc<Inner>, ns: &str, reference: &str, options: WriteOptions) -> Result<IngestWriter, Error> {
        identifiers::validate(ns)?;
        content::validate_ref(reference)?;
        let key = metadata::key(ns, reference);
        let key_text = String::from_utf8_lossy(&key).into_owned();
        let lock = RefLock::take(inner, &key_text, reference)?;

        if let Some(expected) = &options.expected {
            if inner
                .meta
                .get(content::TREE, &metadata::key(ns, &expected.to_string()))?
                .is_some()
            {
                return Err(Error::AlreadyExists(format!("content {expected}")));
            }
        }
        // Without a lease, an ingest protects itself for a day so a collection
        // cannot drop it while it is being written.
        let expires = options
            .lease
            .is_none()
            .then(|| SystemTime::now() + UNLEASED_INGEST_LIFETIME);
        let record = metadata::encode(&IngestRecord { expires })?;
        inner.meta.transact(TREES, &|txn| {
            Namespaces::ensure(txn, ns)?;
            if txn.get(content::INGESTS_TREE, &key)?.is_none() {
                txn.insert(content::INGESTS_TREE, &key, record.clone())?;
            }
            if let Some(lease) = &options.lease {
                leases::add_resource(txn, ns, lease, &ingest_resource(reference))?;
            }
            Ok(())
        })?;

        let dir = inner.backend.ingest_dir(&key_text);
        std::fs::create_dir_all(&dir).map_err(io_err("create ingest"))?;
        let mut meta = match read_meta(&dir) {
            Ok(meta) => meta,
            Err(Error::NotFound(_)) => {
                let meta = IngestMeta {
                    key: key_text,
                    started_at: SystemTime::now(),
                    total: 0,
                    expected: None,
                };
                write_meta(&dir, &meta)?;
                meta
            }
            Err(e) => return Err(e),
        };
        let expected = match &options.expected {
            Some(d) => Some(d.clone()),
            None => meta.expected.as_deref().and_then(|d| d.parse().ok()),
        };
        let algorithm = expected.as_ref().map(Digest::algorithm).unwrap_or(Algorithm::Sha256);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(dir.join("data"))
            .map_err(io_err("open ingest data"))?;
        let (hasher, offset) = Hasher::of_reader(algorithm, &mut file).map_err(io_err("read ingest data"))?;
        let updated_at = file
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());

        let shared = match (&expected, inner.policy) {
            (Some(d), SharingPolicy::Shared) if offset == 0 => inner.backend.blob_size(d),
            _ => None,
        };
        if options.total > 0 || options.expected.is_some() {
            meta.total = if options.total > 0 { options.total } else { meta.total };
            meta.expected = expected.as_ref().map(Digest::to_string);
            write_meta(&dir, &meta)?;
        }
        Ok(IngestWriter {
            inner: inner.clone(),
            ns: ns.to_string(),
            reference: reference.to_string(),
            dir,
            file,
            hasher: HashPipe::new(hasher),
            offset,
            meta,
            expected,
            updated_at,
            lease: options.lease,
            shared,
            written_back: offset,
            done: false,
            _lock: lock,
        })
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.done {
            return Err(Error::FailedPrecondition(format!(
                "ingest {} is already committed",
                self.reference
            )));
        }
        Ok(())
    }

    /// A shared blob completes the ingest only while no bytes were sent.
    fn shared_size(&self) -> Option<u64> {
        self.shared.filter(|_| self.offset == 0)
    }
}

impl Writer for IngestWriter {
    fn status(&self) -> Result<Status, Error> {
        Ok(Status {
            reference: self.reference.clone(),
            offset: self.shared_size().unwrap_or(self.offset),
            total: self.meta.total,
            expected: self.expected.clone(),
            started_at: self.meta.started_at,
            updated_at: self.updated_at,
        })
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.write_owned(offset, data.to_vec())
    }

    fn write_owned(&mut self, offset: u64, data: Vec<u8>) -> Result<(), Error> {
        self.check_open()?;
        if data.is_empty() {
            return Ok(());
        }
        if offset != self.offset {
            if offset != 0 {
                return Err(Error::OutOfRange(format!(
                    "cannot write {} at offset {offset}: it has {} bytes (write at that offset, or at 0 to restart)",
                    self.reference, self.offset
                )));
            }
            self.file.set_len(0).map_err(io_err("truncate ingest"))?;
            self.file.seek(SeekFrom::Start(0)).map_err(io_err("truncate ingest"))?;
            self.hasher = HashPipe::new(Hasher::new(self.hasher.algorithm()));
            self.offset = 0;
            self.written_back = 0;
        }
        let end = offset + data.len() as u64;
        if self.meta.total > 0 && end > self.meta.total {
            return Err(Error::FailedPrecondition(format!(
                "write to {} ends at {end}, past its expected size {}",
                self.reference, self.meta.total
            )));
        }
        self.file.write_all(&data).map_err(io_err("write ingest data"))?;
        self.hasher.push(data);
        self.offset = end;
        if self.offset - self.written_back >= WRITEBACK_STEP {
            start_writeback(&self.file, self.written_back, self.offset - self.written_back);
            self.written_back = self.offset;
        }
        self.shared = None;
        self.updated_at = SystemTime::now();
        Ok(())
    }

    fn expect(&mut self, total: u64, expected: Option<Digest>) {
        let mut changed = false;
        if total > 0 && total != self.meta.total {
            self.meta.total = total;
            changed = true;
        }
        if let Some(d) = expected.filter(|d| Some(d) != self.expected.as_ref()) {
            if d.algorithm() != self.hasher.algorithm() {
                // Rare: the client named another algorithm late; re-read the data in it.
                if let Ok(file) = File::open(self.dir.join("data")) {
                    if let Ok((hasher, _)) = Hasher::of_reader(d.algorithm(), file) {
                        self.hasher = HashPipe::new(hasher);
                    }
                }
            }
            if self.offset == 0 && self.inner.policy == SharingPolicy::Shared {
                self.shared = self.inner.backend.blob_size(&d);
            }
            self.meta.expected = Some(d.to_string());
            self.expected = Some(d);
            changed = true;
        }
        if changed {
            if let Err(e) = write_meta(&self.dir, &self.meta) {
                tracing::warn!("remember ingest {}: {e}", self.reference);
            }
        }
    }

    fn digest(&mut self) -> Digest {
        self.hasher.hasher().digest()
    }

    fn commit(&mut self, labels: BTreeMap<String, String>) -> Result<Digest, Error> {
        self.check_open()?;
        labels::validate(&labels)?;
        let total = self.meta.total;
        let (digest, size, shared) = match (self.shared_size(), &self.expected) {
            (Some(size), Some(expected)) => (expected.clone(), size, true),
            _ => (self.hasher.hasher().digest(), self.offset, false),
        };
        if total > 0 && size != total {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit size {size}, expected {total}"
            )));
        }
        if let Some(expected) = self.expected.as_ref().filter(|e| **e != digest) {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit digest {digest}, expected {expected}"
            )));
        }

        // The sweep holds this exclusively: a blob renamed into place is
        // never removed before its record exists.
        let _committing = self.inner.commits.read().unwrap_or_else(|e| e.into_inner());
        if !shared {
            self.file.sync_all().map_err(io_err("sync ingest data"))?;
            self.inner.backend.commit(&self.dir.join("data"), &digest)?;
        }
        let now = SystemTime::now();
        let record = metadata::encode(&Record {
            size,
            created_at: now,
            updated_at: now,
            labels,
        })?;
        let (ns, reference) = (&self.ns, &self.reference);
        let content_key = metadata::key(ns, &digest.to_string());
        let existed = std::cell::Cell::new(false);
        self.inner.meta.transact(TREES, &|txn| {
            Namespaces::ensure(txn, ns)?;
            existed.set(txn.get(content::TREE, &content_key)?.is_some());
            if !existed.get() {
                txn.insert(content::TREE, &content_key, record.clone())?;
            }
            txn.remove(content::INGESTS_TREE, &metadata::key(ns, reference))?;
            if let Some(lease) = &self.lease {
                // A lease that expired and was collected meanwhile holds nothing.
                if txn.get(leases::TREE, &metadata::key(ns, lease))?.is_some() {
                    leases::remove_resource(txn, ns, lease, &ingest_resource(reference))?;
                    leases::add_resource(txn, ns, lease, &content_resource(&digest))?;
                }
            }
            Ok(())
        })?;
        drop(_committing);
        self.done = true;
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("remove committed ingest {}: {e}", self.dir.display());
        }
        if existed.get() {
            return Err(Error::AlreadyExists(format!("content {digest}")));
        }
        Ok(digest)
    }
}
