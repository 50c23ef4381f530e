//! `corten images ...` against a real cortend, with images from a real
//! local registry pulled by the real `ctr`, and archives passed between
//! corten and ctr both ways: what either stores, the other can use.

use std::{
    collections::BTreeMap,
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use corten_tests::{
    bin,
    registry::{self, PushedImage, Registry},
    Daemon,
};
use serde_json::{json, Value};

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

fn corten(d: &Daemon, args: &[&str]) -> String {
    ok_logged(d, &format!("corten {}", args.join(" ")), d.corten(args))
}

/// Runs `corten` with `input` on its stdin.
fn corten_with_input(d: &Daemon, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(bin("corten"))
        .arg("--address")
        .arg(&d.socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corten");
    let mut stdin = child.stdin.take().expect("corten stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for corten");
    let _ = writer.join();
    out
}

fn ctr(d: &Daemon, args: &[&str]) -> String {
    ok_logged(d, &format!("ctr {}", args.join(" ")), d.ctr(args))
}

fn pull(d: &Daemon, reference: &str) {
    ctr(d, &["images", "pull", "--plain-http", reference]);
}

/// The table rows of a listing, without its header.
fn rows(listing: &str) -> Vec<&str> {
    listing.lines().skip(1).filter(|l| !l.trim().is_empty()).collect()
}

fn row<'a>(listing: &'a str, name: &str) -> &'a str {
    rows(listing)
        .into_iter()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not listed:\n{listing}"))
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

fn is_mountpoint(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(path))
}

/// A directory something is mounted on; unmounted (lazily) on drop if the
/// test did not get that far.
struct Target(PathBuf);

impl Target {
    fn new(d: &Daemon, name: &str) -> Target {
        let path = d.dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        Target(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        while is_mountpoint(&self.0) {
            if !Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success())
            {
                break;
            }
        }
    }
}

/// The busybox root as the fixture layer builds it.
fn assert_busybox_root(root: &Path) {
    let busybox = std::fs::metadata(root.join("bin/busybox")).unwrap_or_else(|e| panic!("bin/busybox: {e}"));
    assert!(busybox.is_file());
    assert_eq!(busybox.mode() & 0o7777, 0o755);
    assert_eq!(busybox.len(), std::fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(std::fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert!(std::fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .starts_with("root:x:0:0:"));
}

/// `ctr images mount` (the view and lease it names by path), then `ctr
/// images unmount --rm`: the image is unpacked as ctr expects.
fn assert_ctr_mounts(d: &Daemon, reference: &str, name: &str) {
    let target = Target::new(d, name);
    let out = ctr(d, &["images", "mount", reference, target.path()]);
    assert!(out.lines().any(|l| l.trim() == target.path()), "{out}");
    assert_busybox_root(&target.0);
    ctr(d, &["images", "unmount", "--rm", target.path()]);
    assert!(!is_mountpoint(&target.0));
}

/// Content, snapshots and leases all gone: what an `images rm --sync` of
/// the last image leaves.
fn assert_collected(d: &Daemon) {
    let content = ctr(d, &["content", "ls", "-q"]);
    assert_eq!(content.trim(), "", "content left after images rm --sync\n{}", d.log());
    for snapshotter in ["overlayfs", "native"] {
        let snapshots = ctr(d, &["snapshots", "--snapshotter", snapshotter, "ls"]);
        assert!(
            rows(&snapshots).is_empty(),
            "{snapshotter} snapshots left:\n{snapshots}"
        );
    }
    assert_eq!(ctr(d, &["leases", "ls", "-q"]).trim(), "", "leases left");
}

/// Labels of stored blobs, by digest, from `corten content ls --format json`.
fn blob_labels(d: &Daemon) -> BTreeMap<String, BTreeMap<String, String>> {
    let listing: Value = serde_json::from_str(&corten(d, &["content", "ls", "--format", "json"])).unwrap();
    listing
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let labels = b["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            (b["digest"].as_str().unwrap().to_string(), labels)
        })
        .collect()
}

/// The labels containerd's clients leave on an unpacked one-layer image:
/// the manifest names its config and layer, the layer has its diff ID and
/// the config keeps the snapshot named by the chain ID.
fn assert_unpacked_labels(d: &Daemon, manifest: &str, config: &str, layer: (&str, &str), snapshotter: &str) {
    let labels = blob_labels(d);
    let of = |digest: &str| {
        labels
            .get(digest)
            .unwrap_or_else(|| panic!("{digest} not stored: {labels:#?}"))
    };
    let m = of(manifest);
    assert_eq!(m["containerd.io/gc.ref.content.config"], config, "{m:?}");
    assert_eq!(m["containerd.io/gc.ref.content.l.0"], layer.0, "{m:?}");
    assert_eq!(of(layer.0)["containerd.io/uncompressed"], layer.1);
    // One layer: its chain ID is its diff ID.
    assert_eq!(
        of(config)[&format!("containerd.io/gc.ref.snapshot.{snapshotter}")],
        layer.1
    );
    let snapshots = ctr(d, &["snapshots", "--snapshotter", snapshotter, "ls"]);
    assert_eq!(rows(&snapshots).len(), 1, "{snapshots}");
    assert!(snapshots.contains(layer.1), "named by chain ID:\n{snapshots}");
}

/// `corten images check`'s row for `name`: complete and unpacked.
fn assert_checked(d: &Daemon, name: &str, complete: &str) {
    let check = corten(d, &["images", "check"]);
    let line = row(&check, name);
    assert!(line.contains(complete), "{check}");
    assert!(line.trim_end().ends_with("true"), "not unpacked:\n{check}");
    let ctr_check = ctr(d, &["images", "check"]);
    let line = row(&ctr_check, name);
    assert!(line.contains(complete), "{ctr_check}");
    assert!(line.trim_end().ends_with("true"), "ctr: not unpacked:\n{ctr_check}");
}

/// Paths in a tar archive, and the bytes of the small JSON members.
fn archive_members(path: &Path) -> (Vec<String>, BTreeMap<String, Value>) {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut paths = Vec::new();
    let mut documents = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if ["index.json", "manifest.json", "oci-layout"].contains(&name.as_str()) {
            let value: Value = serde_json::from_reader(&mut entry).unwrap();
            documents.insert(name.clone(), value);
        }
        paths.push(name);
    }
    (paths, documents)
}

