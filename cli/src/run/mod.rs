//! The client side of running containers: the container's OCI spec, built
//! from the image's config as ctr builds it, a look into its root
//! filesystem for the user's accounts, the task's stdio over FIFOs, and
//! staying with a running process until it exits.

pub mod process;
pub mod rootfs;
pub mod spec;
pub mod stdio;
