//! Plugin `io.containerd.grpc.v1.leases`: `ctr leases ...`; a `sync` delete
//! waits for the collection that frees what the lease held.

use std::{collections::BTreeMap, sync::Arc};

use corten_api::containerd::services::leases::v1::{
    leases_server::{Leases, LeasesServer},
    AddResourceRequest, CreateRequest, CreateResponse, DeleteRequest, DeleteResourceRequest, Lease as LeaseMsg,
    ListRequest, ListResourcesRequest, ListResourcesResponse, ListResponse, Resource as ResourceMsg,
};
use corten_core::{
    filters::Filter,
    gc::Collector,
    grpc::GrpcService,
    leases::{Lease, LeaseManager, Resource},
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin,
};
use tonic::{Request, Response, Status};

use crate::{
    request,
    status::{blocking, to_status},
};

#[derive(Clone)]
struct LeasesService {
    manager: Arc<dyn LeaseManager>,
    /// Absent when the GC plugin is disabled: sync deletes then just delete.
    collector: Option<Arc<dyn Collector>>,
}

fn lease_msg(lease: Lease) -> LeaseMsg {
    LeaseMsg {
        id: lease.id,
        created_at: Some(lease.created_at.into()),
        labels: lease.labels.into_iter().collect(),
    }
}

fn resource(msg: Option<ResourceMsg>) -> Resource {
    let msg = msg.unwrap_or_default();
    Resource {
        id: msg.id,
        kind: msg.r#type,
    }
}

#[tonic::async_trait]
impl Leases for LeasesService {
    async fn create(&self, request: Request<CreateRequest>) -> Result<Response<CreateResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let request = request.into_inner();
        let labels: BTreeMap<_, _> = request.labels.into_iter().collect();
        let manager = self.manager.clone();
        let lease = blocking(move || manager.create(&ns, &request.id, labels)).await?;
        Ok(Response::new(CreateResponse {
            lease: Some(lease_msg(lease)),
        }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let request = request.into_inner();
        let manager = self.manager.clone();
        blocking(move || manager.delete(&ns, &request.id)).await?;
        if let (true, Some(collector)) = (request.sync, self.collector.clone()) {
            blocking(move || collector.collect()).await?;
        }
        Ok(Response::new(()))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let filter = Filter::parse_all(&request.get_ref().filters).map_err(to_status)?;
        let manager = self.manager.clone();
        let leases = blocking(move || manager.list(&ns)).await?;
        let leases = leases
            .into_iter()
            .filter(|l| filter.matches(l))
            .map(lease_msg)
            .collect();
        Ok(Response::new(ListResponse { leases }))
    }

    async fn add_resource(&self, request: Request<AddResourceRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let request = request.into_inner();
        let (manager, r) = (self.manager.clone(), resource(request.resource));
        blocking(move || manager.add_resource(&ns, &request.id, &r)).await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(&self, request: Request<DeleteResourceRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let request = request.into_inner();
        let (manager, r) = (self.manager.clone(), resource(request.resource));
        blocking(move || manager.delete_resource(&ns, &request.id, &r)).await?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        request: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let id = request.into_inner().id;
        let manager = self.manager.clone();
        let resources = blocking(move || manager.list_resources(&ns, &id)).await?;
        let resources = resources
            .into_iter()
            .map(|r| ResourceMsg {
                id: r.id,
                r#type: r.kind,
            })
            .collect();
        Ok(Response::new(ListResourcesResponse { resources }))
    }
}

struct LeasesServicePlugin;

impl Plugin for LeasesServicePlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "leases";
    const REQUIRES: &'static [&'static str] = &["io.containerd.lease.v1", "io.containerd.gc.v1"];
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let manager: Arc<dyn LeaseManager> = ctx.get("io.containerd.lease.v1")?;
        let collector: Option<Arc<dyn Collector>> = ctx.get("io.containerd.gc.v1").ok();
        let server = with_limits!(LeasesServer::new(LeasesService { manager, collector }), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(LeasesServicePlugin);
