//! The temporary mounts: bind and overlay, read-only and read-write, and
//! overlays too deep for a page of mount options.

mod common;

use std::fs;

use common::*;
use corten_diff::mount::{Access, TempMount};

fn is_mounted(path: &std::path::Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.display().to_string();
    info.lines().any(|l| l.split(' ').nth(4) == Some(path.as_str()))
}

#[test]
fn bind_read_only_and_read_write() {
    let f = Fixture::new();
    let dir = f.path("dir");
    fs::write(dir.join("file"), b"x").unwrap();
    let parent = f.path("mounts");
    let ro = TempMount::new(&parent, &bind(&dir), Access::ReadOnly).unwrap();
    assert_eq!(fs::read(ro.path().join("file")).unwrap(), b"x");
    let err = fs::write(ro.path().join("new"), b"y").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
    let path = ro.path().to_path_buf();
    assert!(is_mounted(&path));
    drop(ro);
    assert!(!is_mounted(&path) && !path.exists(), "unmounted and removed");

    let rw = TempMount::new(&parent, &bind(&dir), Access::ReadWrite).unwrap();
    fs::write(rw.path().join("new"), b"y").unwrap();
    drop(rw);
    assert_eq!(fs::read(dir.join("new")).unwrap(), b"y");
    assert_eq!(fs::read_dir(&parent).unwrap().count(), 0);
}

#[test]
fn read_only_overlay_leaves_upper_and_work_alone() {
    let f = Fixture::new();
    let (lower, upper, work) = (f.path("lower"), f.path("upper"), f.path("work"));
    fs::write(lower.join("a"), b"lower").unwrap();
    fs::write(upper.join("b"), b"upper").unwrap();
    let mounts = overlay(&[&lower], Some((&upper, &work)));
    // The read-write mount stays up while a read-only one is taken beside it,
    // which the kernel refuses when both use the same upper directory.
    let rw = TempMount::new(&f.path("mounts"), &mounts, Access::ReadWrite).unwrap();
    let ro = TempMount::new(&f.path("mounts"), &mounts, Access::ReadOnly).unwrap();
    assert_eq!(fs::read(ro.path().join("a")).unwrap(), b"lower");
    assert_eq!(fs::read(ro.path().join("b")).unwrap(), b"upper");
    assert!(fs::write(ro.path().join("c"), b"").is_err());
    drop((ro, rw));

    // A single read-only layer cannot be an overlay: it is bound instead.
    let single = TempMount::new(&f.path("mounts"), &overlay(&[&lower], None), Access::ReadOnly).unwrap();
    assert_eq!(fs::read(single.path().join("a")).unwrap(), b"lower");
}

#[test]
fn overlays_deeper_than_a_page() {
    let f = Fixture::new();
    let name = "a-layer-directory-with-a-name-long-enough-to-make-the-options-long";
    let lowers: Vec<_> = (0..70)
        .map(|i| {
            let dir = f.path(&format!("layers/{i:03}-{name}"));
            fs::write(dir.join(format!("f{i}")), i.to_string()).unwrap();
            fs::write(dir.join("top"), i.to_string()).unwrap();
            dir
        })
        .collect();
    let refs: Vec<&std::path::Path> = lowers.iter().map(|p| p.as_path()).collect();
    let (upper, work) = (f.path(&format!("upper-{name}")), f.path("work"));
    let mounts = overlay(&refs, Some((&upper, &work)));
    assert!(mounts[0].options.iter().map(String::len).sum::<usize>() > 4096);

    let ro = TempMount::new(&f.path("mounts"), &mounts, Access::ReadOnly).unwrap();
    assert_eq!(fs::read_dir(ro.path()).unwrap().count(), 71);
    assert_eq!(
        fs::read(ro.path().join("top")).unwrap(),
        b"0",
        "the first lower is on top"
    );
    assert!(fs::write(ro.path().join("x"), b"").is_err());
    drop(ro);

    let rw = TempMount::new(&f.path("mounts"), &mounts, Access::ReadWrite).unwrap();
    fs::write(rw.path().join("x"), b"written").unwrap();
    drop(rw);
    assert_eq!(fs::read(upper.join("x")).unwrap(), b"written");
}

#[test]
fn failures_leave_nothing_mounted() {
    let f = Fixture::new();
    let parent = f.path("mounts");
    let missing = f.dir.path().join("missing");
    assert!(TempMount::new(&parent, &bind(&missing), Access::ReadOnly).is_err());
    let bad = vec![corten_core::mount::Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options: vec!["lowerdir=/nonexistent-a:/nonexistent-b".into()],
    }];
    assert!(TempMount::new(&parent, &bad, Access::ReadOnly).is_err());
    assert_eq!(fs::read_dir(&parent).unwrap().count(), 0);
}
