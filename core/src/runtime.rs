//! The task runtime interface: what the tasks service asks of a runtime
//! plugin (`io.containerd.runtime.v2.task`), in domain types.
//!
//! A task is a container's running side: an init process and the exec'd
//! processes beside it, owned by one shim. Every process is named by its
//! exec id, the init process by the empty string. The runtime owns bundles
//! and shims; the caller owns the container record and passes what the task
//! needs from it in [`CreateOpts`].

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::SystemTime};

use async_trait::async_trait;

use crate::{any_value::AnyValue, mount::Mount, Error};

/// The plugin type of task runtimes.
pub const PLUGIN_TYPE: &str = "io.containerd.runtime.v2";

/// The type URL containerd's clients use for a JSON OCI runtime spec in an `Any`.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// The type URL for a JSON OCI process spec (exec).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    #[default]
    Unknown,
    Created,
    Running,
    Stopped,
    Paused,
    Pausing,
}

/// Where a process's standard streams go: paths the shim opens (FIFOs for
/// ctr, or a binary:// / file:// URI), empty for none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Everything a runtime needs to create a task.
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    /// The container's OCI runtime spec (JSON bytes in `value`), written to
    /// the bundle as `config.json`.
    pub spec: AnyValue,
    /// Mounts for the root filesystem; the shim mounts them at `rootfs/`.
    pub rootfs: Vec<Mount>,
    pub io: Stdio,
    /// The runtime name (`io.containerd.runc.v2`) or an absolute shim path.
    pub runtime: String,
    /// The container's runtime options, given to the shim's `start` on stdin.
    pub runtime_options: Option<AnyValue>,
    /// The task-create options, given to the shim's Create.
    pub task_options: Option<AnyValue>,
    /// Checkpoint to restore from, as a path; empty for none.
    pub checkpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessState {
    pub container_id: String,
    /// Empty for the init process.
    pub exec_id: String,
    pub pid: u32,
    pub status: Status,
    pub io: Stdio,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Runtime-specific details, passed through.
    pub info: Option<AnyValue>,
}

/// One running task. Errors carry containerd's classes: NotFound for an
/// unknown exec id, FailedPrecondition for a process in the wrong state,
/// Unavailable when the shim has gone.
#[async_trait]
pub trait Task: Send + Sync {
    fn id(&self) -> &str;
    fn namespace(&self) -> &str;
    /// The init process's pid, known from Create.
    fn pid(&self) -> u32;
    fn bundle(&self) -> PathBuf;
    async fn state(&self, exec_id: &str) -> Result<ProcessState, Error>;
    /// Starts the process; returns its pid.
    async fn start(&self, exec_id: &str) -> Result<u32, Error>;
    async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<(), Error>;
    /// Adds a process (not started) from a JSON OCI process spec.
    async fn exec(&self, exec_id: &str, spec: AnyValue, io: Stdio) -> Result<(), Error>;
    /// Removes an exec'd process that has exited.
    async fn delete_process(&self, exec_id: &str) -> Result<Exit, Error>;
    async fn pids(&self) -> Result<Vec<ProcessInfo>, Error>;
    async fn pause(&self) -> Result<(), Error>;
    async fn resume(&self) -> Result<(), Error>;
    async fn resize_pty(&self, exec_id: &str, width: u32, height: u32) -> Result<(), Error>;
    async fn close_io(&self, exec_id: &str, stdin: bool) -> Result<(), Error>;
    async fn update(&self, resources: Option<AnyValue>, annotations: BTreeMap<String, String>) -> Result<(), Error>;
    /// Returns when the process has exited.
    async fn wait(&self, exec_id: &str) -> Result<Exit, Error>;
    /// The shim's statistics (cgroup metrics for runc shims).
    async fn stats(&self) -> Result<Option<AnyValue>, Error>;
}

#[async_trait]
pub trait Runtime: Send + Sync {
    /// Creates the bundle, starts a shim and creates the task in it.
    /// AlreadyExists if the namespace has a task with this id. Nothing is
    /// left behind (bundle, mounts, shim) when it fails.
    async fn create(&self, namespace: &str, id: &str, opts: CreateOpts) -> Result<Arc<dyn Task>, Error>;
    /// NotFound if the namespace has no task with this id.
    async fn get(&self, namespace: &str, id: &str) -> Result<Arc<dyn Task>, Error>;
    /// The namespace's tasks, sorted by id.
    async fn list(&self, namespace: &str) -> Vec<Arc<dyn Task>>;
    /// Deletes the init process (which must have exited or never started),
    /// shuts the shim down and removes the bundle.
    async fn delete(&self, namespace: &str, id: &str) -> Result<Exit, Error>;
}
