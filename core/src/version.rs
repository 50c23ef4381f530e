//! The daemon's own version, as Version and the build-info metric report it.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("CORTEN_REVISION");
