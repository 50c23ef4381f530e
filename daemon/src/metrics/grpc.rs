//! The gRPC server metrics, with the names and labels of go-grpc-prometheus
//! that containerd exports, so the same queries work against corten.

use std::time::Instant;

use corten_api::MethodKind;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct GrpcMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    seconds: HistogramVec,
}

/// One RPC's labels, fixed when the request arrives.
#[derive(Clone)]
pub struct Call {
    kind: &'static str,
    service: String,
    method: String,
    start: Instant,
}

impl Call {
    /// Splits `/pkg.Service/Method`; only paths of the API are counted, so a
    /// client sending random paths cannot grow the label sets without bound.
    pub fn from_path(path: &str) -> Option<Call> {
        let kind = corten_api::method_kind(path)?;
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        Some(Call {
            kind: label(kind),
            service: service.into(),
            method: method.into(),
            start: Instant::now(),
        })
    }
}

fn label(kind: MethodKind) -> &'static str {
    kind.label()
}

impl GrpcMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let labels = &["grpc_type", "grpc_service", "grpc_method"];
        let started = IntCounterVec::new(
            Opts::new("grpc_server_started_total", "RPCs started on the server."),
            labels,
        )?;
        let handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Response latency (seconds) of gRPC that had been application-level handled by the server.",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            labels,
        )?;
        registry.register(Box::new(started.clone()))?;
        registry.register(Box::new(handled.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(GrpcMetrics {
            started,
            handled,
            seconds,
        })
    }

    pub fn started(&self, call: &Call) {
        self.started
            .with_label_values(&[call.kind, &call.service, &call.method])
            .inc();
    }

    pub fn handled(&self, call: &Call, code: tonic::Code) {
        let labels = [call.kind, call.service.as_str(), call.method.as_str()];
        self.handled
            .with_label_values(&[labels[0], labels[1], labels[2], code_name(code)])
            .inc();
        self.seconds
            .with_label_values(&labels)
            .observe(call.start.elapsed().as_secs_f64());
    }
}

/// The code names go-grpc-prometheus uses (Go's `codes.Code.String()`).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}
