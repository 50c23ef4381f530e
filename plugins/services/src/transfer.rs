//! Plugin `io.containerd.grpc.v1.transfer`: containerd 2.x's Transfer
//! service over the `io.containerd.transfer.v1` plugin. A pull is a
//! transfer from an `OCIRegistry` into an `ImageStore`; progress goes out
//! on the side stream the request names, and credentials are asked for on
//! the registry resolver's auth stream (see [`streaming`]).

pub mod streaming;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use corten_api::containerd::{
    services::{
        images::v1::{ImageCreate, ImageUpdate},
        transfer::v1::{
            transfer_server::{Transfer, TransferServer},
            TransferRequest,
        },
    },
    types::{
        transfer::{AuthRequest, AuthResponse, AuthType, ImageStore, OciRegistry, Progress as ProgressMsg},
        Platform as PlatformMsg,
    },
};
use corten_core::{
    events::Exchange,
    grpc::GrpcService,
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin,
    transfer::{self, CredentialSource, Credentials, Platform, Progress, PullRequest, Transferrer, UnpackTarget},
    Error,
};
use prost::Message as _;
use prost_types::Any;
use tokio::sync::{mpsc, Mutex};
use tonic::{Request, Response, Status};

use self::streaming::{is_type, SideStream, StreamManager};
use crate::{convert::descriptor_msg, publish::publish, request, status::to_status};

const OCI_REGISTRY: &str = "containerd.types.transfer.OCIRegistry";
const IMAGE_STORE: &str = "containerd.types.transfer.ImageStore";
const PROGRESS: &str = "containerd.types.transfer.Progress";
const AUTH_REQUEST: &str = "containerd.types.transfer.AuthRequest";
const AUTH_RESPONSE: &str = "containerd.types.transfer.AuthResponse";
/// How long a client may take to answer a credentials request.
const AUTH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the last progress events may take to reach the client.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct TransferService {
    transferrer: Arc<dyn Transferrer>,
    streams: Arc<StreamManager>,
    events: Arc<dyn Exchange>,
}

fn decode<M: prost::Message + Default>(any: &Any, name: &str) -> Result<M, Status> {
    M::decode(any.value.as_slice()).map_err(|e| Status::invalid_argument(format!("decode {name}: {e}")))
}

fn platform(p: PlatformMsg) -> Platform {
    Platform {
        os: p.os,
        architecture: p.architecture,
        variant: p.variant,
    }
}

fn progress_msg(p: Progress) -> ProgressMsg {
    ProgressMsg {
        event: p.event,
        name: p.name,
        parents: p.parents,
        progress: i64::try_from(p.progress).unwrap_or(i64::MAX),
        total: i64::try_from(p.total).unwrap_or(i64::MAX),
        desc: p.desc.map(descriptor_msg),
    }
}

/// Credentials asked of the client on its auth stream, one request at a time.
struct StreamCredentials {
    stream: Mutex<SideStream>,
}

impl CredentialSource for StreamCredentials {
    fn credentials<'a>(
        &'a self,
        host: &'a str,
        reference: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Credentials, Error>> + Send + 'a>> {
        Box::pin(async move {
            let mut stream = self.stream.lock().await;
            let ask = AuthRequest {
                host: host.to_string(),
                reference: reference.to_string(),
                wwwauthenticate: Vec::new(),
            };
            stream
                .to_client
                .send(Ok(corten_api::pack_any(AUTH_REQUEST, &ask)))
                .await
                .map_err(|_| Error::Unavailable("the client closed its auth stream".into()))?;
            let answer = tokio::time::timeout(AUTH_TIMEOUT, stream.from_client.recv())
                .await
                .map_err(|_| Error::Unavailable(format!("no credentials for {host} from the client in time")))?
                .ok_or_else(|| Error::Unavailable("the client closed its auth stream".into()))?;
            if !is_type(&answer, AUTH_RESPONSE) {
                return Err(Error::InvalidArgument(format!(
                    "expected an {AUTH_RESPONSE} on the auth stream, got {:?}",
                    answer.type_url
                )));
            }
            let response = AuthResponse::decode(answer.value.as_slice())
                .map_err(|e| Error::InvalidArgument(format!("decode AuthResponse: {e}")))?;
            Ok(match AuthType::try_from(response.auth_type).unwrap_or(AuthType::None) {
                AuthType::None => Credentials::Anonymous,
                AuthType::Credentials => Credentials::Basic {
                    username: response.username,
                    password: response.secret,
                },
                AuthType::Refresh => Credentials::RefreshToken(response.secret),
                AuthType::Header => Credentials::Header(response.secret),
            })
        })
    }
}

impl TransferService {
    fn take_stream(&self, ns: &str, id: &str, what: &str) -> Result<Option<SideStream>, Status> {
        if id.is_empty() {
            return Ok(None);
        }
        self.streams
            .take(ns, id)
            .map(Some)
            .ok_or_else(|| Status::not_found(format!("{what} stream {id:?}: not found")))
    }

