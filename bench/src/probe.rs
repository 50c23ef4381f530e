//! The readiness probe: one `Version/Version` call over a daemon's unix socket.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use corten_api::containerd::services::version::v1::version_client::VersionClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Asks a daemon for its version over a fresh connection each time.
pub struct Prober;

impl Prober {
    /// A success proves the daemon accepts new clients, not just that an old
    /// connection survived. Returns the daemon's reported version.
    ///
    /// Each call gets its own single-threaded runtime, dropped on return: the
    /// connection task tonic spawns would otherwise sit unpolled in a kept
    /// runtime, holding the daemon's end open so that its graceful shutdown
    /// waits on a client that never answers. Single-threaded because on a
    /// 2-core machine a second client worker competes with the daemon.
    pub fn version(&self, socket: &Path, timeout: Duration) -> anyhow::Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the probe's async runtime")?;
        runtime.block_on(async {
            tokio::time::timeout(timeout, call(socket.to_path_buf()))
                .await
                .context("Version RPC timed out")?
        })
    }
}

async fn call(socket: std::path::PathBuf) -> anyhow::Result<String> {
    let channel = connect(socket).await?;
    let reply = VersionClient::new(channel).version(()).await.context("Version RPC")?;
    Ok(reply.into_inner().version)
}

/// A gRPC channel over a unix socket, connected (HTTP/2 handshake done) on
/// return.
pub async fn connect(socket: std::path::PathBuf) -> anyhow::Result<Channel> {
    // The URI is never dialled: the connector below ignores it, but tonic
    // needs one to build HTTP/2 requests.
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .context("connect")
}
