//! The namespaced content store: a namespace sees a blob only through its
//! own record, whatever the files hold.

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use corten_core::{
    content::{self, ContentStore, Info, Record, Status, WriteOptions, Writer},
    digest::Digest,
    identifiers, labels, metadata,
    metadata::MetaStore,
    Error,
};

use crate::{
    backend::{read_meta, Backend},
    hasher::Hasher,
    plugin::SharingPolicy,
    writer::IngestWriter,
};

pub struct Inner {
    pub backend: Backend,
    pub meta: Arc<dyn MetaStore>,
    pub policy: SharingPolicy,
    /// `<ns>/<ref>` of every ingest with a live writer.
    pub locked: Mutex<HashSet<String>>,
    /// Shared by commits, exclusive for the backend sweep.
    pub commits: RwLock<()>,
}

pub struct LocalContent {
    inner: Arc<Inner>,
}

fn not_found(digest: &Digest) -> Error {
    Error::NotFound(format!("content digest {digest}"))
}

fn to_info(digest: Digest, record: Record) -> Info {
    Info {
        digest,
        size: record.size,
        created_at: record.created_at,
        updated_at: record.updated_at,
        labels: record.labels,
    }
}

impl LocalContent {
    pub fn open(root: &Path, meta: Arc<dyn MetaStore>, policy: SharingPolicy) -> Result<LocalContent, Error> {
        let backend = Backend::open(root)?;
        Ok(LocalContent {
            inner: Arc::new(Inner {
                backend,
                meta,
                policy,
                locked: Mutex::new(HashSet::new()),
                commits: RwLock::new(()),
            }),
        })
    }

    fn record(&self, ns: &str, digest: &Digest) -> Result<Record, Error> {
        identifiers::validate(ns)?;
        let bytes = self
            .inner
            .meta
            .get(content::TREE, &metadata::key(ns, &digest.to_string()))?
            .ok_or_else(|| not_found(digest))?;
        metadata::decode(&bytes)
    }

    /// An ingest's state as its files show it, for a ref no writer here holds.
    fn status_from_disk(&self, ns: &str, reference: &str) -> Result<Status, Error> {
        let dir = self.inner.backend.ingest_dir(&format!("{ns}/{reference}"));
        let meta = read_meta(&dir).map_err(|_| Error::NotFound(format!("ingest {reference}")))?;
        let data = std::fs::metadata(dir.join("data")).ok();
        Ok(Status {
            reference: reference.to_string(),
            offset: data.as_ref().map_or(0, |m| m.len()),
            total: meta.total,
            expected: meta.expected.and_then(|d| d.parse().ok()),
            started_at: meta.started_at,
            updated_at: data.and_then(|m| m.modified().ok()).unwrap_or(meta.started_at),
        })
    }

    fn has_ingest(&self, ns: &str, reference: &str) -> Result<bool, Error> {
        Ok(self
            .inner
            .meta
            .get(content::INGESTS_TREE, &metadata::key(ns, reference))?
            .is_some())
    }
}

/// Splits `<ns>/<rest>` keys of a per-namespace tree.
fn split_key(key: &[u8]) -> Option<(&str, &str)> {
    std::str::from_utf8(key).ok()?.split_once('/')
}

impl ContentStore for LocalContent {
    fn info(&self, ns: &str, digest: &Digest) -> Result<Info, Error> {
        Ok(to_info(digest.clone(), self.record(ns, digest)?))
    }

    fn update(&self, ns: &str, info: &Info, paths: &[String]) -> Result<Info, Error> {
        identifiers::validate(ns)?;
        let key = metadata::key(ns, &info.digest.to_string());
        let updated = std::cell::RefCell::new(None);
        self.inner.meta.transact(&[content::TREE], &|txn| {
            let bytes = txn.get(content::TREE, &key)?.ok_or_else(|| not_found(&info.digest))?;
            let mut record: Record = metadata::decode(&bytes)?;
            labels::apply_update(&mut record.labels, &info.labels, paths)?;
            record.updated_at = SystemTime::now();
            txn.insert(content::TREE, &key, metadata::encode(&record)?)?;
            *updated.borrow_mut() = Some(record);
            Ok(())
        })?;
        let record = updated.into_inner().expect("a committed update sets the record");
        Ok(to_info(info.digest.clone(), record))
    }

    fn list(&self, ns: &str) -> Result<Vec<Info>, Error> {
        identifiers::validate(ns)?;
        let mut out = Vec::new();
        for (key, value) in self.inner.meta.scan_prefix(content::TREE, &metadata::key(ns, ""))? {
            let Some(digest) = split_key(&key).and_then(|(_, d)| d.parse().ok()) else {
                continue;
            };
            out.push(to_info(digest, metadata::decode(&value)?));
        }
        Ok(out)
    }

    fn delete(&self, ns: &str, digest: &Digest) -> Result<(), Error> {
        identifiers::validate(ns)?;
        let key = metadata::key(ns, &digest.to_string());
        self.inner.meta.transact(&[content::TREE], &|txn| {
            txn.get(content::TREE, &key)?.ok_or_else(|| not_found(digest))?;
            txn.remove(content::TREE, &key)
        })
    }

