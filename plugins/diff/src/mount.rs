//! Mounting a snapshot's mounts on a private directory for as long as a
//! guard lives: the differ's way into a snapshot, and later the image
//! unpacker's and the runtime's.
//!
//! Supported: `bind` (options `rbind`, `ro` and the usual flags; a read-only
//! bind is a bind then a read-only remount, as the kernel requires) and
//! `overlay` (flags separated out, everything else passed as the data
//! string). Any other type is mounted as given.
//!
//! A read-only overlay drops its upper and work directories and lists the
//! upper directory as the top lower one instead: it then never touches the
//! work directory, and can be mounted while the snapshot's own read-write
//! mount is in use (the kernel refuses a second mount of an upper directory
//! in use). With a single directory left it becomes a read-only bind, since
//! overlayfs needs two layers when it has no upper one.

use std::{
    fs,
    path::{Path, PathBuf},
};

use corten_core::{mount::Mount, Error};
use nix::{
    errno::Errno,
    mount::{mount, umount2, MntFlags, MsFlags},
};

/// The kernel copies at most a page of mount data.
const MAX_DATA: usize = 4095;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// Flags a mount option sets (or, for the `no`-less opposites, clears).
const FLAGS: &[(&str, bool, MsFlags)] = &[
    ("async", true, MsFlags::MS_SYNCHRONOUS),
    ("atime", true, MsFlags::MS_NOATIME),
    ("bind", false, MsFlags::MS_BIND),
    ("defaults", false, MsFlags::empty()),
    ("dev", true, MsFlags::MS_NODEV),
    ("diratime", true, MsFlags::MS_NODIRATIME),
    ("dirsync", false, MsFlags::MS_DIRSYNC),
    ("exec", true, MsFlags::MS_NOEXEC),
    ("mand", false, MsFlags::MS_MANDLOCK),
    ("noatime", false, MsFlags::MS_NOATIME),
    ("nodev", false, MsFlags::MS_NODEV),
    ("nodiratime", false, MsFlags::MS_NODIRATIME),
    ("noexec", false, MsFlags::MS_NOEXEC),
    ("nomand", true, MsFlags::MS_MANDLOCK),
    ("norelatime", true, MsFlags::MS_RELATIME),
    ("nostrictatime", true, MsFlags::MS_STRICTATIME),
    ("nosuid", false, MsFlags::MS_NOSUID),
    ("rbind", false, MsFlags::MS_BIND.union(MsFlags::MS_REC)),
    ("relatime", false, MsFlags::MS_RELATIME),
    ("ro", false, MsFlags::MS_RDONLY),
    ("rw", true, MsFlags::MS_RDONLY),
    ("strictatime", false, MsFlags::MS_STRICTATIME),
    ("suid", true, MsFlags::MS_NOSUID),
    ("sync", false, MsFlags::MS_SYNCHRONOUS),
];

const PROPAGATION: &[(&str, MsFlags)] = &[
    ("private", MsFlags::MS_PRIVATE),
    ("rprivate", MsFlags::MS_PRIVATE.union(MsFlags::MS_REC)),
    ("shared", MsFlags::MS_SHARED),
    ("rshared", MsFlags::MS_SHARED.union(MsFlags::MS_REC)),
    ("slave", MsFlags::MS_SLAVE),
    ("rslave", MsFlags::MS_SLAVE.union(MsFlags::MS_REC)),
    ("unbindable", MsFlags::MS_UNBINDABLE),
    ("runbindable", MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC)),
];

/// A mount's options split into flags, propagation and filesystem data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    /// What the filesystem itself parses, in the given order.
    pub data: Vec<String>,
}

impl MountOptions {
    pub fn parse(options: &[String]) -> MountOptions {
        let mut out = MountOptions {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: Vec::new(),
        };
        for option in options {
            if let Some((_, clear, flag)) = FLAGS.iter().find(|(name, _, _)| name == option) {
                if *clear {
                    out.flags.remove(*flag);
                } else {
                    out.flags.insert(*flag);
                }
            } else if let Some((_, flag)) = PROPAGATION.iter().find(|(name, _)| name == option) {
                out.propagation.insert(*flag);
            } else {
                out.data.push(option.clone());
            }
        }
        out
    }
}

/// The layers of an overlay mount, from its options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Overlay {
    pub upperdir: Option<String>,
    pub workdir: Option<String>,
    /// Top first, each as written (escapes kept).
    pub lowerdirs: Vec<String>,
    /// The other data options, in order.
    pub extra: Vec<String>,
}

impl Overlay {
    pub fn parse(data: &[String]) -> Overlay {
        let mut out = Overlay::default();
        for option in data {
            if let Some(v) = option.strip_prefix("upperdir=") {
                out.upperdir = Some(v.to_string());
            } else if let Some(v) = option.strip_prefix("workdir=") {
                out.workdir = Some(v.to_string());
            } else if let Some(v) = option.strip_prefix("lowerdir=") {
                out.lowerdirs = split_lowerdirs(v);
            } else {
                out.extra.push(option.clone());
            }
        }
        out
    }

