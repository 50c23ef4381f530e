//! `Loaded::section`: typed plugin configs with positions into the right file.

use std::fs;
use std::path::{Path, PathBuf};

use corten_config::{load, ConfigError};
use serde::Deserialize;

#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
struct Sled {
    path: String,
    cache_capacity: u64,
    compress: bool,
}

const SLED: &str = "io.containerd.metadata.v1.sled";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, text).unwrap();
    path
}

fn setup(import_text: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        r#"version = 2
imports = ["conf.d/*.toml"]

[plugins."io.containerd.metadata.v1.sled"]
  path = "/main"
  cache_capacity = 10
"#,
    );
    let import = write(dir.path(), "conf.d/sled.toml", import_text);
    (dir, main, import)
}

#[test]
fn import_replaces_section() {
    let (_dir, main, _) = setup("[plugins.\"io.containerd.metadata.v1.sled\"]\ncompress = true\n");
    let loaded = load(&main).unwrap();
    let (sled, warnings) = loaded.section::<Sled>(&["plugins", SLED]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    // Replaced whole: main's path and capacity do not leak through.
    assert_eq!(
        sled,
        Sled {
            path: String::new(),
            cache_capacity: 0,
            compress: true
        }
    );
}

#[test]
fn wrong_type_in_import_names_import_and_line() {
    let (_dir, main, import) = setup(
        "# sled tuning\n[plugins.\"io.containerd.metadata.v1.sled\"]\n  path = \"/i\"\n  cache_capacity = \"lots\"\n",
    );
    let loaded = load(&main).unwrap();
    let err = loaded.section::<Sled>(&["plugins", SLED]).unwrap_err();
    match &err {
        ConfigError::Invalid {
            file,
            line,
            key,
            message,
            ..
        } => {
            assert_eq!(file, &import);
            assert_eq!(*line, 4);
            assert_eq!(key, "plugins.\"io.containerd.metadata.v1.sled\".cache_capacity");
            assert!(message.contains("invalid type: string \"lots\""), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().starts_with(&format!(
            "{}:4: key `plugins.\"io.containerd.metadata.v1.sled\".cache_capacity`: invalid type",
            import.display()
        )),
        "{err}"
    );
}

#[test]
fn wrong_type_in_replaced_main_section_is_still_reported() {
    let (_dir, main, _) = setup("[plugins.\"io.containerd.metadata.v1.sled\"]\ncompress = true\n");
    let text = fs::read_to_string(&main)
        .unwrap()
        .replace("cache_capacity = 10", "cache_capacity = -1");
    fs::write(&main, text).unwrap();
    let loaded = load(&main).unwrap();
    let err = loaded.section::<Sled>(&["plugins", SLED]).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { file, line: 6, .. } if file == &main),
        "{err:?}"
    );
}

#[test]
fn section_of_wrong_shape() {
    let (_dir, main, import) = setup("[plugins]\n\"io.containerd.metadata.v1.sled\" = \"oops\"\n");
    let loaded = load(&main).unwrap();
    let err = loaded.section::<Sled>(&["plugins", SLED]).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { file, line: 2, key, .. }
            if file == &import && key == "plugins.\"io.containerd.metadata.v1.sled\""),
        "{err:?}"
    );
}

#[test]
fn unknown_keys_warn_with_file_and_line() {
    let (_dir, main, import) = setup(
        "[plugins.\"io.containerd.metadata.v1.sled\"]\n  path = \"/i\"\n  speed = \"fast\"\n  [plugins.\"io.containerd.metadata.v1.sled\".extra]\n  a = 1\n",
    );
    let loaded = load(&main).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let (sled, warnings) = loaded.section::<Sled>(&["plugins", SLED]).unwrap();
    assert_eq!(sled.path, "/i");
    let got: Vec<(PathBuf, usize, String)> = warnings
        .iter()
        .map(|w| (w.file.clone(), w.line, w.key.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                import.clone(),
                4,
                "plugins.\"io.containerd.metadata.v1.sled\".extra".to_owned()
            ),
            (
                import.clone(),
                3,
                "plugins.\"io.containerd.metadata.v1.sled\".speed".to_owned()
            ),
        ]
    );
    assert_eq!(
        warnings[1].to_string(),
        format!(
            "{}:3: plugins.\"io.containerd.metadata.v1.sled\".speed: unknown key, ignored",
            import.display()
        )
    );
}

#[test]
fn absent_section_gives_default() {
    let (_dir, main, _) = setup("oom_score = 1\n");
    let loaded = load(&main).unwrap();
    let (other, warnings) = loaded
        .section::<Sled>(&["plugins", "io.containerd.metadata.v1.other"])
        .unwrap();
    assert_eq!(other, Sled::default());
    assert!(warnings.is_empty());
    assert_eq!(loaded.locate(&["plugins", "io.containerd.metadata.v1.other"]), None);
    // The main file's section stands when no import replaces it.
    let (sled, _) = loaded.section::<Sled>(&["plugins", SLED]).unwrap();
    assert_eq!(sled.path, "/main");
    assert_eq!(sled.cache_capacity, 10);
}

#[test]
fn section_reflects_changes_to_the_loaded_config() {
    let (_dir, main, _) = setup("oom_score = 1\n");
    let mut loaded = load(&main).unwrap();
    loaded.config.plugins.insert(
        SLED.to_owned(),
        toml::from_str::<toml::Value>("path = \"/override\"").unwrap(),
    );
    let (sled, _) = loaded.section::<Sled>(&["plugins", SLED]).unwrap();
    assert_eq!(sled.path, "/override");
}

#[test]
fn non_plugin_section() {
    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Grpc {
        address: String,
    }
    let (_dir, main, _) = setup("[grpc]\naddress = \"/imported.sock\"\n");
    let loaded = load(&main).unwrap();
    let (grpc, warnings) = loaded.section::<Grpc>(&["grpc"]).unwrap();
    // Ordinary tables merge, so the import's value wins.
    assert_eq!(grpc.address, "/imported.sock");
    assert!(warnings.is_empty(), "{warnings:?}");
}
