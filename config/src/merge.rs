//! Overlaying one file's table on the result so far.

use toml::{Table, Value};

/// Top-level maps whose entries are whole sections owned by one plugin. An
/// import that configures a plugin restates its section in full (as with
/// containerd), so a half-merged section mixing two files never exists.
const REPLACED_PER_ENTRY: &[&str] = &["plugins", "proxy_plugins", "stream_processors"];

/// Scalars overwrite, arrays append what is not already there, tables merge
/// key by key, and plugin sections are replaced as wholes.
pub(crate) fn overlay(into: &mut Table, from: Table) {
    for (key, value) in from {
        if REPLACED_PER_ENTRY.contains(&key.as_str()) {
            match (into.get_mut(&key), value) {
                (Some(Value::Table(dst)), Value::Table(src)) => dst.extend(src),
                (_, value) => {
                    into.insert(key, value);
                }
            }
        } else {
            merge_value(into, key, value);
        }
    }
}

fn merge_value(into: &mut Table, key: String, value: Value) {
    match (into.get_mut(&key), value) {
        (Some(Value::Table(dst)), Value::Table(src)) => {
            for (k, v) in src {
                merge_value(dst, k, v);
            }
        }
        (Some(Value::Array(dst)), Value::Array(src)) => {
            for v in src {
                if !dst.contains(&v) {
                    dst.push(v);
                }
            }
        }
        (_, value) => {
            into.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn rules() {
        let mut base = table(
            r#"
            oom_score = 1
            disabled_plugins = ["a.b.c.d", "x.y.z.w"]
            [grpc]
            address = "/a"
            uid = 1
            [plugins."p.q.r.s"]
            keep = 1
            drop = 2
            [plugins."other.x.y.z"]
            kept = true
            "#,
        );
        overlay(
            &mut base,
            table(
                r#"
                oom_score = -500
                disabled_plugins = ["x.y.z.w", "e.f.g.h"]
                [grpc]
                uid = 2
                [plugins."p.q.r.s"]
                keep = 3
                "#,
            ),
        );
        let want = table(
            r#"
            oom_score = -500
            disabled_plugins = ["a.b.c.d", "x.y.z.w", "e.f.g.h"]
            [grpc]
            address = "/a"
            uid = 2
            [plugins."p.q.r.s"]
            keep = 3
            [plugins."other.x.y.z"]
            kept = true
            "#,
        );
        assert_eq!(base, want);
    }
}
