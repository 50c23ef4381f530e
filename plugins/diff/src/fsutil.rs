//! Operations on a name inside an open directory.
//!
//! Everything the differ does to a tree goes through a directory file
//! descriptor and a single name that is never followed if it is a symlink,
//! so whatever the tree holds, nothing outside it is reached. The few calls
//! that only exist for paths (xattrs on a symlink, a device or a fifo) go
//! through `/proc/self/fd/<dir>/<name>`: the kernel jumps straight to the
//! directory the descriptor holds, and the `l*` variants do not follow the
//! final name.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::PathBuf,
};

use nix::{
    errno::Errno,
    fcntl::{openat, readlinkat, AtFlags, OFlag},
    sys::stat::{
        fchmod, fstatat, futimens, major, minor, mkdirat, mknodat, utimensat, FileStat, Mode, SFlag, UtimensatFlags,
    },
    sys::time::TimeSpec,
    unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags},
};

/// The largest xattr value and name list Linux supports (XATTR_SIZE_MAX, XATTR_LIST_MAX).
const XATTR_MAX: usize = 64 * 1024;

/// The kind of a tree node, as far as the differ cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Regular,
    Symlink,
    /// A 0/0 character device: an overlay whiteout.
    Whiteout,
    /// Any other device, a fifo or a socket.
    Special,
}

pub fn kind(st: &FileStat) -> Kind {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFREG => Kind::Regular,
        SFlag::S_IFLNK => Kind::Symlink,
        SFlag::S_IFCHR if st.st_rdev == 0 => Kind::Whiteout,
        _ => Kind::Special,
    }
}

pub fn file_type_bits(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

pub fn device_numbers(st: &FileStat) -> (u32, u32) {
    (major(st.st_rdev) as u32, minor(st.st_rdev) as u32)
}

/// The node `name` in `dir`, not following a symlink; `None` if absent.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens the directory `name` in `dir`; a symlink there is an error (ELOOP or ENOTDIR).
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the regular file `name` in `dir` for reading, never through a
/// symlink. Non-blocking, so a fifo swapped in meanwhile cannot hang the caller.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Creates the regular file `name` in `dir`; it must not exist.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let fd = openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    Ok(File::from(fd))
}

/// Creates the directory `name` in `dir` and opens it. Its mode is set by
/// the caller, so the umask does not matter.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    mkdirat(dir, name, Mode::from_bits_truncate(0o700))?;
    open_dir_at(dir, name)
}

/// Opens the root of a tree given by path (the one path the differ follows,
/// since it is the differ's own mount point or a snapshot directory).
pub fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

pub fn read_link_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OsString> {
    Ok(readlinkat(dir, name)?)
}

pub fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(symlinkat(target, dir, name)?)
}

/// Creates a device node or fifo, owned by the caller and with mode 0: the
/// caller sets both.
pub fn mknod_at(dir: BorrowedFd<'_>, name: &OsStr, kind: SFlag, dev: (u32, u32)) -> io::Result<()> {
    let dev = nix::sys::stat::makedev(u64::from(dev.0), u64::from(dev.1));
    Ok(mknodat(dir, name, kind, Mode::empty(), dev)?)
}

/// The names in `dir` (without `.` and `..`), sorted bytewise.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    // A fresh open of "." so the listing does not share a read position with `dir`.
    let mut listing = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes `name` from `dir`, with everything under it if it is a directory.
/// Symlinks are removed, never followed.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let Some(st) = stat_at(dir, name)? else {
        return Ok(());
    };
    if kind(&st) != Kind::Dir {
        return match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    let child = open_dir_at(dir, name)?;
    for entry in list_dir(child.as_fd())? {
        remove_all_at(child.as_fd(), &entry)?;
    }
    drop(child);
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    Ok(fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?)
}

/// Sets the owner of `name` itself, never a symlink's target.
pub fn lchown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    Ok(fchownat(
        dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(fchmod(fd, Mode::from_bits_truncate(mode & 0o7777))?)
}

/// Sets the mode of a device node or fifo without opening it (opening a
/// fifo blocks, opening a device may have effects) and without following a
/// symlink that might have taken its place.
pub fn chmod_node_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let node = openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let st = nix::sys::stat::fstat(&node)?;
    if kind(&st) == Kind::Symlink {
        return Err(io::Error::from_raw_os_error(Errno::ELOOP as i32));
    }
    // The magic link resolves to exactly the inode `node` holds.
    std::fs::set_permissions(
        proc_fd_path(node.as_fd()),
        std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
    )
}

pub fn set_times_fd(fd: BorrowedFd<'_>, atime: TimeSpec, mtime: TimeSpec) -> io::Result<()> {
    Ok(futimens(fd, &atime, &mtime)?)
}

/// Sets the times of `name` itself, never a symlink's target.
pub fn set_times_at(dir: BorrowedFd<'_>, name: &OsStr, atime: TimeSpec, mtime: TimeSpec) -> io::Result<()> {
    Ok(utimensat(dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)?)
}

fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `/proc/self/fd/<dir>/<name>`: a path to `name` in `dir` for the calls that
/// take nothing else.
fn proc_path_at(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    proc_fd_path(dir).join(name)
}

/// Xattrs the overlay filesystem keeps for itself. A layer never sets them
/// (they would steer the overlay of a later mount) and a diff never carries them.
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn split_names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|b| *b == 0).filter(|n| !n.is_empty())
}

