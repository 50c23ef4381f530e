use std::sync::Arc;

use corten_core::{
    content::ContentStore,
    metadata::MetaStore,
    plugin::{InitContext, InitError, Instance, Plugin},
    register_plugin,
};
use serde::{Deserialize, Serialize};

use crate::store::LocalContent;

/// Whether a namespace may reuse a blob another namespace already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharingPolicy {
    /// A write of a blob the store already holds completes without its bytes.
    #[default]
    Shared,
    /// Every namespace must send the bytes itself.
    Isolated,
}

/// `[plugins."io.containerd.content.v1.content"]`. containerd keeps
/// `content_sharing_policy` in its bolt metadata plugin's section; in corten
/// the content plugin implements sharing, so the setting lives here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ContentConfig {
    pub content_sharing_policy: SharingPolicy,
}

pub struct ContentPlugin;

impl Plugin for ContentPlugin {
    const TYPE: &'static str = "io.containerd.content.v1";
    const ID: &'static str = "content";
    const REQUIRES: &'static [&'static str] = &["io.containerd.metadata.v1"];
    type Config = ContentConfig;

    async fn init(ctx: InitContext, config: ContentConfig) -> Result<Instance, InitError> {
        let meta: Arc<dyn MetaStore> = ctx.get("io.containerd.metadata.v1")?;
        let root = ctx.root.clone();
        let store = LocalContent::open(&root, meta, config.content_sharing_policy)
            .map_err(|e| InitError::failed("open content store", e))?;
        let store: Arc<dyn ContentStore> = Arc::new(store);
        Ok(Instance::new(store).export("root", root.display().to_string()))
    }
}

register_plugin!(ContentPlugin);
