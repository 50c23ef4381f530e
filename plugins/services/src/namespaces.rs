//! Plugin `io.containerd.grpc.v1.namespaces`: `ctr namespaces ...`, over
//! the core's namespace rules, publishing /namespaces/* events.

use std::{collections::BTreeMap, sync::Arc};

use corten_api::containerd::{
    events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate},
    services::namespaces::v1::{
        namespaces_server::{Namespaces as NamespacesApi, NamespacesServer},
        CreateNamespaceRequest, CreateNamespaceResponse, DeleteNamespaceRequest, GetNamespaceRequest,
        GetNamespaceResponse, ListNamespacesRequest, ListNamespacesResponse, Namespace as NamespaceMsg,
        UpdateNamespaceRequest, UpdateNamespaceResponse,
    },
};
use corten_core::{
    events::Exchange,
    grpc::GrpcService,
    metadata::MetaStore,
    namespaces::{Namespace, Namespaces},
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin,
};
use tonic::{Request, Response, Status};

use crate::{
    publish::publish,
    status::{blocking, inline},
};

#[derive(Clone)]
struct NamespacesService {
    store: Namespaces,
    events: Arc<dyn Exchange>,
}

fn to_msg(ns: Namespace) -> NamespaceMsg {
    NamespaceMsg {
        name: ns.name,
        labels: ns.labels.into_iter().collect(),
    }
}

fn from_msg(msg: Option<NamespaceMsg>) -> Namespace {
    let msg = msg.unwrap_or_default();
    Namespace {
        name: msg.name,
        labels: msg.labels.into_iter().collect::<BTreeMap<_, _>>(),
    }
}

/// containerd publishes /namespaces/create and /update in the namespace
/// the request was made in (ctr's `-n`), and /delete in the deleted one.
/// Without a header the event goes out in the namespace it is about.
fn event_namespace(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    crate::request::namespace(metadata).ok()
}

#[tonic::async_trait]
impl NamespacesApi for NamespacesService {
    async fn get(&self, request: Request<GetNamespaceRequest>) -> Result<Response<GetNamespaceResponse>, Status> {
        let name = request.into_inner().name;
        let ns = inline(|| self.store.get(&name))?;
        Ok(Response::new(GetNamespaceResponse {
            namespace: Some(to_msg(ns)),
        }))
    }

    async fn list(&self, _: Request<ListNamespacesRequest>) -> Result<Response<ListNamespacesResponse>, Status> {
        let store = self.store.clone();
        let list = blocking(move || store.list()).await?;
        Ok(Response::new(ListNamespacesResponse {
            namespaces: list.into_iter().map(to_msg).collect(),
        }))
    }

    async fn create(
        &self,
        request: Request<CreateNamespaceRequest>,
    ) -> Result<Response<CreateNamespaceResponse>, Status> {
        let store = self.store.clone();
        let origin = event_namespace(request.metadata());
        let ns = from_msg(request.into_inner().namespace);
        let created = blocking(move || store.create(&ns)).await?;
        let event = NamespaceCreate {
            name: created.name.clone(),
            labels: created.labels.clone().into_iter().collect(),
        };
        publish(
            &self.events,
            origin.as_deref().unwrap_or(&created.name),
            "/namespaces/create",
            "containerd.events.NamespaceCreate",
            &event,
        );
        Ok(Response::new(CreateNamespaceResponse {
            namespace: Some(to_msg(created)),
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        let store = self.store.clone();
        let origin = event_namespace(request.metadata());
        let request = request.into_inner();
        let ns = from_msg(request.namespace);
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = blocking(move || store.update(&ns, &paths)).await?;
        let event = NamespaceUpdate {
            name: updated.name.clone(),
            labels: updated.labels.clone().into_iter().collect(),
        };
        publish(
            &self.events,
            origin.as_deref().unwrap_or(&updated.name),
            "/namespaces/update",
            "containerd.events.NamespaceUpdate",
            &event,
        );
        Ok(Response::new(UpdateNamespaceResponse {
            namespace: Some(to_msg(updated)),
        }))
    }

    async fn delete(&self, request: Request<DeleteNamespaceRequest>) -> Result<Response<()>, Status> {
        let store = self.store.clone();
        let name = request.into_inner().name;
        let deleted = name.clone();
        blocking(move || store.delete(&deleted)).await?;
        let event = NamespaceDelete { name: name.clone() };
        publish(
            &self.events,
            &name,
            "/namespaces/delete",
            "containerd.events.NamespaceDelete",
            &event,
        );
        Ok(Response::new(()))
    }
}

struct NamespacesPlugin;

impl Plugin for NamespacesPlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "namespaces";
    const REQUIRES: &'static [&'static str] = &["io.containerd.metadata.v1", "io.containerd.event.v1"];
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let store: Arc<dyn MetaStore> = ctx.get("io.containerd.metadata.v1")?;
        let events: Arc<dyn Exchange> = ctx.get("io.containerd.event.v1")?;
        let service = NamespacesService {
            store: Namespaces::new(store),
            events,
        };
        let server = with_limits!(NamespacesServer::new(service), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(NamespacesPlugin);
