//! One run's private directories, removed when the run ends.

use std::path::PathBuf;

use anyhow::Context as _;
use tempfile::TempDir;

/// Everything a daemon writes during one run lives under `dir`, so no run
/// inherits state (a warm metadata database, a stale socket) from another.
pub struct Layout {
    dir: TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Layout {
    pub fn new(daemon: &str) -> anyhow::Result<Layout> {
        // Under /tmp, not a deep work tree: unix socket paths must fit in
        // 108 bytes, and containerd appends ".ttrpc" to one.
        let dir = tempfile::Builder::new()
            .prefix(&format!("corten-bench-{daemon}-"))
            .tempdir_in("/tmp")
            .context("create a temporary directory")?;
        let base = dir.path().to_path_buf();
        Ok(Layout {
            root: base.join("root"),
            state: base.join("state"),
            socket: base.join("grpc.sock"),
            config: base.join("config.toml"),
            log: base.join("daemon.log"),
            dir,
        })
    }

    /// For daemon settings that have no flag of their own.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
