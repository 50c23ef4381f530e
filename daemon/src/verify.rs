//! `cortend verify`: the stores checked at rest, without serving.
//!
//! Only the metadata and content plugins start, so the check changes
//! nothing (no garbage collection, no services); the metadata database's
//! lock makes it refuse to run beside a live daemon.

use std::sync::Arc;

use anyhow::{bail, Context as _};
use corten_config::Loaded;
use corten_core::{
    content::{self, ContentStore},
    metadata,
    plugin::{Registration, Status},
    registry::Registry,
};

pub fn run(loaded: Loaded) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(verify(loaded))
}

async fn verify(loaded: Loaded) -> anyhow::Result<()> {
    let wanted = [metadata::PLUGIN_TYPE, content::PLUGIN_TYPE];
    let registrations: Vec<_> = Registration::all()
        .into_iter()
        .filter(|r| wanted.contains(&r.plugin_type))
        .collect();
    let mut registry = Registry::start(&loaded, &registrations, &prometheus::Registry::new())
        .await
        .context("start the stores")?;
    let plugins = registry.plugins();
    for record in plugins.records() {
        if let Status::Failed(reason) | Status::Skipped(reason) = &record.status {
            registry.close().await;
            bail!(
                "{}.{}: {reason} (is cortend still running?)",
                record.plugin_type,
                record.id
            );
        }
    }
    let mut problems = Vec::new();
    for (id, store) in plugins.get_all::<Arc<dyn ContentStore>>(content::PLUGIN_TYPE) {
        let found = tokio::task::spawn_blocking(move || store.verify()).await??;
        problems.extend(found.into_iter().map(|p| format!("{}.{id}: {p}", content::PLUGIN_TYPE)));
    }
    registry.close().await;
    for problem in &problems {
        println!("{problem}");
    }
    if !problems.is_empty() {
        bail!("{} problem(s) found", problems.len());
    }
    println!("ok: the stores are consistent");
    Ok(())
}
