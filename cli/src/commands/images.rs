//! `corten images ...`: image records and the content they point at. List,
//! tag, remove, inspect and check images; import and export image archives
//! (OCI image layouts and `docker save` tars); mount an image's root
//! filesystem and unmount it again.
//!
//! Like ctr (and unlike `images pull`, see images_pull.rs), all of it runs
//! in the client: blobs go through the Content service, layers are unpacked
//! with the Snapshots and Diff services, and the records are kept by the
//! Images service. The labels set along the way
//! are the ones containerd's clients set, so ctr and corten can share what
//! either of them stored.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fs::File,
    io::{self, BufRead, Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use corten_api::containerd::{
    services::{
        content::v1::{
            InfoRequest, ReadContentRequest, ReadContentResponse, UpdateRequest, WriteAction, WriteContentRequest,
        },
        diff::v1::ApplyRequest,
        images::v1::{
            CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, ListImagesRequest, UpdateImageRequest,
        },
        leases::v1::{CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest},
        snapshots::v1::{
            CommitSnapshotRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
            ViewSnapshotRequest,
        },
    },
    types::{Descriptor as DescriptorMsg, Mount},
};
use prost_types::FieldMask;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    metadata::{Ascii, MetadataValue},
    Code, Status,
};

use super::{
    leases::{self, rfc3339},
    Context,
};
use crate::{
    client::Connection,
    content_write::WriteSession,
    error::{self, rpc, AlreadyReported, Removals, RpcError},
    output::{self, human_size, Format, Table},
    progress::{self, Progress},
    signals::interruption,
};

/// The snapshotter used when none is named, as in containerd.
const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

/// Annotation holding an image's full name, as containerd writes it into
/// the index of an archive.
const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// The OCI annotation naming an index entry; by convention just the tag.
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// On a layer blob: the digest of its uncompressed tar (its diff ID), set
/// once unpacking has verified it.
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";
/// On an unpacked layer's snapshots: the chain ID they stand for.
const SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";
/// Prefix of the labels by which a blob keeps the blobs it names alive.
const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Prefix (then the snapshotter's name) of the label by which an image
/// config keeps its unpacked snapshot alive.
const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";

/// How long the lease of an import or a mount protects what it holds if
/// nothing removes it first: containerd's default.
const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Index, manifest and config blobs are read whole; nothing real is near this.
const MAX_JSON_BLOB: i64 = 64 << 20;
/// Bytes per Write message: well under gRPC's default 4 MiB message cap.
const CHUNK_SIZE: usize = 1 << 20;
/// How long cleanup may hold up the exit.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ImagesCommand,
}

/// Every `corten images` subcommand. Another family (pull) hooks in here
/// with one variant and one arm in [`run`].
#[derive(Debug, Subcommand)]
enum ImagesCommand {
    /// List images
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the image names
        #[arg(short, long)]
        quiet: bool,
        /// Only images matching any one filter, e.g. `name~=busybox` or `labels.owner==ci`
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Remove images by name; what only they held goes at the next garbage collection
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        /// Wait until the garbage collector has removed what only these images held
        #[arg(long)]
        sync: bool,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Give an image more names
    Tag {
        /// Point TARGET at SOURCE's content even when an image of that name exists
        #[arg(long)]
        force: bool,
        #[arg(value_name = "SOURCE")]
        source: String,
        #[arg(required = true, value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// Show an image's record and the index, manifest and config documents it points at
    #[command(visible_alias = "info")]
    Inspect {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Check that images' content is all present and whether they are unpacked
    Check {
        /// Print only the names of images that are complete and unpacked
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        snapshotter: SnapshotterArg,
        /// Only images matching any one filter
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Import images from an OCI image layout tar or a `docker save` tar, and unpack them
    Import(ImportArgs),
    /// Export images as an OCI image layout tar (with a docker manifest.json)
    Export(ExportArgs),
    /// Mount an image's root filesystem at TARGET (read-only unless --rw), unpacking it first
    Mount(MountArgs),
    /// Unmount what `images mount` mounted at TARGET
    Unmount {
        /// Also remove the mount's snapshot and lease
        #[arg(long)]
        rm: bool,
        #[command(flatten)]
        snapshotter: SnapshotterArg,
        #[arg(value_name = "TARGET")]
        target: String,
    },
    /// Pull an image from a registry: the daemon fetches, verifies and unpacks it
    Pull(super::images_pull::Args),
}

/// `--snapshotter`, for the subcommands that unpack or look at snapshots.
#[derive(Debug, clap::Args)]
struct SnapshotterArg {
    /// Snapshotter to use; empty means the default (overlayfs)
    #[arg(
        long = "snapshotter",
        env = "CONTAINERD_SNAPSHOTTER",
        default_value = DEFAULT_SNAPSHOTTER,
        value_name = "NAME"
    )]
    snapshotter: String,
}

impl SnapshotterArg {
    /// An empty name (say `CONTAINERD_SNAPSHOTTER=`) stands for the default.
    fn name(&self) -> &str {
        if self.snapshotter.is_empty() {
            DEFAULT_SNAPSHOTTER
        } else {
            &self.snapshotter
        }
    }
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// Name prefix for the images: an entry named only by a tag becomes BASE:TAG, and only
    /// images under BASE are imported. Without it, tag-only entries become import-DATE:TAG
    #[arg(long, value_name = "BASE")]
    base_name: Option<String>,
    /// Also name every image by digest, as BASE@DIGEST
    #[arg(long)]
    digests: bool,
    /// With --digests, give digest names only to images the archive leaves unnamed
    #[arg(long, requires = "digests")]
    skip_digest_for_named: bool,
    /// Keep the archive's own index as an image of this name
    #[arg(long, value_name = "NAME")]
    index_name: Option<String>,
    /// Import the content of every platform, not only this machine's
    #[arg(long)]
    all_platforms: bool,
    /// Import the content of this platform (os/arch[/variant]) instead of this machine's
    #[arg(long, value_name = "PLATFORM", conflicts_with = "all_platforms")]
    platform: Option<String>,
    /// Only store the images; do not unpack them into the snapshotter
    #[arg(long)]
    no_unpack: bool,
    #[command(flatten)]
    snapshotter: SnapshotterArg,
    /// Show a progress bar even when stderr is not a terminal
    #[arg(long)]
    progress: bool,
    /// Never show a progress bar
    #[arg(long)]
    no_progress: bool,
    /// The archive; `-` reads stdin
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// Export the content of every platform, not only this machine's
    #[arg(long)]
    all_platforms: bool,
    /// Export the content of this platform (os/arch[/variant]) instead of this machine's
    #[arg(long, value_name = "PLATFORM", conflicts_with = "all_platforms")]
    platform: Option<String>,
    /// Leave out the docker-compatible manifest.json
    #[arg(long)]
    skip_manifest_json: bool,
    /// Show a progress bar even when stderr is not a terminal
    #[arg(long)]
    progress: bool,
    /// Never show a progress bar
    #[arg(long)]
    no_progress: bool,
    /// The archive to write; `-` writes stdout
    #[arg(value_name = "OUT")]
    out: PathBuf,
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct MountArgs {
    /// Mount a writable snapshot instead of a read-only view
    #[arg(long)]
    rw: bool,
    /// Mount the image for this platform (os/arch[/variant]) instead of this machine's
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    #[command(flatten)]
    snapshotter: SnapshotterArg,
    #[arg(value_name = "NAME")]
    name: String,
    /// Directory to mount on; also names the mount's snapshot and lease
    #[arg(value_name = "TARGET")]
    target: String,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        ImagesCommand::Ls { quiet, filters } => ls(ctx, quiet, filters).await,
        ImagesCommand::Rm { sync, names } => rm(ctx, sync, names).await,
        ImagesCommand::Tag { force, source, targets } => tag(ctx, force, source, targets).await,
        ImagesCommand::Inspect { name } => inspect(ctx, name).await,
        ImagesCommand::Check {
            quiet,
            snapshotter,
            filters,
        } => check(ctx, quiet, snapshotter.name(), filters).await,
        ImagesCommand::Import(args) => import(ctx, args).await,
        ImagesCommand::Export(args) => export(ctx, args).await,
        ImagesCommand::Mount(args) => mount(ctx, args).await,
        ImagesCommand::Unmount {
            rm,
            snapshotter,
            target,
        } => unmount(ctx, rm, snapshotter.name(), target).await,
        ImagesCommand::Pull(args) => super::images_pull::run(args, ctx).await,
    }
}

// ---------------------------------------------------------------- the OCI model

/// A content descriptor as image JSON writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default, deserialize_with = "null_default")]
    media_type: String,
    digest: String,
    #[serde(default, deserialize_with = "null_default")]
    size: i64,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
}

impl Descriptor {
    fn new(media_type: &str, digest: &str, size: i64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size,
            ..Default::default()
        }
    }

    fn to_msg(&self) -> DescriptorMsg {
        DescriptorMsg {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.clone().into_iter().collect(),
        }
    }

    fn from_msg(msg: DescriptorMsg) -> Descriptor {
        Descriptor {
            media_type: msg.media_type,
            digest: msg.digest,
            size: msg.size,
            annotations: msg.annotations.into_iter().collect(),
            platform: None,
        }
    }
}

/// JSON `null` where a list, map or string is expected reads as empty, as
/// Go's decoder (which wrote many of these documents) treats it.
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Platform {
    #[serde(default, deserialize_with = "null_default")]
    architecture: String,
    #[serde(default, deserialize_with = "null_default")]
    os: String,
    #[serde(
        rename = "os.version",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    os_version: String,
    #[serde(
        rename = "os.features",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    os_features: Vec<String>,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    variant: String,
}

impl Platform {
    /// The platform this machine runs, in OCI's names.
    fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "x86" => ("386", ""),
            "aarch64" => ("arm64", ""),
            "arm" => ("arm", "v7"),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", ""),
            "loongarch64" => ("loong64", ""),
            other => (other, ""),
        };
        Platform {
            architecture: architecture.into(),
            os: std::env::consts::OS.into(),
            variant: variant.into(),
            ..Default::default()
        }
    }

    /// `os/arch[/variant]`, e.g. `linux/arm64` or `linux/arm/v7`.
    fn parse(text: &str) -> anyhow::Result<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |s: &&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            bail!("invalid platform {text:?}: expected OS/ARCH or OS/ARCH/VARIANT, e.g. linux/amd64");
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()).unwrap_or_default(),
            ..Default::default()
        }
        .normalized())
    }

    /// The usual names for the same thing: `x86_64` is `amd64`, `aarch64`
    /// is `arm64`, and arm64's only variant `v8` goes without saying.
    fn normalized(&self) -> Platform {
        let mut p = self.clone();
        p.os = p.os.to_ascii_lowercase();
        let (arch, variant) = match (p.architecture.to_ascii_lowercase().as_str(), p.variant.as_str()) {
            ("x86_64" | "x86-64", v) => ("amd64".to_string(), v.to_string()),
            ("i386", v) => ("386".to_string(), v.to_string()),
            ("aarch64" | "arm64", "v8") | ("aarch64", "") => ("arm64".to_string(), String::new()),
            ("armhf", "") => ("arm".to_string(), "v7".to_string()),
            ("armel", "") => ("arm".to_string(), "v6".to_string()),
            (a, v) => (a.to_string(), v.to_string()),
        };
        p.architecture = arch;
        p.variant = variant;
        p
    }

    fn format(&self) -> String {
        let mut text = format!("{}/{}", self.os, self.architecture);
        if !self.variant.is_empty() {
            text.push('/');
            text.push_str(&self.variant);
        }
        text
    }
}

/// Which platforms' content a command works on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PlatformMatcher {
    All,
    Only(Platform),
}

impl PlatformMatcher {
    fn host() -> PlatformMatcher {
        PlatformMatcher::Only(Platform::host())
    }

    /// From `--all-platforms` and `--platform`; this machine's by default.
    fn from_flags(all: bool, platform: Option<&str>) -> anyhow::Result<PlatformMatcher> {
        Ok(match (all, platform) {
            (true, _) => PlatformMatcher::All,
            (false, Some(text)) => PlatformMatcher::Only(Platform::parse(text)?),
            (false, None) => PlatformMatcher::host(),
        })
    }

    /// OS and architecture must agree; a variant only counts when both
    /// sides name one.
    fn matches(&self, platform: &Platform) -> bool {
        match self {
            PlatformMatcher::All => true,
            PlatformMatcher::Only(want) => {
                let got = platform.normalized();
                let want = want.normalized();
                got.os == want.os
                    && got.architecture == want.architecture
                    && (got.variant.is_empty() || want.variant.is_empty() || got.variant == want.variant)
            }
        }
    }

    /// One platform to pick a single manifest by: with every platform
    /// allowed, this machine's.
    fn single(&self) -> PlatformMatcher {
        match self {
            PlatformMatcher::All => PlatformMatcher::host(),
            only => only.clone(),
        }
    }
}

/// What a blob is, by its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobKind {
    Index,
    Manifest,
    Config,
    Layer,
    Other,
}

impl BlobKind {
    fn of(media_type: &str) -> BlobKind {
        match media_type {
            OCI_INDEX | DOCKER_MANIFEST_LIST => BlobKind::Index,
            OCI_MANIFEST | DOCKER_MANIFEST => BlobKind::Manifest,
            OCI_CONFIG | DOCKER_CONFIG => BlobKind::Config,
            t if t.starts_with("application/vnd.oci.image.layer.")
                || t.starts_with("application/vnd.docker.image.rootfs.") =>
            {
                BlobKind::Layer
            }
            _ => BlobKind::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            BlobKind::Index => "index",
            BlobKind::Manifest => "manifest",
            BlobKind::Config => "config",
            BlobKind::Layer => "layer",
            BlobKind::Other => "blob",
        }
    }
}

