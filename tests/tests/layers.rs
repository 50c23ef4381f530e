//! One multi-layer image (deletions, opaque directories, hardlinks,
//! symlinks, special modes, xattrs, devices) applied through the daemon's
//! Diff service onto overlayfs and onto native: both trees must be identical.

use std::{
    collections::BTreeMap,
    io::Write,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::Path,
    process::Command,
};

use corten_api::containerd::{
    services::{
        content::v1::{content_client::ContentClient, WriteAction, WriteContentRequest},
        diff::v1::{diff_client::DiffClient, ApplyRequest},
        leases::v1::{leases_client::LeasesClient, CreateRequest},
        snapshots::v1::{
            snapshots_client::SnapshotsClient, CommitSnapshotRequest, PrepareSnapshotRequest, ViewSnapshotRequest,
        },
    },
    types::{Descriptor, Mount},
};
use corten_tests::Daemon;
use sha2::Digest as _;
use tonic::transport::Channel;

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Owned(&'a str, u32, u64, u64, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
    CharDev(&'a str, u32, u32),
    Xattr(&'a str, &'a str, &'a [u8]),
}

fn layer(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for entry in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match *entry {
            Entry::Dir(path, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(mode);
                h.set_size(0);
                builder.append_data(&mut h, path, &[][..]).unwrap();
            }
            Entry::File(path, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(mode);
                h.set_size(data.len() as u64);
                builder.append_data(&mut h, path, data).unwrap();
            }
            Entry::Owned(path, mode, uid, gid, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(mode);
                h.set_uid(uid);
                h.set_gid(gid);
                h.set_size(data.len() as u64);
                builder.append_data(&mut h, path, data).unwrap();
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                builder.append_link(&mut h, path, target).unwrap();
            }
            Entry::Hardlink(path, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                builder.append_link(&mut h, path, target).unwrap();
            }
            Entry::Fifo(path) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o600);
                h.set_size(0);
                builder.append_data(&mut h, path, &[][..]).unwrap();
            }
            Entry::CharDev(path, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_size(0);
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
                builder.append_data(&mut h, path, &[][..]).unwrap();
            }
            Entry::Xattr(path, name, value) => {
                let key = format!("SCHILY.xattr.{name}");
                builder.append_pax_extensions([(key.as_str(), value)]).unwrap();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(5);
                builder.append_data(&mut h, path, &b"xattr"[..]).unwrap();
            }
        }
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn image() -> Vec<Vec<u8>> {
    use Entry::*;
    vec![
        layer(&[
            Dir("bin", 0o755),
            File("bin/busybox", 0o4755, b"#!busybox"),
            Symlink("bin/sh", "busybox"),
            Hardlink("bin/ls", "bin/busybox"),
            Dir("etc", 0o755),
            File("etc/passwd", 0o644, b"root:x:0:0"),
            File("etc/old.conf", 0o600, b"old"),
            Dir("tmp", 0o1777),
            Dir("data", 0o750),
            File("data/keep", 0o644, b"keep"),
            File("data/gone", 0o644, b"gone"),
            Owned("data/owned", 0o640, 1000, 1000, b"mine"),
            Dir("dev", 0o755),
            CharDev("dev/null", 1, 3),
            Fifo("data/pipe"),
            Xattr("data/tagged", "user.corten", b"yes"),
        ]),
        layer(&[
            // Deletes one file, and replaces everything in etc.
            File("data/.wh.gone", 0o644, b""),
            Dir("etc", 0o755),
            File("etc/.wh..wh..opq", 0o644, b""),
            File("etc/hosts", 0o644, b"127.0.0.1 localhost"),
            File("data/keep", 0o644, b"changed"),
        ]),
        layer(&[
            Dir("opt", 0o755),
            Dir("opt/app", 0o700),
            File("opt/app/run", 0o2755, b"run"),
            Hardlink("opt/app/run2", "opt/app/run"),
            Symlink("opt/abs", "/etc/hosts"),
            File("bin/.wh.sh", 0o644, b""),
        ]),
    ]
}

/// Every request runs under one lease, as containerd's clients work: what
/// it creates cannot be collected half-built.
fn namespaced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert("containerd-namespace", "layers".parse().unwrap());
    metadata.insert("containerd-lease", LEASE.parse().unwrap());
    request
}

const LEASE: &str = "layers-test";

async fn create_lease(channel: &Channel) {
    let mut leases = LeasesClient::new(channel.clone());
    let mut request = tonic::Request::new(CreateRequest {
        id: LEASE.into(),
        labels: Default::default(),
    });
    request
        .metadata_mut()
        .insert("containerd-namespace", "layers".parse().unwrap());
    leases.create(request).await.unwrap();
}

async fn channel(d: &Daemon) -> Channel {
    corten_tests::grpc::channel(&d.socket).await
}

