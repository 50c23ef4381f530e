//! The events the runtime publishes itself. A live shim publishes its
//! task's lifecycle events (create, start, exit, delete, exec-added,
//! exec-started, paused, resumed, oom) through Events.Forward; only when a
//! shim dies does the runtime speak for it, with /tasks/exit and
//! /tasks/delete.

use std::{sync::Arc, time::SystemTime};

use corten_api::containerd::events::{TaskDelete, TaskExit};
use corten_core::{
    events::{Envelope, Exchange},
    runtime::Exit,
};
use prost::Message;

use crate::convert;

pub const TOPIC_EXIT: &str = "/tasks/exit";
pub const TOPIC_DELETE: &str = "/tasks/delete";
pub const TYPE_EXIT: &str = "containerd.events.TaskExit";
pub const TYPE_DELETE: &str = "containerd.events.TaskDelete";

/// Publishes /tasks/exit then /tasks/delete for the init process of
/// `namespace`/`id`.
pub fn publish_dead_task(exchange: &Arc<dyn Exchange>, namespace: &str, id: &str, exit: &Exit) {
    let exited_at = exit.exited_at.map(convert::timestamp);
    let task_exit = TaskExit {
        container_id: id.into(),
        id: id.into(),
        pid: exit.pid,
        exit_status: exit.exit_status,
        exited_at,
    };
    let task_delete = TaskDelete {
        container_id: id.into(),
        pid: exit.pid,
        exit_status: exit.exit_status,
        exited_at,
        id: String::new(),
    };
    publish(exchange, namespace, TOPIC_EXIT, TYPE_EXIT, task_exit.encode_to_vec());
    publish(
        exchange,
        namespace,
        TOPIC_DELETE,
        TYPE_DELETE,
        task_delete.encode_to_vec(),
    );
}

fn publish(exchange: &Arc<dyn Exchange>, namespace: &str, topic: &str, type_url: &str, value: Vec<u8>) {
    let envelope = Envelope {
        timestamp: SystemTime::now(),
        namespace: namespace.into(),
        topic: topic.into(),
        type_url: type_url.into(),
        value,
    };
    if let Err(e) = exchange.publish(envelope) {
        tracing::warn!(namespace, topic, "publish: {e}");
    }
}
