//! Reading a config file and its imports into one `Config`.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::imports::{self, Import};
use crate::merge;
use crate::model::Config;
use crate::validate;
use crate::warning::Warning;

/// The result of loading: the effective config and what it was made from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Defaults, overlaid by the main file, overlaid by each import in order.
    pub config: Config,
    /// Every file read, in merge order (main first).
    pub sources: Vec<Source>,
    pub warnings: Vec<Warning>,
}

/// One file that went into a `Loaded`, kept so later checks (plugin sections)
/// can point at lines in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// Loads the config file at `path` and everything it imports.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_str(path, &text)
}

/// Like [`load`], with the main file's text given. `path` names it in
/// messages and anchors its relative imports.
pub fn from_str(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let mut merged = toml::Table::try_from(Config::default()).expect("the default Config serialises to a TOML table");
    let mut sources = Vec::new();
    let mut warnings = Vec::new();
    let mut seen = HashSet::new();
    let mut pending = VecDeque::new();

    seen.insert(identity(path));
    let checked = validate::check_file(path, text, true)?;
    pending.extend(imports::resolve(path, text, &checked.table)?);
    merge::overlay(&mut merged, checked.table);
    warnings.extend(checked.warnings);
    sources.push(Source {
        path: path.to_owned(),
        text: text.to_owned(),
    });

    // Breadth first, like containerd: all of a file's imports apply before
    // any of theirs, and a file already read (by any route, including a
    // cycle back to the main file) is skipped.
    while let Some(import) = pending.pop_front() {
        if !seen.insert(identity(&import.path)) {
            continue;
        }
        let text = read_import(&import)?;
        let checked = validate::check_file(&import.path, &text, false)?;
        pending.extend(imports::resolve(&import.path, &text, &checked.table)?);
        merge::overlay(&mut merged, checked.table);
        warnings.extend(checked.warnings);
        sources.push(Source {
            path: import.path,
            text,
        });
    }

    // Every file was checked against the model on its own and merging keeps
    // each key's type, so this only fails if that reasoning has a hole.
    let config = Config::deserialize_merged(merged).map_err(|err| ConfigError::Invalid {
        file: path.to_owned(),
        line: 1,
        column: None,
        key: String::new(),
        message: format!("merged configuration: {}", err.message()),
    })?;

    Ok(Loaded {
        config,
        sources,
        warnings,
    })
}

fn read_import(import: &Import) -> Result<String, ConfigError> {
    std::fs::read_to_string(&import.path).map_err(|source| ConfigError::Import {
        file: import.from.clone(),
        line: import.line,
        pattern: import.pattern.clone(),
        path: import.path.clone(),
        source,
    })
}

/// Two spellings of one file (relative, through a symlink) must count as the
/// same file, or a cycle would only end when spellings run out.
fn identity(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_owned())
}

impl Config {
    fn deserialize_merged(merged: toml::Table) -> Result<Config, toml::de::Error> {
        toml::Value::Table(merged).try_into()
    }
}