    /// Whether the mount uses user.* rather than trusted.* xattrs.
    pub fn userxattr(&self) -> bool {
        self.extra.iter().any(|o| o == "userxattr")
    }

    pub fn data(&self) -> String {
        let mut parts = self.extra.clone();
        if !self.lowerdirs.is_empty() {
            parts.push(format!("lowerdir={}", self.lowerdirs.join(":")));
        }
        if let Some(u) = &self.upperdir {
            parts.push(format!("upperdir={u}"));
        }
        if let Some(w) = &self.workdir {
            parts.push(format!("workdir={w}"));
        }
        parts.join(",")
    }
}

/// Splits `a:b\:c` into `a` and `b\:c`: overlayfs escapes `:` in a path with `\`.
fn split_lowerdirs(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            ':' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A path as overlayfs reads it: `\x` stands for `x`.
pub fn unescape(value: &str) -> PathBuf {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    PathBuf::from(out)
}

fn mount_err<'a>(m: &'a Mount, target: &'a Path) -> impl FnOnce(Errno) -> Error + 'a {
    move |e| {
        Error::Internal(format!(
            "mount {} {:?} on {} (options {:?}): {e}",
            m.kind,
            m.source,
            target.display(),
            m.options
        ))
    }
}

/// Mounts `m` on `target`.
pub fn mount_at(m: &Mount, target: &Path, access: Access) -> Result<(), Error> {
    let opts = MountOptions::parse(&m.options);
    let read_only = access == Access::ReadOnly || opts.flags.contains(MsFlags::MS_RDONLY);
    let mut flags = opts.flags - MsFlags::MS_RDONLY;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let is_bind = m.kind == "bind" || flags.contains(MsFlags::MS_BIND);
    if is_bind {
        return bind(&m.source, target, flags, opts.propagation, m);
    }
    if m.kind.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "mount of {:?} has no filesystem type",
            m.source
        )));
    }
    let mut data = opts.data.join(",");
    if m.kind == "overlay" {
        let mut overlay = Overlay::parse(&opts.data);
        if read_only {
            overlay = read_only_overlay(overlay);
        }
        if overlay.upperdir.is_none() && overlay.lowerdirs.len() == 1 {
            let only = unescape(&overlay.lowerdirs[0]);
            return bind(
                &only.to_string_lossy(),
                target,
                flags | MsFlags::MS_BIND,
                opts.propagation,
                m,
            );
        }
        data = overlay.data();
    }
    if data.len() > MAX_DATA {
        if m.kind == "overlay" {
            let overlay = Overlay::parse(&MountOptions::parse(&m.options).data);
            let overlay = if read_only { read_only_overlay(overlay) } else { overlay };
            return overlay_fsconfig(&overlay, target, flags).map_err(|e| {
                Error::InvalidArgument(format!(
                    "overlay options are {} bytes, more than the {MAX_DATA} mount(2) takes, \
                     and the new mount API (Linux 6.8 or later) refused them: {e}",
                    data.len()
                ))
            });
        }
        return Err(Error::InvalidArgument(format!(
            "{} mount options are {} bytes, more than the {MAX_DATA} the kernel takes",
            m.kind,
            data.len()
        )));
    }
    let source = if m.source.is_empty() {
        m.kind.as_str()
    } else {
        m.source.as_str()
    };
    mount(
        Some(source),
        target,
        Some(m.kind.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(mount_err(m, target))?;
    if let Err(e) = propagate(target, opts.propagation) {
        let _ = unmount(target);
        return Err(mount_err(m, target)(e));
    }
    Ok(())
}

/// The upper directory becomes the top lower one (see the module doc).
fn read_only_overlay(mut overlay: Overlay) -> Overlay {
    if let Some(upper) = overlay.upperdir.take() {
        overlay.lowerdirs.insert(0, upper);
        overlay.workdir = None;
        overlay.extra.retain(|o| o != "volatile");
    }
    overlay
}

/// Mounts an overlay through the new mount API, one `lowerdir+` call per
/// layer: no page limit on the options, and paths need no escaping. This is
/// how an image deeper than a page of lower directory names is mounted.
fn overlay_fsconfig(overlay: &Overlay, target: &Path, flags: MsFlags) -> rustix::io::Result<()> {
    use rustix::mount::{
        fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, FsMountFlags,
        FsOpenFlags, MountAttrFlags, MoveMountFlags,
    };
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for option in &overlay.extra {
        match option.split_once('=') {
            Some((key, value)) => fsconfig_set_string(&fs, key, value)?,
            None => fsconfig_set_flag(&fs, option.as_str())?,
        }
    }
    for lower in &overlay.lowerdirs {
        fsconfig_set_string(&fs, "lowerdir+", unescape(lower).as_path())?;
    }
    if let Some(upper) = &overlay.upperdir {
        fsconfig_set_string(&fs, "upperdir", unescape(upper).as_path())?;
    }
    if let Some(work) = &overlay.workdir {
        fsconfig_set_string(&fs, "workdir", unescape(work).as_path())?;
    }
    fsconfig_create(&fs)?;
    let mut attrs = MountAttrFlags::empty();
    for (flag, attr) in [
        (MsFlags::MS_RDONLY, MountAttrFlags::MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, MountAttrFlags::MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, MountAttrFlags::MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, MountAttrFlags::MOUNT_ATTR_NOEXEC),
        (MsFlags::MS_NOATIME, MountAttrFlags::MOUNT_ATTR_NOATIME),
        (MsFlags::MS_STRICTATIME, MountAttrFlags::MOUNT_ATTR_STRICTATIME),
        (MsFlags::MS_NODIRATIME, MountAttrFlags::MOUNT_ATTR_NODIRATIME),
    ] {
        if flags.contains(flag) {
            attrs |= attr;
        }
    }
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
    move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
}

fn bind(source: &str, target: &Path, flags: MsFlags, propagation: MsFlags, m: &Mount) -> Result<(), Error> {
    let bind_flags = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
    mount(Some(source), target, None::<&str>, bind_flags, None::<&str>).map_err(mount_err(m, target))?;
    // A bind ignores every other flag; they only take with a remount.
    let rest = flags - MsFlags::MS_BIND - MsFlags::MS_REC;
    let result = if rest.is_empty() {
        Ok(())
    } else {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | rest,
            None::<&str>,
        )
    }
    .and_then(|()| propagate(target, propagation));
    if let Err(e) = result {
        let _ = unmount(target);
        return Err(mount_err(m, target)(e));
    }
    Ok(())
}

