//! Running the shim binary's own subcommands: `start`, which forks the
//! shim daemon and prints where it listens, and `delete`, which cleans up
//! after a shim that died and prints a DeleteResponse.
//!
//! Both run with the bundle as working directory and the arguments and
//! environment of the runtime v2 protocol.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use corten_api::containerd::task::v2::DeleteResponse;
use corten_core::any_value::AnyValue;
use prost::Message;
use tokio::{io::AsyncWriteExt, process::Command};

use crate::error::ShimError;

/// What every shim invocation of one daemon shares.
#[derive(Debug, Clone)]
pub struct ShimEnv {
    /// The daemon's gRPC address (`-address`, GRPC_ADDRESS).
    pub grpc_address: String,
    /// Where the shim forwards its events (TTRPC_ADDRESS).
    pub ttrpc_address: String,
    /// The daemon's binary (`-publish-binary`).
    pub publish_binary: PathBuf,
    /// Ask the shim to create a new core-scheduling group (SCHED_CORE).
    pub sched_core: bool,
}

/// The highest task API version we speak; shims may pick anything up to it.
const MAX_SHIM_VERSION: &str = "3";

pub struct ShimCommand<'a> {
    pub env: &'a ShimEnv,
    pub binary: &'a Path,
    pub namespace: &'a str,
    pub id: &'a str,
    pub bundle: &'a Path,
}

impl ShimCommand<'_> {
    fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(self.binary);
        cmd.arg("-namespace")
            .arg(self.namespace)
            .arg("-address")
            .arg(&self.env.grpc_address)
            .arg("-publish-binary")
            .arg(&self.env.publish_binary)
            .arg("-id")
            .arg(self.id);
        if tracing::enabled!(target: "shim", tracing::Level::DEBUG) {
            cmd.arg("-debug");
        }
        cmd.args(extra)
            .current_dir(self.bundle)
            .env("TTRPC_ADDRESS", &self.env.ttrpc_address)
            .env("GRPC_ADDRESS", &self.env.grpc_address)
            .env("NAMESPACE", self.namespace)
            .env("MAX_SHIM_VERSION", MAX_SHIM_VERSION)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Go shims size their thread pools by it; containerd keeps them small.
        if std::env::var_os("GOMAXPROCS").is_none() {
            cmd.env("GOMAXPROCS", "2");
        }
        if self.env.sched_core {
            cmd.env("SCHED_CORE", "1");
        }
        cmd
    }

    fn failed(&self, action: &'static str, output: &std::process::Output) -> ShimError {
        let mut text = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !stdout.trim().is_empty() {
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(stdout.trim());
        }
        ShimError::Command {
            binary: self.binary.display().to_string(),
            action,
            status: output.status.to_string(),
            output: text,
        }
    }

    /// Runs `start` with the runtime options (a protobuf `Any`) on stdin
    /// and returns what it printed.
    pub async fn start(&self, options: Option<&AnyValue>) -> Result<Vec<u8>, ShimError> {
        let mut child = self
            .command(&["start"])
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| ShimError::io(format!("run {} start", self.binary.display()), e))?;
        let input = options
            .map(|o| {
                prost_types::Any {
                    type_url: o.type_url.clone(),
                    value: o.value.clone(),
                }
                .encode_to_vec()
            })
            .unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            // The shim reads stdin to its end; a shim that does not read it
            // at all (and exits) is not our failure to report here.
            let _ = stdin.write_all(&input).await;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|e| ShimError::io(format!("wait for {} start", self.binary.display()), e))?;
        if !output.status.success() {
            return Err(self.failed("start", &output));
        }
        Ok(output.stdout)
    }

    /// Runs `delete` for a shim that is gone: the shim binary removes what
    /// the dead shim left (the runc container, the rootfs mount) and reports
    /// the init process's end.
    pub async fn delete(&self, timeout: Duration) -> Result<DeleteResponse, ShimError> {
        let bundle = self.bundle.to_string_lossy().into_owned();
        let child = self
            .command(&["-bundle", &bundle, "delete"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| ShimError::io(format!("run {} delete", self.binary.display()), e))?;
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| ShimError::Timeout {
                what: format!("{} delete", self.binary.display()),
                after: timeout,
            })?
            .map_err(|e| ShimError::io(format!("wait for {} delete", self.binary.display()), e))?;
        if !output.status.success() {
            return Err(self.failed("delete", &output));
        }
        let warnings = String::from_utf8_lossy(&output.stderr);
        if !warnings.trim().is_empty() {
            tracing::debug!(
                namespace = self.namespace,
                id = self.id,
                "shim delete: {}",
                warnings.trim()
            );
        }
        DeleteResponse::decode(output.stdout.as_slice()).map_err(|e| ShimError::Decode {
            what: "delete output",
            message: e.to_string(),
        })
    }
}