async fn ingest(channel: &Channel, blob: &[u8]) -> Descriptor {
    let digest = format!("sha256:{}", hex(&sha2::Sha256::digest(blob)));
    let message = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: format!("layer-{digest}"),
        total: blob.len() as i64,
        expected: digest.clone(),
        data: blob.to_vec(),
        labels: [("containerd.io/gc.root".to_string(), "test".to_string())].into(),
        ..Default::default()
    };
    let mut client = ContentClient::new(channel.clone());
    let mut responses = client
        .write(namespaced(tokio_stream::iter([message])))
        .await
        .unwrap()
        .into_inner();
    while responses.message().await.unwrap().is_some() {}
    Descriptor {
        media_type: GZIP_LAYER.into(),
        digest,
        size: blob.len() as i64,
        annotations: Default::default(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Applies the layers in order as a chain of committed snapshots; returns
/// the mounts of a view of the top.
async fn unpack(channel: &Channel, snapshotter: &str, layers: &[Descriptor]) -> Vec<Mount> {
    let mut snapshots = SnapshotsClient::new(channel.clone());
    let mut diff = DiffClient::new(channel.clone());
    let mut parent = String::new();
    for (i, layer) in layers.iter().enumerate() {
        let key = format!("extract-{i}");
        let prepare = PrepareSnapshotRequest {
            snapshotter: snapshotter.into(),
            key: key.clone(),
            parent: parent.clone(),
            labels: Default::default(),
        };
        let mounts = snapshots
            .prepare(namespaced(prepare))
            .await
            .unwrap()
            .into_inner()
            .mounts;
        let applied = diff
            .apply(namespaced(ApplyRequest {
                diff: Some(layer.clone()),
                mounts,
                payloads: Default::default(),
            }))
            .await
            .unwrap_or_else(|e| panic!("{snapshotter}: apply layer {i}: {e}"));
        assert!(applied.into_inner().applied.unwrap().digest.starts_with("sha256:"));
        let name = format!("layer-{i}");
        let commit = CommitSnapshotRequest {
            snapshotter: snapshotter.into(),
            name: name.clone(),
            key,
            labels: [("containerd.io/gc.root".to_string(), "test".to_string())].into(),
        };
        snapshots.commit(namespaced(commit)).await.unwrap();
        parent = name;
    }
    let view = ViewSnapshotRequest {
        snapshotter: snapshotter.into(),
        key: "top".into(),
        parent,
        labels: Default::default(),
    };
    snapshots.view(namespaced(view)).await.unwrap().into_inner().mounts
}

fn mount_all(mounts: &[Mount], target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    for m in mounts {
        let out = Command::new("mount")
            .args(["-t", &m.r#type, &m.source])
            .arg(target)
            .args(["-o", &m.options.join(",")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {m:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Everything a layer can say about each path.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let body = if ft.is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if ft.is_file() {
                format!(
                    "file {} nlink {}",
                    hex(&sha2::Sha256::digest(std::fs::read(&path).unwrap())),
                    meta.nlink()
                )
            } else if ft.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else if ft.is_char_device() {
                format!("char {}", meta.rdev())
            } else if ft.is_fifo() {
                "fifo".to_string()
            } else {
                "other".to_string()
            };
            let mut xattrs: Vec<String> = xattr_list(&path);
            xattrs.sort();
            let mtime = if ft.is_dir() { 0 } else { meta.mtime() };
            out.insert(
                rel,
                format!(
                    "{body} mode {:o} uid {} gid {} mtime {mtime} xattrs {xattrs:?}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid()
                ),
            );
        }
    }
    out
}

/// User-visible extended attributes (overlay's own trusted.* ones excluded).
fn xattr_list(path: &Path) -> Vec<String> {
    let out = Command::new("getfattr")
        .args(["-h", "-d", "-m", "user\\."])
        .arg(path)
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("user."))
            .map(String::from)
            .collect(),
        Err(e) => panic!("getfattr is missing ({e}): install Debian's attr package (the test command does this)"),
    }
}

#[test]
fn overlayfs_and_native_unpack_identical_trees() {
    let d = Daemon::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let layers = rt.block_on(async {
        let channel = channel(&d).await;
        create_lease(&channel).await;
        let mut layers = Vec::new();
        for blob in image() {
            layers.push(ingest(&channel, &blob).await);
        }
        layers
    });
    let mut trees = Vec::new();
    for sn in ["overlayfs", "native"] {
        let mounts = rt.block_on(async { unpack(&channel(&d).await, sn, &layers).await });
        let target = d.dir.path().join(format!("view-{sn}"));
        mount_all(&mounts, &target);
        let tree = describe(&target);
        let _ = Command::new("umount").arg(&target).status();
        trees.push((sn, tree));
    }
    let (overlay, native) = (&trees[0].1, &trees[1].1);
    assert!(
        native.contains_key("opt/app/run") && !native.contains_key("data/gone"),
        "{native:#?}"
    );
    assert!(
        !native.contains_key("etc/passwd") && native.contains_key("etc/hosts"),
        "opaque etc: {native:#?}"
    );
    assert!(!native.contains_key("bin/sh"), "{native:#?}");
    assert!(native["data/tagged"].contains("user.corten"), "{native:#?}");
    assert!(
        native["bin/busybox"].contains("mode 104755"),
        "{}",
        native["bin/busybox"]
    );
    assert!(
        native["data/owned"].contains("uid 1000 gid 1000"),
        "{}",
        native["data/owned"]
    );
    for (path, want) in native {
        assert_eq!(overlay.get(path), Some(want), "{path} differs");
    }
    assert_eq!(
        overlay.len(),
        native.len(),
        "overlay has extra paths: {:?}",
        overlay.keys().filter(|k| !native.contains_key(*k)).collect::<Vec<_>>()
    );
    std::io::stdout().flush().unwrap();
}
