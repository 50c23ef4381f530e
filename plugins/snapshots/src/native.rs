//! Plugin `io.containerd.snapshotter.v1.native`: each snapshot is a full
//! copy of its parent, changed in place. Slow and large, but it works on any
//! filesystem, which is what a fallback is for.

use std::path::Path;

use corten_core::{
    metadata,
    mount::Mount,
    plugin::{InitContext, InitError, Instance, Plugin},
    register_plugin,
    snapshots::{self, Kind},
    Error,
};
use serde::{Deserialize, Serialize};

use crate::{
    backend::DirSpec,
    copy::copy_tree,
    driver::{bind, Driver, Layers},
};

const DIRS: &[DirSpec] = &[("fs", 0o755)];

/// `[plugins."io.containerd.snapshotter.v1.native"]`, containerd's keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NativeConfig {
    /// Where the snapshots live; empty for the plugin's own root.
    pub root_path: String,
}

pub struct Native;

impl Driver for Native {
    fn dirs(&self, _kind: Kind, _layered: bool) -> &'static [DirSpec] {
        DIRS
    }

    fn populate(&self, fs: &Path, parent_fs: Option<&Path>) -> Result<(), Error> {
        match parent_fs {
            Some(parent) => copy_tree(parent, fs),
            None => Ok(()),
        }
    }

    fn mounts(&self, layers: &Layers) -> Vec<Mount> {
        vec![bind(layers.fs, layers.kind == Kind::Active)]
    }
}

pub struct NativePlugin;

impl Plugin for NativePlugin {
    const TYPE: &'static str = snapshots::PLUGIN_TYPE;
    const ID: &'static str = "native";
    const REQUIRES: &'static [&'static str] = &[metadata::PLUGIN_TYPE];
    type Config = NativeConfig;

    async fn init(ctx: InitContext, config: NativeConfig) -> Result<Instance, InitError> {
        crate::plugin::init(ctx, Self::ID, &config.root_path, |_| {
            Ok(Box::new(Native) as Box<dyn Driver>)
        })
        .await
    }
}

register_plugin!(NativePlugin);
