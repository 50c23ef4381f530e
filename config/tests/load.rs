//! Loading whole files: defaults, containerd compatibility, imports and the
//! wording of errors and warnings.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corten_config::{default_toml, from_str, load, Config, ConfigError, Loaded};

const CONTAINERD_DEFAULT: &str = include_str!("fixtures/containerd-1.6-default.toml");

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, text).unwrap();
    path
}

fn load_text(text: &str) -> Result<Loaded, ConfigError> {
    from_str(Path::new("/etc/corten/config.toml"), text)
}

#[test]
fn defaults() {
    let c = Config::default();
    assert_eq!(c.version, 2);
    assert_eq!(c.root, PathBuf::from("/var/lib/corten"));
    assert_eq!(c.state, PathBuf::from("/run/corten"));
    assert_eq!(c.temp, "");
    assert_eq!(c.plugin_dir, "");
    assert_eq!(c.grpc.address, "/run/corten/corten.sock");
    assert_eq!(c.grpc.tcp_address, "");
    assert_eq!(c.grpc.max_recv_message_size, 16 * 1024 * 1024);
    assert_eq!(c.grpc.max_send_message_size, 16 * 1024 * 1024);
    assert_eq!((c.grpc.uid, c.grpc.gid), (0, 0));
    assert_eq!(c.ttrpc.address, "");
    assert_eq!(c.debug.level, "");
    assert_eq!(c.metrics.address, "127.0.0.1:1338");
    assert!(!c.metrics.grpc_histogram);
    assert_eq!(c.cgroup.path, "");
    assert_eq!(c.oom_score, 0);
    assert!(c.plugins.is_empty() && c.proxy_plugins.is_empty());
    assert!(c.disabled_plugins.is_empty() && c.imports.is_empty());
    assert_eq!(c.timeouts.len(), 4);
    assert_eq!(
        c.timeout("io.containerd.timeout.shim.cleanup"),
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        c.timeout("io.containerd.timeout.shim.load"),
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        c.timeout("io.containerd.timeout.shim.shutdown"),
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        c.timeout("io.containerd.timeout.task.state"),
        Some(Duration::from_secs(2))
    );
    assert_eq!(c.timeout("io.containerd.timeout.nope"), None);
}

#[test]
fn minimal_file_gives_defaults() {
    let loaded = load_text("version = 2\n").unwrap();
    assert_eq!(loaded.config, Config::default());
    assert!(loaded.warnings.is_empty());
    assert_eq!(loaded.sources.len(), 1);
}

#[test]
fn ttrpc_address_derivation() {
    let mut c = Config::default();
    assert_eq!(c.ttrpc_address(), "/run/corten/corten.sock.ttrpc");
    c.grpc.address = "/tmp/x.sock".into();
    assert_eq!(c.ttrpc_address(), "/tmp/x.sock.ttrpc");
    c.ttrpc.address = "/tmp/t.sock".into();
    assert_eq!(c.ttrpc_address(), "/tmp/t.sock");
}

#[test]
fn timeouts_overlay_defaults_key_by_key() {
    let loaded =
        load_text("version = 2\n[timeouts]\n\"io.containerd.timeout.shim.load\" = \"1m30s\"\n\"x.y\" = \"100ms\"\n")
            .unwrap();
    let c = &loaded.config;
    assert_eq!(
        c.timeout("io.containerd.timeout.shim.load"),
        Some(Duration::from_secs(90))
    );
    assert_eq!(c.timeout("x.y"), Some(Duration::from_millis(100)));
    assert_eq!(
        c.timeout("io.containerd.timeout.task.state"),
        Some(Duration::from_secs(2))
    );
}

#[test]
fn bad_timeout_is_an_error_with_line() {
    let err = load_text("version = 2\n\n[timeouts]\n  \"io.containerd.timeout.shim.load\" = \"5 sec\"\n").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "/etc/corten/config.toml:4: key `timeouts.\"io.containerd.timeout.shim.load\"`: invalid duration"
        ),
        "{msg}"
    );
}