/// An image index as this command writes one, fields in the order Go's
/// encoder (and so containerd) writes them, so equal content gives equal
/// digests.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexDocument<'a> {
    schema_version: u32,
    /// containerd 1.6 leaves it out of the indexes it writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'a str>,
    manifests: &'a [Descriptor],
}

/// An image manifest as this command writes one; see [`IndexDocument`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDocument<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: &'a Descriptor,
    layers: &'a [Descriptor],
}

#[derive(Debug, Deserialize)]
struct IndexJson {
    #[serde(default, deserialize_with = "null_default")]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ManifestJson {
    config: Descriptor,
    #[serde(default, deserialize_with = "null_default")]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigJson {
    #[serde(default, deserialize_with = "null_default")]
    architecture: String,
    #[serde(default, deserialize_with = "null_default")]
    os: String,
    #[serde(default, deserialize_with = "null_default")]
    variant: String,
    #[serde(default, deserialize_with = "null_default")]
    rootfs: RootFs,
}

impl ConfigJson {
    fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
            ..Default::default()
        }
        .normalized()
    }
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default, deserialize_with = "null_default")]
    diff_ids: Vec<String>,
}

/// The chain ID of layers with these diff IDs, bottom first: what the
/// committed snapshot of the topmost one is named.
fn chain_id(diff_ids: &[String]) -> String {
    let mut ids = diff_ids.iter();
    let Some(first) = ids.next() else {
        return String::new();
    };
    ids.fold(first.clone(), |chain, diff_id| {
        sha256_digest(format!("{chain} {diff_id}").as_bytes())
    })
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The labels by which a blob names its children, as containerd sets
/// them: `...content.config` for the config, `...content.l.<n>` for
/// layers, `...content.m.<n>` for manifests, counted per kind.
fn child_gc_labels(children: &[Descriptor]) -> BTreeMap<String, String> {
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    let mut labels = BTreeMap::new();
    for child in children {
        // Kinds counted with a trailing dot always get their number.
        let kind = match BlobKind::of(&child.media_type) {
            BlobKind::Config => "config",
            BlobKind::Manifest => "m.",
            BlobKind::Layer => "l.",
            BlobKind::Index | BlobKind::Other => "",
        };
        let n = counts.entry(kind).or_default();
        let key = if *n > 0 || kind.is_empty() || kind.ends_with('.') {
            format!("{GC_REF_CONTENT}.{kind}{n}")
        } else {
            format!("{GC_REF_CONTENT}.{kind}")
        };
        *n += 1;
        labels.insert(key, child.digest.clone());
    }
    labels
}

/// The error for an image without content for the platform asked for.
#[derive(Debug, thiserror::Error)]
#[error("{digest}: no manifest for {platform}")]
struct NoMatchingManifest {
    digest: String,
    platform: String,
}

/// Whether the daemon answered NotFound somewhere down `err`'s chain.
fn is_not_found(err: &anyhow::Error) -> bool {
    rpc_code(err) == Some(Code::NotFound) || err.is::<NoMatchingManifest>()
}

fn rpc_code(err: &anyhow::Error) -> Option<Code> {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<RpcError>().map(|e| e.code))
}

// ---------------------------------------------------------------- content store helpers

/// A whole stored blob as the daemon streams it, each part checked to start
/// where the one before ended, since a gap or overlap would corrupt what the
/// caller assembles.
struct BlobReader<'a> {
    desc: &'a Descriptor,
    stream: tonic::Streaming<ReadContentResponse>,
    /// Bytes received so far.
    position: i64,
}

impl<'a> BlobReader<'a> {
    async fn open(conn: &Connection, desc: &'a Descriptor) -> anyhow::Result<BlobReader<'a>> {
        let request = ReadContentRequest {
            digest: desc.digest.clone(),
            offset: 0,
            size: 0,
        };
        let stream = conn
            .content()
            .read(request)
            .await
            .map_err(rpc)
            .with_context(|| what_blob(desc))?
            .into_inner();
        Ok(BlobReader {
            desc,
            stream,
            position: 0,
        })
    }

    /// The next part's bytes; `None` at the end.
    async fn next(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(part) = self
            .stream
            .message()
            .await
            .map_err(rpc)
            .with_context(|| what_blob(self.desc))?
        else {
            return Ok(None);
        };
        if part.offset != self.position {
            bail!(
                "{}: the daemon sent offset {} when {} was next",
                what_blob(self.desc),
                part.offset,
                self.position
            );
        }
        self.position += part.data.len() as i64;
        Ok(Some(part.data))
    }
}

/// What the errors of reading blob `desc` say it was doing.
fn what_blob(desc: &Descriptor) -> String {
    format!("reading {} {}", BlobKind::of(&desc.media_type).name(), desc.digest)
}

/// Reads a JSON document (index, manifest, config) whole, checking it
/// against its digest.
async fn read_blob(conn: &Connection, desc: &Descriptor) -> anyhow::Result<Vec<u8>> {
    let what = || what_blob(desc);
    if desc.size > MAX_JSON_BLOB {
        bail!("{}: {} bytes is too large for a JSON document", what(), desc.size);
    }
    let mut reader = BlobReader::open(conn, desc).await?;
    let mut data = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0));
    while let Some(part) = reader.next().await? {
        data.extend_from_slice(&part);
        if data.len() as i64 > MAX_JSON_BLOB {
            bail!("{}: too large for a JSON document", what());
        }
    }
    if desc.digest.starts_with("sha256:") && sha256_digest(&data) != desc.digest {
        bail!("{}: the stored bytes do not match the digest", what());
    }
    Ok(data)
}

async fn read_json<T: serde::de::DeserializeOwned>(conn: &Connection, desc: &Descriptor) -> anyhow::Result<T> {
    let data = read_blob(conn, desc).await?;
    serde_json::from_slice(&data)
        .with_context(|| format!("parsing {} {}", BlobKind::of(&desc.media_type).name(), desc.digest))
}

/// The size of a stored blob, or `None` when the store does not have it.
async fn stored_size(conn: &Connection, digest: &str) -> anyhow::Result<Option<i64>> {
    let request = InfoRequest {
        digest: digest.to_string(),
    };
    match conn.content().info(request).await {
        Ok(reply) => Ok(reply.into_inner().info.map(|i| i.size)),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(rpc(status).context(format!("looking up {digest}"))),
    }
}

/// Sets `labels` on a blob, leaving its other labels alone.
async fn set_blob_labels(conn: &Connection, digest: &str, labels: BTreeMap<String, String>) -> anyhow::Result<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let request = UpdateRequest {
        info: Some(corten_api::containerd::services::content::v1::Info {
            digest: digest.to_string(),
            labels: labels.into_iter().collect(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask { paths }),
    };
    conn.content()
        .update(request)
        .await
        .map_err(rpc)
        .with_context(|| format!("labelling {digest}"))?;
    Ok(())
}

/// The descriptors a blob names: an index's manifests (those for the
/// platforms asked for, and any that do not say), a manifest's config and
/// layers. Other blobs have none.
async fn children(
    conn: &Connection,
    desc: &Descriptor,
    platforms: &PlatformMatcher,
) -> anyhow::Result<Vec<Descriptor>> {
    Ok(match BlobKind::of(&desc.media_type) {
        BlobKind::Index => {
            let index: IndexJson = read_json(conn, desc).await?;
            index
                .manifests
                .into_iter()
                .filter(|m| m.platform.as_ref().is_none_or(|p| platforms.matches(p)))
                .collect()
        }
        BlobKind::Manifest => {
            let manifest: ManifestJson = read_json(conn, desc).await?;
            std::iter::once(manifest.config).chain(manifest.layers).collect()
        }
        _ => Vec::new(),
    })
}

/// The one manifest of an image for a platform: the target itself, or the
/// first entry of its index (searched depth first) for that platform. An
/// entry that does not name its platform is judged by its config.
async fn resolve_manifest(
    conn: &Connection,
    target: &Descriptor,
    platform: &PlatformMatcher,
) -> anyhow::Result<(Descriptor, ManifestJson)> {
    let platform = platform.single();
    let mut pending = vec![(target.clone(), true)];
    while let Some((desc, top)) = pending.pop() {
        match BlobKind::of(&desc.media_type) {
            BlobKind::Manifest => {
                let manifest: ManifestJson = read_json(conn, &desc).await?;
                // A manifest an image names directly is taken whatever its
                // platform; one in an index must be for the platform.
                if top || desc.platform.is_some() {
                    return Ok((desc, manifest));
                }
                let config: ConfigJson = read_json(conn, &manifest.config).await?;
                if platform.matches(&config.platform()) {
                    return Ok((desc, manifest));
                }
            }
            BlobKind::Index => {
                let index: IndexJson = read_json(conn, &desc).await?;
                let matching = index
                    .manifests
                    .into_iter()
                    .filter(|m| m.platform.as_ref().is_none_or(|p| platform.matches(p)));
                // Reversed onto the stack, so the index's order is kept.
                let entries: Vec<_> = matching.map(|m| (m, false)).collect();
                pending.extend(entries.into_iter().rev());
            }
            _ if top => bail!(
                "{}: {:?} is neither an image manifest nor an index",
                desc.digest,
                desc.media_type
            ),
            _ => {}
        }
    }
    let wanted = match &platform {
        PlatformMatcher::Only(p) => p.format(),
        PlatformMatcher::All => "any platform".into(),
    };
    Err(NoMatchingManifest {
        digest: target.digest.clone(),
        platform: wanted,
    }
    .into())
}

/// The config of an image for a platform, with the manifest it came from.
async fn resolve_config(
    conn: &Connection,
    target: &Descriptor,
    platform: &PlatformMatcher,
) -> anyhow::Result<(ManifestJson, ConfigJson)> {
    let (_, manifest) = resolve_manifest(conn, target, platform).await?;
    let config: ConfigJson = read_json(conn, &manifest.config).await?;
    Ok((manifest, config))
}

// ---------------------------------------------------------------- leases

/// A lease this command works under: its id, and the id ready to send.
pub(crate) struct Lease {
    pub(crate) id: String,
    header: MetadataValue<Ascii>,
}

impl Lease {
    /// `message` as a request made under this lease.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(leases::LEASE_HEADER, self.header.clone());
        request
    }
}

fn lease_header(id: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    MetadataValue::try_from(id)
        .ok()
        .with_context(|| format!("lease id {id:?} is not sendable as a gRPC header"))
}

/// Takes out a lease that lapses by itself after `ttl`, so whatever a
/// command that dies half-way leaves is not protected forever.
async fn create_lease(
    conn: &Connection,
    id: String,
    ttl: Duration,
    mut labels: HashMap<String, String>,
) -> anyhow::Result<Lease> {
    let header = lease_header(&id)?;
    labels.insert(
        leases::EXPIRE_LABEL.to_string(),
        humantime::format_rfc3339_seconds(SystemTime::now() + ttl).to_string(),
    );
    let request = CreateLeaseRequest { id: id.clone(), labels };
    conn.leases()
        .create(request)
        .await
        .map_err(rpc)
        .with_context(|| format!("creating lease {id:?}"))?;
    Ok(Lease { id, header })
}

/// A lease with a fresh id, for the length of one command.
pub(crate) async fn create_temporary_lease(conn: &Connection) -> anyhow::Result<Lease> {
    create_lease(conn, leases::random_id(SystemTime::now()), LEASE_TTL, HashMap::new()).await
}

/// Removes a lease, warning (not failing) when that does not work: it
/// expires by itself.
pub(crate) async fn release_lease(conn: &Connection, id: &str) {
    let mut client = conn.leases();
    let release = client.delete(DeleteLeaseRequest {
        id: id.to_string(),
        sync: false,
    });
    let err = match tokio::time::timeout(CLEANUP_TIMEOUT, release).await {
        Ok(Ok(_)) => return,
        Ok(Err(status)) if status.code() == Code::NotFound => return,
        Ok(Err(status)) => rpc(status),
        Err(_) => anyhow::anyhow!("no answer within {CLEANUP_TIMEOUT:?}"),
    };
    let err = err.context(format!("removing lease {id:?} (it expires by itself)"));
    eprintln!("corten: warning: {}", error::one_line(&err));
}

// ---------------------------------------------------------------- writing blobs

/// One blob being written through the Content service under a lease. Each
/// message gets exactly one reply, so the two halves go in lockstep.
struct BlobWriter {
    session: WriteSession,
    reference: String,
    expected: String,
    total: i64,
    offset: i64,
    hasher: Sha256,
}

/// What opening a write found.
enum Opened {
    Writing(Box<BlobWriter>),
    /// The store already has the expected blob: nothing to send.
    Exists,
}

