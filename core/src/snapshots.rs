//! The snapshotter interface: layered filesystems by key, seen per
//! namespace. What the snapshots service, the differ, image unpacking and
//! the runtime use.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{filters::Adaptor, mount::Mount, Error};

/// The plugin type snapshotters register under.
pub const PLUGIN_TYPE: &str = "io.containerd.snapshotter.v1";

/// Set by clients on unpacked layers: the chain ID the snapshot stands for.
pub const SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only, from a committed parent.
    View,
    /// Writable, until committed.
    Active,
    /// Read-only and usable as a parent.
    Committed,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// The key (active, view) or name (committed) in its namespace.
    pub name: String,
    /// Empty for a snapshot with no parent.
    pub parent: String,
    pub kind: Kind,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: BTreeMap<String, String>,
}

/// Filter fields: `name`, `parent`, `kind`, `labels.<key>`.
impl Adaptor for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.name.clone()),
            [f] if f == "parent" => Some(self.parent.clone()).filter(|p| !p.is_empty()),
            [f] if f == "kind" => Some(self.kind.name().to_string()),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => self.labels.get(&rest.join(".")).cloned(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub size: u64,
    pub inodes: u64,
}

/// The metadata tree of one snapshotter's records: `<ns>/<key>` -> [`Record`].
pub fn tree(snapshotter: &str) -> String {
    format!("snapshots/{snapshotter}")
}

/// What the metadata store keeps per snapshot; the backend keeps the files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The backend's own key, `<ns>/<seq>/<key>`: unique across namespaces
    /// and never reused, so a user's key never names backend state.
    pub backend_key: String,
    pub parent: String,
    pub kind: Kind,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: BTreeMap<String, String>,
}

/// The lease resource kind for a snapshot of `snapshotter`.
pub fn resource_kind(snapshotter: &str) -> String {
    format!("snapshots/{snapshotter}")
}

/// The longest snapshot key accepted.
pub const MAX_KEY_LEN: usize = 4096;

/// Keys are opaque to corten and may contain `/`; they must not be empty,
/// hold NUL or other control characters, or be overlong.
pub fn validate_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("snapshot key must not be empty".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidArgument(format!(
            "snapshot key longer than {MAX_KEY_LEN} bytes"
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "snapshot key {key:?} contains control characters"
        )));
    }
    Ok(())
}

/// A namespaced snapshotter. Calls block on disk and database I/O.
pub trait Snapshotter: Send + Sync + 'static {
    fn stat(&self, ns: &str, key: &str) -> Result<Info, Error>;
    /// Only labels change (`labels`, `labels.<key>`).
    fn update(&self, ns: &str, info: &Info, paths: &[String]) -> Result<Info, Error>;
    fn usage(&self, ns: &str, key: &str) -> Result<Usage, Error>;
    fn mounts(&self, ns: &str, key: &str) -> Result<Vec<Mount>, Error>;
    /// `parent` is empty for none; a missing parent is NotFound, one that is
    /// not committed InvalidArgument (as containerd answers); an existing key
    /// is AlreadyExists.
    fn prepare(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>, Error>;
    fn view(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>, Error>;
    /// An existing `name` is AlreadyExists; `key` must be active.
    fn commit(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
        lease: Option<&str>,
    ) -> Result<(), Error>;
    /// A snapshot with children is FailedPrecondition. The `lease` of the
    /// request, if any, stops referencing it, so a lease that outlives many
    /// snapshots made and removed under it does not keep their names.
    fn remove(&self, ns: &str, key: &str, lease: Option<&str>) -> Result<(), Error>;
    fn list(&self, ns: &str) -> Result<Vec<Info>, Error>;
    /// Removes backend state no record references (after a GC sweep, or
    /// the Cleanup RPC).
    fn cleanup(&self) -> Result<Cleaned, Error>;
}

/// What [`Snapshotter::cleanup`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Backend snapshots removed.
    pub removed: u64,
    /// How long it held off this snapshotter's creations and commits while
    /// it worked out what goes: the collector counts it as pause, as it
    /// counts its own hold on the database.
    pub paused: Duration,
}