fn manifest_and_config_sizes(registry: &Registry, image: &PushedImage, name: &str) -> (u64, u64) {
    let manifest = registry.get(
        &format!("/v2/{name}/manifests/{}", image.manifest_digest),
        registry::OCI_MANIFEST,
    );
    let config = registry.get(&format!("/v2/{name}/blobs/{}", image.config_digest), "*/*");
    (manifest.body.len() as u64, config.body.len() as u64)
}

/// A registry holding busybox as `test/busybox:latest` and a daemon into
/// which ctr pulled it; the registry must outlive the test's use of it.
fn busybox_pulled() -> (Registry, PushedImage, Daemon) {
    let registry = Registry::start();
    let image = registry.push_busybox("test/busybox", "latest");
    let d = Daemon::start();
    pull(&d, &image.reference);
    (registry, image, d)
}

/// Asserts that `image`, imported from an archive, is stored as a pull by
/// ctr leaves it: complete, unpacked into overlayfs, and mountable by ctr.
fn assert_imported_as_pulled(d: &Daemon, image: &PushedImage) {
    let reference = image.reference.as_str();
    assert_checked(d, reference, "complete (2/2)");
    let (layer, diff_id, _) = &image.layers[0];
    assert_unpacked_labels(
        d,
        &image.manifest_digest,
        &image.config_digest,
        (layer, diff_id),
        "overlayfs",
    );
    assert_ctr_mounts(d, reference, "ctr-mount");
}

