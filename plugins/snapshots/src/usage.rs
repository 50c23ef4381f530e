//! Disk usage of a snapshot's files, counted as containerd counts it: every
//! distinct inode under the root (the root included) once, and the blocks
//! each has allocated, so hard links and sparse files are not overcounted.

use std::{collections::HashSet, fs, os::unix::fs::MetadataExt, path::Path};

use corten_core::{snapshots::Usage, Error};

/// `st_blocks` is in 512-byte units whatever the filesystem's block size.
const BLOCK_UNIT: u64 = 512;

pub fn disk_usage(root: &Path) -> Result<Usage, Error> {
    let walk_err = |path: &Path, e: std::io::Error| Error::internal(&format!("usage of {}", path.display()), e);
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut count = |meta: &fs::Metadata| {
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += meta.blocks() * BLOCK_UNIT;
        }
    };
    count(&fs::symlink_metadata(root).map_err(|e| walk_err(root, e))?);
    // A stack rather than recursion: image layers can nest deeper than a
    // thread's stack would like.
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| walk_err(&dir, e))? {
            let entry = entry.map_err(|e| walk_err(&dir, e))?;
            // `DirEntry::metadata` does not follow symlinks.
            let meta = entry.metadata().map_err(|e| walk_err(&entry.path(), e))?;
            count(&meta);
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_inodes_once_and_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let empty = disk_usage(root).unwrap();
        assert_eq!(empty.inodes, 1);
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/f"), vec![7u8; 10_000]).unwrap();
        fs::hard_link(root.join("d/f"), root.join("link")).unwrap();
        std::os::unix::fs::symlink("d/f", root.join("sym")).unwrap();
        let usage = disk_usage(root).unwrap();
        assert_eq!(usage.inodes, 4, "root, d, f (twice linked), sym");
        assert!(usage.size >= empty.size + 10_000, "{usage:?}");
    }
}
