//! The JSON documents a pull reads: indexes (and Docker manifest lists),
//! manifests and image configs. Only the fields a pull needs; every digest
//! and size is checked before it is used.

use std::collections::BTreeMap;

use corten_core::{diff::Descriptor, transfer::Platform, Error};
use serde::Deserialize;

use crate::media::{self, Kind};

/// The largest manifest, index or config a pull accepts.
pub const MAX_DOCUMENT_SIZE: u64 = 16 << 20;

#[derive(Debug, Deserialize)]
struct JsonPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JsonDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    platform: Option<JsonPlatform>,
}

impl JsonDescriptor {
    fn check(self, what: &str) -> Result<(Descriptor, Option<Platform>), Error> {
        let digest = self
            .digest
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))?;
        let size = u64::try_from(self.size)
            .map_err(|_| Error::InvalidArgument(format!("{what} {digest}: negative size {}", self.size)))?;
        let platform = self.platform.map(|p| Platform {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant.unwrap_or_default(),
        });
        Ok((
            Descriptor {
                media_type: self.media_type,
                digest,
                size,
                annotations: self.annotations.unwrap_or_default(),
            },
            platform,
        ))
    }
}

/// What `mediaType` says, or for an OCI document that leaves it out (it is
/// optional there), what its shape says.
pub fn sniff_media_type(bytes: &[u8]) -> Result<String, Error> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion", default)]
        schema_version: Option<i64>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        config: Option<serde_json::Value>,
        #[serde(default)]
        layers: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| Error::InvalidArgument(format!("not a manifest or index: {e}")))?;
    if let Some(t) = probe.media_type.filter(|t| !t.is_empty()) {
        return Ok(t);
    }
    if probe.schema_version == Some(1) {
        return Ok(media::DOCKER_SCHEMA1_MANIFEST.into());
    }
    match (
        probe.manifests.is_some(),
        probe.config.is_some() && probe.layers.is_some(),
    ) {
        (true, false) => Ok(media::OCI_INDEX.into()),
        (false, true) => Ok(media::OCI_MANIFEST.into()),
        _ => Err(Error::InvalidArgument(
            "document has no media type and is neither an index nor a manifest".into(),
        )),
    }
}

/// One entry of an index.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub desc: Descriptor,
    pub platform: Option<Platform>,
}

#[derive(Debug)]
pub struct Index {
    pub manifests: Vec<IndexEntry>,
}

pub fn parse_index(desc: &Descriptor, bytes: &[u8]) -> Result<Index, Error> {
    #[derive(Deserialize)]
    struct Json {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        manifests: Vec<JsonDescriptor>,
    }
    let what = format!("index {}", desc.digest);
    let json: Json = serde_json::from_slice(bytes).map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))?;
    check_declared(&what, &desc.media_type, json.media_type.as_deref())?;
    let manifests = json
        .manifests
        .into_iter()
        .map(|m| {
            let (desc, platform) = m.check(&format!("{what}: manifest"))?;
            Ok(IndexEntry { desc, platform })
        })
        .collect::<Result<_, Error>>()?;
    Ok(Index { manifests })
}

#[derive(Debug)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

pub fn parse_manifest(desc: &Descriptor, bytes: &[u8]) -> Result<Manifest, Error> {
    #[derive(Deserialize)]
    struct Json {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        config: JsonDescriptor,
        #[serde(default)]
        layers: Vec<JsonDescriptor>,
    }
    let what = format!("manifest {}", desc.digest);
    let json: Json = serde_json::from_slice(bytes).map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))?;
    check_declared(&what, &desc.media_type, json.media_type.as_deref())?;
    let (config, _) = json.config.check(&format!("{what}: config"))?;
    let layers = json
        .layers
        .into_iter()
        .map(|l| l.check(&format!("{what}: layer")).map(|(d, _)| d))
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Manifest { config, layers })
}

/// A document whose own `mediaType` contradicts the type it was served or
/// referred to as is refused: the registry or the parent lies about it.
fn check_declared(what: &str, expected: &str, declared: Option<&str>) -> Result<(), Error> {
    match declared {
        Some(d) if !d.is_empty() && d != expected => Err(Error::InvalidArgument(format!(
            "{what}: declares media type {d:?} but is referred to as {expected:?}"
        ))),
        _ => Ok(()),
    }
}

#[derive(Debug)]
pub struct ImageConfig {
    pub platform: Platform,
    pub diff_ids: Vec<corten_core::digest::Digest>,
}

