//! Where a benchmark writes: one temporary directory on a disk-backed
//! filesystem that holds its inputs, the limit's output and every daemon's
//! root, so the limit and the daemons write to the same disk.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
use serde::Serialize;
use tempfile::TempDir;

/// Tried in order when `--dir` is not given. /var/tmp first: /tmp is often
/// tmpfs, and a limit measured in memory says nothing about the disk.
const CANDIDATES: &[&str] = &["/var/tmp", "/tmp"];

/// Not in nix's list; from linux/magic.h.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

/// The filesystem a benchmark directory is on, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Filesystem {
    /// The temporary directory everything was written under.
    pub dir: String,
    /// As /proc/self/mountinfo names it (`ext4`), else statfs's magic in hex.
    pub kind: String,
    /// The mounted device (`/dev/vda`), when mountinfo names one.
    pub source: Option<String>,
    pub mount_point: Option<String>,
}

pub struct Workdir {
    dir: TempDir,
    pub filesystem: Filesystem,
}

impl Workdir {
    /// A new temporary directory `corten-bench-<name>-*` under `explicit`,
    /// or under the first disk-backed candidate, with `needed` bytes free.
    /// A RAM-backed directory fails: the benchmarks compare against the
    /// disk's speed, and there would be none. `lower` names the option that
    /// needs less space, for the error.
    pub fn create(explicit: Option<&Path>, needed: u64, name: &str, lower: &str) -> anyhow::Result<Workdir> {
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
        let available = available_bytes(&base)?;
        if available < needed {
            bail!(
                "{} has {} MiB free; the {name} benchmark needs {} MiB: free some space, lower {lower} \
                 or pass another --dir",
                base.display(),
                available >> 20,
                needed >> 20
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("corten-bench-{name}-"))
            .tempdir_in(&base)
            .with_context(|| format!("create a temporary directory in {}", base.display()))?;
        let filesystem = describe(dir.path())?;
        Ok(Workdir { dir, filesystem })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
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

/// The RAM-backed filesystem `dir` is on, if it is on one.
fn ram_backed(dir: &Path) -> anyhow::Result<Option<&'static str>> {
    let fs = statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    Ok(match fs.filesystem_type() {
        TMPFS_MAGIC => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        _ => None,
    })
}

fn available_bytes(dir: &Path) -> anyhow::Result<u64> {
    let fs = statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    Ok(fs.blocks_available() as u64 * fs.block_size() as u64)
}

fn describe(dir: &Path) -> anyhow::Result<Filesystem> {
    let magic = statfs(dir)
        .with_context(|| format!("statfs {}", dir.display()))?
        .filesystem_type();
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mount = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| mount_of(&text, &canonical));
    Ok(Filesystem {
        dir: dir.display().to_string(),
        kind: mount
            .as_ref()
            .map_or_else(|| format!("statfs type {:#x}", magic.0), |m| m.kind.clone()),
        source: mount.as_ref().map(|m| m.source.clone()),
        mount_point: mount.map(|m| m.point),
    })
}

#[derive(Debug, PartialEq)]
struct Mount {
    point: String,
    kind: String,
    source: String,
}

/// The mountinfo entry with the longest mount point that contains `path`;
/// the last one wins a tie, as the kernel stacks later mounts on top.
fn mount_of(mountinfo: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mountinfo.lines() {
        // `id parent major:minor root point options [optional...] - kind source super-options`
        let Some((point, kind, source)) = parse_mount_line(line) else {
            continue;
        };
        if !path.starts_with(&point) {
            continue;
        }
        if best.as_ref().is_some_and(|b| b.point.len() > point.len()) {
            continue;
        }
        best = Some(Mount {
            point,
            kind: kind.to_string(),
            source: source.to_string(),
        });
    }
    best
}

/// `(mount point, filesystem type, source)` of one /proc/*/mountinfo line.
pub fn parse_mount_line(line: &str) -> Option<(String, &str, &str)> {
    let (left, right) = line.split_once(" - ")?;
    let point = left.split(' ').nth(4)?.replace("\\040", " ");
    let mut right = right.split(' ');
    Some((point, right.next()?, right.next()?))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{mount_of, Mount};

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /tmp rw,nosuid shared:2 - tmpfs tmpfs rw,size=1024k
24 22 0:22 / /var/tm rw - xfs /dev/vdb rw
25 22 0:23 / /my\\040disk rw - btrfs /dev/vdc rw
";

    fn mount(point: &str, kind: &str, source: &str) -> Option<Mount> {
        Some(Mount {
            point: point.to_string(),
            kind: kind.to_string(),
            source: source.to_string(),
        })
    }

    #[test]
    fn picks_the_longest_containing_mount_point() {
        assert_eq!(
            mount_of(MOUNTINFO, Path::new("/tmp/x")),
            mount("/tmp", "tmpfs", "tmpfs")
        );
        assert_eq!(
            mount_of(MOUNTINFO, Path::new("/var/tmp/x")),
            mount("/", "ext4", "/dev/vda")
        );
    }

    #[test]
    fn mount_points_match_whole_components_and_unescape_spaces() {
        assert_eq!(
            mount_of(MOUNTINFO, Path::new("/tmpfoo")),
            mount("/", "ext4", "/dev/vda")
        );
        assert_eq!(
            mount_of(MOUNTINFO, Path::new("/my disk/a")),
            mount("/my disk", "btrfs", "/dev/vdc")
        );
    }
}
