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

/// Our crates (`cortend`, `corten_core`, `corten_snapshots`, ...): a
/// target matches by prefix, so one directive gives them all the level
/// asked for; everything else logs at `warn`.
const OURS: &str = "corten";

pub fn init(level: &str, format: &str) -> anyhow::Result<()> {
    let level = if level.is_empty() { "info" } else { level };
    let level: LevelFilter = level.parse().with_context(|| format!("invalid log level {level:?}"))?;
    // Dependencies (h2, sled) are chatty at debug. A plain target filter
    // rather than `EnvFilter`: the directives are fixed, and `EnvFilter`'s
    // span and field matching is code the daemon would load for nothing.
    let filter = Targets::new().with_default(LevelFilter::WARN).with_target(OURS, level);
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