impl BlobWriter {
    /// Opens the write `reference` for a blob of `total` bytes (0: unknown)
    /// and, when known, digest `expected`.
    async fn open(
        conn: &Connection,
        lease: &Lease,
        reference: String,
        expected: &str,
        total: i64,
    ) -> anyhow::Result<Opened> {
        let context = || format!("opening write {reference:?}");
        let (requests, outgoing) = mpsc::channel(2);
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.clone(),
            total,
            expected: expected.to_string(),
            ..Default::default()
        };
        // Queued before the call: a server may wait for it to answer at all.
        requests
            .send(stat)
            .await
            .map_err(|_| anyhow::anyhow!("write stream closed before it opened"))?;
        let exists = |status: &Status| status.code() == Code::AlreadyExists && !expected.is_empty();
        let replies = match conn.content().write(lease.request(ReceiverStream::new(outgoing))).await {
            Ok(reply) => reply.into_inner(),
            Err(status) if exists(&status) => return Ok(Opened::Exists),
            Err(status) => return Err(rpc(status).context(context())),
        };
        let mut writer = BlobWriter {
            session: WriteSession::new(requests, replies),
            reference: reference.clone(),
            expected: expected.to_string(),
            total,
            offset: 0,
            hasher: Sha256::new(),
        };
        match writer.session.reply().await {
            Ok(status) if status.offset == 0 => Ok(Opened::Writing(Box::new(writer))),
            Ok(status) => bail!(
                "{}: the daemon already holds {} bytes of it; abort it with `corten content abort {reference}`",
                context(),
                status.offset
            ),
            Err(status) if exists(&status) => Ok(Opened::Exists),
            Err(status) => Err(rpc(status).context(context())),
        }
    }

    async fn write(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        self.hasher.update(&data);
        let end = self.offset + data.len() as i64;
        let message = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.reference.clone(),
            offset: self.offset,
            data,
            ..Default::default()
        };
        let reply = self
            .session
            .exchange(message)
            .await
            .map_err(rpc)
            .with_context(|| format!("writing {:?}", self.reference))?;
        if reply.offset != end {
            bail!(
                "writing {:?}: the daemon is at offset {} after a write that should end at {end}",
                self.reference,
                reply.offset
            );
        }
        self.offset = end;
        Ok(())
    }

    /// Stores what was written; returns its digest.
    async fn commit(mut self, labels: HashMap<String, String>) -> anyhow::Result<String> {
        let local = format!("sha256:{:x}", self.hasher.clone().finalize());
        let message = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            total: if self.total > 0 { self.total } else { self.offset },
            expected: self.expected.clone(),
            offset: self.offset,
            labels,
            ..Default::default()
        };
        match self.session.exchange(message).await {
            Ok(reply) if reply.digest.is_empty() => Ok(local),
            Ok(reply) => Ok(reply.digest),
            // The same bytes were stored meanwhile: what was asked for is there.
            Err(status) if status.code() == Code::AlreadyExists => Ok(local),
            Err(status) => Err(rpc(status).context(format!("committing {:?}", self.reference))),
        }
    }
}

/// Stores `data` (a document made here) unless the store has it; returns
/// its descriptor.
async fn write_document(
    conn: &Connection,
    lease: &Lease,
    reference: String,
    media_type: &str,
    data: &[u8],
) -> anyhow::Result<Descriptor> {
    let digest = sha256_digest(data);
    let size = data.len() as i64;
    if let Opened::Writing(mut writer) = BlobWriter::open(conn, lease, reference, &digest, size).await? {
        for chunk in data.chunks(CHUNK_SIZE) {
            writer.write(chunk.to_vec()).await?;
        }
        writer.commit(HashMap::new()).await?;
    }
    Ok(Descriptor::new(media_type, &digest, size))
}

// ---------------------------------------------------------------- ls

async fn list_images(conn: &Connection, filters: Vec<String>) -> anyhow::Result<Vec<Image>> {
    let mut images = conn
        .images()
        .list(ListImagesRequest { filters })
        .await
        .map_err(rpc)?
        .into_inner()
        .images;
    images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(images)
}

fn target_of(image: &Image) -> Descriptor {
    image.target.clone().map(Descriptor::from_msg).unwrap_or_default()
}