    fn pull_request(&self, ns: &str, source: OciRegistry, store: ImageStore) -> Result<PullRequest, Status> {
        let resolver = source.resolver.unwrap_or_default();
        let plain_http = match resolver.default_scheme.as_str() {
            "" | "https" => false,
            "http" => true,
            other => return Err(Status::invalid_argument(format!("unknown registry scheme {other:?}"))),
        };
        let credentials =
            self.take_stream(ns, &resolver.auth_stream, "auth")?
                .map(|stream| -> Arc<dyn CredentialSource> {
                    Arc::new(StreamCredentials {
                        stream: Mutex::new(stream),
                    })
                });
        let mut extra_names = Vec::new();
        for r in store.extra_references {
            if r.is_prefix || r.add_digest {
                return Err(Status::unimplemented(format!(
                    "image reference {:?}: prefix and digest references are for imports, not pulls",
                    r.name
                )));
            }
            extra_names.push(r.name);
        }
        Ok(PullRequest {
            reference: source.reference,
            name: store.name,
            extra_names,
            labels: store.labels.into_iter().collect(),
            platforms: store.platforms.into_iter().map(platform).collect(),
            manifest_limit: store.manifest_limit as usize,
            unpacks: store
                .unpacks
                .into_iter()
                .map(|u| UnpackTarget {
                    platform: u.platform.filter(|p| !p.os.is_empty()).map(platform),
                    snapshotter: u.snapshotter,
                })
                .collect(),
            plain_http,
            credentials,
        })
    }
}

#[tonic::async_trait]
impl Transfer for TransferService {
    async fn transfer(&self, request: Request<TransferRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let source = r
            .source
            .ok_or_else(|| Status::invalid_argument("a transfer needs a source"))?;
        let destination = r
            .destination
            .ok_or_else(|| Status::invalid_argument("a transfer needs a destination"))?;
        if !is_type(&source, OCI_REGISTRY) || !is_type(&destination, IMAGE_STORE) {
            return Err(Status::unimplemented(format!(
                "transfer from {:?} to {:?} is not implemented: corten transfers from {OCI_REGISTRY} to {IMAGE_STORE} (a pull)",
                source.type_url, destination.type_url
            )));
        }
        let pull = self.pull_request(
            &ns,
            decode(&source, "OCIRegistry")?,
            decode(&destination, "ImageStore")?,
        )?;
        let progress_stream = self.take_stream(&ns, &r.options.unwrap_or_default().progress_stream, "progress")?;

        // Progress is queued without blocking the pull and sent in order;
        // the stream ends (the client sees EOF) once all of it is out.
        let (events, mut queued) = mpsc::unbounded_channel::<Progress>();
        let forwarder = tokio::spawn(async move {
            let Some(stream) = progress_stream else {
                while queued.recv().await.is_some() {}
                return;
            };
            let mut open = true;
            while let Some(p) = queued.recv().await {
                if open {
                    let any = corten_api::pack_any(PROGRESS, &progress_msg(p));
                    open = stream.to_client.send(Ok(any)).await.is_ok();
                }
            }
        });
        let progress: transfer::ProgressFn = Arc::new(move |p| {
            let _ = events.send(p);
        });
        let result = self.transferrer.pull(&ns, pull, progress).await;
        if tokio::time::timeout(DRAIN_TIMEOUT, forwarder).await.is_err() {
            tracing::warn!("progress stream did not drain in {DRAIN_TIMEOUT:?}");
        }
        for stored in result.map_err(to_status)? {
            let labels = stored.image.labels.clone().into_iter().collect();
            let name = stored.image.name.clone();
            if stored.created {
                let event = ImageCreate { name, labels };
                publish(
                    &self.events,
                    &ns,
                    "/images/create",
                    "containerd.services.images.v1.ImageCreate",
                    &event,
                );
            } else {
                let event = ImageUpdate { name, labels };
                publish(
                    &self.events,
                    &ns,
                    "/images/update",
                    "containerd.services.images.v1.ImageUpdate",
                    &event,
                );
            }
        }
        Ok(Response::new(()))
    }
}

struct TransferServicePlugin;

impl Plugin for TransferServicePlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "transfer";
    const REQUIRES: &'static [&'static str] =
        &[transfer::PLUGIN_TYPE, streaming::PLUGIN_TYPE, "io.containerd.event.v1"];
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let transferrer: Arc<dyn Transferrer> = ctx.get(transfer::PLUGIN_TYPE)?;
        let streams: Arc<StreamManager> = ctx.get(streaming::PLUGIN_TYPE)?;
        let events: Arc<dyn Exchange> = ctx.get("io.containerd.event.v1")?;
        let service = TransferService {
            transferrer,
            streams,
            events,
        };
        let server = with_limits!(TransferServer::new(service), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(TransferServicePlugin);
