//! What a plugin declares and what its init receives.
//!
//! A plugin implements [`Plugin`] and registers with one line,
//! `corten_core::register_plugin!(MyPlugin);`, in its own crate. The registry
//! finds every registration through `inventory`, so the core never names one.

use std::{
    any::Any,
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use corten_config::{ConfigError, Loaded, Warning};
use futures::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};

/// A plugin: containerd's type and id strings, what it needs, its config and its init.
pub trait Plugin: 'static {
    /// containerd's plugin type, e.g. `io.containerd.metadata.v1`.
    const TYPE: &'static str;
    /// The id within the type, e.g. `sled`.
    const ID: &'static str;
    /// Plugin types whose every instance must initialise first; `"*"` means all others.
    const REQUIRES: &'static [&'static str] = &[];

    /// Decoded from `[plugins."<type>.<id>"]`; its `Default` is what `config default` prints.
    type Config: Serialize + DeserializeOwned + Default + Send + 'static;

    fn init(
        ctx: InitContext,
        config: Self::Config,
    ) -> impl Future<Output = Result<Instance, InitError>> + Send + 'static;
}

/// Why a plugin did not come up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InitError {
    /// The plugin cannot work here and says so (shown as `skip` with the reason).
    #[error("skip: {0}")]
    Skip(String),
    #[error("{0}")]
    Failed(String),
}

impl InitError {
    pub fn failed(context: &str, err: impl std::fmt::Display) -> Self {
        InitError::Failed(format!("{context}: {err}"))
    }
}

type DecodedConfig = Box<dyn Any + Send>;
type Decoder = fn(&Loaded, &str) -> Result<(DecodedConfig, Vec<Warning>), ConfigError>;
type Initialiser = fn(InitContext, DecodedConfig) -> BoxFuture<'static, Result<Instance, InitError>>;

/// The type-erased form of a [`Plugin`] that `inventory` collects.
pub struct Registration {
    pub plugin_type: &'static str,
    pub id: &'static str,
    pub requires: &'static [&'static str],
    /// The default config section, for `cortend config default`.
    pub default_config: fn() -> toml::Value,
    /// The section as the plugin will see it: the file's values over the defaults.
    pub effective_config: fn(&Loaded, &str) -> Result<toml::Value, ConfigError>,
    pub(crate) decode: Decoder,
    pub(crate) init: Initialiser,
}

inventory::collect!(Registration);

impl Registration {
    pub const fn of<P: Plugin>() -> Self {
        Registration {
            plugin_type: P::TYPE,
            id: P::ID,
            requires: P::REQUIRES,
            default_config: default_config::<P>,
            effective_config: effective_config::<P>,
            decode: decode::<P>,
            init: init::<P>,
        }
    }

    /// containerd's plugin URI: `<type>.<id>`.
    pub fn uri(&self) -> String {
        format!("{}.{}", self.plugin_type, self.id)
    }

    /// Every registration linked into this binary, in a stable order (inventory has none).
    pub fn all() -> Vec<&'static Registration> {
        let mut all: Vec<_> = inventory::iter::<Registration>.into_iter().collect();
        all.sort_by_key(|r| (r.plugin_type, r.id));
        all
    }
}

fn default_config<P: Plugin>() -> toml::Value {
    toml::Value::try_from(P::Config::default()).unwrap_or_else(|_| toml::Value::Table(Default::default()))
}

fn effective_config<P: Plugin>(loaded: &Loaded, uri: &str) -> Result<toml::Value, ConfigError> {
    let (config, _) = loaded.section::<P::Config>(&["plugins", uri])?;
    Ok(toml::Value::try_from(config).unwrap_or_else(|_| toml::Value::Table(Default::default())))
}

fn decode<P: Plugin>(loaded: &Loaded, uri: &str) -> Result<(DecodedConfig, Vec<Warning>), ConfigError> {
    let (config, warnings) = loaded.section::<P::Config>(&["plugins", uri])?;
    Ok((Box::new(config), warnings))
}

fn init<P: Plugin>(ctx: InitContext, config: DecodedConfig) -> BoxFuture<'static, Result<Instance, InitError>> {
    match config.downcast::<P::Config>() {
        Ok(config) => Box::pin(P::init(ctx, *config)),
        // `decode` and `init` come from the same `P`, so the types always agree.
        Err(_) => Box::pin(async { Err(InitError::Failed("config type mismatch".into())) }),
    }
}

/// Registers a [`Plugin`] with the core. One line in the plugin's crate.
#[macro_export]
macro_rules! register_plugin {
    ($plugin:ty) => {
        $crate::inventory::submit! { $crate::plugin::Registration::of::<$plugin>() }
    };
}

