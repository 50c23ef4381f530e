//! Diffs of real trees written into the content store, read back, and
//! applied again.

mod common;

use std::{collections::BTreeMap, fs};

use common::*;
use corten_core::{
    diff::{DiffOptions, Differ, UNCOMPRESSED_LABEL},
    Error,
};
use corten_diff::mount::{Access, TempMount};
use tar::EntryType;

fn base() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("etc", 0o755)
        .file("etc/hostname", b"box\n", 0o644)
        .file("etc/motd", b"hello\n", 0o644)
        .dir("etc/conf.d", 0o750)
        .file("etc/conf.d/a", b"a", 0o600)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", b"tool", 0o4755)
        .symlink("bin", "usr/bin")
        .dir("tmp", 0o1777)
        .dir("var", 0o755)
        .dir("var/lib", 0o755)
        .file("var/lib/state", b"state", 0o644)
        .file("var/lib/same", b"same", 0o644);
    l.finish()
}

fn entries(tar_bytes: &[u8]) -> BTreeMap<String, (EntryType, u32, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        out.insert(name, (e.header().entry_type(), e.header().mode().unwrap(), data));
    }
    out
}

#[test]
fn a_new_file_and_a_deleted_one() {
    let f = Fixture::new();
    let lower = f.path("lower");
    f.differ.apply(NS, &f.ingest(&base(), TAR), &bind(&lower)).unwrap();

    // The container's changes, made through a mounted overlay.
    let (upper, work) = (f.path("upper"), f.path("work"));
    let rw = overlay(&[&lower], Some((&upper, &work)));
    {
        let m = TempMount::new(&f.path("test-mounts"), &rw, Access::ReadWrite).unwrap();
        fs::write(m.path().join("etc/new.conf"), b"new file\n").unwrap();
        // Whole seconds, as a layer carries them, so the trees compare equal.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(MTIME + 1);
        let file = fs::File::options()
            .write(true)
            .open(m.path().join("etc/new.conf"))
            .unwrap();
        file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
            .unwrap();
        fs::remove_file(m.path().join("etc/motd")).unwrap();
    }

    let labels = BTreeMap::from([("test.label".to_string(), "kept".to_string())]);
    let desc = f
        .differ
        .compare(
            NS,
            &bind(&lower),
            &rw,
            DiffOptions {
                labels,
                ..DiffOptions::default()
            },
        )
        .unwrap();
    assert_eq!(desc.media_type, TAR_GZIP);
    let blob = f.read_blob(&desc.digest);
    assert_eq!(blob.len() as u64, desc.size);
    assert_eq!(sha256(&blob), desc.digest.to_string());
    assert_eq!(&blob[..2], &[0x1f, 0x8b], "gzip");
    let tar_bytes = gunzip(&blob);
    let info = f.store.info(NS, &desc.digest).unwrap();
    assert_eq!(info.labels[UNCOMPRESSED_LABEL], sha256(&tar_bytes));
    assert_eq!(info.labels["test.label"], "kept");
    assert!(f.store.list_statuses(NS).unwrap().is_empty(), "the ingest is committed");

    // Only the changes, and the directory they are in.
    let names = tar_names(&tar_bytes);
    assert_eq!(names, ["etc/", "etc/.wh.motd", "etc/new.conf"], "{names:?}");
    let e = entries(&tar_bytes);
    assert_eq!(e["etc/new.conf"].2, b"new file\n");
    assert_eq!(e["etc/.wh.motd"].0, EntryType::Regular);

    // Applied onto the lower tree, it gives what the container saw.
    let copy = f.path("copy");
    f.differ.apply(NS, &f.ingest(&base(), TAR), &bind(&copy)).unwrap();
    let applied = f.differ.apply(NS, &desc, &bind(&copy)).unwrap();
    assert_eq!(applied.digest.to_string(), info.labels[UNCOMPRESSED_LABEL]);
    let merged = TempMount::new(&f.path("test-mounts"), &rw, Access::ReadOnly).unwrap();
    assert_same_tree(&copy, merged.path());

    // The same diff again is the same blob: AlreadyExists is an answer.
    let again = f
        .differ
        .compare(NS, &bind(&lower), &rw, DiffOptions::default())
        .unwrap();
    assert_eq!(again.digest, desc.digest);
}

