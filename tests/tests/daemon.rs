//! The daemon process itself: config handling, required plugins, sockets
//! and signals.

use std::{os::unix::fs::PermissionsExt, process::Command};

use corten_tests::{bin, ok, tasks::Events, Daemon};

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let mut d = Daemon::start();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let status = d.stop();
    assert!(status.success(), "exit status {status}");
    assert!(!d.socket.exists());
    assert!(
        d.log().contains("closed plugin=io.containerd.metadata.v1.sled"),
        "{}",
        d.log()
    );
}

/// A subscriber never hangs up by itself: the daemon ends its stream when
/// it stops, instead of waiting out the grace period for it.
#[test]
fn sigterm_ends_event_subscriptions() {
    let mut d = Daemon::start();
    let mut events = Events::subscribe(&d, "stop-events", &[]);
    let status = d.stop();
    assert!(status.success(), "exit status {status}");
    events.wait_exit();
    assert!(!d.log().contains("still running after"), "{}", d.log());
}

#[test]
fn stale_socket_is_replaced_live_one_refused() {
    let mut d = Daemon::start();
    // A second daemon on the same socket must not start.
    let mut second = Daemon::configure("");
    std::fs::write(
        &second.config,
        std::fs::read_to_string(&second.config)
            .unwrap()
            .replace(&format!("{:?}", second.socket), &format!("{:?}", d.socket)),
    )
    .unwrap();
    let err = second.spawn().expect_err("second daemon must refuse a live socket");
    assert!(err.contains("another daemon is serving"), "{err}");

    // After a crash the socket file stays; the next start replaces it.
    d.kill();
    assert!(d.socket.exists());
    d.spawn().unwrap_or_else(|log| panic!("restart after crash:\n{log}"));
    ok(d.ctr(&["version"]));
}

#[test]
fn required_plugin_that_is_disabled_stops_startup() {
    let mut d = Daemon::configure(
        r#"disabled_plugins = ["io.containerd.grpc.v1.namespaces"]
required_plugins = ["io.containerd.grpc.v1.namespaces"]"#,
    );
    let log = d.spawn().expect_err("startup must fail");
    assert!(log.contains("io.containerd.grpc.v1.namespaces"), "{log}");
    assert!(log.contains("disabled"), "{log}");
}

/// A file where the metadata plugin wants its directory makes it fail.
fn break_metadata(d: &Daemon) {
    std::fs::create_dir_all(&d.root).unwrap();
    std::fs::write(d.root.join("io.containerd.metadata.v1.sled"), b"not a directory").unwrap();
}

#[test]
fn required_plugin_that_fails_stops_startup() {
    let mut d = Daemon::configure(r#"required_plugins = ["io.containerd.metadata.v1.sled"]"#);
    break_metadata(&d);
    let log = d.spawn().expect_err("startup must fail");
    assert!(
        log.contains("required plugin io.containerd.metadata.v1.sled failed"),
        "{log}"
    );
}

#[test]
fn failing_plugin_is_reported_and_the_daemon_carries_on() {
    let mut d = Daemon::configure("");
    break_metadata(&d);
    d.spawn().unwrap_or_else(|log| panic!("{log}"));
    let out = ok(d.ctr(&["plugins", "ls"]));
    let status = |id: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(id))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_else(|| panic!("{id} missing:\n{out}"))
            .to_string()
    };
    assert_eq!(status("sled"), "error");
    // It needs the metadata store, so it fails too; version is unaffected.
    assert_eq!(status("namespaces"), "error");
    assert_eq!(status("version"), "ok");
    let detailed = ok(d.ctr(&["plugins", "ls", "-d", "id==sled"]));
    assert!(detailed.contains("open sled"), "{detailed}");
}

#[test]
fn malformed_config_names_file_and_line() {
    let mut d = Daemon::configure("[grpc\n");
    let log = d.spawn().expect_err("startup must fail");
    assert!(log.contains(&format!("{}:", d.config.display())), "{log}");
    assert!(log.contains("syntax"), "{log}");
}

#[test]
fn wrong_type_names_file_line_and_key() {
    let mut d = Daemon::configure("oom_score = \"high\"");
    let log = d.spawn().expect_err("startup must fail");
    assert!(
        log.contains(&format!("{}:4: key `oom_score`", d.config.display())),
        "{log}"
    );

    let mut d = Daemon::configure("[plugins.\"io.containerd.metadata.v1.sled\"]\ncache_capacity = \"lots\"");
    let log = d.spawn().expect_err("startup must fail");
    assert!(log.contains("cache_capacity"), "{log}");
    assert!(log.contains(&format!("{}:", d.config.display())), "{log}");
}

#[test]
fn containerd_default_config_loads_with_warnings() {
    let mut d = Daemon::configure("");
    // `containerd config default` from Debian's containerd 1.6, with our own
    // root, state and addresses put in, as a user would adapt it.
    let out = ok(Command::new(corten_tests::system_tool("containerd", "containerd"))
        .args(["config", "default"])
        .output()
        .unwrap());
    let mut text = String::new();
    let mut section = String::new();
    for line in out.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed.to_string();
        }
        let key = trimmed.split('=').next().unwrap_or("").trim();
        let replaced = match (section.as_str(), key) {
            ("", "root") => format!("root = {:?}", d.root),
            ("", "state") => format!("state = {:?}", d.state),
            ("[grpc]", "address") => format!("  address = {:?}", d.socket),
            ("[ttrpc]", "address") => {
                format!("  address = {:?}", format!("{}.ttrpc", d.socket.display()))
            }
            ("[debug]", "address") => "  address = \"\"".into(),
            ("[metrics]", "address") => format!("  address = {:?}", d.metrics),
            _ => line.to_string(),
        };
        text.push_str(&replaced);
        text.push('\n');
    }
    std::fs::write(&d.config, text).unwrap();
    d.spawn()
        .unwrap_or_else(|log| panic!("containerd's default config must load:\n{log}"));
    let log = d.log();
    assert!(
        log.contains("io.containerd.grpc.v1.cri") && log.contains("ignored"),
        "{log}"
    );
    ok(d.ctr(&["namespaces", "ls"]));
}

#[test]
fn config_default_and_dump() {
    let default = ok(Command::new(bin("cortend"))
        .args(["config", "default"])
        .output()
        .unwrap());
    assert!(default.starts_with("version = 2"), "{default}");
    assert!(
        default.contains("[plugins.\"io.containerd.metadata.v1.sled\"]"),
        "{default}"
    );

    // The printed default is itself a valid config, and dump shows the
    // effective values, flags included.
    let d = Daemon::configure("");
    let file = d.dir.path().join("default.toml");
    std::fs::write(&file, &default).unwrap();
    let dump = ok(Command::new(bin("cortend"))
        .arg("--config")
        .arg(&file)
        .args(["--root", "/tmp/elsewhere", "config", "dump"])
        .output()
        .unwrap());
    assert!(dump.contains("root = \"/tmp/elsewhere\""), "{dump}");
    assert!(dump.contains("cache_capacity = 67108864"), "{dump}");
}

#[test]
fn imports_apply() {
    let mut d = Daemon::configure(r#"imports = ["conf.d/*.toml"]"#);
    let conf_d = d.dir.path().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    std::fs::write(
        conf_d.join("10-disable.toml"),
        "disabled_plugins = [\"io.containerd.grpc.v1.namespaces\"]\n",
    )
    .unwrap();
    d.spawn().unwrap_or_else(|log| panic!("{log}"));
    assert!(!ok(d.ctr(&["plugins", "ls"])).contains("namespaces"));
}
