//! Expanding one file's `imports` list into the files to load next.

use std::path::{Component, Path, PathBuf};

use crate::error::ConfigError;
use crate::keypath::Segment;
use crate::locate;

/// One file to load because some file's `imports` named it.
#[derive(Debug, Clone)]
pub(crate) struct Import {
    pub(crate) path: PathBuf,
    /// The `imports` entry that produced it, for messages.
    pub(crate) pattern: String,
    /// The importing file and the line of the entry.
    pub(crate) from: PathBuf,
    pub(crate) line: usize,
}

/// Patterns with glob metacharacters may match nothing (a drop-in directory
/// that is still empty); a plain path must exist, as containerd requires.
/// Matches of one pattern come sorted, so drop-ins apply in name order.
pub(crate) fn resolve(file: &Path, text: &str, table: &toml::Table) -> Result<Vec<Import>, ConfigError> {
    let Some(toml::Value::Array(entries)) = table.get("imports") else {
        return Ok(Vec::new());
    };
    let dir = file.parent().unwrap_or_else(|| Path::new(""));
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        // The typed check has already rejected non-strings.
        let Some(pattern) = entry.as_str() else {
            continue;
        };
        let path = [Segment::Key("imports".to_owned()), Segment::Index(i)];
        let line = locate::find(text, &path).map_or(1, |(l, _)| l);
        let import = |path: PathBuf| Import {
            path,
            pattern: pattern.to_owned(),
            from: file.to_owned(),
            line,
        };
        if !is_glob(pattern) {
            out.push(import(clean(&dir.join(pattern))));
            continue;
        }
        let full = if Path::new(pattern).is_absolute() {
            pattern.to_owned()
        } else {
            // The directory is a literal location, not part of the pattern:
            // a `[` in it must not start a character class.
            let dir = glob::Pattern::escape(&dir.to_string_lossy());
            if dir.is_empty() {
                pattern.to_owned()
            } else {
                format!("{}/{pattern}", dir.trim_end_matches('/'))
            }
        };
        let matches = glob::glob(&full).map_err(|err| ConfigError::ImportPattern {
            file: file.to_owned(),
            line,
            pattern: pattern.to_owned(),
            message: err.to_string(),
        })?;
        // Unreadable directories along the way just contribute no matches,
        // and only files are configs: a `*` also matching a subdirectory is
        // not a mistake worth failing over.
        let mut found: Vec<PathBuf> = matches.flatten().filter(|p| p.is_file()).map(|p| clean(&p)).collect();
        found.sort();
        out.extend(found.into_iter().map(import));
    }
    Ok(out)
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Lexical clean-up (as Go's `filepath.Clean`, which containerd applies) so
/// `conf.d/../extra/x.toml` is reported as `extra/x.toml`.
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_is_lexical() {
        for (input, want) in [
            ("/etc/corten/conf.d/../extra/x.toml", "/etc/corten/extra/x.toml"),
            ("./a/./b.toml", "a/b.toml"),
            ("../../a.toml", "../../a.toml"),
            ("a/../../b.toml", "../b.toml"),
            ("/../a.toml", "/a.toml"),
            ("a/..", "."),
        ] {
            assert_eq!(clean(Path::new(input)), PathBuf::from(want), "{input}");
        }
    }
}
