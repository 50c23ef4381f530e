//! The plugins built into `cortend`. Linking a plugin crate is what
//! registers it (each submits its registrations through `inventory`); no
//! other code in the daemon names a plugin.

pub fn link() {
    corten_content::link();
    corten_diff::link();
    corten_events::link();
    corten_gc::link();
    corten_images::link();
    corten_leases::link();
    corten_metadata::link();
    corten_runtime::link();
    corten_services::link();
    corten_snapshots::link();
}
