//! Key paths inside a TOML document, and how we print them in messages.

use std::fmt::Write as _;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

pub(crate) fn from_keys(keys: &[&str]) -> Vec<Segment> {
    keys.iter().map(|k| Segment::Key((*k).to_owned())).collect()
}

pub(crate) fn from_ignored(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut out = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, .. }
        | Path::Map { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => from_ignored(parent),
    };
    match path {
        Path::Seq { index, .. } => out.push(Segment::Index(*index)),
        Path::Map { key, .. } => out.push(Segment::Key(key.clone())),
        _ => {}
    }
    out
}

/// Renders a path the way a user would write it in TOML, so plugin URIs
/// (which contain dots) come out quoted and unambiguous:
/// `plugins."io.containerd.gc.v1.scheduler".pause_threshold`.
pub(crate) fn display(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                if is_bare(k) {
                    out.push_str(k);
                } else {
                    out.push('"');
                    for c in k.chars() {
                        match c {
                            '"' => out.push_str("\\\""),
                            '\\' => out.push_str("\\\\"),
                            c if c.is_control() => {
                                let _ = write!(out, "\\u{:04X}", c as u32);
                            }
                            c => out.push(c),
                        }
                    }
                    out.push('"');
                }
            }
        }
    }
    out
}

fn is_bare(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_keys_that_need_it() {
        let path = vec![
            Segment::Key("plugins".into()),
            Segment::Key("io.containerd.gc.v1.scheduler".into()),
            Segment::Key("list".into()),
            Segment::Index(2),
        ];
        assert_eq!(display(&path), "plugins.\"io.containerd.gc.v1.scheduler\".list[2]");
        assert_eq!(display(&[]), "");
    }
}