/// An image as `ls` shows it; also the JSON shape.
#[derive(Debug, Serialize)]
struct ImageView {
    name: String,
    media_type: String,
    digest: String,
    /// Index, manifest, config and layers for this machine's platform;
    /// absent when some of them are not in the content store.
    size: Option<i64>,
    platforms: Vec<String>,
    labels: BTreeMap<String, String>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

async fn ls(ctx: &Context, quiet: bool, filters: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let images = list_images(&conn, filters).await?;
    if quiet {
        let names: String = images.iter().map(|i| format!("{}\n", i.name)).collect();
        return Ok(output::print(&names)?);
    }
    let host = PlatformMatcher::host();
    let mut views = Vec::with_capacity(images.len());
    for image in images {
        let target = target_of(&image);
        // What cannot be read is shown as unknown rather than failing the
        // whole listing, so one broken image does not hide the others.
        let size = image_size(&conn, &target, &host).await.ok();
        let platforms = image_platforms(&conn, &target).await.unwrap_or_default();
        views.push(ImageView {
            created_at: rfc3339(image.created_at.as_ref()),
            updated_at: rfc3339(image.updated_at.as_ref()),
            name: image.name,
            media_type: target.media_type,
            digest: target.digest,
            size,
            platforms: platforms.into_iter().collect(),
            labels: image.labels.into_iter().collect(),
        });
    }
    match ctx.format {
        Format::Json => output::print_json(&views),
        Format::Table => Ok(image_table(&views).print()?),
    }
}

fn image_table(views: &[ImageView]) -> Table {
    let mut table = Table::new(&["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]);
    for v in views {
        let labels: HashMap<String, String> = v.labels.clone().into_iter().collect();
        table.row([
            v.name.clone(),
            v.media_type.clone(),
            v.digest.clone(),
            v.size.map_or_else(|| "-".into(), human_size),
            if v.platforms.is_empty() {
                "-".into()
            } else {
                v.platforms.join(",")
            },
            leases::labels_cell(&labels),
        ]);
    }
    table
}

/// The sizes of every descriptor from `target` down to the layers, for
/// the platforms asked for, each blob counted once.
async fn image_size(conn: &Connection, target: &Descriptor, platforms: &PlatformMatcher) -> anyhow::Result<i64> {
    let mut total = 0;
    let mut seen = HashSet::new();
    let mut pending = vec![target.clone()];
    while let Some(desc) = pending.pop() {
        if !seen.insert(desc.digest.clone()) {
            continue;
        }
        total += desc.size;
        pending.extend(children(conn, &desc, platforms).await?);
    }
    Ok(total)
}

/// Every platform an image offers: those its index names, or what its
/// configs say.
async fn image_platforms(conn: &Connection, target: &Descriptor) -> anyhow::Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let mut pending = vec![target.clone()];
    while let Some(desc) = pending.pop() {
        match BlobKind::of(&desc.media_type) {
            BlobKind::Index => {
                let index: IndexJson = read_json(conn, &desc).await?;
                for entry in index.manifests {
                    match &entry.platform {
                        Some(p) => {
                            found.insert(p.normalized().format());
                        }
                        None => pending.push(entry),
                    }
                }
            }
            BlobKind::Manifest => {
                let manifest: ManifestJson = read_json(conn, &desc).await?;
                let config: ConfigJson = read_json(conn, &manifest.config).await?;
                if !config.os.is_empty() {
                    found.insert(config.platform().format());
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

// ---------------------------------------------------------------- rm

/// Keeps going past a failed name, one error line apiece. A name that is
/// not there is only a warning, as with ctr. With `--sync`, the garbage
/// collector runs once, with the last removal.
async fn rm(ctx: &Context, sync: bool, names: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut client = conn.images();
    let mut removals = Removals::default();
    let mut synced = false;
    let last = names.len().saturating_sub(1);
    for (i, name) in names.into_iter().enumerate() {
        let request = DeleteImageRequest {
            name: name.clone(),
            sync: sync && i == last,
        };
        match client.delete(request).await {
            Ok(_) => {
                synced |= sync && i == last;
                removals.removed(&name);
            }
            Err(status) if status.code() == Code::NotFound => {
                eprintln!("corten: warning: {name}: image not found");
            }
            Err(status) => removals.failed(&rpc(status).context(format!("removing {name:?}"))),
        }
    }
    if sync && !synced {
        // The last removal did not happen, so neither did its collection:
        // a lease removed with sync asks for one all the same.
        collect_garbage(&conn).await?;
    }
    removals.finish()
}

/// Runs the garbage collector and waits for it, by removing an empty
/// lease with sync.
async fn collect_garbage(conn: &Connection) -> anyhow::Result<()> {
    let lease = create_temporary_lease(conn).await?;
    conn.leases()
        .delete(DeleteLeaseRequest {
            id: lease.id,
            sync: true,
        })
        .await
        .map_err(rpc)
        .context("waiting for garbage collection")?;
    Ok(())
}

// ---------------------------------------------------------------- tag

/// Creates each TARGET with SOURCE's content and labels; with `--force`, an
/// existing TARGET is pointed there instead of refused.
async fn tag(ctx: &Context, force: bool, source: String, targets: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut client = conn.images();
    let image = get_image(&conn, &source).await?;
    let mut failed = 0;
    let mut stdout_error = None;
    for target in targets {
        let copy = Image {
            name: target.clone(),
            labels: image.labels.clone(),
            target: image.target.clone(),
            created_at: None,
            updated_at: None,
        };
        let outcome = match client
            .create(CreateImageRequest {
                image: Some(copy.clone()),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists && force => client
                .update(UpdateImageRequest {
                    image: Some(copy),
                    update_mask: None,
                })
                .await
                .map(|_| ())
                .map_err(rpc),
            Err(status) if status.code() == Code::AlreadyExists => Err(anyhow::anyhow!(
                "image {target:?} already exists (--force points it at {source:?})"
            )),
            Err(status) => Err(rpc(status)),
        };
        match outcome {
            Ok(()) => {
                if let Err(e) = output::print(&format!("{target}\n")) {
                    stdout_error.get_or_insert(e);
                }
            }
            Err(err) => {
                failed += 1;
                error::report(&err.context(format!("tagging {target:?}")));
            }
        }
    }
    if failed > 0 {
        return Err(AlreadyReported(failed).into());
    }
    match stdout_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

async fn get_image(conn: &Connection, name: &str) -> anyhow::Result<Image> {
    let image = conn
        .images()
        .get(GetImageRequest { name: name.to_string() })
        .await
        .map_err(rpc)
        .with_context(|| format!("image {name:?}"))?
        .into_inner()
        .image;
    match image {
        Some(image) if image.target.is_some() => Ok(image),
        _ => bail!("image {name:?}: the daemon sent no record"),
    }
}

// ---------------------------------------------------------------- inspect

/// An image record as `inspect` shows it.
#[derive(Debug, Serialize)]
struct RecordView {
    name: String,
    target: Descriptor,
    labels: BTreeMap<String, String>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

/// One document below an image: its descriptor and, when the content store
/// has it, its JSON.
#[derive(Debug, Serialize)]
struct DocumentView {
    kind: &'static str,
    #[serde(flatten)]
    descriptor: Descriptor,
    /// `null` when the content store does not have it.
    content: Option<serde_json::Value>,
    /// The document as stored, for showing it with its keys in order.
    #[serde(skip)]
    raw: Option<Vec<u8>>,
}

#[derive(Debug, Serialize)]
struct InspectView {
    image: RecordView,
    documents: Vec<DocumentView>,
}

async fn inspect(ctx: &Context, name: String) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let image = get_image(&conn, &name).await?;
    let target = target_of(&image);
    let documents = documents(&conn, &target).await?;
    let view = InspectView {
        image: RecordView {
            created_at: rfc3339(image.created_at.as_ref()),
            updated_at: rfc3339(image.updated_at.as_ref()),
            name: image.name,
            target,
            labels: image.labels.into_iter().collect(),
        },
        documents,
    };
    match ctx.format {
        Format::Json => output::print_json(&view),
        Format::Table => Ok(output::print(&inspect_text(&view))?),
    }
}

/// The index, manifests and configs below `target`, every platform's, in
/// walking order; what is not stored is listed without content.
async fn documents(conn: &Connection, target: &Descriptor) -> anyhow::Result<Vec<DocumentView>> {
    let mut documents = Vec::new();
    let mut seen = HashSet::new();
    let mut pending = vec![target.clone()];
    while let Some(desc) = pending.pop() {
        let kind = BlobKind::of(&desc.media_type);
        if !matches!(kind, BlobKind::Index | BlobKind::Manifest | BlobKind::Config) || !seen.insert(desc.digest.clone())
        {
            continue;
        }
        let (content, raw) = match read_blob(conn, &desc).await {
            Ok(bytes) => {
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {} {}", kind.name(), desc.digest))?;
                let mut next: Vec<Descriptor> = match kind {
                    BlobKind::Index => serde_json::from_value::<IndexJson>(value.clone())
                        .map(|i| i.manifests)
                        .unwrap_or_default(),
                    BlobKind::Manifest => serde_json::from_value::<ManifestJson>(value.clone())
                        .map(|m| vec![m.config])
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                next.reverse();
                pending.extend(next);
                (Some(value), Some(bytes))
            }
            Err(err) if is_not_found(&err) => (None, None),
            Err(err) => return Err(err),
        };
        documents.push(DocumentView {
            kind: kind.name(),
            descriptor: desc,
            content,
            raw,
        });
    }
    Ok(documents)
}

fn inspect_text(view: &InspectView) -> String {
    let record = &view.image;
    let labels: HashMap<String, String> = record.labels.clone().into_iter().collect();
    let mut table = Table::headless();
    table.row(["Name:".to_string(), record.name.clone()]);
    table.row(["Media type:".to_string(), record.target.media_type.clone()]);
    table.row(["Digest:".to_string(), record.target.digest.clone()]);
    table.row(["Size:".to_string(), record.target.size.to_string()]);
    table.row([
        "Created:".to_string(),
        record.created_at.clone().unwrap_or_else(|| "-".into()),
    ]);
    table.row([
        "Updated:".to_string(),
        record.updated_at.clone().unwrap_or_else(|| "-".into()),
    ]);
    table.row(["Labels:".to_string(), leases::labels_cell(&labels)]);
    let mut text = table.render();
    for doc in &view.documents {
        text.push('\n');
        let platform = doc
            .descriptor
            .platform
            .as_ref()
            .map(|p| format!(" {}", p.normalized().format()))
            .unwrap_or_default();
        text.push_str(&format!(
            "{} {} ({}, {} bytes){platform}\n",
            doc.kind, doc.descriptor.digest, doc.descriptor.media_type, doc.descriptor.size
        ));
        match &doc.raw {
            Some(raw) => {
                text.push_str(&pretty_json(&String::from_utf8_lossy(raw)));
                text.push('\n');
            }
            None => text.push_str("(not in the content store)\n"),
        }
    }
    text
}

/// Re-indents valid JSON text two spaces a level, keeping its keys in the
/// order the document has them (parsing into a map would sort them).
fn pretty_json(text: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    }
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------- check

/// How complete an image is; also the JSON shape of `check`.
#[derive(Debug, Serialize)]
struct CheckView {
    name: String,
    media_type: String,
    digest: String,
    /// `complete`, `incomplete`, `unavailable` (no manifest for the
    /// platform) or `error`.
    status: &'static str,
    /// Blobs the manifest names (config and layers) and how many of them
    /// are stored; `required` is absent when the manifest is unavailable.
    present: usize,
    required: Option<usize>,
    present_size: i64,
    required_size: Option<i64>,
    unpacked: bool,
}

async fn check(ctx: &Context, quiet: bool, snapshotter: &str, filters: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let images = list_images(&conn, filters).await?;
    let host = PlatformMatcher::host();
    let mut views = Vec::with_capacity(images.len());
    let mut failed = 0;
    for image in images {
        let target = target_of(&image);
        let mut view = CheckView {
            name: image.name.clone(),
            media_type: target.media_type.clone(),
            digest: target.digest.clone(),
            status: "complete",
            present: 0,
            required: None,
            present_size: 0,
            required_size: None,
            unpacked: false,
        };
        match resolve_manifest(&conn, &target, &host).await {
            Ok((_, manifest)) => {
                let required: Vec<Descriptor> = std::iter::once(manifest.config).chain(manifest.layers).collect();
                view.required = Some(required.len());
                view.required_size = Some(required.iter().map(|d| d.size).sum());
                for desc in &required {
                    if stored_size(&conn, &desc.digest).await?.is_some() {
                        view.present += 1;
                        view.present_size += desc.size;
                    }
                }
                if view.present < required.len() {
                    view.status = "incomplete";
                }
            }
            Err(err) if is_not_found(&err) => view.status = "unavailable",
            Err(err) => {
                failed += 1;
                error::report(&err.context(format!("checking {:?}", image.name)));
                view.status = "error";
            }
        }
        if view.status != "error" {
            view.unpacked = is_unpacked(&conn, snapshotter, &target, &host).await.unwrap_or(false);
        }
        views.push(view);
    }
    if quiet {
        let ready: String = views
            .iter()
            .filter(|v| v.status == "complete" && v.unpacked)
            .map(|v| format!("{}\n", v.name))
            .collect();
        output::print(&ready)?;
    } else {
        match ctx.format {
            Format::Json => output::print_json(&views)?,
            Format::Table => check_table(&views).print()?,
        }
    }
    if failed > 0 {
        return Err(AlreadyReported(failed).into());
    }
    Ok(())
}

fn check_table(views: &[CheckView]) -> Table {
    let mut table = Table::new(&["REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED"]);
    for v in views {
        let (status, size) = match (v.status, v.required, v.required_size) {
            ("error", _, _) => ("error".to_string(), "-".to_string()),
            (status, Some(required), Some(required_size)) => (
                format!("{status} ({}/{required})", v.present),
                format!("{}/{}", human_size(v.present_size), human_size(required_size)),
            ),
            (status, _, _) => (
                format!("{status} ({}/?)", v.present),
                format!("{}/?", human_size(v.present_size)),
            ),
        };
        table.row([
            v.name.clone(),
            v.media_type.clone(),
            v.digest.clone(),
            status,
            size,
            v.unpacked.to_string(),
        ]);
    }
    table
}

/// Whether the image's top layer is a snapshot in `snapshotter`: the
/// snapshot named by the chain ID of its config's diff IDs.
async fn is_unpacked(
    conn: &Connection,
    snapshotter: &str,
    target: &Descriptor,
    platform: &PlatformMatcher,
) -> anyhow::Result<bool> {
    let (_, config) = resolve_config(conn, target, platform).await?;
    let top = chain_id(&config.rootfs.diff_ids);
    if top.is_empty() {
        return Ok(false);
    }
    snapshot_exists(conn, snapshotter, &top).await
}

async fn snapshot_exists(conn: &Connection, snapshotter: &str, key: &str) -> anyhow::Result<bool> {
    let request = StatSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        key: key.to_string(),
    };
    match conn.snapshots().stat(request).await {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::NotFound => Ok(false),
        Err(status) => Err(rpc(status).context(format!("looking up snapshot {key:?} in {snapshotter}"))),
    }
}

// ---------------------------------------------------------------- for corten run

/// An image ready to run a container from: its record's name, its config
/// document as stored, and the chain ID of its layers, which is a
/// committed snapshot in the snapshotter.
pub(crate) struct RunnableImage {
    pub(crate) name: String,
    pub(crate) config: Vec<u8>,
    pub(crate) chain_id: String,
}

/// Looks image `name` up for this machine's platform (or `platform`) and
/// makes sure it is unpacked in `snapshotter`: the snapshot named by its
/// chain ID exists and its config carries the GC reference to it. An image
/// that is not gets unpacked first, under `lease`, as `ctr run` does.
pub(crate) async fn runnable_image(
    conn: &Connection,
    lease: &Lease,
    snapshotter: &str,
    name: &str,
    platform: Option<&str>,
) -> anyhow::Result<RunnableImage> {
    let platform = PlatformMatcher::from_flags(false, platform)?;
    let image = get_image(conn, name).await?;
    let target = target_of(&image);
    let (_, manifest) = resolve_manifest(conn, &target, &platform).await?;
    let config = read_blob(conn, &manifest.config).await?;
    let parsed: ConfigJson =
        serde_json::from_slice(&config).with_context(|| format!("parsing image config {}", manifest.config.digest))?;
    let chain = chain_id(&parsed.rootfs.diff_ids);
    let label = format!("{GC_REF_SNAPSHOT}{snapshotter}");
    let mut unpacked = !chain.is_empty() && snapshot_exists(conn, snapshotter, &chain).await?;
    if unpacked {
        let request = InfoRequest {
            digest: manifest.config.digest.clone(),
        };
        let info = conn.content().info(request).await.map_err(rpc)?.into_inner().info;
        unpacked = info.is_some_and(|i| i.labels.get(&label) == Some(&chain));
    }
    if !unpacked {
        unpack(conn, lease, snapshotter, &target, &platform)
            .await
            .with_context(|| format!("unpacking {name}"))?;
    }
    Ok(RunnableImage {
        name: image.name,
        config,
        chain_id: chain,
    })
}

// ---------------------------------------------------------------- import

/// Archive members kept in memory rather than stored as blobs.
const OCI_LAYOUT_FILE: &str = "oci-layout";
const OCI_INDEX_FILE: &str = "index.json";
const DOCKER_MANIFEST_FILE: &str = "manifest.json";
const DOCKER_REPOSITORIES_FILE: &str = "repositories";

async fn import(ctx: &Context, args: ImportArgs) -> anyhow::Result<()> {
    let platforms = PlatformMatcher::from_flags(args.all_platforms, args.platform.as_deref())?;
    let (input, name, len) = open_archive(&args.file)?;
    let mode = progress::Mode::from_flags(args.progress, args.no_progress);
    let conn = ctx.connect().await?;
    // Everything stored along the way is held by this lease until the
    // images (and their labels) hold it; it lapses by itself should this
    // process die first.
    let lease = create_temporary_lease(&conn).await?;
    let job = ImportJob {
        conn: &conn,
        lease: &lease,
        args: &args,
        platforms,
    };
    let outcome = tokio::select! {
        outcome = job.run(input, &name, len, mode) => outcome,
        signal = interruption() => Err(anyhow::anyhow!("import interrupted by {signal}")),
    };
    release_lease(&conn, &lease.id).await;
    outcome
}

/// The archive as a reader for the tar thread, its name for messages, and
/// its length when it is a regular file.
fn open_archive(path: &Path) -> anyhow::Result<(Box<dyn Read + Send>, String, Option<u64>)> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(io::stdin()), "stdin".into(), None));
    }
    let name = path.display().to_string();
    let file = File::open(path).with_context(|| format!("opening {name}"))?;
    let meta = file.metadata().with_context(|| format!("reading {name}"))?;
    if meta.is_dir() {
        bail!("{name} is a directory");
    }
    let len = meta.is_file().then_some(meta.len());
    Ok((Box::new(file), name, len))
}

struct ImportJob<'a> {
    conn: &'a Connection,
    lease: &'a Lease,
    args: &'a ImportArgs,
    platforms: PlatformMatcher,
}

impl ImportJob<'_> {
    async fn run(
        &self,
        input: Box<dyn Read + Send>,
        name: &str,
        len: Option<u64>,
        mode: progress::Mode,
    ) -> anyhow::Result<()> {
        let progress = Arc::new(Progress::new(mode, &format!("importing {name}"), len));
        let archive = match self.store_members(input, Arc::clone(&progress)).await {
            Ok(archive) => {
                progress.finish();
                archive
            }
            Err(err) => {
                progress.abandon();
                return Err(err.context(format!("importing {name}")));
            }
        };
        let top = self
            .top_index(&archive)
            .await
            .with_context(|| format!("importing {name}"))?;
        let records = self.image_records(&top).await?;
        self.label_tree(&top).await?;
        if records.is_empty() {
            bail!("{name} holds no image to import (check --base-name)");
        }
        let mut client = self.conn.images();
        for image in &records {
            save_image(&mut client, image).await?;
        }
        let snapshotter = self.args.snapshotter.name();
        let unpack_platform = self.platforms.single();
        for image in &records {
            let target = target_of(image);
            if self.args.no_unpack || !matches!(BlobKind::of(&target.media_type), BlobKind::Index | BlobKind::Manifest)
            {
                output::print(&format!("{} ({})\n", image.name, target.digest))?;
                continue;
            }
            output::print(&format!("unpacking {} ({})...", image.name, target.digest))?;
            unpack(self.conn, self.lease, snapshotter, &target, &unpack_platform)
                .await
                .with_context(|| format!("unpacking {}", image.name))?;
            output::print("done\n")?;
        }
        Ok(())
    }

    /// Streams the archive: every regular file but the layout's own JSON is
    /// stored as a blob under the lease, read on a thread of its own.
    async fn store_members(&self, input: Box<dyn Read + Send>, progress: Arc<Progress>) -> anyhow::Result<Archive> {
        let (events_tx, mut events) = mpsc::channel::<io::Result<TarEvent>>(4);
        std::thread::Builder::new()
            .name("import-reader".into())
            .spawn(move || read_tar(Counted { inner: input, progress }, &events_tx))
            .context("starting the archive reader")?;

        let mut archive = Archive::default();
        let mut current: Option<Member> = None;
        let mut sequence = 0usize;
        while let Some(event) = events.recv().await {
            match event.context("reading the tar stream")? {
                TarEvent::File { path, size } => {
                    if let Some(member) = &current {
                        bail!("the archive reader started {path:?} inside {:?}", member.path());
                    }
                    sequence += 1;
                    current = Some(self.open_member(path, size, sequence).await?);
                }
                TarEvent::Data(chunk) => match current.as_mut() {
                    Some(member) => member.add(chunk).await?,
                    None => bail!("the archive reader sent data outside a file"),
                },
                TarEvent::EndOfFile => match current.take() {
                    Some(member) => member.finish(&mut archive).await?,
                    None => bail!("the archive reader ended a file it never started"),
                },
                TarEvent::Link { path, target } => {
                    archive.links.insert(path, target);
                }
            }
        }
        if let Some(member) = current {
            bail!("the archive ends inside {:?}", member.path());
        }
        Ok(archive)
    }

    async fn open_member(&self, path: String, size: u64, sequence: usize) -> anyhow::Result<Member> {
        let in_memory = [
            OCI_LAYOUT_FILE,
            OCI_INDEX_FILE,
            DOCKER_MANIFEST_FILE,
            DOCKER_REPOSITORIES_FILE,
        ];
        if in_memory.contains(&path.as_str()) {
            if size > MAX_JSON_BLOB as u64 {
                bail!("{path} is {size} bytes, too large for a JSON document");
            }
            return Ok(Member::Memory {
                path,
                data: Vec::with_capacity(size as usize),
            });
        }
        let expected = digest_of_blob_path(&path).unwrap_or_default();
        // Refs may not hold '/': the path is flattened, and numbered so
        // flattening cannot make two members one.
        let reference = format!("import-{}-{sequence}-{}", self.lease.id, path.replace('/', "_"));
        let writer = match BlobWriter::open(self.conn, self.lease, reference, &expected, size as i64).await? {
            Opened::Writing(writer) => Some(writer),
            Opened::Exists => None,
        };
        Ok(Member::Blob {
            path,
            writer,
            expected,
            size,
            received: 0,
            compression: None,
        })
    }

    /// The index at the top of the archive, stored as a blob: the OCI
    /// layout's `index.json`, or one made from a docker `manifest.json`.
    async fn top_index(&self, archive: &Archive) -> anyhow::Result<Descriptor> {
        if let Some(layout) = &archive.oci_layout {
            let layout: serde_json::Value = serde_json::from_slice(layout).context("parsing oci-layout")?;
            let version = layout["imageLayoutVersion"].as_str().unwrap_or_default();
            if !version.starts_with("1.") {
                bail!("unsupported OCI image layout version {version:?}");
            }
            let Some(index) = &archive.index_json else {
                bail!("an OCI image layout without {OCI_INDEX_FILE}");
            };
            serde_json::from_slice::<IndexJson>(index).with_context(|| format!("parsing {OCI_INDEX_FILE}"))?;
            let reference = format!("import-{}-index", self.lease.id);
            return write_document(self.conn, self.lease, reference, OCI_INDEX, index).await;
        }
        let Some(manifest) = &archive.docker_manifest else {
            bail!(
                "unrecognized archive: neither an OCI image layout (oci-layout, index.json) \
                 nor a docker save archive (manifest.json)"
            );
        };
        let entries: Vec<DockerEntry> =
            serde_json::from_slice(manifest).with_context(|| format!("parsing {DOCKER_MANIFEST_FILE}"))?;
        let mut manifests = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            manifests.extend(self.docker_manifest(archive, entry, i).await?);
        }
        let index = IndexDocument {
            schema_version: 2,
            media_type: None,
            manifests: &manifests,
        };
        let reference = format!("import-{}-index", self.lease.id);
        write_document(
            self.conn,
            self.lease,
            reference,
            OCI_INDEX,
            &serde_json::to_vec(&index)?,
        )
        .await
    }

    /// A docker image manifest for one `manifest.json` entry, stored; then
    /// one index entry per name it has (one without a name if it has none).
    async fn docker_manifest(
        &self,
        archive: &Archive,
        entry: &DockerEntry,
        i: usize,
    ) -> anyhow::Result<Vec<Descriptor>> {
        let config = archive.blob(&entry.config)?;
        let config = Descriptor::new(DOCKER_CONFIG, &config.digest, config.size);
        let mut layers = Vec::with_capacity(entry.layers.len());
        for path in &entry.layers {
            let blob = archive.blob(path)?;
            let media_type = match blob.compression {
                Compression::Gzip => DOCKER_LAYER_GZIP,
                Compression::Zstd => DOCKER_LAYER_ZSTD,
                Compression::None => DOCKER_LAYER,
            };
            layers.push(Descriptor::new(media_type, &blob.digest, blob.size));
        }
        let parsed: ConfigJson = read_json(self.conn, &config).await?;
        let manifest = ManifestDocument {
            schema_version: 2,
            media_type: DOCKER_MANIFEST,
            config: &config,
            layers: &layers,
        };
        let reference = format!("import-{}-manifest-{i}", self.lease.id);
        let mut desc = write_document(
            self.conn,
            self.lease,
            reference,
            DOCKER_MANIFEST,
            &serde_json::to_vec(&manifest)?,
        )
        .await?;
        if !parsed.os.is_empty() {
            desc.platform = Some(parsed.platform());
        }
        if entry.repo_tags.is_empty() {
            return Ok(vec![desc]);
        }
        Ok(entry
            .repo_tags
            .iter()
            .map(|tag| {
                let name = normalize_docker_name(tag);
                let mut named = desc.clone();
                named
                    .annotations
                    .insert(REF_NAME_ANNOTATION.into(), reference_object(&name));
                named.annotations.insert(IMAGE_NAME_ANNOTATION.into(), name);
                named
            })
            .collect())
    }

    /// The images the archive names: one per entry of the top index (by
    /// its names), plus digest names and the index itself when asked.
    async fn image_records(&self, top: &Descriptor) -> anyhow::Result<Vec<Image>> {
        let index: IndexJson = read_json(self.conn, top).await?;
        let base = self.args.base_name.as_deref().filter(|b| !b.is_empty());
        let prefix = match base {
            Some(base) => base.to_string(),
            None => format!(
                "import-{}",
                &humantime::format_rfc3339_seconds(SystemTime::now()).to_string()[..10]
            ),
        };
        let mut records = Vec::new();
        for entry in index.manifests {
            let name = import_name(&entry.annotations, base, &prefix);
            let named = name.is_some();
            let mut target = entry.clone();
            target.platform = None;
            if let Some(name) = name {
                records.push(new_image(name, &target));
            }
            if self.args.digests && !(named && self.args.skip_digest_for_named) {
                records.push(new_image(format!("{prefix}@{}", entry.digest), &target));
            }
        }
        if let Some(name) = self.args.index_name.as_deref().filter(|n| !n.is_empty()) {
            records.push(new_image(name.to_string(), top));
        }
        Ok(records)
    }

    /// Labels every index and manifest under `top` with the blobs it names,
    /// so that once the lease goes the images keep all of it.
    async fn label_tree(&self, top: &Descriptor) -> anyhow::Result<()> {
        let mut seen = HashSet::new();
        let mut pending = vec![top.clone()];
        while let Some(desc) = pending.pop() {
            if !matches!(BlobKind::of(&desc.media_type), BlobKind::Index | BlobKind::Manifest)
                || !seen.insert(desc.digest.clone())
            {
                continue;
            }
            let below = children(self.conn, &desc, &self.platforms).await?;
            set_blob_labels(self.conn, &desc.digest, child_gc_labels(&below)).await?;
            pending.extend(below);
        }
        Ok(())
    }
}

fn new_image(name: String, target: &Descriptor) -> Image {
    Image {
        name,
        labels: HashMap::new(),
        target: Some(target.to_msg()),
        created_at: None,
        updated_at: None,
    }
}

/// Points an existing image of the name at the new target (keeping its
/// labels), or creates it.
async fn save_image(
    client: &mut corten_api::containerd::services::images::v1::images_client::ImagesClient<crate::client::Channel>,
    image: &Image,
) -> anyhow::Result<()> {
    let update = UpdateImageRequest {
        image: Some(image.clone()),
        update_mask: Some(FieldMask {
            paths: vec!["target".into()],
        }),
    };
    match client.update(update).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::NotFound => client
            .create(CreateImageRequest {
                image: Some(image.clone()),
            })
            .await
            .map(|_| ())
            .map_err(rpc)
            .with_context(|| format!("creating image {:?}", image.name)),
        Err(status) => Err(rpc(status).context(format!("updating image {:?}", image.name))),
    }
}

/// The name an index entry is imported as. Its full name (containerd's
/// annotation) is taken as it is; a bare tag (the OCI annotation) goes
/// under the base name or the `import-DATE` prefix. With a base name, only
/// names under it are imported.
fn import_name(annotations: &BTreeMap<String, String>, base: Option<&str>, prefix: &str) -> Option<String> {
    let under_base = |name: &str| base.is_none_or(|b| has_image_prefix(name, b));
    if let Some(name) = annotations.get(IMAGE_NAME_ANNOTATION).filter(|n| !n.is_empty()) {
        return under_base(name).then(|| name.clone());
    }
    let reference = annotations.get(REF_NAME_ANNOTATION).filter(|n| !n.is_empty())?;
    if reference.contains(['/', ':', '@']) {
        return under_base(reference).then(|| reference.clone());
    }
    Some(format!("{prefix}:{reference}"))
}

/// Whether `name` is `prefix` itself followed by a tag, digest or deeper
/// path.
fn has_image_prefix(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with(['/', ':', '@']))
}

