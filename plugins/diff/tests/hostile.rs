//! Layers built to escape the target or exhaust the host. Each is applied
//! onto a target directory that has a sentinel directory beside it; after
//! the apply, nothing outside the target may have appeared or changed, and
//! the apply either fails or keeps the entry inside the target, as the
//! case says.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use common::*;
use corten_core::{diff::Differ, Error};
use corten_diff::DiffConfig;
use tar::EntryType;

/// What outside the target must not change: the target's siblings, the
/// sentinel's contents, /etc/passwd, and the test's unique names under /,
/// /etc and /tmp.
struct Outside {
    parent: PathBuf,
    unique: String,
    before: Snapshot,
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    siblings: BTreeMap<PathBuf, (u64, u64)>,
    passwd: (Vec<u8>, u64, i64),
    escaped: Vec<PathBuf>,
}

impl Outside {
    fn new(f: &Fixture) -> (Outside, PathBuf) {
        let parent = f.path("case");
        let target = parent.join("target");
        fs::create_dir(&target).unwrap();
        fs::create_dir(parent.join("sentinel")).unwrap();
        fs::write(parent.join("sentinel/file"), b"untouched").unwrap();
        fs::write(parent.join("outside"), b"outside").unwrap();
        let unique = format!("corten-escape-{}", uuid::Uuid::new_v4().simple());
        let mut o = Outside {
            parent,
            unique,
            before: Snapshot {
                siblings: BTreeMap::new(),
                passwd: (Vec::new(), 0, 0),
                escaped: Vec::new(),
            },
        };
        o.before = o.snapshot();
        assert!(o.before.escaped.is_empty());
        (o, target)
    }

    fn snapshot(&self) -> Snapshot {
        let mut siblings = BTreeMap::new();
        let target = self.parent.join("target");
        for entry in walkdir(&self.parent) {
            if entry.starts_with(&target) {
                continue;
            }
            let md = fs::symlink_metadata(&entry).unwrap();
            siblings.insert(entry, (md.nlink(), md.size()));
        }
        let passwd = fs::symlink_metadata("/etc/passwd").unwrap();
        let escaped = [
            PathBuf::from("/").join(&self.unique),
            PathBuf::from("/etc").join(&self.unique),
            PathBuf::from("/tmp").join(&self.unique),
            self.parent.join(&self.unique),
            self.parent.parent().unwrap().join(&self.unique),
        ]
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect();
        Snapshot {
            siblings,
            passwd: (fs::read("/etc/passwd").unwrap(), passwd.nlink(), passwd.mtime()),
            escaped,
        }
    }

    fn check(&self) {
        assert_eq!(self.snapshot(), self.before, "something outside the target changed");
    }
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(path.clone());
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            out.extend(walkdir(&path));
        }
    }
    out
}

fn apply(f: &Fixture, layer: &[u8], media_type: &str, target: &Path) -> Result<(), Error> {
    let desc = f.ingest(layer, media_type);
    f.differ.apply(NS, &desc, &bind(target)).map(drop)
}

