//! Plugin `io.containerd.snapshotter.v1.overlayfs`: each snapshot is a
//! directory holding only its own changes, and an active snapshot or a
//! view is its parents' directories stacked by the kernel's overlayfs.

use std::{
    fs,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::Path,
};

use corten_core::{
    metadata,
    mount::Mount,
    plugin::{InitContext, InitError, Instance, Plugin},
    register_plugin,
    snapshots::{self, Kind},
    Error,
};
use nix::{
    errno::Errno,
    mount::{mount, umount2, MntFlags, MsFlags},
};
use serde::{Deserialize, Serialize};

use crate::{
    backend::DirSpec,
    driver::{bind, Driver, Layers},
};

/// The label containerd's `upperdir_label` option adds.
pub const UPPERDIR_LABEL: &str = "containerd.io/snapshot/overlay.upperdir";

/// overlayfs wants its work dir empty and on the upper's filesystem; 0711
/// as containerd makes it. Only an active snapshot with a parent is ever an
/// overlay's upper: one without is a bind mount of its `fs` (as a view is),
/// so it gets no work dir, one directory fewer to make and to remove.
const UPPER_DIRS: &[DirSpec] = &[("fs", 0o755), ("work", 0o711)];
const BIND_DIRS: &[DirSpec] = &[("fs", 0o755)];

/// `[plugins."io.containerd.snapshotter.v1.overlayfs"]`, containerd 1.6's keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OverlayConfig {
    /// Where the snapshots live; empty for the plugin's own root.
    pub root_path: String,
    /// Reports each snapshot's upper directory in the
    /// `containerd.io/snapshot/overlay.upperdir` label.
    pub upperdir_label: bool,
}

pub struct Overlay {
    /// The kernel knows `index=off`: set it, as containerd does, so an
    /// upper dir stays mountable over a lower that was copied or moved
    /// (the index ties an upper to its lowers' file handles).
    index_off: bool,
    upperdir_label: bool,
}

impl Overlay {
    /// Proves overlayfs works on the filesystem under `root` by mounting
    /// one there; the error says why it does not.
    pub fn probe(root: &Path, upperdir_label: bool) -> Result<Overlay, String> {
        match probe_mount(root, true) {
            Ok(()) => Ok(Overlay {
                index_off: true,
                upperdir_label,
            }),
            // A kernel older than the option refuses it; one that cannot do
            // overlays at all fails again without it.
            Err(with_index) => match probe_mount(root, false) {
                Ok(()) => Ok(Overlay {
                    index_off: false,
                    upperdir_label,
                }),
                Err(e) => Err(format!("{with_index}; without index=off: {e}")),
            },
        }
    }
}

/// Unmounts on drop, so a failed probe leaves no mount behind.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if umount2(self.0, MntFlags::empty()).is_err() {
            let _ = umount2(self.0, MntFlags::MNT_DETACH);
        }
    }
}

