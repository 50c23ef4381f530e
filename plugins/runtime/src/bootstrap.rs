//! Where a shim listens and which task API it speaks: read from what its
//! `start` printed, kept in the bundle as `bootstrap.json` so a restarted
//! daemon can find it again.
//!
//! A shim prints either a plain `unix://...` address (task API v2, as
//! containerd 1.6's shims do) or `{"version":2|3,"address":...,"protocol":"ttrpc"}`.
//! containerd 1.6's runc shim also writes the plain address to `address`
//! in the bundle itself; that file is read when `bootstrap.json` is missing.

use std::{io, path::Path};

use serde::{Deserialize, Serialize};

use crate::error::ShimError;

pub const BOOTSTRAP_FILE: &str = "bootstrap.json";
pub const ADDRESS_FILE: &str = "address";
pub const BINARY_FILE: &str = "shim-binary-path";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    pub version: u32,
    pub address: String,
    pub protocol: String,
}

impl Bootstrap {
    /// The ttrpc service the shim registers its task API under.
    pub fn task_service(&self) -> &'static str {
        match self.version {
            3 => "containerd.task.v3.Task",
            _ => "containerd.task.v2.Task",
        }
    }

    fn plain(address: &str) -> Result<Self, ShimError> {
        if !address.starts_with("unix://") {
            return Err(ShimError::Bootstrap(format!("{address:?} is not a unix:// address")));
        }
        Ok(Bootstrap {
            version: 2,
            address: address.into(),
            protocol: "ttrpc".into(),
        })
    }

    /// Parses what `start` printed on stdout.
    pub fn parse(output: &[u8]) -> Result<Self, ShimError> {
        let text = std::str::from_utf8(output)
            .map_err(|_| ShimError::Bootstrap("output is not UTF-8".into()))?
            .trim();
        if text.is_empty() {
            return Err(ShimError::Bootstrap("output is empty".into()));
        }
        if !text.starts_with('{') {
            return Self::plain(text);
        }
        let b: Bootstrap =
            serde_json::from_str(text).map_err(|e| ShimError::Bootstrap(format!("bootstrap JSON {text:?}: {e}")))?;
        if b.protocol != "ttrpc" {
            return Err(ShimError::Bootstrap(format!(
                "protocol {:?} is not supported (only ttrpc)",
                b.protocol
            )));
        }
        if !matches!(b.version, 2 | 3) {
            return Err(ShimError::Bootstrap(format!(
                "task API version {} is not supported (2 or 3)",
                b.version
            )));
        }
        if b.address.is_empty() {
            return Err(ShimError::Bootstrap("bootstrap JSON has no address".into()));
        }
        Ok(b)
    }

    /// Removes the socket of a shim that died without removing it (a
    /// killed shim cannot): only a socket file nobody accepts on.
    pub fn remove_stale_socket(&self) {
        let path = self.address.strip_prefix("unix://").unwrap_or(&self.address);
        if path.starts_with('@') || !path.starts_with('/') {
            return;
        }
        let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        });
        if !is_socket {
            return;
        }
        if let Err(e) = std::os::unix::net::UnixStream::connect(path) {
            if e.kind() == io::ErrorKind::ConnectionRefused {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::debug!("remove stale shim socket {path}: {e}");
                }
            }
        }
    }

    /// Writes `bootstrap.json` into the bundle, atomically.
    pub fn save(&self, bundle: &Path) -> io::Result<()> {
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        write_atomic(bundle, BOOTSTRAP_FILE, &json)
    }

    /// `bootstrap.json`, else the shim's own `address` file; `None` when
    /// the bundle has neither (the shim never got far enough to listen).
    pub fn load(bundle: &Path) -> Result<Option<Self>, ShimError> {
        match std::fs::read(bundle.join(BOOTSTRAP_FILE)) {
            Ok(data) => return Self::parse(&data).map(Some),
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(ShimError::io(format!("read {BOOTSTRAP_FILE}"), e))
            }
            Err(_) => {}
        }
        match std::fs::read(bundle.join(ADDRESS_FILE)) {
            Ok(data) => Self::parse(&data).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ShimError::io(format!("read {ADDRESS_FILE}"), e)),
        }
    }
}

/// Records which binary runs this bundle's shim, for its `delete` later.
pub fn save_binary(bundle: &Path, binary: &Path) -> io::Result<()> {
    write_atomic(bundle, BINARY_FILE, binary.as_os_str().as_encoded_bytes())
}

pub fn load_binary(bundle: &Path) -> io::Result<Option<std::path::PathBuf>> {
    match std::fs::read(bundle.join(BINARY_FILE)) {
        Ok(data) if !data.is_empty() => {
            let text = String::from_utf8(data).map_err(io::Error::other)?;
            Ok(Some(text.trim().into()))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Written owner-only under a temporary name, then renamed into place.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let tmp = dir.join(format!(".{name}"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(data)?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_json_forms() {
        let b = Bootstrap::parse(b"unix:///run/containerd/s/abc").unwrap();
        assert_eq!((b.version, b.address.as_str()), (2, "unix:///run/containerd/s/abc"));
        assert_eq!(b.task_service(), "containerd.task.v2.Task");
        let b = Bootstrap::parse(br#"{"version":3,"address":"unix:///s/x","protocol":"ttrpc"}"#).unwrap();
        assert_eq!((b.version, b.task_service()), (3, "containerd.task.v3.Task"));
        let b = Bootstrap::parse(b"  unix:///x\n").unwrap();
        assert_eq!(b.address, "unix:///x");
        for bad in [
            &b""[..],
            b"hello",
            br#"{"version":3,"address":"unix:///x","protocol":"grpc"}"#,
            br#"{"version":4,"address":"unix:///x","protocol":"ttrpc"}"#,
            br#"{"version":3,"address":"","protocol":"ttrpc"}"#,
            b"{broken",
        ] {
            assert!(Bootstrap::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn saved_then_loaded_and_the_address_file_as_fallback() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Bootstrap::load(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(ADDRESS_FILE), "unix:///run/containerd/s/1").unwrap();
        assert_eq!(
            Bootstrap::load(dir.path()).unwrap().unwrap().address,
            "unix:///run/containerd/s/1"
        );
        let b = Bootstrap {
            version: 3,
            address: "unix:///s/2".into(),
            protocol: "ttrpc".into(),
        };
        b.save(dir.path()).unwrap();
        assert_eq!(Bootstrap::load(dir.path()).unwrap(), Some(b));

        let sock = dir.path().join("shim.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let b = Bootstrap::parse(format!("unix://{}", sock.display()).as_bytes()).unwrap();
        b.remove_stale_socket();
        assert!(sock.exists(), "a live socket stays");
        drop(listener);
        b.remove_stale_socket();
        assert!(!sock.exists(), "a dead one goes");

        assert_eq!(load_binary(dir.path()).unwrap(), None);
        save_binary(dir.path(), Path::new("/usr/bin/containerd-shim-runc-v2")).unwrap();
        assert_eq!(
            load_binary(dir.path()).unwrap().unwrap(),
            Path::new("/usr/bin/containerd-shim-runc-v2")
        );
    }
}
