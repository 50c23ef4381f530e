//! Finding and configuring cortend.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use super::{metrics_table, Layout};

const BUILD_HINT: &str = "build it with `cargo build --release -p corten-daemon` or pass --cortend PATH";

/// An explicit path, or `cortend` in this executable's directory: cargo puts
/// every binary of one profile side by side, so the bench and the daemon it
/// finds were built with the same settings.
pub fn locate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("find this executable's path")?
            .parent()
            .context("this executable has no directory")?
            .join("cortend"),
    };
    if !path.is_file() {
        bail!("cortend not found at {}: {BUILD_HINT}", path.display());
    }
    Ok(path)
}

/// The metrics listener is switched off, unless `metrics` gives it a (free)
/// address, so that runs (and other people's daemons on this machine) never
/// fight over its fixed default port.
pub fn command(binary: &Path, layout: &Layout, metrics: Option<SocketAddr>) -> anyhow::Result<Command> {
    std::fs::write(&layout.config, format!("version = 2\n\n{}", metrics_table(metrics)))
        .with_context(|| format!("write {}", layout.config.display()))?;
    let mut command = Command::new(binary);
    command
        .arg("--root")
        .arg(&layout.root)
        .arg("--state")
        .arg(&layout.state)
        .arg("--address")
        .arg(&layout.socket)
        .arg("--config")
        .arg(&layout.config);
    Ok(command)
}

pub fn notes(binary: &Path) -> Vec<String> {
    // A debug cortend is several times slower and larger, which would make
    // every ratio meaningless without saying so.
    if binary.components().any(|c| c.as_os_str() == "debug") {
        vec![format!(
            "WARNING: {} looks like a debug build; {BUILD_HINT}",
            binary.display()
        )]
    } else {
        Vec::new()
    }
}
