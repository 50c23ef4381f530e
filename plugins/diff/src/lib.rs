//! Plugin `io.containerd.differ.v1.walking`: layers applied onto mounts, and
//! the difference between two mount sets written as a layer.
//!
//! - `config`: the plugin's settings (bounds on what a layer may expand to);
//! - `media`: layer media types, decompression and compression;
//! - `meter`: digests and bounds on the byte streams;
//! - [`mount`]: mounting a snapshot's mounts on a temporary directory (public:
//!   image unpacking and the runtime use it too);
//! - `fsutil`: single-name operations through directory descriptors;
//! - `resolve`: walking entry paths inside the target, overlay-aware;
//! - [`apply`]: a tar stream onto a directory or an overlay upper directory;
//! - [`compare`]: two trees into a tar stream of their difference;
//! - `differ`: the [`Differ`] over the content store; `plugin`: registration.
//!
//! [`Differ`]: corten_core::diff::Differ

pub mod apply;
pub mod compare;
mod config;
mod differ;
mod fsutil;
pub mod media;
mod meter;
pub mod mount;
mod plugin;
mod resolve;

pub use config::DiffConfig;
pub use differ::{overlay_target, WalkingDiffer};

/// Called by the daemon binary so the linker keeps this crate, and with it
/// the plugin registration `inventory` collects from it.
pub fn link() {}
