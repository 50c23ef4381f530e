//! Logs go to stderr through `tracing`; the level and format come from
//! `[debug]` (or `--log-level`), as in containerd.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(level: &str, format: &str) -> anyhow::Result<()> {
    let level = if level.is_empty() { "info" } else { level };
    // Dependencies (h2, sled) are chatty at debug; our crates get the level asked for.
    let filter = EnvFilter::try_new(format!("warn,corten={level},cortend={level},corten_core={level},corten_metadata={level},corten_events={level},corten_services={level},corten_daemon={level}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        "json" => builder.json().init(),
        "" | "text" => builder.init(),
        other => anyhow::bail!("[debug] format {other:?} is not text or json"),
    }
    Ok(())
}
