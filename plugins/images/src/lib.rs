//! Plugin `io.containerd.transfer.v1.local`: images pulled from registries,
//! server-side, as containerd 2.x's transfer service pulls them.
//!
//! - [`reference`]: references parsed and normalised (`busybox` is
//!   `docker.io/library/busybox:latest`);
//! - [`platform`]: platforms parsed, normalised and matched;
//! - [`media`]: media types and what each is to a pull;
//! - `oci`: the index, manifest and config documents;
//! - `registry`: the registry over `oci-client` (basic and token auth,
//!   plain HTTP for loopback and insecure registries, ranged blob reads);
//! - `fetch`: blobs into the content store, resumable and verified;
//! - `unpack`: layers into snapshots named by chain ID;
//! - `pull`: the whole pull under a lease, the image recorded last;
//! - `plugin`: registration and settings.
//!
//! The gRPC side (containerd's Transfer and Streaming services) lives in
//! the services crate, over [`corten_core::transfer::Transferrer`].

mod fetch;
pub mod media;
mod oci;
pub mod platform;
mod plugin;
mod pull;
pub mod reference;
mod registry;
mod unpack;

pub use plugin::TransferConfig;
pub use pull::{Puller, Settings};

use corten_core::Error;

/// `err` with `what` in front, in the same error class.
pub(crate) fn context(err: Error, what: &str) -> Error {
    let with = |m: String| format!("{what}: {m}");
    match err {
        Error::NotFound(m) => Error::NotFound(with(m)),
        Error::AlreadyExists(m) => Error::AlreadyExists(with(m)),
        Error::FailedPrecondition(m) => Error::FailedPrecondition(with(m)),
        Error::InvalidArgument(m) => Error::InvalidArgument(with(m)),
        Error::Unavailable(m) => Error::Unavailable(with(m)),
        Error::OutOfRange(m) => Error::OutOfRange(with(m)),
        Error::Unimplemented(m) => Error::Unimplemented(with(m)),
        Error::Internal(m) => Error::Internal(with(m)),
    }
}

/// Called by the daemon binary so the linker keeps this crate, and with it
/// the plugin registration `inventory` collects from it.
pub fn link() {}