    fn open(&self, ns: &str, digest: &Digest) -> Result<(std::fs::File, u64), Error> {
        self.record(ns, digest)?;
        self.inner.backend.open_blob(digest)
    }

    fn status(&self, ns: &str, reference: &str) -> Result<Status, Error> {
        identifiers::validate(ns)?;
        content::validate_ref(reference)?;
        if !self.has_ingest(ns, reference)? {
            return Err(Error::NotFound(format!("ingest {reference}")));
        }
        self.status_from_disk(ns, reference)
    }

    fn list_statuses(&self, ns: &str) -> Result<Vec<Status>, Error> {
        identifiers::validate(ns)?;
        let mut out = Vec::new();
        for (key, _) in self
            .inner
            .meta
            .scan_prefix(content::INGESTS_TREE, &metadata::key(ns, ""))?
        {
            let Some((_, reference)) = split_key(&key) else {
                continue;
            };
            // An ingest whose writer has not made its files yet has no status.
            if let Ok(status) = self.status_from_disk(ns, reference) {
                out.push(status);
            }
        }
        Ok(out)
    }

    fn abort(&self, ns: &str, reference: &str) -> Result<(), Error> {
        identifiers::validate(ns)?;
        content::validate_ref(reference)?;
        let key_text = format!("{ns}/{reference}");
        if self
            .inner
            .locked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key_text)
        {
            return Err(Error::Unavailable(format!("ref {reference} locked")));
        }
        let key = metadata::key(ns, reference);
        self.inner.meta.transact(&[content::INGESTS_TREE], &|txn| {
            txn.get(content::INGESTS_TREE, &key)?
                .ok_or_else(|| Error::NotFound(format!("ingest {reference}")))?;
            txn.remove(content::INGESTS_TREE, &key)
        })?;
        self.inner.backend.remove_ingest(&key_text)
    }

    fn writer(&self, ns: &str, reference: &str, options: WriteOptions) -> Result<Box<dyn Writer>, Error> {
        Ok(Box::new(IngestWriter::open(&self.inner, ns, reference, options)?))
    }

    fn sweep_backend(&self) -> Result<u64, Error> {
        let _no_commits = self.inner.commits.write().unwrap_or_else(|e| e.into_inner());
        let referenced: HashSet<Digest> = self
            .inner
            .meta
            .scan_prefix(content::TREE, b"")?
            .iter()
            .filter_map(|(k, _)| split_key(k)?.1.parse().ok())
            .collect();
        let mut removed = 0;
        for digest in self.inner.backend.blobs()? {
            if !referenced.contains(&digest) {
                self.inner.backend.remove_blob(&digest)?;
                removed += 1;
            }
        }
        // Live ingests are matched by directory, not by what the directory
        // holds: a writer creates its directory before its metadata file.
        let mut live: HashSet<String> = self
            .inner
            .meta
            .scan_prefix(content::INGESTS_TREE, b"")?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect();
        live.extend(
            self.inner
                .locked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        let live_dirs: HashSet<_> = live.iter().map(|key| self.inner.backend.ingest_dir(key)).collect();
        for dir in self.inner.backend.ingests()? {
            if !live_dirs.contains(&dir) {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!("remove stale ingest {}: {e}", dir.display());
                }
            }
        }
        Ok(removed)
    }

    fn verify(&self) -> Result<Vec<String>, Error> {
        let mut problems = Vec::new();
        for digest in self.inner.backend.blobs()? {
            let (file, _) = self.inner.backend.open_blob(&digest)?;
            match Hasher::of_reader(digest.algorithm(), file) {
                Ok((hasher, _)) if hasher.digest() == digest => {}
                Ok((hasher, _)) => problems.push(format!("blob {digest} holds bytes of digest {}", hasher.digest())),
                Err(e) => problems.push(format!("blob {digest} cannot be read: {e}")),
            }
        }
        for (key, value) in self.inner.meta.scan_prefix(content::TREE, b"")? {
            let Some((ns, digest)) = split_key(&key) else {
                problems.push(format!(
                    "content record with a malformed key {:?}",
                    String::from_utf8_lossy(&key)
                ));
                continue;
            };
            let Ok(digest) = digest.parse::<Digest>() else {
                problems.push(format!(
                    "namespace {ns}: content record for a malformed digest {digest:?}"
                ));
                continue;
            };
            let record: Record = match metadata::decode(&value) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("namespace {ns}: content {digest}: {e}"));
                    continue;
                }
            };
            match self.inner.backend.blob_size(&digest) {
                None => problems.push(format!("namespace {ns}: content {digest} has no blob")),
                Some(size) if size != record.size => problems.push(format!(
                    "namespace {ns}: content {digest} is recorded as {} bytes, the blob has {size}",
                    record.size
                )),
                Some(_) => {}
            }
        }
        Ok(problems)
    }
}
