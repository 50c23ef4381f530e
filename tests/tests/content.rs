//! Content and leases through the real `ctr`, and the raw API where `ctr`
//! cannot express a request.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use corten_api::containerd::services::content::v1::{content_client::ContentClient, InfoRequest, ReadContentRequest};
use corten_tests::{fails, ok, system_tool, wait_for, Daemon};

/// Only sync deletes collect, so blobs ctr leaves unreferenced stay until a
/// test asks for a collection.
const NO_AUTO_GC: &str = r#"[plugins."io.containerd.gc.v1.scheduler"]
startup_delay = "1000h"
mutation_threshold = 0
deletion_threshold = 1000000000
"#;

fn daemon() -> Daemon {
    Daemon::start_with(NO_AUTO_GC)
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap()
    )
}

fn blob_on_disk(d: &Daemon, digest: &str) -> bool {
    d.root
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
        .exists()
}

#[test]
fn ingest_list_get_label_rm() {
    let d = daemon();
    let blob = data(3 << 20, 1);
    let digest = sha256(&blob);
    ok(d.ctr_with_input(&["content", "ingest", "r1"], &blob));
    let ls = ok(d.ctr(&["content", "ls"]));
    assert!(ls.contains(&digest), "{ls}");
    assert_eq!(d.ctr(&["content", "get", &digest]).stdout, blob);

    // With the right expectations, and again: an existing blob is fine.
    let size = blob.len().to_string();
    ok(d.ctr_with_input(
        &[
            "content",
            "ingest",
            "--expected-digest",
            &digest,
            "--expected-size",
            &size,
            "r2",
        ],
        &blob,
    ));

    ok(d.ctr(&["content", "label", &digest, "a=b", "c=d"]));
    let ls = ok(d.ctr(&["content", "ls"]));
    assert!(ls.contains("a=b") && ls.contains("c=d"), "{ls}");
    ok(d.ctr(&["content", "label", &digest, "a="]));
    let ls = ok(d.ctr(&["content", "ls"]));
    assert!(!ls.contains("a=b") && ls.contains("c=d"), "{ls}");

    ok(d.ctr(&["content", "rm", &digest]));
    assert!(!ok(d.ctr(&["content", "ls", "-q"])).contains(&digest));
    let err = fails(d.ctr(&["content", "get", &digest]));
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn wrong_expectations_store_nothing() {
    let d = daemon();
    let blob = data(100_000, 2);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = fails(d.ctr_with_input(&["content", "ingest", "--expected-digest", &wrong, "a"], &blob));
    assert!(
        err.contains("failed precondition") && err.contains("unexpected commit digest"),
        "{err}"
    );
    let err = fails(d.ctr_with_input(&["content", "ingest", "--expected-size", "99", "b"], &blob));
    assert!(err.contains("failed precondition"), "{err}");
    assert_eq!(ok(d.ctr(&["content", "ls", "-q"])).trim(), "");
    assert!(!blob_on_disk(&d, &sha256(&blob)));
}

#[test]
fn malformed_input_is_refused() {
    let d = daemon();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for bad in [
        "sha256:xyz".to_string(),
        "sha256:../../etc/passwd".to_string(),
        format!("md5:{}", "a".repeat(32)),
        format!("sha256:{}", "A".repeat(64)),
        format!("sha256:{}", "a".repeat(63)),
    ] {
        // Straight to the daemon: ctr refuses some of these itself.
        let code = rt.block_on(async {
            let mut client = ContentClient::new(channel(&d).await);
            client
                .info(namespaced(InfoRequest { digest: bad.clone() }))
                .await
                .map(drop)
                .unwrap_err()
                .code()
        });
        assert_eq!(code, tonic::Code::InvalidArgument, "{bad}");
    }
    let err = fails(d.ctr(&["content", "get", "sha256:../../etc/passwd"]));
    assert!(err.contains("invalid"), "{err}");
    for bad_ref in ["..", "../../etc", "a/../b"] {
        let err = fails(d.ctr_with_input(&["content", "ingest", bad_ref], b"x"));
        assert!(err.contains("invalid argument"), "{bad_ref}: {err}");
    } // containerd's clients put '/' in refs (`ctr images import` writes
      // `tar-blobs/sha256/...`); they are hashed before they touch the disk.
    ok(d.ctr_with_input(&["content", "ingest", "tar-blobs/sha256/x"], b"slash ref"));

    let blob = b"labelled".to_vec();
    let digest = sha256(&blob);
    ok(d.ctr_with_input(&["content", "ingest", "l"], &blob));
    let big = format!("k={}", "v".repeat(5000));
    let err = fails(d.ctr(&["content", "label", &digest, &big]));
    assert!(err.contains("invalid argument"), "{err}");
    assert!(!std::fs::read_dir("/etc")
        .unwrap()
        .any(|e| e.unwrap().file_name() == "passwd.corten"));

    // A read past the end, which ctr cannot ask for.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let code = rt.block_on(async {
        let mut client = ContentClient::new(channel(&d).await);
        let mut request = tonic::Request::new(ReadContentRequest {
            digest: digest.clone(),
            offset: 1000,
            size: 0,
        });
        request
            .metadata_mut()
            .insert("containerd-namespace", "default".parse().unwrap());
        client.read(request).await.map(drop).unwrap_err().code()
    });
    assert_eq!(code, tonic::Code::InvalidArgument);
}

