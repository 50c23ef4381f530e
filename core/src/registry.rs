//! Brings the registered plugins up in dependency order and down in reverse.

use std::{collections::BTreeSet, sync::Arc};

use corten_config::{ConfigError, Loaded};
use tracing::{info, warn};

use crate::plugin::{CloseFn, InitContext, PluginRecord, PluginSet, Registration, Status};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("plugin dependency cycle: {0}")]
    Cycle(String),
    #[error("required plugin {uri} {reason}")]
    Required { uri: String, reason: String },
}

/// The plugins that came up, kept so they can be closed in reverse order.
pub struct Registry {
    plugins: Arc<PluginSet>,
    closers: Vec<(String, CloseFn)>,
}

impl Registry {
    /// Decodes every enabled plugin's config, orders the plugins by `requires`,
    /// and initialises them one at a time. Fails only on a bad config, a
    /// dependency cycle, or a required plugin that is disabled, missing or
    /// failed; other failures are recorded and startup goes on.
    pub async fn start(
        loaded: &Loaded,
        registrations: &[&'static Registration],
    ) -> Result<Registry, StartError> {
        let config = Arc::new(loaded.config.clone());
        let disabled: BTreeSet<&str> = config.disabled_plugins.iter().map(String::as_str).collect();
        let enabled: Vec<_> = registrations
            .iter()
            .copied()
            .filter(|r| !disabled.contains(r.uri().as_str()))
            .collect();

        for uri in &config.required_plugins {
            if disabled.contains(uri.as_str()) {
                return Err(StartError::Required { uri: uri.clone(), reason: "is disabled".into() });
            }
            if !registrations.iter().any(|r| r.uri() == *uri) {
                return Err(StartError::Required { uri: uri.clone(), reason: "does not exist in corten".into() });
            }
        }
        warn_unknown_sections(loaded, registrations);

        // Every config is checked before any plugin starts, so a typo never
        // leaves a half-started daemon behind.
        let mut decoded = Vec::with_capacity(enabled.len());
        for r in &enabled {
            let (config, warnings) = (r.decode)(loaded, &r.uri())?;
            for w in warnings {
                warn!("{w}");
            }
            decoded.push(Some(config));
        }

        let order = init_order(&enabled)?;
        let plugins = Arc::new(PluginSet::default());
        let mut registry = Registry { plugins: plugins.clone(), closers: Vec::new() };
        for index in order {
            let r = enabled[index];
            let uri = r.uri();
            let ctx = InitContext {
                plugin_type: r.plugin_type,
                id: r.id,
                root: config.root.join(&uri),
                state: config.state.join(&uri),
                config: config.clone(),
                grpc_address: config.grpc.address.clone(),
                ttrpc_address: config.ttrpc_address(),
                plugins: plugins.clone(),
            };
            let plugin_config = decoded[index].take().expect("each plugin initialises once");
            let mut record = PluginRecord {
                plugin_type: r.plugin_type,
                id: r.id,
                requires: r.requires,
                exports: Default::default(),
                capabilities: Vec::new(),
                status: Status::Ok,
                value: None,
            };
            match (r.init)(ctx, plugin_config).await {
                Ok(instance) => {
                    info!(plugin = %uri, "loaded");
                    record.exports = instance.exports;
                    record.capabilities = instance.capabilities;
                    record.value = Some(instance.value);
                    if let Some(close) = instance.close {
                        registry.closers.push((uri.clone(), close));
                    }
                }
                Err(crate::plugin::InitError::Skip(reason)) => {
                    info!(plugin = %uri, %reason, "skipped");
                    record.status = Status::Skipped(reason);
                }
                Err(crate::plugin::InitError::Failed(reason)) => {
                    warn!(plugin = %uri, %reason, "failed to load");
                    record.status = Status::Failed(reason);
                }
            }
            let outcome = record.status.clone();
            plugins.push(record);
            if config.required_plugins.contains(&uri) {
                let reason = match outcome {
                    Status::Ok => continue,
                    Status::Skipped(reason) => format!("was skipped: {reason}"),
                    Status::Failed(reason) => format!("failed: {reason}"),
                };
                registry.close().await;
                return Err(StartError::Required { uri, reason });
            }
        }
        Ok(registry)
    }

    pub fn plugins(&self) -> Arc<PluginSet> {
        self.plugins.clone()
    }

    /// Closes the plugins that asked for it, in the reverse of init order.
    pub async fn close(&mut self) {
        while let Some((uri, close)) = self.closers.pop() {
            close().await;
            info!(plugin = %uri, "closed");
        }
    }
}

/// A containerd config names plugins corten does not have (cri, aufs, ...):
/// say so once per section and carry on, as the file is still meant for us.
fn warn_unknown_sections(loaded: &Loaded, registrations: &[&'static Registration]) {
    for uri in loaded.config.plugins.keys() {
        if !registrations.iter().any(|r| r.uri() == *uri) {
            let place = loaded
                .locate(&["plugins", uri])
                .map(|(file, line)| format!("{}:{line}: ", file.display()))
                .unwrap_or_default();
            warn!("{place}no plugin {uri:?} in corten; its section is ignored");
        }
    }
}

/// A deterministic topological order: among the plugins whose required types
/// are all placed, the first by (type, id) goes next.
fn init_order(regs: &[&'static Registration]) -> Result<Vec<usize>, StartError> {
    let needs = |r: &Registration, other: &Registration| -> bool {
        !std::ptr::eq(r, other)
            && r.requires.iter().any(|t| {
                (*t == "*" && !other.requires.contains(&"*")) || *t == other.plugin_type
            })
    };
    let mut placed = vec![false; regs.len()];
    let mut order = Vec::with_capacity(regs.len());
    while order.len() < regs.len() {
        let next = (0..regs.len()).find(|&i| {
            !placed[i] && (0..regs.len()).all(|j| placed[j] || !needs(regs[i], regs[j]))
        });
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                let left: Vec<usize> = (0..regs.len()).filter(|&i| !placed[i]).collect();
                return Err(StartError::Cycle(describe_cycle(regs, &left, &needs)));
            }
        }
    }
    Ok(order)
}

/// Walks "needs" edges among the unplaced plugins until one repeats: every
/// unplaced plugin needs another unplaced one, so the walk must close a loop.
fn describe_cycle(
    regs: &[&'static Registration],
    left: &[usize],
    needs: &dyn Fn(&Registration, &Registration) -> bool,
) -> String {
    let mut path = vec![left[0]];
    loop {
        let last = *path.last().expect("path starts non-empty");
        let Some(&next) = left.iter().find(|&&j| needs(regs[last], regs[j])) else {
            break;
        };
        if let Some(start) = path.iter().position(|&p| p == next) {
            let mut names: Vec<String> = path[start..].iter().map(|&i| regs[i].uri()).collect();
            names.push(regs[next].uri());
            return names.join(" -> ");
        }
        path.push(next);
    }
    left.iter().map(|&i| regs[i].uri()).collect::<Vec<_>>().join(", ")
}
