//! Server-side pulls: `corten images pull` drives containerd 2.x's Transfer
//! service (with its Streaming side streams) on a real cortend, against a
//! real local registry. What it leaves must be what containerd's own
//! clients see as a pulled, unpacked image: the real `ctr` checks, mounts
//! and lists it, and the labels and snapshots match what `ctr images pull`
//! leaves for the same image.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use corten_tests::{
    free_port, ok,
    registry::{self, BadImage, Entry, Layer, PushedImage, Registry},
    Daemon,
};
use flate2::Compression;

fn corten_pull(d: &Daemon, args: &[&str]) -> Output {
    let mut all = vec!["images", "pull", "--plain-http"];
    all.extend_from_slice(args);
    d.corten(&all)
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts success; returns stdout. The daemon's log is in the message
/// when it failed.
fn pulled(d: &Daemon, out: Output) -> String {
    assert!(
        out.status.success(),
        "pull failed: {}\ncortend log:\n{}",
        text(&out),
        d.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts failure; returns stderr.
fn refused(d: &Daemon, out: Output) -> String {
    assert!(
        !out.status.success(),
        "pull succeeded: {}\ncortend log:\n{}",
        text(&out),
        d.log()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn rows(listing: &str) -> Vec<&str> {
    listing.lines().skip(1).filter(|l| !l.trim().is_empty()).collect()
}

/// digest -> sorted labels, from `ctr content ls`.
fn content_labels(d: &Daemon) -> BTreeMap<String, BTreeSet<String>> {
    let listing = ok(d.ctr(&["content", "ls"]));
    rows(&listing)
        .into_iter()
        .map(|row| {
            let digest = row.split_whitespace().next().unwrap().to_string();
            let last = row.split_whitespace().last().unwrap();
            let labels: BTreeSet<String> = if last == "-" {
                BTreeSet::new()
            } else {
                last.split(',').map(str::to_string).collect()
            };
            (digest, labels)
        })
        .collect()
}

/// (name, parent, kind) of every snapshot, from `ctr snapshots ls`.
fn snapshot_rows(d: &Daemon, snapshotter: &str) -> BTreeSet<(String, String, String)> {
    let listing = ok(d.ctr(&["snapshots", "--snapshotter", snapshotter, "ls"]));
    rows(&listing)
        .into_iter()
        .map(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            match cols.as_slice() {
                [key, kind] => (key.to_string(), String::new(), kind.to_string()),
                [key, parent, kind] => (key.to_string(), parent.to_string(), kind.to_string()),
                _ => panic!("unexpected snapshot row {row:?}"),
            }
        })
        .collect()
}

fn snapshot_labels(d: &Daemon, snapshotter: &str, key: &str) -> BTreeMap<String, String> {
    let info = ok(d.ctr(&["snapshots", "--snapshotter", snapshotter, "info", key]));
    let json: serde_json::Value = serde_json::from_str(&info).unwrap_or_else(|e| panic!("{e}: {info}"));
    json["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn images(d: &Daemon) -> Vec<String> {
    ok(d.ctr(&["images", "ls", "-q"])).lines().map(str::to_string).collect()
}

/// `ctr images check` says the image is complete and unpacked.
fn assert_complete(d: &Daemon, snapshotter: &str, reference: &str) {
    let check = ok(d.ctr(&["images", "check", "--snapshotter", snapshotter]));
    let row = rows(&check)
        .into_iter()
        .find(|l| l.starts_with(reference))
        .unwrap_or_else(|| panic!("{reference} not checked:\n{check}"));
    assert!(row.contains("complete ("), "{check}");
    assert!(row.trim_end().ends_with("true"), "not unpacked:\n{check}");
}

/// `ctr images mount` the image, look at bin/busybox, unmount with --rm.
fn assert_mounts(d: &Daemon, snapshotter: &str, reference: &str) {
    let target = d.dir.path().join("rootfs");
    std::fs::create_dir_all(&target).unwrap();
    let path = target.to_str().unwrap();
    let out = d.ctr(&["images", "mount", "--snapshotter", snapshotter, reference, path]);
    assert!(out.status.success(), "ctr images mount: {}\n{}", text(&out), d.log());
    let busybox = std::fs::metadata(target.join("bin/busybox"));
    let unmount = d.ctr(&["images", "unmount", "--snapshotter", snapshotter, "--rm", path]);
    let busybox = busybox.expect("bin/busybox in the mounted image");
    assert!(busybox.is_file());
    assert_eq!(busybox.len(), std::fs::metadata("/bin/busybox").unwrap().len());
    assert!(unmount.status.success(), "ctr images unmount: {}", text(&unmount));
}

/// What `ctr images pull` (containerd's own client-side pull) leaves for
/// `reference`, in a daemon of its own: content labels and snapshots.
type Baseline = (BTreeMap<String, BTreeSet<String>>, BTreeSet<(String, String, String)>);

fn ctr_baseline(reference: &str, snapshotter: &str) -> Baseline {
    let d = Daemon::start();
    let out = d.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        snapshotter,
        reference,
    ]);
    assert!(out.status.success(), "ctr images pull: {}\n{}", text(&out), d.log());
    (content_labels(&d), snapshot_rows(&d, snapshotter))
}

/// Pulls `image` with corten and compares with what ctr leaves.
fn matches_ctr(snapshotter: &str, image: &PushedImage, layers: usize) {
    let d = Daemon::start();
    let out = pulled(&d, corten_pull(&d, &["--snapshotter", snapshotter, &image.reference]));
    assert!(out.starts_with(&image.reference), "{out}");
    assert!(out.contains(&image.manifest_digest), "{out}");
    assert!(out.contains(&format!("unpacked {layers} layer(s)")), "{out}");
    assert_eq!(images(&d), std::slice::from_ref(&image.reference));
    let ls = ok(d.ctr(&["images", "ls"]));
    assert!(
        ls.contains(registry::OCI_MANIFEST) && ls.contains("linux/amd64"),
        "{ls}"
    );
    assert_complete(&d, snapshotter, &image.reference);

    let (ctr_content, ctr_snapshots) = ctr_baseline(&image.reference, snapshotter);
    let content = content_labels(&d);
    assert_eq!(
        content, ctr_content,
        "content labels differ from what ctr images pull leaves"
    );
    // Spot checks of what containerd's GC follows.
    let manifest = &content[&image.manifest_digest];
    assert!(manifest.contains(&format!("containerd.io/gc.ref.content.config={}", image.config_digest)));
    assert!(manifest.contains(&format!("containerd.io/gc.ref.content.l.0={}", image.layers[0].0)));
    let config = &content[&image.config_digest];
    assert!(config.contains(&format!(
        "containerd.io/gc.ref.snapshot.{snapshotter}={}",
        image.chain_id()
    )));

    let snapshots = snapshot_rows(&d, snapshotter);
    assert_eq!(snapshots, ctr_snapshots, "snapshots differ from ctr's");
    assert_eq!(snapshots.len(), layers);
    assert!(snapshots.iter().any(|(name, _, _)| *name == image.chain_id()));
    // As containerd's unpacker (the transfer service's) labels them.
    for (name, _, kind) in &snapshots {
        assert_eq!(kind, "Committed");
        let labels = snapshot_labels(&d, snapshotter, name);
        assert_eq!(
            labels.get("containerd.io/snapshot.ref"),
            Some(name),
            "{name}: {labels:?}"
        );
    }
    assert_mounts(&d, snapshotter, &image.reference);
    assert_eq!(
        ok(d.ctr(&["leases", "ls", "-q"])).trim(),
        "",
        "the pull's lease is gone"
    );

    // Removing the image lets GC take everything the pull left.
    ok(d.ctr(&["images", "rm", "--sync", &image.reference]));
    assert_eq!(ok(d.ctr(&["content", "ls", "-q"])).trim(), "");
    assert!(rows(&ok(d.ctr(&["snapshots", "--snapshotter", snapshotter, "ls"]))).is_empty());
}

#[test]
fn busybox_overlayfs_matches_ctr() {
    let registry = Registry::start();
    let image = registry.push_busybox("test/busybox", "latest");
    matches_ctr("overlayfs", &image, 1);
}

#[test]
fn multilayer_native_matches_ctr() {
    let registry = Registry::start();
    let image = registry.push_multilayer("test/layers", "v1", 4);
    matches_ctr("native", &image, 4);
}

#[test]
fn index_pulls_the_asked_platforms() {
    let registry = Registry::start();
    let image = registry.push_busybox_index("test/multi", "v1");
    let (amd64, arm64) = (&image.platforms[0], &image.platforms[1]);
    let d = Daemon::start();
    pulled(&d, corten_pull(&d, &[&image.reference]));
    let content = content_labels(&d);
    assert!(
        content.contains_key(&amd64.1) && content.contains_key(&amd64.2),
        "{content:?}"
    );
    assert!(
        !content.contains_key(&arm64.1) && !content.contains_key(&arm64.2),
        "arm64 was fetched: {content:?}"
    );
    // The index names every manifest for GC, fetched or not (as containerd).
    let index = &content[&image.manifest_digest];
    assert!(
        index.contains(&format!("containerd.io/gc.ref.content.m.0={}", amd64.1)),
        "{index:?}"
    );
    assert!(
        index.contains(&format!("containerd.io/gc.ref.content.m.1={}", arm64.1)),
        "{index:?}"
    );
    assert!(
        index.contains("containerd.io/distribution.source.127.0.0.1=test/multi"),
        "{index:?}"
    );
    assert_complete(&d, "overlayfs", &image.reference);
    let ls = ok(d.ctr(&["images", "ls"]));
    assert!(ls.contains(registry::OCI_INDEX), "{ls}");

    let out = pulled(&d, corten_pull(&d, &["--platform", "linux/arm64", &image.reference]));
    let content = content_labels(&d);
    assert!(
        content.contains_key(&arm64.1) && content.contains_key(&arm64.2),
        "{content:?}"
    );
    // The layer is shared: only arm64's manifest and config were new.
    assert!(out.contains("fetched 2 blob(s)"), "{out}");

    // Everything at once, into a fresh daemon.
    let fresh = Daemon::start();
    pulled(&fresh, corten_pull(&fresh, &["--all-platforms", &image.reference]));
    let content = content_labels(&fresh);
    for digest in [&amd64.1, &amd64.2, &arm64.1, &arm64.2] {
        assert!(content.contains_key(digest), "{digest} missing: {content:?}");
    }
    assert_complete(&fresh, "overlayfs", &image.reference);

    let err = refused(&d, corten_pull(&d, &["--platform", "linux/riscv64", &image.reference]));
    assert!(
        err.contains("no manifest for linux/riscv64") && err.contains("linux/arm64"),
        "{err}"
    );
}

#[test]
fn repull_fetches_nothing() {
    let registry = Registry::start();
    let image = registry.push_busybox("test/busybox", "v1");
    let d = Daemon::start();
    let first = pulled(&d, corten_pull(&d, &[&image.reference]));
    assert!(first.contains("fetched 3 blob(s)"), "{first}");
    // With the layer gone from the registry, only a pull that fetches
    // nothing but the tag can succeed.
    registry.delete_blob("test/busybox", &image.layers[0].0);
    let again = pulled(&d, corten_pull(&d, &[&image.reference]));
    assert!(again.contains("fetched 0 blob(s)"), "{again}");
    assert!(again.contains("3 already present"), "{again}");
    assert!(again.contains("unpacked 0 layer(s)"), "{again}");
    assert_complete(&d, "overlayfs", &image.reference);
    // Pinned by digest, the registry is asked for nothing at all.
    let pinned = format!("{}/test/busybox@{}", registry.host(), image.manifest_digest);
    let out = pulled(&d, corten_pull(&d, &[&pinned]));
    assert!(out.contains("fetched 0 blob(s)"), "{out}");
    let mut names = images(&d);
    names.sort();
    let mut want = vec![pinned, image.reference.clone()];
    want.sort();
    assert_eq!(names, want);
}

/// Where the registry keeps a blob's bytes.
fn registry_blob(registry: &Registry, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    registry
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// A one-layer image whose layer is its own (so tampering with its blob in
/// the registry touches no other image).
fn push_own(registry: &Registry, name: &str, content: &str) -> PushedImage {
    let layer = Layer::build(&[Entry::file("own", 0o644, content)], Compression::fast());
    registry.push_image(name, "v1", &[layer], "amd64")
}

/// After a refused pull: no image, no lease, and not the bad blob.
fn assert_nothing_left(d: &Daemon, bad_blob: Option<&str>) {
    assert!(images(d).is_empty(), "an image was recorded: {:?}", images(d));
    assert_eq!(ok(d.ctr(&["leases", "ls", "-q"])).trim(), "", "a lease was left");
    if let Some(blob) = bad_blob {
        assert!(!ok(d.ctr(&["content", "ls", "-q"])).contains(blob), "{blob} was stored");
    }
}

#[test]
fn bad_inputs_are_refused_clearly() {
    let registry = Registry::start();
    let d = Daemon::start();

    // A manifest naming a blob the registry does not have.
    let missing = registry.push_bad("bad/missing", "v1", BadImage::MissingBlob);
    let err = refused(&d, corten_pull(&d, &[&missing.reference]));
    assert!(err.contains(&missing.layers[0].0) && err.contains("not found"), "{err}");
    assert_nothing_left(&d, None);

    // The descriptor's size is one byte short of the blob.
    let sized = registry.push_bad("bad/size", "v1", BadImage::WrongSize);
    let err = refused(&d, corten_pull(&d, &[&sized.reference]));
    assert!(
        err.contains(&sized.layers[0].0) && err.contains("size mismatch"),
        "{err}"
    );
    assert_nothing_left(&d, Some(&sized.layers[0].0));

    // The registry serves other bytes than the digest names.
    let tampered = push_own(&registry, "bad/digest", "tampered");
    let path = registry_blob(&registry, &tampered.layers[0].0);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = refused(&d, corten_pull(&d, &[&tampered.reference]));
    assert!(
        err.contains(&tampered.layers[0].0) && err.contains("digest mismatch"),
        "{err}"
    );
    assert_nothing_left(&d, Some(&tampered.layers[0].0));

    // A truncated blob.
    let truncated = push_own(&registry, "bad/truncated", "truncated");
    let path = registry_blob(&registry, &truncated.layers[0].0);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(truncated.layers[0].2 / 2).unwrap();
    drop(file);
    let err = refused(&d, corten_pull(&d, &[&truncated.reference]));
    assert!(
        err.contains(&truncated.layers[0].0) && (err.contains("size mismatch") || err.contains("truncated")),
        "{err}"
    );
    assert_nothing_left(&d, Some(&truncated.layers[0].0));

    // A layer of a media type nothing can unpack.
    let layer = Layer::build(&[Entry::file("odd", 0o644, "odd")], Compression::fast());
    registry.push_blob("bad/media", &layer.blob);
    let config = registry::config_json("amd64", std::slice::from_ref(&layer.diff_id));
    registry.push_blob("bad/media", &config);
    let odd = registry::descriptor("application/vnd.example.unknown", &layer.digest, layer.size());
    let manifest = registry::manifest_json(&config, &[odd]);
    registry.push_manifest("bad/media", "v1", registry::OCI_MANIFEST, &manifest);
    let reference = format!("{}/bad/media:v1", registry.host());
    let err = refused(&d, corten_pull(&d, &[&reference]));
    assert!(
        err.contains("application/vnd.example.unknown") && err.contains(&layer.digest),
        "{err}"
    );
    assert_nothing_left(&d, Some(&layer.digest));

    // A reference with characters no reference may have.
    let err = refused(&d, corten_pull(&d, &[&format!("{}/Bad Name:v1", registry.host())]));
    assert!(err.contains("invalid reference") && err.contains("Bad Name"), "{err}");
    assert_nothing_left(&d, None);

    // A registry that is not there.
    let gone = format!("127.0.0.1:{}/test/busybox:v1", free_port());
    let err = refused(&d, corten_pull(&d, &[&gone]));
    assert!(err.contains("cannot reach registry") && err.contains(&gone), "{err}");
    assert!(err.contains("(Unavailable)"), "{err}");
    assert_nothing_left(&d, None);

    // And the next good pull works, unpacked.
    let good = registry.push_busybox("test/busybox", "v1");
    pulled(&d, corten_pull(&d, &[&good.reference]));
    assert_complete(&d, "overlayfs", &good.reference);
    assert_eq!(images(&d), std::slice::from_ref(&good.reference));
}

/// `ctr content ingest` with half of a blob on stdin: its commit fails and
/// leaves the ingest, as an interrupted download would.
fn half_ingest(d: &Daemon, reference: &str, blob: &[u8], digest: &str) {
    let size = blob.len().to_string();
    let mut child = Command::new(corten_tests::system_tool("ctr", "containerd"))
        .arg("--address")
        .arg(&d.socket)
        .args([
            "content",
            "ingest",
            "--expected-size",
            &size,
            "--expected-digest",
            digest,
            reference,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&blob[..blob.len() / 2]).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a half blob committed: {}", text(&out));
    let statuses = ok(d.ctr(&["content", "active"]));
    assert!(
        statuses.contains(reference),
        "no active ingest {reference}:\n{statuses}"
    );
}

#[test]
fn interrupted_download_resumes() {
    const MIB: usize = 4;
    let registry = Registry::start();
    let image = registry.push_multilayer("test/layers", "v1", MIB);
    let big = &registry::multilayer_layers(MIB)[1];
    assert_eq!(big.digest, image.layers[1].0);
    let d = Daemon::start();
    let reference = format!("layer-{}", big.digest);
    half_ingest(&d, &reference, &big.blob, &big.digest);

    let out = pulled(&d, corten_pull(&d, &[&image.reference]));
    let half = big.blob.len() / 2;
    assert!(out.contains("resumed"), "the download started over:\n{out}");
    assert!(out.contains(&format!("resumed {}", human(half as u64))), "{out}");
    assert!(out.contains("fetched 6 blob(s)"), "{out}");
    assert_complete(&d, "overlayfs", &image.reference);
    assert!(!ok(d.ctr(&["content", "active"])).contains(&reference));
    // The resumed blob is whole and right.
    let (ctr_content, _) = ctr_baseline(&image.reference, "overlayfs");
    assert_eq!(content_labels(&d), ctr_content);
}

/// Sizes as the summary line prints them.
fn human(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < 4 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", ["B", "KiB", "MiB", "GiB", "TiB"][unit])
}

#[test]
fn progress_lines_name_every_blob() {
    let registry = Registry::start();
    let image = registry.push_busybox("test/busybox", "v1");
    let d = Daemon::start();
    let out = corten_pull(&d, &[&image.reference]);
    pulled(&d, out.clone());
    // Without a terminal, progress is a line per step on stderr.
    let err = String::from_utf8_lossy(&out.stderr);
    for (kind, digest) in [
        ("manifest", &image.manifest_digest),
        ("config", &image.config_digest),
        ("layer", &image.layers[0].0),
    ] {
        assert!(err.contains(&format!("{kind}-{digest}: complete")), "{kind}:\n{err}");
    }
    assert!(err.contains(&format!("layer-{}: unpacked", image.layers[0].0)), "{err}");
    let quiet = corten_pull(&d, &["--no-progress", &image.reference]);
    pulled(&d, quiet.clone());
    assert!(quiet.stderr.is_empty(), "{}", text(&quiet));
}

/// The wire check: containerd's own generated stubs (the `containerd-client`
/// crate, from containerd's protos) drive a pull the way containerd 2.x's
/// client does: a progress stream opened through Streaming, then Transfer
/// from an OCIRegistry into an ImageStore with an unpack.
#[test]
fn containerd_client_stubs_pull_through_transfer() {
    use containerd_client::{
        services::v1::{
            streaming_client::StreamingClient, transfer_client::TransferClient, StreamInit, TransferOptions,
            TransferRequest,
        },
        types::{
            transfer::{ImageStore, OciRegistry, Progress, RegistryResolver, UnpackConfiguration},
            Platform,
        },
    };
    use prost::Message as _;

    fn with_ns<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
        request
            .metadata_mut()
            .insert("containerd-namespace", "default".parse().unwrap());
        request
    }

    let registry = Registry::start();
    let image = registry.push_busybox("test/busybox", "v1");
    let d = Daemon::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events: Vec<Progress> = runtime.block_on(async {
        let channel = containerd_client::connect(&d.socket).await.unwrap();
        let any = |type_url: &str, value: Vec<u8>| prost_types::Any {
            type_url: type_url.into(),
            value,
        };
        // containerd names its Any payloads by bare full name.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(any(
            "containerd.services.streaming.v1.StreamInit",
            StreamInit {
                id: "progress-1".into(),
            }
            .encode_to_vec(),
        ))
        .await
        .unwrap();
        let mut streaming = StreamingClient::new(channel.clone());
        let mut progress = streaming
            .stream(with_ns(tonic::Request::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )))
            .await
            .unwrap()
            .into_inner();
        let ack = progress.message().await.unwrap().expect("acknowledgement");
        assert_eq!(ack.type_url, "google.protobuf.Empty");

        let platform = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            ..Default::default()
        };
        let source = OciRegistry {
            reference: image.reference.clone(),
            resolver: Some(RegistryResolver {
                default_scheme: "http".into(),
                ..Default::default()
            }),
        };
        let destination = ImageStore {
            name: image.reference.clone(),
            platforms: vec![platform.clone()],
            unpacks: vec![UnpackConfiguration {
                platform: Some(platform),
                snapshotter: "overlayfs".into(),
            }],
            ..Default::default()
        };
        let request = TransferRequest {
            source: Some(any("containerd.types.transfer.OCIRegistry", source.encode_to_vec())),
            destination: Some(any("containerd.types.transfer.ImageStore", destination.encode_to_vec())),
            options: Some(TransferOptions {
                progress_stream: "progress-1".into(),
            }),
        };
        let mut transfer = TransferClient::new(channel);
        let (result, events) = tokio::join!(transfer.transfer(with_ns(tonic::Request::new(request))), async {
            let mut events = Vec::new();
            // The daemon ends the stream after the last event.
            while let Some(message) = progress.message().await.unwrap() {
                assert_eq!(message.type_url, "containerd.types.transfer.Progress");
                events.push(Progress::decode(message.value.as_slice()).unwrap());
            }
            events
        });
        result.unwrap_or_else(|e| panic!("transfer: {e}\n{}", d.log()));
        drop(tx);
        events
    });
    let saved = events
        .iter()
        .find(|e| e.event == "saved")
        .unwrap_or_else(|| panic!("no saved event: {events:?}"));
    assert_eq!(saved.name, image.reference);
    assert_eq!(saved.desc.as_ref().unwrap().digest, image.manifest_digest);
    let layer = format!("layer-{}", image.layers[0].0);
    let seen: Vec<&str> = events
        .iter()
        .filter(|e| e.name == layer)
        .map(|e| e.event.as_str())
        .collect();
    assert_eq!(seen.first(), Some(&"waiting"), "{seen:?}");
    assert!(seen.contains(&"complete") && seen.contains(&"unpacked"), "{seen:?}");
    assert_complete(&d, "overlayfs", &image.reference);
}
