//! `corten`, our own CLI, against a real daemon.

use std::process::Command;

use corten_tests::{bin, fails, ok, Daemon};

#[test]
fn version_and_plugins() {
    let d = Daemon::start();
    let out = ok(d.corten(&["version"]));
    assert!(out.contains("Server:") && out.contains("UUID:"), "{out}");

    let table = ok(d.corten(&["plugins", "ls"]));
    assert!(table.starts_with("TYPE"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&ok(d.corten(&["plugins", "ls", "--format", "json"]))).unwrap();
    let sled = json
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "sled")
        .expect("sled in the JSON list");
    assert_eq!(sled["type"], "io.containerd.metadata.v1");
    assert_eq!(sled["status"], "ok");
}

#[test]
fn namespaces_lifecycle_and_errors() {
    let d = Daemon::start();
    ok(d.corten(&["namespaces", "create", "alpha", "a=1"]));
    ok(d.corten(&["namespaces", "label", "alpha", "b=2", "a="]));
    let json: serde_json::Value =
        serde_json::from_str(&ok(d.corten(&["namespaces", "ls", "--format", "json"]))).unwrap();
    assert_eq!(json, serde_json::json!([{"name": "alpha", "labels": {"b": "2"}}]));
    // What corten writes, ctr reads.
    assert!(ok(d.ctr(&["namespaces", "ls"])).contains("b=2"));

    let err = fails(d.corten(&["namespaces", "create", "alpha"]));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("already exists") && err.contains("AlreadyExists"), "{err}");
    let err = fails(d.corten(&["namespaces", "rm", "nope"]));
    assert!(err.contains("NotFound"), "{err}");
    ok(d.corten(&["namespaces", "rm", "alpha"]));
    assert_eq!(ok(d.corten(&["namespaces", "ls", "-q"])).trim(), "");
}

#[test]
fn reads_containerd_environment_and_fails_in_one_line() {
    let d = Daemon::start();
    let out = Command::new(bin("corten"))
        .env("CONTAINERD_ADDRESS", &d.socket)
        .args(["namespaces", "ls"])
        .output()
        .unwrap();
    ok(out);

    let missing = d.dir.path().join("nowhere.sock");
    let out = Command::new(bin("corten"))
        .arg("--address")
        .arg(&missing)
        .arg("version")
        .output()
        .unwrap();
    let err = fails(out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}