#[test]
fn containerd_1_6_default_config_loads() {
    let loaded = load_text(CONTAINERD_DEFAULT).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(c.version, 2);
    assert_eq!(c.root, PathBuf::from("/var/lib/containerd"));
    assert_eq!(c.state, PathBuf::from("/run/containerd"));
    assert_eq!(c.grpc.address, "/run/containerd/containerd.sock");
    assert_eq!(c.metrics.address, "");
    assert_eq!(c.ttrpc_address(), "/run/containerd/containerd.sock.ttrpc");
    assert_eq!(c.timeout("io.containerd.timeout.bolt.open"), Some(Duration::ZERO));
    assert_eq!(
        c.timeout("io.containerd.timeout.shim.cleanup"),
        Some(Duration::from_secs(5))
    );
    let cri = &c.plugins["io.containerd.grpc.v1.cri"];
    assert_eq!(
        cri["containerd"]["runtimes"]["runc"]["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    assert_eq!(
        c.plugins["io.containerd.gc.v1.scheduler"]["pause_threshold"].as_float(),
        Some(0.02)
    );
    let tar = &c.stream_processors["io.containerd.ocicrypt.decoder.v1.tar"];
    assert_eq!(tar["path"].as_str(), Some("ctd-decoder"));
    assert!(c.proxy_plugins.is_empty());

    // Dumping what we loaded and loading it again changes nothing.
    let dumped = c.to_toml_string();
    let again = load_text(&dumped).unwrap();
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    assert_eq!(&again.config, c);
}

#[test]
fn dump_starts_with_version_and_round_trips() {
    let mut c = Config {
        oom_score: -999,
        disabled_plugins: vec!["io.containerd.snapshotter.v1.zfs".into()],
        ..Config::default()
    };
    c.plugins.insert(
        "io.containerd.metadata.v1.sled".into(),
        toml::from_str::<toml::Value>("path = \"/x\"\n[nested]\nlist = [1, 2]\n[[arr]]\na = 1\n").unwrap(),
    );
    let text = c.to_toml_string();
    assert!(text.starts_with("version = 2\n"), "{text}");
    let loaded = load_text(&text).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.config, c);
}

#[test]
fn default_toml_round_trips() {
    let mut plugins = BTreeMap::new();
    plugins.insert(
        "io.containerd.metadata.v1.sled".to_owned(),
        toml::from_str::<toml::Value>("path = \"\"\ncache_capacity = 1024\n").unwrap(),
    );
    plugins.insert(
        "io.containerd.gc.v1.scheduler".to_owned(),
        toml::from_str::<toml::Value>("pause_threshold = 0.02\nschedule_delay = \"0s\"\n").unwrap(),
    );
    let text = default_toml(&plugins);
    assert!(text.starts_with("version = 2\n"), "{text}");
    assert!(text.contains("[plugins.\"io.containerd.metadata.v1.sled\"]"), "{text}");
    let loaded = load_text(&text).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let want = Config {
        plugins,
        ..Config::default()
    };
    assert_eq!(loaded.config, want);
}

#[test]
fn version_rules() {
    let missing = load_text("root = \"/x\"\n").unwrap_err();
    assert!(matches!(missing, ConfigError::Version { found: None, .. }));
    let msg = missing.to_string();
    assert!(msg.starts_with("/etc/corten/config.toml: "), "{msg}");
    assert!(msg.contains("version 2") && msg.contains("version = 2"), "{msg}");

    let v1 = load_text("# old\nversion = 1\n").unwrap_err();
    assert!(matches!(
        v1,
        ConfigError::Version {
            found: Some(1),
            line: Some(2),
            ..
        }
    ));
    let msg = v1.to_string();
    assert!(msg.starts_with("/etc/corten/config.toml:2: "), "{msg}");
    assert!(msg.contains("version 2"), "{msg}");

    let v9 = load_text("version = 9\n").unwrap_err();
    assert!(matches!(v9, ConfigError::Version { found: Some(9), .. }));

    assert_eq!(load_text("version = 3\n").unwrap().config.version, 3);
}