/// A name from `docker save`'s RepoTags in full, as docker resolves it:
/// `busybox` is `docker.io/library/busybox:latest`.
fn normalize_docker_name(name: &str) -> String {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest.to_string()),
        _ => ("docker.io", name.to_string()),
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let mut full = format!("{domain}/{path}");
    if reference_object(&full).is_empty() {
        full.push_str(":latest");
    }
    full
}

/// What follows an image name's repository: `tag`, `tag@digest` or
/// `@digest`; empty when there is neither.
fn reference_object(name: &str) -> String {
    let last = name.rfind('/').map_or(0, |i| i + 1);
    let tail = &name[last..];
    match tail.find([':', '@']) {
        Some(at) => tail[at..].strip_prefix(':').unwrap_or(&tail[at..]).to_string(),
        None => String::new(),
    }
}

/// What `manifest.json` of a `docker save` archive says about one image.
#[derive(Debug, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default, deserialize_with = "null_default")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers", default, deserialize_with = "null_default")]
    layers: Vec<String>,
}

/// `sha256:<hex>` for an OCI layout's `blobs/sha256/<hex>`.
fn digest_of_blob_path(path: &str) -> Option<String> {
    let hex = path.strip_prefix("blobs/sha256/")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then(|| format!("sha256:{hex}"))
}

/// How a layer blob is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn sniff(start: &[u8]) -> Compression {
        if start.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if start.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A stored archive member.
#[derive(Debug, Clone)]
struct StoredBlob {
    digest: String,
    size: i64,
    compression: Compression,
}

/// What reading the archive left: its blobs by path, links between paths,
/// and the layout files.
#[derive(Debug, Default)]
struct Archive {
    blobs: HashMap<String, StoredBlob>,
    links: HashMap<String, String>,
    oci_layout: Option<Vec<u8>>,
    index_json: Option<Vec<u8>>,
    docker_manifest: Option<Vec<u8>>,
}

impl Archive {
    /// The blob stored from `path`, following links in the archive (old
    /// `docker save` links a layer shared by two images).
    fn blob(&self, path: &str) -> anyhow::Result<&StoredBlob> {
        let mut path = clean_path(path);
        for _ in 0..16 {
            if let Some(blob) = self.blobs.get(&path) {
                return Ok(blob);
            }
            match self.links.get(&path) {
                Some(target) => path = target.clone(),
                None => break,
            }
        }
        bail!("{path:?} is named by {DOCKER_MANIFEST_FILE} but not in the archive")
    }
}

/// An archive member being received.
enum Member {
    Memory {
        path: String,
        data: Vec<u8>,
    },
    Blob {
        path: String,
        /// `None` when the store already has the blob.
        writer: Option<Box<BlobWriter>>,
        expected: String,
        size: u64,
        received: u64,
        compression: Option<Compression>,
    },
}

impl Member {
    fn path(&self) -> &str {
        match self {
            Member::Memory { path, .. } | Member::Blob { path, .. } => path,
        }
    }

    async fn add(&mut self, chunk: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Member::Memory { data, .. } => data.extend_from_slice(&chunk),
            Member::Blob {
                writer,
                received,
                compression,
                ..
            } => {
                compression.get_or_insert_with(|| Compression::sniff(&chunk));
                *received += chunk.len() as u64;
                if let Some(writer) = writer {
                    writer.write(chunk).await?;
                }
            }
        }
        Ok(())
    }

    async fn finish(self, archive: &mut Archive) -> anyhow::Result<()> {
        match self {
            Member::Memory { path, data } => {
                let slot = match path.as_str() {
                    OCI_LAYOUT_FILE => &mut archive.oci_layout,
                    OCI_INDEX_FILE => &mut archive.index_json,
                    DOCKER_MANIFEST_FILE => &mut archive.docker_manifest,
                    _ => return Ok(()),
                };
                *slot = Some(data);
            }
            Member::Blob {
                path,
                writer,
                expected,
                size,
                received,
                compression,
            } => {
                if received != size {
                    bail!("{path}: the archive holds {received} of its {size} bytes");
                }
                let digest = match writer {
                    Some(writer) => writer
                        .commit(HashMap::new())
                        .await
                        .with_context(|| format!("storing {path}"))?,
                    None => expected,
                };
                let blob = StoredBlob {
                    digest,
                    size: size as i64,
                    compression: compression.unwrap_or(Compression::None),
                };
                archive.links.remove(&path);
                archive.blobs.insert(path, blob);
            }
        }
        Ok(())
    }
}

/// What the tar thread reports, in archive order.
#[derive(Debug)]
enum TarEvent {
    /// A regular file starts; its data follows, then [`TarEvent::EndOfFile`].
    File {
        path: String,
        size: u64,
    },
    Data(Vec<u8>),
    EndOfFile,
    /// `path` is another name for `target` (both from the archive root).
    Link {
        path: String,
        target: String,
    },
}

/// Reads a tar stream (gzip-compressed or not), reporting its members
/// until the end, an error or the receiver going away.
fn read_tar<R: Read>(input: R, events: &mpsc::Sender<io::Result<TarEvent>>) {
    let mut input = io::BufReader::with_capacity(CHUNK_SIZE, input);
    let compression = match input.fill_buf() {
        Ok(start) => Compression::sniff(start),
        Err(err) => {
            let _ = events.blocking_send(Err(err));
            return;
        }
    };
    match compression {
        Compression::None => read_members(input, events),
        Compression::Gzip => read_members(flate2::read::MultiGzDecoder::new(input), events),
        Compression::Zstd => {
            let err = io::Error::other("zstd-compressed archives are not supported: decompress it first");
            let _ = events.blocking_send(Err(err));
        }
    }
}

fn read_members<R: Read>(input: R, events: &mpsc::Sender<io::Result<TarEvent>>) {
    let mut archive = tar::Archive::new(input);
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(err) => {
            let _ = events.blocking_send(Err(err));
            return;
        }
    };
    for entry in entries {
        let sent = match entry.and_then(|e| report_entry(e, events)) {
            Ok(sent) => sent,
            Err(err) => {
                let _ = events.blocking_send(Err(err));
                return;
            }
        };
        if !sent {
            return;
        }
    }
}

/// Reports one member; `Ok(false)` once the receiver has gone.
fn report_entry<R: Read>(
    mut entry: tar::Entry<'_, R>,
    events: &mpsc::Sender<io::Result<TarEvent>>,
) -> io::Result<bool> {
    let path = clean_path(&entry.path()?.to_string_lossy());
    let kind = entry.header().entry_type();
    let send = |event| events.blocking_send(Ok(event)).is_ok();
    if kind.is_symlink() || kind.is_hard_link() {
        let Some(link) = entry.link_name()? else {
            return Ok(true);
        };
        let link = link.to_string_lossy();
        // A symbolic link is relative to its own directory; a hard link
        // names a path from the archive root.
        let target = match (kind.is_symlink(), path.rsplit_once('/')) {
            (true, Some((dir, _))) if !link.starts_with('/') => clean_path(&format!("{dir}/{link}")),
            _ => clean_path(&link),
        };
        return Ok(send(TarEvent::Link { path, target }));
    }
    if !kind.is_file() || path.is_empty() {
        return Ok(true);
    }
    if !send(TarEvent::File {
        path,
        size: entry.size(),
    }) {
        return Ok(false);
    }
    loop {
        let mut chunk = Vec::with_capacity(CHUNK_SIZE);
        (&mut entry).take(CHUNK_SIZE as u64).read_to_end(&mut chunk)?;
        if chunk.is_empty() {
            break;
        }
        if !send(TarEvent::Data(chunk)) {
            return Ok(false);
        }
    }
    Ok(send(TarEvent::EndOfFile))
}

/// A relative path in its plain form: no `.`, no empty parts, `..` taken
/// back, no leading `/`.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

