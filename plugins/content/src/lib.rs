//! Plugin `io.containerd.content.v1.content`: blobs by digest on the local
//! filesystem, and which namespace sees which, in the metadata store.
//!
//! - `backend`: the files: `blobs/<alg>/<hex>`, `ingest/<hash of ref>/`;
//! - `hasher`: digests computed while writing;
//! - `writer`: one ingest, resumable, verified and renamed into place;
//! - `store`: the namespaced [`ContentStore`] the services use;
//! - `plugin`: the registration and config.
//!
//! [`ContentStore`]: corten_core::content::ContentStore

mod backend;
mod hasher;
mod plugin;
mod store;
mod writer;

pub use plugin::{ContentConfig, SharingPolicy};
pub use store::LocalContent;

/// Called by the daemon binary so the linker keeps this crate, and with it
/// the plugin registrations `inventory` collects from it.
pub fn link() {}