#[test]
fn malformed_toml_names_file_line_and_column() {
    let err = load_text("version = 2\n[grpc]\naddress = \"/x\n").unwrap_err();
    match &err {
        ConfigError::Syntax { file, line, column, .. } => {
            assert_eq!(file, Path::new("/etc/corten/config.toml"));
            assert_eq!(*line, 3);
            assert!(*column >= 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with("/etc/corten/config.toml:3:"), "{err}");

    let dup = load_text("version = 2\n[grpc]\nuid = 1\nuid = 2\n").unwrap_err();
    assert!(matches!(dup, ConfigError::Syntax { line: 4, .. }), "{dup:?}");
}

#[test]
fn wrong_type_names_file_line_and_key() {
    let text = "version = 2\n\n[grpc]\n  address = \"/x\"\n  max_recv_message_size = \"big\"\n";
    let err = load_text(text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/corten/config.toml:5: key `grpc.max_recv_message_size`: invalid type: string \"big\", expected u64"
    );
    match err {
        ConfigError::Invalid { line, column, key, .. } => {
            assert_eq!(line, 5);
            assert_eq!(column, Some(27));
            assert_eq!(key, "grpc.max_recv_message_size");
        }
        other => panic!("{other:?}"),
    }

    let err = load_text("version = 2\ndisabled_plugins = [\"a.b.c.d\", 7]\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/etc/corten/config.toml:2: key `disabled_plugins[1]`: invalid type: integer"),
        "{err}"
    );

    let err = load_text("version = 2\ngrpc = 5\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/etc/corten/config.toml:2: key `grpc`: invalid type"),
        "{err}"
    );

    let err = load_text("version = 2\n[ttrpc]\nuid = -1\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/etc/corten/config.toml:3: key `ttrpc.uid`:"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_warnings_with_lines() {
    let text = "version = 2\nsubreaper = true\n[grpc]\n  address = \"/x\"\n  foo = 1\n[nonsense.deep]\nx = 1\n";
    let loaded = load_text(text).unwrap();
    assert_eq!(loaded.config.grpc.address, "/x");
    let got: Vec<(usize, &str)> = loaded.warnings.iter().map(|w| (w.line, w.key.as_str())).collect();
    assert_eq!(got, vec![(5, "grpc.foo"), (6, "nonsense"), (2, "subreaper")]);
    assert_eq!(
        loaded.warnings[0].to_string(),
        "/etc/corten/config.toml:5: grpc.foo: unknown key, ignored"
    );
}

#[test]
fn short_plugin_names_warn() {
    let loaded = load_text("version = 2\ndisabled_plugins = [\"cri\"]\n[plugins.cri]\nx = 1\n").unwrap();
    let got: Vec<(usize, &str)> = loaded.warnings.iter().map(|w| (w.line, w.key.as_str())).collect();
    assert_eq!(got, vec![(2, "disabled_plugins[0]"), (3, "plugins.cri")]);
}

/// main imports conf.d/*.toml (two files) and a literal file; one import
/// pulls in a third file from elsewhere which points back at main.
fn import_tree(dir: &Path) -> PathBuf {
    let main = write(
        dir,
        "config.toml",
        r#"version = 2
root = "/main/root"
oom_score = -100
disabled_plugins = ["io.containerd.snapshotter.v1.zfs"]
imports = ["conf.d/*.toml", "nomatch/*.toml"]

[grpc]
  address = "/main.sock"
  uid = 1

[plugins."io.containerd.gc.v1.scheduler"]
  pause_threshold = 0.02
  deletion_threshold = 0

[plugins."io.containerd.metadata.v1.sled"]
  path = "/kept"
"#,
    );
    write(
        dir,
        "conf.d/10-first.toml",
        r#"root = "/first/root"
disabled_plugins = ["io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.btrfs"]
imports = ["../extra/more.toml"]

[grpc]
  uid = 2

[plugins."io.containerd.gc.v1.scheduler"]
  schedule_delay = "1s"
"#,
    );
    write(
        dir,
        "conf.d/20-second.toml",
        r#"required_plugins = ["io.containerd.grpc.v1.cri"]
state = "/second/state"
"#,
    );
    // Not a .toml: must not be picked up by the glob.
    write(dir, "conf.d/README", "not toml [");
    write(
        dir,
        "extra/more.toml",
        r#"root = "/more/root"
imports = ["../config.toml", "../conf.d/*.toml"]
disabled_plugins = ["io.containerd.snapshotter.v1.aufs"]
"#,
    );
    main
}

#[test]
fn imports_merge_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let main = import_tree(dir.path());
    let loaded = load(&main).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    let files: Vec<PathBuf> = loaded
        .sources
        .iter()
        .map(|s| s.path.strip_prefix(dir.path()).unwrap().to_owned())
        .collect();
    assert_eq!(
        files,
        [
            "config.toml",
            "conf.d/10-first.toml",
            "conf.d/20-second.toml",
            "extra/more.toml",
        ]
        .map(PathBuf::from)
    );

    let c = &loaded.config;
    // Scalars: the last file to set one wins.
    assert_eq!(c.root, PathBuf::from("/more/root"));
    assert_eq!(c.state, PathBuf::from("/second/state"));
    assert_eq!(c.oom_score, -100);
    // Tables merge key by key.
    assert_eq!(c.grpc.address, "/main.sock");
    assert_eq!(c.grpc.uid, 2);
    // Lists append without repeats.
    assert_eq!(
        c.disabled_plugins,
        [
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.aufs",
        ]
    );
    assert_eq!(c.required_plugins, ["io.containerd.grpc.v1.cri"]);
    assert_eq!(
        c.imports,
        [
            "conf.d/*.toml",
            "nomatch/*.toml",
            "../extra/more.toml",
            "../config.toml",
            "../conf.d/*.toml",
        ]
    );
    // A plugin section from an import replaces the earlier one whole.
    let gc = c.plugins["io.containerd.gc.v1.scheduler"].as_table().unwrap();
    assert_eq!(gc.len(), 1, "{gc:?}");
    assert_eq!(gc["schedule_delay"].as_str(), Some("1s"));
    // Sections no import touches survive.
    assert_eq!(
        c.plugins["io.containerd.metadata.v1.sled"]["path"].as_str(),
        Some("/kept")
    );

    assert_eq!(
        loaded.locate(&["plugins", "io.containerd.gc.v1.scheduler"]),
        Some((dir.path().join("conf.d/10-first.toml"), 8))
    );
    assert_eq!(loaded.locate(&["grpc", "address"]), Some((main.clone(), 8)));
    assert_eq!(loaded.locate(&["grpc", "gid"]), None);
}

#[test]
fn import_cycle_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(dir.path(), "main.toml", "version = 2\nimports = [\"a.toml\"]\n");
    write(dir.path(), "a.toml", "oom_score = 1\nimports = [\"b.toml\"]\n");
    write(
        dir.path(),
        "b.toml",
        "oom_score = 2\nimports = [\"a.toml\", \"main.toml\"]\n",
    );
    let loaded = load(&main).unwrap();
    assert_eq!(loaded.sources.len(), 3);
    assert_eq!(loaded.config.oom_score, 2);
    assert_eq!(loaded.config.imports, ["a.toml", "b.toml", "main.toml"]);
}

