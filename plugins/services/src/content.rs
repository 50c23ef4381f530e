//! Plugin `io.containerd.grpc.v1.content`: `ctr content ...` and every
//! client that pulls or pushes images, over the content store.

use std::{collections::BTreeMap, os::unix::fs::FileExt, pin::Pin, sync::Arc};

use corten_api::containerd::{
    events::ContentDelete,
    services::content::v1::{
        content_server::{Content, ContentServer},
        AbortRequest, DeleteContentRequest, Info as InfoMsg, InfoRequest, InfoResponse, ListContentRequest,
        ListContentResponse, ListStatusesRequest, ListStatusesResponse, ReadContentRequest, ReadContentResponse,
        Status as StatusMsg, StatusRequest, StatusResponse, UpdateRequest, UpdateResponse, WriteAction,
        WriteContentRequest, WriteContentResponse,
    },
};
use corten_core::{
    content::{ContentStore, Info, Status as IngestStatus, WriteOptions, Writer},
    events::Exchange,
    filters::Filter,
    grpc::GrpcService,
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin,
};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    publish::publish,
    request::{self, digest},
    status::{blocking, inline, to_status},
};

/// Bytes per Read message: large enough to keep the stream busy, far below
/// the 16 MiB message limit.
const READ_CHUNK: usize = 1 << 20;
/// Reads of at most this many bytes are served on the calling worker.
const INLINE_READ: u64 = 64 << 10;
/// Infos per List message.
const LIST_BATCH: usize = 100;

#[derive(Clone)]
struct ContentService {
    store: Arc<dyn ContentStore>,
    events: Arc<dyn Exchange>,
}

fn info_msg(info: Info) -> InfoMsg {
    InfoMsg {
        digest: info.digest.to_string(),
        size: info.size as i64,
        created_at: Some(info.created_at.into()),
        updated_at: Some(info.updated_at.into()),
        labels: info.labels.into_iter().collect(),
    }
}

