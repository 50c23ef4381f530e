//! Plugin `io.containerd.grpc.v1.healthcheck`: grpc.health.v1, served by the
//! tonic-health crate. The daemon only registers services once every plugin
//! is up, so answering at all means serving.

use corten_core::{
    grpc::GrpcService,
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin,
};
use tonic_health::server::health_reporter;

struct HealthPlugin;

impl Plugin for HealthPlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "healthcheck";
    type Config = NoConfig;

    async fn init(_: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let (reporter, server) = health_reporter();
        // The empty service name is the whole server's health.
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        Ok(Instance::new(GrpcService::new(move |routes| {
            // Statuses live as long as a reporter does.
            let _ = &reporter;
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(HealthPlugin);