/// Every kind of change: the layers of the apply test, diffed pairwise from
/// native trees and applied again.
#[test]
fn round_trip_of_every_kind_of_node() {
    let f = Fixture::new();
    let before = f.path("before");
    f.differ.apply(NS, &f.ingest(&base(), TAR), &bind(&before)).unwrap();
    let after = f.path("after");
    f.differ.apply(NS, &f.ingest(&base(), TAR), &bind(&after)).unwrap();

    let mut l = Layer::new();
    l.file("etc/hostname", b"renamed\n", 0o644)
        .whiteout("etc/conf.d")
        .whiteout("bin")
        .dir("bin", 0o755)
        .file("bin/sh", b"shell", 0o755)
        .file_full(
            "usr/bin/caps",
            b"xattrs",
            0o750,
            (1000, 100),
            &[("user.a", b"1"), ("trusted.b", b"\0\xff")],
        )
        .hardlink("usr/bin/caps2", "usr/bin/caps")
        .device("dev/zero", EntryType::Char, (1, 5), 0o666)
        .device("dev/loop0", EntryType::Block, (7, 0), 0o660)
        .fifo("run/pipe", 0o620)
        .symlink("var/lib/link", "../../etc/hostname")
        .dir_owned("home/u", 0o2770, (1000, 1000), &[("user.dir", b"x")])
        .file(&format!("deep/{}/file", "d/".repeat(60)), b"a long path", 0o644)
        .symlink("longlink", &"x".repeat(300))
        .file("usr/bin/tool", b"tool", 0o755); // a mode change only
    f.differ.apply(NS, &f.ingest(&l.finish(), TAR), &bind(&after)).unwrap();
    // Changes no layer makes: a new xattr on a directory, and two files
    // whose times differ from the layer's only below the second, one with
    // new content of the same size and one unchanged.
    rustix::fs::setxattr(after.join("tmp"), "user.new", b"y", rustix::fs::XattrFlags::empty()).unwrap();
    fs::write(after.join("var/lib/state"), b"STATE").unwrap();
    let set_mtime = |name: &str, nanos: u32| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(MTIME, nanos);
        let file = fs::File::options().write(true).open(after.join(name)).unwrap();
        file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
            .unwrap();
    };

    for media_type in ["", TAR, "application/vnd.oci.image.layer.v1.tar+zstd"] {
        set_mtime("var/lib/state", 123);
        set_mtime("var/lib/same", 456);
        let desc = f
            .differ
            .compare(
                NS,
                &bind(&before),
                &bind(&after),
                DiffOptions {
                    media_type: media_type.into(),
                    reference: format!("diff-test-{}", media_type.len()),
                    ..DiffOptions::default()
                },
            )
            .unwrap();
        let blob = f.read_blob(&desc.digest);
        if media_type == TAR {
            let info = f.store.info(NS, &desc.digest).unwrap();
            assert_eq!(info.labels[UNCOMPRESSED_LABEL], desc.digest.to_string());
            let names = tar_names(&blob);
            assert!(names.contains(&"etc/.wh.conf.d".to_string()), "{names:?}");
            assert!(!names.iter().any(|n| n.starts_with("etc/conf.d/")), "{names:?}");
            assert!(!names.contains(&"etc/motd".to_string()), "unchanged files stay out");
            let e = entries(&blob);
            assert_eq!(e["usr/bin/caps2"].0, EntryType::Link);
            assert_eq!(e["usr/bin/tool"].1, 0o755);
            assert_eq!(e["var/lib/state"].2, b"STATE");
            assert!(!e.contains_key("var/lib/same"), "same content, same second");
            assert!(e.contains_key("tmp/"));
        }
        // A layer keeps whole seconds.
        set_mtime("var/lib/state", 0);
        set_mtime("var/lib/same", 0);
        let target = f.path(&format!("replay-{}", media_type.len()));
        f.differ.apply(NS, &f.ingest(&base(), TAR), &bind(&target)).unwrap();
        let applied = f.differ.apply(NS, &desc, &bind(&target)).unwrap();
        let info = f.store.info(NS, &desc.digest).unwrap();
        assert_eq!(applied.digest.to_string(), info.labels[UNCOMPRESSED_LABEL]);
        assert_same_tree(&after, &target);
    }
}

#[test]
fn no_lower_is_the_whole_tree() {
    let f = Fixture::new();
    let tree_dir = f.path("tree");
    f.differ.apply(NS, &f.ingest(&base(), TAR), &bind(&tree_dir)).unwrap();
    let desc = f
        .differ
        .compare(
            NS,
            &[],
            &bind(&tree_dir),
            DiffOptions {
                media_type: TAR.into(),
                ..DiffOptions::default()
            },
        )
        .unwrap();
    let names = tar_names(&f.read_blob(&desc.digest));
    assert_eq!(names.len(), 14, "{names:?}");
    let empty = f.path("empty");
    f.differ.apply(NS, &desc, &bind(&empty)).unwrap();
    assert_same_tree(&tree_dir, &empty);
    // Identical trees give an empty layer.
    let same = f
        .differ
        .compare(NS, &bind(&tree_dir), &bind(&empty), DiffOptions::default())
        .unwrap();
    assert!(tar_names(&gunzip(&f.read_blob(&same.digest))).is_empty());
}

#[test]
fn unsupported_requests() {
    let f = Fixture::new();
    let dir = f.path("d");
    let bad_type = DiffOptions {
        media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
        ..DiffOptions::default()
    };
    assert!(matches!(
        f.differ.compare(NS, &[], &bind(&dir), bad_type),
        Err(Error::Unimplemented(_))
    ));
    assert!(matches!(
        f.differ.compare(NS, &bind(&dir), &[], DiffOptions::default()),
        Err(Error::InvalidArgument(_))
    ));
    let missing = f.dir.path().join("missing");
    assert!(f
        .differ
        .compare(NS, &[], &bind(&missing), DiffOptions::default())
        .is_err());
    assert!(f.store.list_statuses(NS).unwrap().is_empty(), "no ingest left behind");
    let mounts = f.dir.path().join("state/mounts");
    assert_eq!(fs::read_dir(&mounts).unwrap().count(), 0, "no mount point left behind");
}
