//! Where the pull benchmark writes: one temporary directory on a
//! disk-backed filesystem that holds every daemon's root, so each pull
//! writes its blobs and unpacks onto the same disk.
//!
//! The rules are the ingest benchmark's (`ingest/workdir.rs`): `--dir` or
//! the first disk-backed of /var/tmp and /tmp, RAM-backed filesystems
//! refused, free space checked first.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
use serde::Serialize;
use tempfile::TempDir;

const CANDIDATES: &[&str] = &["/var/tmp", "/tmp"];
/// Not in nix's list; from linux/magic.h.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

/// The filesystem the benchmark directory is on, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Filesystem {
    pub dir: String,
    /// As /proc/self/mountinfo names it (`ext4`), else statfs's magic in hex.
    pub kind: String,
    pub source: Option<String>,
    pub mount_point: Option<String>,
}

pub struct Workdir {
    dir: TempDir,
    pub filesystem: Filesystem,
}

impl Workdir {
    /// A new temporary directory with `needed` bytes free under it.
    pub fn create(explicit: Option<&Path>, needed: u64) -> anyhow::Result<Workdir> {
        let base = match explicit {
            Some(dir) => {
                if let Some(kind) = ram_backed(dir)? {
                    bail!(
                        "{} is on {kind}, which is RAM-backed: pass a --dir on a disk, \
                         where the daemon's root would be",
                        dir.display()
                    );
                }
                dir.to_path_buf()
            }
            None => pick_default()?,
        };
        let fs = statfs(&base).with_context(|| format!("statfs {}", base.display()))?;
        let available = fs.blocks_available() as u64 * fs.block_size() as u64;
        if available < needed {
            bail!(
                "{} has {} MiB free; the benchmark needs {} MiB (one daemon root with the image \
                 unpacked, headroom): free some space, lower --image-mib or pass another --dir",
                base.display(),
                available >> 20,
                needed >> 20
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("corten-bench-pull-")
            .tempdir_in(&base)
            .with_context(|| format!("create a temporary directory in {}", base.display()))?;
        let filesystem = describe(dir.path(), fs.filesystem_type());
        Ok(Workdir { dir, filesystem })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn pick_default() -> anyhow::Result<PathBuf> {
    let mut refused = Vec::new();
    for candidate in CANDIDATES {
        let path = Path::new(candidate);
        if !path.is_dir() {
            refused.push(format!("{candidate} does not exist"));
            continue;
        }
        match ram_backed(path)? {
            Some(kind) => refused.push(format!("{candidate} is {kind}")),
            None => return Ok(path.to_path_buf()),
        }
    }
    bail!(
        "no disk-backed temporary directory ({}): pass --dir DIR on the disk to measure",
        refused.join(", ")
    )
}

fn ram_backed(dir: &Path) -> anyhow::Result<Option<&'static str>> {
    let fs = statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    Ok(match fs.filesystem_type() {
        TMPFS_MAGIC => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        _ => None,
    })
}

fn describe(dir: &Path, magic: FsType) -> Filesystem {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mount = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| mount_of(&text, &canonical));
    Filesystem {
        dir: dir.display().to_string(),
        kind: mount
            .as_ref()
            .map_or_else(|| format!("statfs type {:#x}", magic.0), |m| m.1.clone()),
        source: mount.as_ref().map(|m| m.2.clone()),
        mount_point: mount.map(|m| m.0),
    }
}

/// (mount point, filesystem type, source) of the mountinfo line with the
/// longest mount point containing `path`; a later line wins a tie, as the
/// kernel stacks later mounts on top.
fn mount_of(mountinfo: &str, path: &Path) -> Option<(String, String, String)> {
    let mut best: Option<(String, String, String)> = None;
    for line in mountinfo.lines() {
        // `id parent major:minor root point options [optional...] - kind source super-options`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = left.split(' ').nth(4).map(|p| p.replace("\\040", " ")) else {
            continue;
        };
        let mut right = right.split(' ');
        let (Some(kind), Some(source)) = (right.next(), right.next()) else {
            continue;
        };
        if !path.starts_with(&point) || best.as_ref().is_some_and(|b| b.0.len() > point.len()) {
            continue;
        }
        best = Some((point, kind.to_string(), source.to_string()));
    }
    best
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::mount_of;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /tmp rw,nosuid shared:2 - tmpfs tmpfs rw
24 22 0:22 / /var/tm rw - xfs /dev/vdb rw
";

    #[test]
    fn picks_the_longest_mount_point_by_whole_components() {
        let kind = |p: &str| mount_of(MOUNTINFO, Path::new(p)).map(|m| m.1);
        assert_eq!(kind("/tmp/x").as_deref(), Some("tmpfs"));
        assert_eq!(kind("/var/tmp/x").as_deref(), Some("ext4"));
        assert_eq!(kind("/tmpfoo").as_deref(), Some("ext4"));
    }
}
