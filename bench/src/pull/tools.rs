//! The clients that pull and check: `corten` (built by this workspace) and
//! containerd 1.6's `ctr`, plus the registry's version for the report.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::tool::{self, version};

pub const DEFAULT_CTR: &str = "/usr/bin/ctr";
const CORTEN_HINT: &str = "build it with `cargo build --release -p corten-cli` or pass --corten PATH";

pub struct Tools {
    pub corten: PathBuf,
    pub corten_version: String,
    pub ctr: PathBuf,
    pub ctr_version: String,
    pub registry_version: String,
}

impl Tools {
    /// Fails with what to build or install when a tool is missing. ctr is
    /// needed even with --no-reference: it checks corten's pull.
    pub fn locate(corten: Option<&Path>, ctr: &Path) -> anyhow::Result<Tools> {
        let corten = match corten {
            Some(p) => p.to_path_buf(),
            None => std::env::current_exe()
                .context("find this executable's path")?
                .parent()
                .context("this executable has no directory")?
                .join("corten"),
        };
        if !corten.is_file() {
            bail!("the corten client is missing at {}: {CORTEN_HINT}", corten.display());
        }
        let corten_version = version(&corten, CORTEN_HINT)?;
        let ctr_version = version(
            ctr,
            "install Debian's containerd package (apt-get install -y containerd), which ships it, or pass --ctr PATH",
        )?;
        let registry_version = tool::registry_version()?;
        Ok(Tools {
            corten,
            corten_version,
            ctr: ctr.to_path_buf(),
            ctr_version,
            registry_version,
        })
    }

    /// `corten --address SOCK images pull --plain-http REF`, exec to exit.
    pub fn corten_pull(&self, socket: &Path, reference: &str) -> anyhow::Result<Duration> {
        let mut command = Command::new(&self.corten);
        command
            .arg("--address")
            .arg(socket)
            .args(["images", "pull", "--plain-http", reference]);
        timed(command)
    }

    /// `ctr --address SOCK images pull --plain-http REF`, exec to exit.
    pub fn ctr_pull(&self, socket: &Path, reference: &str) -> anyhow::Result<Duration> {
        let mut command = Command::new(&self.ctr);
        command
            .arg("--address")
            .arg(socket)
            .args(["images", "pull", "--plain-http", reference]);
        timed(command)
    }

    /// `ctr --address SOCK images check` must list `reference` as complete
    /// (every blob present) and unpacked, as a pull by ctr leaves it.
    pub fn check(&self, socket: &Path, reference: &str) -> anyhow::Result<()> {
        let mut command = Command::new(&self.ctr);
        command.arg("--address").arg(socket).args(["images", "check"]);
        tool::image_checked(&tool::output(&mut command)?, reference)
    }
}

/// Output is piped, so neither client draws progress for a terminal.
fn timed(mut command: Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    tool::output(&mut command)?;
    Ok(started.elapsed())
}
