//! Prometheus metrics: the registry, the gRPC metrics layer, and the HTTP
//! endpoint that serves `/v1/metrics`.

mod grpc;
mod http;
mod layer;

use prometheus::{IntCounterVec, Opts, Registry};

pub use grpc::GrpcMetrics;
pub use http::{bind as bind_http, serve};
pub use layer::MetricsLayer;

/// Builds the registry: gRPC server metrics, build info and process metrics.
pub fn registry() -> anyhow::Result<(Registry, GrpcMetrics)> {
    let registry = Registry::new();
    let grpc = GrpcMetrics::register(&registry)?;

    // Named as containerd names it, so existing dashboards find it.
    let build = IntCounterVec::new(
        Opts::new(
            "containerd_build_info_total",
            "The daemon's version and revision, always 1",
        ),
        &["version", "revision"],
    )?;
    build
        .with_label_values(&[corten_core::version::VERSION, corten_core::version::REVISION])
        .inc();
    registry.register(Box::new(build))?;
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    Ok((registry, grpc))
}
