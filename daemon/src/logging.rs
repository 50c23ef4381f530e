//! Logs go to stderr through `tracing`; the level and format come from
//! `[debug]` (or `--log-level`), as in containerd.

use std::io::IsTerminal;

use anyhow::Context as _;
use tracing_subscriber::{
    filter::{LevelFilter, Targets},
    layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
    Layer as _,
};

/// Our crates: they log at the level asked for, everything else at `warn`.
const OURS: [&str; 7] = [
    "corten",
    "cortend",
    "corten_core",
    "corten_metadata",
    "corten_events",
    "corten_services",
    "corten_daemon",
];

pub fn init(level: &str, format: &str) -> anyhow::Result<()> {
    let level = if level.is_empty() { "info" } else { level };
    let level: LevelFilter = level.parse().with_context(|| format!("invalid log level {level:?}"))?;
    // Dependencies (h2, sled) are chatty at debug. A plain target filter
    // rather than `EnvFilter`: the directives are fixed, and `EnvFilter`'s
    // span and field matching is code the daemon would load for nothing.
    let filter = Targets::new()
        .with_default(LevelFilter::WARN)
        .with_targets(OURS.map(|target| (target, level)));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        "json" => tracing_subscriber::registry()
            .with(layer.json().with_filter(filter))
            .init(),
        "" | "text" => tracing_subscriber::registry().with(layer.with_filter(filter)).init(),
        other => anyhow::bail!("[debug] format {other:?} is not text or json"),
    }
    Ok(())
}