fn invalid(r: Result<(), Error>, what: &str) {
    match r {
        Err(Error::InvalidArgument(msg)) => eprintln!("{what}: refused: {msg}"),
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

fn file(name: &[u8]) -> Vec<u8> {
    let mut l = Layer::new();
    l.raw(name, EntryType::Regular, 0o644, (0, 0), None, &[], b"escaped?");
    l.finish()
}

#[test]
fn dotdot_is_refused() {
    for name in ["../escape", "a/../../escape", "./../escape", "a/b/../../../escape"] {
        let f = Fixture::new();
        let (outside, target) = Outside::new(&f);
        let name = name.replace("escape", &outside.unique);
        invalid(apply(&f, &file(name.as_bytes()), TAR, &target), &name);
        outside.check();
    }
}

#[test]
fn absolute_paths_are_made_relative() {
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let name = format!("/{}/path", outside.unique);
    apply(&f, &file(name.as_bytes()), TAR, &target).unwrap();
    assert_eq!(
        fs::read(target.join(&outside.unique).join("path")).unwrap(),
        b"escaped?"
    );
    outside.check();
}

#[test]
fn symlink_to_root_resolves_inside() {
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let mut l = Layer::new();
    l.symlink("link", "/")
        .file(&format!("link/etc/{}", outside.unique), b"x", 0o644);
    apply(&f, &l.finish(), TAR, &target).unwrap();
    assert!(target.join("etc").join(&outside.unique).is_file());
    outside.check();
}

#[test]
fn relative_symlink_climbing_out_stops_at_the_root() {
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let mut l = Layer::new();
    l.dir("d", 0o755)
        .symlink("d/l", "../../..")
        .file(&format!("d/l/{}", outside.unique), b"x", 0o644);
    apply(&f, &l.finish(), TAR, &target).unwrap();
    assert!(target.join(&outside.unique).is_file());
    outside.check();
}

#[test]
fn symlink_chain_out_resolves_inside() {
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let mut l = Layer::new();
    l.symlink("a", "b")
        .symlink("b", "/tmp")
        .file(&format!("a/{}", outside.unique), b"x", 0o644);
    apply(&f, &l.finish(), TAR, &target).unwrap();
    assert!(target.join("tmp").join(&outside.unique).is_file());
    outside.check();
}

#[test]
fn symlink_loops_are_refused() {
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let mut l = Layer::new();
    l.symlink("loop1", "loop2")
        .symlink("loop2", "loop1")
        .file("loop1/x", b"x", 0o644);
    invalid(apply(&f, &l.finish(), TAR, &target), "symlink loop");
    outside.check();
}

#[test]
fn an_entry_over_a_symlink_replaces_it() {
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let mut l = Layer::new();
    let victim = format!("/tmp/{}", outside.unique);
    l.symlink("f", &victim)
        .file("f", b"a file now", 0o644)
        .symlink("d", "/etc")
        .dir("d", 0o755)
        .file(&format!("d/{}", outside.unique), b"x", 0o644);
    apply(&f, &l.finish(), TAR, &target).unwrap();
    assert_eq!(fs::read(target.join("f")).unwrap(), b"a file now");
    assert!(fs::symlink_metadata(target.join("d")).unwrap().is_dir());
    outside.check();
}

#[test]
fn hardlinks_resolve_inside_the_target() {
    // To /etc/passwd: the target's own etc/passwd, which is missing here.
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let mut l = Layer::new();
    l.hardlink("hl", "/etc/passwd");
    invalid(
        apply(&f, &l.finish(), TAR, &target),
        "hardlink to a missing /etc/passwd",
    );
    outside.check();

    // When the layer has one, that is what the link shares.
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let mut l = Layer::new();
    l.file("etc/passwd", b"the image's own", 0o644)
        .hardlink("hl", "/etc/passwd");
    apply(&f, &l.finish(), TAR, &target).unwrap();
    let (a, b) = (
        fs::metadata(target.join("hl")).unwrap(),
        fs::metadata(target.join("etc/passwd")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    outside.check();

    // To ../outside (a file that exists beside the target).
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let mut l = Layer::new();
    l.hardlink("hl", "../outside");
    invalid(apply(&f, &l.finish(), TAR, &target), "hardlink to ../outside");
    outside.check();

    // Through a symlink leading out: resolved inside, so the target is missing.
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let mut l = Layer::new();
    l.symlink("up", "../..").hardlink("hl", "up/outside");
    invalid(apply(&f, &l.finish(), TAR, &target), "hardlink through a symlink");
    outside.check();

    // To a symlink pointing out: the link is to the symlink itself.
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let mut l = Layer::new();
    l.symlink("s", "/etc/passwd").hardlink("h", "s");
    apply(&f, &l.finish(), TAR, &target).unwrap();
    assert_eq!(fs::read_link(target.join("h")).unwrap(), Path::new("/etc/passwd"));
    outside.check();
}

#[test]
fn overlong_names_are_refused() {
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    invalid(apply(&f, &file(&vec![b'n'; 5000]), TAR, &target), "5000-byte name");
    let long_path = [&b"dir/"[..]; 1100].concat();
    invalid(apply(&f, &file(&long_path), TAR, &target), "4400-byte path");
    let component = format!("a/{}", "c".repeat(256));
    invalid(
        apply(&f, &file(component.as_bytes()), TAR, &target),
        "256-byte component",
    );
    let mut l = Layer::new();
    l.symlink("s", &"t/".repeat(2100));
    invalid(apply(&f, &l.finish(), TAR, &target), "4200-byte symlink target");
    outside.check();
}

#[test]
fn invalid_whiteouts_are_refused() {
    for name in [".wh..", ".wh...", ".wh."] {
        let f = Fixture::new();
        let (outside, target) = Outside::new(&f);
        invalid(apply(&f, &file(name.as_bytes()), TAR, &target), name);
        outside.check();
    }
}

#[test]
fn overlay_lower_symlinks_resolve_inside_the_upper() {
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let lower = f.path("lower");
    std::os::unix::fs::symlink("/etc", lower.join("evil")).unwrap();
    std::os::unix::fs::symlink("../../../../../..", lower.join("up")).unwrap();
    let (upper, work) = (target.clone(), f.path("work"));
    let mut l = Layer::new();
    l.file(&format!("evil/{}", outside.unique), b"x", 0o644)
        .file(&format!("up/{}", outside.unique), b"y", 0o644);
    let desc = f.ingest(&l.finish(), TAR);
    f.differ
        .apply(NS, &desc, &overlay(&[&lower], Some((&upper, &work))))
        .unwrap();
    assert!(upper.join("etc").join(&outside.unique).is_file());
    assert!(upper.join(&outside.unique).is_file());
    outside.check();
}

/// A gzip stream of `header` followed by `total` zero bytes, built from one
/// compressed member repeated, so 10 GiB cost a few MiB and a second.
fn gzip_bomb(header: &[u8], total: u64) -> Vec<u8> {
    const CHUNK: u64 = 8 << 20;
    let mut out = gzip(header);
    let mut member = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    member.write_all(&vec![0u8; CHUNK as usize]).unwrap();
    let member = member.finish().unwrap();
    for _ in 0..total / CHUNK {
        out.extend_from_slice(&member);
    }
    out
}

#[test]
fn decompression_bomb_is_cut_off() {
    let f = Fixture::with_config(DiffConfig {
        max_uncompressed_bytes: 64 << 20,
        ..DiffConfig::default()
    });
    let (outside, target) = Outside::new(&f);
    let mut h = tar::Header::new_ustar();
    h.set_path("zeros").unwrap();
    h.set_size(10 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let bomb = gzip_bomb(h.as_bytes(), 10 << 30);
    assert!(bomb.len() < 16 << 20, "{} bytes", bomb.len());
    let started = std::time::Instant::now();
    match apply(&f, &bomb, TAR_GZIP, &target) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("max_uncompressed_bytes"), "{msg}"),
        other => panic!("expected the bound, got {other:?}"),
    }
    eprintln!("bomb refused after {:?}", started.elapsed());
    let written = fs::metadata(target.join("zeros")).map(|m| m.len()).unwrap_or(0);
    assert!(written <= 64 << 20, "{written} bytes written");
    outside.check();
}

#[test]
fn header_bomb_is_cut_off() {
    // A PAX record set claiming 100 MiB: the tar reader would hold it all.
    let f = Fixture::new();
    let (outside, target) = Outside::new(&f);
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeader").unwrap();
    h.set_entry_type(EntryType::XHeader);
    h.set_size(100 << 20);
    h.set_cksum();
    let bomb = gzip_bomb(h.as_bytes(), 100 << 20);
    match apply(&f, &bomb, TAR_GZIP, &target) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("header"), "{msg}"),
        other => panic!("expected the header bound, got {other:?}"),
    }
    outside.check();
}

#[test]
fn too_many_entries_are_refused() {
    let f = Fixture::with_config(DiffConfig {
        max_entries: 1000,
        ..DiffConfig::default()
    });
    let (outside, target) = Outside::new(&f);
    let mut l = Layer::new();
    for i in 0..1001 {
        l.file(&format!("f{i}"), b"", 0o644);
    }
    match apply(&f, &l.finish(), TAR, &target) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("max_entries"), "{msg}"),
        other => panic!("expected the entry bound, got {other:?}"),
    }
    outside.check();
}