fn status_msg(status: IngestStatus) -> StatusMsg {
    StatusMsg {
        started_at: Some(status.started_at.into()),
        updated_at: Some(status.updated_at.into()),
        r#ref: status.reference,
        offset: status.offset as i64,
        total: status.total as i64,
        expected: status.expected.map(|d| d.to_string()).unwrap_or_default(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Messages of one Write stream queued between receiving and writing.
const WRITE_QUEUE: usize = 8;

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let digest = digest(&request.get_ref().digest)?;
        let info = inline(|| self.store.info(&ns, &digest))?;
        Ok(Response::new(InfoResponse {
            info: Some(info_msg(info)),
        }))
    }

    async fn update(&self, request: Request<UpdateRequest>) -> Result<Response<UpdateResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let request = request.into_inner();
        let msg = request.info.unwrap_or_default();
        let info = Info {
            digest: digest(&msg.digest)?,
            size: 0,
            created_at: std::time::UNIX_EPOCH,
            updated_at: std::time::UNIX_EPOCH,
            labels: msg.labels.into_iter().collect::<BTreeMap<_, _>>(),
        };
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let store = self.store.clone();
        let info = blocking(move || store.update(&ns, &info, &paths)).await?;
        Ok(Response::new(UpdateResponse {
            info: Some(info_msg(info)),
        }))
    }

    type ListStream = BoxStream<ListContentResponse>;

    async fn list(&self, request: Request<ListContentRequest>) -> Result<Response<Self::ListStream>, Status> {
        let ns = request::namespace(request.metadata())?;
        let filter = Filter::parse_all(&request.get_ref().filters).map_err(to_status)?;
        let store = self.store.clone();
        let infos = blocking(move || store.list(&ns)).await?;
        let matching: Vec<InfoMsg> = infos.into_iter().filter(|i| filter.matches(i)).map(info_msg).collect();
        let batches: Vec<Result<ListContentResponse, Status>> = matching
            .chunks(LIST_BATCH)
            .map(|chunk| Ok(ListContentResponse { info: chunk.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn delete(&self, request: Request<DeleteContentRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let digest = digest(&request.get_ref().digest)?;
        let (store, deleted, ns2) = (self.store.clone(), digest.clone(), ns.clone());
        blocking(move || store.delete(&ns2, &deleted)).await?;
        let event = ContentDelete {
            digest: digest.to_string(),
        };
        publish(
            &self.events,
            &ns,
            "/content/delete",
            "containerd.events.ContentDelete",
            &event,
        );
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<ReadContentResponse>;

    async fn read(&self, request: Request<ReadContentRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let ns = request::namespace(request.metadata())?;
        let request = request.into_inner();
        let digest = digest(&request.digest)?;
        let (file, size) = inline(|| self.store.open(&ns, &digest))?;
        let offset = request.offset.max(0) as u64;
        if offset > size {
            return Err(Status::invalid_argument(format!(
                "read at offset {offset} is past the end of {} ({size} bytes)",
                request.digest
            )));
        }
        let end = match request.size {
            n if n > 0 => (offset + n as u64).min(size),
            _ => size,
        };
        if end - offset <= INLINE_READ {
            // Manifests, indexes and configs, read by every client before
            // anything else: one `pread` from the page cache, cheaper here
            // than a hand-off to the blocking pool.
            let mut data = vec![0u8; (end - offset) as usize];
            file.read_exact_at(&mut data, offset)
                .map_err(|e| Status::internal(format!("read blob: {e}")))?;
            let messages = (!data.is_empty()).then_some(Ok(ReadContentResponse {
                offset: offset as i64,
                data,
            }));
            return Ok(Response::new(Box::pin(tokio_stream::iter(messages))));
        }
        let (tx, rx) = mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            let mut at = offset;
            while at < end {
                let mut buf = vec![0u8; READ_CHUNK.min((end - at) as usize)];
                let message = match file.read_exact_at(&mut buf, at) {
                    Ok(()) => Ok(ReadContentResponse {
                        offset: at as i64,
                        data: buf,
                    }),
                    Err(e) => Err(Status::internal(format!("read blob: {e}"))),
                };
                let failed = message.is_err();
                at = end.min(at + READ_CHUNK as u64);
                if tx.blocking_send(message).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let reference = request.into_inner().r#ref;
        let store = self.store.clone();
        let status = blocking(move || store.status(&ns, &reference)).await?;
        Ok(Response::new(StatusResponse {
            status: Some(status_msg(status)),
        }))
    }

    async fn list_statuses(
        &self,
        request: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let filter = Filter::parse_all(&request.get_ref().filters).map_err(to_status)?;
        let store = self.store.clone();
        let statuses = blocking(move || store.list_statuses(&ns)).await?;
        let statuses = statuses
            .into_iter()
            .filter(|s| filter.matches(s))
            .map(status_msg)
            .collect();
        Ok(Response::new(ListStatusesResponse { statuses }))
    }

    type WriteStream = BoxStream<WriteContentResponse>;

    async fn write(
        &self,
        request: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let ns = request::namespace(request.metadata())?;
        let lease = request::lease(request.metadata())?;
        let mut incoming = request.into_inner();
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("write stream ended before its first message"))?;
        if first.r#ref.is_empty() {
            return Err(Status::invalid_argument("the first write message must name a ref"));
        }
        let expected = match first.expected.as_str() {
            "" => None,
            d => Some(digest(d)?),
        };
        let options = WriteOptions {
            total: first.total.max(0) as u64,
            expected,
            lease,
        };
        let (store, reference) = (self.store.clone(), first.r#ref.clone());
        let writer = blocking(move || store.writer(&ns, &reference, options)).await?;

        // Two stages, one per core: this task receives and decodes messages,
        // a blocking thread writes and hashes them.
        let (requests, mut pending) = mpsc::channel::<WriteContentRequest>(WRITE_QUEUE);
        let (answers, rx) = mpsc::channel(WRITE_QUEUE);
        let failed = answers.clone();
        tokio::task::spawn_blocking(move || {
            let mut session = WriteSession { writer };
            while let Some(message) = pending.blocking_recv() {
                let answer = session.handle(message);
                let done = answer.as_ref().map_or(true, |a| a.action == WriteAction::Commit as i32);
                if answers.blocking_send(answer).is_err() || done {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut next = Some(first);
            while let Some(message) = next.take() {
                if requests.send(message).await.is_err() {
                    return; // the writer stopped: committed or failed
                }
                next = match incoming.message().await {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = failed.send(Err(e)).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, request: Request<AbortRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let reference = request.into_inner().r#ref;
        let store = self.store.clone();
        blocking(move || store.abort(&ns, &reference)).await?;
        Ok(Response::new(()))
    }
}

/// One Write stream's writer and the answers to its messages.
struct WriteSession {
    writer: Box<dyn Writer>,
}

impl WriteSession {
    fn handle(&mut self, message: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        let expected = match message.expected.as_str() {
            "" => None,
            d => Some(digest(d)?),
        };
        self.writer.expect(message.total.max(0) as u64, expected);
        let action = WriteAction::try_from(message.action)
            .map_err(|_| Status::invalid_argument(format!("unknown write action {}", message.action)))?;
        let writer = &mut self.writer;
        let mut digest = None;
        match action {
            WriteAction::Stat => digest = Some(writer.digest()),
            WriteAction::Write => {
                let offset = message.offset.max(0) as u64;
                writer.write_owned(offset, message.data).map_err(to_status)?;
            }
            WriteAction::Commit => {
                if !message.data.is_empty() {
                    let offset = message.offset.max(0) as u64;
                    writer.write_owned(offset, message.data).map_err(to_status)?;
                }
                let labels = message.labels.into_iter().collect();
                digest = Some(writer.commit(labels).map_err(to_status)?);
            }
        }
        let status = writer.status().map_err(to_status)?;
        Ok(WriteContentResponse {
            action: action as i32,
            started_at: Some(status.started_at.into()),
            updated_at: Some(status.updated_at.into()),
            offset: status.offset as i64,
            total: status.total as i64,
            digest: digest.map(|d| d.to_string()).unwrap_or_default(),
        })
    }
}

struct ContentServicePlugin;

impl Plugin for ContentServicePlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "content";
    const REQUIRES: &'static [&'static str] = &["io.containerd.content.v1", "io.containerd.event.v1"];
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let store: Arc<dyn ContentStore> = ctx.get("io.containerd.content.v1")?;
        let events: Arc<dyn Exchange> = ctx.get("io.containerd.event.v1")?;
        let server = with_limits!(ContentServer::new(ContentService { store, events }), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(ContentServicePlugin);
