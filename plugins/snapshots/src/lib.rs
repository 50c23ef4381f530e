//! Plugins `io.containerd.snapshotter.v1.overlayfs` and `.native`:
//! layered filesystems by key, seen per namespace.
//!
//! - `store`: the namespaced [`Snapshotter`] both plugins are: records in the
//!   metadata store, checks, leases, cleanup;
//! - `backend`: snapshot directories by number, and the backend's own
//!   state (which backend key names which directory, parents, usage); its
//!   top holds the argument for why a crash leaves nothing half-made;
//! - `spares`: snapshot directories made ahead of need, off the creations' path;
//! - `priority`: the lower CPU priority that housekeeping (spares, removals) runs at;
//! - `driver`: what differs between the two: how a snapshot's files come to be
//!   and how it is mounted;
//! - `overlay`, `native`: the two drivers with their registrations and configs;
//! - `copy`, `usage`: tree copies for native, disk usage walks for both;
//! - `plugin`: the init both registrations share.
//!
//! [`Snapshotter`]: corten_core::snapshots::Snapshotter

mod backend;
mod copy;
mod driver;
mod native;
mod overlay;
mod plugin;
mod priority;
mod spares;
mod store;
mod usage;

pub use driver::{Driver, Layers};
pub use native::{Native, NativeConfig};
pub use overlay::{Overlay, OverlayConfig, UPPERDIR_LABEL};
pub use store::SnapshotStore;

/// Called by the daemon binary so the linker keeps this crate, and with it
/// the plugin registrations `inventory` collects from it.
pub fn link() {}
