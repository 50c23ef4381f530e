use std::sync::Arc;

use corten_core::{
    content::{self, ContentStore},
    diff::{self, Differ},
    plugin::{InitContext, InitError, Instance, Plugin},
    register_plugin,
};

use crate::{config::DiffConfig, differ::WalkingDiffer, mount};

pub struct WalkingPlugin;

impl Plugin for WalkingPlugin {
    const TYPE: &'static str = diff::PLUGIN_TYPE;
    const ID: &'static str = "walking";
    const REQUIRES: &'static [&'static str] = &[content::PLUGIN_TYPE];
    type Config = DiffConfig;

    async fn init(ctx: InitContext, config: DiffConfig) -> Result<Instance, InitError> {
        let store: Arc<dyn ContentStore> = ctx.get(content::PLUGIN_TYPE)?;
        let mounts_dir = ctx.state.join("mounts");
        std::fs::create_dir_all(&mounts_dir)
            .map_err(|e| InitError::failed(&format!("create {}", mounts_dir.display()), e))?;
        // Mount points left by a daemon that died mid-diff.
        mount::cleanup(&mounts_dir);
        let differ: Arc<dyn Differ> = Arc::new(WalkingDiffer::new(store, &mounts_dir, &config));
        Ok(Instance::new(differ))
    }
}

register_plugin!(WalkingPlugin);
