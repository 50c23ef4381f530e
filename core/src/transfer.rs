//! The transfer interface (containerd 2.x's `io.containerd.transfer.v1`):
//! images moved from a registry into the content store, unpacked and
//! recorded. Domain types only; the transfer gRPC service maps the wire
//! messages onto them.

use std::{collections::BTreeMap, fmt, sync::Arc};

use futures::future::BoxFuture;

use crate::{diff::Descriptor, images::Image, Error};

/// The plugin type transfer services register under.
pub const PLUGIN_TYPE: &str = "io.containerd.transfer.v1";

/// An OCI platform: `os/architecture[/variant]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// Unpack the image's manifest for `platform` (the host's when `None`)
/// into `snapshotter` (the default one when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackTarget {
    pub platform: Option<Platform>,
    pub snapshotter: String,
}

/// One pull: a registry reference into the image store of a namespace.
#[derive(Clone, Default)]
pub struct PullRequest {
    /// `[host/]repository[:tag][@digest]`; normalised as docker does
    /// (`busybox` is `docker.io/library/busybox:latest`).
    pub reference: String,
    /// The image name to record; the normalised reference when empty.
    pub name: String,
    /// More names for the same target.
    pub extra_names: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Platforms to fetch from an index; empty means all of them.
    pub platforms: Vec<Platform>,
    /// At most this many manifests of an index (0: no limit).
    pub manifest_limit: usize,
    pub unpacks: Vec<UnpackTarget>,
    /// Speak plain HTTP to the registry (`--plain-http`).
    pub plain_http: bool,
    /// Asked when the registry wants credentials.
    pub credentials: Option<Arc<dyn CredentialSource>>,
}

impl fmt::Debug for PullRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullRequest")
            .field("reference", &self.reference)
            .field("name", &self.name)
            .field("platforms", &self.platforms)
            .field("unpacks", &self.unpacks)
            .field("plain_http", &self.plain_http)
            .field("credentials", &self.credentials.is_some())
            .finish()
    }
}

/// What a credential source answers for a registry host.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    /// A user name and password (or personal token), for basic or token auth.
    Basic {
        username: String,
        password: String,
    },
    /// A whole `Authorization` header value, e.g. `Bearer <token>`.
    Header(String),
    /// An identity (refresh) token for the registry's token server.
    RefreshToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Header(_) => f.write_str("Header(***)"),
            Credentials::RefreshToken(_) => f.write_str("RefreshToken(***)"),
        }
    }
}

/// Where a pull gets credentials from, e.g. the client over a stream.
pub trait CredentialSource: Send + Sync {
    fn credentials<'a>(&'a self, host: &'a str, reference: &'a str) -> BoxFuture<'a, Result<Credentials, Error>>;
}

/// One progress event, in containerd's transfer vocabulary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// `waiting`, `downloading`, `complete`, `already exists`, `unpacking`,
    /// `unpacked`, `saved`, ... or a sentence about the whole transfer.
    pub event: String,
    /// The object: an ingest ref (`layer-sha256:...`) or an image name.
    pub name: String,
    pub parents: Vec<String>,
    pub progress: u64,
    pub total: u64,
    pub desc: Option<Descriptor>,
}

pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// An image a pull recorded, and whether it was new (or an update).
#[derive(Debug, Clone)]
pub struct Stored {
    pub image: Image,
    pub created: bool,
}

pub trait Transferrer: Send + Sync + 'static {
    /// Fetches, verifies, unpacks and records; nothing is recorded unless
    /// all of it succeeded.
    fn pull(
        &self,
        ns: &str,
        request: PullRequest,
        progress: ProgressFn,
    ) -> BoxFuture<'static, Result<Vec<Stored>, Error>>;
}
