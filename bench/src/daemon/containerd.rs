//! Finding and configuring the reference: Debian's containerd 1.6.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use super::{metrics_table, toml_string, Layout};

pub const DEFAULT_BINARY: &str = "/usr/bin/containerd";

pub fn locate(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.is_file() {
        bail!(
            "the reference daemon is missing at {}: install Debian's containerd package \
             (apt-get install -y containerd), or pass --no-reference to measure corten alone",
            path.display()
        );
    }
    Ok(path.to_path_buf())
}

/// CRI is disabled: corten has none, and it would spend start-up time setting
/// up networking that says nothing about the daemon core. Every listener
/// besides the gRPC socket is either off or moved into the run's directory so
/// runs cannot collide with each other or with a system containerd. The `opt`
/// plugin would otherwise create /opt/containerd. Metrics are served only
/// where `metrics` gives a (free) address.
pub fn command(binary: &Path, layout: &Layout, metrics: Option<SocketAddr>) -> anyhow::Result<Command> {
    let mut ttrpc = layout.socket.clone().into_os_string();
    ttrpc.push(".ttrpc");
    let config = format!(
        "version = 2\n\
         root = {root}\n\
         state = {state}\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         \n\
         [grpc]\n  address = {grpc}\n\
         [ttrpc]\n  address = {ttrpc}\n\
         [debug]\n  address = \"\"\n\
         {metrics}\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
        root = toml_string(&layout.root)?,
        state = toml_string(&layout.state)?,
        grpc = toml_string(&layout.socket)?,
        ttrpc = toml_string(Path::new(&ttrpc))?,
        opt = toml_string(&layout.path("opt"))?,
        metrics = metrics_table(metrics),
    );
    std::fs::write(&layout.config, config).with_context(|| format!("write {}", layout.config.display()))?;
    let mut command = Command::new(binary);
    command.arg("--config").arg(&layout.config);
    Ok(command)
}

pub fn notes() -> Vec<String> {
    vec![
        "containerd ran with its CRI plugin (io.containerd.grpc.v1.cri) disabled for fairness: \
          corten has no CRI, and CRI would set up networking at start-up"
            .to_string(),
    ]
}
