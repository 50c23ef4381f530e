//! Plugin `io.containerd.gc.v1.scheduler`: garbage collection of metadata
//! and blobs, by mark and sweep.
//!
//! - `kinds`: what each kind of object contributes to the object graph
//!   (roots, references, the keys that go with it);
//! - `sweep`: marking from the roots and removing the rest, under the
//!   metadata store's exclusive lock;
//! - `scheduler`: the [`Gc`] collector, which counts mutations and decides
//!   when to collect, and the task that runs the automatic collections;
//! - `plugin`: the registration and its config.

mod kinds;
mod plugin;
mod scheduler;
mod sweep;

pub use plugin::{GcConfig, GcPlugin};
pub use scheduler::{Gc, Metrics, SchedulerTask, Settings};

/// Called by the daemon binary so the linker keeps this crate, and with it
/// the plugin registrations `inventory` collects from it.
pub fn link() {}

#[cfg(test)]
mod testing;
