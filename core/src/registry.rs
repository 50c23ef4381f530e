//! Brings the registered plugins up in dependency order and down in reverse.

use std::{collections::BTreeSet, sync::Arc};

use corten_config::{ConfigError, Loaded};
use tracing::{info, warn};

use crate::plugin::{CloseFn, InitContext, PluginRecord, PluginSet, Registration, Status, Stopping};

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
    stop: tokio::sync::watch::Sender<bool>,
}

impl Registry {
    /// Decodes every enabled plugin's config, orders the plugins by
    /// `requires`, and initialises them in waves, each wave's plugins at
    /// once (the two snapshotters open their stores side by side). Fails
    /// only on a bad config, a dependency cycle, or a required plugin that
    /// is disabled, missing or failed; other failures are recorded and
    /// startup goes on.
    pub async fn start(
        loaded: &Loaded,
        registrations: &[&'static Registration],
        metrics: &prometheus::Registry,
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
                return Err(StartError::Required {
                    uri: uri.clone(),
                    reason: "is disabled".into(),
                });
            }
            if !registrations.iter().any(|r| r.uri() == *uri) {
                return Err(StartError::Required {
                    uri: uri.clone(),
                    reason: "does not exist in corten".into(),
                });
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
        let (stop, stopping) = Stopping::new();
        let mut registry = Registry {
            plugins: plugins.clone(),
            closers: Vec::new(),
            stop,
        };
        for wave in waves(&enabled, &order) {
            // Plugins of one wave need none of each other: they start
            // together, and their outcomes are taken in init order.
            let started = wave.iter().map(|&index| {
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
                    metrics: metrics.clone(),
                    stopping: stopping.clone(),
                    plugins: plugins.clone(),
                };
                let plugin_config = decoded[index].take().expect("each plugin initialises once");
                (r.init)(ctx, plugin_config)
            });
            let outcomes = futures::future::join_all(started.collect::<Vec<_>>()).await;
            // Every outcome of the wave is recorded before a required
            // plugin's failure stops the start, so the close that follows
            // reaches the wave's other plugins too.
            let mut required_failure = None;
            for (&index, outcome) in wave.iter().zip(outcomes) {
                let r = enabled[index];
                let uri = r.uri();
                let mut record = PluginRecord {
                    plugin_type: r.plugin_type,
                    id: r.id,
                    requires: r.requires,
                    exports: Default::default(),
                    capabilities: Vec::new(),
                    status: Status::Ok,
                    value: None,
                };
                match outcome {
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
                if config.required_plugins.contains(&uri) && required_failure.is_none() {
                    let reason = match outcome {
                        Status::Ok => continue,
                        Status::Skipped(reason) => format!("was skipped: {reason}"),
                        Status::Failed(reason) => format!("failed: {reason}"),
                    };
                    required_failure = Some(StartError::Required { uri, reason });
                }
            }
            if let Some(failure) = required_failure {
                registry.close().await;
                return Err(failure);
            }
        }
        Ok(registry)
    }

    /// Tells every plugin the daemon is stopping (see [`Stopping`]).
    pub fn begin_stop(&self) {
        self.stop.send_replace(true);
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

/// Whether `r` must start after `other`: it requires `other`'s type, or
/// every plugin (`*`) and `other` is not one of those.
fn needs(r: &Registration, other: &Registration) -> bool {
    !std::ptr::eq(r, other)
        && r.requires
            .iter()
            .any(|t| (*t == "*" && !other.requires.contains(&"*")) || *t == other.plugin_type)
}

/// A deterministic topological order: among the plugins whose required types
/// are all placed, the first by (type, id) goes next.
fn init_order(regs: &[&'static Registration]) -> Result<Vec<usize>, StartError> {
    let mut by_name: Vec<usize> = (0..regs.len()).collect();
    by_name.sort_by_key(|&i| (regs[i].plugin_type, regs[i].id));
    let mut placed = vec![false; regs.len()];
    let mut order = Vec::with_capacity(regs.len());
    while order.len() < regs.len() {
        let next = by_name
            .iter()
            .copied()
            .find(|&i| !placed[i] && (0..regs.len()).all(|j| placed[j] || !needs(regs[i], regs[j])));
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                let left: Vec<usize> = by_name.iter().copied().filter(|&i| !placed[i]).collect();
                return Err(StartError::Cycle(describe_cycle(regs, &left, &needs)));
            }
        }
    }
    Ok(order)
}

/// `order` cut into waves: each plugin goes in the wave after the last one
/// holding a plugin it needs, so a wave's plugins need only earlier waves.
/// Within a wave the plugins keep their places in `order`.
fn waves(regs: &[&'static Registration], order: &[usize]) -> Vec<Vec<usize>> {
    let mut wave_of = vec![0; regs.len()];
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (place, &i) in order.iter().enumerate() {
        let wave = order[..place]
            .iter()
            .filter(|&&j| needs(regs[i], regs[j]))
            .map(|&j| wave_of[j] + 1)
            .max()
            .unwrap_or(0);
        wave_of[i] = wave;
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        waves[wave].push(i);
    }
    waves
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::plugin::{InitContext, InitError, Instance, NoConfig, Plugin};

    /// What the test plugins did, in order.
    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn log(s: String) {
        LOG.lock().unwrap().push(s);
    }

    macro_rules! test_plugin {
        ($name:ident, $ty:literal, $id:literal, [$($req:literal),*], $outcome:expr) => {
            struct $name;
            impl Plugin for $name {
                const TYPE: &'static str = $ty;
                const ID: &'static str = $id;
                const REQUIRES: &'static [&'static str] = &[$($req),*];
                type Config = NoConfig;
                async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
                    let uri = format!("{}.{}", ctx.plugin_type, ctx.id);
                    log(format!("init {uri}"));
                    let outcome: Result<(), InitError> = $outcome;
                    outcome?;
                    Ok(Instance::new(uri.clone()).on_close(move || async move { log(format!("close {uri}")) }))
                }
            }
        };
    }

    test_plugin!(Meta, "t.metadata.v1", "db", ["t.content.v1"], Ok(()));
    test_plugin!(Content, "t.content.v1", "store", [], Ok(()));
    test_plugin!(Service, "t.grpc.v1", "api", ["t.metadata.v1", "t.event.v1"], Ok(()));
    test_plugin!(Events, "t.event.v1", "x", [], Ok(()));
    test_plugin!(
        Skipper,
        "t.snapshotter.v1",
        "skippy",
        [],
        Err(InitError::Skip("no kernel support".into()))
    );
    test_plugin!(
        Broken,
        "t.snapshotter.v1",
        "broken",
        [],
        Err(InitError::Failed("boom".into()))
    );
    test_plugin!(Everything, "t.zz.v1", "all", ["*"], Ok(()));
    test_plugin!(Late, "t.tracing.v1", "late", [], Ok(()));
    test_plugin!(CycleA, "t.a.v1", "a", ["t.b.v1"], Ok(()));
    test_plugin!(CycleB, "t.b.v1", "b", ["t.a.v1"], Ok(()));

    static META: Registration = Registration::of::<Meta>();
    static CONTENT: Registration = Registration::of::<Content>();
    static SERVICE: Registration = Registration::of::<Service>();
    static EVENTS: Registration = Registration::of::<Events>();
    static SKIPPER: Registration = Registration::of::<Skipper>();
    static BROKEN: Registration = Registration::of::<Broken>();
    static EVERYTHING: Registration = Registration::of::<Everything>();
    static LATE: Registration = Registration::of::<Late>();
    static CYCLE_A: Registration = Registration::of::<CycleA>();
    static CYCLE_B: Registration = Registration::of::<CycleB>();

    fn loaded(extra: &str) -> Loaded {
        let dir = std::env::temp_dir().join(format!("corten-registry-{}", std::process::id()));
        let text = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\n{extra}",
            dir.join("root"),
            dir.join("state")
        );
        corten_config::from_str("test.toml".as_ref(), &text).unwrap()
    }