pub(crate) type CloseFn = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// What a plugin's init returns: the value other plugins look up, and what
/// introspection shows about it.
pub struct Instance {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    pub(crate) exports: BTreeMap<String, String>,
    pub(crate) capabilities: Vec<String>,
    pub(crate) close: Option<CloseFn>,
}

impl Instance {
    /// `value` is what [`InitContext::get`] hands out; usually an `Arc<dyn Trait>`.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Instance {
            value: Arc::new(value),
            exports: BTreeMap::new(),
            capabilities: Vec::new(),
            close: None,
        }
    }

    pub fn export(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.exports.insert(key.into(), value.into());
        self
    }

    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.capabilities.push(capability.into());
        self
    }

    /// Runs at shutdown, in the reverse of init order.
    pub fn on_close<F, Fut>(mut self, close: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.close = Some(Box::new(move || Box::pin(close())));
        self
    }
}

/// How one plugin's init ended.
#[derive(Debug, Clone)]
pub enum Status {
    Ok,
    Skipped(String),
    Failed(String),
}

/// One plugin as introspection reports it.
#[derive(Clone)]
pub struct PluginRecord {
    pub plugin_type: &'static str,
    pub id: &'static str,
    pub requires: &'static [&'static str],
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub status: Status,
    pub(crate) value: Option<Arc<dyn Any + Send + Sync>>,
}

impl PluginRecord {
    /// The instance's value, if the plugin initialised and is of type `T`.
    pub fn value<T: Any + Clone>(&self) -> Option<T> {
        self.value.as_ref()?.downcast_ref::<T>().cloned()
    }
}

/// Every plugin considered so far, in init order; filled while the registry
/// runs, so a plugin that keeps it (introspection) sees the final list.
#[derive(Default)]
pub struct PluginSet {
    records: RwLock<Vec<PluginRecord>>,
}

impl PluginSet {
    pub fn records(&self) -> Vec<PluginRecord> {
        self.records.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn push(&self, record: PluginRecord) {
        self.records.write().unwrap_or_else(|e| e.into_inner()).push(record);
    }

    /// Values of every initialised instance of `plugin_type`, as `(id, value)`.
    pub fn get_all<T: Any + Clone>(&self, plugin_type: &str) -> Vec<(&'static str, T)> {
        self.records()
            .iter()
            .filter(|r| r.plugin_type == plugin_type)
            .filter_map(|r| Some((r.id, r.value::<T>()?)))
            .collect()
    }
}

/// What a plugin's init is given.
pub struct InitContext {
    pub plugin_type: &'static str,
    pub id: &'static str,
    /// `<root>/<type>.<id>`: the plugin's persistent directory (not created for it).
    pub root: PathBuf,
    /// `<state>/<type>.<id>`: the plugin's volatile directory (not created for it).
    pub state: PathBuf,
    /// The daemon's whole config, for the few plugins that need global settings.
    pub config: Arc<corten_config::Config>,
    /// The gRPC address clients use.
    pub grpc_address: String,
    /// The ttrpc address shims publish events to.
    pub ttrpc_address: String,
    /// Where a plugin registers its own Prometheus metrics.
    pub metrics: prometheus::Registry,
    /// Resolves when the daemon begins to stop.
    pub stopping: Stopping,
    pub(crate) plugins: Arc<PluginSet>,
}

/// The daemon's stop, as plugins see it: long-lived streams (event
/// subscriptions) end when it begins, so a graceful stop does not wait for
/// clients that would never hang up by themselves.
#[derive(Clone)]
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    /// The sender begins the stop by sending `true`; dropping it counts as a stop too.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Stopping) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Stopping(rx))
    }

    /// Resolves once the stop has begun (or the registry is gone).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

impl InitContext {
    /// The first initialised instance of `plugin_type` whose value is a `T`.
    pub fn get<T: Any + Clone>(&self, plugin_type: &str) -> Result<T, InitError> {
        self.plugins
            .get_all::<T>(plugin_type)
            .into_iter()
            .next()
            .map(|(_, v)| v)
            .ok_or_else(|| InitError::Failed(format!("no plugin of type {plugin_type} is loaded")))
    }

    /// The instance of exactly `<plugin_type>.<id>`.
    pub fn get_by_id<T: Any + Clone>(&self, plugin_type: &str, id: &str) -> Result<T, InitError> {
        self.plugins
            .get_all::<T>(plugin_type)
            .into_iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v)
            .ok_or_else(|| InitError::Failed(format!("plugin {plugin_type}.{id} is not loaded")))
    }

    /// The live list of plugins, for introspection.
    pub fn plugins(&self) -> Arc<PluginSet> {
        self.plugins.clone()
    }
}

/// The config of a plugin that has no settings.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct NoConfig {}
