//! Images pulled by the real `ctr` from a real local registry through
//! corten. In containerd 1.6 `ctr images pull` is client-side: ctr fetches
//! from the registry, writes through the Content service, unpacks with the
//! Snapshots and Diff services and records the image with the Images
//! service, so this drives all of them the way containerd's clients do.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use corten_tests::{
    fails, ok,
    registry::{self, BadImage, PushedImage, Registry},
    Daemon,
};

/// Every ctr command that takes `--snapshotter`, with it.
const NO_AUTO_GC: &str = r#"[plugins."io.containerd.gc.v1.scheduler"]
startup_delay = "1000h"
mutation_threshold = 0
deletion_threshold = 1000000000
"#;

fn with_snapshotter<'a>(command: &[&'a str], snapshotter: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = command.to_vec();
    all.extend(["--snapshotter", snapshotter]);
    all.extend_from_slice(args);
    all
}

fn pull(d: &Daemon, snapshotter: &str, reference: &str) -> Output {
    d.ctr(&with_snapshotter(
        &["images", "pull"],
        snapshotter,
        &["--plain-http", reference],
    ))
}

/// Asserts success, with the daemon's log in the message when it fails.
fn ok_logged(d: &Daemon, what: &str, out: Output) -> String {
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}\ncortend log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            d.log()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A read-only mount of an unpacked image, unmounted (lazily) on drop if
/// the test did not unmount it.
struct ImageMount<'a> {
    d: &'a Daemon,
    snapshotter: &'a str,
    target: PathBuf,
    /// `None`: made by `ctr images mount`; `Some(key)`: a view snapshot.
    view: Option<String>,
    mounted: bool,
}

impl<'a> ImageMount<'a> {
    /// `ctr images mount REF TARGET`, as a user would.
    fn new(d: &'a Daemon, snapshotter: &'a str, reference: &str, name: &str) -> ImageMount<'a> {
        let target = d.dir.path().join(name);
        std::fs::create_dir_all(&target).unwrap();
        let path = target.to_str().unwrap();
        let out = ok_logged(
            d,
            "ctr images mount",
            d.ctr(&with_snapshotter(&["images", "mount"], snapshotter, &[reference, path])),
        );
        assert!(out.lines().any(|l| l.trim() == path), "{out}");
        ImageMount {
            d,
            snapshotter,
            target,
            view: None,
            mounted: true,
        }
    }

    /// `ctr snapshots view KEY CHAIN_ID`, then `ctr snapshots mounts
    /// TARGET KEY | sh`: the unpacked image seen through the Snapshots
    /// service alone (no lease named by the path, unlike `images mount`).
    fn view(d: &'a Daemon, snapshotter: &'a str, chain_id: &str, name: &str) -> ImageMount<'a> {
        let target = d.dir.path().join(name);
        std::fs::create_dir_all(&target).unwrap();
        let key = format!("view-{name}");
        let snapshots = ["snapshots", "--snapshotter", snapshotter];
        ok_logged(
            d,
            "ctr snapshots view",
            d.ctr(&[&snapshots[..], &["view", &key, chain_id]].concat()),
        );
        let script = ok_logged(
            d,
            "ctr snapshots mounts",
            d.ctr(&[&snapshots[..], &["mounts", target.to_str().unwrap(), &key]].concat()),
        );
        let mut mount = ImageMount {
            d,
            snapshotter,
            target,
            view: Some(key),
            mounted: false,
        };
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        mount.mounted = true;
        mount
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.target.join(rel)
    }

    /// `ctr images unmount --rm` (the mount, its snapshot and its lease go),
    /// or for a view: umount, then `ctr snapshots rm`.
    fn unmount(mut self) {
        let path = self.target.to_str().unwrap();
        match &self.view {
            None => {
                let args = with_snapshotter(&["images", "unmount"], self.snapshotter, &["--rm", path]);
                ok_logged(self.d, "ctr images unmount", self.d.ctr(&args));
            }
            Some(key) => {
                let status = Command::new("umount").arg(path).status().unwrap();
                assert!(status.success(), "umount {path}");
                let args = ["snapshots", "--snapshotter", self.snapshotter, "rm", key];
                ok_logged(self.d, "ctr snapshots rm", self.d.ctr(&args));
            }
        }
        self.mounted = false;
        assert!(
            !is_mountpoint(&self.target),
            "{} is still mounted",
            self.target.display()
        );
    }
}

impl Drop for ImageMount<'_> {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.target).status();
        }
    }
}

fn is_mountpoint(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(path))
}

