//! After a restart: every bundle under the state directory belongs to a
//! shim that may still be running its container. Live shims are
//! reconnected and their tasks come back; dead ones are cleaned up after
//! (with /tasks/exit and /tasks/delete); a live shim whose task is gone is
//! shut down. Work directories no task owns are removed last.

use std::{path::Path, sync::Arc};

use corten_api::containerd::task::v2::{ConnectRequest, ConnectResponse};
use futures::future::join_all;

use crate::{
    bootstrap::{self, Bootstrap},
    bundle::Bundle,
    client::ShimClient,
    error::ShimError,
    runtime::{open_process, Inner},
    shim_log,
    task::ShimTask,
};

pub(crate) async fn recover(inner: &Arc<Inner>) {
    let bundles = scan(&inner.state, inner);
    join_all(bundles.into_iter().map(|b| recover_one(inner, b))).await;
    remove_orphan_work_dirs(inner);
}

/// The bundles under `<state>/<ns>/<id>`; half-removed ones (hidden names)
/// are finished off.
fn scan(state: &Path, inner: &Inner) -> Vec<Bundle> {
    let mut bundles = Vec::new();
    for (namespace, ns_path) in subdirs(state) {
        if namespace.starts_with('.') {
            continue;
        }
        for (id, path) in subdirs(&ns_path) {
            if id.starts_with('.') {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!("remove {}: {e}", path.display());
                }
                continue;
            }
            bundles.push(inner.bundle(&namespace, &id));
        }
    }
    bundles
}

fn subdirs(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<_> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    dirs.sort();
    dirs
}

async fn recover_one(inner: &Arc<Inner>, bundle: Bundle) {
    let (namespace, id) = (bundle.namespace.clone(), bundle.id.clone());
    if bundle.is_empty().unwrap_or(false) {
        let _ = bundle.remove();
        return;
    }
    let binary = bootstrap::load_binary(&bundle.path).unwrap_or_else(|e| {
        tracing::warn!(%namespace, %id, "read {}: {e}", bootstrap::BINARY_FILE);
        None
    });
    let boot = match Bootstrap::load(&bundle.path) {
        Ok(Some(boot)) => boot,
        Ok(None) => {
            // The shim never got to listen: nothing ran, nothing to report.
            tracing::info!(%namespace, %id, "removing a bundle whose shim never started");
            if let Some(binary) = &binary {
                let _ = inner.command(binary, &bundle).delete(inner.timeouts.cleanup).await;
            }
            if let Err(e) = bundle.remove() {
                tracing::warn!(%namespace, %id, "remove bundle: {e}");
            }
            return;
        }
        Err(e) => {
            tracing::warn!(%namespace, %id, "{e}");
            inner.cleanup_dead(&bundle, binary.as_deref()).await;
            return;
        }
    };
    let connected = tokio::time::timeout(inner.timeouts.load, connect(&boot, &bundle))
        .await
        .unwrap_or_else(|_| {
            Err(ShimError::Timeout {
                what: "reconnect to the shim".into(),
                after: inner.timeouts.load,
            })
        });
    let (client, connect) = match connected {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%namespace, %id, "shim is gone ({e}); cleaning up after it");
            inner.cleanup_dead(&bundle, binary.as_deref()).await;
            return;
        }
    };
    let process = open_process(connect.shim_pid);
    if connect.task_pid == 0 {
        tracing::info!(%namespace, %id, "shim has no task left; shutting it down");
        inner.shut_down(&client, process.as_ref(), &bundle).await;
        if let Err(e) = bundle.remove() {
            tracing::warn!(%namespace, %id, "remove bundle: {e}");
        }
        return;
    }
    if binary.is_none() {
        tracing::warn!(%namespace, %id, "bundle has no {}: its shim's delete cannot run later", bootstrap::BINARY_FILE);
    }
    if let Err(e) = bundle.ensure_log_fifo() {
        tracing::warn!(%namespace, %id, "shim log FIFO: {e}");
    }
    let log = shim_log::follow(&bundle.log(), &namespace, &id)
        .map_err(|e| tracing::warn!(%namespace, %id, "follow the shim log: {e}"))
        .ok();
    let task = Arc::new(ShimTask::new(bundle, client, process, binary, connect.task_pid, log));
    inner.insert(task.clone());
    crate::watch::watch(inner, &task);
    tracing::info!(%namespace, %id, pid = connect.task_pid, "reconnected to the task's shim");
}

async fn connect(boot: &Bootstrap, bundle: &Bundle) -> Result<(ShimClient, ConnectResponse), ShimError> {
    let client = ShimClient::connect(&boot.address, boot.task_service(), &bundle.namespace).await?;
    let request = ConnectRequest { id: bundle.id.clone() };
    let response = client.call("Connect", &request, None).await?;
    Ok((client, response))
}

/// `<root>/<ns>/<id>` without a task: left by a bundle a reboot wiped.
fn remove_orphan_work_dirs(inner: &Inner) {
    for (namespace, ns_path) in subdirs(&inner.root) {
        for (id, path) in subdirs(&ns_path) {
            if !inner.contains(&namespace, &id) {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!("remove {}: {e}", path.display());
                }
            }
        }
    }
}