fn propagate(target: &Path, propagation: MsFlags) -> nix::Result<()> {
    if propagation.is_empty() {
        return Ok(());
    }
    mount(None::<&str>, target, None::<&str>, propagation, None::<&str>)
}

/// Unmounts the top mount on `target`; if it is busy, detaches it so it
/// goes away once its last user does. Nothing mounted there is fine.
pub fn unmount(target: &Path) -> Result<(), Error> {
    match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => {
            tracing::warn!("{} is busy: detaching it", target.display());
            umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
                .map_err(|e| Error::Internal(format!("detach {}: {e}", target.display())))
        }
        Err(e) => Err(Error::Internal(format!("unmount {}: {e}", target.display()))),
    }
}

/// A set of mounts on a fresh directory, unmounted (and the directory
/// removed) when dropped.
#[derive(Debug)]
pub struct TempMount {
    path: PathBuf,
    mounted: usize,
}

impl TempMount {
    /// Mounts `mounts`, in order, on a new directory under `parent`. No
    /// mounts give an empty directory.
    pub fn new(parent: &Path, mounts: &[Mount], access: Access) -> Result<TempMount, Error> {
        fs::create_dir_all(parent).map_err(|e| Error::Internal(format!("create {}: {e}", parent.display())))?;
        let dir = tempfile::Builder::new()
            .prefix("m-")
            .tempdir_in(parent)
            .map_err(|e| Error::Internal(format!("create a mount point in {}: {e}", parent.display())))?;
        // From here on the directory is removed only by `Drop`, and only
        // with rmdir: a recursive removal of a mount point still mounted
        // would delete the snapshot's files.
        let mut guard = TempMount {
            path: dir.keep(),
            mounted: 0,
        };
        for m in mounts {
            mount_at(m, &guard.path, access)?;
            guard.mounted += 1;
        }
        Ok(guard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        while self.mounted > 0 {
            if let Err(e) = unmount(&self.path) {
                tracing::error!("{e}; leaving {} in place", self.path.display());
                return;
            }
            self.mounted -= 1;
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            tracing::warn!("remove mount point {}: {e}", self.path.display());
        }
    }
}

/// Detaches and removes mount points a previous run left under `parent`
/// (after a crash). Never removes anything recursively.
pub fn cleanup(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Stacked mounts come off one per call, until nothing is left.
        for _ in 0..64 {
            if umount2(&path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).is_err() {
                break;
            }
        }
        if let Err(e) = fs::remove_dir(&path) {
            tracing::warn!("remove stale mount point {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn splits_flags_from_data() {
        let o = MountOptions::parse(&strings(&[
            "ro",
            "nosuid",
            "rbind",
            "rprivate",
            "index=off",
            "lowerdir=/a:/b",
        ]));
        assert_eq!(
            o.flags,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC
        );
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, strings(&["index=off", "lowerdir=/a:/b"]));
        assert!(!MountOptions::parse(&strings(&["ro", "rw"]))
            .flags
            .contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn overlay_options() {
        let o = Overlay::parse(&strings(&[
            "index=off",
            "workdir=/s/2/work",
            "upperdir=/s/2/fs",
            "lowerdir=/s/1/fs:/s/0/f\\:s",
            "userxattr",
        ]));
        assert_eq!(o.upperdir.as_deref(), Some("/s/2/fs"));
        assert_eq!(o.lowerdirs, strings(&["/s/1/fs", "/s/0/f\\:s"]));
        assert!(o.userxattr());
        assert_eq!(unescape(&o.lowerdirs[1]), PathBuf::from("/s/0/f:s"));
        assert_eq!(
            o.data(),
            "index=off,userxattr,lowerdir=/s/1/fs:/s/0/f\\:s,upperdir=/s/2/fs,workdir=/s/2/work"
        );
    }
}
