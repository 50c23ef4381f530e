//! Plugin `io.containerd.runtime.v2.task`: runs tasks through runtime v2
//! shims (`containerd-shim-runc-v2` and the like), as containerd does.
//!
//! - [`binary`]: runtime names to shim binaries;
//! - [`bundle`]: the task's directory the shim works in;
//! - [`command`], [`bootstrap`]: the shim's `start` and `delete`
//!   subcommands and where a started shim listens;
//! - [`client`]: the shim's ttrpc task API;
//! - [`forward`]: the daemon's ttrpc `Events.Forward`, where shims publish;
//! - [`runtime`]: tasks by namespace and id (the [`corten_core::runtime::Runtime`]);
//!   a watcher per task cleans up after a shim that dies, and recovery
//!   reconnects to shims after a restart;
//! - [`metrics`]: per-container cgroup metrics at scrape time.
//!
//! The instance it exports is an `Arc<dyn corten_core::runtime::Runtime>`.

pub mod binary;
pub mod bootstrap;
pub mod bundle;
pub mod client;
pub mod command;
mod convert;
pub mod error;
mod events;
pub mod forward;
pub mod metrics;
mod pidfd;
pub mod plugin;
mod recover;
pub mod runtime;
mod shim_log;
mod task;
mod watch;

pub use runtime::{Options, ShimRuntime, Timeouts};

/// Called by the daemon binary so the linker keeps this crate, and with it
/// the plugin registration `inventory` collects from it.
pub fn link() {}
