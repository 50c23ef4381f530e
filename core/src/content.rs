//! The content store interface: blobs by digest, seen per namespace, and
//! the ingests that write them.

use std::{collections::BTreeMap, time::SystemTime};

use crate::{digest::Digest, filters::Adaptor, Error};

/// A committed blob as one namespace sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    pub digest: Digest,
    pub size: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: BTreeMap<String, String>,
}

/// Filter fields: `digest`, `size`, `labels.<key>`.
impl Adaptor for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "digest" => Some(self.digest.to_string()),
            [f] if f == "size" => Some(self.size.to_string()),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => self.labels.get(&rest.join(".")).cloned(),
            _ => None,
        }
    }
}

/// An ingest in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub reference: String,
    /// Bytes written so far.
    pub offset: u64,
    /// The expected total, 0 when unknown.
    pub total: u64,
    pub expected: Option<Digest>,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

/// Filter fields for ListStatuses: `ref`.
impl Adaptor for Status {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "ref" => Some(self.reference.clone()),
            _ => None,
        }
    }
}

/// What a new or resumed write is opened with.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub total: u64,
    pub expected: Option<Digest>,
    /// The lease the ingest and the blob it commits are kept under.
    pub lease: Option<String>,
}

/// One ingest, held exclusively by its writer until dropped.
pub trait Writer: Send {
    fn status(&self) -> Result<Status, Error>;
    /// Writes at `offset`, which must be the current end (append) or 0 (start over).
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error>;
    /// The same, taking the buffer, which spares a writer that hands data
    /// to another thread a copy.
    fn write_owned(&mut self, offset: u64, data: Vec<u8>) -> Result<(), Error> {
        self.write_at(offset, &data)
    }
    /// Sets the expected total and digest seen on later messages.
    fn expect(&mut self, total: u64, expected: Option<Digest>);
    /// The digest of what has been written so far.
    fn digest(&mut self) -> Digest;
    /// Verifies size and digest, stores the blob durably and records it in
    /// the namespace with `labels`. A digest the namespace already has is
    /// AlreadyExists; a mismatch is FailedPrecondition and stores nothing.
    fn commit(&mut self, labels: BTreeMap<String, String>) -> Result<Digest, Error>;
}

/// The namespaced content store. Calls block on disk and database I/O.
pub trait ContentStore: Send + Sync + 'static {
    fn info(&self, ns: &str, digest: &Digest) -> Result<Info, Error>;
    /// `labels` replaces the labels, `labels.<key>` sets or clears one; other
    /// fields are immutable.
    fn update(&self, ns: &str, info: &Info, paths: &[String]) -> Result<Info, Error>;
    fn list(&self, ns: &str) -> Result<Vec<Info>, Error>;
    fn delete(&self, ns: &str, digest: &Digest) -> Result<(), Error>;
    /// The blob's file, for reading, and its size.
    fn open(&self, ns: &str, digest: &Digest) -> Result<(std::fs::File, u64), Error>;
    fn status(&self, ns: &str, reference: &str) -> Result<Status, Error>;
    fn list_statuses(&self, ns: &str) -> Result<Vec<Status>, Error>;
    fn abort(&self, ns: &str, reference: &str) -> Result<(), Error>;
    /// Opens or resumes the ingest `reference`; a second writer on the same
    /// reference is Unavailable ("ref locked") until the first is dropped.
    fn writer(&self, ns: &str, reference: &str, options: WriteOptions) -> Result<Box<dyn Writer>, Error>;
    /// Removes blobs and ingest data that no namespace references any more.
    /// Runs after a garbage-collection sweep; returns what was removed.
    fn sweep_backend(&self) -> Result<u64, Error>;
    /// Checks the store at rest: every blob's bytes match its digest and
    /// every record points at a blob. Returns one line per problem.
    fn verify(&self) -> Result<Vec<String>, Error>;
}

/// The longest ingest reference accepted.
pub const MAX_REF_LEN: usize = 512;

/// Ingest references name keys and, hashed, directories, so none becomes a
/// path. `/` is allowed because containerd's own clients use it
/// (`ctr images import` writes `tar-blobs/sha256/...`); refused are empty and
/// overlong refs, control characters, and `.` or `..` components.
pub fn validate_ref(reference: &str) -> Result<(), Error> {
    let bad = |why: &str| Error::InvalidArgument(format!("invalid ref {reference:?}: {why}"));
    if reference.is_empty() {
        return Err(bad("must not be empty"));
    }
    if reference.len() > MAX_REF_LEN {
        return Err(bad(&format!("longer than {MAX_REF_LEN} bytes")));
    }
    if reference.chars().any(char::is_control) {
        return Err(bad("must not contain control characters"));
    }
    if reference.split('/').any(|part| part == "." || part == "..") {
        return Err(bad("must not contain '.' or '..' components"));
    }
    Ok(())
}

/// The plugin type content stores register under.
pub const PLUGIN_TYPE: &str = "io.containerd.content.v1";

/// Blob records per namespace: `<ns>/<digest>` -> [`Record`].
pub const TREE: &str = "content";
/// Ingests per namespace: `<ns>/<ref>` -> [`IngestRecord`].
pub const INGESTS_TREE: &str = "ingests";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub size: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct IngestRecord {
    /// An ingest is a GC root until then; without it, only a lease keeps it.
    pub expires: Option<SystemTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        for ok in [
            "r1",
            "tar-blobs/sha256/abc",
            "layer-sha256:abc",
            "index-sha256:x",
            "a b",
        ] {
            assert!(validate_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../../etc",
            "a/../b",
            "a/.",
            "a\0b",
            "a\nb",
            &"r".repeat(MAX_REF_LEN + 1),
        ] {
            assert!(validate_ref(bad).is_err(), "{bad:?}");
        }
    }
}
