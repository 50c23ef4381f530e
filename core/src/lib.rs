//! The core of corten: what every plugin builds on.
//!
//! - [`plugin`]: the registration a plugin submits and the context its init receives;
//! - [`registry`]: ordering, initialising and closing the registered plugins;
//! - [`error`]: domain errors with containerd's error classes;
//! - [`metadata`], [`events`], [`namespaces`]: the shared interfaces plugins look each other up by;
//! - [`filters`], [`identifiers`]: containerd's filter language and name rules.
//!
//! The core names no plugin: plugins name the core.

pub mod any_value;
pub mod containers;
pub mod content;
pub mod diff;
pub mod digest;
pub mod error;
pub mod events;
pub mod filters;
pub mod gc;
pub mod grpc;
pub mod identifiers;
pub mod images;
pub mod labels;
pub mod leases;
pub mod metadata;
pub mod mount;
pub mod namespaces;
pub mod plugin;
pub mod records;
pub mod registry;
pub mod runtime;
pub mod snapshots;
pub mod transfer;
pub mod version;

pub use error::{Error, Result};

#[doc(hidden)]
pub use inventory;
