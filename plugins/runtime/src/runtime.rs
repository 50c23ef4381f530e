//! The runtime: tasks by namespace and id, each run by its own shim.
//!
//! Creating a task lays out its bundle, starts a shim and creates the task
//! in it; any failure undoes all of that. Deleting one deletes its init
//! process in the shim, asks the shim to exit and sets the bundle aside,
//! then answers; the shim's exit is awaited (it is killed if it lingers)
//! and the bundle removed after the answer. A shim that dies on its own is
//! cleaned up after by its watcher.
//!
//! Creates and deletes run as their own tokio tasks, so a client that
//! gives up half-way never leaves a half-made bundle or a stray shim.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use corten_api::containerd::{
    task::v2::{
        ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse,
        ShutdownRequest,
    },
    types::Mount as WireMount,
};
use corten_core::{
    events::Exchange,
    identifiers,
    runtime::{CreateOpts, Exit, Runtime, Task},
    Error,
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    binary::Resolver,
    bootstrap::{self, Bootstrap},
    bundle::Bundle,
    client::ShimClient,
    command::{ShimCommand, ShimEnv},
    convert,
    error::ShimError,
    events,
    forward::ForwardServer,
    metrics::TaskCollector,
    pidfd::ShimProcess,
    recover, shim_log,
    task::{self, ShimTask},
};

/// containerd's `[timeouts]` for shims, with its defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Reconnecting to a shim after a restart (`io.containerd.timeout.shim.load`).
    pub load: Duration,
    /// Cleaning up after a dead shim (`io.containerd.timeout.shim.cleanup`).
    pub cleanup: Duration,
    /// A shim's exit after Shutdown (`io.containerd.timeout.shim.shutdown`).
    pub shutdown: Duration,
    /// One State or Stats call (`io.containerd.timeout.task.state`).
    pub state: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            load: Duration::from_secs(5),
            cleanup: Duration::from_secs(5),
            shutdown: Duration::from_secs(3),
            state: Duration::from_secs(2),
        }
    }
}

impl Timeouts {
    /// Each timeout from `lookup` (a config's `[timeouts]`), else its default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<Duration>) -> Self {
        let d = Timeouts::default();
        Timeouts {
            load: lookup("io.containerd.timeout.shim.load").unwrap_or(d.load),
            cleanup: lookup("io.containerd.timeout.shim.cleanup").unwrap_or(d.cleanup),
            shutdown: lookup("io.containerd.timeout.shim.shutdown").unwrap_or(d.shutdown),
            state: lookup("io.containerd.timeout.task.state").unwrap_or(d.state),
        }
    }
}

/// What the runtime is made of.
pub struct Options {
    /// `<root>/io.containerd.runtime.v2.task`: work directories.
    pub root: PathBuf,
    /// `<state>/io.containerd.runtime.v2.task`: bundles.
    pub state: PathBuf,
    pub grpc_address: String,
    /// Served here for shims' events.
    pub ttrpc_address: String,
    pub ttrpc_uid: u32,
    pub ttrpc_gid: u32,
    pub exchange: Arc<dyn Exchange>,
    pub timeouts: Timeouts,
    pub sched_core: bool,
    /// Where shim binaries are found.
    pub resolver: Resolver,
    /// Given to shims as `-publish-binary`: the daemon's own binary.
    pub publish_binary: PathBuf,
}

enum Slot {
    /// A create in progress holds the name.
    Creating,
    Ready(Arc<ShimTask>),
}

type Key = (String, String);

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) env: ShimEnv,
    pub(crate) exchange: Arc<dyn Exchange>,
    pub(crate) timeouts: Timeouts,
    resolver: Resolver,
    tasks: Mutex<BTreeMap<Key, Slot>>,
    /// Set when the runtime closes: watchers stop, shims keep running.
    closing: watch::Sender<bool>,
}

/// What a create has brought up so far, for undoing it.
#[derive(Default)]
struct Launched {
    log: Option<JoinHandle<()>>,
    client: Option<ShimClient>,
    process: Option<ShimProcess>,
}