/// ls, tag, check, inspect, export, rm --sync, import: an image pulled by
/// ctr goes out through `corten images export` and comes back through
/// `corten images import`, as ctr would have stored it.
#[test]
fn list_tag_export_remove_import() {
    let registry = Registry::start();
    let image = registry.push_busybox("test/busybox", "latest");
    let multi = registry.push_busybox_index("test/multi", "v1");
    let d = Daemon::start();
    let reference = image.reference.as_str();
    pull(&d, reference);
    pull(&d, &multi.reference);
    let (layer_digest, diff_id, layer_size) = image.layers[0].clone();

    // ls: as ctr shows it, with the size of everything this platform needs.
    let ls = corten(&d, &["images", "ls"]);
    assert!(
        ls.starts_with("REF ")
            && ls.lines().next().unwrap().split_whitespace().collect::<Vec<_>>()
                == ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"],
        "{ls}"
    );
    let line = row(&ls, reference);
    assert!(line.contains(&image.manifest_digest), "{line}");
    assert!(line.contains(registry::OCI_MANIFEST), "{line}");
    assert!(line.contains(" linux/amd64 "), "{line}");
    let line = row(&ls, &multi.reference);
    assert!(
        line.contains(&multi.manifest_digest) && line.contains(registry::OCI_INDEX),
        "{line}"
    );
    assert!(line.contains("linux/amd64,linux/arm64"), "{line}");
    let json: Value = serde_json::from_str(&corten(&d, &["images", "ls", "--format", "json"])).unwrap();
    let listed = json
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == reference)
        .unwrap_or_else(|| panic!("{json:#}"));
    let (manifest_size, config_size) = manifest_and_config_sizes(&registry, &image, "test/busybox");
    assert_eq!(
        listed["size"],
        json!(manifest_size + config_size + layer_size),
        "{listed:#}"
    );
    assert_eq!(listed["digest"], image.manifest_digest.as_str());
    assert_eq!(listed["platforms"], json!(["linux/amd64"]));
    assert_eq!(
        sorted_lines(&corten(&d, &["images", "ls", "-q"])),
        sorted_lines(&ctr(&d, &["images", "ls", "-q"]))
    );

    // tag: a second name for the same content, refused when taken unless forced.
    let copy = format!("{}/test/busybox:copy", registry.host());
    assert_eq!(corten(&d, &["images", "tag", reference, &copy]).trim(), copy);
    let ctr_ls = ctr(&d, &["images", "ls"]);
    assert!(row(&ctr_ls, &copy).contains(&image.manifest_digest), "{ctr_ls}");
    let err = d.corten(&["images", "tag", &multi.reference, &copy]);
    assert!(!err.status.success(), "tag over an existing name succeeded");
    assert!(String::from_utf8_lossy(&err.stderr).contains("already exists"));
    corten(&d, &["images", "tag", "--force", &multi.reference, &copy]);
    assert!(row(&ctr(&d, &["images", "ls"]), &copy).contains(&multi.manifest_digest));
    corten(&d, &["images", "tag", "--force", reference, &copy]);

    // check: complete and unpacked, as ctr says.
    assert_checked(&d, reference, "complete (2/2)");
    assert_checked(&d, &multi.reference, "complete (2/2)");
    assert_eq!(
        sorted_lines(&corten(&d, &["images", "check", "-q"])),
        sorted_lines(&ctr(&d, &["images", "check", "-q"]))
    );

    // inspect: the record and the documents below it.
    let text = corten(&d, &["images", "inspect", reference]);
    assert!(
        text.contains(&image.manifest_digest) && text.contains(&image.config_digest),
        "{text}"
    );
    assert!(text.contains("\"diff_ids\""), "{text}");
    let info: Value =
        serde_json::from_str(&corten(&d, &["images", "info", &multi.reference, "--format", "json"])).unwrap();
    assert_eq!(info["image"]["name"], multi.reference.as_str());
    let kinds: Vec<&str> = info["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|doc| doc["kind"].as_str().unwrap())
        .collect();
    // The index, then each platform's manifest and config; arm64's were never pulled.
    assert_eq!(kinds, ["index", "manifest", "config", "manifest"], "{info:#}");
    assert_eq!(
        info["documents"][2]["content"]["rootfs"]["diff_ids"][0],
        diff_id.as_str()
    );
    assert_eq!(info["documents"][3]["content"], Value::Null);

    // export: an OCI layout with every name and this platform's blobs.
    let archive = d.dir.path().join("corten-export.tar");
    let archive_path = archive.to_str().unwrap();
    corten(
        &d,
        &["images", "export", archive_path, reference, &copy, &multi.reference],
    );
    let (paths, docs) = archive_members(&archive);
    assert_eq!(docs["oci-layout"]["imageLayoutVersion"], "1.0.0");
    let names: Vec<&str> = docs["index.json"]["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["annotations"]["io.containerd.image.name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [reference, copy.as_str(), multi.reference.as_str()]);
    assert_eq!(
        docs["index.json"]["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    for digest in [
        &image.manifest_digest,
        &image.config_digest,
        &layer_digest,
        &multi.manifest_digest,
    ] {
        assert!(paths.contains(&blob(digest)), "{digest} not exported: {paths:?}");
    }
    assert!(!paths.contains(&blob(&multi.platforms[1].1)), "arm64 was never pulled");
    let docker = docs["manifest.json"].as_array().unwrap();
    assert_eq!(docker.len(), 1, "one manifest for all three names: {docker:?}");
    assert_eq!(docker[0]["Config"], blob(&image.config_digest).as_str());
    assert_eq!(docker[0]["Layers"], json!([blob(&layer_digest)]));
    assert_eq!(docker[0]["RepoTags"].as_array().unwrap().len(), 3);

    // rm --sync: everything goes, then the archive brings it all back.
    let removed = corten(&d, &["images", "rm", "--sync", reference, &copy, &multi.reference]);
    assert_eq!(removed.lines().count(), 3, "{removed}");
    let missing = d.corten(&["images", "rm", "no/such:image"]);
    assert!(
        missing.status.success(),
        "a missing image is only a warning, as with ctr"
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("image not found"));
    assert_eq!(corten(&d, &["images", "ls", "-q"]).trim(), "");
    assert_collected(&d);

    let out = corten(&d, &["images", "import", archive_path]);
    assert_eq!(out.matches("unpacking ").count(), 3, "{out}");
    assert_eq!(out.matches("...done").count(), 3, "{out}");
    assert_eq!(
        sorted_lines(&ctr(&d, &["images", "ls", "-q"])),
        sorted_lines(&format!("{reference}\n{copy}\n{}\n", multi.reference))
    );
    assert_eq!(
        ctr(&d, &["leases", "ls", "-q"]).trim(),
        "",
        "the import's lease is gone"
    );
    assert_checked(&d, reference, "complete (2/2)");
    assert_checked(&d, &multi.reference, "complete (2/2)");
    assert_unpacked_labels(
        &d,
        &image.manifest_digest,
        &image.config_digest,
        (&layer_digest, &diff_id),
        "overlayfs",
    );
    let labels = blob_labels(&d);
    let index_labels = &labels[&multi.manifest_digest];
    assert_eq!(index_labels["containerd.io/gc.ref.content.m.0"], multi.platforms[0].1);
    assert!(
        !index_labels.values().any(|v| *v == multi.platforms[1].1),
        "{index_labels:?}"
    );
    assert_ctr_mounts(&d, reference, "ctr-mount");

    // What the images hold survives a collection; removing them frees it all.
    corten(&d, &["images", "rm", "--sync", &copy]);
    assert_checked(&d, reference, "complete (2/2)");
    corten(&d, &["images", "rm", "--sync", reference, &multi.reference]);
    assert_collected(&d);
}

/// An archive written by `ctr images export` imports with `corten images
/// import` (from stdin, too), unpacked as ctr would have it.
#[test]
fn ctr_export_imports_with_corten() {
    let (_registry, image, d) = busybox_pulled();
    let reference = image.reference.as_str();
    let archive = d.dir.path().join("ctr-export.tar");
    ctr(&d, &["images", "export", archive.to_str().unwrap(), reference]);
    ctr(&d, &["images", "rm", "--sync", reference]);
    assert_collected(&d);

    let out = corten(&d, &["images", "import", archive.to_str().unwrap()]);
    assert!(
        out.contains(&format!("unpacking {reference} ({})...done", image.manifest_digest)),
        "{out}"
    );
    assert_imported_as_pulled(&d, &image);
    corten(&d, &["images", "rm", "--sync", reference]);
    assert_collected(&d);

    // Gzipped, from stdin, without unpacking; then into the native snapshotter.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&std::fs::read(&archive).unwrap()).unwrap();
    let bytes = gz.finish().unwrap();
    let out = corten_with_input(&d, &["images", "import", "--no-unpack", "-"], &bytes);
    let out = ok_logged(&d, "corten images import -", out);
    assert_eq!(out.trim(), format!("{reference} ({})", image.manifest_digest));
    let check = corten(&d, &["images", "check"]);
    assert!(
        row(&check, reference).trim_end().ends_with("false"),
        "unpacked:\n{check}"
    );
    corten(
        &d,
        &["images", "import", "--snapshotter", "native", archive.to_str().unwrap()],
    );
    let check = corten(&d, &["images", "check", "--snapshotter", "native"]);
    assert!(row(&check, reference).trim_end().ends_with("true"), "{check}");
    corten(&d, &["images", "rm", "--sync", reference]);
    assert_collected(&d);
}

/// An archive written by `corten images export` imports with `ctr images
/// import`.
#[test]
fn corten_export_imports_with_ctr() {
    let (_registry, image, d) = busybox_pulled();
    let reference = image.reference.as_str();
    let archive = d.dir.path().join("corten-export.tar");
    corten(&d, &["images", "export", archive.to_str().unwrap(), reference]);
    corten(&d, &["images", "rm", "--sync", reference]);
    assert_collected(&d);

    ctr(&d, &["images", "import", archive.to_str().unwrap()]);
    assert_imported_as_pulled(&d, &image);
    ctr(&d, &["images", "rm", "--sync", reference]);
    assert_collected(&d);
}

/// `corten images mount` / `unmount --rm` on both snapshotters: the root
/// is there while mounted, and afterwards nothing but the image's own
/// snapshot is left.
#[test]
fn mount_and_unmount() {
    // Stored without unpacking: mount unpacks first.
    let (_registry, image, d) = busybox_pulled();
    let reference = image.reference.as_str();
    let archive = d.dir.path().join("export.tar");
    corten(&d, &["images", "export", archive.to_str().unwrap(), reference]);
    corten(&d, &["images", "rm", "--sync", reference]);
    corten(&d, &["images", "import", "--no-unpack", archive.to_str().unwrap()]);
    let chain = image.chain_id();

    for snapshotter in ["overlayfs", "native"] {
        let target = Target::new(&d, &format!("rootfs-{snapshotter}"));
        let out = corten(
            &d,
            &[
                "images",
                "mount",
                "--snapshotter",
                snapshotter,
                reference,
                target.path(),
            ],
        );
        assert_eq!(out, format!("{chain}\n{}\n", target.path()));
        assert!(is_mountpoint(&target.0));
        assert_busybox_root(&target.0);
        // Read-only unless --rw.
        let err = std::fs::write(target.0.join("tmp/x"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
        let leases = ctr(&d, &["leases", "ls", "-q"]);
        assert_eq!(leases.trim(), target.path(), "the mount's lease is named by its path");
        let snapshots = ctr(&d, &["snapshots", "--snapshotter", snapshotter, "ls"]);
        assert!(row(&snapshots, target.path()).contains("View"), "{snapshots}");

        let out = corten(
            &d,
            &["images", "unmount", "--snapshotter", snapshotter, "--rm", target.path()],
        );
        assert_eq!(out.trim(), target.path());
        assert!(!is_mountpoint(&target.0));
        assert_eq!(ctr(&d, &["leases", "ls", "-q"]).trim(), "", "lease left");
        let snapshots = ctr(&d, &["snapshots", "--snapshotter", snapshotter, "ls"]);
        assert_eq!(
            rows(&snapshots).len(),
            1,
            "only the image's snapshot stays:\n{snapshots}"
        );
        assert!(snapshots.contains(&chain), "{snapshots}");
    }

    // --rw: a writable snapshot; unmounted without --rm it stays to mount again.
    let target = Target::new(&d, "rw");
    corten(&d, &["images", "mount", "--rw", reference, target.path()]);
    std::fs::write(target.0.join("tmp/x"), "written").unwrap();
    corten(&d, &["images", "unmount", target.path()]);
    assert!(!is_mountpoint(&target.0));
    corten(&d, &["images", "mount", "--rw", reference, target.path()]);
    assert_eq!(std::fs::read_to_string(target.0.join("tmp/x")).unwrap(), "written");
    // ctr unmounts what corten mounted, lease and snapshot included.
    ctr(&d, &["images", "unmount", "--rm", target.path()]);
    assert_eq!(ctr(&d, &["leases", "ls", "-q"]).trim(), "");
    assert_eq!(rows(&ctr(&d, &["snapshots", "ls"])).len(), 1);

    let missing = d.corten(&["images", "mount", "no/such:image", target.path()]);
    assert!(!missing.status.success());
    assert_eq!(
        ctr(&d, &["leases", "ls", "-q"]).trim(),
        "",
        "a failed mount leaves no lease"
    );

    corten(&d, &["images", "rm", "--sync", reference]);
    assert_collected(&d);
}

/// A `docker save` archive as docker writes it (manifest.json, config and
/// layer tars by id, `repositories`): an uncompressed layer, a gzipped
/// one, and one linked to another's, as docker links shared layers.
#[test]
fn docker_save_archive_imports() {
    let layer = registry::busybox_layer();
    let config = registry::config_json("amd64", std::slice::from_ref(&layer.diff_id));
    let mut other: Value = serde_json::from_slice(&config).unwrap();
    other["author"] = json!("corten-tests");
    let other = serde_json::to_vec(&other).unwrap();
    let hex = |bytes: &[u8]| registry::sha256_digest(bytes).trim_start_matches("sha256:").to_string();
    let manifest = json!([
        {"Config": format!("{}.json", hex(&config)), "RepoTags": ["corten/save:plain"], "Layers": ["aaa/layer.tar"]},
        {"Config": format!("{}.json", hex(&other)), "RepoTags": ["localhost:5000/save:gzip"], "Layers": ["bbb/layer.tar"]},
        {"Config": format!("{}.json", hex(&config)), "RepoTags": ["corten/save:linked", "save"], "Layers": ["ccc/layer.tar"]},
    ]);

    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, data).unwrap();
    };
    add(&format!("{}.json", hex(&config)), &config);
    add(&format!("{}.json", hex(&other)), &other);
    add("aaa/VERSION", b"1.0");
    add("aaa/layer.tar", &layer.tar);
    add("bbb/layer.tar", &layer.blob);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    add("repositories", br#"{"corten/save":{"plain":"aaa"}}"#);
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder
        .append_link(&mut header, "ccc/layer.tar", "../aaa/layer.tar")
        .unwrap();
    let bytes = builder.into_inner().unwrap();

    let d = Daemon::start();
    let archive = d.dir.path().join("docker-save.tar");
    std::fs::write(&archive, &bytes).unwrap();
    let out = corten(&d, &["images", "import", archive.to_str().unwrap()]);
    assert_eq!(out.matches("...done").count(), 4, "{out}");
    let names = [
        "docker.io/corten/save:plain",
        "localhost:5000/save:gzip",
        "docker.io/corten/save:linked",
        "docker.io/library/save:latest",
    ];
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(sorted_lines(&ctr(&d, &["images", "ls", "-q"])), want);
    let ls = ctr(&d, &["images", "ls"]);
    for name in names {
        assert!(
            row(&ls, name).contains("application/vnd.docker.distribution.manifest.v2+json"),
            "{ls}"
        );
        assert_checked(&d, name, "complete (2/2)");
    }
    // Same config and layer path behind the link: one manifest.
    let digest_of = |name: &str| row(&ls, name).split_whitespace().nth(2).unwrap().to_string();
    assert_eq!(digest_of(names[0]), digest_of(names[2]));
    assert_ne!(digest_of(names[0]), digest_of(names[1]));

    let snapshots = ctr(&d, &["snapshots", "ls"]);
    assert_eq!(
        rows(&snapshots).len(),
        1,
        "both layers unpack to one snapshot:\n{snapshots}"
    );
    assert!(snapshots.contains(&layer.diff_id));
    let labels = blob_labels(&d);
    // The plain layer unpacked first; the gzipped one found its snapshot there.
    assert_eq!(labels[&layer.diff_id]["containerd.io/uncompressed"], layer.diff_id);
    assert_eq!(
        labels[&registry::sha256_digest(&config)]["containerd.io/gc.ref.snapshot.overlayfs"],
        layer.diff_id
    );
    let inspect: Value =
        serde_json::from_str(&corten(&d, &["images", "inspect", "--format", "json", names[1]])).unwrap();
    assert_eq!(
        inspect["documents"][0]["content"]["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let inspect: Value =
        serde_json::from_str(&corten(&d, &["images", "inspect", "--format", "json", names[0]])).unwrap();
    assert_eq!(
        inspect["documents"][0]["content"]["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar"
    );
    assert_ctr_mounts(&d, names[1], "gzip");

    let mut all = vec!["images", "rm", "--sync"];
    all.extend(names);
    corten(&d, &all);
    assert_collected(&d);

    // Something that is neither layout is refused with a reason.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(2);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, "hello.txt", &b"hi"[..]).unwrap();
    std::fs::write(&archive, builder.into_inner().unwrap()).unwrap();
    let err = d.corten(&["images", "import", archive.to_str().unwrap()]);
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("unrecognized archive"),
        "{err:?}"
    );
    assert_eq!(
        ctr(&d, &["leases", "ls", "-q"]).trim(),
        "",
        "the failed import's lease is gone"
    );
}