/// A reader that moves a progress bar by what passes through it.
struct Counted<R> {
    inner: R,
    progress: Arc<Progress>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

// ---------------------------------------------------------------- unpack

/// Unpacks the image `target` for `platform` into `snapshotter`, layer by
/// layer, as containerd's clients do: each layer's snapshot is prepared on
/// its parent's, filled by the Diff service and committed under its chain
/// ID; layers already unpacked are skipped. Marks each layer blob with its
/// verified diff ID and the config with the snapshot it keeps. Returns the
/// top chain ID.
async fn unpack(
    conn: &Connection,
    lease: &Lease,
    snapshotter: &str,
    target: &Descriptor,
    platform: &PlatformMatcher,
) -> anyhow::Result<String> {
    let (manifest, config) = resolve_config(conn, target, platform).await?;
    let diff_ids = config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        bail!(
            "the manifest names {} layers but the config {} diff IDs",
            manifest.layers.len(),
            diff_ids.len()
        );
    }
    if diff_ids.is_empty() {
        bail!("the image has no layers to unpack");
    }
    let mut parent = String::new();
    for (i, layer) in manifest.layers.iter().enumerate() {
        let diff_id = &diff_ids[i];
        let chain = chain_id(&diff_ids[..=i]);
        if !snapshot_exists(conn, snapshotter, &chain).await? {
            let applied = apply_layer(conn, lease, snapshotter, layer, diff_id, &parent, &chain)
                .await
                .with_context(|| format!("layer {}", layer.digest))?;
            if applied {
                let label = BTreeMap::from([(UNCOMPRESSED_LABEL.to_string(), diff_id.clone())]);
                set_blob_labels(conn, &layer.digest, label).await?;
            }
        }
        parent = chain;
    }
    let label = BTreeMap::from([(format!("{GC_REF_SNAPSHOT}{snapshotter}"), parent.clone())]);
    set_blob_labels(conn, &manifest.config.digest, label).await?;
    Ok(parent)
}

/// Unpacks one layer onto `parent` as the committed snapshot `chain`.
/// `Ok(false)` when another client committed it first.
async fn apply_layer(
    conn: &Connection,
    lease: &Lease,
    snapshotter: &str,
    layer: &Descriptor,
    diff_id: &str,
    parent: &str,
    chain: &str,
) -> anyhow::Result<bool> {
    let labels = HashMap::from([(SNAPSHOT_REF_LABEL.to_string(), chain.to_string())]);
    let mut snapshots = conn.snapshots();
    let mut attempts = 0;
    let (key, mounts) = loop {
        let key = format!("extract-{} {chain}", leases::random_id(SystemTime::now()));
        let request = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.clone(),
            parent: parent.to_string(),
            labels: labels.clone(),
        };
        match snapshots.prepare(lease.request(request)).await {
            Ok(reply) => break (key, reply.into_inner().mounts),
            Err(status) if status.code() == Code::AlreadyExists && attempts < 3 => attempts += 1,
            Err(status) => return Err(rpc(status).context(format!("preparing a snapshot on {parent:?}"))),
        }
    };
    let applied = async {
        let request = ApplyRequest {
            diff: Some(layer.to_msg()),
            mounts,
            payloads: HashMap::new(),
        };
        let applied = conn
            .diff()
            .apply(lease.request(request))
            .await
            .map_err(rpc)
            .context("applying the layer")?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default();
        if applied != diff_id {
            bail!("wrong diff id calculated on extraction {applied:?} (the config says {diff_id})");
        }
        let request = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: chain.to_string(),
            key: key.clone(),
            labels: labels.clone(),
        };
        match snapshots.clone().commit(lease.request(request)).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::AlreadyExists => Ok(false),
            Err(status) => Err(rpc(status).context(format!("committing {chain}"))),
        }
    }
    .await;
    if !matches!(applied, Ok(true)) {
        remove_snapshot(conn, snapshotter, &key).await;
    }
    applied
}

/// Removes a snapshot made along the way, warning (not failing) when that
/// does not work: the lease holds it, so it is collected once the lease is.
async fn remove_snapshot(conn: &Connection, snapshotter: &str, key: &str) {
    let request = RemoveSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        key: key.to_string(),
    };
    let err = match tokio::time::timeout(CLEANUP_TIMEOUT, conn.snapshots().remove(request)).await {
        Ok(Ok(_)) => return,
        Ok(Err(status)) if status.code() == Code::NotFound => return,
        Ok(Err(status)) => rpc(status),
        Err(_) => anyhow::anyhow!("no answer within {CLEANUP_TIMEOUT:?}"),
    };
    let err = err.context(format!("removing snapshot {key:?}"));
    eprintln!("corten: warning: {}", error::one_line(&err));
}

// ---------------------------------------------------------------- export

async fn export(ctx: &Context, args: ExportArgs) -> anyhow::Result<()> {
    let platforms = PlatformMatcher::from_flags(args.all_platforms, args.platform.as_deref())?;
    let mode = progress::Mode::from_flags(args.progress, args.no_progress);
    let conn = ctx.connect().await?;
    let plan = plan_export(&conn, &args.names, &platforms, !args.skip_manifest_json).await?;

    let to_stdout = args.out.as_os_str() == "-";
    let shown = if to_stdout {
        "stdout".to_string()
    } else {
        args.out.display().to_string()
    };
    let sink: Box<dyn Write> = if to_stdout {
        Box::new(io::stdout().lock())
    } else {
        Box::new(File::create(&args.out).with_context(|| format!("creating {shown}"))?)
    };
    let mut tar = TarWriter::new(io::BufWriter::with_capacity(CHUNK_SIZE, sink));
    let total: i64 = plan.blobs.iter().map(|b| b.size).sum();
    let progress = Progress::new(mode, &format!("exporting to {shown}"), u64::try_from(total).ok());
    let outcome = tokio::select! {
        outcome = write_export(&conn, &plan, &mut tar, &progress) => outcome,
        signal = interruption() => Err(anyhow::anyhow!("export interrupted by {signal}")),
    };
    match outcome {
        Ok(()) => {
            progress.finish();
            Ok(())
        }
        Err(err) => {
            progress.abandon();
            drop(tar);
            // Half an archive is worse than none.
            if !to_stdout {
                let _ = std::fs::remove_file(&args.out);
            }
            Err(err.context(format!("writing {shown}")))
        }
    }
}

/// What an export writes: the blobs, in order, and the layout files.
#[derive(Debug)]
struct ExportPlan {
    blobs: Vec<Descriptor>,
    index: Vec<u8>,
    /// The docker manifest.json, when some image has a manifest for the
    /// platform.
    docker_manifest: Option<Vec<u8>>,
}

/// One `manifest.json` entry of a docker archive.
#[derive(Debug, Serialize)]
struct DockerExportEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

async fn plan_export(
    conn: &Connection,
    names: &[String],
    platforms: &PlatformMatcher,
    with_docker_manifest: bool,
) -> anyhow::Result<ExportPlan> {
    let mut blobs = Vec::new();
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    let mut docker: Vec<DockerExportEntry> = Vec::new();
    let mut docker_by_manifest: HashMap<String, usize> = HashMap::new();
    for name in names {
        let image = get_image(conn, name).await?;
        let target = target_of(&image);
        let mut pending = vec![target.clone()];
        while let Some(desc) = pending.pop() {
            if !seen.insert(desc.digest.clone()) {
                continue;
            }
            let mut below = children(conn, &desc, platforms)
                .await
                .with_context(|| format!("exporting {name}"))?;
            below.reverse();
            pending.extend(below);
            blobs.push(desc);
        }
        let mut entry = target.clone();
        entry.annotations.insert(IMAGE_NAME_ANNOTATION.into(), name.clone());
        let object = reference_object(name);
        entry.annotations.insert(
            REF_NAME_ANNOTATION.into(),
            if object.is_empty() { name.clone() } else { object },
        );
        entries.push(entry);

        if !with_docker_manifest {
            continue;
        }
        let Ok((manifest_desc, manifest)) = resolve_manifest(conn, &target, platforms).await else {
            continue;
        };
        let tag = familiar_tagged_name(name);
        match docker_by_manifest.get(&manifest_desc.digest) {
            Some(&at) => docker[at].repo_tags.extend(tag),
            None => {
                docker_by_manifest.insert(manifest_desc.digest.clone(), docker.len());
                docker.push(DockerExportEntry {
                    config: blob_path(&manifest.config.digest),
                    repo_tags: tag.into_iter().collect(),
                    layers: manifest.layers.iter().map(|l| blob_path(&l.digest)).collect(),
                });
            }
        }
    }
    // Everything the docker manifest names is among the blobs: it was
    // resolved with the same platforms.
    let index = IndexDocument {
        schema_version: 2,
        media_type: None,
        manifests: &entries,
    };
    Ok(ExportPlan {
        blobs,
        index: serde_json::to_vec(&index)?,
        docker_manifest: if docker.is_empty() {
            None
        } else {
            Some(serde_json::to_vec(&docker)?)
        },
    })
}

/// Where an OCI layout keeps a blob: `blobs/<algorithm>/<hex>`.
fn blob_path(digest: &str) -> String {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    format!("blobs/{algorithm}/{hex}")
}

/// The name docker shows for an image (`docker.io/library/busybox:latest`
/// is `busybox:latest`), when it has a tag; digest names have none.
fn familiar_tagged_name(name: &str) -> Option<String> {
    let object = reference_object(name);
    if object.is_empty() || object.starts_with('@') {
        return None;
    }
    let short = name.strip_prefix("docker.io/").unwrap_or(name);
    let short = match short.strip_prefix("library/") {
        Some(rest) if !rest.contains('/') && name.starts_with("docker.io/") => rest,
        _ => short,
    };
    Some(short.to_string())
}

async fn write_export<W: Write>(
    conn: &Connection,
    plan: &ExportPlan,
    tar: &mut TarWriter<W>,
    progress: &Progress,
) -> anyhow::Result<()> {
    let mut dirs = BTreeSet::new();
    for blob in &plan.blobs {
        let path = blob_path(&blob.digest);
        if let Some((dir, _)) = path.rsplit_once('/') {
            if dirs.insert(dir.to_string()) {
                if dirs.len() == 1 {
                    tar.directory("blobs/")?;
                }
                tar.directory(&format!("{dir}/"))?;
            }
        }
        let size = u64::try_from(blob.size).with_context(|| format!("{}: negative size", blob.digest))?;
        tar.start_file(&path, size, 0o444)?;
        copy_blob(conn, blob, tar, progress).await?;
        tar.end_file()?;
    }
    tar.file(OCI_LAYOUT_FILE, br#"{"imageLayoutVersion":"1.0.0"}"#, 0o444)?;
    tar.file(OCI_INDEX_FILE, &plan.index, 0o644)?;
    if let Some(manifest) = &plan.docker_manifest {
        tar.file(DOCKER_MANIFEST_FILE, manifest, 0o644)?;
    }
    tar.finish()?;
    Ok(())
}

/// Streams a stored blob into the archive, checking its size and digest.
async fn copy_blob<W: Write>(
    conn: &Connection,
    desc: &Descriptor,
    tar: &mut TarWriter<W>,
    progress: &Progress,
) -> anyhow::Result<()> {
    let what = || what_blob(desc);
    let mut reader = BlobReader::open(conn, desc).await?;
    let mut hasher = Sha256::new();
    while let Some(part) = reader.next().await? {
        if reader.position > desc.size {
            bail!("{}: larger than the {} bytes its descriptor says", what(), desc.size);
        }
        hasher.update(&part);
        tar.data(&part)?;
        progress.advance(part.len() as u64);
    }
    if reader.position != desc.size {
        bail!(
            "{}: {} bytes where its descriptor says {}",
            what(),
            reader.position,
            desc.size
        );
    }
    if desc.digest.starts_with("sha256:") && format!("sha256:{:x}", hasher.finalize()) != desc.digest {
        bail!("{}: the stored bytes do not match the digest", what());
    }
    Ok(())
}

/// Writes a tar stream member by member: root-owned entries with a zero
/// mtime, so the same images give the same archive.
struct TarWriter<W: Write> {
    out: W,
    /// Bytes of the current file still to come.
    remaining: u64,
    /// Padding owed after the current file's data.
    padding: usize,
}

const TAR_BLOCK: usize = 512;

impl<W: Write> TarWriter<W> {
    fn new(out: W) -> Self {
        TarWriter {
            out,
            remaining: 0,
            padding: 0,
        }
    }

    fn header(&mut self, path: &str, kind: tar::EntryType, size: u64, mode: u32) -> io::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_path(path)?;
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        self.out.write_all(header.as_bytes())
    }

    fn directory(&mut self, path: &str) -> io::Result<()> {
        self.header(path, tar::EntryType::Directory, 0, 0o755)
    }

    fn start_file(&mut self, path: &str, size: u64, mode: u32) -> io::Result<()> {
        self.header(path, tar::EntryType::Regular, size, mode)?;
        self.remaining = size;
        self.padding = (TAR_BLOCK - (size % TAR_BLOCK as u64) as usize) % TAR_BLOCK;
        Ok(())
    }

    fn data(&mut self, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 > self.remaining {
            return Err(io::Error::other("more data than the tar header announced"));
        }
        self.remaining -= data.len() as u64;
        self.out.write_all(data)
    }

    fn end_file(&mut self) -> io::Result<()> {
        if self.remaining != 0 {
            return Err(io::Error::other("less data than the tar header announced"));
        }
        self.out.write_all(&[0; TAR_BLOCK][..self.padding])?;
        self.padding = 0;
        Ok(())
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<()> {
        self.start_file(path, data.len() as u64, mode)?;
        self.data(data)?;
        self.end_file()
    }

    /// The two empty blocks that end an archive.
    fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(&[0; 2 * TAR_BLOCK])?;
        self.out.flush()
    }
}

// ---------------------------------------------------------------- mount / unmount

