//! A task's bundle: `<state>/<ns>/<id>/` holding `config.json`, the
//! `rootfs/` the shim mounts, the shim's `log` FIFO, and `work`, a link to
//! the persistent `<root>/<ns>/<id>/` work directory.
//!
//! Removal is careful: the root filesystem is unmounted and its (then empty)
//! directory removed first, so a mount that will not go away stops the
//! removal instead of letting it delete the container's files.

use std::{
    fs::DirBuilder,
    io::{self, ErrorKind},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use rustix::{
    fs::{FileType, Mode, CWD},
    io::Errno,
    mount::UnmountFlags,
};

/// The files a bundle holds besides what the shim writes.
pub const CONFIG: &str = "config.json";
pub const ROOTFS: &str = "rootfs";
pub const WORK: &str = "work";
pub const LOG: &str = "log";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub namespace: String,
    pub id: String,
    /// `<state>/<ns>/<id>`
    pub path: PathBuf,
    /// `<root>/<ns>/<id>`
    pub work: PathBuf,
}

impl Bundle {
    /// The bundle of `namespace`/`id` under the plugin's directories.
    pub fn at(state: &Path, root: &Path, namespace: &str, id: &str) -> Self {
        Bundle {
            namespace: namespace.into(),
            id: id.into(),
            path: state.join(namespace).join(id),
            work: root.join(namespace).join(id),
        }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.path.join(ROOTFS)
    }

    pub fn log(&self) -> PathBuf {
        self.path.join(LOG)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Lays the bundle out on disk with `spec` as its `config.json`. Fails
    /// with `AlreadyExists` if the bundle directory exists; anything made
    /// before a failure is removed again.
    pub fn create(&self, spec: &[u8]) -> io::Result<()> {
        let parent = self.path.parent().expect("a bundle path has a parent");
        DirBuilder::new().recursive(true).mode(0o711).create(parent)?;
        DirBuilder::new().mode(0o700).create(&self.path)?;
        let made = self.lay_out(spec);
        if made.is_err() {
            let _ = self.remove();
        }
        made
    }

    fn lay_out(&self, spec: &[u8]) -> io::Result<()> {
        DirBuilder::new().mode(0o711).create(self.rootfs())?;
        let work_parent = self.work.parent().expect("a work path has a parent");
        DirBuilder::new().recursive(true).mode(0o711).create(work_parent)?;
        // A work directory left by a task that was never cleaned up (a
        // reboot wiped the state dir) belongs to nobody now.
        match std::fs::remove_dir_all(&self.work) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        DirBuilder::new().mode(0o711).create(&self.work)?;
        std::os::unix::fs::symlink(&self.work, self.path.join(WORK))?;
        std::fs::write(self.path.join(CONFIG), spec)?;
        self.ensure_log_fifo()
    }

    /// The shim writes its log to the FIFO `log` in its working directory
    /// and refuses to start without it.
    pub fn ensure_log_fifo(&self) -> io::Result<()> {
        match rustix::fs::mknodat(CWD, self.log(), FileType::Fifo, Mode::from_raw_mode(0o700), 0) {
            Ok(()) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the bundle directory holds anything at all.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(std::fs::read_dir(&self.path)?.next().is_none())
    }

    /// Unmounts everything stacked on `rootfs/`.
    pub fn unmount_rootfs(&self) -> io::Result<()> {
        let rootfs = self.rootfs();
        // Each call removes the top mount; EINVAL means "not a mount point".
        for _ in 0..64 {
            match rustix::mount::unmount(&rootfs, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
                Ok(()) => continue,
                Err(Errno::INVAL) | Err(Errno::NOENT) => return Ok(()),
                Err(e) => return Err(io::Error::other(format!("unmount {}: {e}", rootfs.display()))),
            }
        }
        Err(io::Error::other(format!("{} stays mounted", rootfs.display())))
    }

    /// Unmounts the root filesystem, then removes the bundle and the work
    /// directory. Removing what is already gone is not an error.
    pub fn remove(&self) -> io::Result<()> {
        self.unmount_rootfs()?;
        match std::fs::remove_dir(self.rootfs()) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("remove {}: {e}", self.rootfs().display()),
                ))
            }
            _ => {}
        }
        let bundle = remove_tree(&self.path);
        let work = remove_tree(&self.work);
        bundle.and(work)
    }
}

/// Renames `path` to a hidden sibling first, so a half-removed directory is
/// never mistaken for a bundle by a later scan.
fn remove_tree(path: &Path) -> io::Result<()> {
    let name = path.file_name().expect("bundle paths end in a name").to_string_lossy();
    let hidden = path.with_file_name(format!(".{name}"));
    match std::fs::rename(path, &hidden) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("remove {}: {e}", path.display()))),
    }
    std::fs::remove_dir_all(&hidden).map_err(|e| io::Error::new(e.kind(), format!("remove {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    #[test]
    fn lays_out_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let (state, root) = (dir.path().join("state"), dir.path().join("root"));
        let b = Bundle::at(&state, &root, "ns", "c1");
        b.create(br#"{"ociVersion":"1.0.2"}"#).unwrap();
        assert_eq!(std::fs::read(b.file(CONFIG)).unwrap(), br#"{"ociVersion":"1.0.2"}"#);
        assert!(b.rootfs().is_dir());
        assert!(b.work.is_dir());
        assert_eq!(std::fs::read_link(b.file(WORK)).unwrap(), b.work);
        assert!(std::fs::metadata(b.log()).unwrap().file_type().is_fifo());
        assert_eq!(
            b.create(b"{}").unwrap_err().kind(),
            ErrorKind::AlreadyExists,
            "a second create must not clobber the first"
        );
        assert!(b.rootfs().is_dir(), "the failed create left the first bundle alone");

        b.remove().unwrap();
        assert!(!b.path.exists() && !b.work.exists());
        assert_eq!(std::fs::read_dir(state.join("ns")).unwrap().count(), 0);
        b.remove().unwrap();
    }

    #[test]
    fn refuses_to_remove_a_rootfs_with_files() {
        let dir = tempfile::tempdir().unwrap();
        let b = Bundle::at(&dir.path().join("s"), &dir.path().join("r"), "ns", "c1");
        b.create(b"{}").unwrap();
        std::fs::write(b.rootfs().join("precious"), b"x").unwrap();
        assert!(b.remove().is_err());
        assert!(b.rootfs().join("precious").exists());
    }
}
