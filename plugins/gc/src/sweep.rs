//! Mark and sweep over the metadata, inside one exclusive section: the scan
//! and the removal see the same database, so nothing created in between can
//! be mistaken for garbage.

use std::{
    collections::{HashMap, HashSet},
    time::SystemTime,
};

use corten_core::{metadata::Exclusive, Error};

use crate::kinds::{self, Graph, Kind, Node};

/// How many objects of each kind one sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Removed(HashMap<&'static str, u64>);

impl Removed {
    /// Removals of objects of this kind (all snapshotters' snapshots count together).
    #[cfg(test)]
    pub(crate) fn of(&self, kind: Kind) -> u64 {
        self.named(kind.name())
    }

    pub(crate) fn named(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }

    fn add(&mut self, kind: Kind) {
        *self.0.entry(kind.name()).or_default() += 1;
    }
}

/// Every object reachable from a root. An object reached only through a
/// flat object is kept without following its own references; reached again
/// through a normal path, it is followed after all.
fn mark(graph: &Graph) -> HashSet<&Node> {
    let mut live = HashSet::new();
    let mut followed = HashSet::new();
    let mut stack: Vec<(&Node, bool)> = graph
        .objects
        .iter()
        .filter(|(_, object)| object.root)
        .map(|(node, _)| (node, true))
        .collect();
    while let Some((node, follow)) = stack.pop() {
        let Some(object) = graph.objects.get(node) else {
            continue;
        };
        live.insert(node);
        if follow && followed.insert(node) {
            stack.extend(object.refs.iter().map(|r| (r, !object.flat)));
        }
    }
    live
}