/// Unpacks the image if need be, then mounts a view of it (a writable
/// snapshot with `--rw`) at TARGET. The snapshot and the lease holding it
/// are both named TARGET, as ctr names them, so either tool can unmount.
async fn mount(ctx: &Context, args: MountArgs) -> anyhow::Result<()> {
    let platform = PlatformMatcher::from_flags(false, args.platform.as_deref())?;
    let snapshotter = args.snapshotter.name();
    let target = args.target.as_str();
    if !Path::new(target).is_dir() {
        bail!("{target} is not a directory");
    }
    let conn = ctx.connect().await?;
    let image = get_image(&conn, &args.name).await?;

    let labels = HashMap::from([(format!("{GC_REF_SNAPSHOT}{snapshotter}"), target.to_string())]);
    let (lease, created) = match create_lease(&conn, target.to_string(), LEASE_TTL, labels).await {
        Ok(lease) => (lease, true),
        // A lease left by an earlier mount at the same place is reused.
        Err(err) if rpc_code(&err) == Some(Code::AlreadyExists) => (
            Lease {
                id: target.to_string(),
                header: lease_header(target)?,
            },
            false,
        ),
        Err(err) => return Err(err),
    };
    let outcome = mount_image(&conn, &lease, snapshotter, &image, &platform, target, args.rw).await;
    if outcome.is_err() && created {
        release_lease(&conn, &lease.id).await;
    }
    let chain = outcome?;
    Ok(output::print(&format!("{chain}\n{target}\n"))?)
}

async fn mount_image(
    conn: &Connection,
    lease: &Lease,
    snapshotter: &str,
    image: &Image,
    platform: &PlatformMatcher,
    target: &str,
    writable: bool,
) -> anyhow::Result<String> {
    let chain = unpack(conn, lease, snapshotter, &target_of(image), platform)
        .await
        .with_context(|| format!("unpacking {}", image.name))?;
    let mut client = conn.snapshots();
    let labels = HashMap::new();
    let created = if writable {
        let request = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: target.to_string(),
            parent: chain.clone(),
            labels,
        };
        client
            .prepare(lease.request(request))
            .await
            .map(|r| r.into_inner().mounts)
    } else {
        let request = ViewSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: target.to_string(),
            parent: chain.clone(),
            labels,
        };
        client.view(lease.request(request)).await.map(|r| r.into_inner().mounts)
    };
    let (mounts, fresh) = match created {
        Ok(mounts) => (mounts, true),
        // Mounted here before (and unmounted without --rm): the same
        // snapshot serves, writes and all.
        Err(status) if status.code() == Code::AlreadyExists => {
            let request = MountsRequest {
                snapshotter: snapshotter.to_string(),
                key: target.to_string(),
            };
            let mounts = client
                .mounts(request)
                .await
                .map_err(rpc)
                .with_context(|| format!("mounting snapshot {target:?}"))?
                .into_inner()
                .mounts;
            (mounts, false)
        }
        Err(status) => return Err(rpc(status).context(format!("creating snapshot {target:?} of {chain}"))),
    };
    if let Err(err) = mount_all(&mounts, Path::new(target)) {
        // Only what this run made goes; an earlier snapshot may hold writes.
        if fresh {
            remove_snapshot(conn, snapshotter, target).await;
        }
        return Err(err);
    }
    Ok(chain)
}

/// Unmounts everything at TARGET; with `--rm` also removes the lease and
/// the snapshot `images mount` made there.
async fn unmount(ctx: &Context, remove: bool, snapshotter: &str, target: String) -> anyhow::Result<()> {
    unmount_all(Path::new(&target))?;
    if remove {
        let conn = ctx.connect().await?;
        let request = DeleteLeaseRequest {
            id: target.clone(),
            sync: false,
        };
        match conn.leases().delete(request).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(rpc(status).context(format!("removing lease {target:?}"))),
        }
        let request = RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: target.clone(),
        };
        match conn.snapshots().remove(request).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(rpc(status).context(format!("removing snapshot {target:?}"))),
        }
    }
    Ok(output::print(&format!("{target}\n"))?)
}

/// Mounts each of `mounts` at `target` (or below it, for one with a
/// target of its own), in order; undoes what it did if one fails.
pub(crate) fn mount_all(mounts: &[Mount], target: &Path) -> anyhow::Result<()> {
    let mut done: Vec<PathBuf> = Vec::new();
    for m in mounts {
        let point = mount_point(target, &m.target);
        if let Err(err) = mount_one(m, &point) {
            for point in done.iter().rev() {
                let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
            }
            return Err(err);
        }
        done.push(point);
    }
    Ok(())
}

fn mount_point(target: &Path, below: &str) -> PathBuf {
    let below = below.trim_start_matches('/');
    if below.is_empty() {
        target.to_path_buf()
    } else {
        target.join(below)
    }
}

/// The most a kernel takes as mount data: one page.
const MAX_MOUNT_DATA: usize = 4095;

