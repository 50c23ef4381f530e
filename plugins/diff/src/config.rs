//! `[plugins."io.containerd.differ.v1.walking"]`.
//!
//! containerd has no such bounds: a layer is trusted to be what its size
//! says. These keep a hostile one from filling the disk or the memory of the
//! daemon while it claims to be small.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffConfig {
    /// The most bytes a layer may decompress to (its tar stream) and, apart,
    /// the most file content it may write (sparse entries expand).
    pub max_uncompressed_bytes: u64,
    /// The most tar entries one layer may hold. Applying keeps a few bytes
    /// per entry in memory, so this bounds memory as well.
    pub max_entries: u64,
}

impl Default for DiffConfig {
    fn default() -> Self {
        DiffConfig {
            max_uncompressed_bytes: 64 << 30,
            max_entries: 4_000_000,
        }
    }
}
