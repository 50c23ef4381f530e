//! Mounts the daemon hands out (for a snapshot, say), shown as shell
//! commands a user can run or pipe to `sh`, or as JSON in ctr's shape.

use corten_api::containerd::types::Mount;
use serde::Serialize;

/// One `mount -t TYPE SOURCE TARGET -o OPTIONS` line per mount, in order,
/// each mounted at `target` (or below it, when the mount names a path of
/// its own). Words that a shell would split or expand are quoted, so the
/// output can be piped to `sh` whatever the paths hold; ordinary paths and
/// options come out unquoted, exactly as ctr prints them.
pub fn shell_commands(target: &str, mounts: &[Mount]) -> String {
    mounts
        .iter()
        .map(|m| {
            let mut line = format!(
                "mount -t {} {} {}",
                shell_word(&m.r#type),
                shell_word(&m.source),
                shell_word(&mount_point(target, &m.target))
            );
            // `-o ''` would be an empty option list at best; leave it out.
            if !m.options.is_empty() {
                line.push_str(" -o ");
                line.push_str(&shell_word(&m.options.join(",")));
            }
            line.push('\n');
            line
        })
        .collect()
}

/// Where a mount goes: `target` itself, or the mount's own path taken
/// relative to `target`.
fn mount_point(target: &str, below: &str) -> String {
    let below = below.trim_start_matches('/');
    if below.is_empty() {
        return target.to_string();
    }
    format!("{}/{below}", target.trim_end_matches('/'))
}

/// `word` as one shell word: unchanged when it holds only characters no
/// shell treats specially, otherwise single-quoted.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-.,/:=+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A mount in the JSON shape ctr prints for `--mounts`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountView {
    #[serde(rename = "Type")]
    kind: String,
    source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    target: String,
    options: Vec<String>,
}

pub fn views(mounts: &[Mount]) -> Vec<MountView> {
    mounts
        .iter()
        .map(|m| MountView {
            kind: m.r#type.clone(),
            source: m.source.clone(),
            target: m.target.clone(),
            options: m.options.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: kind.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_line_matches_ctr() {
        let mounts = [mount(
            "overlay",
            "overlay",
            &[
                "index=off",
                "workdir=/var/lib/s/snapshots/3/work",
                "upperdir=/var/lib/s/snapshots/3/fs",
                "lowerdir=/var/lib/s/snapshots/2/fs:/var/lib/s/snapshots/1/fs",
            ],
        )];
        assert_eq!(
            shell_commands("/mnt/x", &mounts),
            "mount -t overlay overlay /mnt/x -o index=off,workdir=/var/lib/s/snapshots/3/work,\
             upperdir=/var/lib/s/snapshots/3/fs,lowerdir=/var/lib/s/snapshots/2/fs:/var/lib/s/snapshots/1/fs\n"
        );
    }

    #[test]
    fn one_line_per_mount_and_no_empty_options() {
        let mounts = [mount("bind", "/a/fs", &["ro", "rbind"]), mount("tmpfs", "tmpfs", &[])];
        assert_eq!(
            shell_commands("/mnt", &mounts),
            "mount -t bind /a/fs /mnt -o ro,rbind\n\
             mount -t tmpfs tmpfs /mnt\n"
        );
        assert_eq!(shell_commands("/mnt", &[]), "");
    }

    #[test]
    fn awkward_words_are_quoted() {
        let mounts = [mount("bind", "/a b/it's", &["rw"])];
        assert_eq!(
            shell_commands("/mnt/$HOME", &mounts),
            r"mount -t bind '/a b/it'\''s' '/mnt/$HOME' -o rw".to_string() + "\n"
        );
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn a_mount_with_its_own_target_goes_below_the_given_one() {
        let mut m = mount("bind", "/src", &["rbind"]);
        m.target = "/etc/hosts".into();
        assert_eq!(
            shell_commands("/mnt/root/", &[m]),
            "mount -t bind /src /mnt/root/etc/hosts -o rbind\n"
        );
        assert_eq!(mount_point("/mnt", "/"), "/mnt");
        assert_eq!(mount_point("/", "x"), "/x");
    }

    #[test]
    fn json_shape_is_ctrs() {
        let text = serde_json::to_string(&views(&[mount("bind", "/s", &["rw"])])).unwrap();
        assert_eq!(text, r#"[{"Type":"bind","Source":"/s","Options":["rw"]}]"#);
    }
}
