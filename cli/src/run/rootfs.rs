//! A look into a container's root filesystem before it runs: its snapshot
//! is mounted read-only in a private temporary directory just long enough
//! to read the account files the image's user is resolved against.

use std::{fs, os::unix::fs::DirBuilderExt, path::PathBuf};

use anyhow::Context as _;
use corten_api::containerd::types::Mount;

use super::spec::AccountFiles;
use crate::commands::images::{mount_all, unmount_all};

/// Reads `/etc/passwd` and `/etc/group` from the root filesystem that
/// `mounts` (a snapshot's) make up.
pub fn read_accounts(mounts: &[Mount]) -> anyhow::Result<AccountFiles> {
    if mounts.is_empty() {
        return Ok(AccountFiles::default());
    }
    let readonly = readonly_mounts(mounts);
    let dir = TempMountPoint::create()?;
    mount_all(&readonly, &dir.path).context("mounting the container's root filesystem to read its accounts")?;
    let files = AccountFiles::read_from(&dir.path);
    let unmounted = unmount_all(&dir.path);
    if unmounted.is_ok() {
        dir.remove();
    }
    unmounted?;
    files.context("reading the image's /etc/passwd and /etc/group")
}

/// The same filesystem, read-only: an overlay loses its upper and work
/// directories (the upper one joining the lower ones), and a single layer
/// left becomes a read-only bind mount of it; other mounts get `ro`.
pub fn readonly_mounts(mounts: &[Mount]) -> Vec<Mount> {
    mounts.iter().map(readonly_mount).collect()
}

fn readonly_mount(m: &Mount) -> Mount {
    let without_rw = |options: &[String]| -> Vec<String> {
        let mut kept: Vec<String> = options.iter().filter(|o| *o != "rw" && *o != "ro").cloned().collect();
        kept.push("ro".to_string());
        kept
    };
    if m.r#type != "overlay" {
        return Mount {
            options: without_rw(&m.options),
            ..m.clone()
        };
    }
    let mut upper = None;
    let mut lowers: Vec<String> = Vec::new();
    let mut rest = Vec::new();
    for option in &m.options {
        if let Some(dir) = option.strip_prefix("upperdir=") {
            upper = Some(dir.to_string());
        } else if let Some(dirs) = option.strip_prefix("lowerdir=") {
            lowers.extend(dirs.split(':').map(str::to_string));
        } else if !option.starts_with("workdir=") {
            rest.push(option.clone());
        }
    }
    let layers: Vec<String> = upper.into_iter().chain(lowers).collect();
    if let [only] = layers.as_slice() {
        return Mount {
            r#type: "bind".to_string(),
            source: only.clone(),
            target: m.target.clone(),
            options: vec!["ro".to_string(), "rbind".to_string()],
        };
    }
    let mut options = without_rw(&rest);
    options.push(format!("lowerdir={}", layers.join(":")));
    Mount { options, ..m.clone() }
}

/// A fresh, private directory under the system's temporary directory.
struct TempMountPoint {
    path: PathBuf,
}

impl TempMountPoint {
    fn create() -> anyhow::Result<Self> {
        let base = std::env::temp_dir();
        for _ in 0..16 {
            let path = base.join(format!(
                "corten-mount-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempMountPoint { path }),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err).with_context(|| format!("creating {}", path.display())),
            }
        }
        anyhow::bail!("no free temporary mount point under {}", base.display())
    }

    /// Only an empty directory goes: never what might still be mounted.
    fn remove(&self) {
        let _ = fs::remove_dir(&self.path);
    }
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
    fn overlay_with_one_layer_under_an_upper_stays_an_overlay() {
        let m = mount(
            "overlay",
            "overlay",
            &["index=off", "workdir=/s/2/work", "upperdir=/s/2/fs", "lowerdir=/s/1/fs"],
        );
        assert_eq!(
            readonly_mounts(&[m]),
            [mount(
                "overlay",
                "overlay",
                &["index=off", "ro", "lowerdir=/s/2/fs:/s/1/fs"]
            )]
        );
    }

    #[test]
    fn a_single_layer_becomes_a_readonly_bind_mount() {
        let m = mount("overlay", "overlay", &["lowerdir=/s/1/fs"]);
        assert_eq!(readonly_mounts(&[m]), [mount("bind", "/s/1/fs", &["ro", "rbind"])]);
    }

    #[test]
    fn other_mounts_become_readonly() {
        let m = mount("bind", "/s/1/fs", &["rbind", "rw"]);
        assert_eq!(readonly_mounts(&[m]), [mount("bind", "/s/1/fs", &["rbind", "ro"])]);
    }

    #[test]
    fn no_mounts_no_accounts() {
        let files = read_accounts(&[]).unwrap();
        assert!(files.passwd.is_none() && files.group.is_none());
    }

    /// Needs root (mount(2)); skipped otherwise.
    #[test]
    fn accounts_are_read_through_a_readonly_bind_mount() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("fs");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        let m = mount("bind", root.to_str().unwrap(), &["rbind", "rw"]);
        let files = read_accounts(&[m]).unwrap();
        assert_eq!(files.passwd.as_deref(), Some("root:x:0:0::/:/bin/sh\n"));
        assert_eq!(files.group, None);
        assert!(root.join("etc/passwd").exists(), "the source is untouched");
    }
}
