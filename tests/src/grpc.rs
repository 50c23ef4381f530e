//! A gRPC channel to a daemon's unix socket, for tests that call the API
//! directly rather than through a CLI.

use std::path::Path;

use tonic::transport::{Channel, Endpoint};

/// Connects to the gRPC server on `socket`; panics when it cannot.
pub async fn channel(socket: &Path) -> Channel {
    let dial = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let dial = dial.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(dial).await?,
                ))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()))
}
