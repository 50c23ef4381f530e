//! corten's daemon configuration: the model of `config.toml` (containerd's
//! version 2 layout), loading with imports, and typed access to plugin
//! sections with errors that name the file and line at fault.

mod diagnose;
mod duration;
mod error;
mod imports;
mod keypath;
mod load;
mod locate;
mod merge;
mod model;
mod section;
mod validate;
mod warning;

pub use duration::parse_duration;
pub use error::ConfigError;
pub use load::{from_str, load, Loaded, Source};
pub use model::{
    default_toml, CgroupConfig, Config, DebugConfig, GrpcConfig, MetricsConfig, TtrpcConfig, DEFAULT_ADDRESS,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_METRICS_ADDRESS, DEFAULT_ROOT, DEFAULT_STATE, DEFAULT_TIMEOUTS,
};
pub use warning::Warning;
