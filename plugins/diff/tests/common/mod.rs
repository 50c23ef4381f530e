//! Shared by the differ's tests: a real content store, layers built with the
//! tar crate, and a file-by-file description of a tree to compare.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use corten_content::{LocalContent, SharingPolicy};
use corten_core::{
    content::{ContentStore, WriteOptions},
    diff::Descriptor,
    digest::Digest,
    metadata::MetaStore,
    mount::Mount,
};
use corten_diff::{DiffConfig, WalkingDiffer};
use corten_metadata::SledStore;
use sha2::Digest as _;

pub const NS: &str = "default";
pub const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn ContentStore>,
    pub differ: WalkingDiffer,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_config(DiffConfig::default())
    }

    pub fn with_config(config: DiffConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> = Arc::new(SledStore::open(&dir.path().join("meta"), 1 << 20).unwrap());
        let store: Arc<dyn ContentStore> =
            Arc::new(LocalContent::open(&dir.path().join("content"), meta, SharingPolicy::Shared).unwrap());
        let differ = WalkingDiffer::new(store.clone(), &dir.path().join("state/mounts"), &config);
        Fixture { dir, store, differ }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// Stores `bytes` as a blob and returns the descriptor of a layer of `media_type`.
    pub fn ingest(&self, bytes: &[u8], media_type: &str) -> Descriptor {
        static REFS: AtomicUsize = AtomicUsize::new(0);
        let reference = format!("test-layer-{}", REFS.fetch_add(1, Ordering::Relaxed));
        let mut w = self.store.writer(NS, &reference, WriteOptions::default()).unwrap();
        let mut offset = 0u64;
        for chunk in bytes.chunks(1 << 20) {
            w.write_at(offset, chunk).unwrap();
            offset += chunk.len() as u64;
        }
        let digest = match w.commit(BTreeMap::new()) {
            Ok(d) => d,
            Err(corten_core::Error::AlreadyExists(_)) => w.digest(),
            Err(e) => panic!("commit: {e}"),
        };
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
        }
    }

    pub fn read_blob(&self, digest: &Digest) -> Vec<u8> {
        let (mut f, _) = self.store.open(NS, digest).unwrap();
        let mut out = Vec::new();
        f.read_to_end(&mut out).unwrap();
        out
    }
}

pub fn bind(dir: &Path) -> Vec<Mount> {
    vec![Mount {
        kind: "bind".into(),
        source: dir.display().to_string(),
        target: String::new(),
        options: vec!["rbind".into(), "rw".into()],
    }]
}

pub fn overlay(lowers: &[&Path], upper: Option<(&Path, &Path)>) -> Vec<Mount> {
    let mut options = Vec::new();
    if let Some((upper, work)) = upper {
        options.push(format!("workdir={}", work.display()));
        options.push(format!("upperdir={}", upper.display()));
    }
    let lowers: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    options.push(format!("lowerdir={}", lowers.join(":")));
    vec![Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    }]
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// Entry names of a tar stream, in order.
pub fn tar_names(tar_bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}

/// Builds layer tar streams entry by entry.
pub struct Layer {
    tar: tar::Builder<Vec<u8>>,
}

