//! `corten events [FILTER...]`: print the daemon's events as they happen,
//! one line each, as ctr prints them: the time, namespace, topic and the
//! event as JSON (field names as in the protobuf, empty fields left out).
//! With `--format json`, one JSON object per line.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use corten_api::containerd::{
    events as ev,
    services::{events::v1::SubscribeRequest, images::v1 as images},
    types::Mount,
};
use prost::Message;
use prost_types::{Any, Timestamp};

use super::{containers::base64, leases::system_time, Context};
use crate::{
    error::rpc,
    output::{self, Format},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only events matching any one filter, e.g. `topic=="/tasks/exit"` or `namespace==default`
    #[arg(value_name = "FILTER")]
    filters: Vec<String>,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut stream = conn
        .events()
        .subscribe(SubscribeRequest { filters: args.filters })
        .await
        .map_err(rpc)
        .context("subscribing to events")?
        .into_inner();
    while let Some(envelope) = stream.message().await.map_err(rpc).context("receiving events")? {
        let event = envelope.event.as_ref().map_or_else(|| "{}".to_string(), event_json);
        let line = match ctx.format {
            Format::Table => format!(
                "{} {} {} {}\n",
                go_time_string(envelope.timestamp.as_ref()),
                envelope.namespace,
                envelope.topic,
                event
            ),
            Format::Json => {
                let mut obj = Obj::default();
                obj.time("timestamp", envelope.timestamp.as_ref());
                obj.str("namespace", &envelope.namespace);
                obj.str("topic", &envelope.topic);
                obj.raw("event", event);
                obj.render() + "\n"
            }
        };
        output::print(&line)?;
    }
    Ok(())
}

/// A JSON object built field by field, in order, leaving out empty values
/// as Go's `omitempty` does.
#[derive(Default)]
struct Obj {
    fields: Vec<(&'static str, String)>,
}

impl Obj {
    fn raw(&mut self, key: &'static str, json: String) -> &mut Self {
        self.fields.push((key, json));
        self
    }

    fn str(&mut self, key: &'static str, value: &str) -> &mut Self {
        if !value.is_empty() {
            self.raw(key, serde_json::Value::from(value).to_string());
        }
        self
    }

    fn num(&mut self, key: &'static str, value: u32) -> &mut Self {
        if value != 0 {
            self.raw(key, value.to_string());
        }
        self
    }

    fn flag(&mut self, key: &'static str, value: bool) -> &mut Self {
        if value {
            self.raw(key, "true".to_string());
        }
        self
    }

    fn labels(&mut self, key: &'static str, labels: &HashMap<String, String>) -> &mut Self {
        if !labels.is_empty() {
            let sorted: BTreeMap<_, _> = labels.iter().collect();
            self.raw(key, serde_json::to_string(&sorted).unwrap_or_default());
        }
        self
    }

    fn time(&mut self, key: &'static str, ts: Option<&Timestamp>) -> &mut Self {
        if let Some(text) = go_rfc3339_nano(ts) {
            self.raw(key, serde_json::Value::from(text).to_string());
        }
        self
    }

    fn any(&mut self, key: &'static str, any: Option<&Any>) -> &mut Self {
        if let Some(any) = any {
            let mut obj = Obj::default();
            obj.str("type_url", &any.type_url);
            obj.str("value", &base64(&any.value));
            self.raw(key, obj.render());
        }
        self
    }

    fn mounts(&mut self, key: &'static str, mounts: &[Mount]) -> &mut Self {
        if !mounts.is_empty() {
            let items: Vec<String> = mounts
                .iter()
                .map(|m| {
                    let mut obj = Obj::default();
                    obj.str("type", &m.r#type)
                        .str("source", &m.source)
                        .str("target", &m.target);
                    if !m.options.is_empty() {
                        obj.raw("options", serde_json::to_string(&m.options).unwrap_or_default());
                    }
                    obj.render()
                })
                .collect();
            self.raw(key, format!("[{}]", items.join(",")));
        }
        self
    }

    fn render(&self) -> String {
        let body: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(*k)))
            .collect();
        format!("{{{}}}", body.join(","))
    }
}

fn decode<M: Message + Default>(any: &Any) -> Option<M> {
    M::decode(any.value.as_slice()).ok()
}

