//! Unpacking a layer's tar stream onto a directory tree.
//!
//! Two kinds of target:
//! - a plain directory holding the parent layers (the native snapshotter,
//!   or an overlay mounted for us): whiteouts delete for real;
//! - an overlay upper directory with its lower directories: whiteouts
//!   become what overlayfs reads as deletions (a 0/0 character device, an
//!   opaque xattr) and lookups see the merged layers (see [`crate::resolve`]).
//!
//! Entry names are cleaned as containerd does (a leading `/` is dropped, `.`
//! ignored) except that any `..` fails the layer: no legitimate layer has
//! one, and refusing is simpler to trust than clamping.
//!
//! The OCI rule that a whiteout only hides what lower layers hold means the
//! applier remembers which paths this layer wrote: a whiteout or an opaque
//! marker never removes those, whatever order the entries come in. Keys are
//! 64-bit keyed hashes of the paths, so even millions of entries cost little.

use std::{
    collections::{hash_map::RandomState, HashSet},
    ffi::{OsStr, OsString},
    hash::BuildHasher,
    io::{self, Read, Write},
    os::{
        fd::{AsFd, BorrowedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    rc::Rc,
};

use corten_core::{digest::Digest, Error};
use nix::{
    sys::{stat::SFlag, time::TimeSpec},
    unistd::linkat,
};
use tar::EntryType;

use crate::{
    fsutil::{self, Kind},
    meter::{Meter, MeteredReader},
    resolve::{DirHandle, LowerTop, Resolver},
};

/// Longest entry path and name accepted (Linux's PATH_MAX and NAME_MAX).
pub const MAX_PATH: usize = 4096;
pub const MAX_NAME: usize = 255;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// AUFS's own bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): skipped as
/// Docker and containerd skip it.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// Where a layer goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A directory holding the parent layers; whiteouts delete.
    Dir(PathBuf),
    /// An overlay's upper directory and its lower directories, top first.
    Overlay {
        upper: PathBuf,
        lowers: Vec<PathBuf>,
        /// `trusted.overlay.opaque`, or `user.overlay.opaque` for `userxattr` mounts.
        opaque_xattr: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

/// The uncompressed layer that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub diff_id: Digest,
    pub size: u64,
}

/// Applies the tar stream `layer` onto `target`. A failure leaves the target
/// partly written (the caller discards it) but never touches anything outside.
pub fn apply(layer: impl Read, target: &Target, limits: &Limits) -> Result<Applied, Error> {
    let meter = Meter::new(limits.max_bytes);
    let mut reader = MeteredReader::new(layer, meter.clone());
    let mut unpacker = Unpacker::new(target, limits)?;
    let result = {
        let mut archive = tar::Archive::new(&mut reader);
        unpacker.run(&mut archive, &meter)
    };
    result.map_err(|e| match (e, meter.overrun()) {
        (_, Some(overrun)) => Error::InvalidArgument(overrun.describe()),
        (e, None) => e,
    })?;
    // The diff ID covers the whole stream, padding after the archive included.
    meter.close_window();
    io::copy(&mut reader, &mut io::sink()).map_err(|e| layer_err(e, &meter))?;
    Ok(Applied {
        diff_id: reader.digest(),
        size: meter.position(),
    })
}

fn layer_err(e: io::Error, meter: &Meter) -> Error {
    match meter.overrun() {
        Some(overrun) => Error::InvalidArgument(overrun.describe()),
        None => Error::InvalidArgument(format!("read layer: {e}")),
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

fn fs_err<'a>(what: &'a str, path: impl std::fmt::Display + 'a) -> impl FnOnce(io::Error) -> Error + 'a {
    move |e| Error::Internal(format!("{what} {path}: {e}"))
}

fn nix_err<'a>(what: &'a str, path: impl std::fmt::Display + 'a) -> impl FnOnce(nix::Error) -> Error + 'a {
    move |e| Error::Internal(format!("{what} {path}: {e}"))
}

/// Splits an entry or link name into the names it goes through: a leading
/// `/` and `.` parts dropped, `..` refused, lengths checked.
pub fn clean_path(raw: &[u8]) -> Result<Vec<OsString>, Error> {
    let shown = || String::from_utf8_lossy(&raw[..raw.len().min(128)]).into_owned();
    if raw.len() > MAX_PATH {
        return Err(bad(format!("tar entry {}... is longer than {MAX_PATH} bytes", shown())));
    }
    if raw.contains(&0) {
        return Err(bad(format!("tar entry {:?} has a NUL byte", shown())));
    }
    let mut names = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(bad(format!("tar entry {:?} has a `..` component", shown()))),
            _ if part.len() > MAX_NAME => {
                return Err(bad(format!(
                    "tar entry {:?} has a name longer than {MAX_NAME} bytes",
                    shown()
                )))
            }
            _ => names.push(OsStr::from_bytes(part).to_os_string()),
        }
    }
    Ok(names)
}

/// What a tar entry says about the node it makes.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Unpacker {
    resolver: Resolver,
    limits: Limits,
    entries: u64,
    file_bytes: u64,
    /// Keyed hashes of the paths this layer wrote, and of their parents.
    written: HashSet<u64>,
    hash_key: RandomState,
    /// Directories whose times are set last, once nothing is added to them.
    dir_times: Vec<(Vec<OsString>, TimeSpec, TimeSpec)>,
    buf: Vec<u8>,
}

impl Unpacker {
    fn new(target: &Target, limits: &Limits) -> Result<Unpacker, Error> {
        let open = |p: &Path| fsutil::open_root(p).map_err(fs_err("open", p.display()));
        let resolver = match target {
            Target::Dir(root) => Resolver::new(open(root)?, Vec::new(), None),
            Target::Overlay {
                upper,
                lowers,
                opaque_xattr,
            } => Resolver::new(
                open(upper)?,
                lowers.iter().map(|l| open(l)).collect::<Result<_, _>>()?,
                Some(opaque_xattr),
            ),
        };
        Ok(Unpacker {
            resolver,
            limits: *limits,
            entries: 0,
            file_bytes: 0,
            written: HashSet::new(),
            hash_key: RandomState::new(),
            dir_times: Vec::new(),
            buf: vec![0u8; 256 * 1024],
        })
    }

    fn run<R: Read>(&mut self, archive: &mut tar::Archive<R>, meter: &Meter) -> Result<(), Error> {
        let entries = archive.entries().map_err(|e| layer_err(e, meter))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| layer_err(e, meter))?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(bad(format!(
                    "layer has more than {} entries (max_entries)",
                    self.limits.max_entries
                )));
            }
            let stored = stored_size(&mut entry).map_err(|e| layer_err(e, meter))?;
            meter.open_window(stored);
            self.entry(&mut entry, meter)?;
        }
        self.finish();
        Ok(())
    }

    fn key(&self, path: &[OsString]) -> u64 {
        let joined: PathBuf = path.iter().collect();
        self.hash_key.hash_one(joined.as_os_str().as_bytes())
    }

    fn mark_written(&mut self, dir: &DirHandle, name: &OsStr) {
        let mut path = dir.path.clone();
        path.push(name.to_os_string());
        while !path.is_empty() {
            if !self.written.insert(self.key(&path)) {
                break;
            }
            path.pop();
        }
    }

    fn was_written(&self, dir: &DirHandle, name: &OsStr) -> bool {
        let mut path = dir.path.clone();
        path.push(name.to_os_string());
        self.written.contains(&self.key(&path))
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, meter: &Meter) -> Result<(), Error> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let mut names = clean_path(&raw)?;
        let Some(name) = names.pop() else {
            // The root itself ("./"): containerd leaves the target's root alone.
            return Ok(());
        };
        if names.iter().any(|n| n.as_bytes().starts_with(AUFS_META_PREFIX)) {
            return Ok(());
        }
        let bytes = name.as_bytes();
        if bytes == OPAQUE_MARKER {
            return self.opaque(&names);
        }
        if bytes.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        if let Some(deleted) = bytes.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&names, deleted);
        }
        let meta = read_meta(entry).map_err(|e| layer_err(e, meter))?;
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        self.write(&names, &name, kind, meta, link, entry, meter)
    }

    /// `.wh.<name>`: `name` is deleted from the layers below.
    fn whiteout(&mut self, parent: &[OsString], deleted: &[u8]) -> Result<(), Error> {
        if deleted.is_empty() || deleted == b"." || deleted == b".." {
            return Err(bad(format!(
                "invalid whiteout entry .wh.{}",
                String::from_utf8_lossy(deleted)
            )));
        }
        let name = OsStr::from_bytes(deleted);
        let dir = self.resolver.resolve(parent)?;
        if self.was_written(&dir, name) {
            return Ok(());
        }
        let st = fsutil::stat_at(dir.fd.as_fd(), name).map_err(fs_err("stat", dir.display(name)))?;
        let overlay = self.resolver.is_overlay();
        match st.as_ref().map(fsutil::kind) {
            Some(Kind::Whiteout) if overlay => return Ok(()),
            Some(_) => {
                fsutil::remove_all_at(dir.fd.as_fd(), name).map_err(fs_err("remove", dir.display(name)))?;
                self.resolver.invalidate();
            }
            None => {}
        }
        if overlay {
            fsutil::mknod_at(dir.fd.as_fd(), name, SFlag::S_IFCHR, (0, 0))
                .map_err(fs_err("create whiteout", dir.display(name)))?;
        }
        Ok(())
    }

    /// `.wh..wh..opq`: the directory hides everything the layers below hold in it.
    fn opaque(&mut self, path: &[OsString]) -> Result<(), Error> {
        let dir = self.resolver.resolve(path)?;
        let shown = dir.path.iter().collect::<PathBuf>().display().to_string();
        self.resolver.set_opaque(&dir.fd, &shown)?;
        self.resolver.invalidate();
        let mut path = dir.path.clone();
        self.clear_unwritten(dir.fd.as_fd(), &mut path)
    }

    /// Removes what is under a directory except the paths this layer wrote.
    fn clear_unwritten(&mut self, dir: BorrowedFd<'_>, path: &mut Vec<OsString>) -> Result<(), Error> {
        let shown = |p: &[OsString], n: &OsStr| p.iter().collect::<PathBuf>().join(n).display().to_string();
        for name in
            fsutil::list_dir(dir).map_err(|e| Error::Internal(format!("list {}: {e}", shown(path, "".as_ref()))))?
        {
            path.push(name.clone());
            let keep = self.written.contains(&self.key(path));
            path.pop();
            if !keep {
                fsutil::remove_all_at(dir, &name).map_err(fs_err("remove", shown(path, &name)))?;
                continue;
            }
            let st = fsutil::stat_at(dir, &name).map_err(fs_err("stat", shown(path, &name)))?;
            if st.as_ref().map(fsutil::kind) == Some(Kind::Dir) {
                let child = fsutil::open_dir_at(dir, &name).map_err(fs_err("open", shown(path, &name)))?;
                path.push(name);
                self.clear_unwritten(child.as_fd(), path)?;
                path.pop();
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn write<R: Read>(
        &mut self,
        parent: &[OsString],
        name: &OsStr,
        kind: EntryType,
        meta: Meta,
        link: Option<Vec<u8>>,
        entry: &mut tar::Entry<'_, R>,
        meter: &Meter,
    ) -> Result<(), Error> {
        let dir = self.resolver.resolve(parent)?;
        let shown = dir.display(name);
        let fd = dir.fd.as_fd();
        let existing = fsutil::stat_at(fd, name).map_err(fs_err("stat", &shown))?;
        let is_dir = kind == EntryType::Directory;
        let mut over_whiteout = false;
        let mut keep_dir = false;
        match existing.as_ref().map(fsutil::kind) {
            Some(Kind::Dir) if is_dir => keep_dir = true,
            Some(found) => {
                over_whiteout = found == Kind::Whiteout && self.resolver.is_overlay();
                fsutil::remove_all_at(fd, name).map_err(fs_err("remove", &shown))?;
                self.resolver.invalidate();
            }
            None => {}
        }

        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut file = fsutil::create_file_at(fd, name).map_err(fs_err("create", &shown))?;
                self.copy_data(entry, &mut file, &shown, meter)?;
                let f = file.as_fd();
                fsutil::chown_fd(f, meta.uid, meta.gid).map_err(fs_err("chown", &shown))?;
                fsutil::chmod_fd(f, meta.mode).map_err(fs_err("chmod", &shown))?;
                for (k, v) in &meta.xattrs {
                    set_xattr(fsutil::set_xattr_fd(f, k, v), k, &shown)?;
                }
                fsutil::set_times_fd(f, meta.atime, meta.mtime).map_err(fs_err("set times of", &shown))?;
            }
            EntryType::Directory => {
                let new = if keep_dir {
                    fsutil::open_dir_at(fd, name).map_err(fs_err("open", &shown))?
                } else {
                    fsutil::mkdir_at(fd, name).map_err(fs_err("create", &shown))?
                };
                let d = new.as_fd();
                fsutil::chown_fd(d, meta.uid, meta.gid).map_err(fs_err("chown", &shown))?;
                fsutil::chmod_fd(d, meta.mode).map_err(fs_err("chmod", &shown))?;
                for (k, v) in &meta.xattrs {
                    set_xattr(fsutil::set_xattr_fd(d, k, v), k, &shown)?;
                }
                if over_whiteout {
                    // Replacing a whiteout: the layers below stay hidden.
                    self.resolver.set_opaque(&new, &shown)?;
                }
                let mut path = dir.path.clone();
                path.push(name.to_os_string());
                self.dir_times.push((path, meta.atime, meta.mtime));
            }
            EntryType::Symlink => {
                let target = link
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| bad(format!("symlink {shown} has no target")))?;
                if target.len() > MAX_PATH || target.contains(&0) {
                    return Err(bad(format!("symlink {shown} has an invalid target")));
                }
                fsutil::symlink_at(OsStr::from_bytes(&target), fd, name).map_err(fs_err("create symlink", &shown))?;
                self.node_meta(fd, name, &meta, false, &shown)?;
            }
            EntryType::Link => {
                let target = link.ok_or_else(|| bad(format!("hardlink {shown} has no target")))?;
                self.hardlink(&dir, name, &target, &shown)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, (0, 0)),
                    _ => {
                        let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                        let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                        let sflag = if kind == EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (sflag, (major, minor))
                    }
                };
                fsutil::mknod_at(fd, name, sflag, dev).map_err(fs_err("create node", &shown))?;
                self.node_meta(fd, name, &meta, true, &shown)?;
            }
            other => {
                return Err(bad(format!(
                    "{shown}: unsupported tar entry type {:?}",
                    other.as_byte() as char
                )));
            }
        }
        self.mark_written(&dir, name);
        Ok(())
    }

    /// Owner, mode (not for symlinks), xattrs and times of a node that cannot be opened.
    fn node_meta(&self, dir: BorrowedFd<'_>, name: &OsStr, meta: &Meta, chmod: bool, shown: &str) -> Result<(), Error> {
        fsutil::lchown_at(dir, name, meta.uid, meta.gid).map_err(fs_err("chown", shown))?;
        if chmod {
            fsutil::chmod_node_at(dir, name, meta.mode).map_err(fs_err("chmod", shown))?;
        }
        for (k, v) in &meta.xattrs {
            set_xattr(fsutil::set_xattr_at(dir, name, k, v), k, shown)?;
        }
        fsutil::set_times_at(dir, name, meta.atime, meta.mtime).map_err(fs_err("set times of", shown))
    }

    /// A hardlink to a node the tree already has; its target is resolved in
    /// the tree like any entry name.
    fn hardlink(&mut self, dir: &Rc<DirHandle>, name: &OsStr, target: &[u8], shown: &str) -> Result<(), Error> {
        let mut names = clean_path(target)?;
        let target_name = names
            .pop()
            .ok_or_else(|| bad(format!("hardlink {shown} points at the root")))?;
        let tdir = self.resolver.resolve(&names)?;
        let tshown = tdir.display(&target_name);
        let st = fsutil::stat_at(tdir.fd.as_fd(), &target_name).map_err(fs_err("stat", &tshown))?;
        match st.as_ref().map(fsutil::kind) {
            Some(Kind::Dir) => return Err(bad(format!("hardlink {shown} points at directory {tshown}"))),
            Some(Kind::Whiteout) if self.resolver.is_overlay() => {
                return Err(bad(format!("hardlink {shown}: target {tshown} not found")))
            }
            Some(_) => {}
            None => {
                // Overlay: a target only the lower layers hold is copied up
                // first, as a link(2) through the mounted overlay would.
                let view = self.resolver.lower_view(&tdir, &target_name)?;
                match view.top {
                    Some(LowerTop::Other { layer }) => {
                        fsutil::copy_node(tdir.lowers[layer].as_fd(), &target_name, tdir.fd.as_fd())
                            .map_err(fs_err("copy up", &tshown))?;
                    }
                    Some(LowerTop::Link(_)) => {
                        let layer = self.symlink_layer(&tdir, &target_name)?;
                        fsutil::copy_node(tdir.lowers[layer].as_fd(), &target_name, tdir.fd.as_fd())
                            .map_err(fs_err("copy up", &tshown))?;
                    }
                    Some(LowerTop::Dir) => return Err(bad(format!("hardlink {shown} points at directory {tshown}"))),
                    None => return Err(bad(format!("hardlink {shown}: target {tshown} not found"))),
                }
            }
        }
        linkat(
            tdir.fd.as_fd(),
            target_name.as_os_str(),
            dir.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(nix_err("link", shown))
    }

    /// The lower layer whose symlink `name` the merged view shows.
    fn symlink_layer(&self, dir: &DirHandle, name: &OsStr) -> Result<usize, Error> {
        for (layer, lower) in dir.lowers.iter().enumerate() {
            if let Some(st) = fsutil::stat_at(lower.as_fd(), name).map_err(fs_err("stat", dir.display(name)))? {
                if fsutil::kind(&st) == Kind::Symlink {
                    return Ok(layer);
                }
                break;
            }
        }
        Err(bad(format!("hardlink target {} not found", dir.display(name))))
    }

    fn copy_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut std::fs::File,
        shown: &str,
        meter: &Meter,
    ) -> Result<(), Error> {
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(layer_err(e, meter)),
            };
            self.file_bytes += n as u64;
            if self.file_bytes > self.limits.max_bytes {
                return Err(bad(format!(
                    "layer writes more than {} bytes of file data (max_uncompressed_bytes)",
                    self.limits.max_bytes
                )));
            }
            file.write_all(&self.buf[..n]).map_err(fs_err("write", shown))?;
        }
    }

    /// Directory times, set once their contents are final, deepest first.
    fn finish(&mut self) {
        for (path, atime, mtime) in self.dir_times.drain(..).rev() {
            let Some(fd) = self.resolver.open_existing(&path) else {
                continue;
            };
            if let Err(e) = fsutil::set_times_fd(fd.as_fd(), atime, mtime) {
                tracing::debug!("set times of {}: {e}", path.iter().collect::<PathBuf>().display());
            }
        }
    }
}