/// The table rows of a ctr listing, without its header.
fn rows(listing: &str) -> Vec<&str> {
    listing.lines().skip(1).filter(|l| !l.trim().is_empty()).collect()
}

/// After the last image is removed with `--sync`, GC has taken every blob
/// and snapshot, and the namespace is empty enough to remove.
fn assert_collected(d: &Daemon, snapshotter: &str) {
    let content = ok(d.ctr(&["content", "ls", "-q"]));
    assert_eq!(content.trim(), "", "content left after images rm --sync\n{}", d.log());
    let snapshots = ok(d.ctr(&["snapshots", "--snapshotter", snapshotter, "ls"]));
    assert!(
        rows(&snapshots).is_empty(),
        "{snapshotter} snapshots left after images rm --sync:\n{snapshots}"
    );
    let leases = ok(d.ctr(&["leases", "ls", "-q"]));
    assert_eq!(leases.trim(), "", "leases left");
    ok_logged(d, "ctr namespaces rm default", d.ctr(&["namespaces", "rm", "default"]));
    assert!(!ok(d.ctr(&["namespaces", "ls", "-q"])).lines().any(|l| l == "default"));
}

/// Pull, list, check, mount, tag, remove: the life of one image.
fn busybox_lifecycle(snapshotter: &str) {
    let registry = Registry::start();
    let image = registry.push_busybox("test/busybox", "latest");
    let d = Daemon::start();
    let reference = image.reference.as_str();

    ok_logged(&d, "ctr images pull", pull(&d, snapshotter, reference));

    let ls = ok(d.ctr(&["images", "ls"]));
    let row = rows(&ls)
        .into_iter()
        .find(|l| l.starts_with(reference))
        .unwrap_or_else(|| panic!("{reference} not listed:\n{ls}"));
    assert!(row.contains(&image.manifest_digest), "{row}");
    assert!(row.contains(registry::OCI_MANIFEST), "{row}");
    assert!(row.contains("linux/amd64"), "{row}");

    let check = ok(d.ctr(&["images", "check", "--snapshotter", snapshotter]));
    let row = rows(&check)
        .into_iter()
        .find(|l| l.starts_with(reference))
        .unwrap_or_else(|| panic!("{reference} not checked:\n{check}"));
    assert!(row.contains("complete (2/2)"), "{check}");
    assert!(row.trim_end().ends_with("true"), "not unpacked:\n{check}");
    let ready = ok(d.ctr(&["images", "check", "-q", "--snapshotter", snapshotter]));
    assert_eq!(ready.trim(), reference);

    // Every blob the manifest names is in the content store, labelled as
    // containerd labels what it pulls.
    let content = ok(d.ctr(&["content", "ls"]));
    for digest in [&image.manifest_digest, &image.config_digest, &image.layers[0].0] {
        assert!(content.contains(digest.as_str()), "{digest} missing:\n{content}");
    }
    assert!(
        content.contains(&format!("containerd.io/uncompressed={}", image.layers[0].1)),
        "{content}"
    );
    assert!(
        content.contains(&format!("containerd.io/gc.ref.snapshot.{snapshotter}=")),
        "{content}"
    );
    let snapshots = ok(d.ctr(&["snapshots", "--snapshotter", snapshotter, "ls"]));
    assert_eq!(rows(&snapshots).len(), 1, "{snapshots}");
    assert!(snapshots.contains(&image.chain_id()), "named by chain ID:\n{snapshots}");

    let mount = ImageMount::new(&d, snapshotter, reference, "rootfs");
    let busybox = std::fs::metadata(mount.path("bin/busybox")).unwrap();
    assert!(busybox.is_file());
    assert_eq!(busybox.mode() & 0o7777, 0o755);
    assert_eq!(busybox.len(), std::fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(std::fs::read_link(mount.path("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(std::fs::metadata(mount.path("tmp")).unwrap().mode() & 0o7777, 0o1777);
    assert!(std::fs::read_to_string(mount.path("etc/passwd"))
        .unwrap()
        .starts_with("root:x:0:0:"));
    mount.unmount();

    let copy = format!("{}/test/busybox:copy", registry.host());
    ok_logged(&d, "ctr images tag", d.ctr(&["images", "tag", reference, &copy]));
    let names = ok(d.ctr(&["images", "ls", "-q"]));
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, [copy.as_str(), reference]);

    // `ctr images label` sends the name and the labels under a mask of
    // labels, with no target: the target stays as it was.
    let digest_of = |name: &str| {
        let ls = ok(d.ctr(&["images", "ls"]));
        let row = rows(&ls)
            .into_iter()
            .find(|r| r.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in {ls}"));
        row.split_whitespace().nth(2).unwrap().to_string()
    };
    let before = digest_of(&copy);
    let set = ok_logged(
        &d,
        "ctr images label",
        d.ctr(&["images", "label", &copy, "corten.test=yes"]),
    );
    assert_eq!(set.trim(), "corten.test=yes");
    assert!(ok(d.ctr(&["images", "ls", "-q", "labels.\"corten.test\"==yes"]))
        .lines()
        .eq([copy.as_str()]));
    assert_eq!(digest_of(&copy), before);
    ok_logged(
        &d,
        "ctr images label (remove)",
        d.ctr(&["images", "label", &copy, "corten.test="]),
    );
    assert_eq!(
        ok(d.ctr(&["images", "ls", "-q", "labels.\"corten.test\"==yes"])).trim(),
        ""
    );
    assert_eq!(digest_of(&copy), before);

    ok_logged(
        &d,
        "ctr images rm --sync",
        d.ctr(&["images", "rm", "--sync", reference, &copy]),
    );
    assert_eq!(ok(d.ctr(&["images", "ls", "-q"])).trim(), "");
    assert_collected(&d, snapshotter);
}

#[test]
fn pull_mount_tag_remove_overlayfs() {
    busybox_lifecycle("overlayfs");
}

#[test]
fn pull_mount_tag_remove_native() {
    busybox_lifecycle("native");
}

/// Four layers with whiteouts, an opaque directory and links, unpacked on
/// each snapshotter: the mounted tree is what the layers add up to.
fn multilayer(snapshotter: &str) {
    const MIB: usize = 8;
    let registry = Registry::start();
    let image: PushedImage = registry.push_multilayer("test/layers", "v1", MIB);
    assert_eq!(image.layers.len(), 4);
    // `ctr snapshots view` makes an unlabelled view: like containerd, any
    // collection (and every deletion, such as ctr dropping its pull lease,
    // schedules one) may take it. Only sync deletes collect here.
    let d = Daemon::start_with(NO_AUTO_GC);
    ok_logged(&d, "ctr images pull", pull(&d, snapshotter, &image.reference));

    let snapshots = ok(d.ctr(&["snapshots", "--snapshotter", snapshotter, "ls"]));
    assert_eq!(
        rows(&snapshots).len(),
        4,
        "one committed snapshot per layer:\n{snapshots}"
    );
    let chain_id = image.chain_id();
    assert!(
        snapshots.contains(&chain_id),
        "the top is named by chain ID:\n{snapshots}"
    );

    // Through the Snapshots service: `ctr images mount` is covered by the
    // busybox tests, and this checks the unpacked tree on its own.
    let mount = ImageMount::view(&d, snapshotter, &chain_id, "rootfs");
    assert!(mount.path("bin/busybox").is_file());
    let len = registry::multilayer_file_len(MIB);
    let last = registry::MULTILAYER_DATA_FILES - 1;
    for i in 0..last {
        let file = mount.path(&format!("data/file-{i}"));
        let meta = std::fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(meta.len() as usize, len, "{}", file.display());
    }
    assert_eq!(
        std::fs::read(mount.path("data/file-0")).unwrap(),
        registry::pseudo_random(0, len),
        "data/file-0 differs from what was pushed"
    );
    // Whited out: a file, a small file, a whole directory.
    for gone in [format!("data/file-{last}"), "data/doomed".into(), "gone".into()] {
        assert!(
            std::fs::symlink_metadata(mount.path(&gone)).is_err(),
            "{gone} should have been deleted by a whiteout"
        );
    }
    let mut data: Vec<String> = std::fs::read_dir(mount.path("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    data.sort();
    let want: Vec<String> = (0..last).map(|i| format!("data/file-{i}")).collect();
    assert_eq!(
        data.iter().map(|n| format!("data/{n}")).collect::<Vec<_>>(),
        want,
        "no whiteout files may show"
    );
    // The opaque directory has only what its own layer put there.
    let opaque: Vec<String> = std::fs::read_dir(mount.path("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(opaque, ["new"]);
    assert_eq!(std::fs::read_to_string(mount.path("opaque/new")).unwrap(), "new\n");
    assert_eq!(std::fs::read_to_string(mount.path("etc/motd")).unwrap(), "layer 3\n");
    // Links.
    let target = std::fs::metadata(mount.path("links/target")).unwrap();
    let hard = std::fs::metadata(mount.path("links/hard")).unwrap();
    assert_eq!(
        (hard.dev(), hard.ino()),
        (target.dev(), target.ino()),
        "links/hard is a hardlink"
    );
    assert_eq!(target.nlink(), 2);
    assert_eq!(std::fs::read_to_string(mount.path("links/hard")).unwrap(), "linked\n");
    assert_eq!(
        std::fs::read_link(mount.path("links/soft")).unwrap(),
        Path::new("target")
    );
    assert_eq!(
        std::fs::read_link(mount.path("links/abs")).unwrap(),
        Path::new("/bin/busybox")
    );
    mount.unmount();

    ok_logged(
        &d,
        "ctr images rm --sync",
        d.ctr(&["images", "rm", "--sync", &image.reference]),
    );
    assert_collected(&d, snapshotter);
}

#[test]
fn multilayer_with_deletions_overlayfs() {
    multilayer("overlayfs");
}

#[test]
fn multilayer_with_deletions_native() {
    multilayer("native");
}

/// An index pulls only the host's platform unless asked otherwise.
#[test]
fn index_selects_the_platform() {
    let registry = Registry::start();
    let image = registry.push_busybox_index("test/multi", "v1");
    let (amd64, arm64) = (&image.platforms[0], &image.platforms[1]);
    let d = Daemon::start();
    ok_logged(&d, "ctr images pull", pull(&d, "overlayfs", &image.reference));
    let ls = ok(d.ctr(&["images", "ls"]));
    assert!(
        ls.contains(&image.manifest_digest) && ls.contains(registry::OCI_INDEX),
        "{ls}"
    );
    assert!(ls.contains("linux/amd64,linux/arm64"), "{ls}");
    let content = ok(d.ctr(&["content", "ls", "-q"]));
    assert!(content.contains(&amd64.1) && content.contains(&amd64.2), "{content}");
    assert!(
        !content.contains(&arm64.1) && !content.contains(&arm64.2),
        "arm64's manifest or config was fetched:\n{content}"
    );

    // Asked for arm64 too: its manifest and config come; the layer is shared.
    ok_logged(
        &d,
        "ctr images pull --platform linux/arm64",
        d.ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--platform",
            "linux/arm64",
            &image.reference,
        ]),
    );
    let content = ok(d.ctr(&["content", "ls", "-q"]));
    assert!(content.contains(&arm64.1) && content.contains(&arm64.2), "{content}");
    ok_logged(
        &d,
        "ctr images rm --sync",
        d.ctr(&["images", "rm", "--sync", &image.reference]),
    );
    assert_collected(&d, "overlayfs");
}

/// Each bad fixture fails the pull as it fails against containerd 1.6.
#[test]
fn bad_images_are_refused() {
    let registry = Registry::start();
    let d = Daemon::start();

    // The layer is gone from the registry: the fetch fails, no image.
    let missing = registry.push_bad("bad/missing", "v1", BadImage::MissingBlob);
    let err = fails(pull(&d, "overlayfs", &missing.reference));
    assert!(err.contains("not found"), "{err}\ncortend log:\n{}", d.log());

    // The descriptor's size is one byte short: the Content service refuses
    // the commit (containerd: "failed size validation: N != N-1: failed
    // precondition").
    let sized = registry.push_bad("bad/size", "v1", BadImage::WrongSize);
    let err = fails(pull(&d, "overlayfs", &sized.reference));
    assert!(
        err.contains("failed precondition") && err.contains(&sized.layers[0].0),
        "{err}\ncortend log:\n{}",
        d.log()
    );
    assert!(!ok(d.ctr(&["content", "ls", "-q"])).contains(&sized.layers[0].0));
    let images = ok(d.ctr(&["images", "ls", "-q"]));
    assert_eq!(images.trim(), "", "a failed fetch records no image");

    // Another layer than the config's diff_ids promise: the Diff service's
    // answer names the digest it really applied, and ctr refuses it. ctr
    // 1.6 records the image before unpacking, so it stays, not unpacked.
    let foreign = registry.push_bad("bad/foreign", "v1", BadImage::ForeignLayer);
    let err = fails(pull(&d, "overlayfs", &foreign.reference));
    assert!(
        err.contains("wrong diff id calculated on extraction"),
        "{err}\ncortend log:\n{}",
        d.log()
    );
    let check = ok(d.ctr(&["images", "check"]));
    let row = rows(&check)
        .into_iter()
        .find(|l| l.starts_with(&foreign.reference))
        .unwrap_or_else(|| panic!("{check}"));
    assert!(row.trim_end().ends_with("false"), "unpacked:\n{check}");
    let snapshots = ok(d.ctr(&["snapshots", "ls"]));
    assert!(rows(&snapshots).is_empty(), "a snapshot was committed:\n{snapshots}");

    ok(d.ctr(&["images", "rm", "--sync", &foreign.reference]));
    assert_collected(&d, "overlayfs");
}
