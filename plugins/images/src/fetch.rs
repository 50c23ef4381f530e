//! Blobs from the registry into the content store: under the pull's lease,
//! through a resumable ingest named as containerd names it, with every size
//! and digest checked, and skipped when the store already has the blob.

use std::{
    collections::BTreeMap,
    io::Read,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use corten_core::{
    content::{ContentStore, Info, WriteOptions, Writer},
    diff::Descriptor,
    digest::Digest,
    leases::{LeaseManager, Resource},
    transfer::{Progress, ProgressFn},
    Error,
};
use futures::StreamExt;
use sha2::Digest as _;
use tokio::sync::{mpsc, Semaphore};

use crate::{
    media,
    oci::MAX_DOCUMENT_SIZE,
    reference::ImageRef,
    registry::{Bound, Remote},
};

/// How often a download reports its bytes.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Chunks queued between the network and the disk.
const WRITE_QUEUE: usize = 16;
/// How long a download waits for another pull that holds the same ingest.
const LOCKED_WAIT: Duration = Duration::from_secs(600);

/// Runs blocking store work off the async workers.
pub async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

/// How a blob came to be in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Downloaded now: `bytes` from the registry, after `resumed` bytes an
    /// earlier, interrupted download had left.
    Fetched { bytes: u64, resumed: u64 },
    /// The store had it.
    Existed,
}

/// What every download of one pull shares.
pub struct Fetcher {
    pub ns: String,
    pub lease: String,
    pub content: Arc<dyn ContentStore>,
    pub leases: Arc<dyn LeaseManager>,
    pub remote: Remote,
    pub image: ImageRef,
    pub progress: ProgressFn,
    pub downloads: Arc<Semaphore>,
    /// Set once any bytes reached an ingest: a failed pull then keeps its
    /// lease (it expires by itself) so the next pull resumes them.
    pub wrote: AtomicBool,
    pub fetched_bytes: AtomicU64,
}

/// A failure while downloading, and whether the ingest's bytes are bad
/// (they are then discarded so the next pull starts that blob afresh).
struct Failed {
    error: Error,
    bad_data: bool,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Failed { error, bad_data: false }
    }
}

fn bad(error: Error) -> Failed {
    Failed { error, bad_data: true }
}

impl Fetcher {
    pub fn emit(&self, event: &str, desc: &Descriptor, parents: &[String], progress: u64) {
        (self.progress)(Progress {
            event: event.to_string(),
            name: media::ref_key(desc),
            parents: parents.to_vec(),
            progress,
            total: desc.size,
            desc: Some(desc.clone()),
        });
    }

    /// Announces a blob the pull will need.
    pub fn announce(&self, desc: &Descriptor, parents: &[String]) {
        self.emit("waiting", desc, parents, 0);
    }

    /// If the store has `desc`, holds it under the lease, adds this
    /// repository to its source label and says so.
    pub async fn existing(&self, desc: &Descriptor) -> Result<bool, Error> {
        let (content, leases, ns, lease, digest) = (
            self.content.clone(),
            self.leases.clone(),
            self.ns.clone(),
            self.lease.clone(),
            desc.digest.clone(),
        );
        let image = self.image.clone();
        blocking(move || {
            let info = match content.info(&ns, &digest) {
                Ok(info) => info,
                Err(Error::NotFound(_)) => return Ok(false),
                Err(e) => return Err(e),
            };
            let resource = Resource {
                id: digest.to_string(),
                kind: "content".into(),
            };
            leases.add_resource(&ns, &lease, &resource)?;
            let (key, value) = image.source_label(&info.labels);
            if info.labels.get(&key) != Some(&value) && corten_core::identifiers::validate_label(&key, &value).is_ok() {
                set_labels(content.as_ref(), &ns, &digest, BTreeMap::from([(key, value)]))?;
            }
            Ok(true)
        })
        .await
    }

    /// Stores `desc` unless the store has it; `what` names it in errors.
    pub async fn fetch(&self, desc: &Descriptor, what: &str, parents: &[String]) -> Result<Outcome, Error> {
        if self.existing(desc).await? {
            self.emit("already exists", desc, parents, desc.size);
            return Ok(Outcome::Existed);
        }
        let _permit = self
            .downloads
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("pull cancelled".into()))?;
        // Another pull may have stored it while this one waited its turn.
        if self.existing(desc).await? {
            self.emit("already exists", desc, parents, desc.size);
            return Ok(Outcome::Existed);
        }
        let reference = media::ref_key(desc);
        let writer = match self.open_writer(desc, &reference).await? {
            Some(writer) => writer,
            None => {
                self.emit("already exists", desc, parents, desc.size);
                return Ok(Outcome::Existed);
            }
        };
        match self.download(desc, what, parents, &reference, writer).await {
            Ok(outcome) => {
                if let Outcome::Fetched { bytes, .. } = outcome {
                    self.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                self.emit("complete", desc, parents, desc.size);
                Ok(outcome)
            }
            Err(failed) => {
                if failed.bad_data {
                    let (content, ns) = (self.content.clone(), self.ns.clone());
                    let reference2 = reference.clone();
                    if let Err(e) = blocking(move || content.abort(&ns, &reference2)).await {
                        tracing::warn!("discard ingest {reference}: {e}");
                    }
                }
                Err(failed.error)
            }
        }
    }