fn set_xattr(result: io::Result<bool>, key: &[u8], shown: &str) -> Result<(), Error> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::debug!(
                "{shown}: xattr {} not supported by the filesystem, skipped",
                String::from_utf8_lossy(key)
            );
            Ok(())
        }
        Err(e) => Err(Error::Internal(format!(
            "set xattr {} on {shown}: {e}",
            String::from_utf8_lossy(key)
        ))),
    }
}

/// The bytes the entry's data takes in the stream (not the expanded size of
/// a sparse file): what the tar reader skips to reach the next header.
fn stored_size<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<u64> {
    if entry.header().entry_type().is_gnu_sparse() {
        return entry.header().entry_size();
    }
    Ok(entry.size())
}

fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        nanos = format!("{digits:0<9}").parse().ok()?;
        if secs < 0 && nanos > 0 {
            // "-1.5" is 1.5 s before the epoch.
            return Some(TimeSpec::new(secs - 1, 1_000_000_000 - nanos));
        }
    }
    Some(TimeSpec::new(secs, nanos))
}

fn parse_id(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A numeric header field, where one left blank (all NULs or spaces, as
/// some writers leave uid and gid) reads as 0 the way Go's reader takes it.
fn lenient(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let header = entry.header();
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("tar entry has an invalid {what}"));
    let old = header.as_old();
    let mut uid = lenient(header.uid(), &old.uid)?;
    let mut gid = lenient(header.gid(), &old.gid)?;
    let mtime = lenient(header.mtime(), &old.mtime)?;
    let mut mtime = TimeSpec::new(i64::try_from(mtime).map_err(|_| invalid("mtime"))?, 0);
    let mut atime = None;
    let mode = lenient(header.mode().map(u64::from), &old.mode)? as u32 & 0o7777;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            match key {
                b"uid" => uid = parse_id(value).ok_or_else(|| invalid("PAX uid"))?.into(),
                b"gid" => gid = parse_id(value).ok_or_else(|| invalid("PAX gid"))?.into(),
                b"mtime" => mtime = parse_pax_time(value).ok_or_else(|| invalid("PAX mtime"))?,
                b"atime" => atime = parse_pax_time(value),
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        if name.is_empty() || name.len() > 255 || fsutil::is_overlay_xattr(name) {
                            continue;
                        }
                        xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(Meta {
        mode,
        uid: u32::try_from(uid).map_err(|_| invalid("uid"))?,
        gid: u32::try_from(gid).map_err(|_| invalid("gid"))?,
        atime: atime.unwrap_or(mtime),
        mtime,
        xattrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_paths() {
        let names = |raw: &[u8]| {
            clean_path(raw)
                .unwrap()
                .iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(b"./etc//passwd"), ["etc", "passwd"]);
        assert_eq!(names(b"/abs/path/"), ["abs", "path"]);
        assert!(names(b"./").is_empty());
        for bad in [
            &b"../escape"[..],
            b"a/../../escape",
            b"a/..",
            b"a\0b",
            &vec![b'a'; 256],
            &vec![b'a'; 5000],
        ] {
            assert!(matches!(clean_path(bad), Err(Error::InvalidArgument(_))));
        }
        let long: Vec<u8> = std::iter::repeat_n(&b"abcdefg/"[..], 512).flatten().copied().collect();
        assert_eq!(long.len(), 4096);
        assert!(clean_path(&long).is_ok());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some(TimeSpec::new(1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time(b"1700000000.123456789123"),
            Some(TimeSpec::new(1_700_000_000, 123_456_789))
        );
        assert_eq!(parse_pax_time(b"1.5"), Some(TimeSpec::new(1, 500_000_000)));
        assert_eq!(parse_pax_time(b"-1.5"), Some(TimeSpec::new(-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
