//! `containerd.services.events.ttrpc.v1.Events/Forward` on the daemon's
//! ttrpc socket: shims publish their events here, and each envelope goes
//! into the event exchange as it is.

use std::{
    collections::HashMap,
    io::ErrorKind,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use async_trait::async_trait;
use corten_api::containerd::services::events::ttrpc::v1::ForwardRequest;
use corten_core::{
    events::{Envelope, Exchange},
    Error,
};
use prost::Message;
use ttrpc::{
    asynchronous::{transport::Listener, MethodHandler, Server, Service, TtrpcContext},
    Code,
};

use crate::{convert, error::ShimError};

pub const SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";

pub struct ForwardServer {
    server: Server,
    path: PathBuf,
}

impl ForwardServer {
    /// Serves Forward on `address` (`unix://` optional), replacing a stale
    /// socket and refusing one another process still serves.
    pub async fn start(address: &str, uid: u32, gid: u32, exchange: Arc<dyn Exchange>) -> Result<Self, ShimError> {
        let path = PathBuf::from(address.strip_prefix("unix://").unwrap_or(address));
        claim(&path)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ShimError::io(format!("create {}", parent.display()), e))?;
        }
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| ShimError::io(format!("listen on {}", path.display()), e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| ShimError::io(format!("chmod {}", path.display()), e))?;
        if uid != 0 || gid != 0 {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|e| ShimError::io(format!("chown {} to {uid}:{gid}", path.display()), e))?;
        }
        let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
        methods.insert("Forward".into(), Box::new(Forward { exchange }));
        let service = Service {
            methods,
            streams: HashMap::new(),
        };
        let mut server = Server::new()
            .add_listener(Listener::from(listener))
            .register_service(HashMap::from([(SERVICE.to_string(), service)]));
        server
            .start()
            .await
            .map_err(|e| ShimError::io("start the ttrpc server", std::io::Error::other(e.to_string())))?;
        tracing::info!(address = %path.display(), "serving ttrpc events");
        Ok(ForwardServer { server, path })
    }

    /// Stops serving, closes the shims' connections (they reconnect to the
    /// next daemon) and removes the socket.
    pub async fn stop(mut self) {
        let _ = self.server.shutdown().await;
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!("remove {}: {e}", self.path.display());
            }
        }
    }
}

/// A stale socket (nobody accepts) is removed; a live one or a file that is
/// not a socket is an error.
fn claim(path: &Path) -> Result<(), ShimError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ShimError::io(format!("inspect {}", path.display()), e)),
    };
    let refuse = |why: &str| {
        ShimError::io(
            format!("ttrpc address {}", path.display()),
            std::io::Error::new(ErrorKind::AddrInUse, why.to_string()),
        )
    };
    if !meta.file_type().is_socket() {
        return Err(refuse("exists and is not a socket"));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(refuse("another process is serving on it")),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {
            std::fs::remove_file(path).map_err(|e| ShimError::io(format!("remove stale socket {}", path.display()), e))
        }
        Err(e) => Err(ShimError::io(format!("probe {}", path.display()), e)),
    }
}

struct Forward {
    exchange: Arc<dyn Exchange>,
}

impl Forward {
    fn envelope(&self, payload: &[u8]) -> Result<Envelope, Error> {
        let request = ForwardRequest::decode(payload)
            .map_err(|e| Error::InvalidArgument(format!("decode ForwardRequest: {e}")))?;
        let envelope = request
            .envelope
            .ok_or_else(|| Error::InvalidArgument("ForwardRequest has no envelope".into()))?;
        let event = envelope
            .event
            .ok_or_else(|| Error::InvalidArgument("envelope has no event".into()))?;
        Ok(Envelope {
            timestamp: convert::time(envelope.timestamp.as_ref()).unwrap_or_else(SystemTime::now),
            namespace: envelope.namespace,
            topic: envelope.topic,
            type_url: event.type_url,
            value: event.value,
        })
    }
}

#[async_trait]
impl MethodHandler for Forward {
    async fn handler(&self, _ctx: TtrpcContext, request: ttrpc::Request) -> ttrpc::Result<ttrpc::Response> {
        let published = self
            .envelope(&request.payload)
            .and_then(|envelope| self.exchange.publish(envelope));
        let status = match published {
            Ok(()) => ttrpc::get_status(Code::OK, ""),
            Err(e) => {
                tracing::warn!("forwarded event refused: {e}");
                ttrpc::get_status(Code::INVALID_ARGUMENT, e)
            }
        };
        Ok(ttrpc::Response {
            status: Some(status),
            payload: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Mutex, time::Duration};

    use corten_api::containerd::{events::TaskStart, services::events::ttrpc::v1 as wire};
    use corten_core::events::Subscription;

    use super::*;
    use crate::client::ShimClient;

    /// Keeps what is published, as the exchange plugin would deliver it.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Envelope>>);

    impl Exchange for Recorder {
        fn publish(&self, envelope: Envelope) -> Result<(), Error> {
            corten_core::events::validate_topic(&envelope.topic)?;
            self.0.lock().unwrap().push(envelope);
            Ok(())
        }

        fn subscribe(&self) -> Subscription {
            unimplemented!("not used")
        }
    }

    #[tokio::test]
    async fn forwards_envelopes_and_replaces_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock.ttrpc");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // stale
        let recorder = Arc::new(Recorder::default());
        let server = ForwardServer::start(path.to_str().unwrap(), 0, 0, recorder.clone())
            .await
            .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
        assert!(
            ForwardServer::start(path.to_str().unwrap(), 0, 0, recorder.clone())
                .await
                .is_err(),
            "a live socket is refused"
        );

        let client = ShimClient::connect(&format!("unix://{}", path.display()), SERVICE, "ns1")
            .await
            .unwrap();
        let event = TaskStart {
            container_id: "c1".into(),
            pid: 42,
        };
        let request = wire::ForwardRequest {
            envelope: Some(wire::Envelope {
                timestamp: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                }),
                namespace: "ns1".into(),
                topic: "/tasks/start".into(),
                event: Some(prost_types::Any {
                    type_url: "containerd.events.TaskStart".into(),
                    value: event.encode_to_vec(),
                }),
            }),
        };
        let timeout = Some(Duration::from_secs(5));
        client.call::<_, ()>("Forward", &request, timeout).await.unwrap();
        let got = recorder.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (
                got[0].namespace.as_str(),
                got[0].topic.as_str(),
                got[0].type_url.as_str()
            ),
            ("ns1", "/tasks/start", "containerd.events.TaskStart")
        );
        assert_eq!(TaskStart::decode(got[0].value.as_slice()).unwrap(), event);
        assert_eq!(
            got[0].timestamp,
            SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)
        );

        let mut bad = request.clone();
        bad.envelope.as_mut().unwrap().topic = "no-slash".into();
        let e = client.call::<_, ()>("Forward", &bad, timeout).await.unwrap_err();
        assert!(
            matches!(e, ShimError::Status { code, .. } if code == Code::INVALID_ARGUMENT as i32),
            "{e}"
        );

        server.stop().await;
        assert!(!path.exists());
    }
}
