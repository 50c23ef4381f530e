//! Snapshotters through the real `ctr`, on the real kernel overlayfs and on
//! the native copy snapshotter.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use corten_tests::{fails, ok, Daemon};

const SNAPSHOTTERS: [&str; 2] = ["overlayfs", "native"];

/// ctr's views carry no gc.root label, so any collection (and every
/// deletion schedules one) may take them, as in containerd: these tests are
/// about snapshots, so only sync deletes collect.
const NO_AUTO_GC: &str = r#"[plugins."io.containerd.gc.v1.scheduler"]
startup_delay = "1000h"
mutation_threshold = 0
deletion_threshold = 1000000000
"#;

fn snap(d: &Daemon, snapshotter: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["snapshots", "--snapshotter", snapshotter];
    all.extend_from_slice(args);
    d.ctr(&all)
}

/// Runs `ctr snapshots mounts TARGET KEY | sh`, as a user would.
fn mount(d: &Daemon, snapshotter: &str, key: &str, target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    let script = ok(snap(d, snapshotter, &["mounts", target.to_str().unwrap(), key]));
    let mut sh = Command::new("sh")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sh.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = sh.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mount failed: {script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn umount(target: &Path) {
    let status = Command::new("umount").arg(target).status().unwrap();
    assert!(status.success(), "umount {}", target.display());
}

/// Unmounts on drop, so a failing assertion leaves no mount behind.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

#[test]
fn prepare_write_commit_view_diff() {
    let d = Daemon::start_with(NO_AUTO_GC);
    for sn in SNAPSHOTTERS {
        let base = d.dir.path().join(format!("mnt-{sn}"));
        // An active snapshot takes a write.
        ok(snap(&d, sn, &["prepare", "a"]));
        let a = base.join("a");
        mount(&d, sn, "a", &a);
        std::fs::write(a.join("hello.txt"), b"from a").unwrap();
        umount(&a);
        ok(snap(&d, sn, &["commit", "c", "a"]));

        // A child of the committed one sees its parent and adds to it.
        ok(snap(&d, sn, &["prepare", "b", "c"]));
        let b = base.join("b");
        mount(&d, sn, "b", &b);
        assert_eq!(std::fs::read(b.join("hello.txt")).unwrap(), b"from a");
        std::fs::write(b.join("new.txt"), b"from b").unwrap();
        umount(&b);

        // A view reads back and refuses writes.
        ok(snap(&d, sn, &["view", "v", "c"]));
        let v = base.join("v");
        mount(&d, sn, "v", &v);
        {
            let _guard = Mounted(&v);
            assert_eq!(std::fs::read(v.join("hello.txt")).unwrap(), b"from a");
            let err = std::fs::write(v.join("nope"), b"x").unwrap_err();
            assert_eq!(
                err.raw_os_error(),
                Some(nix::errno::Errno::EROFS as i32),
                "{sn}: view must be read-only: {err}"
            );
        }

        // ls, info, usage, label; then the view goes.
        let ls = ok(snap(&d, sn, &["ls"]));
        for (key, kind) in [("c", "Committed"), ("b", "Active"), ("v", "View")] {
            assert!(ls.lines().any(|l| l.starts_with(key) && l.contains(kind)), "{sn}: {ls}");
        }
        let info = ok(snap(&d, sn, &["info", "b"]));
        assert!(info.contains("\"Parent\": \"c\""), "{sn}: {info}");
        let usage = ok(snap(&d, sn, &["usage", "b"]));
        assert!(usage.lines().count() >= 2, "{sn}: {usage}");
        ok(snap(&d, sn, &["label", "c", "x=y"]));
        assert!(ok(snap(&d, sn, &["info", "c"])).contains("\"x\": \"y\""));

        ok(snap(&d, sn, &["rm", "v"]));

        // The diff from c to b is a gzip tar holding the new file; ctr 1.6
        // writes the blob itself to stdout.
        let out = snap(&d, sn, &["diff", "c", "b"]);
        assert!(out.status.success(), "{sn}: {}", String::from_utf8_lossy(&out.stderr));
        let blob = out.stdout;
        let mut tar = Command::new("tar")
            .args(["-tz"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        tar.stdin.take().unwrap().write_all(&blob).unwrap();
        let listing = String::from_utf8(tar.wait_with_output().unwrap().stdout).unwrap();
        assert!(
            listing.lines().any(|l| l.trim_start_matches("./") == "new.txt"),
            "{sn}: {listing}"
        );
        assert!(
            !listing.contains("hello.txt"),
            "{sn}: unchanged files stay out: {listing}"
        );

        // A committed snapshot with children cannot go; an existing name cannot be reused.
        let err = fails(snap(&d, sn, &["rm", "c"]));
        assert!(
            err.contains("failed precondition") || err.contains("children"),
            "{sn}: {err}"
        );
        ok(snap(&d, sn, &["prepare", "a2"]));
        let err = fails(snap(&d, sn, &["commit", "c", "a2"]));
        assert!(err.contains("already exists"), "{sn}: {err}");

        ok(snap(&d, sn, &["rm", "b", "a2"]));
        ok(snap(&d, sn, &["rm", "c"]));
        assert_eq!(
            ok(snap(&d, sn, &["ls"])).lines().count(),
            1,
            "{sn}: only the header left"
        );
    }
}

#[test]
fn keys_never_become_paths() {
    let d = Daemon::start();
    for sn in SNAPSHOTTERS {
        for key in ["../../escape", "/abs", "a/b/c", &"k".repeat(300)] {
            ok(snap(&d, sn, &["prepare", key]));
        }
        let root = d.root.join(format!("io.containerd.snapshotter.v1.{sn}"));
        assert!(!d.root.join("escape").exists() && !Path::new("/abs").exists());
        let mut names = Vec::new();
        collect_names(&root, &mut names);
        assert!(
            !names
                .iter()
                .any(|n| n.contains("escape") || n == "abs" || n.starts_with("kkk")),
            "{sn}: {names:?}"
        );
        let err = fails(snap(&d, sn, &["prepare", "../../escape"]));
        assert!(err.contains("already exists"), "{err}");
    }
}

fn collect_names(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        out.push(entry.file_name().to_string_lossy().into_owned());
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_names(&entry.path(), out);
        }
    }
}
