//! Plugin `io.containerd.grpc.v1.containers`: `ctr containers ...`, and the
//! records `ctr run` and every other client create before a task. Publishes
//! /containers/create, /containers/update and /containers/delete.

use std::{pin::Pin, sync::Arc};

use corten_api::{
    containerd::{
        events::{container_create, ContainerCreate, ContainerDelete, ContainerUpdate},
        services::containers::v1::{
            container::Runtime as RuntimeMsg,
            containers_server::{Containers as ContainersApi, ContainersServer},
            Container as ContainerMsg, CreateContainerRequest, CreateContainerResponse, DeleteContainerRequest,
            GetContainerRequest, GetContainerResponse, ListContainerMessage, ListContainersRequest,
            ListContainersResponse, UpdateContainerRequest, UpdateContainerResponse,
        },
    },
    prost_types,
};
use corten_core::{
    any_value::AnyValue,
    containers::{Container, Containers, Runtime},
    events::Exchange,
    filters::Filter,
    grpc::GrpcService,
    metadata::{self, MetaStore},
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{
    publish::publish,
    request,
    status::{blocking, inline, to_status},
};

const EVENTS: &str = "io.containerd.event.v1";

#[derive(Clone)]
struct ContainersService {
    containers: Containers,
    events: Arc<dyn Exchange>,
}

fn any_value(any: prost_types::Any) -> AnyValue {
    AnyValue::new(any.type_url, any.value)
}

fn any_msg(value: AnyValue) -> prost_types::Any {
    prost_types::Any {
        type_url: value.type_url,
        value: value.value,
    }
}

fn container_msg(c: Container) -> ContainerMsg {
    ContainerMsg {
        id: c.id,
        labels: c.labels.into_iter().collect(),
        image: c.image,
        runtime: Some(RuntimeMsg {
            name: c.runtime.name,
            options: c.runtime.options.map(any_msg),
        }),
        spec: c.spec.map(any_msg),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        created_at: Some(c.created_at.into()),
        updated_at: Some(c.updated_at.into()),
        extensions: c.extensions.into_iter().map(|(k, v)| (k, any_msg(v))).collect(),
    }
}

/// The container a request carries; the timestamps are the store's to set.
fn container(msg: Option<ContainerMsg>) -> Result<Container, Status> {
    let msg = msg.ok_or_else(|| Status::invalid_argument("a container is required"))?;
    let runtime = msg.runtime.unwrap_or_default();
    Ok(Container {
        id: msg.id,
        labels: msg.labels.into_iter().collect(),
        image: msg.image,
        runtime: Runtime {
            name: runtime.name,
            options: runtime.options.map(any_value),
        },
        spec: msg.spec.map(any_value),
        snapshotter: msg.snapshotter,
        snapshot_key: msg.snapshot_key,
        extensions: msg.extensions.into_iter().map(|(k, v)| (k, any_value(v))).collect(),
        ..Container::default()
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl ContainersService {
    async fn matching(&self, request: Request<ListContainersRequest>) -> Result<Vec<ContainerMsg>, Status> {
        let ns = request::namespace(request.metadata())?;
        let filter = Filter::parse_all(&request.get_ref().filters).map_err(to_status)?;
        let containers = self.containers.clone();
        let all = blocking(move || containers.list(&ns)).await?;
        Ok(all
            .into_iter()
            .filter(|c| filter.matches(c))
            .map(container_msg)
            .collect())
    }
}

#[tonic::async_trait]
impl ContainersApi for ContainersService {
    async fn get(&self, request: Request<GetContainerRequest>) -> Result<Response<GetContainerResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let id = request.into_inner().id;
        let found = inline(|| self.containers.get(&ns, &id))?;
        Ok(Response::new(GetContainerResponse {
            container: Some(container_msg(found)),
        }))
    }

    async fn list(&self, request: Request<ListContainersRequest>) -> Result<Response<ListContainersResponse>, Status> {
        let containers = self.matching(request).await?;
        Ok(Response::new(ListContainersResponse { containers }))
    }

    type ListStreamStream = BoxStream<ListContainerMessage>;

    async fn list_stream(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<Self::ListStreamStream>, Status> {
        let messages: Vec<Result<ListContainerMessage, Status>> = self
            .matching(request)
            .await?
            .into_iter()
            .map(|c| Ok(ListContainerMessage { container: Some(c) }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn create(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let new = container(request.into_inner().container)?;
        let (containers, ns2) = (self.containers.clone(), ns.clone());
        let created = blocking(move || containers.create(&ns2, &new)).await?;
        let event = ContainerCreate {
            id: created.id.clone(),
            image: created.image.clone(),
            runtime: Some(container_create::Runtime {
                name: created.runtime.name.clone(),
                options: created.runtime.options.clone().map(any_msg),
            }),
        };
        publish(
            &self.events,
            &ns,
            "/containers/create",
            "containerd.events.ContainerCreate",
            &event,
        );
        Ok(Response::new(CreateContainerResponse {
            container: Some(container_msg(created)),
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let changed = container(r.container)?;
        if changed.id.is_empty() {
            return Err(Status::invalid_argument("Container.ID required"));
        }
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let (containers, ns2) = (self.containers.clone(), ns.clone());
        let updated = blocking(move || containers.update(&ns2, &changed, &paths)).await?;
        let event = ContainerUpdate {
            id: updated.id.clone(),
            image: updated.image.clone(),
            labels: updated.labels.clone().into_iter().collect(),
            snapshot_key: updated.snapshot_key.clone(),
        };
        publish(
            &self.events,
            &ns,
            "/containers/update",
            "containerd.events.ContainerUpdate",
            &event,
        );
        Ok(Response::new(UpdateContainerResponse {
            container: Some(container_msg(updated)),
        }))
    }

    async fn delete(&self, request: Request<DeleteContainerRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let id = request.into_inner().id;
        let (containers, ns2, id2) = (self.containers.clone(), ns.clone(), id.clone());
        blocking(move || containers.delete(&ns2, &id2)).await?;
        publish(
            &self.events,
            &ns,
            "/containers/delete",
            "containerd.events.ContainerDelete",
            &ContainerDelete { id },
        );
        Ok(Response::new(()))
    }
}

struct ContainersServicePlugin;

impl Plugin for ContainersServicePlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "containers";
    const REQUIRES: &'static [&'static str] = &[metadata::PLUGIN_TYPE, EVENTS];
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let store: Arc<dyn MetaStore> = ctx.get(metadata::PLUGIN_TYPE)?;
        let events: Arc<dyn Exchange> = ctx.get(EVENTS)?;
        let service = ContainersService {
            containers: Containers::new(store),
            events,
        };
        let server = with_limits!(ContainersServer::new(service), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(ContainersServicePlugin);
