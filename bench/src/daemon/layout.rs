//! One run's private directories, removed when the run ends.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tempfile::TempDir;

/// Everything a daemon writes during one run lives under `dir`, so no run
/// inherits state (a warm metadata database, a stale socket) from another.
pub struct Layout {
    dir: TempDir,
    /// Holds `root` and `state` when they live on another filesystem.
    _data: Option<TempDir>,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Layout {
    /// With `data`, `root` and `state` go into a new directory under it,
    /// while the socket, config and log stay under /tmp: benchmarks that
    /// write to the daemon's root need it on a chosen (disk-backed)
    /// filesystem, and a chosen path could be too long for a socket.
    pub fn with_data_in(daemon: &str, data: Option<&Path>) -> anyhow::Result<Layout> {
        // Under /tmp, not a deep work tree: unix socket paths must fit in
        // 108 bytes, and containerd appends ".ttrpc" to one.
        let dir = tempfile::Builder::new()
            .prefix(&format!("corten-bench-{daemon}-"))
            .tempdir_in("/tmp")
            .context("create a temporary directory")?;
        let base = dir.path().to_path_buf();
        let data = data
            .map(|parent| {
                tempfile::Builder::new()
                    .prefix(&format!("corten-bench-{daemon}-"))
                    .tempdir_in(parent)
                    .with_context(|| format!("create a temporary directory in {}", parent.display()))
            })
            .transpose()?;
        let data_base = data.as_ref().map_or_else(|| base.clone(), |d| d.path().to_path_buf());
        Ok(Layout {
            root: data_base.join("root"),
            state: data_base.join("state"),
            socket: base.join("grpc.sock"),
            config: base.join("config.toml"),
            log: base.join("daemon.log"),
            dir,
            _data: data,
        })
    }

    /// For daemon settings that have no flag of their own.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