pub const MTIME: u64 = 1_700_000_000;

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    /// Appends an entry whose name (and link name) are put in the header as
    /// raw bytes, or as PAX records when longer: nothing is checked, so
    /// hostile names go through as written.
    #[allow(clippy::too_many_arguments)]
    pub fn raw(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        mode: u32,
        owner: (u64, u64),
        link: Option<&[u8]>,
        xattrs: &[(&str, &[u8])],
        data: &[u8],
    ) -> &mut Self {
        let mut pax: Vec<(String, Vec<u8>)> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.to_vec()))
            .collect();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        let field = &mut h.as_old_mut().name;
        if name.len() <= field.len() {
            field[..name.len()].copy_from_slice(name);
        } else {
            pax.push(("path".into(), name.to_vec()));
            field[..10].copy_from_slice(b"long-name!");
        }
        if let Some(link) = link {
            let field = &mut h.as_old_mut().linkname;
            if link.len() <= field.len() {
                field[..link.len()].copy_from_slice(link);
            } else {
                pax.push(("linkpath".into(), link.to_vec()));
            }
        }
        if !pax.is_empty() {
            self.tar
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        h.set_cksum();
        self.tar.append(&h, data).unwrap();
        self
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.dir_owned(name, mode, (0, 0), &[])
    }

    pub fn dir_owned(&mut self, name: &str, mode: u32, owner: (u64, u64), xattrs: &[(&str, &[u8])]) -> &mut Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Directory,
            mode,
            owner,
            None,
            xattrs,
            b"",
        )
    }

    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.file_full(name, data, mode, (0, 0), &[])
    }

    pub fn file_full(
        &mut self,
        name: &str,
        data: &[u8],
        mode: u32,
        owner: (u64, u64),
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Regular,
            mode,
            owner,
            None,
            xattrs,
            data,
        )
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Symlink,
            0o777,
            (0, 0),
            Some(target.as_bytes()),
            &[],
            b"",
        )
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Link,
            0o644,
            (0, 0),
            Some(target.as_bytes()),
            &[],
            b"",
        )
    }

    pub fn device(&mut self, name: &str, kind: tar::EntryType, dev: (u32, u32), mode: u32) -> &mut Self {
        // uid and gid are left blank, as some writers do: they read as 0.
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(MTIME);
        h.set_size(0);
        h.set_path(name).unwrap();
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
        h.set_cksum();
        self.tar.append(&h, &b""[..]).unwrap();
        self
    }

    pub fn fifo(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(name.as_bytes(), tar::EntryType::Fifo, mode, (0, 0), None, &[], b"")
    }

    pub fn whiteout(&mut self, name: &str) -> &mut Self {
        let (dir, base) = name.rsplit_once('/').map_or(("", name), |(d, b)| (d, b));
        let path = if dir.is_empty() {
            format!(".wh.{base}")
        } else {
            format!("{dir}/.wh.{base}")
        };
        self.file(&path, b"", 0o644)
    }

    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let tar = std::mem::replace(&mut self.tar, tar::Builder::new(Vec::new()));
        tar.into_inner().unwrap()
    }
}

/// One node of a tree, as the comparison of two trees sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<u64>,
    pub content: Option<String>,
    pub link: Option<PathBuf>,
    pub rdev: Option<u64>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub mtime: Option<(i64, i64)>,
    /// Other paths of the tree sharing this file's inode.
    pub hardlinks: Vec<PathBuf>,
}

pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut list = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut list[..]).unwrap_or(0);
    let mut out = BTreeMap::new();
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap();
        out.insert(name, value[..len].to_vec());
    }
    out
}

/// Every node under `root` (not the root itself), by relative path.
pub fn tree(root: &Path) -> BTreeMap<PathBuf, NodeInfo> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    for paths in inodes.values() {
        for p in paths {
            let others: Vec<PathBuf> = paths.iter().filter(|o| *o != p).cloned().collect();
            out.get_mut(p).unwrap().hardlinks = others;
        }
    }
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<PathBuf, NodeInfo>,
    inodes: &mut BTreeMap<(u64, u64), Vec<PathBuf>>,
) {
    let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for path in names {
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let md = fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let info = NodeInfo {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: (kind == "file").then_some(md.size()),
            content: (kind == "file").then(|| sha256(&fs::read(&path).unwrap())),
            link: (kind == "symlink").then(|| fs::read_link(&path).unwrap()),
            rdev: (kind == "char" || kind == "block").then_some(md.rdev()),
            xattrs: xattrs(&path),
            mtime: (kind != "dir").then_some((md.mtime(), md.mtime_nsec())),
            hardlinks: Vec::new(),
        };
        if kind == "file" && md.nlink() > 1 {
            inodes.entry((md.dev(), md.ino())).or_default().push(rel.clone());
        }
        out.insert(rel, info);
        if kind == "dir" {
            walk(root, &path, out, inodes);
        }
    }
}

/// Asserts two trees hold the same nodes, naming every difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    let mut problems = Vec::new();
    for (path, na) in &ta {
        match tb.get(path) {
            None => problems.push(format!("{}: only in {}", path.display(), a.display())),
            Some(nb) if nb != na => problems.push(format!("{}:\n  {na:?}\n  {nb:?}", path.display())),
            Some(_) => {}
        }
    }
    for path in tb.keys().filter(|p| !ta.contains_key(*p)) {
        problems.push(format!("{}: only in {}", path.display(), b.display()));
    }
    assert!(problems.is_empty(), "trees differ:\n{}", problems.join("\n"));
}