fn unsupported(e: &rustix::io::Errno) -> bool {
    *e == rustix::io::Errno::NOTSUP || *e == rustix::io::Errno::OPNOTSUPP
}

/// The xattrs of an open file or directory, without the overlay's own.
pub fn xattrs_fd(fd: BorrowedFd<'_>) -> io::Result<Xattrs> {
    let mut list = vec![0u8; XATTR_MAX];
    let n = match rustix::fs::flistxattr(fd, &mut list[..]) {
        Ok(n) => n,
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    let mut value = vec![0u8; XATTR_MAX];
    for name in split_names(&list[..n]) {
        if is_overlay_xattr(name) {
            continue;
        }
        match rustix::fs::fgetxattr(fd, name, &mut value[..]) {
            Ok(len) => out.push((name.to_vec(), value[..len].to_vec())),
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// The xattrs of `name` itself in `dir` (a symlink's own), without the overlay's.
pub fn xattrs_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Xattrs> {
    let path = proc_path_at(dir, name);
    let mut list = vec![0u8; XATTR_MAX];
    let n = match rustix::fs::llistxattr(&path, &mut list[..]) {
        Ok(n) => n,
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    let mut value = vec![0u8; XATTR_MAX];
    for attr in split_names(&list[..n]) {
        if is_overlay_xattr(attr) {
            continue;
        }
        match rustix::fs::lgetxattr(&path, attr, &mut value[..]) {
            Ok(len) => out.push((attr.to_vec(), value[..len].to_vec())),
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Whether an xattr could not be set because the filesystem has no such
/// namespace; containerd skips those too.
pub fn set_xattr_fd(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<bool> {
    match rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty()) {
        Ok(()) => Ok(true),
        Err(e) if unsupported(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Sets an xattr on `name` itself in `dir`; `false` if the filesystem does
/// not support it.
pub fn set_xattr_at(dir: BorrowedFd<'_>, name: &OsStr, attr: &[u8], value: &[u8]) -> io::Result<bool> {
    match rustix::fs::lsetxattr(proc_path_at(dir, name), attr, value, rustix::fs::XattrFlags::empty()) {
        Ok(()) => Ok(true),
        Err(e) if unsupported(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub fn has_xattr_fd(fd: BorrowedFd<'_>, name: &str, expected: &[u8]) -> bool {
    let mut value = [0u8; 16];
    matches!(rustix::fs::fgetxattr(fd, name, &mut value[..]), Ok(n) if &value[..n] == expected)
}

pub fn atime(st: &FileStat) -> TimeSpec {
    TimeSpec::new(st.st_atime, st.st_atime_nsec)
}

pub fn mtime(st: &FileStat) -> TimeSpec {
    TimeSpec::new(st.st_mtime, st.st_mtime_nsec)
}

/// Copies `name` from `src` into `dst` (which must not have it) with its
/// owner, mode, xattrs and times: a regular file, symlink, device or fifo.
/// This is overlayfs's copy-up, for the layer entries that need it.
pub fn copy_node(src: BorrowedFd<'_>, name: &OsStr, dst: BorrowedFd<'_>) -> io::Result<()> {
    let Some(st) = stat_at(src, name)? else {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    };
    let (uid, gid, mode) = (st.st_uid, st.st_gid, st.st_mode & 0o7777);
    match kind(&st) {
        Kind::Regular => {
            let mut from = open_file_at(src, name)?;
            let xattrs = xattrs_fd(from.as_fd())?;
            let mut to = create_file_at(dst, name)?;
            copy_data(&mut from, &mut to)?;
            chown_fd(to.as_fd(), uid, gid)?;
            chmod_fd(to.as_fd(), mode)?;
            for (k, v) in &xattrs {
                set_xattr_fd(to.as_fd(), k, v)?;
            }
            set_times_fd(to.as_fd(), atime(&st), mtime(&st))?;
        }
        Kind::Symlink => {
            let xattrs = xattrs_at(src, name)?;
            symlink_at(&read_link_at(src, name)?, dst, name)?;
            lchown_at(dst, name, uid, gid)?;
            for (k, v) in &xattrs {
                set_xattr_at(dst, name, k, v)?;
            }
            set_times_at(dst, name, atime(&st), mtime(&st))?;
        }
        Kind::Special => {
            let xattrs = xattrs_at(src, name)?;
            mknod_at(dst, name, file_type_bits(&st), device_numbers(&st))?;
            lchown_at(dst, name, uid, gid)?;
            chmod_node_at(dst, name, mode)?;
            for (k, v) in &xattrs {
                set_xattr_at(dst, name, k, v)?;
            }
            set_times_at(dst, name, atime(&st), mtime(&st))?;
        }
        Kind::Dir | Kind::Whiteout => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    }
    Ok(())
}

/// Gives `dst` (a new directory) the owner, mode and xattrs of the directory `src`.
pub fn copy_dir_meta(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
    let st = nix::sys::stat::fstat(src)?;
    chown_fd(dst, st.st_uid, st.st_gid)?;
    chmod_fd(dst, st.st_mode)?;
    for (k, v) in xattrs_fd(src)? {
        set_xattr_fd(dst, &k, &v)?;
    }
    Ok(())
}

/// Fills `buf` as far as the reader allows; short only at its end.
pub fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn copy_data(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}
