//! Plugin `io.containerd.content.v1.content`: blobs by digest on the local
//! filesystem, and which namespace sees which, in the metadata store.
//!
//! - `backend`: the files: `blobs/<alg>/<hex>`, `ingest/<hash of ref>/`;
//! - `hasher`, `hashpipe`: digests computed while writing, on their own thread;
//! - `writer`: one ingest, resumable, verified and renamed into place;
//! - `store`: the namespaced [`ContentStore`] the services use;
//! - `plugin`: the registration and config.
//!
//! [`ContentStore`]: corten_core::content::ContentStore

mod backend;
mod hasher;
mod hashpipe;
mod plugin;
mod store;
mod writer;

pub use plugin::{ContentConfig, SharingPolicy};
pub use store::LocalContent;

/// Called by the daemon binary so the linker keeps this crate, and with it
/// the plugin registrations `inventory` collects from it.
pub fn link() {}
