//! Plugin `io.containerd.grpc.v1.events`: `ctr events`, and clients that
//! publish or forward events of their own.
//!
//! Subscribe takes containerd's filters over the envelope: `topic`,
//! `namespace`, and `event.<field>` for the fields containerd's own event
//! types expose to filters (`event.container_id`, `event.id`,
//! `event.labels.<key>`, ...). A subscriber that cannot keep up loses the
//! oldest events (logged); its stream goes on.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::SystemTime};

use corten_api::containerd::{
    events as ev,
    services::{
        events::v1::{
            events_server::{Events as EventsApi, EventsServer},
            Envelope as EnvelopeMsg, ForwardRequest, PublishRequest, SubscribeRequest,
        },
        images::v1 as images,
    },
};
use corten_core::{
    events::{validate_topic, Envelope, Exchange},
    filters::{Adaptor, Filter},
    grpc::GrpcService,
    identifiers,
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin, Stopping},
    register_plugin,
};
use prost::Message;
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::{request, status::to_status};

const EVENTS: &str = "io.containerd.event.v1";

/// Envelopes waiting for a subscriber's connection; beyond these, the
/// exchange's own buffer holds them until the subscriber lags.
const SUBSCRIBER_QUEUE: usize = 64;

#[derive(Clone)]
struct EventsService {
    exchange: Arc<dyn Exchange>,
    stopping: Stopping,
}

fn envelope_msg(e: &Envelope) -> EnvelopeMsg {
    EnvelopeMsg {
        timestamp: Some(e.timestamp.into()),
        namespace: e.namespace.clone(),
        topic: e.topic.clone(),
        event: Some(corten_api::prost_types::Any {
            type_url: e.type_url.clone(),
            value: e.value.clone(),
        }),
    }
}

/// A forwarded envelope, checked as containerd checks it: a valid
/// namespace and topic, a timestamp, and an event.
fn forwarded(msg: Option<EnvelopeMsg>) -> Result<Envelope, Status> {
    let msg = msg.ok_or_else(|| Status::invalid_argument("an envelope is required"))?;
    identifiers::validate(&msg.namespace)
        .map_err(|e| Status::invalid_argument(format!("event envelope has an invalid namespace: {e}")))?;
    validate_topic(&msg.topic).map_err(to_status)?;
    let timestamp = msg
        .timestamp
        .filter(|t| t.seconds != 0 || t.nanos != 0)
        .ok_or_else(|| Status::invalid_argument("timestamp must be set on a forwarded event"))?;
    let timestamp =
        SystemTime::try_from(timestamp).map_err(|e| Status::invalid_argument(format!("envelope timestamp: {e}")))?;
    let event = msg
        .event
        .ok_or_else(|| Status::invalid_argument("an event is required"))?;
    Ok(Envelope {
        timestamp,
        namespace: msg.namespace,
        topic: msg.topic,
        type_url: event.type_url,
        value: event.value,
    })
}

/// An envelope as filters see it.
struct Fields<'a>(&'a Envelope);

impl Adaptor for Fields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let present = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        match path {
            [f] if f == "namespace" => present(&self.0.namespace),
            [f] if f == "topic" => present(&self.0.topic),
            [f, rest @ ..] if f == "event" => {
                let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
                event_field(&self.0.type_url, &self.0.value, &rest)
            }
            _ => None,
        }
    }
}

fn text(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

/// A label of an event's `labels` map; `labels.a.b` names the key `a.b`.
fn label(labels: HashMap<String, String>, key: &[&str]) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    labels.get(&key.join(".")).cloned()
}

