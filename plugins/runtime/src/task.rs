//! One task: its shim connection and process, its bundle, and the task
//! API calls made on it.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::Duration,
};

use async_trait::async_trait;
use corten_api::containerd::task::v2::{
    CloseIoRequest, DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ResumeRequest, StartRequest, StartResponse, StateRequest, StateResponse,
    StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use corten_core::{
    any_value::AnyValue,
    runtime::{Exit, ProcessInfo, ProcessState, Status, Stdio, Task},
    Error,
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{bundle::Bundle, client::ShimClient, convert, error::ShimError, pidfd::ShimProcess};

pub struct ShimTask {
    pub(crate) bundle: Bundle,
    pub(crate) client: ShimClient,
    /// The shim process, when its pid could be opened.
    pub(crate) process: Option<ShimProcess>,
    /// The shim binary, for its `delete` subcommand.
    pub(crate) binary: Option<PathBuf>,
    pid: AtomicU32,
    /// The init process's end, once a dead shim has been cleaned up after.
    dead_exit: watch::Sender<Option<Exit>>,
    log: Mutex<Option<JoinHandle<()>>>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl ShimTask {
    pub(crate) fn new(
        bundle: Bundle,
        client: ShimClient,
        process: Option<ShimProcess>,
        binary: Option<PathBuf>,
        pid: u32,
        log: Option<JoinHandle<()>>,
    ) -> Self {
        ShimTask {
            bundle,
            client,
            process,
            binary,
            pid: AtomicU32::new(pid),
            dead_exit: watch::channel(None).0,
            log: Mutex::new(log),
            watcher: Mutex::new(None),
        }
    }

    pub(crate) fn set_watcher(&self, handle: JoinHandle<()>) {
        *self.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }

    /// Stops the watcher and the log pump: the task is being forgotten.
    /// Not to be called from the watcher itself.
    pub(crate) fn detach(&self) {
        if let Some(h) = self.watcher.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
        self.stop_log();
    }

    pub(crate) fn stop_log(&self) {
        if let Some(h) = self.log.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
    }

    /// Records the init process's end after its shim died, for waiters.
    pub(crate) fn set_dead_exit(&self, exit: Exit) {
        self.dead_exit.send_replace(Some(exit));
    }

    /// The exit recorded by the dead-shim cleanup, waiting up to `limit`.
    pub(crate) async fn dead_exit(&self, limit: Duration) -> Option<Exit> {
        let mut rx = self.dead_exit.subscribe();
        let exit = tokio::time::timeout(limit, rx.wait_for(Option::is_some))
            .await
            .ok()?
            .ok()?;
        *exit
    }

    pub(crate) async fn gone(&self) {
        gone(&self.client, self.process.as_ref()).await
    }

    async fn call<Q, R>(&self, method: &'static str, request: &Q) -> Result<R, Error>
    where
        Q: prost::Message,
        R: prost::Message + Default,
    {
        self.client.call(method, request, None).await.map_err(Error::from)
    }

    pub(crate) async fn delete_init(&self) -> Result<Exit, ShimError> {
        self.delete_exec("").await
    }

    async fn delete_exec(&self, exec_id: &str) -> Result<Exit, ShimError> {
        let request = DeleteRequest {
            id: self.bundle.id.clone(),
            exec_id: exec_id.into(),
        };
        match self.client.call::<_, DeleteResponse>("Delete", &request, None).await {
            Ok(r) => Ok(exit(r.pid, r.exit_status, r.exited_at.as_ref())),
            Err(e) => Err(self.classify_delete_error(exec_id, e).await),
        }
    }

    /// runc shims refuse to delete a live process with an error of no
    /// class (Unknown); it is a FailedPrecondition, which clients test for.
    async fn classify_delete_error(&self, exec_id: &str, e: ShimError) -> ShimError {
        let ShimError::Status { method, code, message } = e else {
            return e;
        };
        if code != ttrpc::Code::UNKNOWN as i32 {
            return ShimError::Status { method, code, message };
        }
        let live = match self.state(exec_id).await {
            Ok(s) => matches!(s.status, Status::Running | Status::Paused | Status::Pausing),
            Err(_) => false,
        };
        let code = if live {
            ttrpc::Code::FAILED_PRECONDITION as i32
        } else {
            code
        };
        ShimError::Status { method, code, message }
    }
}

/// Resolves when the shim process has exited or its connection closed.
pub(crate) async fn gone(client: &ShimClient, process: Option<&ShimProcess>) {
    let exited = async {
        match process {
            Some(p) if p.exited().await.is_ok() => {}
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = exited => {}
        _ = client.closed() => {}
    }
}

/// Waits up to `limit` for the shim to go; kills it if it does not.
pub(crate) async fn wait_gone_or_kill(client: &ShimClient, process: Option<&ShimProcess>, limit: Duration) {
    if tokio::time::timeout(limit, gone(client, process)).await.is_ok() {
        return;
    }
    let Some(process) = process else {
        tracing::warn!("shim did not exit after {limit:?} and its pid is unknown");
        return;
    };
    tracing::warn!(pid = process.pid, "shim did not exit after {limit:?}; killing it");
    if let Err(e) = process.kill() {
        tracing::warn!(pid = process.pid, "kill shim: {e}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), process.exited()).await;
}

pub(crate) fn exit(pid: u32, exit_status: u32, exited_at: Option<&prost_types::Timestamp>) -> Exit {
    Exit {
        pid,
        exit_status,
        exited_at: convert::time(exited_at),
    }
}

#[async_trait]
impl Task for ShimTask {
    fn id(&self) -> &str {
        &self.bundle.id
    }

    fn namespace(&self) -> &str {
        &self.bundle.namespace
    }

    fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    fn bundle(&self) -> PathBuf {
        self.bundle.path.clone()
    }

    async fn state(&self, exec_id: &str) -> Result<ProcessState, Error> {
        let request = StateRequest {
            id: self.bundle.id.clone(),
            exec_id: exec_id.into(),
        };
        let r: StateResponse = self.call("State", &request).await?;
        Ok(ProcessState {
            container_id: self.bundle.id.clone(),
            exec_id: exec_id.into(),
            pid: r.pid,
            status: convert::status(r.status),
            io: Stdio {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                terminal: r.terminal,
            },
            exit_status: r.exit_status,
            exited_at: convert::time(r.exited_at.as_ref()),
        })
    }

    async fn start(&self, exec_id: &str) -> Result<u32, Error> {
        let request = StartRequest {
            id: self.bundle.id.clone(),
            exec_id: exec_id.into(),
        };
        let r: StartResponse = self.call("Start", &request).await?;
        if exec_id.is_empty() {
            self.pid.store(r.pid, Ordering::Relaxed);
        }
        Ok(r.pid)
    }

    async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<(), Error> {
        let request = KillRequest {
            id: self.bundle.id.clone(),
            exec_id: exec_id.into(),
            signal,
            all,
        };
        self.call::<_, ()>("Kill", &request).await
    }

    async fn exec(&self, exec_id: &str, spec: AnyValue, io: Stdio) -> Result<(), Error> {
        let request = ExecProcessRequest {
            id: self.bundle.id.clone(),
            exec_id: exec_id.into(),
            terminal: io.terminal,
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
            spec: Some(convert::any(&spec)),
        };
        self.call::<_, ()>("Exec", &request).await
    }

    async fn delete_process(&self, exec_id: &str) -> Result<Exit, Error> {
        if exec_id.is_empty() {
            return Err(Error::InvalidArgument(
                "the init process is deleted with its task, not as a process".into(),
            ));
        }
        self.delete_exec(exec_id).await.map_err(Error::from)
    }

    async fn pids(&self) -> Result<Vec<ProcessInfo>, Error> {
        let request = PidsRequest {
            id: self.bundle.id.clone(),
        };
        let r: PidsResponse = self.call("Pids", &request).await?;
        Ok(r.processes
            .into_iter()
            .map(|p| ProcessInfo {
                pid: p.pid,
                info: p.info.map(convert::any_value),
            })
            .collect())
    }

    async fn pause(&self) -> Result<(), Error> {
        let request = PauseRequest {
            id: self.bundle.id.clone(),
        };
        self.call::<_, ()>("Pause", &request).await
    }

    async fn resume(&self) -> Result<(), Error> {
        let request = ResumeRequest {
            id: self.bundle.id.clone(),
        };
        self.call::<_, ()>("Resume", &request).await
    }

    async fn resize_pty(&self, exec_id: &str, width: u32, height: u32) -> Result<(), Error> {
        let request = ResizePtyRequest {
            id: self.bundle.id.clone(),
            exec_id: exec_id.into(),
            width,
            height,
        };
        self.call::<_, ()>("ResizePty", &request).await
    }

    async fn close_io(&self, exec_id: &str, stdin: bool) -> Result<(), Error> {
        let request = CloseIoRequest {
            id: self.bundle.id.clone(),
            exec_id: exec_id.into(),
            stdin,
        };
        self.call::<_, ()>("CloseIO", &request).await
    }

    async fn update(&self, resources: Option<AnyValue>, annotations: BTreeMap<String, String>) -> Result<(), Error> {
        let request = UpdateTaskRequest {
            id: self.bundle.id.clone(),
            resources: resources.as_ref().map(convert::any),
            annotations: annotations.into_iter().collect(),
        };
        self.call::<_, ()>("Update", &request).await
    }

    async fn wait(&self, exec_id: &str) -> Result<Exit, Error> {
        let request = WaitRequest {
            id: self.bundle.id.clone(),
            exec_id: exec_id.into(),
        };
        match self.client.call::<_, WaitResponse>("Wait", &request, None).await {
            Ok(r) => {
                // WaitResponse carries no pid; the init process's is known.
                let pid = if exec_id.is_empty() { self.pid() } else { 0 };
                Ok(exit(pid, r.exit_status, r.exited_at.as_ref()))
            }
            // The shim died: the init process's end is what the cleanup
            // after it reports (an exec'd process just ends with its shim).
            Err(e) if e.is_disconnected() && exec_id.is_empty() => {
                match self.dead_exit(Duration::from_secs(30)).await {
                    Some(exit) => Ok(exit),
                    None => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn stats(&self) -> Result<Option<AnyValue>, Error> {
        let request = StatsRequest {
            id: self.bundle.id.clone(),
        };
        let r: StatsResponse = self.call("Stats", &request).await?;
        Ok(r.stats.map(convert::any_value))
    }
}