/// An event's payload as JSON, for the event types containerd publishes;
/// others show their type only.
fn event_json(any: &Any) -> String {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let mut o = Obj::default();
    let known = match name {
        "containerd.events.TaskCreate" => decode::<ev::TaskCreate>(any).map(|e| {
            o.str("container_id", &e.container_id)
                .str("bundle", &e.bundle)
                .mounts("rootfs", &e.rootfs);
            if let Some(io) = &e.io {
                let mut t = Obj::default();
                t.str("stdin", &io.stdin)
                    .str("stdout", &io.stdout)
                    .str("stderr", &io.stderr)
                    .flag("terminal", io.terminal);
                o.raw("io", t.render());
            }
            o.str("checkpoint", &e.checkpoint).num("pid", e.pid);
        }),
        "containerd.events.TaskStart" => decode::<ev::TaskStart>(any).map(|e| {
            o.str("container_id", &e.container_id).num("pid", e.pid);
        }),
        "containerd.events.TaskDelete" => decode::<ev::TaskDelete>(any).map(|e| {
            o.str("container_id", &e.container_id)
                .num("pid", e.pid)
                .num("exit_status", e.exit_status)
                .time("exited_at", e.exited_at.as_ref())
                .str("id", &e.id);
        }),
        "containerd.events.TaskExit" => decode::<ev::TaskExit>(any).map(|e| {
            o.str("container_id", &e.container_id)
                .str("id", &e.id)
                .num("pid", e.pid)
                .num("exit_status", e.exit_status)
                .time("exited_at", e.exited_at.as_ref());
        }),
        "containerd.events.TaskOOM" => decode::<ev::TaskOom>(any).map(|e| {
            o.str("container_id", &e.container_id);
        }),
        "containerd.events.TaskExecAdded" => decode::<ev::TaskExecAdded>(any).map(|e| {
            o.str("container_id", &e.container_id).str("exec_id", &e.exec_id);
        }),
        "containerd.events.TaskExecStarted" => decode::<ev::TaskExecStarted>(any).map(|e| {
            o.str("container_id", &e.container_id)
                .str("exec_id", &e.exec_id)
                .num("pid", e.pid);
        }),
        "containerd.events.TaskPaused" => decode::<ev::TaskPaused>(any).map(|e| {
            o.str("container_id", &e.container_id);
        }),
        "containerd.events.TaskResumed" => decode::<ev::TaskResumed>(any).map(|e| {
            o.str("container_id", &e.container_id);
        }),
        "containerd.events.TaskCheckpointed" => decode::<ev::TaskCheckpointed>(any).map(|e| {
            o.str("container_id", &e.container_id).str("checkpoint", &e.checkpoint);
        }),
        "containerd.events.ContainerCreate" => decode::<ev::ContainerCreate>(any).map(|e| {
            o.str("id", &e.id).str("image", &e.image);
            if let Some(r) = &e.runtime {
                let mut rt = Obj::default();
                rt.str("name", &r.name).any("options", r.options.as_ref());
                o.raw("runtime", rt.render());
            }
        }),
        "containerd.events.ContainerUpdate" => decode::<ev::ContainerUpdate>(any).map(|e| {
            o.str("id", &e.id)
                .str("image", &e.image)
                .labels("labels", &e.labels)
                .str("snapshot_key", &e.snapshot_key);
        }),
        "containerd.events.ContainerDelete" => decode::<ev::ContainerDelete>(any).map(|e| {
            o.str("id", &e.id);
        }),
        "containerd.events.SnapshotPrepare" => decode::<ev::SnapshotPrepare>(any).map(|e| {
            o.str("key", &e.key).str("parent", &e.parent);
        }),
        "containerd.events.SnapshotCommit" => decode::<ev::SnapshotCommit>(any).map(|e| {
            o.str("key", &e.key).str("name", &e.name);
        }),
        "containerd.events.SnapshotRemove" => decode::<ev::SnapshotRemove>(any).map(|e| {
            o.str("key", &e.key);
        }),
        "containerd.events.NamespaceCreate" => decode::<ev::NamespaceCreate>(any).map(|e| {
            o.str("name", &e.name).labels("labels", &e.labels);
        }),
        "containerd.events.NamespaceUpdate" => decode::<ev::NamespaceUpdate>(any).map(|e| {
            o.str("name", &e.name).labels("labels", &e.labels);
        }),
        "containerd.events.NamespaceDelete" => decode::<ev::NamespaceDelete>(any).map(|e| {
            o.str("name", &e.name);
        }),
        "containerd.events.ContentDelete" => decode::<ev::ContentDelete>(any).map(|e| {
            o.str("digest", &e.digest);
        }),
        "containerd.services.images.v1.ImageCreate" => decode::<images::ImageCreate>(any).map(|e| {
            o.str("name", &e.name).labels("labels", &e.labels);
        }),
        "containerd.services.images.v1.ImageUpdate" => decode::<images::ImageUpdate>(any).map(|e| {
            o.str("name", &e.name).labels("labels", &e.labels);
        }),
        "containerd.services.images.v1.ImageDelete" => decode::<images::ImageDelete>(any).map(|e| {
            o.str("name", &e.name);
        }),
        _ => None,
    };
    if known.is_none() {
        o = Obj::default();
        o.str("type_url", &any.type_url);
    }
    o.render()
}

