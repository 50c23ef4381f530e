//! Plugin `io.containerd.metadata.v1.sled`: the metadata store, on sled.
//!
//! `plugin` holds the registration and config, `store` the [`MetaStore`]
//! implementation.
//!
//! [`MetaStore`]: corten_core::metadata::MetaStore

mod plugin;
mod priority;
mod store;
mod wal;

pub use plugin::SledConfig;
pub use store::SledStore;

/// Called by the daemon binary so the linker keeps this crate, and with it
/// the plugin registrations `inventory` collects from it.
pub fn link() {}