    /// Opens (or resumes) the ingest; `None` when the blob turned up in the
    /// store meanwhile. A ref held by another pull is waited for.
    async fn open_writer(&self, desc: &Descriptor, reference: &str) -> Result<Option<Box<dyn Writer>>, Error> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let (content, ns, reference2) = (self.content.clone(), self.ns.clone(), reference.to_string());
            let options = WriteOptions {
                total: desc.size,
                expected: Some(desc.digest.clone()),
                lease: Some(self.lease.clone()),
            };
            match blocking(move || content.writer(&ns, &reference2, options)).await {
                Ok(writer) => return Ok(Some(writer)),
                Err(Error::AlreadyExists(_)) => {
                    return if self.existing(desc).await? {
                        Ok(None)
                    } else {
                        Err(Error::Internal(format!(
                            "content {} exists but cannot be read",
                            desc.digest
                        )))
                    }
                }
                Err(Error::Unavailable(_)) if started.elapsed() < LOCKED_WAIT => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    if self.existing(desc).await? {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn download(
        &self,
        desc: &Descriptor,
        what: &str,
        parents: &[String],
        reference: &str,
        mut writer: Box<dyn Writer>,
    ) -> Result<Outcome, Failed> {
        let size = desc.size;
        let mut offset = writer.status()?.offset;
        if offset > size {
            offset = 0; // not this blob's bytes: start over
        }
        let labels = {
            let (key, value) = self.image.source_label(&BTreeMap::new());
            BTreeMap::from([(key, value)])
        };
        if offset == size && size > 0 {
            return self.commit(desc, what, writer, labels, 0, offset).await;
        }
        let body = self.remote.blob(&desc.digest, offset, what).await?;
        if body.start != offset {
            tracing::debug!(%reference, offset, "registry ignored the range: downloading from the start");
        }
        let start = body.start;
        let resumed = start;
        if let Some(length) = body.length {
            if start + length != size {
                return Err(bad(Error::FailedPrecondition(format!(
                    "{what}: size mismatch: the registry has {} bytes, the manifest says {size}",
                    start + length
                ))));
            }
        }
        if resumed > 0 {
            self.emit("resuming", desc, parents, resumed);
        }

        // The network feeds a blocking writer through a bounded queue.
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let write_what = what.to_string();
        let written = tokio::task::spawn_blocking(move || {
            let mut at = start;
            while let Some(chunk) = rx.blocking_recv() {
                let len = chunk.len() as u64;
                writer
                    .write_at(at, &chunk)
                    .map_err(|e| Error::Internal(format!("{write_what}: write to the content store: {e}")))?;
                at += len;
            }
            Ok::<_, Error>((writer, at))
        });

        let mut stream = body.stream;
        let mut received: u64 = 0;
        let mut last_report = Instant::now();
        let mut failure: Option<Failed> = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let text = crate::registry::chain(&e);
                    failure = Some(if text.contains("Invalid digest") {
                        bad(Error::FailedPrecondition(format!("{what}: digest mismatch: {text}")))
                    } else {
                        Error::Unavailable(format!(
                            "{what}: download from registry {} broke off after {} of {size} bytes: {text}",
                            self.remote.host(),
                            start + received
                        ))
                        .into()
                    });
                    break;
                }
            };
            received += chunk.len() as u64;
            if start + received > size {
                failure = Some(bad(Error::FailedPrecondition(format!(
                    "{what}: size mismatch: the registry sends more than the {size} bytes the manifest says"
                ))));
                break;
            }
            self.wrote.store(true, Ordering::Relaxed);
            if tx.send(chunk).await.is_err() {
                break; // the writer failed; its error is below
            }
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                self.emit("downloading", desc, parents, start + received);
            }
        }
        drop(tx);
        let (writer, at) = written
            .await
            .map_err(|e| Error::Internal(format!("{what}: writer failed: {e}")))??;
        if let Some(failure) = failure {
            return Err(failure);
        }
        if at < size {
            return Err(bad(Error::FailedPrecondition(format!(
                "{what}: truncated: the registry sent {at} of {size} bytes"
            ))));
        }
        self.emit("downloading", desc, parents, at);
        self.commit(desc, what, writer, labels, received, resumed).await
    }

    async fn commit(
        &self,
        desc: &Descriptor,
        what: &str,
        mut writer: Box<dyn Writer>,
        labels: BTreeMap<String, String>,
        received: u64,
        resumed: u64,
    ) -> Result<Outcome, Failed> {
        let expected = desc.digest.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let digest = writer.digest();
            (writer.commit(labels), digest)
        })
        .await
        .map_err(|e| Error::Internal(format!("{what}: commit failed: {e}")))?;
        match committed {
            (Ok(_), _) => Ok(Outcome::Fetched {
                bytes: received,
                resumed,
            }),
            (Err(Error::AlreadyExists(_)), _) => {
                self.existing(desc).await?;
                Ok(Outcome::Existed)
            }
            (Err(Error::FailedPrecondition(msg)), actual) => {
                Err(bad(Error::FailedPrecondition(if actual != expected {
                    format!("{what}: digest mismatch: the registry sent content with digest {actual}")
                } else {
                    format!("{what}: {msg}")
                })))
            }
            (Err(e), _) => Err(e.into()),
        }
    }

    /// A manifest or index: from the store if there, else from the registry,
    /// checked against `desc` and stored. Returns its bytes.
    pub async fn document(&self, desc: &Descriptor, what: &str, parents: &[String]) -> Result<Vec<u8>, Error> {
        if self.existing(desc).await? {
            self.emit("already exists", desc, parents, desc.size);
            return self.read(&desc.digest, what).await;
        }
        if desc.size > MAX_DOCUMENT_SIZE {
            return Err(Error::InvalidArgument(format!(
                "{what}: its descriptor says {} bytes, more than the {MAX_DOCUMENT_SIZE} a manifest may have",
                desc.size
            )));
        }
        self.announce(desc, parents);
        let bytes = self
            .remote
            .manifest(&desc.digest, what, Bound::Descriptor(desc.size))
            .await?;
        check_document(&bytes, desc, what)?;
        self.fetched_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.store_bytes(desc, bytes.to_vec()).await?;
        self.emit("complete", desc, parents, desc.size);
        Ok(bytes.to_vec())
    }

    /// Writes a document already in memory into the store, under the lease.
    pub async fn store_bytes(&self, desc: &Descriptor, bytes: Vec<u8>) -> Result<(), Error> {
        let (content, ns) = (self.content.clone(), self.ns.clone());
        let reference = media::ref_key(desc);
        let options = WriteOptions {
            total: desc.size,
            expected: Some(desc.digest.clone()),
            lease: Some(self.lease.clone()),
        };
        let (key, value) = self.image.source_label(&BTreeMap::new());
        let stored = blocking(move || {
            let mut writer = content.writer(&ns, &reference, options)?;
            writer.write_at(0, &bytes)?;
            writer.commit(BTreeMap::from([(key, value)])).map(drop)
        })
        .await;
        match stored {
            Ok(()) => Ok(()),
            Err(Error::AlreadyExists(_)) => self.existing(desc).await.map(drop),
            Err(e) => Err(e),
        }
    }

    /// A small blob from the store (a manifest or config), bounded.
    pub async fn read(&self, digest: &Digest, what: &str) -> Result<Vec<u8>, Error> {
        let (content, ns, digest, what) = (self.content.clone(), self.ns.clone(), digest.clone(), what.to_string());
        blocking(move || {
            let (file, size) = content.open(&ns, &digest)?;
            if size > MAX_DOCUMENT_SIZE {
                return Err(Error::InvalidArgument(format!(
                    "{what}: {size} bytes is more than the {MAX_DOCUMENT_SIZE} a manifest or config may have"
                )));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            file.take(MAX_DOCUMENT_SIZE)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::Internal(format!("{what}: read: {e}")))?;
            Ok(bytes)
        })
        .await
    }

    /// Sets `labels` on a stored blob, leaving its other labels alone.
    pub async fn label(&self, digest: &Digest, labels: BTreeMap<String, String>) -> Result<(), Error> {
        let (content, ns, digest) = (self.content.clone(), self.ns.clone(), digest.clone());
        blocking(move || set_labels(content.as_ref(), &ns, &digest, labels)).await
    }
}