/// Loads the graph, marks it, and removes every unmarked object (with its
/// dependent keys) in one transaction.
pub(crate) fn mark_and_sweep(
    db: &dyn Exclusive,
    now: SystemTime,
    snapshotters: &[&'static str],
) -> Result<Removed, Error> {
    let graph = kinds::load(db, now, snapshotters)?;
    let live = mark(&graph);
    let mut removed = Removed::default();
    let mut doomed: Vec<(std::borrow::Cow<'static, str>, &[u8])> = graph
        .dangling
        .iter()
        .map(|(t, k)| (std::borrow::Cow::Borrowed(*t), k.as_slice()))
        .collect();
    for (node, object) in &graph.objects {
        if live.contains(node) {
            continue;
        }
        removed.add(node.kind);
        doomed.push((node.kind.tree(), &node.key));
        doomed.extend(
            object
                .dependents
                .iter()
                .map(|(t, k)| (std::borrow::Cow::Borrowed(*t), k.as_slice())),
        );
    }
    if !doomed.is_empty() {
        let trees = kinds::trees(snapshotters);
        let trees: Vec<&str> = trees.iter().map(String::as_str).collect();
        db.transact(&trees, &|txn| {
            doomed.iter().try_for_each(|(tree, key)| txn.remove(tree, key))
        })?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use corten_core::{gc, leases};

    use super::*;
    use crate::testing::{digest, Db};

    fn sweep(db: &Db) -> Removed {
        let mut out = None;
        db.store
            .exclusive(&mut |x| {
                out = Some(mark_and_sweep(x, SystemTime::now(), &[])?);
                Ok(())
            })
            .unwrap();
        out.unwrap()
    }

    fn sweep_with(db: &Db, snapshotters: &[&'static str]) -> Removed {
        let mut out = None;
        db.store
            .exclusive(&mut |x| {
                out = Some(mark_and_sweep(x, SystemTime::now(), snapshotters)?);
                Ok(())
            })
            .unwrap();
        out.unwrap()
    }

    #[test]
    fn snapshots_follow_parents_labels_and_leases() {
        let db = Db::new();
        // An image config references its top layer's chain; layers chain by parent.
        let config = vec![
            (gc::ROOT_LABEL.to_string(), "yes".to_string()),
            (format!("{}overlayfs", gc::SNAPSHOT_REF_PREFIX), "top".to_string()),
        ];
        db.blob("ns", 1, config);
        db.snapshot("overlayfs", "ns", "base", "", vec![]);
        db.snapshot("overlayfs", "ns", "top", "base", vec![]);
        db.snapshot("overlayfs", "ns", "orphan", "base", vec![]);
        db.snapshot("overlayfs", "ns", "leased", "", vec![]);
        db.snapshot(
            "overlayfs",
            "ns",
            "rooted",
            "",
            vec![(gc::ROOT_LABEL.to_string(), "x".to_string())],
        );
        db.snapshot("native", "ns", "top", "", vec![]);
        db.lease("ns", "l", vec![], &[("snapshots/overlayfs", "leased")]);

        let removed = sweep_with(&db, &["native", "overlayfs"]);
        assert_eq!(
            removed.of(Kind::Snapshot("overlayfs")),
            2,
            "the orphan and native's top"
        );
        for key in ["base", "top", "leased", "rooted"] {
            assert!(db.has_snapshot("overlayfs", "ns", key), "{key}");
        }
        assert!(!db.has_snapshot("overlayfs", "ns", "orphan"));
        assert!(
            !db.has_snapshot("native", "ns", "top"),
            "a label names one snapshotter only"
        );
    }

    #[test]
    fn containers_hold_their_snapshot_and_labelled_refs() {
        let db = Db::new();
        // An unpacked image: the manifest references the config, whose label
        // names the top snapshot of the layer chain.
        let config = vec![(format!("{}overlayfs", gc::SNAPSHOT_REF_PREFIX), "chain".to_string())];
        db.blob("ns", 1, child("config", 2));
        db.blob("ns", 2, config);
        db.image("ns", "img", 1);
        db.snapshot("overlayfs", "ns", "chain", "", vec![]);
        // The container's writable snapshot on top of the image's, and a blob
        // only the container's label keeps.
        db.snapshot("overlayfs", "ns", "c1", "chain", vec![]);
        db.blob("ns", 3, vec![]);
        db.container("ns", "c1", "overlayfs", "c1", "img", child("checkpoint", 3));
        // A container on a snapshotter that is not loaded keeps nothing of it.
        db.snapshot("native", "ns", "c2", "", vec![]);
        db.container("ns", "c2", "btrfs", "c2", "", vec![]);

        assert_eq!(sweep_with(&db, &["overlayfs"]), Removed::default());
        assert!(db.has_snapshot("overlayfs", "ns", "c1") && db.has_snapshot("overlayfs", "ns", "chain"));
        assert!(db.has_blob("ns", 3));

        // Without its image, the container still holds its snapshot and,
        // through its parent, the layers; the image's blobs go, as in containerd.
        db.delete_image("ns", "img");
        let removed = sweep_with(&db, &["overlayfs"]);
        assert_eq!((removed.of(Kind::Content), removed.total()), (2, 2));
        assert!(db.has_snapshot("overlayfs", "ns", "c1") && db.has_snapshot("overlayfs", "ns", "chain"));
        assert!(!db.has_blob("ns", 1) && !db.has_blob("ns", 2) && db.has_blob("ns", 3));

        db.delete_container("ns", "c1");
        let removed = sweep_with(&db, &["overlayfs"]);
        assert_eq!(
            (removed.of(Kind::Snapshot("overlayfs")), removed.of(Kind::Content)),
            (2, 1)
        );
        assert!(!db.has_snapshot("overlayfs", "ns", "c1") && !db.has_snapshot("overlayfs", "ns", "chain"));
        assert!(!db.has_blob("ns", 3));
        assert_eq!(removed.of(Kind::Container), 0, "containers are never collected");
    }

    #[test]
    fn a_container_keeps_its_image_content_while_the_image_exists() {
        let db = Db::new();
        db.blob("ns", 1, vec![]);
        db.image("ns", "img", 1);
        db.container("ns", "c", "overlayfs", "c", "img", vec![]);
        assert_eq!(sweep(&db), Removed::default());
        assert!(db.has_blob("ns", 1));
    }

    fn root() -> Vec<(String, String)> {
        vec![(gc::ROOT_LABEL.into(), "yes".into())]
    }

    fn child(name: &str, target: usize) -> Vec<(String, String)> {
        vec![(format!("{}.{name}", gc::CONTENT_REF_PREFIX), digest(target))]
    }

    #[test]
    fn roots_and_what_they_reference_survive() {
        let db = Db::new();
        db.blob("ns", 1, root().into_iter().chain(child("config", 2)).collect());
        db.blob("ns", 2, child("l.0", 3));
        db.blob("ns", 3, vec![]);
        db.blob("ns", 4, vec![]);
        // A reference to a blob that does not exist leads nowhere.
        db.blob("ns", 5, root().into_iter().chain(child("m.0", 99)).collect());

        let removed = sweep(&db);
        assert_eq!((removed.of(Kind::Content), removed.total()), (1, 1));
        assert!(db.has_blob("ns", 1) && db.has_blob("ns", 2) && db.has_blob("ns", 3) && db.has_blob("ns", 5));
        assert!(!db.has_blob("ns", 4));
        assert!(db.has_namespace("ns"));
        assert_eq!(sweep(&db), Removed::default());
    }

    #[test]
    fn leases_protect_until_deleted_or_expired() {
        let db = Db::new();
        db.blob("ns", 1, child("config", 2));
        db.blob("ns", 2, vec![]);
        db.lease("ns", "l", vec![], &[("content", &digest(1))]);
        assert_eq!(sweep(&db), Removed::default());
        assert!(db.has_blob("ns", 1) && db.has_blob("ns", 2));

        db.delete_lease("ns", "l");
        assert_eq!(sweep(&db).of(Kind::Content), 2);
        assert!(!db.has_blob("ns", 1) && !db.has_blob("ns", 2));

        db.blob("ns", 3, vec![]);
        let past = vec![(leases::EXPIRE_LABEL.into(), "2000-01-01T00:00:00Z".into())];
        db.lease("ns", "old", past, &[("content", &digest(3))]);
        let removed = sweep(&db);
        assert_eq!((removed.of(Kind::Lease), removed.of(Kind::Content)), (1, 1));
        assert!(!db.has_blob("ns", 3) && !db.has_lease("ns", "old"));
        assert!(db.resource_keys().is_empty());
    }

    #[test]
    fn a_flat_lease_keeps_only_what_it_lists() {
        let db = Db::new();
        db.blob("ns", 1, child("config", 2));
        db.blob("ns", 2, vec![]);
        let flat = vec![(leases::FLAT_LABEL.into(), String::new())];
        db.lease("ns", "flat", flat, &[("content", &digest(1))]);
        assert_eq!(sweep(&db).of(Kind::Content), 1);
        assert!(db.has_blob("ns", 1) && !db.has_blob("ns", 2));
        assert!(db.has_lease("ns", "flat"));

        // Reached again through a root, the child is followed after all.
        db.blob("ns", 2, vec![]);
        db.blob("ns", 3, root().into_iter().chain(child("m.0", 1)).collect());
        assert_eq!(sweep(&db), Removed::default());
    }

    #[test]
    fn ingests_live_while_unexpired_or_leased() {
        let db = Db::new();
        let now = SystemTime::now();
        db.ingest("ns", "none", None);
        db.ingest("ns", "stale", Some(now - Duration::from_secs(1)));
        db.ingest("ns", "fresh", Some(now + Duration::from_secs(3600)));
        db.ingest("ns", "leased", None);
        db.lease(
            "ns",
            "l",
            vec![],
            &[("ingests", "leased"), ("snapshots/overlayfs", "k")],
        );
        assert_eq!(sweep(&db).of(Kind::Ingest), 2);
        assert_eq!(db.ingests("ns"), ["fresh", "leased"]);
        assert_eq!(db.resource_keys().len(), 2);
    }

    #[test]
    fn namespaces_are_isolated() {
        let db = Db::new();
        db.blob("a", 1, root().into_iter().chain(child("config", 2)).collect());
        db.blob("b", 2, vec![]);
        db.lease("a", "l", vec![], &[("content", &digest(3))]);
        db.blob("b", 3, vec![]);
        db.blob("a", 2, vec![]);
        assert_eq!(sweep(&db).of(Kind::Content), 2);
        assert!(db.has_blob("a", 1) && db.has_blob("a", 2));
        assert!(!db.has_blob("b", 2) && !db.has_blob("b", 3));
        assert!(db.has_namespace("a") && db.has_namespace("b"));
    }

    #[test]
    fn dangling_lease_resources_and_unreadable_records() {
        let db = Db::new();
        let key = leases::resource_key(
            "ns",
            "gone",
            &leases::Resource {
                id: digest(1),
                kind: "content".into(),
            },
        );
        db.raw(leases::RESOURCES_TREE, &key, vec![]);
        db.raw(
            corten_core::content::TREE,
            format!("ns/{}", digest(2)).as_bytes(),
            vec![9, 9],
        );
        assert_eq!(sweep(&db), Removed::default());
        assert!(db.resource_keys().is_empty());
        assert!(db.has_blob("ns", 2));
    }
}