#[test]
fn sparse_expansion_counts_against_the_bound() {
    // An old-GNU sparse file: 1 block stored, 1 GiB when expanded.
    let f = Fixture::with_config(DiffConfig {
        max_uncompressed_bytes: 16 << 20,
        ..DiffConfig::default()
    });
    let (outside, target) = Outside::new(&f);
    let mut h = tar::Header::new_gnu();
    h.set_path("sparse").unwrap();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(512);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].offset = *b"00000000000\0";
        gnu.sparse[0].numbytes = *b"00000001000\0";
        // The map ends with an empty chunk at the real size: the final hole.
        let real = format!("{:011o}\0", 1u64 << 30);
        gnu.sparse[1].offset.copy_from_slice(real.as_bytes());
        gnu.sparse[1].numbytes = *b"00000000000\0";
        gnu.realsize.copy_from_slice(real.as_bytes());
    }
    h.set_cksum();
    let mut tar_bytes = h.as_bytes().to_vec();
    tar_bytes.extend_from_slice(&[b'd'; 512]);
    tar_bytes.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes).unwrap();
    match apply(&f, &gz.finish().unwrap(), TAR_GZIP, &target) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("max_uncompressed_bytes"), "{msg}"),
        other => panic!("expected the bound, got {other:?}"),
    }
    outside.check();
}