/// The value of `path` in the event packed as `type_url`: the string fields
/// (and labels, and the task IO's terminal flag) of containerd's event
/// types, as containerd exposes them to filters. Other types have no fields.
fn event_field(type_url: &str, value: &[u8], path: &[&str]) -> Option<String> {
    macro_rules! decode {
        ($t:ty) => {
            <$t>::decode(value).ok()?
        };
    }
    match type_url.strip_prefix("containerd.events.") {
        Some("ContainerCreate") => {
            let m = decode!(ev::ContainerCreate);
            match path {
                ["id"] => text(m.id),
                ["image"] => text(m.image),
                ["runtime", "name"] => text(m.runtime?.name),
                _ => None,
            }
        }
        Some("ContainerUpdate") => {
            let m = decode!(ev::ContainerUpdate);
            match path {
                ["id"] => text(m.id),
                ["image"] => text(m.image),
                ["snapshot_key"] => text(m.snapshot_key),
                ["labels", key @ ..] => label(m.labels, key),
                _ => None,
            }
        }
        Some("ContainerDelete") => match path {
            ["id"] => text(decode!(ev::ContainerDelete).id),
            _ => None,
        },
        Some("ContentDelete") => match path {
            ["digest"] => text(decode!(ev::ContentDelete).digest),
            _ => None,
        },
        Some("NamespaceCreate") => {
            let m = decode!(ev::NamespaceCreate);
            named(m.name, m.labels, path)
        }
        Some("NamespaceUpdate") => {
            let m = decode!(ev::NamespaceUpdate);
            named(m.name, m.labels, path)
        }
        Some("NamespaceDelete") => named(decode!(ev::NamespaceDelete).name, HashMap::new(), path),
        Some("SnapshotPrepare") => {
            let m = decode!(ev::SnapshotPrepare);
            match path {
                ["key"] => text(m.key),
                ["parent"] => text(m.parent),
                _ => None,
            }
        }
        Some("SnapshotCommit") => {
            let m = decode!(ev::SnapshotCommit);
            match path {
                ["key"] => text(m.key),
                ["name"] => text(m.name),
                _ => None,
            }
        }
        Some("SnapshotRemove") => match path {
            ["key"] => text(decode!(ev::SnapshotRemove).key),
            _ => None,
        },
        Some("TaskCreate") => {
            let m = decode!(ev::TaskCreate);
            match path {
                ["container_id"] => text(m.container_id),
                ["bundle"] => text(m.bundle),
                ["checkpoint"] => text(m.checkpoint),
                ["io", field] => {
                    let io = m.io?;
                    match *field {
                        "stdin" => text(io.stdin),
                        "stdout" => text(io.stdout),
                        "stderr" => text(io.stderr),
                        "terminal" => Some(io.terminal.to_string()),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        Some("TaskStart") => container_id(decode!(ev::TaskStart).container_id, path),
        Some("TaskOOM") => container_id(decode!(ev::TaskOom).container_id, path),
        Some("TaskPaused") => container_id(decode!(ev::TaskPaused).container_id, path),
        Some("TaskResumed") => container_id(decode!(ev::TaskResumed).container_id, path),
        Some("TaskDelete") => {
            let m = decode!(ev::TaskDelete);
            with_id(m.container_id, "id", m.id, path)
        }
        Some("TaskExit") => {
            let m = decode!(ev::TaskExit);
            with_id(m.container_id, "id", m.id, path)
        }
        Some("TaskExecAdded") => {
            let m = decode!(ev::TaskExecAdded);
            with_id(m.container_id, "exec_id", m.exec_id, path)
        }
        Some("TaskExecStarted") => {
            let m = decode!(ev::TaskExecStarted);
            with_id(m.container_id, "exec_id", m.exec_id, path)
        }
        Some("TaskCheckpointed") => {
            let m = decode!(ev::TaskCheckpointed);
            with_id(m.container_id, "checkpoint", m.checkpoint, path)
        }
        _ => match type_url.strip_prefix("containerd.services.images.v1.") {
            Some("ImageCreate") => {
                let m = decode!(images::ImageCreate);
                named(m.name, m.labels, path)
            }
            Some("ImageUpdate") => {
                let m = decode!(images::ImageUpdate);
                named(m.name, m.labels, path)
            }
            Some("ImageDelete") => named(decode!(images::ImageDelete).name, HashMap::new(), path),
            _ => None,
        },
    }
}

/// `name` and `labels.<key>`, the fields of namespace and image events.
fn named(name: String, labels: HashMap<String, String>, path: &[&str]) -> Option<String> {
    match path {
        ["name"] => text(name),
        ["labels", key @ ..] if !labels.is_empty() => label(labels, key),
        _ => None,
    }
}

fn container_id(id: String, path: &[&str]) -> Option<String> {
    match path {
        ["container_id"] => text(id),
        _ => None,
    }
}

/// `container_id` and one more string field.
fn with_id(id: String, field: &str, value: String, path: &[&str]) -> Option<String> {
    match path {
        ["container_id"] => text(id),
        [f] if *f == field => text(value),
        _ => None,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl EventsApi for EventsService {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let namespace = request::namespace(request.metadata())?;
        let r = request.into_inner();
        validate_topic(&r.topic).map_err(to_status)?;
        let event = r
            .event
            .ok_or_else(|| Status::invalid_argument("an event is required"))?;
        let envelope = Envelope {
            timestamp: SystemTime::now(),
            namespace,
            topic: r.topic,
            type_url: event.type_url,
            value: event.value,
        };
        self.exchange.publish(envelope).map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<()>, Status> {
        let envelope = forwarded(request.into_inner().envelope)?;
        self.exchange.publish(envelope).map_err(to_status)?;
        Ok(Response::new(()))
    }

    type SubscribeStream = BoxStream<EnvelopeMsg>;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let filter = Filter::parse_all(&request.get_ref().filters).map_err(to_status)?;
        // Subscribed before answering: every event published after the
        // client has its answer reaches it.
        let mut events = self.exchange.subscribe();
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let stopping = self.stopping.clone().wait();
        tokio::spawn(async move {
            tokio::pin!(stopping);
            loop {
                let received = tokio::select! {
                    received = events.recv() => received,
                    _ = tx.closed() => return,
                    // The stream ends so the daemon's graceful stop need not
                    // wait for the subscriber to hang up.
                    _ = &mut stopping => return,
                };
                match received {
                    Ok(envelope) => {
                        if filter.matches(&Fields(&envelope)) && tx.send(Ok(envelope_msg(&envelope))).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(lost)) => {
                        warn!(lost, "events: a subscriber fell behind and lost the oldest events")
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct EventsServicePlugin;

impl Plugin for EventsServicePlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "events";
    const REQUIRES: &'static [&'static str] = &[EVENTS];
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let exchange: Arc<dyn Exchange> = ctx.get(EVENTS)?;
        let service = EventsService {
            exchange,
            stopping: ctx.stopping.clone(),
        };
        let server = with_limits!(EventsServer::new(service), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(EventsServicePlugin);

#[cfg(test)]
mod tests {
    use corten_api::pack_any;

    use super::*;

    fn envelope<M: Message>(ns: &str, topic: &str, type_url: &str, event: &M) -> Envelope {
        let any = pack_any(type_url, event);
        Envelope {
            timestamp: SystemTime::now(),
            namespace: ns.into(),
            topic: topic.into(),
            type_url: any.type_url,
            value: any.value,
        }
    }

    fn matches(filters: &[&str], e: &Envelope) -> bool {
        Filter::parse_all(filters).unwrap().matches(&Fields(e))
    }

    #[test]
    fn filters_on_the_envelope() {
        let create = envelope(
            "ns1",
            "/containers/create",
            "containerd.events.ContainerCreate",
            &ev::ContainerCreate {
                id: "c1".into(),
                image: "busybox".into(),
                runtime: Some(ev::container_create::Runtime {
                    name: "io.containerd.runc.v2".into(),
                    options: None,
                }),
            },
        );
        assert!(matches(&[], &create));
        assert!(matches(&[r#"topic=="/containers/create""#], &create));
        assert!(matches(&["topic~=^/containers/"], &create));
        assert!(matches(&[r#"topic!="/containers/delete""#], &create));
        assert!(!matches(&[r#"topic=="/tasks/exit""#], &create));
        assert!(matches(&["namespace==ns1,topic~=create"], &create));
        assert!(!matches(&["namespace==ns2,topic~=create"], &create));
        assert!(matches(&["namespace==ns2", "topic~=create"], &create));
        assert!(matches(&["event.id==c1"], &create));
        assert!(matches(&["event.runtime.name==io.containerd.runc.v2"], &create));
        assert!(!matches(&["event.container_id"], &create));

        let exit = envelope(
            "ns1",
            "/tasks/exit",
            "containerd.events.TaskExit",
            &ev::TaskExit {
                container_id: "c1".into(),
                id: "c1".into(),
                pid: 7,
                exit_status: 3,
                exited_at: None,
            },
        );
        assert!(matches(&["event.container_id==c1,event.id==c1"], &exit));
        assert!(
            !matches(&["event.exit_status==3"], &exit),
            "containerd filters on strings only"
        );

        let update = envelope(
            "ns1",
            "/images/update",
            "containerd.services.images.v1.ImageUpdate",
            &images::ImageUpdate {
                name: "img".into(),
                labels: HashMap::from([("a.b".to_string(), "x".to_string())]),
            },
        );
        assert!(matches(&["event.name==img", "event.labels.a.b==x"], &update));
        assert!(matches(&[r#"event.labels."a.b"==x"#], &update));
        assert!(!matches(&["event.labels.a==x"], &update));

        let unknown = Envelope {
            type_url: "example.com/Custom".into(),
            value: vec![0xff],
            ..exit.clone()
        };
        assert!(!matches(&["event.id==c1"], &unknown));
        assert!(matches(&["event.id!=c1"], &unknown));
    }

    /// An exchange with a tiny buffer, so a subscriber lags at once.
    struct Tiny(tokio::sync::broadcast::Sender<Arc<Envelope>>);

    impl Exchange for Tiny {
        fn publish(&self, envelope: Envelope) -> Result<(), corten_core::Error> {
            let _ = self.0.send(Arc::new(envelope));
            Ok(())
        }
        fn subscribe(&self) -> corten_core::events::Subscription {
            self.0.subscribe()
        }
    }

    fn numbered(n: usize) -> Envelope {
        envelope(
            "ns",
            &format!("/test/e{n}"),
            "containerd.events.ContainerDelete",
            &ev::ContainerDelete { id: n.to_string() },
        )
    }

    #[tokio::test]
    async fn a_lagging_subscriber_loses_the_oldest_and_goes_on() {
        use tokio_stream::StreamExt;

        let exchange = Arc::new(Tiny(tokio::sync::broadcast::channel(2).0));
        let (_stop, stopping) = Stopping::new();
        let service = EventsService {
            exchange: exchange.clone(),
            stopping,
        };
        let request = Request::new(SubscribeRequest {
            filters: vec![r#"topic!="/test/e4""#.into()],
        });
        let mut stream = service.subscribe(request).await.unwrap().into_inner();
        // Published before the forwarding task first runs: only the newest two are left.
        for n in 0..5 {
            exchange.publish(numbered(n)).unwrap();
        }
        let next = |m: Option<Result<EnvelopeMsg, Status>>| m.unwrap().unwrap().topic;
        assert_eq!(next(stream.next().await), "/test/e3");
        exchange.publish(numbered(5)).unwrap();
        assert_eq!(next(stream.next().await), "/test/e5", "filtered: e4");

        let bad = Request::new(SubscribeRequest {
            filters: vec!["topic==".into()],
        });
        let status = service.subscribe(bad).await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn forwarded_envelopes_are_checked() {
        let good = envelope_msg(&envelope(
            "ns",
            "/tasks/start",
            "containerd.events.TaskStart",
            &ev::TaskStart {
                container_id: "c".into(),
                pid: 1,
            },
        ));
        let e = forwarded(Some(good.clone())).unwrap();
        assert_eq!((e.namespace.as_str(), e.topic.as_str()), ("ns", "/tasks/start"));
        assert_eq!(e.type_url, "containerd.events.TaskStart");
        let bad = [
            EnvelopeMsg {
                namespace: "a/b".into(),
                ..good.clone()
            },
            EnvelopeMsg {
                topic: "tasks".into(),
                ..good.clone()
            },
            EnvelopeMsg {
                timestamp: None,
                ..good.clone()
            },
            EnvelopeMsg {
                event: None,
                ..good.clone()
            },
        ];
        for msg in bad {
            let status = forwarded(Some(msg.clone())).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{msg:?}");
        }
        assert_eq!(forwarded(None).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
