//! `GET /v1/metrics` in Prometheus' text format, on a TCP address (loopback
//! by default: metrics can reveal container names).

use std::{convert::Infallible, net::SocketAddr};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

pub async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = address
        .parse()
        .with_context(|| format!("[metrics] address {address:?}"))?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen for metrics on {addr}"))
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Registry) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&req, &registry)) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<bytes::Bytes>> {
    if req.uri().path() != "/v1/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: metrics are at /v1/metrics\n".into());
    }
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encode metrics: {e}\n").into_bytes(),
        );
    }
    Response::builder()
        .header(http::header::CONTENT_TYPE, encoder.format_type())
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn plain(status: StatusCode, body: Vec<u8>) -> Response<Full<bytes::Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}
