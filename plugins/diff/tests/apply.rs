//! A three-layer image applied the native way (real deletions into one
//! directory) and the overlay way (each layer into its own upper directory,
//! whiteouts converted), then the mounted overlay compared with the native
//! tree file by file.

mod common;

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use common::*;
use corten_core::{
    diff::{Descriptor, Differ},
    Error,
};
use corten_diff::mount::{Access, TempMount};
use tar::EntryType;

fn layer1() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file_full("etc/shadow", b"root:*:19000::::::\n", 0o640, (0, 42), &[])
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/su", b"\x7fELF su", 0o4755)
        .file_full(
            "usr/bin/attrs",
            b"xattrs that stay",
            0o755,
            (0, 0),
            &[("user.note", b"kept"), ("trusted.bin", b"\0\x01\x02")],
        )
        .symlink("bin", "usr/bin")
        .dir("tmp", 0o1777)
        .dir("var", 0o755)
        .dir("var/cache", 0o755)
        .file("var/cache/a", b"cached a", 0o644)
        .dir("var/cache/sub", 0o755)
        .file("var/cache/sub/b", b"cached b", 0o644)
        .dir("var/log", 0o755)
        .file("var/log/old.log", b"old log", 0o644)
        .dir_owned("data", 0o750, (1000, 1000), &[])
        .file_full(
            "data/x",
            b"with xattrs",
            0o600,
            (1000, 1000),
            &[("user.note", b"hello"), ("trusted.tag", b"t\0bin")],
        )
        .dir("dev", 0o755)
        .device("dev/null", EntryType::Char, (1, 3), 0o666)
        .device("dev/sda", EntryType::Block, (8, 0), 0o660)
        .dir("run", 0o755)
        .fifo("run/fifo", 0o600)
        .dir("lib", 0o755)
        .file("lib/libfoo.so.1", b"libfoo 1", 0o755)
        .symlink("lib/libfoo.so", "libfoo.so.1")
        .dir("opt", 0o755)
        .dir("opt/app", 0o755)
        .file("opt/app/conf", b"conf", 0o644)
        .dir_owned("home", 0o755, (0, 0), &[])
        .dir_owned("home/user", 0o700, (1000, 1000), &[("user.dir", b"attr")])
        .file_full("home/user/.profile", b"PS1=$ ", 0o644, (1000, 1000), &[]);
    l.finish()
}

fn layer2() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("etc", 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
            0o644,
        )
        .whiteout("etc/shadow")
        // Entries of an opaque directory listed before the marker stay.
        .dir("var/cache", 0o700)
        .file("var/cache/new", b"new in layer 2", 0o644)
        .opaque("var/cache")
        .file("var/cache/after", b"after the marker", 0o644)
        .whiteout("var/log/old.log")
        .whiteout("opt/app")
        // Through the symlink of layer 1, and with no parent entry.
        .file("bin/newtool", b"new tool", 0o755)
        .file("tmp/newfile", b"in the sticky dir", 0o644)
        // A hardlink to a file of the layer below.
        .hardlink("usr/bin/hl", "usr/bin/su")
        .file("usr/bin/sg", b"setgid", 0o2755)
        .dir("srv", 0o755)
        .file("srv/a", b"linked", 0o644)
        .hardlink("srv/b", "srv/a")
        .hardlink("srv/c", "/srv/a")
        // Deleted and made again in the same layer: nothing of the old stays.
        .whiteout("data")
        .dir_owned("data", 0o755, (1000, 1000), &[])
        .file("data/y", b"fresh", 0o644)
        .fifo("run/fifo2", 0o640)
        .opaque("home/user");
    l.finish()
}

fn layer3() -> Vec<u8> {
    let mut l = Layer::new();
    // A whiteout hides only what the layers below hold (OCI): srv/keep stays.
    l.file("srv/keep", b"same layer as its whiteout", 0o644)
        .whiteout("srv/keep")
        .whiteout("srv/b")
        .whiteout("lib/libfoo.so.1")
        .file("lib/libfoo.so.2", b"libfoo 2", 0o755)
        .raw(
            b"lib/libfoo.so",
            EntryType::Symlink,
            0o777,
            (0, 0),
            Some(b"libfoo.so.2"),
            &[("trusted.link", b"symlink xattr")],
            b"",
        )
        .dir("etc", 0o700)
        .file("newdir/deep/er/file", b"implicit parents", 0o644)
        .dir_owned("srv", 0o755, (0, 0), &[("user.k", b"v")])
        .whiteout("var/cache/after")
        .file("data/y", b"changed again", 0o600);
    l.finish()
}

