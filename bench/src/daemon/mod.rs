//! The daemons under test: which binaries, how each is configured, and a
//! running instance with its own throw-away directories.

mod containerd;
mod corten;
mod layout;
mod running;

use std::{path::PathBuf, process::Command};

pub use layout::Layout;
pub use running::Running;

/// Daemon selection shared by every benchmark.
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// cortend binary [default: `cortend` next to this executable, i.e. the
    /// same cargo profile directory]
    #[arg(long, value_name = "PATH")]
    pub cortend: Option<PathBuf>,
    /// containerd 1.6 binary used as the reference
    #[arg(long, value_name = "PATH", default_value = containerd::DEFAULT_BINARY)]
    pub containerd: PathBuf,
    /// Measure corten alone, without the containerd reference
    #[arg(long)]
    pub no_reference: bool,
}

impl DaemonArgs {
    /// corten first, then the reference unless it was opted out of. Both
    /// binaries are checked before anything runs, so a missing reference
    /// fails before minutes of corten measurements rather than after.
    pub fn subjects(&self) -> anyhow::Result<Vec<Subject>> {
        let mut subjects = vec![Subject {
            kind: Kind::Corten,
            binary: corten::locate(self.cortend.as_deref())?,
        }];
        if !self.no_reference {
            subjects.push(self.reference()?);
        }
        Ok(subjects)
    }

    /// The reference alone, for a benchmark that can be run without corten
    /// (to check the benchmark itself while corten cannot do its part yet).
    pub fn reference(&self) -> anyhow::Result<Subject> {
        Ok(Subject {
            kind: Kind::Containerd,
            binary: containerd::locate(&self.containerd)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Corten,
    Containerd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Corten => "corten",
            Kind::Containerd => "containerd",
        }
    }
}

/// A daemon binary that can be started any number of times.
#[derive(Debug, Clone)]
pub struct Subject {
    pub kind: Kind,
    pub binary: PathBuf,
}

impl Subject {
    /// Writes a fresh config under a new temporary directory and execs the
    /// daemon; `Running::started` is taken right before the exec.
    pub fn launch(&self) -> anyhow::Result<Running> {
        self.launch_with_data_in(None)
    }

    /// As `launch`, with the daemon's root and state in a new directory
    /// under `data` (see `Layout::with_data_in`).
    pub fn launch_with_data_in(&self, data: Option<&std::path::Path>) -> anyhow::Result<Running> {
        self.launch_with_metrics(data, None)
    }

    /// As `launch_with_data_in`, serving Prometheus metrics (with the gRPC
    /// handling-time histogram) at `metrics` where given; otherwise the
    /// metrics endpoint is off.
    pub fn launch_with_metrics(
        &self,
        data: Option<&std::path::Path>,
        metrics: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<Running> {
        let layout = Layout::with_data_in(self.kind.name(), data)?;
        let command: Command = match self.kind {
            Kind::Corten => corten::command(&self.binary, &layout, metrics)?,
            Kind::Containerd => containerd::command(&self.binary, &layout, metrics)?,
        };
        Running::spawn(self.kind.name(), command, layout)
    }

    /// Notes a reader needs to judge the numbers fairly.
    pub fn notes(&self) -> Vec<String> {
        match self.kind {
            Kind::Corten => corten::notes(&self.binary),
            Kind::Containerd => containerd::notes(),
        }
    }
}

/// A path as a TOML basic string. Only `"` and `\` need escaping in the paths
/// this tool makes; control characters are refused rather than escaped since
/// no temporary directory contains them.
fn toml_string(path: &std::path::Path) -> anyhow::Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("path is not UTF-8: {}", path.display()))?;
    anyhow::ensure!(!s.chars().any(char::is_control), "path has control characters: {s:?}");
    Ok(format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// The `[metrics]` table of either daemon's config: off, or serving at
/// `address` with the gRPC handling-time histogram.
fn metrics_table(address: Option<std::net::SocketAddr>) -> String {
    match address {
        None => "[metrics]\n  address = \"\"\n".to_string(),
        Some(a) => format!("[metrics]\n  address = \"{a}\"\n  grpc_histogram = true\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::toml_string;

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(toml_string(r#"/a"b\c"#.as_ref()).unwrap(), r#""/a\"b\\c""#);
    }

    #[test]
    fn refuses_control_characters() {
        assert!(toml_string("/a\nb".as_ref()).is_err());
    }
}
