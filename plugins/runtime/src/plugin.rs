//! The plugin `io.containerd.runtime.v2.task`.

use std::sync::Arc;

use corten_core::{
    events::Exchange,
    plugin::{InitContext, InitError, Instance, Plugin},
    register_plugin,
    runtime::{self, Runtime},
};
use serde::{Deserialize, Serialize};

use crate::{
    binary::Resolver,
    runtime::{Options, ShimRuntime, Timeouts},
};

const EVENTS: &str = "io.containerd.event.v1";

/// `[plugins."io.containerd.runtime.v2.task"]`, with containerd 1.6's keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// The platforms tasks may run for, as `os/arch` strings.
    pub platforms: Vec<String>,
    /// Start each shim in its own core-scheduling group (SCHED_CORE).
    pub sched_core: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            platforms: vec![format!("linux/{}", go_arch(std::env::consts::ARCH))],
            sched_core: false,
        }
    }
}

/// Rust's name of an architecture in the OCI platform vocabulary.
fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

impl RuntimeConfig {
    fn check(&self) -> Result<(), InitError> {
        for p in &self.platforms {
            let mut parts = p.split('/');
            let (os, arch) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if os.is_empty() || arch.is_empty() || parts.count() > 1 {
                return Err(InitError::Failed(format!(
                    "platforms: {p:?} is not a platform such as \"linux/amd64\""
                )));
            }
        }
        Ok(())
    }
}

pub struct RuntimePlugin;

impl Plugin for RuntimePlugin {
    const TYPE: &'static str = runtime::PLUGIN_TYPE;
    const ID: &'static str = "task";
    const REQUIRES: &'static [&'static str] = &[EVENTS];
    type Config = RuntimeConfig;

    async fn init(ctx: InitContext, config: RuntimeConfig) -> Result<Instance, InitError> {
        config.check()?;
        let exchange: Arc<dyn Exchange> = ctx.get(EVENTS)?;
        let options = Options {
            root: ctx.root.clone(),
            state: ctx.state.clone(),
            grpc_address: ctx.grpc_address.clone(),
            ttrpc_address: ctx.ttrpc_address.clone(),
            ttrpc_uid: ctx.config.ttrpc.uid,
            ttrpc_gid: ctx.config.ttrpc.gid,
            exchange,
            timeouts: Timeouts::from_lookup(|key| ctx.config.timeout(key)),
            sched_core: config.sched_core,
            resolver: Resolver::from_env(),
            publish_binary: std::env::current_exe().map_err(|e| InitError::failed("find the daemon's binary", e))?,
        };
        let shims = ShimRuntime::start(options)
            .await
            .map_err(|e| InitError::failed("start the shim runtime", e))?;
        ctx.metrics
            .register(Box::new(shims.collector()))
            .map_err(|e| InitError::failed("register container metrics", e))?;
        let runtime: Arc<dyn Runtime> = shims.clone();
        Ok(Instance::new(runtime)
            .export("platforms", config.platforms.join(","))
            .on_close(move || async move { shims.close().await }))
    }
}

register_plugin!(RuntimePlugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_keys_and_defaults() {
        let d = RuntimeConfig::default();
        assert!(d.platforms[0].starts_with("linux/"), "{:?}", d.platforms);
        assert!(!d.sched_core);
        let c: RuntimeConfig = toml::from_str("platforms = [\"linux/arm64\"]\nsched_core = true\n").unwrap();
        assert_eq!(c.platforms, ["linux/arm64"]);
        assert!(c.sched_core);
        c.check().unwrap();
        let bad = RuntimeConfig {
            platforms: vec!["amd64".into()],
            ..RuntimeConfig::default()
        };
        assert!(bad.check().is_err());
    }
}
