//! The typed shape of a version 2 config file, and corten's defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The daemon's configuration. Field order is the order `to_toml_string`
/// writes keys in: scalars first (with `version` leading, as a reader looks
/// for it there), then tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub version: i64,
    #[serde(serialize_with = "lossy_path")]
    pub root: PathBuf,
    #[serde(serialize_with = "lossy_path")]
    pub state: PathBuf,
    pub temp: String,
    pub plugin_dir: String,
    pub disabled_plugins: Vec<String>,
    pub required_plugins: Vec<String>,
    pub imports: Vec<String>,
    pub oom_score: i64,
    pub grpc: GrpcConfig,
    pub ttrpc: TtrpcConfig,
    pub debug: DebugConfig,
    pub metrics: MetricsConfig,
    pub cgroup: CgroupConfig,
    pub timeouts: BTreeMap<String, String>,
    /// Raw per-plugin sections keyed by plugin URI; each plugin decodes its
    /// own (see `Loaded::section`).
    pub plugins: BTreeMap<String, toml::Value>,
    pub proxy_plugins: BTreeMap<String, toml::Value>,
    pub stream_processors: BTreeMap<String, toml::Value>,
}

pub const DEFAULT_ROOT: &str = "/var/lib/corten";
pub const DEFAULT_STATE: &str = "/run/corten";
pub const DEFAULT_ADDRESS: &str = "/run/corten/corten.sock";
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:1338";
/// gRPC's own default message limit is 4 MiB; containerd raises it so large
/// image manifests and container specs fit.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 16 << 20;

/// Timeouts every install has, so an empty `[timeouts]` or an import that
/// sets one of them does not lose the others.
pub const DEFAULT_TIMEOUTS: &[(&str, &str)] = &[
    ("io.containerd.timeout.shim.cleanup", "5s"),
    ("io.containerd.timeout.shim.load", "5s"),
    ("io.containerd.timeout.shim.shutdown", "3s"),
    ("io.containerd.timeout.task.state", "2s"),
];

impl Default for Config {
    fn default() -> Self {
        Config {
            version: 2,
            root: PathBuf::from(DEFAULT_ROOT),
            state: PathBuf::from(DEFAULT_STATE),
            temp: String::new(),
            plugin_dir: String::new(),
            disabled_plugins: Vec::new(),
            required_plugins: Vec::new(),
            imports: Vec::new(),
            oom_score: 0,
            grpc: GrpcConfig::default(),
            ttrpc: TtrpcConfig::default(),
            debug: DebugConfig::default(),
            metrics: MetricsConfig::default(),
            cgroup: CgroupConfig::default(),
            timeouts: DEFAULT_TIMEOUTS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            plugins: BTreeMap::new(),
            proxy_plugins: BTreeMap::new(),
            stream_processors: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpcConfig {
    pub address: String,
    pub tcp_address: String,
    pub tcp_tls_ca: String,
    pub tcp_tls_cert: String,
    pub tcp_tls_key: String,
    pub uid: u32,
    pub gid: u32,
    pub max_recv_message_size: u64,
    pub max_send_message_size: u64,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            address: DEFAULT_ADDRESS.to_owned(),
            tcp_address: String::new(),
            tcp_tls_ca: String::new(),
            tcp_tls_cert: String::new(),
            tcp_tls_key: String::new(),
            uid: 0,
            gid: 0,
            max_recv_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_send_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TtrpcConfig {
    /// Empty means "next to the gRPC socket"; see `Config::ttrpc_address`.
    pub address: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DebugConfig {
    pub address: String,
    pub uid: u32,
    pub gid: u32,
    pub level: String,
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    pub address: String,
    pub grpc_histogram: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            address: DEFAULT_METRICS_ADDRESS.to_owned(),
            grpc_histogram: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CgroupConfig {
    pub path: String,
}

/// A path set in code may not be UTF-8, which TOML cannot hold; dumping a
/// lossy rendering beats failing `cortend config dump` altogether.
fn lossy_path<S: serde::Serializer>(path: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

impl Config {
    /// Shims connect back over ttrpc; containerd derives that socket from the
    /// gRPC one when not configured, and shims built for containerd rely on it.
    pub fn ttrpc_address(&self) -> String {
        if self.ttrpc.address.is_empty() {
            format!("{}.ttrpc", self.grpc.address)
        } else {
            self.ttrpc.address.clone()
        }
    }

    /// The timeout configured under `key` (e.g.
    /// `io.containerd.timeout.shim.load`), or `None` if unset or unparsable.
    /// Loading already rejects unparsable values, so `None` normally means
    /// "not configured".
    pub fn timeout(&self, key: &str) -> Option<Duration> {
        crate::duration::parse_duration(self.timeouts.get(key)?)
    }

    /// The whole configuration as TOML, for `cortend config dump`.
    pub fn to_toml_string(&self) -> String {
        // Serialisation can only fail on values TOML cannot hold (e.g. a map
        // with non-string keys), which the model cannot contain.
        toml::to_string(self).expect("Config always serialises to TOML")
    }
}

/// The text of `cortend config default`: corten's defaults plus every
/// registered plugin's default section under `[plugins."<uri>"]`.
pub fn default_toml(plugin_defaults: &BTreeMap<String, toml::Value>) -> String {
    let mut config = Config::default();
    config.plugins.extend(
        plugin_defaults
            .iter()
            .map(|(uri, section)| (uri.clone(), section.clone())),
    );
    config.to_toml_string()
}
