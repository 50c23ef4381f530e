//! The gRPC server: every `io.containerd.grpc.v1` plugin's service on the
//! unix socket, behind the metrics layer, with a bounded graceful stop.

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use corten_core::{
    grpc::{GrpcService, PLUGIN_TYPE},
    plugin::PluginSet,
};
use tokio::{net::UnixListener, sync::oneshot};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::{Routes, RoutesBuilder};

use crate::{
    malloc::Trimmer,
    metrics::{GrpcMetrics, MetricsLayer},
};

const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// How long in-flight RPCs may run on after a stop is asked for; streams
/// such as event subscriptions never end by themselves.
const GRACE: Duration = Duration::from_secs(10);

/// The services of every gRPC plugin that initialised. Disabled or failed
/// ones are simply absent, so their RPCs answer Unimplemented.
pub fn routes(plugins: &PluginSet) -> Routes {
    let mut builder = RoutesBuilder::default();
    for (_, service) in plugins.get_all::<GrpcService>(PLUGIN_TYPE) {
        service.register(&mut builder);
    }
    builder.routes()
}

/// Serves until `stop` resolves, then refuses new connections and lets
/// in-flight calls finish for up to [`GRACE`].
pub async fn serve(
    listener: UnixListener,
    routes: Routes,
    metrics: GrpcMetrics,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stopping, stopped) = oneshot::channel::<()>();
    let trimmer = Trimmer::spawn();
    let server = tonic::transport::Server::builder()
        // Large windows let a client stream blobs without waiting for
        // flow-control updates every 64 KiB.
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .layer(MetricsLayer::new(metrics))
        .layer(tower::util::MapRequestLayer::new(move |request| {
            trimmer.touch();
            request
        }))
        .add_routes(routes)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stopped.await;
        });
    let mut server = tokio::spawn(server);
    tokio::select! {
        ended = &mut server => return ended.context("gRPC server task")?.context("gRPC server"),
        () = stop => {}
    }
    let _ = stopping.send(());
    match tokio::time::timeout(GRACE, &mut server).await {
        Ok(ended) => ended.context("gRPC server task")?.context("gRPC server"),
        Err(_) => {
            tracing::warn!("in-flight RPCs still running after {GRACE:?}; closing them");
            server.abort();
            Ok(())
        }
    }
}
