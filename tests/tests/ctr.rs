//! The issue's acceptance commands, run with the real `ctr` from Debian's
//! containerd package against a real cortend.

use corten_tests::{fails, ok, Daemon};

#[test]
fn version_reports_corten() {
    let d = Daemon::start();
    let out = ok(d.ctr(&["version"]));
    let server = out.split("Server:").nth(1).expect("a Server section");
    assert!(
        server.contains(&format!("Version:  {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(server.contains("UUID: "), "{out}");
}

#[test]
fn server_uuid_survives_restart() {
    let mut d = Daemon::start();
    let uuid = |d: &Daemon| {
        let out = ok(d.ctr(&["version"]));
        out.lines()
            .find(|l| l.contains("UUID:"))
            .expect("UUID line")
            .to_string()
    };
    let before = uuid(&d);
    d.restart();
    assert_eq!(uuid(&d), before);
}

#[test]
fn plugins_ls_lists_ours_with_status() {
    let d = Daemon::start();
    let out = ok(d.ctr(&["plugins", "ls"]));
    for (ty, id) in [
        ("io.containerd.metadata.v1", "sled"),
        ("io.containerd.event.v1", "exchange"),
        ("io.containerd.grpc.v1", "version"),
        ("io.containerd.grpc.v1", "introspection"),
        ("io.containerd.grpc.v1", "namespaces"),
        ("io.containerd.grpc.v1", "healthcheck"),
    ] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().take(2).eq([ty, id]))
            .unwrap_or_else(|| panic!("{ty} {id} missing:\n{out}"));
        assert_eq!(line.split_whitespace().last(), Some("ok"), "{line}");
    }
    let filtered = ok(d.ctr(&["plugins", "ls", "id==sled"]));
    assert_eq!(filtered.lines().count(), 2, "header and one plugin:\n{filtered}");
}

#[test]
fn namespaces_round_trip_and_survive_restart() {
    let mut d = Daemon::start();
    ok(d.ctr(&["namespaces", "create", "x"]));
    ok(d.ctr(&["namespaces", "label", "x", "a=b"]));
    let has_x = |out: &str| out.lines().any(|l| l.split_whitespace().eq(["x", "a=b"]));
    assert!(has_x(&ok(d.ctr(&["namespaces", "ls"]))));

    d.restart();
    let out = ok(d.ctr(&["namespaces", "ls"]));
    assert!(has_x(&out), "after restart:\n{out}");

    // An empty value clears the label.
    ok(d.ctr(&["namespaces", "label", "x", "a="]));
    let out = ok(d.ctr(&["namespaces", "ls"]));
    assert!(out.lines().any(|l| l.split_whitespace().eq(["x"])), "{out}");

    ok(d.ctr(&["namespaces", "rm", "x"]));
    let out = ok(d.ctr(&["namespaces", "ls", "-q"]));
    assert!(!out.lines().any(|l| l == "x"), "{out}");
}

#[test]
fn namespace_errors_carry_containerd_codes() {
    let d = Daemon::start();
    ok(d.ctr(&["namespaces", "create", "dup"]));
    let err = fails(d.ctr(&["namespaces", "create", "dup"]));
    assert!(err.contains("already exists"), "{err}");
    let err = fails(d.ctr(&["namespaces", "create", "bad/name"]));
    assert!(err.contains("identifier"), "{err}");
    // ctr treats NotFound on rm as already gone, so this only works if the
    // code is NotFound (the metrics test checks the code itself).
    assert_eq!(ok(d.ctr(&["namespaces", "rm", "missing"])).trim(), "missing");
}

#[test]
fn disabled_namespaces_plugin_is_unimplemented_and_absent() {
    let d = Daemon::start_with(r#"disabled_plugins = ["io.containerd.grpc.v1.namespaces"]"#);
    let err = fails(d.ctr(&["namespaces", "ls"]));
    assert!(err.contains("not implemented"), "{err}");
    let plugins = ok(d.ctr(&["plugins", "ls"]));
    assert!(!plugins.contains("namespaces"), "{plugins}");
    assert!(plugins.contains("introspection"), "{plugins}");
}
