//! A mount as snapshotters return it and differs and runtimes use it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Mount {
    /// The filesystem type: `overlay`, `bind`, ...
    pub kind: String,
    pub source: String,
    /// Usually empty: the user of the mount chooses where.
    pub target: String,
    pub options: Vec<String>,
}
