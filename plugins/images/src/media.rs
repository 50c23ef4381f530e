//! Media types of what a pull meets, and what each is to the pull.

use corten_core::{diff::Descriptor, Error};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_SCHEMA1_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// What registries that predate schema 2 configs (distribution#1622) call a config.
pub const LEGACY_CONFIG: &str = "application/octet-stream";

/// Layer media types the differ unpacks: OCI (plain, gzip, zstd, and their
/// non-distributable forms) and Docker's (plain, gzip, foreign).
pub const LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Every manifest and index type a registry is asked for.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Index,
    Manifest,
    Config,
    Layer,
    Unknown,
}

pub fn kind(media_type: &str) -> Kind {
    match media_type {
        OCI_INDEX | DOCKER_MANIFEST_LIST => Kind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Manifest,
        OCI_CONFIG | DOCKER_CONFIG | LEGACY_CONFIG => Kind::Config,
        t if LAYERS.contains(&t) => Kind::Layer,
        _ => Kind::Unknown,
    }
}

/// The ingest ref containerd gives a download of `desc` (`layer-sha256:...`),
/// so a pull interrupted in either resumes in the other.
pub fn ref_key(desc: &Descriptor) -> String {
    let prefix = match kind(&desc.media_type) {
        Kind::Index => "index",
        Kind::Manifest => "manifest",
        Kind::Config => "config",
        Kind::Layer => "layer",
        Kind::Unknown => "unknown",
    };
    format!("{prefix}-{}", desc.digest)
}

/// Refuses a media type where `expected` kinds are required; `what` names
/// the object (`layer sha256:... (0 of manifest sha256:...)`).
pub fn require(desc: &Descriptor, what: &str, expected: &[Kind]) -> Result<Kind, Error> {
    let found = kind(&desc.media_type);
    if expected.contains(&found) {
        return Ok(found);
    }
    if desc.media_type == DOCKER_SCHEMA1_MANIFEST || desc.media_type == DOCKER_SCHEMA1_SIGNED_MANIFEST {
        return Err(Error::InvalidArgument(format!(
            "{what}: Docker schema 1 manifests are not supported"
        )));
    }
    Err(Error::Unimplemented(format!(
        "{what}: unsupported media type {:?}",
        desc.media_type
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
            size: 1,
            annotations: Default::default(),
        }
    }

    #[test]
    fn kinds_and_ref_keys() {
        assert_eq!(kind(DOCKER_MANIFEST_LIST), Kind::Index);
        assert_eq!(kind(DOCKER_MANIFEST), Kind::Manifest);
        assert_eq!(kind("application/vnd.docker.image.rootfs.diff.tar.gzip"), Kind::Layer);
        assert_eq!(kind("text/plain"), Kind::Unknown);
        assert_eq!(ref_key(&desc(OCI_CONFIG)), format!("config-sha256:{}", "a".repeat(64)));
        assert_eq!(ref_key(&desc(OCI_INDEX)), format!("index-sha256:{}", "a".repeat(64)));
    }

    #[test]
    fn unknown_types_are_named() {
        let d = desc("application/x-bogus");
        let err = require(&d, &format!("layer {}", d.digest), &[Kind::Layer]).unwrap_err();
        assert!(matches!(&err, Error::Unimplemented(m) if m.contains("x-bogus") && m.contains("layer sha256:")));
        assert!(require(&desc(DOCKER_SCHEMA1_MANIFEST), "manifest", &[Kind::Manifest]).is_err());
    }
}