    async fn start(loaded: &Loaded, regs: &[&'static Registration]) -> Result<Registry, StartError> {
        Registry::start(loaded, regs, &prometheus::Registry::new()).await
    }

    #[test]
    fn plugins_that_need_none_of_each_other_share_a_wave() {
        let regs: [&'static Registration; 6] = [&EVERYTHING, &SERVICE, &META, &EVENTS, &CONTENT, &SKIPPER];
        let order = init_order(&regs).unwrap();
        let waves: Vec<Vec<String>> = waves(&regs, &order)
            .into_iter()
            .map(|wave| wave.into_iter().map(|i| regs[i].uri()).collect())
            .collect();
        assert_eq!(
            waves,
            vec![
                vec!["t.content.v1.store", "t.event.v1.x", "t.snapshotter.v1.skippy"],
                vec!["t.metadata.v1.db"],
                vec!["t.grpc.v1.api"],
                vec!["t.zz.v1.all"],
            ]
        );
    }

    fn uris(set: &PluginSet) -> Vec<String> {
        set.records()
            .iter()
            .map(|r| format!("{}.{}", r.plugin_type, r.id))
            .collect()
    }

    // The registry's tests share LOG, so they run as one test.
    #[tokio::test]
    async fn lifecycle() {
        // Dependencies first, otherwise by (type, id), whatever the input order.
        let regs = [&SERVICE, &EVERYTHING, &META, &EVENTS, &CONTENT];
        let order = init_order(&regs).unwrap();
        let names: Vec<String> = order.iter().map(|&i| regs[i].uri()).collect();
        assert_eq!(
            names,
            [
                "t.content.v1.store",
                "t.event.v1.x",
                "t.metadata.v1.db",
                "t.grpc.v1.api",
                "t.zz.v1.all"
            ]
        );

        let err = init_order(&[&CYCLE_A, &CYCLE_B, &CONTENT]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugin dependency cycle: t.a.v1.a -> t.b.v1.b -> t.a.v1.a"
        );

        // Skips and failures are recorded and startup goes on; close runs in reverse.
        LOG.lock().unwrap().clear();
        let mut registry = start(&loaded(""), &[&META, &CONTENT, &SKIPPER, &BROKEN]).await.unwrap();
        let records = registry.plugins().records();
        let status = |id: &str| records.iter().find(|r| r.id == id).unwrap().status.clone();
        assert!(matches!(status("skippy"), Status::Skipped(r) if r == "no kernel support"));
        assert!(matches!(status("broken"), Status::Failed(r) if r == "boom"));
        assert!(matches!(status("db"), Status::Ok));
        assert_eq!(
            records
                .iter()
                .find(|r| r.id == "db")
                .unwrap()
                .value::<String>()
                .unwrap(),
            "t.metadata.v1.db"
        );
        registry.close().await;
        assert_eq!(
            LOG.lock()
                .unwrap()
                .iter()
                .filter(|l| l.starts_with("close"))
                .cloned()
                .collect::<Vec<_>>(),
            ["close t.metadata.v1.db", "close t.content.v1.store"]
        );

        // Disabled plugins never init and are absent.
        LOG.lock().unwrap().clear();
        let registry = start(&loaded(r#"disabled_plugins = ["t.event.v1.x"]"#), &[&CONTENT, &EVENTS])
            .await
            .unwrap();
        assert_eq!(uris(&registry.plugins()), ["t.content.v1.store"]);
        assert_eq!(*LOG.lock().unwrap(), ["init t.content.v1.store"]);

        // A required plugin that fails stops startup, after closing what started.
        LOG.lock().unwrap().clear();
        let err = start(
            &loaded(r#"required_plugins = ["t.snapshotter.v1.broken"]"#),
            &[&CONTENT, &BROKEN, &LATE],
        )
        .await
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "required plugin t.snapshotter.v1.broken failed: boom");
        // The plugin that started in the same wave after it is closed too.
        for closed in ["close t.content.v1.store", "close t.tracing.v1.late"] {
            assert!(LOG.lock().unwrap().contains(&closed.to_string()), "{closed}");
        }

        let err = start(&loaded(r#"required_plugins = ["t.nope.v1.x"]"#), &[&CONTENT])
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("t.nope.v1.x does not exist"), "{err}");
    }
}
