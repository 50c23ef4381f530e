//! Non-fatal findings: the daemon logs them and carries on, as containerd does
//! with keys it does not recognise.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub file: PathBuf,
    /// 1-based line of the key in `file`.
    pub line: usize,
    /// Dotted TOML key path, e.g. `grpc.foo`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.key,
            self.message
        )
    }
}

pub(crate) const UNKNOWN_KEY: &str = "unknown key, ignored";
