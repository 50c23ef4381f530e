use std::sync::Arc;

use corten_core::{
    metadata::MetaStore,
    plugin::{InitContext, InitError, Instance, Plugin},
    register_plugin,
};
use serde::{Deserialize, Serialize};

use crate::store::SledStore;

/// `[plugins."io.containerd.metadata.v1.sled"]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SledConfig {
    /// sled's page cache in bytes. sled's own default is 1 GiB, far more than
    /// a daemon's metadata needs and the largest part of its memory.
    pub cache_capacity: u64,
}

impl Default for SledConfig {
    fn default() -> Self {
        SledConfig {
            cache_capacity: 64 << 20,
        }
    }
}

pub struct SledPlugin;

impl Plugin for SledPlugin {
    const TYPE: &'static str = "io.containerd.metadata.v1";
    const ID: &'static str = "sled";
    type Config = SledConfig;

    async fn init(ctx: InitContext, config: SledConfig) -> Result<Instance, InitError> {
        let path = ctx.root.join("meta.sled");
        let root = ctx.root.display().to_string();
        let store = tokio::task::spawn_blocking(move || SledStore::open(&path, config.cache_capacity))
            .await
            .map_err(|e| InitError::failed("open sled", e))?
            .map_err(|e| InitError::failed("open sled", e))?;
        let store = Arc::new(store);
        let closing = store.clone();
        let meta: Arc<dyn MetaStore> = store;
        Ok(Instance::new(meta).export("root", root).on_close(move || async move {
            if let Err(e) = tokio::task::spawn_blocking(move || closing.flush()).await {
                tracing::warn!("flush metadata at close: {e}");
            }
        }))
    }
}

register_plugin!(SledPlugin);