impl Inner {
    fn tasks(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Slot>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(namespace: &str, id: &str) -> Key {
        (namespace.to_string(), id.to_string())
    }

    fn reserve(&self, namespace: &str, id: &str) -> Result<(), ShimError> {
        let mut tasks = self.tasks();
        let key = Self::key(namespace, id);
        if tasks.contains_key(&key) {
            return Err(ShimError::AlreadyExists(id.into()));
        }
        tasks.insert(key, Slot::Creating);
        Ok(())
    }

    fn unreserve(&self, namespace: &str, id: &str) {
        let mut tasks = self.tasks();
        let key = Self::key(namespace, id);
        if matches!(tasks.get(&key), Some(Slot::Creating)) {
            tasks.remove(&key);
        }
    }

    /// Adds a ready task (a create that finished, or one recovered).
    pub(crate) fn insert(&self, task: Arc<ShimTask>) {
        let key = Self::key(&task.bundle.namespace, &task.bundle.id);
        self.tasks().insert(key, Slot::Ready(task));
    }

    pub(crate) fn get(&self, namespace: &str, id: &str) -> Option<Arc<ShimTask>> {
        match self.tasks().get(&Self::key(namespace, id)) {
            Some(Slot::Ready(task)) => Some(task.clone()),
            _ => None,
        }
    }

    pub(crate) fn contains(&self, namespace: &str, id: &str) -> bool {
        self.tasks().contains_key(&Self::key(namespace, id))
    }

    /// Removes `task` if it is still the one registered under its name;
    /// whoever gets `true` owns its cleanup.
    pub(crate) fn take_if_same(&self, task: &Arc<ShimTask>) -> bool {
        let mut tasks = self.tasks();
        let key = Self::key(&task.bundle.namespace, &task.bundle.id);
        match tasks.get(&key) {
            Some(Slot::Ready(t)) if Arc::ptr_eq(t, task) => {
                tasks.remove(&key);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn all(&self) -> Vec<Arc<ShimTask>> {
        self.tasks()
            .values()
            .filter_map(|s| match s {
                Slot::Ready(t) => Some(t.clone()),
                Slot::Creating => None,
            })
            .collect()
    }

    pub(crate) fn bundle(&self, namespace: &str, id: &str) -> Bundle {
        Bundle::at(&self.state, &self.root, namespace, id)
    }

    pub(crate) fn command<'a>(&'a self, binary: &'a Path, bundle: &'a Bundle) -> ShimCommand<'a> {
        ShimCommand {
            env: &self.env,
            binary,
            namespace: &bundle.namespace,
            id: &bundle.id,
            bundle: &bundle.path,
        }
    }

    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    async fn create(self: Arc<Self>, namespace: String, id: String, opts: CreateOpts) -> Result<Arc<ShimTask>, Error> {
        // Resolved first: an unknown runtime leaves nothing behind.
        let binary = self.resolver.resolve(&opts.runtime)?;
        self.reserve(&namespace, &id)?;
        let bundle = self.bundle(&namespace, &id);
        if let Err(e) = bundle.create(&opts.spec.value) {
            self.unreserve(&namespace, &id);
            return Err(if e.kind() == ErrorKind::AlreadyExists {
                ShimError::AlreadyExists(id)
            } else {
                ShimError::io(format!("create bundle {}", bundle.path.display()), e)
            }
            .into());
        }
        let mut launched = Launched::default();
        match self.launch(&bundle, &binary, &opts, &mut launched).await {
            Ok(task) => {
                self.insert(task.clone());
                crate::watch::watch(&self, &task);
                Ok(task)
            }
            Err(e) => {
                tracing::warn!(namespace, id, "create task: {e}");
                self.abandon(&bundle, &binary, launched).await;
                self.unreserve(&namespace, &id);
                Err(e.into())
            }
        }
    }

    /// Starts the shim and creates the task in it.
    async fn launch(
        &self,
        bundle: &Bundle,
        binary: &Path,
        opts: &CreateOpts,
        launched: &mut Launched,
    ) -> Result<Arc<ShimTask>, ShimError> {
        let (namespace, id) = (bundle.namespace.as_str(), bundle.id.as_str());
        launched.log = Some(
            shim_log::follow(&bundle.log(), namespace, id)
                .map_err(|e| ShimError::io(format!("open {}", bundle.log().display()), e))?,
        );
        let started = std::time::Instant::now();
        let output = self
            .command(binary, bundle)
            .start(opts.runtime_options.as_ref())
            .await?;
        let boot = Bootstrap::parse(&output)?;
        tracing::debug!(
            namespace, id, address = %boot.address, version = boot.version, elapsed = ?started.elapsed(),
            "shim started"
        );
        boot.save(&bundle.path)
            .and_then(|()| bootstrap::save_binary(&bundle.path, binary))
            .map_err(|e| ShimError::io(format!("record the shim in {}", bundle.path.display()), e))?;
        let client = ShimClient::connect(&boot.address, boot.task_service(), namespace).await?;
        launched.client = Some(client.clone());

        let io = &opts.io;
        let request = CreateTaskRequest {
            id: id.into(),
            bundle: bundle.path.to_string_lossy().into_owned(),
            rootfs: opts
                .rootfs
                .iter()
                .map(|m| WireMount {
                    r#type: m.kind.clone(),
                    source: m.source.clone(),
                    target: m.target.clone(),
                    options: m.options.clone(),
                })
                .collect(),
            terminal: io.terminal,
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            checkpoint: opts.checkpoint.clone(),
            parent_checkpoint: String::new(),
            // As containerd: the task options, else the runtime's.
            options: opts
                .task_options
                .as_ref()
                .or(opts.runtime_options.as_ref())
                .map(convert::any),
        };
        // Connect (for the shim's pid) goes out beside Create rather than
        // before it: its round trip then hides behind `runc create`. It is
        // bounded no more than Create is: runc shims answer it only once a
        // Create that holds their lock is done.
        let connect_request = ConnectRequest { id: id.into() };
        let connect = client.call::<_, ConnectResponse>("Connect", &connect_request, None);
        let create = client.call::<_, CreateTaskResponse>("Create", &request, None);
        let (connect, created) = tokio::join!(connect, create);
        launched.process = open_process(connect?.shim_pid);
        // Prefixed as containerd prefixes it, so a failed `runc create`
        // reads the same through either daemon.
        let created = created.map_err(|e| match e {
            ShimError::Status { method, code, message } => ShimError::Status {
                method,
                code,
                message: format!("failed to create shim task: {message}"),
            },
            other => other,
        })?;
        tracing::debug!(namespace, id, pid = created.pid, elapsed = ?started.elapsed(), "task created");
        Ok(Arc::new(ShimTask::new(
            bundle.clone(),
            client,
            launched.process.clone(),
            Some(binary.to_path_buf()),
            created.pid,
            launched.log.take(),
        )))
    }

    /// Undoes a create that failed: the shim is stopped, the shim binary's
    /// `delete` removes what runc and the shim left, then the bundle goes.
    async fn abandon(&self, bundle: &Bundle, binary: &Path, launched: Launched) {
        if let Some(client) = &launched.client {
            let request = DeleteRequest {
                id: bundle.id.clone(),
                exec_id: String::new(),
            };
            let _ = client
                .call::<_, DeleteResponse>("Delete", &request, Some(self.timeouts.cleanup))
                .await;
            self.shut_down(client, launched.process.as_ref(), bundle).await;
            if let Err(e) = self.command(binary, bundle).delete(self.timeouts.cleanup).await {
                let (namespace, id) = (&bundle.namespace, &bundle.id);
                tracing::debug!(%namespace, %id, "shim delete after a failed create: {e}");
            }
        }
        if let Some(log) = launched.log {
            log.abort();
        }
        if let Err(e) = bundle.remove() {
            tracing::warn!(namespace = %bundle.namespace, id = %bundle.id, "remove bundle: {e}");
        }
    }

    /// Asks the shim to exit and waits for it (killing it after the
    /// shutdown timeout).
    pub(crate) async fn shut_down(&self, client: &ShimClient, process: Option<&ShimProcess>, bundle: &Bundle) {
        self.ask_to_exit(client, bundle).await;
        task::wait_gone_or_kill(client, process, self.timeouts.shutdown).await;
    }

    /// Asks the shim to exit, waiting for its answer (or its end) only.
    async fn ask_to_exit(&self, client: &ShimClient, bundle: &Bundle) {
        let request = ShutdownRequest {
            id: bundle.id.clone(),
            now: false,
        };
        match client
            .call::<_, ()>("Shutdown", &request, Some(self.timeouts.shutdown))
            .await
        {
            // The shim may exit before its answer is read.
            Ok(()) => {}
            Err(e) if e.is_disconnected() => {}
            Err(e) => tracing::debug!(namespace = %bundle.namespace, id = %bundle.id, "shim Shutdown: {e}"),
        }
    }

    async fn delete(self: Arc<Self>, task: Arc<ShimTask>) -> Result<Exit, Error> {
        match task.delete_init().await {
            Ok(exit) => {
                // Out of the table first: the shim's exit is no death to report.
                self.take_if_same(&task);
                task.detach();
                self.ask_to_exit(&task.client, &task.bundle).await;
                // Before the answer, the root filesystem is unmounted and
                // the id freed for a new bundle. The shim's exit (a Go
                // runtime winding down) and the removal of the bundle's
                // files (a dozen unlinks, each discarding blocks at once on
                // a disk mounted with `discard`) take 2-3 ms more, which
                // the client need not wait for.
                let aside = task.bundle.set_aside();
                let inner = self.clone();
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    task::wait_gone_or_kill(&task.client, task.process.as_ref(), inner.timeouts.shutdown).await;
                    let (namespace, id) = (&task.bundle.namespace, &task.bundle.id);
                    tracing::debug!(%namespace, %id, elapsed = ?started.elapsed(), "shim exited");
                    let removed = match aside {
                        Ok(aside) => tokio::task::spawn_blocking(move || aside.remove())
                            .await
                            .unwrap_or_else(|e| Err(std::io::Error::other(e))),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = removed {
                        tracing::warn!(%namespace, %id, "remove bundle: {e}");
                    }
                });
                Ok(exit)
            }
            Err(e) if e.is_disconnected() => {
                if self.take_if_same(&task) {
                    task.detach();
                    let exit = self.cleanup_dead(&task.bundle, task.binary.as_deref()).await;
                    task.set_dead_exit(exit);
                    Ok(exit)
                } else {
                    // Its watcher is cleaning up after it already.
                    task.dead_exit(self.timeouts.cleanup * 2)
                        .await
                        .ok_or_else(|| Error::from(e))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// After a shim died: its binary's `delete` removes the container and
    /// reports the init process's end (255 if it cannot), the bundle is
    /// removed, and /tasks/exit and /tasks/delete are published for it.
    pub(crate) async fn cleanup_dead(&self, bundle: &Bundle, binary: Option<&Path>) -> Exit {
        let (namespace, id) = (bundle.namespace.as_str(), bundle.id.as_str());
        let boot = Bootstrap::load(&bundle.path).ok().flatten();
        let reported = match binary {
            Some(binary) => match self.command(binary, bundle).delete(self.timeouts.cleanup).await {
                Ok(r) => Some(task::exit(r.pid, r.exit_status, r.exited_at.as_ref())),
                Err(e) => {
                    tracing::warn!(namespace, id, "clean up after dead shim: {e}");
                    None
                }
            },
            None => None,
        };
        let mut exit = reported.unwrap_or(Exit {
            pid: 0,
            exit_status: 255,
            exited_at: None,
        });
        exit.exited_at = exit.exited_at.or_else(|| Some(SystemTime::now()));
        if let Some(boot) = boot {
            boot.remove_stale_socket();
        }
        if let Err(e) = bundle.remove() {
            tracing::warn!(namespace, id, "remove bundle: {e}");
        }
        events::publish_dead_task(&self.exchange, namespace, id, &exit);
        exit
    }
}

/// The shim's pidfd; without one (another pid namespace) the connection
/// closing is the only sign of its death.
pub(crate) fn open_process(pid: u32) -> Option<ShimProcess> {
    match ShimProcess::open(pid) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!(pid, "open shim pidfd: {e}");
            None
        }
    }
}

/// The `io.containerd.runtime.v2.task` runtime.
pub struct ShimRuntime {
    inner: Arc<Inner>,
    forward: tokio::sync::Mutex<Option<ForwardServer>>,
}

impl ShimRuntime {
    /// Serves Events.Forward on the ttrpc address, then reconnects to the
    /// shims of the bundles found on disk.
    pub async fn start(options: Options) -> Result<Arc<Self>, Error> {
        for dir in [&options.root, &options.state] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir)
                .map_err(|e| Error::internal(&format!("create {}", dir.display()), e))?;
        }
        let forward = ForwardServer::start(
            &options.ttrpc_address,
            options.ttrpc_uid,
            options.ttrpc_gid,
            options.exchange.clone(),
        )
        .await?;
        let inner = Arc::new(Inner {
            root: options.root,
            state: options.state,
            env: ShimEnv {
                grpc_address: options.grpc_address,
                ttrpc_address: options.ttrpc_address,
                publish_binary: options.publish_binary,
                sched_core: options.sched_core,
            },
            exchange: options.exchange,
            timeouts: options.timeouts,
            resolver: options.resolver,
            tasks: Mutex::new(BTreeMap::new()),
            closing: watch::channel(false).0,
        });
        recover::recover(&inner).await;
        Ok(Arc::new(ShimRuntime {
            inner,
            forward: tokio::sync::Mutex::new(Some(forward)),
        }))
    }

    /// A Prometheus collector of every task's cgroup statistics.
    pub fn collector(&self) -> TaskCollector {
        TaskCollector::new(Arc::downgrade(&self.inner), self.inner.timeouts.state)
    }

    /// Stops serving events and lets go of the shims, which keep running
    /// with their containers for the next daemon to pick up.
    pub async fn close(&self) {
        self.inner.closing.send_replace(true);
        let tasks = std::mem::take(&mut *self.inner.tasks());
        for slot in tasks.into_values() {
            if let Slot::Ready(task) = slot {
                task.detach();
            }
        }
        if let Some(forward) = self.forward.lock().await.take() {
            forward.stop().await;
        }
    }
}

fn ids(namespace: &str, id: &str) -> Result<(), Error> {
    identifiers::validate(namespace)?;
    identifiers::validate(id)
}

/// Worded as containerd words it: clients show the text as it comes.
fn not_found(id: &str) -> Error {
    Error::NotFound(format!("task {id} not found"))
}

fn joined<T>(r: Result<Result<T, Error>, tokio::task::JoinError>) -> Result<T, Error> {
    r.unwrap_or_else(|e| Err(Error::internal("runtime task", e)))
}

#[async_trait]
impl Runtime for ShimRuntime {
    async fn create(&self, namespace: &str, id: &str, opts: CreateOpts) -> Result<Arc<dyn Task>, Error> {
        ids(namespace, id)?;
        let work = self.inner.clone().create(namespace.into(), id.into(), opts);
        let task = joined(tokio::spawn(work).await)?;
        Ok(task)
    }

    async fn get(&self, namespace: &str, id: &str) -> Result<Arc<dyn Task>, Error> {
        match self.inner.get(namespace, id) {
            Some(task) => Ok(task),
            None => Err(not_found(id)),
        }
    }

    async fn list(&self, namespace: &str) -> Vec<Arc<dyn Task>> {
        self.inner
            .tasks()
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .filter_map(|(_, slot)| match slot {
                Slot::Ready(task) => Some(task.clone() as Arc<dyn Task>),
                Slot::Creating => None,
            })
            .collect()
    }

    async fn delete(&self, namespace: &str, id: &str) -> Result<Exit, Error> {
        let task = self.inner.get(namespace, id).ok_or_else(|| not_found(id))?;
        joined(tokio::spawn(self.inner.clone().delete(task)).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_from_config_else_containerds_defaults() {
        let t = Timeouts::from_lookup(|key| (key == "io.containerd.timeout.shim.load").then(|| Duration::from_secs(9)));
        assert_eq!(
            t,
            Timeouts {
                load: Duration::from_secs(9),
                ..Timeouts::default()
            }
        );
        assert_eq!(Timeouts::default().shutdown, Duration::from_secs(3));
    }
}
