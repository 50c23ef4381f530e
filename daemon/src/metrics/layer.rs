//! A tower layer that counts every RPC without code in any handler.
//!
//! An RPC ends when its status is known: in the response headers for a
//! trailers-only answer (most errors), otherwise in the trailers after the
//! body. A body dropped before its end is a cancelled call.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame};
use tonic::body::Body;
use tower::{Layer, Service};

use super::grpc::{Call, GrpcMetrics};

#[derive(Clone)]
pub struct MetricsLayer {
    metrics: GrpcMetrics,
}

impl MetricsLayer {
    pub fn new(metrics: GrpcMetrics) -> Self {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: GrpcMetrics,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for Metered<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let call = Call::from_path(request.uri().path());
        let future = self.inner.call(request);
        let Some(call) = call else {
            return Box::pin(future);
        };
        let metrics = self.metrics.clone();
        metrics.started(&call);
        Box::pin(async move {
            let response = future.await?;
            if let Some(code) = status_in(response.headers()) {
                metrics.handled(&call, code);
                return Ok(response);
            }
            let pending = Pending {
                metrics,
                call: Some(call),
            };
            Ok(response.map(|body| Body::new(Observed { inner: body, pending })))
        })
    }
}

fn status_in(headers: &HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from(value))
}

/// The end of one RPC, reported once: on its trailers or, failing that, when
/// its body is dropped.
struct Pending {
    metrics: GrpcMetrics,
    call: Option<Call>,
}

impl Pending {
    fn finish(&mut self, code: tonic::Code) {
        if let Some(call) = self.call.take() {
            self.metrics.handled(&call, code);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    struct Observed {
        #[pin]
        inner: Body,
        pending: Pending,
    }
}

impl HttpBody for Observed {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.pending.finish(status_in(trailers).unwrap_or(tonic::Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(_))) => this.pending.finish(tonic::Code::Internal),
            Poll::Ready(None) => this.pending.finish(tonic::Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
