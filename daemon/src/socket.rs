//! The gRPC unix socket: a stale one left by a crash is replaced, a live one
//! (another daemon) is refused, and the new one is only reachable by its
//! owner and group.

use std::{
    io::ErrorKind,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
};

use anyhow::{bail, Context as _};
use tokio::net::UnixListener;

/// `unix:///x` and `/x` both name the socket `/x`, as in containerd.
pub fn path_of(address: &str) -> &Path {
    Path::new(address.strip_prefix("unix://").unwrap_or(address))
}

/// Refuses an address another live process serves, and removes a stale
/// socket. Runs before the plugins start, so a second daemon fails fast and
/// never touches the first one's data.
pub fn claim(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("inspect {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!("{} exists and is not a socket; refusing to replace it", path.display());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "another daemon is serving on {}; stop it or choose another --address",
            path.display()
        ),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {
            tracing::info!("removing stale socket {}", path.display());
            std::fs::remove_file(path).with_context(|| format!("remove stale socket {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("probe {}", path.display())),
    }
}

/// Binds the socket with mode 0660, owned by `uid`:`gid` when they are set.
pub fn bind(path: &Path, uid: u32, gid: u32) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    if uid != 0 || gid != 0 {
        nix::unistd::chown(path, Some(uid.into()), Some(gid.into()))
            .with_context(|| format!("chown {} to {uid}:{gid}", path.display()))?;
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_is_replaced_live_is_refused() {
        let dir = std::env::temp_dir().join(format!("corten-sock-{}", std::process::id()));
        let path = dir.join("s.sock");
        let live = bind(&path, 0, 0).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
        assert!(claim(&path).unwrap_err().to_string().contains("another daemon"));
        drop(live); // the file stays behind, as after a crash
        claim(&path).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, b"data").unwrap();
        assert!(claim(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unix_scheme_is_optional() {
        assert_eq!(path_of("unix:///run/x.sock"), Path::new("/run/x.sock"));
        assert_eq!(path_of("/run/x.sock"), Path::new("/run/x.sock"));
    }
}