fn mount_one(m: &Mount, point: &Path) -> anyhow::Result<()> {
    use nix::mount::MsFlags;
    let what = || format!("mounting {} {} at {}", m.r#type, m.source, point.display());
    let (mut flags, data) = mount_options(&m.options);
    if m.r#type == "bind" || m.r#type == "rbind" {
        flags |= MsFlags::MS_BIND;
        if m.r#type == "rbind" {
            flags |= MsFlags::MS_REC;
        }
    }
    if data.len() > MAX_MOUNT_DATA {
        bail!(
            "{}: its options are {} bytes, more than the kernel takes ({MAX_MOUNT_DATA})",
            what(),
            data.len()
        );
    }
    let data = (!data.is_empty()).then_some(data.as_str());
    let bind = flags.contains(MsFlags::MS_BIND);
    if bind {
        // A bind mount takes no other flags at first; they need a remount.
        nix::mount::mount(
            Some(m.source.as_str()),
            point,
            None::<&str>,
            flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            data,
        )
        .with_context(what)?;
        let rest = flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            let remount = rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
            if let Err(err) = nix::mount::mount(None::<&str>, point, None::<&str>, remount, None::<&str>) {
                let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
                return Err(anyhow::Error::from(err).context(format!("{}: remounting with {rest:?}", what())));
            }
        }
    } else {
        nix::mount::mount(Some(m.source.as_str()), point, Some(m.r#type.as_str()), flags, data).with_context(what)?;
    }
    Ok(())
}

/// Splits mount options into the flags mount(2) takes and the rest, which
/// goes to the filesystem as data.
fn mount_options(options: &[String]) -> (nix::mount::MsFlags, String) {
    use nix::mount::MsFlags as F;
    let mut flags = F::empty();
    let mut data: Vec<&str> = Vec::new();
    for option in options {
        let (set, clear) = match option.as_str() {
            "ro" => (F::MS_RDONLY, F::empty()),
            "rw" => (F::empty(), F::MS_RDONLY),
            "bind" => (F::MS_BIND, F::empty()),
            "rbind" => (F::MS_BIND | F::MS_REC, F::empty()),
            "nosuid" => (F::MS_NOSUID, F::empty()),
            "suid" => (F::empty(), F::MS_NOSUID),
            "nodev" => (F::MS_NODEV, F::empty()),
            "dev" => (F::empty(), F::MS_NODEV),
            "noexec" => (F::MS_NOEXEC, F::empty()),
            "exec" => (F::empty(), F::MS_NOEXEC),
            "sync" => (F::MS_SYNCHRONOUS, F::empty()),
            "async" => (F::empty(), F::MS_SYNCHRONOUS),
            "dirsync" => (F::MS_DIRSYNC, F::empty()),
            "noatime" => (F::MS_NOATIME, F::empty()),
            "atime" => (F::empty(), F::MS_NOATIME),
            "nodiratime" => (F::MS_NODIRATIME, F::empty()),
            "diratime" => (F::empty(), F::MS_NODIRATIME),
            "relatime" => (F::MS_RELATIME, F::empty()),
            "norelatime" => (F::empty(), F::MS_RELATIME),
            "strictatime" => (F::MS_STRICTATIME, F::empty()),
            "remount" => (F::MS_REMOUNT, F::empty()),
            "defaults" => (F::empty(), F::empty()),
            other => {
                data.push(other);
                continue;
            }
        };
        flags = (flags | set) - clear;
    }
    (flags, data.join(","))
}

/// Unmounts `target` until nothing is mounted there, riding out a
/// briefly busy mount as containerd does.
pub(crate) fn unmount_all(target: &Path) -> anyhow::Result<()> {
    use nix::errno::Errno;
    let mut busy = 0;
    for _ in 0..64 {
        match nix::mount::umount2(target, nix::mount::MntFlags::empty()) {
            Ok(()) => busy = 0,
            // Not (or no longer) a mount point.
            Err(Errno::EINVAL) => return Ok(()),
            Err(Errno::EBUSY) if busy < 20 => {
                busy += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) => return Err(anyhow::Error::from(err).context(format!("unmounting {}", target.display()))),
        }
    }
    bail!("unmounting {}: still mounted after 64 unmounts", target.display())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: &[&str]) -> Result<ImagesCommand, clap::Error> {
        Probe::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|p| p.args.command)
    }

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn commands_take_ctrs_arguments_and_aliases() {
        match parse(&["list", "-q", "name~=x"]).unwrap() {
            ImagesCommand::Ls { quiet, filters } => assert!(quiet && filters == ["name~=x"]),
            other => panic!("{other:?}"),
        }
        for alias in ["rm", "remove", "delete", "del"] {
            match parse(&[alias, "--sync", "a", "b"]).unwrap() {
                ImagesCommand::Rm { sync, names } => assert!(sync && names == ["a", "b"]),
                other => panic!("{other:?}"),
            }
        }
        assert!(parse(&["rm"]).is_err());
        match parse(&["tag", "--force", "src", "t1", "t2"]).unwrap() {
            ImagesCommand::Tag { force, source, targets } => {
                assert!(force);
                assert_eq!((source.as_str(), targets), ("src", vec!["t1".to_string(), "t2".into()]));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["tag", "only-source"]).is_err());
        assert!(matches!(parse(&["info", "x"]).unwrap(), ImagesCommand::Inspect { name } if name == "x"));
        match parse(&["unmount", "--rm", "/mnt/x"]).unwrap() {
            ImagesCommand::Unmount {
                rm,
                snapshotter,
                target,
            } => {
                assert!(rm);
                assert_eq!(target, "/mnt/x");
                assert_eq!(snapshotter.name(), "overlayfs");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn import_export_and_mount_flags() {
        let args = [
            "import",
            "--base-name",
            "foo/bar",
            "--digests",
            "--all-platforms",
            "--snapshotter",
            "native",
            "--no-unpack",
            "-",
        ];
        match parse(&args).unwrap() {
            ImagesCommand::Import(a) => {
                assert_eq!(a.base_name.as_deref(), Some("foo/bar"));
                assert!(a.digests && a.all_platforms && a.no_unpack);
                assert_eq!(a.snapshotter.name(), "native");
                assert_eq!(a.file, PathBuf::from("-"));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["import", "--all-platforms", "--platform", "linux/arm64", "f"]).is_err());
        assert!(parse(&["import", "--skip-digest-for-named", "f"]).is_err());
        match parse(&["export", "--all-platforms", "out.tar", "a", "b"]).unwrap() {
            ImagesCommand::Export(e) => {
                assert!(e.all_platforms && !e.skip_manifest_json);
                assert_eq!(e.out, PathBuf::from("out.tar"));
                assert_eq!(e.names, ["a", "b"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["export", "out.tar"]).is_err());
        match parse(&["mount", "--rw", "--snapshotter", "", "img", "/mnt"]).unwrap() {
            ImagesCommand::Mount(m) => {
                assert!(m.rw);
                assert_eq!(m.snapshotter.name(), "overlayfs");
                assert_eq!((m.name.as_str(), m.target.as_str()), ("img", "/mnt"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chain_ids_fold_diff_ids() {
        let (a, b, c) = (digest('a'), digest('b'), digest('c'));
        assert_eq!(chain_id(&[]), "");
        assert_eq!(chain_id(std::slice::from_ref(&a)), a);
        let ab = sha256_digest(format!("{a} {b}").as_bytes());
        assert_eq!(chain_id(&[a.clone(), b.clone()]), ab);
        assert_eq!(
            chain_id(&[a, b, c.clone()]),
            sha256_digest(format!("{ab} {c}").as_bytes())
        );
    }

    #[test]
    fn gc_labels_are_containerds() {
        let children = [
            Descriptor::new(OCI_CONFIG, &digest('c'), 1),
            Descriptor::new(registry_layer(), &digest('1'), 1),
            Descriptor::new(DOCKER_LAYER_GZIP, &digest('2'), 1),
        ];
        let labels = child_gc_labels(&children);
        let want = BTreeMap::from([
            ("containerd.io/gc.ref.content.config".to_string(), digest('c')),
            ("containerd.io/gc.ref.content.l.0".to_string(), digest('1')),
            ("containerd.io/gc.ref.content.l.1".to_string(), digest('2')),
        ]);
        assert_eq!(labels, want);
        let manifests = [
            Descriptor::new(OCI_MANIFEST, &digest('a'), 1),
            Descriptor::new(DOCKER_MANIFEST, &digest('b'), 1),
            Descriptor::new(OCI_INDEX, &digest('i'), 1),
        ];
        let labels = child_gc_labels(&manifests);
        assert_eq!(labels["containerd.io/gc.ref.content.m.0"], digest('a'));
        assert_eq!(labels["containerd.io/gc.ref.content.m.1"], digest('b'));
        assert_eq!(labels["containerd.io/gc.ref.content.0"], digest('i'));
    }

    fn registry_layer() -> &'static str {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }

    #[test]
    fn media_types_are_classified() {
        assert_eq!(BlobKind::of(DOCKER_MANIFEST_LIST), BlobKind::Index);
        assert_eq!(BlobKind::of(DOCKER_CONFIG), BlobKind::Config);
        assert_eq!(BlobKind::of(DOCKER_LAYER), BlobKind::Layer);
        assert_eq!(
            BlobKind::of("application/vnd.oci.image.layer.v1.tar+zstd"),
            BlobKind::Layer
        );
        assert_eq!(BlobKind::of("text/plain"), BlobKind::Other);
    }

    #[test]
    fn platforms_parse_normalize_and_match() {
        let arm = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(arm.format(), "linux/arm/v7");
        assert_eq!(Platform::parse("Linux/x86_64").unwrap().format(), "linux/amd64");
        assert_eq!(Platform::parse("linux/arm64/v8").unwrap().format(), "linux/arm64");
        for bad in ["linux", "linux/", "a/b/c/d", "linux/amd 64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        let amd64 = PlatformMatcher::Only(Platform::parse("linux/amd64").unwrap());
        let p = |os: &str, arch: &str, variant: &str| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.into(),
            ..Default::default()
        };
        assert!(amd64.matches(&p("linux", "amd64", "")));
        assert!(amd64.matches(&p("linux", "x86_64", "")));
        assert!(!amd64.matches(&p("linux", "arm64", "")));
        assert!(!amd64.matches(&p("windows", "amd64", "")));
        let v7 = PlatformMatcher::Only(arm);
        assert!(v7.matches(&p("linux", "arm", "v7")));
        assert!(v7.matches(&p("linux", "arm", "")));
        assert!(!v7.matches(&p("linux", "arm", "v6")));
        assert!(PlatformMatcher::All.matches(&p("plan9", "mips", "")));
        assert_eq!(PlatformMatcher::All.single(), PlatformMatcher::host());
        assert_eq!(Platform::host().os, "linux");
    }

    #[test]
    fn descriptors_read_go_json() {
        let text = r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:x",
            "size":5,"annotations":null,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}"#;
        let d: Descriptor = serde_json::from_str(text).unwrap();
        assert_eq!(d.size, 5);
        assert!(d.annotations.is_empty());
        assert_eq!(d.platform.unwrap().normalized().format(), "linux/arm64");
        let plain = serde_json::to_string(&Descriptor::new(OCI_CONFIG, "sha256:y", 2)).unwrap();
        assert_eq!(
            plain,
            r#"{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:y","size":2}"#
        );
        let config: ConfigJson =
            serde_json::from_str(r#"{"os":"linux","architecture":"amd64","rootfs":null}"#).unwrap();
        assert!(config.rootfs.diff_ids.is_empty());
    }

    #[test]
    fn import_names_follow_ctr() {
        let annotations = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let full = annotations(&[
            (IMAGE_NAME_ANNOTATION, "docker.io/library/busybox:latest"),
            (REF_NAME_ANNOTATION, "latest"),
        ]);
        assert_eq!(
            import_name(&full, None, "import-2024-01-01").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            import_name(&full, Some("docker.io/library/busybox"), "x").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(import_name(&full, Some("docker.io/library/busy"), "x"), None);
        let tag = annotations(&[(REF_NAME_ANNOTATION, "v1")]);
        assert_eq!(
            import_name(&tag, None, "import-2024-01-01").as_deref(),
            Some("import-2024-01-01:v1")
        );
        assert_eq!(
            import_name(&tag, Some("foo/bar"), "foo/bar").as_deref(),
            Some("foo/bar:v1")
        );
        let named = annotations(&[(REF_NAME_ANNOTATION, "example.com/app:v2")]);
        assert_eq!(import_name(&named, Some("other"), "other"), None);
        assert_eq!(import_name(&named, None, "p").as_deref(), Some("example.com/app:v2"));
        assert_eq!(import_name(&BTreeMap::new(), None, "p"), None);
        assert!(has_image_prefix("foo/bar@sha256:1", "foo/bar"));
        assert!(!has_image_prefix("foo/barn:1", "foo/bar"));
        assert!(!has_image_prefix("foo/bar", "foo/bar"));
    }

    #[test]
    fn docker_names_normalize_and_shorten() {
        assert_eq!(normalize_docker_name("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize_docker_name("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize_docker_name("me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(normalize_docker_name("localhost/app"), "localhost/app:latest");
        assert_eq!(normalize_docker_name("127.0.0.1:5000/t/b:x"), "127.0.0.1:5000/t/b:x");
        assert_eq!(reference_object("127.0.0.1:5000/t/b:x"), "x");
        assert_eq!(reference_object("127.0.0.1:5000/t/b"), "");
        assert_eq!(reference_object("a/b@sha256:1"), "@sha256:1");
        assert_eq!(reference_object("a/b:t@sha256:1"), "t@sha256:1");
        assert_eq!(
            familiar_tagged_name("docker.io/library/busybox:latest").as_deref(),
            Some("busybox:latest")
        );
        assert_eq!(
            familiar_tagged_name("docker.io/me/app:v1").as_deref(),
            Some("me/app:v1")
        );
        assert_eq!(
            familiar_tagged_name("127.0.0.1:5000/t/b:x").as_deref(),
            Some("127.0.0.1:5000/t/b:x")
        );
        assert_eq!(familiar_tagged_name("a/b@sha256:1"), None);
        assert_eq!(familiar_tagged_name("a/b"), None);
    }

    #[test]
    fn archive_paths() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_of_blob_path(&format!("blobs/sha256/{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(digest_of_blob_path("blobs/sha256/abc"), None);
        assert_eq!(digest_of_blob_path(&format!("blobs/sha512/{hex}")), None);
        assert_eq!(clean_path("./blobs//sha256/../sha256/x"), "blobs/sha256/x");
        assert_eq!(clean_path("/manifest.json"), "manifest.json");
        assert_eq!(clean_path("./"), "");
        assert_eq!(blob_path(&format!("sha256:{hex}")), format!("blobs/sha256/{hex}"));
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(Compression::sniff(b"bin/"), Compression::None);
    }

    #[test]
    fn archive_links_lead_to_blobs() {
        let mut archive = Archive::default();
        let blob = StoredBlob {
            digest: digest('l'),
            size: 3,
            compression: Compression::None,
        };
        archive.blobs.insert("one/layer.tar".into(), blob);
        archive.links.insert("two/layer.tar".into(), "one/layer.tar".into());
        archive.links.insert("loop/a".into(), "loop/b".into());
        archive.links.insert("loop/b".into(), "loop/a".into());
        assert_eq!(archive.blob("./two/layer.tar").unwrap().digest, digest('l'));
        assert!(archive.blob("loop/a").is_err());
        assert!(archive
            .blob("missing")
            .unwrap_err()
            .to_string()
            .contains("not in the archive"));
    }

    /// What the tar thread reports for an archive, gathered.
    fn tar_events(bytes: Vec<u8>) -> Vec<TarEvent> {
        let (tx, mut rx) = mpsc::channel(1024);
        read_tar(io::Cursor::new(bytes), &tx);
        drop(tx);
        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push(event.unwrap());
        }
        events
    }

    #[test]
    fn tar_writer_output_reads_back() {
        let mut tar = TarWriter::new(Vec::new());
        tar.directory("blobs/").unwrap();
        tar.start_file("blobs/sha256/x", 5, 0o444).unwrap();
        tar.data(b"he").unwrap();
        tar.data(b"llo").unwrap();
        assert!(tar.data(b"!").is_err());
        tar.end_file().unwrap();
        tar.file("index.json", b"{}", 0o644).unwrap();
        tar.finish().unwrap();
        let bytes = tar.out;
        assert_eq!(bytes.len() % TAR_BLOCK, 0);

        let mut reader = tar::Archive::new(&bytes[..]);
        let entries: Vec<(String, u64, u32)> = reader
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                (path, e.size(), e.header().mode().unwrap())
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("blobs/".to_string(), 0, 0o755),
                ("blobs/sha256/x".into(), 5, 0o444),
                ("index.json".into(), 2, 0o644)
            ]
        );

        let events = tar_events(bytes);
        let summary: Vec<String> = events
            .iter()
            .map(|e| match e {
                TarEvent::File { path, size } => format!("file {path} {size}"),
                TarEvent::Data(d) => format!("data {}", String::from_utf8_lossy(d)),
                TarEvent::EndOfFile => "end".into(),
                TarEvent::Link { path, target } => format!("link {path} {target}"),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "file blobs/sha256/x 5",
                "data hello",
                "end",
                "file index.json 2",
                "data {}",
                "end"
            ]
        );
    }

    #[test]
    fn gzipped_archives_are_read_and_others_refused_with_a_reason() {
        use std::io::Write as _;
        let mut tar = TarWriter::new(Vec::new());
        tar.file("oci-layout", b"{}", 0o444).unwrap();
        tar.finish().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar.out).unwrap();
        let events = tar_events(gz.finish().unwrap());
        assert!(
            matches!(&events[0], TarEvent::File { path, size: 2 } if path == "oci-layout"),
            "{events:?}"
        );
        assert_eq!(events.len(), 3);

        let (tx, mut rx) = mpsc::channel(8);
        read_tar(io::Cursor::new(vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0]), &tx);
        let err = rx.try_recv().unwrap().unwrap_err();
        assert!(err.to_string().contains("zstd"), "{err}");
    }

    #[test]
    fn tar_links_are_reported_from_the_root() {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, target, kind) in [
            ("b/layer.tar", "../a/layer.tar", tar::EntryType::Symlink),
            ("c/layer.tar", "a/layer.tar", tar::EntryType::Link),
        ] {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(kind);
            header.set_size(0);
            builder.append_link(&mut header, path, target).unwrap();
        }
        let events = tar_events(builder.into_inner().unwrap());
        let links: Vec<(String, String)> = events
            .into_iter()
            .filter_map(|e| match e {
                TarEvent::Link { path, target } => Some((path, target)),
                _ => None,
            })
            .collect();
        assert_eq!(
            links,
            [
                ("b/layer.tar".to_string(), "a/layer.tar".to_string()),
                ("c/layer.tar".into(), "a/layer.tar".into())
            ]
        );
    }

    #[test]
    fn pretty_json_keeps_key_order() {
        let text = r#"{"schemaVersion":2,"config":{"a":[1, 2],"e":{},"l":[]},"s":"x\\\"{,:}"}"#;
        let pretty = pretty_json(text);
        assert_eq!(
            pretty,
            "{\n  \"schemaVersion\": 2,\n  \"config\": {\n    \"a\": [\n      1,\n      2\n    ],\n    \
             \"e\": {},\n    \"l\": []\n  },\n  \"s\": \"x\\\\\\\"{,:}\"\n}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(parsed, serde_json::from_str::<serde_json::Value>(text).unwrap());
    }

    #[test]
    fn documents_serialize_in_gos_field_order() {
        let config = Descriptor::new(DOCKER_CONFIG, "sha256:c", 1);
        let manifest = ManifestDocument {
            schema_version: 2,
            media_type: DOCKER_MANIFEST,
            config: &config,
            layers: &[],
        };
        assert_eq!(
            serde_json::to_string(&manifest).unwrap(),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"sha256:c","size":1}},"layers":[]}}"#
            )
        );
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        use nix::mount::MsFlags as F;
        let options: Vec<String> = ["ro", "rbind", "index=off", "lowerdir=/a:/b", "nosuid", "suid"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = mount_options(&options);
        assert_eq!(flags, F::MS_RDONLY | F::MS_BIND | F::MS_REC);
        assert_eq!(data, "index=off,lowerdir=/a:/b");
        let (flags, data) = mount_options(&["ro".to_string(), "rw".to_string()]);
        assert!(flags.is_empty() && data.is_empty());
        assert_eq!(mount_point(Path::new("/mnt"), "/"), PathBuf::from("/mnt"));
        assert_eq!(
            mount_point(Path::new("/mnt"), "/etc/hosts"),
            PathBuf::from("/mnt/etc/hosts")
        );
    }

    #[test]
    fn image_table_is_ctrs_layout() {
        let views = [
            ImageView {
                name: "r/a:1".into(),
                media_type: OCI_MANIFEST.into(),
                digest: "sha256:x".into(),
                size: Some(1_153_434),
                platforms: vec!["linux/amd64".into()],
                labels: BTreeMap::from([("k".to_string(), "v".to_string())]),
                created_at: None,
                updated_at: None,
            },
            ImageView {
                name: "r/b:2".into(),
                media_type: OCI_INDEX.into(),
                digest: "sha256:y".into(),
                size: None,
                platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
                labels: BTreeMap::new(),
                created_at: None,
                updated_at: None,
            },
        ];
        let m = OCI_MANIFEST.len();
        assert_eq!(
            image_table(&views).render(),
            format!(
                "REF     TYPE{}   DIGEST     SIZE      PLATFORMS                 LABELS\n\
                 r/a:1   {OCI_MANIFEST}   sha256:x   1.1 MiB   linux/amd64               k=v\n\
                 r/b:2   {OCI_INDEX}{}   sha256:y   -         linux/amd64,linux/arm64   -\n",
                " ".repeat(m - 4),
                " ".repeat(m - OCI_INDEX.len())
            )
        );
    }

    #[test]
    fn check_table_says_complete_incomplete_or_unavailable() {
        let view = |status, present, required: Option<usize>, unpacked| CheckView {
            name: "n".into(),
            media_type: "t".into(),
            digest: "d".into(),
            status,
            present,
            required,
            present_size: 1024 * present as i64,
            required_size: required.map(|r| 1024 * r as i64),
            unpacked,
        };
        let views = [
            view("complete", 2, Some(2), true),
            view("incomplete", 1, Some(2), false),
            view("unavailable", 0, None, false),
        ];
        assert_eq!(
            check_table(&views).render(),
            "REF   TYPE   DIGEST   STATUS              SIZE              UNPACKED\n\
             n     t      d        complete (2/2)      2.0 KiB/2.0 KiB   true\n\
             n     t      d        incomplete (1/2)    1.0 KiB/2.0 KiB   false\n\
             n     t      d        unavailable (0/?)   0 B/?             false\n"
        );
    }
}
