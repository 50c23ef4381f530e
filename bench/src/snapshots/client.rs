//! The client side: one connection to a daemon, and the Leases, Content,
//! Snapshots and Diff calls the benchmark makes on it. The same code talks
//! to both daemons.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use corten_api::containerd::{
    services::{
        content::v1::{content_client::ContentClient, WriteAction, WriteContentRequest},
        diff::v1::{diff_client::DiffClient, ApplyRequest},
        leases::v1::{leases_client::LeasesClient, CreateRequest},
        snapshots::v1::{snapshots_client::SnapshotsClient, PrepareSnapshotRequest, RemoveSnapshotRequest},
        version::v1::version_client::VersionClient,
    },
    types::{Descriptor, Mount},
};
use tonic::{
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::Channel,
    Request,
};

use super::{layer, Snapshotter};
use crate::probe;

/// The namespace everything goes to.
pub const NAMESPACE: &str = "bench";
/// The lease the apply's blob and snapshot are made under, so that the
/// daemon's garbage collector cannot take either mid-benchmark.
const LEASE: &str = "corten-bench-snapshots";
/// Data per WRITE message; well inside the daemons' 16 MiB message limit.
const CHUNK: usize = 1 << 20;

pub struct Session {
    channel: Channel,
    lease: Option<AsciiMetadataValue>,
}

impl Session {
    /// Connected (HTTP/2 handshake done) on return; every call shares this
    /// one connection.
    pub async fn connect(socket: &Path) -> anyhow::Result<Session> {
        Ok(Session {
            channel: probe::connect(socket.to_path_buf()).await?,
            lease: None,
        })
    }

    /// Creates the lease; every later request carries it.
    pub async fn lease(&mut self) -> anyhow::Result<()> {
        let request = self.request(CreateRequest {
            id: LEASE.to_string(),
            labels: Default::default(),
        });
        LeasesClient::new(self.channel.clone())
            .create(request)
            .await
            .context("create a lease")?;
        self.lease = Some(MetadataValue::from_static(LEASE));
        Ok(())
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert("containerd-namespace", MetadataValue::from_static(NAMESPACE));
        if let Some(lease) = &self.lease {
            metadata.insert("containerd-lease", lease.clone());
        }
        request
    }

    /// Writes `blob` through the Content service's Write stream: WRITE
    /// messages of one chunk each, then a COMMIT with the expected digest,
    /// which the daemon must confirm.
    pub async fn write_blob(&self, blob: Arc<Vec<u8>>, digest: &str) -> anyhow::Result<()> {
        let size = blob.len();
        let reference = format!("corten-bench-layer-{digest}");
        let chunks = size.div_ceil(CHUNK);
        let expected = digest.to_string();
        let messages = (0..=chunks).map(move |i| {
            let offset = i * CHUNK;
            if i == chunks {
                return WriteContentRequest {
                    action: WriteAction::Commit as i32,
                    r#ref: reference.clone(),
                    total: size as i64,
                    offset: size as i64,
                    expected: expected.clone(),
                    ..Default::default()
                };
            }
            WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: if i == 0 { reference.clone() } else { String::new() },
                total: size as i64,
                offset: offset as i64,
                data: blob[offset..(offset + CHUNK).min(size)].to_vec(),
                ..Default::default()
            }
        });
        let mut answers = ContentClient::new(self.channel.clone())
            .write(self.request(tokio_stream::iter(messages)))
            .await
            .context("open the Write stream")?
            .into_inner();
        while let Some(answer) = answers.message().await.context("Write stream")? {
            if answer.action == WriteAction::Commit as i32 {
                ensure!(
                    answer.digest == digest,
                    "the daemon committed {:?}, but the layer's digest is {digest}",
                    answer.digest
                );
                return Ok(());
            }
        }
        bail!("the Write stream ended before the commit was answered")
    }

    pub async fn prepare(&self, snapshotter: Snapshotter, key: &str) -> anyhow::Result<Vec<Mount>> {
        let request = self.request(PrepareSnapshotRequest {
            snapshotter: snapshotter.name().to_string(),
            key: key.to_string(),
            parent: String::new(),
            labels: Default::default(),
        });
        let reply = SnapshotsClient::new(self.channel.clone())
            .prepare(request)
            .await
            .with_context(|| format!("Prepare {key:?} on the {} snapshotter", snapshotter.name()))?;
        Ok(reply.into_inner().mounts)
    }

    /// `cycles` times Prepare `k<i>` (no parent) then Remove `k<i>`, one
    /// call after the other on one client; the wall time of all of them.
    /// Mean wall time of `calls` Version calls, one after the other on the
    /// connection the cycles use: the cheapest call a daemon answers, so
    /// the least any call costs through its gRPC stack and the socket.
    pub async fn round_trip(&self, calls: u32) -> anyhow::Result<Duration> {
        let mut client = VersionClient::new(self.channel.clone());
        let started = Instant::now();
        for _ in 0..calls {
            client.version(()).await.context("Version")?;
        }
        Ok(started.elapsed() / calls)
    }

    pub async fn cycles(&self, snapshotter: Snapshotter, cycles: u32) -> anyhow::Result<Duration> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let name = snapshotter.name();
        let started = Instant::now();
        for i in 0..cycles {
            let key = format!("k{i}");
            client
                .prepare(self.request(PrepareSnapshotRequest {
                    snapshotter: name.to_string(),
                    key: key.clone(),
                    parent: String::new(),
                    labels: Default::default(),
                }))
                .await
                .with_context(|| format!("Prepare {key:?} on the {name} snapshotter"))?;
            client
                .remove(self.request(RemoveSnapshotRequest {
                    snapshotter: name.to_string(),
                    key: key.clone(),
                }))
                .await
                .with_context(|| format!("Remove {key:?} on the {name} snapshotter"))?;
        }
        Ok(started.elapsed())
    }

    /// Wall time of the Diff service's Apply of the layer onto `mounts`. The
    /// answer must name the tar's digest: proof that the whole layer was read.
    pub async fn apply(&self, layer: &layer::Layer, mounts: Vec<Mount>) -> anyhow::Result<Duration> {
        let request = self.request(ApplyRequest {
            diff: Some(Descriptor {
                media_type: layer::MEDIA_TYPE.to_string(),
                digest: layer.digest.clone(),
                size: layer.size as i64,
                annotations: Default::default(),
            }),
            mounts,
            payloads: Default::default(),
        });
        let mut client = DiffClient::new(self.channel.clone());
        let started = Instant::now();
        let reply = client.apply(request).await.context("Apply")?;
        let elapsed = started.elapsed();
        let applied = reply
            .into_inner()
            .applied
            .context("Apply answered without a descriptor")?;
        ensure!(
            applied.digest == layer.diff_id,
            "Apply reported {:?}, but the layer's tar is {}",
            applied.digest,
            layer.diff_id
        );
        Ok(elapsed)
    }
}
