//! Plugins `io.containerd.streaming.v1.manager` and
//! `io.containerd.grpc.v1.streaming`: containerd 2.x's named side streams.
//! A client opens `Streaming.Stream`, names it with a `StreamInit`, and
//! waits for the acknowledgement; another RPC (a transfer) then takes the
//! stream by that name to send progress or ask for credentials on it.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use corten_api::containerd::services::streaming::v1::{
    streaming_server::{Streaming, StreamingServer},
    StreamInit,
};
use corten_core::{
    grpc::GrpcService,
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin,
};
use prost::Message as _;
use prost_types::Any;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};

use crate::request;

/// The plugin type of the stream manager.
pub const PLUGIN_TYPE: &str = "io.containerd.streaming.v1";

const STREAM_INIT: &str = "containerd.services.streaming.v1.StreamInit";
const EMPTY: &str = "google.protobuf.Empty";
/// Messages queued towards a client on one stream.
const OUT_QUEUE: usize = 64;
/// Messages from a client queued for the stream's taker.
const IN_QUEUE: usize = 16;

/// Whether `any` holds the message named `name`, with or without a
/// `type.googleapis.com/`-style prefix (containerd sends the bare name).
pub fn is_type(any: &Any, name: &str) -> bool {
    any.type_url == name || any.type_url.rsplit_once('/').is_some_and(|(_, n)| n == name)
}

/// A registered stream: what the taker sends to the client, and what the
/// client sends.
pub struct SideStream {
    pub to_client: mpsc::Sender<Result<Any, Status>>,
    pub from_client: mpsc::Receiver<Any>,
}

/// Streams by namespace and name, until an RPC takes them.
#[derive(Default)]
pub struct StreamManager {
    streams: Mutex<HashMap<(String, String), (u64, SideStream)>>,
    generation: AtomicU64,
}

impl StreamManager {
    fn register(&self, ns: &str, id: &str, stream: SideStream) -> Result<u64, Status> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ns.to_string(), id.to_string());
        if streams.contains_key(&key) {
            return Err(Status::already_exists(format!("stream {id:?}: already exists")));
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        streams.insert(key, (generation, stream));
        Ok(generation)
    }

    /// Takes the stream `id` of namespace `ns`; it ends for the client when
    /// the taker drops it.
    pub fn take(&self, ns: &str, id: &str) -> Option<SideStream> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.remove(&(ns.to_string(), id.to_string())).map(|(_, s)| s)
    }

    fn forget(&self, ns: &str, id: &str, generation: u64) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ns.to_string(), id.to_string());
        if streams.get(&key).is_some_and(|(g, _)| *g == generation) {
            streams.remove(&key);
        }
    }
}

#[derive(Clone)]
struct StreamingService {
    manager: Arc<StreamManager>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Streaming for StreamingService {
    type StreamStream = BoxStream<Any>;

    async fn stream(&self, request: Request<tonic::Streaming<Any>>) -> Result<Response<Self::StreamStream>, Status> {
        let ns = request::namespace(request.metadata())?;
        let mut incoming = request.into_inner();
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before its StreamInit"))?;
        if !is_type(&first, STREAM_INIT) {
            return Err(Status::invalid_argument(format!(
                "the first message must be a {STREAM_INIT}, not {:?}",
                first.type_url
            )));
        }
        let init = StreamInit::decode(first.value.as_slice())
            .map_err(|e| Status::invalid_argument(format!("decode StreamInit: {e}")))?;
        if init.id.is_empty() {
            return Err(Status::invalid_argument("StreamInit needs an id"));
        }
        let (to_client, out) = mpsc::channel(OUT_QUEUE);
        let (to_taker, from_client) = mpsc::channel(IN_QUEUE);
        let ack = to_client.clone();
        let generation = self
            .manager
            .register(&ns, &init.id, SideStream { to_client, from_client })?;
        // Acknowledged only once registered: the client may use the id as
        // soon as it reads this.
        let _ = ack
            .send(Ok(Any {
                type_url: EMPTY.into(),
                value: Vec::new(),
            }))
            .await;
        drop(ack);
        let manager = self.manager.clone();
        tokio::spawn(async move {
            loop {
                match incoming.message().await {
                    Ok(Some(message)) => {
                        if to_taker.send(message).await.is_err() {
                            break;
                        }
                    }
                    // Half-closed: the client still reads what it is sent.
                    Ok(None) => return,
                    // Cancelled or broken: nobody will read it.
                    Err(_) => break,
                }
            }
            manager.forget(&ns, &init.id, generation);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

struct StreamManagerPlugin;

impl Plugin for StreamManagerPlugin {
    const TYPE: &'static str = PLUGIN_TYPE;
    const ID: &'static str = "manager";
    type Config = NoConfig;

    async fn init(_: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        Ok(Instance::new(Arc::new(StreamManager::default())))
    }
}

register_plugin!(StreamManagerPlugin);

struct StreamingServicePlugin;

impl Plugin for StreamingServicePlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "streaming";
    const REQUIRES: &'static [&'static str] = &[PLUGIN_TYPE];
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let manager: Arc<StreamManager> = ctx.get(PLUGIN_TYPE)?;
        let server = with_limits!(StreamingServer::new(StreamingService { manager }), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(StreamingServicePlugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_with_or_without_prefix() {
        let any = |url: &str| Any {
            type_url: url.into(),
            value: Vec::new(),
        };
        assert!(is_type(&any(STREAM_INIT), STREAM_INIT));
        assert!(is_type(
            &any(&format!("type.googleapis.com/{STREAM_INIT}")),
            STREAM_INIT
        ));
        assert!(!is_type(&any("containerd.services.streaming.v1.Other"), STREAM_INIT));
    }

    #[test]
    fn streams_are_taken_once() {
        let manager = StreamManager::default();
        let make = || {
            let (to_client, _out) = mpsc::channel(1);
            let (_tx, from_client) = mpsc::channel(1);
            SideStream { to_client, from_client }
        };
        let g = manager.register("ns", "a", make()).unwrap();
        assert_eq!(
            manager.register("ns", "a", make()).unwrap_err().code(),
            tonic::Code::AlreadyExists
        );
        manager.register("other", "a", make()).unwrap();
        manager.forget("ns", "a", g + 100);
        assert!(manager.take("ns", "a").is_some());
        assert!(manager.take("ns", "a").is_none());
    }
}
