//! Runtime names to shim binaries: `io.containerd.runc.v2` is run as
//! `containerd-shim-runc-v2`, found beside the daemon's own binary or on
//! PATH; an absolute path names the binary itself.

use std::{
    ffi::OsString,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::error::ShimError;

/// Where shim binaries are looked for, in order.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    /// The directory of the daemon's binary.
    pub beside: Option<PathBuf>,
    /// A PATH-style list of directories.
    pub path: Option<OsString>,
}

impl Resolver {
    /// Looks beside the running executable, then on this process's PATH.
    pub fn from_env() -> Self {
        Resolver {
            beside: std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_path_buf)),
            path: std::env::var_os("PATH"),
        }
    }

    /// The shim binary for `runtime`: InvalidRuntime for a name that does not
    /// have the `<prefix>.<name>.<version>` form, BinaryNotFound when no
    /// executable of that name exists where we look.
    pub fn resolve(&self, runtime: &str) -> Result<PathBuf, ShimError> {
        if runtime.starts_with('/') {
            let path = PathBuf::from(runtime);
            return if is_executable(&path) {
                Ok(path)
            } else {
                Err(ShimError::BinaryNotFound {
                    runtime: runtime.into(),
                    binary: runtime.into(),
                    searched: "no executable file at that path".into(),
                })
            };
        }
        let name = binary_name(runtime).ok_or_else(|| ShimError::InvalidRuntime(runtime.into()))?;
        let mut dirs: Vec<PathBuf> = self.beside.iter().cloned().collect();
        if let Some(path) = &self.path {
            dirs.extend(std::env::split_paths(path).filter(|d| d.is_absolute()));
        }
        dirs.iter()
            .map(|dir| dir.join(&name))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| ShimError::BinaryNotFound {
                runtime: runtime.into(),
                binary: name,
                searched: match &self.beside {
                    Some(dir) => format!("looked beside the daemon in {} and on PATH", dir.display()),
                    None => "looked on PATH".into(),
                },
            })
    }
}

/// `io.containerd.runc.v2` -> `containerd-shim-runc-v2`: the last two
/// dot-separated parts name the shim and its version.
pub fn binary_name(runtime: &str) -> Option<String> {
    let parts: Vec<&str> = runtime.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let valid = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let (name, version) = (parts[parts.len() - 2], parts[parts.len() - 1]);
    (valid(name) && valid(version)).then(|| format!("containerd-shim-{name}-{version}"))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            binary_name("io.containerd.runc.v2").as_deref(),
            Some("containerd-shim-runc-v2")
        );
        assert_eq!(
            binary_name("io.containerd.runsc.v1").as_deref(),
            Some("containerd-shim-runsc-v1")
        );
        assert_eq!(binary_name("corten.v2").as_deref(), Some("containerd-shim-corten-v2"));
        for bad in ["", "runc", "io..v2", "io.containerd.runc.", "a/b.v2", "io.c.r un.v2"] {
            assert_eq!(binary_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn looks_beside_then_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let (beside, on_path) = (dir.path().join("beside"), dir.path().join("bin"));
        for d in [&beside, &on_path] {
            std::fs::create_dir(d).unwrap();
        }
        let shim = |d: &Path, mode: u32| {
            let p = d.join("containerd-shim-x-v9");
            std::fs::write(&p, b"#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let resolver = Resolver {
            beside: Some(beside.clone()),
            path: Some(std::env::join_paths([&on_path]).unwrap()),
        };
        let e = resolver.resolve("io.containerd.x.v9").unwrap_err();
        assert!(matches!(&e, ShimError::BinaryNotFound { binary, .. } if binary == "containerd-shim-x-v9"));
        shim(&on_path, 0o644); // not executable: skipped
        assert!(resolver.resolve("io.containerd.x.v9").is_err());
        let found = shim(&on_path, 0o755);
        assert_eq!(resolver.resolve("io.containerd.x.v9").unwrap(), found);
        let first = shim(&beside, 0o755);
        assert_eq!(resolver.resolve("io.containerd.x.v9").unwrap(), first);
        assert_eq!(resolver.resolve(first.to_str().unwrap()).unwrap(), first);
        assert!(matches!(
            resolver.resolve("/nonexistent/shim"),
            Err(ShimError::BinaryNotFound { .. })
        ));
        assert!(matches!(resolver.resolve("runc"), Err(ShimError::InvalidRuntime(_))));
    }
}
