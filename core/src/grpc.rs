//! What a gRPC service plugin (`io.containerd.grpc.v1`) exports: a way to add
//! itself to the daemon's router. The daemon adds every one after all plugins
//! have initialised.

use std::sync::Arc;

use tonic::service::RoutesBuilder;

/// The plugin type every gRPC service registers under.
pub const PLUGIN_TYPE: &str = "io.containerd.grpc.v1";

#[derive(Clone)]
pub struct GrpcService {
    register: Arc<dyn Fn(&mut RoutesBuilder) + Send + Sync>,
}

impl GrpcService {
    /// `register` adds the tonic server(s) to the routes; it runs once.
    pub fn new(register: impl Fn(&mut RoutesBuilder) + Send + Sync + 'static) -> Self {
        GrpcService {
            register: Arc::new(register),
        }
    }

    pub fn register(&self, routes: &mut RoutesBuilder) {
        (self.register)(routes)
    }
}
