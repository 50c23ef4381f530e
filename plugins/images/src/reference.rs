//! Image references: parsed and normalised as docker and containerd do
//! (`busybox` is `docker.io/library/busybox:latest`), and refused with a
//! message naming them when they are malformed.

use std::collections::BTreeMap;

use corten_core::{digest::Digest, Error};
use oci_client::Reference;

/// A parsed reference and what a pull derives from it.
#[derive(Debug, Clone)]
pub struct ImageRef {
    pub inner: Reference,
}

/// `containerd.io/distribution.source.<host>` = comma-separated repositories.
pub const DISTRIBUTION_SOURCE_PREFIX: &str = "containerd.io/distribution.source.";

impl ImageRef {
    pub fn parse(text: &str) -> Result<ImageRef, Error> {
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::InvalidArgument(format!(
                "invalid reference {text:?}: must not contain spaces or control characters"
            )));
        }
        let inner = Reference::try_from(text)
            .map_err(|e| Error::InvalidArgument(format!("invalid reference {text:?}: {e}")))?;
        if let Some(d) = inner.digest() {
            d.parse::<Digest>()
                .map_err(|e| Error::InvalidArgument(format!("invalid reference {text:?}: {e}")))?;
        }
        Ok(ImageRef { inner })
    }

    /// The full name: `host/repository[:tag][@digest]`.
    pub fn name(&self) -> String {
        self.inner.whole()
    }

    /// The registry as written (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| d.parse().ok())
    }

    /// The same repository at `digest`.
    pub fn at(&self, digest: &Digest) -> Reference {
        Reference::with_digest(
            self.inner.registry().to_string(),
            self.inner.repository().to_string(),
            digest.to_string(),
        )
    }

    /// The host part of the registry without its port, as containerd keys
    /// the distribution source label (`127.0.0.1:5000` gives `127.0.0.1`).
    pub fn source_host(&self) -> String {
        let registry = self.registry();
        if let Some(rest) = registry.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest).to_string();
        }
        match registry.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
            _ => registry.to_string(),
        }
    }

    /// Whether the registry is on this machine, where plain HTTP is used.
    pub fn is_loopback(&self) -> bool {
        let host = self.source_host();
        host == "localhost" || host == "::1" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The distribution source label for a blob that already carries
    /// `existing`: this repository added to the sorted, de-duplicated list.
    pub fn source_label(&self, existing: &BTreeMap<String, String>) -> (String, String) {
        let key = format!("{DISTRIBUTION_SOURCE_PREFIX}{}", self.source_host());
        let mut repos: Vec<&str> = existing
            .get(&key)
            .map(|v| v.split(',').filter(|r| !r.is_empty()).collect())
            .unwrap_or_default();
        repos.push(self.repository());
        repos.sort_unstable();
        repos.dedup();
        let value = repos.join(",");
        (key, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        assert_eq!(
            ImageRef::parse("busybox").unwrap().name(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            ImageRef::parse("docker.io/library/busybox:1.36").unwrap().name(),
            "docker.io/library/busybox:1.36"
        );
        let local = ImageRef::parse("127.0.0.1:5000/test/busybox:v1").unwrap();
        assert_eq!(local.registry(), "127.0.0.1:5000");
        assert_eq!(local.repository(), "test/busybox");
        assert_eq!(local.source_host(), "127.0.0.1");
        assert!(local.is_loopback());
        assert!(!ImageRef::parse("quay.io/a/b").unwrap().is_loopback());
        let pinned = format!("busybox@sha256:{}", "a".repeat(64));
        let pinned = ImageRef::parse(&pinned).unwrap();
        assert!(pinned.digest().is_some());
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "Busybox",
            "a b",
            "busybox:",
            "x@sha256:abc",
            "bad\nname",
            "a//b",
            "-x",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.contains("invalid reference")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn source_labels_merge() {
        let r = ImageRef::parse("127.0.0.1:5000/test/b:v1").unwrap();
        let (key, value) = r.source_label(&BTreeMap::new());
        assert_eq!(key, "containerd.io/distribution.source.127.0.0.1");
        assert_eq!(value, "test/b");
        let existing = BTreeMap::from([(key.clone(), "z/other,test/b".to_string())]);
        assert_eq!(r.source_label(&existing).1, "test/b,z/other");
    }
}
