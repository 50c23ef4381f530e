//! The garbage collector interface: what stores and services call to have
//! unreferenced objects removed.

use crate::Error;

/// What one collection removed and how long it held writers off (the
/// database, and snapshotters' creations while they pruned).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub removed: u64,
    pub removed_blobs: u64,
    pub duration: std::time::Duration,
}

pub trait Collector: Send + Sync + 'static {
    /// Records that something was created or changed; `deletion` when it
    /// removed a reference (what makes garbage).
    fn mutated(&self, deletion: bool);
    /// Runs a collection now and waits for it (a `sync` delete).
    fn collect(&self) -> Result<Stats, Error>;
}

/// The label that makes an object a root.
pub const ROOT_LABEL: &str = "containerd.io/gc.root";
/// Labels whose value is a digest the object references.
pub const CONTENT_REF_PREFIX: &str = "containerd.io/gc.ref.content";
/// `containerd.io/gc.ref.snapshot.<snapshotter>` = key.
pub const SNAPSHOT_REF_PREFIX: &str = "containerd.io/gc.ref.snapshot.";
