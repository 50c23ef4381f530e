//! A faithful copy of a directory tree, for the native snapshotter: what a
//! container sees in the copy must be what it would see in the original.
//! Kept: file types (directories, files, symlinks, device nodes, fifos,
//! sockets), permission bits with setuid/setgid/sticky, owners, extended
//! attributes (file capabilities, overlay and ACL xattrs), access and
//! modification times, and hard links between files of the tree.

use std::{
    collections::HashMap,
    fs::{self, File, Metadata, OpenOptions},
    io,
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use corten_core::Error;
use nix::{
    fcntl::AT_FDCWD,
    sys::{
        stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags},
        time::TimeSpec,
    },
};

fn copy_err<'a>(path: &'a Path, what: &str) -> impl Fn(io::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::internal(&format!("copy {}: {what}", path.display()), e)
}

fn errno_err<'a>(path: &'a Path, what: &str) -> impl Fn(nix::errno::Errno) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::internal(&format!("copy {}: {what}", path.display()), e)
}

enum Step {
    /// Copy the entries of a source directory into an existing destination.
    Enter(PathBuf, PathBuf),
    /// Give a directory its attributes, after its entries: adding them
    /// would change its times, and a read-only mode would stop them.
    Finish(PathBuf, Metadata, PathBuf),
}

/// Copies the contents and attributes of `src` into the existing directory `dst`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), Error> {
    let root = fs::symlink_metadata(src).map_err(copy_err(src, "stat"))?;
    // Files with more than one link, by source inode: the first copy made.
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut steps = vec![
        Step::Finish(src.to_path_buf(), root, dst.to_path_buf()),
        Step::Enter(src.to_path_buf(), dst.to_path_buf()),
    ];
    while let Some(step) = steps.pop() {
        match step {
            Step::Finish(from, meta, to) => set_attributes(&from, &meta, &to)?,
            Step::Enter(from_dir, to_dir) => {
                for entry in fs::read_dir(&from_dir).map_err(copy_err(&from_dir, "list"))? {
                    let entry = entry.map_err(copy_err(&from_dir, "list"))?;
                    let (from, to) = (entry.path(), to_dir.join(entry.file_name()));
                    let meta = entry.metadata().map_err(copy_err(&from, "stat"))?;
                    if meta.is_dir() {
                        fs::create_dir(&to).map_err(copy_err(&to, "mkdir"))?;
                        steps.push(Step::Finish(from.clone(), meta, to.clone()));
                        steps.push(Step::Enter(from, to));
                        continue;
                    }
                    if meta.nlink() > 1 {
                        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                            fs::hard_link(first, &to).map_err(copy_err(&to, "link"))?;
                            continue;
                        }
                        links.insert((meta.dev(), meta.ino()), to.clone());
                    }
                    copy_entry(&from, &to, &meta)?;
                    set_attributes(&from, &meta, &to)?;
                }
            }
        }
    }
    Ok(())
}

/// Makes `to` as the same kind of non-directory as `from`, with its data.
fn copy_entry(from: &Path, to: &Path, meta: &Metadata) -> Result<(), Error> {
    let kind = meta.file_type();
    if kind.is_file() {
        let mut reader = File::open(from).map_err(copy_err(from, "open"))?;
        let mut writer = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)
            .map_err(copy_err(to, "create"))?;
        // std copies file to file with copy_file_range, which clones
        // extents on filesystems that can.
        io::copy(&mut reader, &mut writer).map_err(copy_err(to, "write"))?;
        return Ok(());
    }
    if kind.is_symlink() {
        let target = fs::read_link(from).map_err(copy_err(from, "readlink"))?;
        return std::os::unix::fs::symlink(target, to).map_err(copy_err(to, "symlink"));
    }
    let node = if kind.is_char_device() {
        SFlag::S_IFCHR
    } else if kind.is_block_device() {
        SFlag::S_IFBLK
    } else if kind.is_fifo() {
        SFlag::S_IFIFO
    } else if kind.is_socket() {
        SFlag::S_IFSOCK
    } else {
        return Err(Error::Internal(format!("copy {}: unknown file type", from.display())));
    };
    mknod(to, node, Mode::from_bits_truncate(0o600), meta.rdev()).map_err(errno_err(to, "mknod"))
}

/// Owner, then mode (a chown clears setuid and setgid), then extended
/// attributes (a chown also drops `security.capability`), then times (last,
/// as nothing after may touch them).
fn set_attributes(from: &Path, meta: &Metadata, path: &Path) -> Result<(), Error> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid())).map_err(copy_err(path, "chown"))?;
    // Symlinks have no mode of their own on Linux.
    if !meta.file_type().is_symlink() {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(copy_err(path, "chmod"))?;
    }
    copy_xattrs(from, path)?;
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(AT_FDCWD, path, &atime, &mtime, UtimensatFlags::NoFollowSymlink).map_err(errno_err(path, "set times"))
}

fn copy_xattrs(from: &Path, to: &Path) -> Result<(), Error> {
    let names = match xattr::list(from) {
        Ok(names) => names,
        // A filesystem without xattrs has none to copy.
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(copy_err(from, "list xattrs")(e)),
    };
    for name in names {
        // Gone since the listing: nothing to copy.
        let Some(value) = xattr::get(from, &name).map_err(copy_err(from, "read xattr"))? else {
            continue;
        };
        xattr::set(to, &name, &value).map_err(copy_err(to, &format!("set xattr {}", name.to_string_lossy())))?;
    }
    Ok(())
}
