//! The `io.containerd.grpc.v1` plugins: containerd's public API over corten's
//! plugins. This is the only crate that knows the protobuf types; everything
//! below it speaks domain types.
//!
//! One module per service, each with its own registration; `status` maps
//! domain errors to gRPC codes, `request` reads containerd's request headers.

/// Applies `[grpc] max_recv_message_size` and `max_send_message_size` to a
/// generated server; tonic's own default (4 MiB) is below containerd's 16 MiB.
macro_rules! with_limits {
    ($server:expr, $ctx:expr) => {
        $server
            .max_decoding_message_size(usize::try_from($ctx.config.grpc.max_recv_message_size).unwrap_or(usize::MAX))
            .max_encoding_message_size(usize::try_from($ctx.config.grpc.max_send_message_size).unwrap_or(usize::MAX))
    };
}

mod containers;
mod content;
mod convert;
mod diff;
mod events;
mod health;
mod images;
mod introspection;
mod leases;
mod namespaces;
mod publish;
pub mod request;
mod snapshots;
pub mod status;
mod tasks;
mod transfer;
mod version;

/// Called by the daemon binary so the linker keeps this crate, and with it
/// the plugin registrations `inventory` collects from it.
pub fn link() {}
