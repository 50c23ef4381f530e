//! What the two registrations share: finding the root, opening the store
//! off the async runtime, and what introspection shows.

use std::{
    fs::DirBuilder,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use corten_core::{
    metadata::{self, MetaStore},
    plugin::{InitContext, InitError, Instance},
    snapshots::Snapshotter,
};

use crate::{driver::Driver, store::SnapshotStore};

/// Opens snapshotter `id` under `root_path` (containerd's key; empty means
/// the plugin's own root) with the driver `make` returns for that root.
pub async fn init<F>(ctx: InitContext, id: &'static str, root_path: &str, make: F) -> Result<Instance, InitError>
where
    F: FnOnce(&Path) -> Result<Box<dyn Driver>, InitError> + Send + 'static,
{
    let meta: Arc<dyn MetaStore> = ctx.get(metadata::PLUGIN_TYPE)?;
    let root = match root_path {
        "" => ctx.root.clone(),
        path => PathBuf::from(path),
    };
    let root = std::path::absolute(&root).map_err(|e| InitError::failed("snapshotter root", e))?;
    let exported = root.display().to_string();
    let opened = tokio::task::spawn_blocking(move || {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| InitError::failed(&format!("create {}", root.display()), e))?;
        let driver = make(&root)?;
        SnapshotStore::open(id, &root, meta, driver).map_err(|e| InitError::failed("open snapshotter", e))
    })
    .await
    .map_err(|e| InitError::failed("open snapshotter", e))??;
    let opened = Arc::new(opened);
    let closing = opened.clone();
    let store: Arc<dyn Snapshotter> = opened;
    Ok(Instance::new(store)
        .export("root", exported)
        .on_close(move || async move {
            if let Err(e) = tokio::task::spawn_blocking(move || closing.close()).await {
                tracing::warn!("close snapshotter {id}: {e}");
            }
        }))
}
