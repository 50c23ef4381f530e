//! Plugin `io.containerd.grpc.v1.version`: `ctr version`.

use corten_api::containerd::services::version::v1::{
    version_server::{Version, VersionServer},
    VersionResponse,
};
use corten_core::{
    grpc::GrpcService,
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin, version,
};
use tonic::{Request, Response, Status};

#[derive(Clone, Copy)]
struct VersionService;

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(&self, _: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: version::VERSION.to_string(),
            revision: version::REVISION.to_string(),
        }))
    }
}

struct VersionPlugin;

impl Plugin for VersionPlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "version";
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let server = with_limits!(VersionServer::new(VersionService), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(VersionPlugin);
