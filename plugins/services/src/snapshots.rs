//! Plugin `io.containerd.grpc.v1.snapshots`: `ctr snapshots ...` and image
//! unpacking by clients, over every loaded snapshotter.

use std::{collections::BTreeMap, pin::Pin, sync::Arc};

use corten_api::containerd::{
    events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove},
    services::snapshots::v1::{
        snapshots_server::{Snapshots, SnapshotsServer},
        CleanupRequest, CommitSnapshotRequest, Info as InfoMsg, Kind as KindMsg, ListSnapshotsRequest,
        ListSnapshotsResponse, MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
        RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse, UpdateSnapshotRequest,
        UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
    },
};
use corten_core::{
    events::Exchange,
    filters::Filter,
    grpc::GrpcService,
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin,
    snapshots::{self, Info, Kind, Snapshotter},
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{
    convert::mount_msg,
    publish::publish,
    request,
    status::{blocking, inline, short_write, to_status},
};

/// What an empty `snapshotter` field means, as in containerd.
const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
const LIST_BATCH: usize = 100;

#[derive(Clone)]
struct SnapshotsService {
    snapshotters: Arc<BTreeMap<&'static str, Arc<dyn Snapshotter>>>,
    events: Arc<dyn Exchange>,
}

fn kind_msg(kind: Kind) -> KindMsg {
    match kind {
        Kind::View => KindMsg::View,
        Kind::Active => KindMsg::Active,
        Kind::Committed => KindMsg::Committed,
    }
}

fn info_msg(info: Info) -> InfoMsg {
    InfoMsg {
        name: info.name,
        parent: info.parent,
        kind: kind_msg(info.kind) as i32,
        created_at: Some(info.created_at.into()),
        updated_at: Some(info.updated_at.into()),
        labels: info.labels.into_iter().collect(),
    }
}

impl SnapshotsService {
    fn snapshotter(&self, name: &str) -> Result<Arc<dyn Snapshotter>, Status> {
        let name = if name.is_empty() { DEFAULT_SNAPSHOTTER } else { name };
        self.snapshotters
            .get(name)
            .cloned()
            .ok_or_else(|| Status::invalid_argument(format!("snapshotter not loaded: {name}")))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        request: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let lease = request::lease(request.metadata())?;
        let r = request.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        let (key, parent) = (r.key.clone(), r.parent.clone());
        let labels = r.labels.into_iter().collect();
        let ns2 = ns.clone();
        let work = move || sn.prepare(&ns2, &r.key, &r.parent, labels, lease.as_deref());
        // Without a parent a snapshot starts empty on every snapshotter:
        // a directory renamed into place and a record. With one, native
        // copies the parent's files.
        let mounts = if parent.is_empty() {
            short_write(work).await?
        } else {
            blocking(work).await?
        };
        let event = SnapshotPrepare { key, parent };
        publish(
            &self.events,
            &ns,
            "/snapshot/prepare",
            "containerd.events.SnapshotPrepare",
            &event,
        );
        Ok(Response::new(PrepareSnapshotResponse {
            mounts: mounts.into_iter().map(mount_msg).collect(),
        }))
    }

    async fn view(&self, request: Request<ViewSnapshotRequest>) -> Result<Response<ViewSnapshotResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let lease = request::lease(request.metadata())?;
        let r = request.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        let labels = r.labels.into_iter().collect();
        // As for a prepare.
        let short = r.parent.is_empty();
        let work = move || sn.view(&ns, &r.key, &r.parent, labels, lease.as_deref());
        let mounts = if short {
            short_write(work).await?
        } else {
            blocking(work).await?
        };
        Ok(Response::new(ViewSnapshotResponse {
            mounts: mounts.into_iter().map(mount_msg).collect(),
        }))
    }

    async fn mounts(&self, request: Request<MountsRequest>) -> Result<Response<MountsResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        let mounts = inline(|| sn.mounts(&ns, &r.key))?;
        Ok(Response::new(MountsResponse {
            mounts: mounts.into_iter().map(mount_msg).collect(),
        }))
    }

    async fn commit(&self, request: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let lease = request::lease(request.metadata())?;
        let r = request.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        let (key, name) = (r.key.clone(), r.name.clone());
        let labels = r.labels.into_iter().collect();
        let ns2 = ns.clone();
        blocking(move || sn.commit(&ns2, &r.name, &r.key, labels, lease.as_deref())).await?;
        let event = SnapshotCommit { key, name };
        publish(
            &self.events,
            &ns,
            "/snapshot/commit",
            "containerd.events.SnapshotCommit",
            &event,
        );
        Ok(Response::new(()))
    }

    async fn remove(&self, request: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let lease = request::lease(request.metadata())?;
        let r = request.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        let key = r.key.clone();
        let ns2 = ns.clone();
        // A removal writes records alone: the files go with the collector.
        short_write(move || sn.remove(&ns2, &r.key, lease.as_deref())).await?;
        publish(
            &self.events,
            &ns,
            "/snapshot/remove",
            "containerd.events.SnapshotRemove",
            &SnapshotRemove { key },
        );
        Ok(Response::new(()))
    }

    async fn stat(&self, request: Request<StatSnapshotRequest>) -> Result<Response<StatSnapshotResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        let info = inline(|| sn.stat(&ns, &r.key))?;
        Ok(Response::new(StatSnapshotResponse {
            info: Some(info_msg(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        let msg = r.info.unwrap_or_default();
        let info = Info {
            name: msg.name,
            parent: msg.parent,
            kind: Kind::Committed,
            created_at: std::time::UNIX_EPOCH,
            updated_at: std::time::UNIX_EPOCH,
            labels: msg.labels.into_iter().collect(),
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = blocking(move || sn.update(&ns, &info, &paths)).await?;
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(info_msg(info)),
        }))
    }

    type ListStream = BoxStream<ListSnapshotsResponse>;

    async fn list(&self, request: Request<ListSnapshotsRequest>) -> Result<Response<Self::ListStream>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let filter = Filter::parse_all(&r.filters).map_err(to_status)?;
        let sn = self.snapshotter(&r.snapshotter)?;
        let infos = blocking(move || sn.list(&ns)).await?;
        let matching: Vec<InfoMsg> = infos.into_iter().filter(|i| filter.matches(i)).map(info_msg).collect();
        let batches: Vec<Result<ListSnapshotsResponse, Status>> = matching
            .chunks(LIST_BATCH)
            .map(|c| Ok(ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, request: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        let usage = blocking(move || sn.usage(&ns, &r.key)).await?;
        Ok(Response::new(UsageResponse {
            size: usage.size as i64,
            inodes: usage.inodes as i64,
        }))
    }

    async fn cleanup(&self, request: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        request::namespace(request.metadata())?;
        let sn = self.snapshotter(&request.into_inner().snapshotter)?;
        blocking(move || sn.cleanup()).await?;
        Ok(Response::new(()))
    }
}

struct SnapshotsServicePlugin;

impl Plugin for SnapshotsServicePlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "snapshots";
    const REQUIRES: &'static [&'static str] = &[snapshots::PLUGIN_TYPE, "io.containerd.event.v1"];
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let snapshotters: BTreeMap<_, _> = ctx
            .plugins()
            .get_all::<Arc<dyn Snapshotter>>(snapshots::PLUGIN_TYPE)
            .into_iter()
            .collect();
        let events: Arc<dyn Exchange> = ctx.get("io.containerd.event.v1")?;
        let service = SnapshotsService {
            snapshotters: Arc::new(snapshotters),
            events,
        };
        let server = with_limits!(SnapshotsServer::new(service), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(SnapshotsServicePlugin);
