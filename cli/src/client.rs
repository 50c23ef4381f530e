//! One gRPC connection to cortend over its unix socket, with every request
//! scoped to the caller's namespace. Each command family takes the stub it
//! needs from [`Connection`].

use std::{io, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use corten_api::containerd::services::{
    containers::v1::containers_client::ContainersClient, content::v1::content_client::ContentClient,
    diff::v1::diff_client::DiffClient, events::v1::events_client::EventsClient,
    images::v1::images_client::ImagesClient, introspection::v1::introspection_client::IntrospectionClient,
    leases::v1::leases_client::LeasesClient, namespaces::v1::namespaces_client::NamespacesClient,
    snapshots::v1::snapshots_client::SnapshotsClient, streaming::v1::streaming_client::StreamingClient,
    tasks::v1::tasks_client::TasksClient, transfer::v1::transfer_client::TransferClient,
    version::v1::version_client::VersionClient,
};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Endpoint, Uri},
    Request, Status,
};

use crate::error::ConnectError;

/// The metadata key containerd reads the request's namespace from.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// The transport every service stub is built on.
pub type Channel = InterceptedService<tonic::transport::Channel, NamespaceHeader>;

/// Where and how to reach the daemon, as given on the command line.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub address: String,
    pub namespace: String,
    /// Zero waits as long as the OS lets a connect take.
    pub timeout: Duration,
}

/// Stamps each outgoing request with the namespace header, since the daemon
/// resolves every object relative to it and ctr always sends one.
#[derive(Clone)]
pub struct NamespaceHeader(MetadataValue<Ascii>);

impl NamespaceHeader {
    pub fn new(namespace: &str) -> anyhow::Result<Self> {
        if namespace.is_empty() {
            bail!("the namespace must not be empty");
        }
        let value = MetadataValue::try_from(namespace)
            .ok()
            .with_context(|| format!("invalid namespace {namespace:?}: not sendable as a gRPC header"))?;
        Ok(NamespaceHeader(value))
    }
}

impl Interceptor for NamespaceHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(NAMESPACE_HEADER, self.0.clone());
        Ok(request)
    }
}

/// Turns `--address` into a socket path. Both a bare path and ctr's
/// `unix:///path` spelling are accepted; other schemes are refused rather
/// than misread as file names.
pub fn socket_path(address: &str) -> anyhow::Result<PathBuf> {
    let path = match address.strip_prefix("unix://") {
        Some(rest) => rest,
        None if address.contains("://") => {
            bail!("unsupported address {address:?}: only unix sockets are supported")
        }
        None => address,
    };
    if path.is_empty() {
        bail!("empty address: give a unix socket path");
    }
    Ok(PathBuf::from(path))
}

pub struct Connection {
    channel: Channel,
}

impl Connection {
    /// Connects eagerly so an absent daemon is reported before any command
    /// output, as one line naming the socket.
    pub async fn connect(options: &ConnectOptions) -> anyhow::Result<Self> {
        let header = NamespaceHeader::new(&options.namespace)?;
        let path = socket_path(&options.address)?;
        let shown = path.display().to_string();

        // The URI only satisfies tonic's HTTP/2 plumbing; the connector
        // below ignores it and dials the socket.
        let endpoint = Endpoint::from_static("http://corten.invalid");
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        });
        let connecting = endpoint.connect_with_connector(connector);

        let result = if options.timeout.is_zero() {
            connecting.await
        } else {
            match tokio::time::timeout(options.timeout, connecting).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(ConnectError {
                        address: shown,
                        reason: format!("timed out after {:?}", options.timeout),
                        not_running: false,
                    }
                    .into())
                }
            }
        };
        let channel = result.map_err(|err| describe_connect_failure(shown, &err))?;
        Ok(Connection {
            channel: InterceptedService::new(channel, header),
        })
    }

    pub fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel.clone())
    }

    pub fn introspection(&self) -> IntrospectionClient<Channel> {
        IntrospectionClient::new(self.channel.clone())
    }

    pub fn namespaces(&self) -> NamespacesClient<Channel> {
        NamespacesClient::new(self.channel.clone())
    }

    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }

    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }

    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }

    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    pub fn streaming(&self) -> StreamingClient<Channel> {
        StreamingClient::new(self.channel.clone())
    }

    pub fn transfer(&self) -> TransferClient<Channel> {
        TransferClient::new(self.channel.clone())
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }
}

