//! Checks one file on its own, before it is merged with anything, so every
//! problem is reported against the file and line that caused it.

use std::path::Path;

use crate::diagnose;
use crate::duration::parse_duration;
use crate::error::ConfigError;
use crate::keypath::{self, Segment};
use crate::locate;
use crate::model::Config;
use crate::warning::{Warning, UNKNOWN_KEY};

/// What a file contributes once it is known to be sound.
pub(crate) struct Checked {
    pub(crate) table: toml::Table,
    pub(crate) warnings: Vec<Warning>,
}

/// `is_main` marks the file the daemon was pointed at: only it must declare
/// `version`, imports normally leave it out (as with containerd, where the
/// version of the merged result is what counts).
pub(crate) fn check_file(file: &Path, text: &str, is_main: bool) -> Result<Checked, ConfigError> {
    // toml_edit first: its syntax errors carry a position we can report.
    if let Err(err) = toml_edit::Document::parse(text) {
        return Err(diagnose::syntax(file, text, &err));
    }
    let table: toml::Table = toml::from_str(text).map_err(|err| diagnose::invalid(file, text, &err, &[]))?;

    check_version(file, text, &table, is_main)?;

    let mut unknown = Vec::new();
    let de = toml::Deserializer::parse(text).map_err(|err| diagnose::invalid(file, text, &err, &[]))?;
    let typed: Config = serde_ignored::deserialize(de, |path| {
        unknown.push(keypath::from_ignored(&path));
    })
    .map_err(|err| diagnose::invalid(file, text, &err, &[]))?;

    check_timeouts(file, text, &table, &typed)?;

    let mut warnings: Vec<Warning> = unknown
        .iter()
        .map(|path| warning(file, text, path, UNKNOWN_KEY.to_owned()))
        .collect();
    warnings.extend(plugin_uri_warnings(file, text, &typed));
    Ok(Checked { table, warnings })
}

fn check_version(file: &Path, text: &str, table: &toml::Table, is_main: bool) -> Result<(), ConfigError> {
    let line = || locate::find(text, &keypath::from_keys(&["version"])).map(|(l, _)| l);
    match table.get("version") {
        None if is_main => Err(ConfigError::Version {
            file: file.to_owned(),
            line: None,
            found: None,
        }),
        // Version 3 is containerd 2's layout of the same top-level keys;
        // accepting it lets one file serve both daemons.
        None | Some(toml::Value::Integer(2 | 3)) => Ok(()),
        Some(toml::Value::Integer(n)) => Err(ConfigError::Version {
            file: file.to_owned(),
            line: line(),
            found: Some(*n),
        }),
        // Not an integer: the typed check reports it with the usual wording.
        Some(_) => Ok(()),
    }
}

/// Bad durations are rejected at load rather than when a timeout is first
/// used, which may be long after start-up and far from the file.
fn check_timeouts(file: &Path, text: &str, table: &toml::Table, typed: &Config) -> Result<(), ConfigError> {
    if !table.contains_key("timeouts") {
        return Ok(());
    }
    for (key, value) in &typed.timeouts {
        if parse_duration(value).is_none() {
            let path = keypath::from_keys(&["timeouts", key]);
            let line = locate::find(text, &path).map_or(1, |(l, _)| l);
            return Err(ConfigError::Invalid {
                file: file.to_owned(),
                line,
                column: None,
                key: keypath::display(&path),
                message: format!(
                    "invalid duration {value:?}: expected a Go duration such as \"5s\", \"100ms\" or \"1m30s\""
                ),
            });
        }
    }
    Ok(())
}

/// Version 2 names plugins by full URI (`io.containerd.grpc.v1.cri`); a
/// short name such as `cri` is a leftover from version 1 and silently
/// matches nothing, so say so. containerd refuses such names outright; a
/// warning keeps corten's own plugin namespaces free of that rule.
fn plugin_uri_warnings(file: &Path, text: &str, typed: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    let lists = [
        ("disabled_plugins", &typed.disabled_plugins),
        ("required_plugins", &typed.required_plugins),
    ];
    for (list, names) in lists {
        for (i, name) in names.iter().enumerate() {
            if !is_plugin_uri(name) {
                let path = vec![Segment::Key(list.to_owned()), Segment::Index(i)];
                out.push(warning(file, text, &path, not_a_uri(name)));
            }
        }
    }
    for name in typed.plugins.keys() {
        if !is_plugin_uri(name) {
            let path = keypath::from_keys(&["plugins", name]);
            out.push(warning(file, text, &path, not_a_uri(name)));
        }
    }
    out
}

fn is_plugin_uri(name: &str) -> bool {
    let parts: Vec<&str> = name.splitn(4, '.').collect();
    parts.len() == 4 && parts.iter().all(|p| !p.is_empty())
}

fn not_a_uri(name: &str) -> String {
    format!(
        "`{name}` is not a plugin URI (version 2 configs name plugins in full, e.g. \
         io.containerd.grpc.v1.cri); it matches no plugin"
    )
}

pub(crate) fn warning(file: &Path, text: &str, path: &[Segment], message: String) -> Warning {
    Warning {
        file: file.to_owned(),
        line: locate::find(text, path).map_or(1, |(l, _)| l),
        key: keypath::display(path),
        message,
    }
}