fn layers() -> Vec<Vec<u8>> {
    vec![layer1(), layer2(), layer3()]
}

fn apply(f: &Fixture, layer: &[u8], media_type: &str, mounts: &[corten_core::mount::Mount]) -> Descriptor {
    let bytes = if media_type == TAR_GZIP {
        gzip(layer)
    } else {
        layer.to_vec()
    };
    let desc = f.ingest(&bytes, media_type);
    f.differ.apply(NS, &desc, mounts).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn native_and_overlay_give_the_same_tree() {
    let f = Fixture::new();
    let layers = layers();

    // Native: every layer into one directory, through a bind mount.
    let native = f.path("native");
    for layer in &layers {
        let d = apply(&f, layer, TAR_GZIP, &bind(&native));
        assert_eq!(d.media_type, TAR);
        assert_eq!(d.digest.to_string(), sha256(layer), "the diff ID is the tar's digest");
        assert_eq!(d.size, layer.len() as u64);
    }

    // What the layers mean, checked directly on the native tree.
    assert!(!native.join("etc/shadow").exists());
    assert_eq!(names(&native.join("var/cache")), ["new"]);
    assert_eq!(mode(&native.join("var/cache")), 0o700);
    assert!(names(&native.join("var/log")).is_empty());
    assert!(!native.join("opt/app").exists());
    assert!(fs::symlink_metadata(native.join("bin"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(native.join("usr/bin/newtool")).unwrap(), b"new tool");
    assert_eq!(mode(&native.join("tmp")), 0o1777);
    assert_eq!(mode(&native.join("usr/bin/su")), 0o4755);
    assert_eq!(mode(&native.join("usr/bin/sg")), 0o2755);
    let su = fs::metadata(native.join("usr/bin/su")).unwrap();
    assert_eq!(su.ino(), fs::metadata(native.join("usr/bin/hl")).unwrap().ino());
    assert_eq!(
        fs::metadata(native.join("srv/a")).unwrap().ino(),
        fs::metadata(native.join("srv/c")).unwrap().ino()
    );
    assert!(!native.join("srv/b").exists());
    assert!(native.join("srv/keep").exists());
    assert_eq!(names(&native.join("data")), ["y"]);
    assert_eq!(fs::metadata(native.join("data")).unwrap().uid(), 1000);
    assert!(names(&native.join("home/user")).is_empty());
    assert_eq!(
        fs::read_link(native.join("lib/libfoo.so")).unwrap(),
        Path::new("libfoo.so.2")
    );
    assert_eq!(mode(&native.join("etc")), 0o700);
    let null = fs::symlink_metadata(native.join("dev/null")).unwrap();
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    assert_eq!(
        xattrs(&native.join("srv")).get("user.k").map(Vec::as_slice),
        Some(&b"v"[..])
    );
    assert_eq!(
        xattrs(&native.join("home/user")).get("user.dir").map(Vec::as_slice),
        Some(&b"attr"[..])
    );
    let described = tree(&native);
    assert_eq!(described[Path::new("usr/bin/attrs")].xattrs.len(), 2);
    assert_eq!(described[Path::new("lib/libfoo.so")].xattrs.len(), 1);
    assert_eq!(described[Path::new("usr/bin/su")].hardlinks, [Path::new("usr/bin/hl")]);
    assert_eq!(described[Path::new("run/fifo2")].kind, "fifo");
    assert_eq!(described[Path::new("dev/sda")].kind, "block");
    assert_eq!(
        described[Path::new("newdir/deep/er")].mode,
        0o755,
        "implicit parents are 0755"
    );
    assert_eq!(
        fs::metadata(native.join("usr/bin/newtool")).unwrap().mtime(),
        MTIME as i64,
        "file times come from the layer"
    );

    // Overlay: layer 1 into a plain directory, the others into uppers.
    let l1 = f.path("ovl/1");
    apply(&f, &layers[0], TAR, &bind(&l1));
    let (u2, w2) = (f.path("ovl/2/fs"), f.path("ovl/2/work"));
    let d2 = apply(&f, &layers[1], TAR, &overlay(&[&l1], Some((&u2, &w2))));
    assert_eq!(d2.digest.to_string(), sha256(&layers[1]));
    let (u3, w3) = (f.path("ovl/3/fs"), f.path("ovl/3/work"));
    apply(&f, &layers[2], TAR_GZIP, &overlay(&[&u2, &l1], Some((&u3, &w3))));

    // The upper directories hold overlay whiteouts, not deletions.
    let shadow = fs::symlink_metadata(u2.join("etc/shadow")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&shadow.file_type()));
    assert_eq!(shadow.rdev(), 0);
    for opaque in ["var/cache", "data", "home/user"] {
        let value = rustix::fs::getxattr(u2.join(opaque), "trusted.overlay.opaque", &mut [0u8; 8][..]);
        assert_eq!(value.ok(), Some(1), "{opaque} is opaque in the upper directory");
    }
    assert!(!u2.join("usr/bin/su").exists() || u2.join("usr/bin/hl").exists());
    assert_eq!(mode(&u2.join("tmp")), 0o1777, "a copied-up parent keeps its mode");

    let merged = TempMount::new(
        &f.path("test-mounts"),
        &overlay(&[&u3, &u2, &l1], None),
        Access::ReadOnly,
    )
    .unwrap();
    assert_same_tree(&native, merged.path());
}

#[test]
fn plain_and_docker_media_types() {
    let f = Fixture::new();
    let layer = layer1();
    for (i, media_type) in [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    ]
    .iter()
    .enumerate()
    {
        let dir = f.path(&format!("t{i}"));
        let d = apply(
            &f,
            &layer,
            if media_type.ends_with("gzip") { TAR_GZIP } else { TAR },
            &bind(&dir),
        );
        assert_eq!(d.digest.to_string(), sha256(&layer), "{media_type}");
        let desc = f.ingest(
            &if media_type.ends_with("gzip") {
                gzip(&layer)
            } else {
                layer.clone()
            },
            media_type,
        );
        let dir2 = f.path(&format!("u{i}"));
        assert_eq!(f.differ.apply(NS, &desc, &bind(&dir2)).unwrap().digest, d.digest);
        assert_same_tree(&dir, &dir2);
    }

    // zstd, and a "+gzip" layer that is really zstd (read as what it is).
    let zst = zstd::encode_all(&layer[..], 3).unwrap();
    for media_type in [
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    ] {
        let dir = f.path(&format!("zstd-{}", media_type.len()));
        let d = f.differ.apply(NS, &f.ingest(&zst, media_type), &bind(&dir)).unwrap();
        assert_eq!(d.digest.to_string(), sha256(&layer));
        assert_same_tree(&dir, &f.path("t0"));
    }

    let unknown = f.ingest(&layer, "application/vnd.oci.image.layer.v1.tar+encrypted");
    assert!(matches!(
        f.differ.apply(NS, &unknown, &bind(&f.path("x"))),
        Err(Error::Unimplemented(_))
    ));
    let missing = Descriptor {
        digest: format!("sha256:{}", "0".repeat(64)).parse().unwrap(),
        ..unknown.clone()
    };
    let missing = Descriptor {
        media_type: TAR.into(),
        ..missing
    };
    assert!(matches!(
        f.differ.apply(NS, &missing, &bind(&f.path("x"))),
        Err(Error::NotFound(_))
    ));
    let plain = f.ingest(&layer, TAR);
    assert!(matches!(
        f.differ.apply(NS, &plain, &[]),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn corrupt_layers_fail() {
    let f = Fixture::new();
    let layer = layer1();
    let mut gz = gzip(&layer);
    gz.truncate(gz.len() / 2);
    let desc = f.ingest(&gz, TAR_GZIP);
    assert!(matches!(
        f.differ.apply(NS, &desc, &bind(&f.path("a"))),
        Err(Error::InvalidArgument(_))
    ));
    let mut bad = layer.clone();
    bad[100] ^= 0xff; // the first header's checksum no longer matches
    let desc = f.ingest(&bad, TAR);
    assert!(matches!(
        f.differ.apply(NS, &desc, &bind(&f.path("b"))),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn the_mount_points_are_gone_afterwards() {
    let f = Fixture::new();
    let dir = f.path("target");
    apply(&f, &layer1(), TAR, &bind(&dir));
    let mounts = f.dir.path().join("state/mounts");
    assert!(names(&mounts).is_empty(), "{:?}", names(&mounts));
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&mounts.display().to_string()));
}

#[test]
fn registered_as_containerd_names_it() {
    let reg = corten_core::plugin::Registration::all()
        .into_iter()
        .find(|r| r.plugin_type == "io.containerd.differ.v1" && r.id == "walking")
        .expect("the walking differ is registered");
    assert_eq!(reg.requires, ["io.containerd.content.v1"]);
    let config = (reg.default_config)();
    assert_eq!(config["max_uncompressed_bytes"].as_integer(), Some(64 << 30));
    assert!(config.get("max_entries").is_some());
}