/// Go's RFC 3339 with nanoseconds, trailing zeros of the fraction trimmed.
fn go_rfc3339_nano(ts: Option<&Timestamp>) -> Option<String> {
    let full = humantime::format_rfc3339_nanos(system_time(ts)?).to_string();
    let (main, fraction) = full.strip_suffix('Z')?.split_once('.')?;
    let fraction = fraction.trim_end_matches('0');
    Some(if fraction.is_empty() {
        format!("{main}Z")
    } else {
        format!("{main}.{fraction}Z")
    })
}

/// A time as Go prints one: `2006-01-02 15:04:05.999999999 +0000 UTC`.
fn go_time_string(ts: Option<&Timestamp>) -> String {
    match go_rfc3339_nano(ts) {
        Some(text) => format!("{} +0000 UTC", text.trim_end_matches('Z').replacen('T', " ", 1)),
        None => "0001-01-01 00:00:00 +0000 UTC".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    #[test]
    fn times_print_like_go() {
        // 2026-11-22 15:33:38 UTC
        let t = ts(1_795_361_618, 607_611_586);
        assert_eq!(go_time_string(t.as_ref()), "2026-11-22 15:33:38.607611586 +0000 UTC");
        assert_eq!(
            go_time_string(ts(1_795_361_618, 727_295_670).as_ref()),
            "2026-11-22 15:33:38.72729567 +0000 UTC"
        );
        assert_eq!(
            go_time_string(ts(1_795_361_618, 0).as_ref()),
            "2026-11-22 15:33:38 +0000 UTC"
        );
        assert_eq!(
            go_rfc3339_nano(ts(1_795_361_618, 746_507_234).as_ref()).unwrap(),
            "2026-11-22T15:33:38.746507234Z"
        );
    }

    /// The lines below are what ctr printed for the same events.
    #[test]
    fn events_print_like_ctr() {
        let exit = ev::TaskExit {
            container_id: "e1".into(),
            id: "e1".into(),
            pid: 21564,
            exit_status: 3,
            exited_at: ts(1_795_361_618, 746_507_234),
        };
        let any = corten_api::pack_any("containerd.events.TaskExit", &exit);
        assert_eq!(
            event_json(&any),
            r#"{"container_id":"e1","id":"e1","pid":21564,"exit_status":3,"exited_at":"2026-11-22T15:33:38.746507234Z"}"#
        );

        let create = ev::ContainerCreate {
            id: "e1".into(),
            image: "docker.io/library/bb:plain".into(),
            runtime: Some(ev::container_create::Runtime {
                name: "io.containerd.runc.v2".into(),
                options: Some(Any {
                    type_url: "containerd.runc.v1.Options".into(),
                    value: Vec::new(),
                }),
            }),
        };
        let any = corten_api::pack_any("containerd.events.ContainerCreate", &create);
        assert_eq!(
            event_json(&any),
            r#"{"id":"e1","image":"docker.io/library/bb:plain","runtime":{"name":"io.containerd.runc.v2","options":{"type_url":"containerd.runc.v1.Options"}}}"#
        );

        let task = ev::TaskCreate {
            container_id: "e1".into(),
            bundle: "/b/e1".into(),
            rootfs: vec![Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec!["index=off".into()],
            }],
            io: Some(ev::TaskIo {
                stdin: "/f/e1-stdin".into(),
                stdout: "/f/e1-stdout".into(),
                stderr: "/f/e1-stderr".into(),
                terminal: false,
            }),
            checkpoint: String::new(),
            pid: 21564,
        };
        let any = corten_api::pack_any("containerd.events.TaskCreate", &task);
        assert_eq!(
            event_json(&any),
            r#"{"container_id":"e1","bundle":"/b/e1","rootfs":[{"type":"overlay","source":"overlay","options":["index=off"]}],"io":{"stdin":"/f/e1-stdin","stdout":"/f/e1-stdout","stderr":"/f/e1-stderr"},"pid":21564}"#
        );

        let any = Any {
            type_url: "example.Unknown".into(),
            value: vec![1, 2],
        };
        assert_eq!(event_json(&any), r#"{"type_url":"example.Unknown"}"#);
    }
}