fn namespaced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("containerd-namespace", "default".parse().unwrap());
    request
}

async fn channel(d: &Daemon) -> tonic::transport::Channel {
    corten_tests::grpc::channel(&d.socket).await
}

#[test]
fn killed_ingest_resumes_with_the_same_ref() {
    let d = daemon();
    let blob = data(8 << 20, 3);
    let digest = sha256(&blob);
    let mut child = Command::new(system_tool("ctr", "containerd"))
        .arg("--address")
        .arg(&d.socket)
        .args(["content", "ingest", "resume-me"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&blob[..3 << 20]).unwrap();
    stdin.flush().unwrap();
    // Wait until the daemon holds part of it, then kill the client mid-stream.
    let offset = |d: &Daemon| -> u64 {
        let out = ok(d.ctr(&["content", "active"]));
        out.lines()
            .find(|l| l.starts_with("resume-me"))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(|size| {
                size.trim_end_matches("MiB")
                    .trim_end_matches("MB")
                    .parse::<f64>()
                    .unwrap_or(0.0) as u64
            })
            .unwrap_or(0)
    };
    wait_for("part of the ingest to arrive", || offset(&d) >= 1);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);

    // The next writer gets the ref once the daemon sees the stream end; ctr
    // resumes by seeking its input, so it reads a file this time.
    let file = d.dir.path().join("blob");
    std::fs::write(&file, &blob).unwrap();
    let start = std::time::Instant::now();
    loop {
        let out = Command::new(system_tool("ctr", "containerd"))
            .arg("--address")
            .arg(&d.socket)
            .args(["content", "ingest", "resume-me"])
            .stdin(std::fs::File::open(&file).unwrap())
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("locked") || err.contains("unavailable"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(20), "ref stayed locked: {err}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.ctr(&["content", "get", &digest]).stdout, blob);
}

#[test]
fn leases_create_list_remove() {
    let d = daemon();
    let id = ok(d.ctr(&["leases", "create", "--id", "mylease", "--expires", "1h"]))
        .trim()
        .to_string();
    assert_eq!(id, "mylease");
    let ls = ok(d.ctr(&["leases", "ls"]));
    assert!(
        ls.contains("mylease") && ls.contains("containerd.io/gc.expire="),
        "{ls}"
    );
    let err = fails(d.ctr(&["leases", "create", "--id", "mylease"]));
    assert!(err.contains("already exists"), "{err}");
    ok(d.ctr(&["leases", "rm", "--sync", "mylease"]));
    assert!(!ok(d.ctr(&["leases", "ls"])).contains("mylease"));
    let generated = ok(d.ctr(&["leases", "create"])).trim().to_string();
    assert!(!generated.is_empty());
    ok(d.ctr(&["leases", "rm", &generated]));
}

#[test]
fn sync_collection_keeps_roots_and_what_they_reference() {
    let d = daemon();
    let (child, root, orphan) = (data(4000, 7), data(4000, 8), data(4000, 9));
    let (child_digest, root_digest, orphan_digest) = (sha256(&child), sha256(&root), sha256(&orphan));
    for (name, blob) in [("child", &child), ("root", &root), ("orphan", &orphan)] {
        ok(d.ctr_with_input(&["content", "ingest", name], blob));
    }
    let reference = format!("containerd.io/gc.ref.content.x={child_digest}");
    ok(d.ctr(&[
        "content",
        "label",
        &root_digest,
        "containerd.io/gc.root=yes",
        &reference,
    ]));

    // A lease deleted with --sync runs a collection before answering.
    ok(d.ctr(&["leases", "create", "--id", "trigger"]));
    ok(d.ctr(&["leases", "rm", "--sync", "trigger"]));
    let ls = ok(d.ctr(&["content", "ls", "-q"]));
    assert!(ls.contains(&root_digest) && ls.contains(&child_digest), "{ls}");
    assert!(!ls.contains(&orphan_digest), "{ls}");
    assert!(blob_on_disk(&d, &root_digest) && blob_on_disk(&d, &child_digest));
    assert!(
        !blob_on_disk(&d, &orphan_digest),
        "the orphan's bytes are gone from disk"
    );

    // Once everything is deleted and collected, the namespace can go.
    let err = fails(d.ctr(&["namespaces", "rm", "default"]));
    assert!(err.contains("must be empty") && err.contains("content"), "{err}");
    ok(d.ctr(&["content", "rm", &root_digest, &child_digest]));
    ok(d.ctr(&["leases", "create", "--id", "trigger2"]));
    ok(d.ctr(&["leases", "rm", "--sync", "trigger2"]));
    assert!(!blob_on_disk(&d, &root_digest) && !blob_on_disk(&d, &child_digest));
    ok(d.ctr(&["namespaces", "rm", "default"]));
    assert!(!ok(d.ctr(&["namespaces", "ls", "-q"])).contains("default"));
}
