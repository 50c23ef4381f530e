//! The `io.containerd.grpc.v1` plugins: containerd's public API over corten's
//! plugins. This is the only crate that knows the protobuf types; everything
//! below it speaks domain types.
//!
//! One module per service, each with its own registration; `status` maps
//! domain errors to gRPC codes, `request` reads containerd's request headers.

mod health;
mod introspection;
mod namespaces;
pub mod request;
pub mod status;
mod version;

/// Called by the daemon binary so the linker keeps this crate, and with it
/// the plugin registrations `inventory` collects from it.
pub fn link() {}