/// Sets each of `labels` (an update with one `labels.<key>` path per label).
pub fn set_labels(
    content: &dyn ContentStore,
    ns: &str,
    digest: &Digest,
    labels: BTreeMap<String, String>,
) -> Result<(), Error> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
    let info = Info {
        digest: digest.clone(),
        size: 0,
        created_at: std::time::UNIX_EPOCH,
        updated_at: std::time::UNIX_EPOCH,
        labels,
    };
    content.update(ns, &info, &paths).map(drop)
}

/// A document's bytes match its descriptor: size and digest.
pub fn check_document(bytes: &[u8], desc: &Descriptor, what: &str) -> Result<(), Error> {
    if bytes.len() as u64 != desc.size {
        return Err(Error::FailedPrecondition(format!(
            "{what}: size mismatch: the registry sent {} bytes, the descriptor says {}",
            bytes.len(),
            desc.size
        )));
    }
    let actual = sha256(bytes);
    if desc.digest.algorithm() == corten_core::digest::Algorithm::Sha256 && actual != desc.digest {
        return Err(Error::FailedPrecondition(format!(
            "{what}: digest mismatch: the registry sent content with digest {actual}"
        )));
    }
    Ok(())
}

pub fn sha256(bytes: &[u8]) -> Digest {
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    Digest::new(corten_core::digest::Algorithm::Sha256, hex).expect("sha256 hex is a valid digest")
}
