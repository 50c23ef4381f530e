//! A ttrpc connection to one shim: unary calls with our own prost messages
//! as payloads, the namespace in the metadata, error codes mapped to
//! classes, and a signal when the connection closes.
//!
//! ttrpc's generated clients would need its prost version (0.13) for the
//! messages; only bytes cross this boundary, so our prost 0.14 types serve.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::UnixStream,
    sync::watch,
};
use ttrpc::asynchronous::{transport::Socket, Client};

use crate::error::ShimError;

/// The metadata key the shim reads the namespace from.
pub const NAMESPACE_KEY: &str = "containerd-namespace-ttrpc";

#[derive(Clone)]
pub struct ShimClient {
    client: Client,
    service: &'static str,
    namespace: String,
    closed: watch::Receiver<bool>,
}

impl ShimClient {
    /// Connects to `address` (`unix:///path` or `unix://@abstract`) and
    /// calls the task API under `service`.
    pub async fn connect(address: &str, service: &'static str, namespace: &str) -> Result<Self, ShimError> {
        let disconnected = |e: io::Error| ShimError::Disconnected {
            method: "connect",
            message: format!("{address}: {e}"),
        };
        let stream = dial(address).await.map_err(disconnected)?;
        let (tx, closed) = watch::channel(false);
        let socket = Socket::new(Watched {
            inner: stream,
            closed: Arc::new(tx),
        });
        Ok(ShimClient {
            client: Client::new(socket),
            service,
            namespace: namespace.into(),
            closed,
        })
    }

    /// Calls `method` and decodes its answer. `timeout` bounds the call on
    /// both sides (the shim sees it as the request's deadline).
    pub async fn call<Q, R>(&self, method: &'static str, request: &Q, timeout: Option<Duration>) -> Result<R, ShimError>
    where
        Q: prost::Message,
        R: prost::Message + Default,
    {
        let request = ttrpc::Request {
            service: self.service.into(),
            method: method.into(),
            payload: request.encode_to_vec(),
            timeout_nano: timeout.map_or(0, |t| i64::try_from(t.as_nanos()).unwrap_or(i64::MAX)),
            metadata: vec![ttrpc::proto::KeyValue {
                key: NAMESPACE_KEY.into(),
                value: self.namespace.clone(),
            }],
        };
        let call = self.client.request(request);
        let response = match timeout {
            // ttrpc enforces the deadline too; this also covers a request
            // stuck before it reached the socket.
            Some(t) => tokio::time::timeout(t + Duration::from_millis(100), call)
                .await
                .map_err(|_| ShimError::Timeout {
                    what: format!("shim {method}"),
                    after: t,
                })?,
            None => call.await,
        }
        .map_err(|e| from_ttrpc(method, e))?;
        R::decode(response.payload.as_slice()).map_err(|e| ShimError::Decode {
            what: method,
            message: e.to_string(),
        })
    }

    /// Resolves once the connection has closed (the shim exited or hung up).
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        // An error means the connection (and its sender) was dropped: closed too.
        let _ = closed.wait_for(|c| *c).await;
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow() || self.closed.has_changed().is_err()
    }
}

async fn dial(address: &str) -> io::Result<UnixStream> {
    let target = address.strip_prefix("unix://").unwrap_or(address);
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
        stream.set_nonblocking(true)?;
        return UnixStream::from_std(stream);
    }
    UnixStream::connect(target).await
}

/// Maps ttrpc's errors: a status from the shim keeps its code, anything
/// else means the connection is unusable.
fn from_ttrpc(method: &'static str, e: ttrpc::Error) -> ShimError {
    match e {
        ttrpc::Error::RpcStatus(status) => ShimError::Status {
            method,
            code: status.code,
            message: status.message,
        },
        other => ShimError::Disconnected {
            method,
            message: other.to_string(),
        },
    }
}

/// A byte stream that reports its end: EOF or an I/O error on the socket,
/// or the connection being dropped, flips `closed`.
struct Watched<S> {
    inner: S,
    closed: Arc<watch::Sender<bool>>,
}

impl<S> Watched<S> {
    fn close(&self) {
        self.closed.send_replace(true);
    }
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => this.close(),
            Poll::Ready(Err(_)) => this.close(),
            _ => {}
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Err(_)) = &result {
            this.close();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connection_is_disconnected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let e = ShimClient::connect(&format!("unix://{}", path.display()), "x.Task", "ns")
            .await
            .err()
            .unwrap();
        assert!(e.is_disconnected(), "{e}");
    }

    #[tokio::test]
    async fn peer_hanging_up_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let client = ShimClient::connect(&format!("unix://{}", path.display()), "x.Task", "ns")
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        assert!(!client.is_closed());
        drop(peer);
        tokio::time::timeout(Duration::from_secs(5), client.closed())
            .await
            .unwrap();
        assert!(client.is_closed());
        let e = client
            .call::<(), ()>("State", &(), Some(Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(e.is_disconnected() || matches!(e, ShimError::Timeout { .. }), "{e}");
    }
}
