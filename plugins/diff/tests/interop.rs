//! GNU tar as the reference: layers it writes apply to the tree it would
//! extract, and layers the differ writes extract with it to the same tree.

mod common;

use std::{path::Path, process::Command};

use common::*;
use corten_core::diff::{DiffOptions, Differ};
use tar::EntryType;

fn source_tree(f: &Fixture, with_xattrs: bool) -> std::path::PathBuf {
    let long = "a-rather-long-directory-name-to-need-more-than-a-hundred-bytes";
    let xattrs: &[(&str, &[u8])] = if with_xattrs {
        &[("user.one", b"1"), ("trusted.two", b"\x00\x02")]
    } else {
        &[]
    };
    let mut l = Layer::new();
    l.dir("etc", 0o755)
        .file_full("etc/x", b"xattrs", 0o640, (0, 4), xattrs)
        .dir(long, 0o700)
        .dir(&format!("{long}/{long}"), 0o755)
        .file(&format!("{long}/{long}/file-with-a-long-path"), b"deep", 0o644)
        .symlink("lnk", &format!("{long}/{long}/file-with-a-long-path"))
        .file_full("bin", b"setuid", 0o4711, (1000, 1000), &[])
        .hardlink("bin2", "bin")
        .dir("tmp", 0o1777)
        .device("tmp/null", EntryType::Char, (1, 3), 0o666)
        .device("tmp/disk", EntryType::Block, (8, 1), 0o640)
        .fifo("tmp/pipe", 0o600)
        .file("empty", b"", 0o000);
    let dir = f.path(if with_xattrs { "source-x" } else { "source" });
    f.differ.apply(NS, &f.ingest(&l.finish(), TAR), &bind(&dir)).unwrap();
    dir
}

fn gnu_tar(args: &[&str]) {
    let out = Command::new("tar").args(args).output().expect("GNU tar runs");
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gnu_tar_layers_apply_like_gnu_tar_extracts() {
    for (format, with_xattrs) in [("gnu", false), ("pax", true)] {
        let f = Fixture::new();
        let source = source_tree(&f, with_xattrs);
        let archive = f.dir.path().join("layer.tar");
        let (archive_s, source_s) = (archive.display().to_string(), source.display().to_string());
        let format = format!("--format={format}");
        let mut args = vec!["-C", &source_s, "--numeric-owner", &format, "-cf", &archive_s, "."];
        if with_xattrs {
            // GNU tar keeps xattrs only in POSIX (pax) archives.
            args.splice(2..2, ["--xattrs", "--xattrs-include=*"]);
        }
        gnu_tar(&args);
        let layer = std::fs::read(&archive).unwrap();
        let applied = f.path("applied");
        let d = f.differ.apply(NS, &f.ingest(&layer, TAR), &bind(&applied)).unwrap();
        assert_eq!(d.digest.to_string(), sha256(&layer));
        let extracted = f.path("extracted");
        gnu_tar(&[
            "-C",
            &extracted.display().to_string(),
            "--xattrs",
            "--xattrs-include=*",
            "--same-owner",
            "-xpf",
            &archive_s,
        ]);
        assert_same_tree(&extracted, &applied);
        assert_same_tree(&source, &applied);
    }
}

#[test]
fn differ_layers_extract_with_gnu_tar() {
    let f = Fixture::new();
    let source = source_tree(&f, true);
    let desc = f
        .differ
        .compare(
            NS,
            &[],
            &bind(&source),
            DiffOptions {
                media_type: TAR.into(),
                ..DiffOptions::default()
            },
        )
        .unwrap();
    let archive = f.dir.path().join("diff.tar");
    std::fs::write(&archive, f.read_blob(&desc.digest)).unwrap();
    let extracted = f.path("extracted");
    gnu_tar(&[
        "-C",
        &extracted.display().to_string(),
        "--xattrs",
        "--xattrs-include=*",
        "--same-owner",
        "-xpf",
        &archive.display().to_string(),
    ]);
    assert_same_tree(&source, &extracted);
    assert!(Path::new(&extracted).join("bin2").exists());
}