#[test]
fn from_str_resolves_imports_next_to_the_path() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.toml", "oom_score = 7\n");
    let loaded = from_str(
        &dir.path().join("virtual.toml"),
        "version = 2\nimports = [\"a.toml\"]\n",
    )
    .unwrap();
    assert_eq!(loaded.config.oom_score, 7);
    assert_eq!(loaded.sources.len(), 2);
}

#[test]
fn self_import_and_absolute_imports() {
    let dir = tempfile::tempdir().unwrap();
    let abs = write(dir.path(), "abs/x.toml", "temp = \"/tmp/abs\"\n");
    let main = write(
        dir.path(),
        "self.toml",
        &format!(
            "version = 2\nimports = [\"self.toml\", \"./self.toml\", {:?}]\n",
            abs.display().to_string()
        ),
    );
    let loaded = load(&main).unwrap();
    assert_eq!(loaded.sources.len(), 2);
    assert_eq!(loaded.config.temp, "/tmp/abs");
}

#[test]
fn missing_literal_import_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "version = 2\nimports = [\n  \"gone.toml\",\n]\n",
    );
    let err = load(&main).unwrap_err();
    assert!(matches!(err, ConfigError::Import { line: 3, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("config.toml:3") && msg.contains("gone.toml"), "{msg}");
}

#[test]
fn invalid_glob_is_an_error_naming_it() {
    let err = load_text("version = 2\nimports = [\"conf.d/[*.toml\"]\n").unwrap_err();
    assert!(matches!(err, ConfigError::ImportPattern { line: 2, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("/etc/corten/config.toml:2: invalid import pattern `conf.d/[*.toml`"),
        "{msg}"
    );
}

#[test]
fn errors_in_imports_name_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(dir.path(), "config.toml", "version = 2\nimports = [\"d/*.toml\"]\n");
    let bad = write(dir.path(), "d/bad.toml", "\n[metrics]\ngrpc_histogram = \"yes\"\n");
    let err = load(&main).unwrap_err();
    match &err {
        ConfigError::Invalid { file, line, key, .. } => {
            assert_eq!(file, &bad);
            assert_eq!(*line, 3);
            assert_eq!(key, "metrics.grpc_histogram");
        }
        other => panic!("{other:?}"),
    }

    fs::write(&bad, "oom_score = 1\n[grpc\n").unwrap();
    let err = load(&main).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Syntax { file, line: 2, .. } if file == &bad),
        "{err:?}"
    );

    fs::write(&bad, "version = 1\n").unwrap();
    let err = load(&main).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Version { file, found: Some(1), .. } if file == &bad),
        "{err:?}"
    );

    fs::write(&bad, "[grpc]\nbar = 1\n").unwrap();
    let loaded = load(&main).unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].file, bad);
    assert_eq!(loaded.warnings[0].line, 2);
}

#[test]
fn unreadable_main_file_names_it() {
    let err = load(Path::new("/nonexistent/corten/config.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().starts_with("/nonexistent/corten/config.toml: "));
}
