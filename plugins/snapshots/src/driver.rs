//! What differs between snapshotters: how a new snapshot's files come to be
//! and how its layers are mounted. Everything else (records, keys, the
//! backend's state, cleanup) they share.

use std::path::{Path, PathBuf};

use corten_core::{mount::Mount, snapshots::Kind, Error};

use crate::backend::DirSpec;

/// Where a snapshot's files are, for [`Driver::mounts`].
pub struct Layers<'a> {
    pub kind: Kind,
    pub fs: &'a Path,
    pub work: &'a Path,
    /// The `fs` directories of its parents, nearest first.
    pub parents: &'a [PathBuf],
}

pub trait Driver: Send + Sync + 'static {
    /// The directories a new snapshot of `kind` gets; `layered` when it has
    /// a parent.
    fn dirs(&self, kind: Kind, layered: bool) -> &'static [DirSpec];

    /// Fills a new snapshot's `fs` from its parent's, if it has one.
    fn populate(&self, fs: &Path, parent_fs: Option<&Path>) -> Result<(), Error>;

    /// The mounts that show an active or view snapshot.
    fn mounts(&self, layers: &Layers) -> Vec<Mount>;

    /// A label under which Stat, List and Update report the snapshot's `fs`
    /// directory (overlayfs's `upperdir_label`); the snapshot's own labels
    /// win over it.
    fn fs_label(&self) -> Option<&'static str> {
        None
    }
}

/// A bind mount of one directory, as containerd gives a snapshot that is a
/// single directory: an overlay needs an upper and a lower, or two lowers.
pub fn bind(source: &Path, writable: bool) -> Mount {
    Mount {
        kind: "bind".into(),
        source: source.display().to_string(),
        target: String::new(),
        options: vec![if writable { "rw" } else { "ro" }.into(), "rbind".into()],
    }
}