/// Digs the OS error out of tonic's wrapping: "No such file or directory"
/// tells the user far more than "transport error".
fn describe_connect_failure(address: String, err: &tonic::transport::Error) -> ConnectError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            let not_running = matches!(io.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused);
            return ConnectError {
                address,
                reason: strip_os_error_suffix(&io.to_string()),
                not_running,
            };
        }
        source = cause.source();
    }
    let mut reason = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        reason = format!("{reason}: {cause}");
        source = cause.source();
    }
    ConnectError {
        address,
        reason,
        not_running: false,
    }
}

/// std renders OS errors as "Permission denied (os error 13)"; the number
/// is noise on a one-line message.
fn strip_os_error_suffix(text: &str) -> String {
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_accepts_plain_and_unix_scheme() {
        assert_eq!(
            socket_path("/run/corten/corten.sock").unwrap(),
            PathBuf::from("/run/corten/corten.sock")
        );
        assert_eq!(socket_path("unix:///run/x.sock").unwrap(), PathBuf::from("/run/x.sock"));
        assert_eq!(socket_path("rel.sock").unwrap(), PathBuf::from("rel.sock"));
    }

    #[test]
    fn socket_path_rejects_other_schemes_and_empty() {
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
        assert!(socket_path("").is_err());
        assert!(socket_path("unix://").is_err());
    }

    #[test]
    fn namespace_header_rejects_unsendable_values() {
        assert!(NamespaceHeader::new("default").is_ok());
        assert!(NamespaceHeader::new("").is_err());
        assert!(NamespaceHeader::new("bad\nname").is_err());
    }

    #[test]
    fn interceptor_sets_header() {
        let mut header = NamespaceHeader::new("ns1").unwrap();
        let request = header.call(Request::new(())).unwrap();
        assert_eq!(request.metadata().get(NAMESPACE_HEADER).unwrap(), "ns1");
    }

    #[test]
    fn os_error_suffix_is_dropped() {
        assert_eq!(
            strip_os_error_suffix("No such file or directory (os error 2)"),
            "No such file or directory"
        );
        assert_eq!(strip_os_error_suffix("plain"), "plain");
    }

    #[tokio::test]
    async fn missing_socket_is_one_clear_line() {
        let dir = std::env::temp_dir().join(format!("corten-cli-test-{}", std::process::id()));
        let options = ConnectOptions {
            address: dir.join("absent.sock").display().to_string(),
            namespace: "default".into(),
            timeout: Duration::from_secs(5),
        };
        let err = Connection::connect(&options).await.err().unwrap();
        let text = err.to_string();
        assert!(text.starts_with("cannot connect to "), "{text}");
        assert!(
            text.ends_with("No such file or directory (is cortend running?)"),
            "{text}"
        );
    }

    /// Answers Version with the namespace header it received, proving the
    /// header travels over a real connection.
    struct EchoNamespace;

    #[tonic::async_trait]
    impl corten_api::containerd::services::version::v1::version_server::Version for EchoNamespace {
        async fn version(
            &self,
            request: Request<()>,
        ) -> Result<tonic::Response<corten_api::containerd::services::version::v1::VersionResponse>, Status> {
            let seen = request
                .metadata()
                .get(NAMESPACE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("<none>")
                .to_string();
            Ok(tonic::Response::new(
                corten_api::containerd::services::version::v1::VersionResponse {
                    version: seen,
                    revision: String::new(),
                },
            ))
        }
    }

    #[tokio::test]
    async fn requests_carry_the_namespace_over_the_socket() {
        use corten_api::containerd::services::version::v1::version_server::VersionServer;

        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("echo.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(VersionServer::new(EchoNamespace))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        let options = ConnectOptions {
            address: format!("unix://{}", socket.display()),
            namespace: "team-a".into(),
            timeout: Duration::from_secs(5),
        };
        let conn = Connection::connect(&options).await.unwrap();
        let reply = conn.version().version(()).await.unwrap().into_inner();
        assert_eq!(reply.version, "team-a");
        server.abort();
    }
}
