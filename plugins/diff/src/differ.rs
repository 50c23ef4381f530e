//! The walking differ: [`Differ`] over a content store.

use std::{
    collections::BTreeMap,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use corten_core::{
    content::{ContentStore, Info, WriteOptions, Writer},
    diff::{Descriptor, DiffOptions, Differ, UNCOMPRESSED_LABEL},
    mount::Mount,
    Error,
};

use crate::{
    apply::{self, Limits, Target},
    compare,
    config::DiffConfig,
    media::{self, Compressor},
    meter::HashingWriter,
    mount::{unescape, Access, MountOptions, Overlay, TempMount},
};

pub struct WalkingDiffer {
    store: Arc<dyn ContentStore>,
    /// Where mount points are made: the plugin's state directory.
    mounts_dir: PathBuf,
    limits: Limits,
}

impl WalkingDiffer {
    pub fn new(store: Arc<dyn ContentStore>, mounts_dir: &Path, config: &DiffConfig) -> WalkingDiffer {
        WalkingDiffer {
            store,
            mounts_dir: mounts_dir.to_path_buf(),
            limits: Limits {
                max_bytes: config.max_uncompressed_bytes,
                max_entries: config.max_entries,
            },
        }
    }
}

/// An active overlay snapshot (one overlay mount with an upper directory)
/// is written through its upper directory, without mounting anything.
pub fn overlay_target(mounts: &[Mount]) -> Option<Target> {
    let [m] = mounts else {
        return None;
    };
    if m.kind != "overlay" {
        return None;
    }
    let overlay = Overlay::parse(&MountOptions::parse(&m.options).data);
    let upper = unescape(overlay.upperdir.as_deref()?);
    let lowers: Vec<PathBuf> = overlay.lowerdirs.iter().map(|l| unescape(l)).collect();
    if !upper.is_absolute() || lowers.iter().any(|l| !l.is_absolute()) {
        return None;
    }
    Some(Target::Overlay {
        upper,
        lowers,
        opaque_xattr: if overlay.userxattr() {
            "user.overlay.opaque"
        } else {
            "trusted.overlay.opaque"
        },
    })
}

/// Appends to an ingest through [`Writer::write_at`]; a store error is
/// carried inside the io::Error and taken out again by [`unwrap_io`].
struct IngestSink<'a> {
    writer: &'a mut dyn Writer,
    offset: u64,
}

impl Write for IngestSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write_at(self.offset, buf).map_err(io::Error::other)?;
        self.offset += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn unwrap_io(context: &str) -> impl Fn(io::Error) -> Error + '_ {
    move |e| match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(inner) => inner.clone(),
        None => Error::Internal(format!("{context}: {e}")),
    }
}

impl WalkingDiffer {
    /// Writes the diff into the open ingest; returns the diff ID and the
    /// size of what was written.
    fn write_diff(
        &self,
        writer: &mut dyn Writer,
        lower: &Path,
        upper: &Path,
        compression: media::Compression,
    ) -> Result<(corten_core::digest::Digest, u64), Error> {
        let fail = unwrap_io("write diff");
        let sink = BufWriter::with_capacity(1 << 20, IngestSink { writer, offset: 0 });
        let compressor = Compressor::new(sink, compression).map_err(&fail)?;
        let tar = compare::write_changes(lower, upper, HashingWriter::new(compressor)).map_err(&fail)?;
        let (diff_id, _, compressor) = tar.finish();
        let sink = compressor.finish().map_err(&fail)?;
        let sink = sink.into_inner().map_err(|e| fail(e.into_error()))?;
        Ok((diff_id, sink.offset))
    }

    fn ensure_uncompressed_label(
        &self,
        ns: &str,
        digest: &corten_core::digest::Digest,
        diff_id: &str,
    ) -> Result<(), Error> {
        let info = self.store.info(ns, digest)?;
        if info.labels.get(UNCOMPRESSED_LABEL).map(String::as_str) == Some(diff_id) {
            return Ok(());
        }
        let update = Info {
            labels: BTreeMap::from([(UNCOMPRESSED_LABEL.to_string(), diff_id.to_string())]),
            ..info
        };
        self.store
            .update(ns, &update, &[format!("labels.{UNCOMPRESSED_LABEL}")])
            .map(drop)
    }
}

