//! The one error type of the crate. Every message starts with the file it is
//! about (and the line where we know it) so it can be pasted into an editor's
//! "go to" box.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The main config file could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file named (literally or through a glob) by `imports` could not be read.
    #[error(
        "{}:{line}: import `{pattern}`: cannot read {}: {source}",
        file.display(),
        path.display()
    )]
    Import {
        /// The file whose `imports` list named it.
        file: PathBuf,
        line: usize,
        pattern: String,
        /// The file that could not be read.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An `imports` entry is not a valid glob pattern.
    #[error("{}:{line}: invalid import pattern `{pattern}`: {message}", file.display())]
    ImportPattern {
        file: PathBuf,
        line: usize,
        pattern: String,
        message: String,
    },

    /// The text is not TOML.
    #[error("{}:{line}:{column}: TOML syntax error: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    /// A known key has a value of the wrong type or an unacceptable value.
    #[error("{}:{line}: {}{message}", file.display(), key_prefix(key))]
    Invalid {
        file: PathBuf,
        /// 1-based. When the parser gave no position this is the line of the
        /// nearest enclosing key we could find.
        line: usize,
        /// 1-based, when the parser pointed at a character.
        column: Option<usize>,
        /// Dotted TOML key path, e.g. `grpc.max_recv_message_size`.
        key: String,
        message: String,
    },

    /// The file is not a version 2 (or 3) config.
    #[error("{}", version_message(file, *line, *found))]
    Version {
        file: PathBuf,
        /// Line of the `version` key, if the file has one.
        line: Option<usize>,
        /// The version the file declares, if any.
        found: Option<i64>,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("key `{key}`: ")
    }
}

fn version_message(file: &std::path::Path, line: Option<usize>, found: Option<i64>) -> String {
    let at = match line {
        Some(line) => format!("{}:{line}", file.display()),
        None => file.display().to_string(),
    };
    match found {
        None => {
            format!("{at}: no `version` key: corten reads version 2 configs; add `version = 2` at the top of the file")
        }
        Some(1) => format!(
            "{at}: version 1 configs are not supported: corten reads version 2 configs; set `version = 2` \
             and use full plugin URIs such as [plugins.\"io.containerd.grpc.v1.cri\"]"
        ),
        Some(n) => format!("{at}: unsupported config version {n}: corten reads version 2 configs (set `version = 2`)"),
    }
}
