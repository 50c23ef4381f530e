//! Layers into snapshots, as containerd's unpacker leaves them: each layer
//! applied on its parent in a temporary active snapshot, its diff ID
//! checked, and committed under its chain ID with the
//! `containerd.io/snapshot.ref` label; the layer blob labelled with its
//! uncompressed digest.

use std::{collections::BTreeMap, sync::Arc};

use corten_core::{
    content::ContentStore,
    diff::{Descriptor, Differ, UNCOMPRESSED_LABEL},
    digest::Digest,
    snapshots::{Kind, Snapshotter, SNAPSHOT_REF_LABEL},
    Error,
};

use crate::{
    context,
    fetch::{set_labels, sha256},
};

/// Annotations a layer passes on to its snapshot as labels.
const INHERITED_PREFIX: &str = "containerd.io/snapshot/";

/// The chain IDs of layers with these diff IDs, bottom first: the first is
/// its diff ID, each next one `sha256(parent + " " + diff ID)`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => sha256(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

pub struct Unpacker {
    pub ns: String,
    pub lease: String,
    pub content: Arc<dyn ContentStore>,
    pub snapshotter: Arc<dyn Snapshotter>,
    pub differ: Arc<dyn Differ>,
}

/// A unique part for temporary keys: time and randomness, as containerd's.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

impl Unpacker {
    /// Makes `chain_id` a committed snapshot holding `layer` on `parent`
    /// (empty for the bottom layer). Returns whether it had to be applied.
    /// Blocks.
    pub fn layer(&self, layer: &Descriptor, diff_id: &Digest, parent: &str, chain_id: &Digest) -> Result<bool, Error> {
        let chain = chain_id.to_string();
        match self.snapshotter.stat(&self.ns, &chain) {
            Ok(info) if info.kind == Kind::Committed => return Ok(false),
            Ok(info) => {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {chain} exists but is {}, not committed",
                    info.kind.name()
                )))
            }
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let mut labels: BTreeMap<String, String> = layer
            .annotations
            .iter()
            .filter(|(k, _)| k.starts_with(INHERITED_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(SNAPSHOT_REF_LABEL.to_string(), chain.clone());

        let mut attempt = 0;
        let (key, mounts) = loop {
            let key = format!("extract-{} {chain}", unique());
            match self
                .snapshotter
                .prepare(&self.ns, &key, parent, labels.clone(), Some(&self.lease))
            {
                Ok(mounts) => break (key, mounts),
                Err(Error::AlreadyExists(_)) if attempt < 3 => {
                    if self.snapshotter.stat(&self.ns, &chain).is_ok() {
                        return Ok(false);
                    }
                    attempt += 1;
                }
                Err(e) => return Err(context(e, &format!("prepare a snapshot for layer {}", layer.digest))),
            }
        };
        let abort = |why: Error| {
            if let Err(e) = self.snapshotter.remove(&self.ns, &key, Some(&self.lease)) {
                tracing::warn!("remove extraction snapshot {key:?}: {e}");
            }
            why
        };
        let applied = self.differ.apply(&self.ns, layer, &mounts).map_err(|e| {
            abort(context(
                e,
                &format!("failed to extract layer {} ({diff_id})", layer.digest),
            ))
        })?;
        if applied.digest != *diff_id {
            return Err(abort(Error::FailedPrecondition(format!(
                "wrong diff id calculated on extraction: layer {} unpacks to {}, its config says {diff_id}",
                layer.digest, applied.digest
            ))));
        }
        match self
            .snapshotter
            .commit(&self.ns, &chain, &key, labels, Some(&self.lease))
        {
            Ok(()) => {}
            Err(Error::AlreadyExists(_)) => {
                abort(Error::Internal(String::new()));
                return Ok(false);
            }
            Err(e) => return Err(abort(context(e, &format!("commit snapshot {chain}")))),
        }
        set_labels(
            self.content.as_ref(),
            &self.ns,
            &layer.digest,
            BTreeMap::from([(UNCOMPRESSED_LABEL.to_string(), diff_id.to_string())]),
        )?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_as_containerd_computes_them() {
        let a: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let b: Digest = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }
}
