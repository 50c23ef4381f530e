//! One watcher per task: when its shim dies on its own (the process ends or
//! the connection closes) and the task is still registered, the watcher
//! cleans up after it and reports the task's end.

use std::sync::Arc;

use crate::{runtime::Inner, task::ShimTask};

pub(crate) fn watch(inner: &Arc<Inner>, task: &Arc<ShimTask>) {
    let runtime = Arc::downgrade(inner);
    let mut closing = inner.closing();
    let watched = task.clone();
    let handle = tokio::spawn(async move {
        tokio::select! {
            _ = watched.gone() => {}
            // The runtime closes: the shim outlives it.
            _ = closing.wait_for(|c| *c) => return,
        }
        let Some(inner) = runtime.upgrade() else { return };
        if !inner.take_if_same(&watched) {
            // Deleted on purpose: whoever took it cleans up.
            return;
        }
        let (namespace, id) = (&watched.bundle.namespace, &watched.bundle.id);
        tracing::warn!(%namespace, %id, "shim died; cleaning up after it");
        watched.stop_log();
        let exit = inner.cleanup_dead(&watched.bundle, watched.binary.as_deref()).await;
        watched.set_dead_exit(exit);
    });
    task.set_watcher(handle);
}
