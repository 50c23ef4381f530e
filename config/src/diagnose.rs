//! Turns parser and deserializer errors into `ConfigError`s that point into
//! the file they came from.

use std::path::Path;

use crate::error::ConfigError;
use crate::keypath::{self, Segment};
use crate::locate;

/// A syntax error reported by toml_edit.
pub(crate) fn syntax(file: &Path, text: &str, err: &toml_edit::TomlError) -> ConfigError {
    let (line, column) = err.span().map_or((1, 1), |span| locate::line_col(text, span.start));
    ConfigError::Syntax {
        file: file.to_owned(),
        line,
        column,
        message: one_line(err.message()),
    }
}

/// A type or value error from deserialising `text` (or the part of it under
/// `base`). toml does not expose the key an error belongs to, so it is
/// recovered from the span: the innermost key whose value contains it.
pub(crate) fn invalid(file: &Path, text: &str, err: &toml::de::Error, base: &[Segment]) -> ConfigError {
    let (line, column, key) = match err.span() {
        Some(span) => {
            let (line, column) = locate::line_col(text, span.start);
            let mut key = locate::path_at(text, span.start);
            // An error about a whole section (e.g. `[plugins."x"]` given a
            // string) may point outside anything beneath `base`.
            if !key.starts_with(base) {
                key = base.to_vec();
            }
            (line, Some(column), key)
        }
        None => {
            let line = locate::find(text, base).map_or(1, |(line, _)| line);
            (line, None, base.to_vec())
        }
    };
    ConfigError::Invalid {
        file: file.to_owned(),
        line,
        column,
        key: keypath::display(&key),
        message: one_line(err.message()),
    }
}

/// Parser messages sometimes carry a trailing newline or a second line of
/// context; messages here are single-line so they read well in logs.
fn one_line(message: &str) -> String {
    message.trim().replace('\n', "; ")
}