impl Differ for WalkingDiffer {
    fn apply(&self, ns: &str, diff: &Descriptor, mounts: &[Mount]) -> Result<Descriptor, Error> {
        let encoding = media::layer_encoding(&diff.media_type)?;
        if mounts.is_empty() {
            return Err(Error::InvalidArgument("apply needs at least one mount".into()));
        }
        let (blob, _) = self.store.open(ns, &diff.digest)?;
        let layer = media::decompress_in_background(blob, encoding)
            .map_err(|e| Error::InvalidArgument(format!("read layer {}: {e}", diff.digest)))?;
        let applied = match overlay_target(mounts) {
            Some(target) => apply::apply(layer, &target, &self.limits),
            None => {
                let mounted = TempMount::new(&self.mounts_dir, mounts, Access::ReadWrite)?;
                apply::apply(layer, &Target::Dir(mounted.path().to_path_buf()), &self.limits)
            }
        }
        .map_err(|e| match e {
            Error::InvalidArgument(msg) => Error::InvalidArgument(format!("apply layer {}: {msg}", diff.digest)),
            other => other,
        })?;
        tracing::debug!(layer = %diff.digest, diff_id = %applied.diff_id, size = applied.size, "applied layer");
        Ok(Descriptor {
            media_type: media::OCI_LAYER.to_string(),
            digest: applied.diff_id,
            size: applied.size,
            annotations: BTreeMap::new(),
        })
    }

    fn compare(&self, ns: &str, lower: &[Mount], upper: &[Mount], options: DiffOptions) -> Result<Descriptor, Error> {
        let compression = media::diff_compression(&options.media_type)?;
        let media_type = match options.media_type.as_str() {
            "" => media::OCI_LAYER_GZIP.to_string(),
            other => other.to_string(),
        };
        if upper.is_empty() {
            return Err(Error::InvalidArgument("compare needs the upper mounts".into()));
        }
        let reference = match options.reference.as_str() {
            "" => format!("diff-{}", uuid::Uuid::new_v4().simple()),
            r => r.to_string(),
        };
        let lower_mount = TempMount::new(&self.mounts_dir, lower, Access::ReadOnly)?;
        let upper_mount = TempMount::new(&self.mounts_dir, upper, Access::ReadOnly)?;
        let mut writer = self.store.writer(
            ns,
            &reference,
            WriteOptions {
                lease: options.lease.clone(),
                ..WriteOptions::default()
            },
        )?;
        let written = self.write_diff(writer.as_mut(), lower_mount.path(), upper_mount.path(), compression);
        drop((lower_mount, upper_mount));
        let (diff_id, size) = match written {
            Ok(w) => w,
            Err(e) => {
                drop(writer);
                if let Err(abort) = self.store.abort(ns, &reference) {
                    tracing::warn!("abort ingest {reference}: {abort}");
                }
                return Err(e);
            }
        };
        let mut labels = options.labels.clone();
        labels.insert(UNCOMPRESSED_LABEL.to_string(), diff_id.to_string());
        let digest = match writer.commit(labels) {
            Ok(digest) => digest,
            Err(Error::AlreadyExists(_)) => {
                // The same layer is already stored: it is the answer, as
                // long as it says what it uncompresses to.
                let digest = writer.digest();
                self.ensure_uncompressed_label(ns, &digest, &diff_id.to_string())?;
                digest
            }
            Err(e) => {
                drop(writer);
                if let Err(abort) = self.store.abort(ns, &reference) {
                    tracing::warn!("abort ingest {reference}: {abort}");
                }
                return Err(e);
            }
        };
        tracing::debug!(%digest, %diff_id, size, "wrote diff");
        Ok(Descriptor {
            media_type,
            digest,
            size,
            annotations: BTreeMap::new(),
        })
    }
}
