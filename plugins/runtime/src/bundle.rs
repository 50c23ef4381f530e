//! A task's bundle: `<state>/<ns>/<id>/` holding `config.json`, the
//! `rootfs/` the shim mounts, the shim's `log` FIFO, and `work`, a link to
//! the persistent `<root>/<ns>/<id>/` work directory.
//!
//! Removal is careful: the root filesystem is unmounted and its (then empty)
//! directory removed first, so a mount that will not go away stops the
//! removal instead of letting it delete the container's files. Then the
//! bundle and work directories are moved to hidden names, each its own, so
//! the id is free at once and a later scan never takes a half-removed
//! directory for a bundle; what they hold can be removed afterwards
//! ([`SetAside`]).

use std::{
    fs::DirBuilder,
    io::{self, ErrorKind},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use rustix::{
    fs::{FileType, Mode, RenameFlags, CWD},
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
        self.set_aside()?.remove()
    }

    /// Unmounts the root filesystem and removes its directory, then moves
    /// the bundle and the work directory out of the way, leaving their
    /// contents to [`SetAside::remove`]. Fails, moving nothing, if the root
    /// filesystem stays mounted or holds files.
    pub fn set_aside(&self) -> io::Result<SetAside> {
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
        let mut aside = SetAside::default();
        for path in [&self.path, &self.work] {
            match hide(path) {
                Ok(Some(hidden)) => aside.hidden.push((path.clone(), hidden)),
                Ok(None) => {}
                Err(e) => {
                    aside.failed.get_or_insert(e);
                }
            }
        }
        Ok(aside)
    }
}

/// A bundle's directories under hidden names, to be removed.
#[derive(Debug, Default)]
#[must_use = "what was set aside stays on disk until it is removed"]
pub struct SetAside {
    /// `(where it was, where it is)`.
    hidden: Vec<(PathBuf, PathBuf)>,
    /// Why a directory could not be moved (it stays where it was).
    failed: Option<io::Error>,
}

impl SetAside {
    /// Removes the directories; the first error, if any, including one
    /// from setting them aside.
    pub fn remove(self) -> io::Result<()> {
        let mut result = self.failed.map_or(Ok(()), Err);
        for (was, hidden) in self.hidden {
            if let Err(e) = std::fs::remove_dir_all(&hidden) {
                if result.is_ok() {
                    result = Err(io::Error::new(e.kind(), format!("remove {}: {e}", was.display())));
                }
            }
        }
        result
    }
}

/// Moves `path` to a hidden sibling of a name no other removal uses, so
/// removals of the same id cannot collide; `None` if it is gone already.
fn hide(path: &Path) -> io::Result<Option<PathBuf>> {
    // Unique within this process; a name left by an earlier one (a crash
    // mid-removal, before the next start removed it) is skipped over.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().expect("bundle paths end in a name").to_string_lossy();
    let mut taken = 0;
    loop {
        let hidden = path.with_file_name(format!(".{name}.{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let moved = match rustix::fs::renameat_with(CWD, path, CWD, &hidden, RenameFlags::NOREPLACE) {
            // A filesystem that cannot refuse to replace: a plain rename
            // replaces only an empty directory, and fails on anything else.
            Err(Errno::INVAL) => rustix::fs::rename(path, &hidden),
            moved => moved,
        };
        match moved {
            Ok(()) => return Ok(Some(hidden)),
            Err(Errno::NOENT) => return Ok(None),
            // Names are only ever left by a crash, so a few are taken at
            // most; the bound keeps a filesystem that answers so for any
            // name from looping forever.
            Err(Errno::EXIST) | Err(Errno::NOTEMPTY) if taken < 64 => taken += 1,
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("remove {}: {e}", path.display()),
                ))
            }
        }
    }
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
    fn set_aside_frees_the_id_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (state, root) = (dir.path().join("state"), dir.path().join("root"));
        let b = Bundle::at(&state, &root, "ns", "c1");
        let mut asides = Vec::new();
        for round in 0..3 {
            b.create(format!("{round}").as_bytes()).unwrap();
            std::fs::write(b.work.join("kept"), b"x").unwrap();
            asides.push(b.set_aside().unwrap());
            assert!(!b.path.exists() && !b.work.exists());
        }
        // Each under a hidden name of its own, none removed yet.
        let hidden = |dir: &Path| std::fs::read_dir(dir.join("ns")).unwrap().count();
        assert_eq!((hidden(&state), hidden(&root)), (3, 3));
        b.create(b"live").unwrap();
        for aside in asides {
            aside.remove().unwrap();
        }
        assert_eq!((hidden(&state), hidden(&root)), (1, 1));
        assert_eq!(std::fs::read(b.file(CONFIG)).unwrap(), b"live");
        // Setting aside what is gone sets nothing aside.
        b.remove().unwrap();
        b.set_aside().unwrap().remove().unwrap();
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