/// Mounts two lowers, an upper and a work dir in a scratch directory under
/// `root`, then checks a write copies up and a deletion leaves a whiteout
/// that hides the lower file: what the snapshotter and the differ rely on.
fn probe_mount(root: &Path, index_off: bool) -> Result<(), String> {
    let scratch = tempfile::Builder::new()
        .prefix("probe-")
        .tempdir_in(root)
        .map_err(|e| format!("make a scratch directory under {}: {e}", root.display()))?;
    let dir = scratch.path();
    for name in ["lower1", "lower2", "upper", "work", "merged"] {
        fs::create_dir(dir.join(name)).map_err(|e| format!("make probe directory: {e}"))?;
    }
    fs::write(dir.join("lower1/a"), b"a").map_err(|e| format!("write probe file: {e}"))?;
    fs::write(dir.join("lower2/b"), b"b").map_err(|e| format!("write probe file: {e}"))?;
    let path = |name: &str| dir.join(name).display().to_string();
    let mut options = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        path("lower2"),
        path("lower1"),
        path("upper"),
        path("work")
    );
    if index_off {
        options.insert_str(0, "index=off,");
    }
    let merged = dir.join("merged");
    let mount_with = |options: &str| {
        mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(options),
        )
    };
    // Unmounting an overlay syncs its upper filesystem, which is the whole
    // filesystem under `root` and may hold any amount of other programs'
    // dirty data: `volatile` (Linux 5.10) skips that for a scratch mount
    // whose files are thrown away. An older kernel refuses the option.
    mount_with(&format!("volatile,{options}"))
        .or_else(|e| match e {
            Errno::EINVAL => mount_with(&options),
            e => Err(e),
        })
        .map_err(|e: Errno| format!("mount overlay under {}: {e}", root.display()))?;
    let _mounted = Mounted(&merged);

    fs::write(merged.join("c"), b"c").map_err(|e| format!("write through overlay: {e}"))?;
    fs::remove_file(merged.join("a")).map_err(|e| format!("delete through overlay: {e}"))?;
    let whiteout = fs::symlink_metadata(dir.join("upper/a")).map_err(|e| format!("no whiteout in upper: {e}"))?;
    if !whiteout.file_type().is_char_device() || whiteout.rdev() != 0 {
        return Err("a deletion through overlay left no whiteout in the upper directory".into());
    }
    let mut seen: Vec<String> = fs::read_dir(&merged)
        .map_err(|e| format!("list overlay: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    seen.sort();
    if seen != ["b", "c"] {
        return Err(format!("overlay lists {seen:?} where it should list [\"b\", \"c\"]"));
    }
    Ok(())
}

impl Driver for Overlay {
    fn dirs(&self, kind: Kind, layered: bool) -> &'static [DirSpec] {
        match kind {
            Kind::Active if layered => UPPER_DIRS,
            Kind::Active | Kind::View | Kind::Committed => BIND_DIRS,
        }
    }

    /// The upper directory is the merged root: it takes its parent's owner
    /// so the root of an image keeps its owner (containerd does the same;
    /// the mode stays 0755 as there).
    fn populate(&self, fs: &Path, parent_fs: Option<&Path>) -> Result<(), Error> {
        let Some(parent) = parent_fs else {
            return Ok(());
        };
        let meta = fs::metadata(parent).map_err(|e| Error::internal(&format!("stat {}", parent.display()), e))?;
        std::os::unix::fs::lchown(fs, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| Error::internal(&format!("chown {}", fs.display()), e))
    }

    fn mounts(&self, layers: &Layers) -> Vec<Mount> {
        let active = layers.kind == Kind::Active;
        match layers.parents {
            [] => return vec![bind(layers.fs, active)],
            // A view of one layer is that layer, read-only.
            [only] if !active => return vec![bind(only, false)],
            _ => {}
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        if active {
            options.push(format!("workdir={}", layers.work.display()));
            options.push(format!("upperdir={}", layers.fs.display()));
        }
        let lower: Vec<String> = layers.parents.iter().map(|p| p.display().to_string()).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }]
    }

    fn fs_label(&self) -> Option<&'static str> {
        self.upperdir_label.then_some(UPPERDIR_LABEL)
    }
}

pub struct OverlayPlugin;

impl Plugin for OverlayPlugin {
    const TYPE: &'static str = snapshots::PLUGIN_TYPE;
    const ID: &'static str = "overlayfs";
    const REQUIRES: &'static [&'static str] = &[metadata::PLUGIN_TYPE];
    type Config = OverlayConfig;

    async fn init(ctx: InitContext, config: OverlayConfig) -> Result<Instance, InitError> {
        crate::plugin::init(ctx, Self::ID, &config.root_path, move |root| {
            let overlay = Overlay::probe(root, config.upperdir_label).map_err(InitError::Skip)?;
            Ok(Box::new(overlay) as Box<dyn Driver>)
        })
        .await
    }
}

register_plugin!(OverlayPlugin);