pub fn parse_config(desc: &Descriptor, bytes: &[u8]) -> Result<ImageConfig, Error> {
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Json {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        variant: Option<String>,
        rootfs: RootFs,
    }
    let what = format!("config {}", desc.digest);
    let json: Json = serde_json::from_slice(bytes).map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))?;
    if json.rootfs.kind != "layers" {
        return Err(Error::InvalidArgument(format!(
            "{what}: rootfs type {:?} is not \"layers\"",
            json.rootfs.kind
        )));
    }
    let diff_ids = json
        .rootfs
        .diff_ids
        .iter()
        .map(|d| {
            d.parse()
                .map_err(|e| Error::InvalidArgument(format!("{what}: diff ID: {e}")))
        })
        .collect::<Result<_, Error>>()?;
    Ok(ImageConfig {
        platform: Platform {
            os: json.os,
            architecture: json.architecture,
            variant: json.variant.unwrap_or_default(),
        },
        diff_ids,
    })
}

/// The labels containerd puts on a parent so garbage collection follows it
/// to its children: `containerd.io/gc.ref.content.config` for a config,
/// `.l.<n>` for layers, `.m.<n>` for manifests, and `.<n>` for anything
/// else, counting per kind in the parent's order.
pub fn child_gc_labels(children: &[Descriptor]) -> BTreeMap<String, String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut labels = BTreeMap::new();
    for child in children {
        let prefix = match media::kind(&child.media_type) {
            Kind::Config => {
                labels.insert(
                    format!("{}.config", corten_core::gc::CONTENT_REF_PREFIX),
                    child.digest.to_string(),
                );
                continue;
            }
            Kind::Layer => "l.",
            Kind::Manifest => "m.",
            Kind::Index | Kind::Unknown => "",
        };
        let n = counts.entry(prefix).or_default();
        labels.insert(
            format!("{}.{prefix}{n}", corten_core::gc::CONTENT_REF_PREFIX),
            child.digest.to_string(),
        );
        *n += 1;
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn desc(media_type: &str, c: char) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: digest(c).parse().unwrap(),
            size: 10,
            annotations: Default::default(),
        }
    }

    #[test]
    fn sniffs() {
        assert_eq!(
            sniff_media_type(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            )
            .unwrap(),
            media::DOCKER_MANIFEST
        );
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            media::OCI_INDEX
        );
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).unwrap(),
            media::OCI_MANIFEST
        );
        assert!(sniff_media_type(b"not json").is_err());
        assert!(sniff_media_type(br#"{"schemaVersion":2}"#).is_err());
    }

    #[test]
    fn parses_manifest_and_refuses_lies() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":3}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":5}}]}}"#,
            media::OCI_MANIFEST,
            media::OCI_CONFIG,
            digest('c'),
            digest('d')
        );
        let m = parse_manifest(&desc(media::OCI_MANIFEST, 'a'), body.as_bytes()).unwrap();
        assert_eq!(m.config.size, 3);
        assert_eq!(m.layers[0].digest.to_string(), digest('d'));
        assert!(parse_manifest(&desc(media::DOCKER_MANIFEST, 'a'), body.as_bytes()).is_err());
        let negative = body.replace("\"size\":5", "\"size\":-5");
        assert!(parse_manifest(&desc(media::OCI_MANIFEST, 'a'), negative.as_bytes()).is_err());
        let bad_digest = body.replace(&digest('d'), "sha256:xyz");
        assert!(parse_manifest(&desc(media::OCI_MANIFEST, 'a'), bad_digest.as_bytes()).is_err());
    }

    #[test]
    fn parses_config() {
        let body = format!(
            r#"{{"os":"linux","architecture":"arm64","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            digest('e')
        );
        let c = parse_config(&desc(media::OCI_CONFIG, 'a'), body.as_bytes()).unwrap();
        assert_eq!(c.platform.architecture, "arm64");
        assert_eq!(c.diff_ids.len(), 1);
        assert!(parse_config(&desc(media::OCI_CONFIG, 'a'), b"{}").is_err());
    }

    #[test]
    fn gc_labels_as_containerd_names_them() {
        let labels = child_gc_labels(&[
            desc(media::OCI_CONFIG, 'c'),
            desc("application/vnd.oci.image.layer.v1.tar+gzip", 'd'),
            desc("application/vnd.oci.image.layer.v1.tar+gzip", 'e'),
        ]);
        assert_eq!(labels["containerd.io/gc.ref.content.config"], digest('c'));
        assert_eq!(labels["containerd.io/gc.ref.content.l.0"], digest('d'));
        assert_eq!(labels["containerd.io/gc.ref.content.l.1"], digest('e'));
        let index = child_gc_labels(&[desc(media::OCI_MANIFEST, 'a'), desc(media::OCI_MANIFEST, 'b')]);
        assert_eq!(index["containerd.io/gc.ref.content.m.1"], digest('b'));
    }
}
