//! The differ interface: layers applied onto mounts, and the difference
//! between two mount sets written as a layer.

use std::collections::BTreeMap;

use crate::{digest::Digest, mount::Mount, Error};

/// The plugin type differs register under.
pub const PLUGIN_TYPE: &str = "io.containerd.differ.v1";

/// Set on a written or applied layer blob: its uncompressed digest (diff ID).
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Empty: a gzip-compressed OCI layer.
    pub media_type: String,
    /// The ingest ref to write under; generated when empty.
    pub reference: String,
    pub labels: BTreeMap<String, String>,
    pub lease: Option<String>,
}

/// Calls block on disk I/O and may run for long.
pub trait Differ: Send + Sync + 'static {
    /// Unpacks the layer `diff` (from namespace `ns`'s content) onto
    /// `mounts`; returns the uncompressed layer's descriptor.
    fn apply(&self, ns: &str, diff: &Descriptor, mounts: &[Mount]) -> Result<Descriptor, Error>;
    /// Writes what changed from `lower` to `upper` into the content store.
    fn compare(&self, ns: &str, lower: &[Mount], upper: &[Mount], options: DiffOptions) -> Result<Descriptor, Error>;
}
