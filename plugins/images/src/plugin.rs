//! Registration of `io.containerd.transfer.v1.local` and its settings.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use corten_core::{
    content::{self, ContentStore},
    diff::{self, Differ},
    images::Images,
    leases::LeaseManager,
    metadata::{self, MetaStore},
    plugin::{InitContext, InitError, Instance, Plugin},
    register_plugin,
    snapshots::{self, Snapshotter},
    transfer::{self, Transferrer},
};
use serde::{Deserialize, Serialize};

use crate::pull::{Puller, Settings};

const LEASES: &str = "io.containerd.lease.v1";

/// `[plugins."io.containerd.transfer.v1.local"]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TransferConfig {
    /// Blobs downloaded at once by one pull (containerd's key and default).
    pub max_concurrent_downloads: usize,
    /// The snapshotter a pull unpacks into when the client names none.
    pub snapshotter: String,
    /// Registries (`host[:port]`) spoken to over plain HTTP. Loopback
    /// registries always are.
    pub insecure_registries: Vec<String>,
    /// How long a pull that broke off keeps its partial downloads for the
    /// next try, e.g. "24h".
    pub resume_window: String,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            max_concurrent_downloads: 3,
            snapshotter: "overlayfs".into(),
            insecure_registries: Vec::new(),
            resume_window: "24h".into(),
        }
    }
}

pub struct TransferPlugin;

impl Plugin for TransferPlugin {
    const TYPE: &'static str = transfer::PLUGIN_TYPE;
    const ID: &'static str = "local";
    const REQUIRES: &'static [&'static str] = &[
        metadata::PLUGIN_TYPE,
        content::PLUGIN_TYPE,
        LEASES,
        snapshots::PLUGIN_TYPE,
        diff::PLUGIN_TYPE,
    ];
    type Config = TransferConfig;

    async fn init(ctx: InitContext, config: TransferConfig) -> Result<Instance, InitError> {
        if config.max_concurrent_downloads == 0 {
            return Err(InitError::Failed("max_concurrent_downloads must be at least 1".into()));
        }
        let lease_expiry: Duration = humantime::parse_duration(&config.resume_window)
            .map_err(|e| InitError::failed(&format!("resume_window {:?}", config.resume_window), e))?;
        // reqwest's TLS needs a process-wide crypto provider; another
        // plugin may have installed one already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let meta: Arc<dyn MetaStore> = ctx.get(metadata::PLUGIN_TYPE)?;
        let content: Arc<dyn ContentStore> = ctx.get(content::PLUGIN_TYPE)?;
        let leases: Arc<dyn LeaseManager> = ctx.get(LEASES)?;
        let differ: Arc<dyn Differ> = ctx.get(diff::PLUGIN_TYPE)?;
        let snapshotters: BTreeMap<String, Arc<dyn Snapshotter>> = ctx
            .plugins()
            .get_all::<Arc<dyn Snapshotter>>(snapshots::PLUGIN_TYPE)
            .into_iter()
            .map(|(id, s)| (id.to_string(), s))
            .collect();
        let settings = Settings {
            max_concurrent_downloads: config.max_concurrent_downloads,
            snapshotter: config.snapshotter.clone(),
            insecure_registries: config.insecure_registries.clone(),
            lease_expiry,
        };
        let puller: Arc<dyn Transferrer> = Arc::new(Puller::new(
            content,
            leases,
            Images::new(meta),
            snapshotters,
            differ,
            settings,
        ));
        Ok(Instance::new(puller))
    }
}

register_plugin!(TransferPlugin);
