//! The object graph the collector marks, and what each kind of object
//! contributes to it: whether it is a root, what it references, and which
//! other keys go with it when it is swept.
//!
//! A new kind of object is one variant of [`Kind`],
//! one loader here and one line in [`load`]; marking and sweeping stay as
//! they are.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use corten_core::{
    containers, content,
    digest::Digest,
    gc, images, leases,
    metadata::{self, Reader},
    snapshots, Error,
};
use tracing::warn;

/// Lease resource kinds, as the lease manager records them.
const CONTENT_RESOURCE: &str = "content";
const INGEST_RESOURCE: &str = "ingests";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Content,
    Ingest,
    Lease,
    /// A snapshot of the snapshotter with this id.
    Snapshot(&'static str),
    /// Always a root: an image keeps its target and what that references.
    Image,
    /// Always a root: a container keeps its snapshot, its image and what its labels reference.
    Container,
}

impl Kind {
    /// Every `kind` label of the removal metric.
    pub(crate) const NAMES: [&'static str; 6] = ["content", "ingests", "leases", "snapshots", "images", "containers"];

    /// The metadata tree whose `<ns>/<id>` keys are objects of this kind.
    pub(crate) fn tree(self) -> Cow<'static, str> {
        match self {
            Kind::Content => Cow::Borrowed(content::TREE),
            Kind::Ingest => Cow::Borrowed(content::INGESTS_TREE),
            Kind::Lease => Cow::Borrowed(leases::TREE),
            Kind::Snapshot(snapshotter) => Cow::Owned(snapshots::tree(snapshotter)),
            Kind::Image => Cow::Borrowed(images::TREE),
            Kind::Container => Cow::Borrowed(containers::TREE),
        }
    }

    /// The `kind` label of the removal metric.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Content => Self::NAMES[0],
            Kind::Ingest => Self::NAMES[1],
            Kind::Lease => Self::NAMES[2],
            Kind::Snapshot(_) => Self::NAMES[3],
            Kind::Image => Self::NAMES[4],
            Kind::Container => Self::NAMES[5],
        }
    }
}

/// Every tree a sweep may remove keys from.
pub(crate) fn trees(snapshotters: &[&'static str]) -> Vec<String> {
    let mut trees: Vec<String> = [
        content::TREE,
        content::INGESTS_TREE,
        leases::TREE,
        leases::RESOURCES_TREE,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    trees.extend(snapshotters.iter().map(|s| snapshots::tree(s)));
    trees
}

/// One object: its kind and its key (`<ns>/<id>`) in that kind's tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Node {
    pub kind: Kind,
    pub key: Vec<u8>,
}

impl Node {
    fn new(kind: Kind, ns: &str, id: &str) -> Node {
        Node {
            kind,
            key: metadata::key(ns, id),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Object {
    pub root: bool,
    /// Objects this one keeps alive. They may not exist; such edges lead nowhere.
    pub refs: Vec<Node>,
    /// The objects in `refs` are kept, but not what they reference in turn.
    pub flat: bool,
    /// Keys in other trees that only make sense with this object: `(tree, key)`.
    pub dependents: Vec<(&'static str, Vec<u8>)>,
}

#[derive(Debug, Default)]
pub(crate) struct Graph {
    pub objects: HashMap<Node, Object>,
    /// Keys that belong to an object that no longer exists: every sweep removes them.
    pub dangling: Vec<(&'static str, Vec<u8>)>,
    /// The snapshotters whose snapshots are objects, by id.
    pub snapshotters: Vec<&'static str>,
}

/// Reads every kind into one graph. Runs under the exclusive lock, so the
/// trees agree with each other.
pub(crate) fn load(db: &dyn Reader, now: SystemTime, snapshotters: &[&'static str]) -> Result<Graph, Error> {
    let mut graph = Graph {
        snapshotters: snapshotters.to_vec(),
        ..Graph::default()
    };
    load_content(db, &mut graph)?;
    load_ingests(db, now, &mut graph)?;
    for snapshotter in snapshotters {
        load_snapshots(db, snapshotter, &mut graph)?;
    }
    load_images(db, &mut graph)?;
    load_containers(db, &mut graph)?;
    // Last, because lease resources attach to leases already in the graph.
    load_leases(db, now, &mut graph)?;
    Ok(graph)
}

/// The namespace and id of a `<ns>/<id>` key; `None` for a key corten did not write.
fn split_key(key: &[u8]) -> Option<(&str, &str)> {
    std::str::from_utf8(key).ok()?.split_once('/')
}

/// Scans one kind's tree, handing each object's namespace and decoded record
/// to `object`. A record that cannot be decoded is kept as a root: what it
/// would keep alive is unknown, and losing data is worse than keeping garbage.
fn load_tree<R: serde::de::DeserializeOwned>(
    db: &dyn Reader,
    kind: Kind,
    graph: &mut Graph,
    object: impl Fn(&str, R, &Graph) -> Object,
) -> Result<(), Error> {
    for (key, value) in db.scan_prefix(&kind.tree(), b"")? {
        let Some((ns, id)) = split_key(&key) else {
            warn!(tree = %kind.tree(), key = %String::from_utf8_lossy(&key), "gc: leaving a key it cannot parse");
            continue;
        };
        let obj = match metadata::decode::<R>(&value) {
            Ok(record) => object(ns, record, graph),
            Err(e) => {
                warn!(tree = %kind.tree(), ns, id, "gc: keeping a record it cannot read: {e}");
                Object {
                    root: true,
                    ..Object::default()
                }
            }
        };
        graph.objects.insert(Node { kind, key }, obj);
    }
    Ok(())
}

fn load_content(db: &dyn Reader, graph: &mut Graph) -> Result<(), Error> {
    load_tree(db, Kind::Content, graph, |ns, record: content::Record, graph| Object {
        root: record.labels.contains_key(gc::ROOT_LABEL),
        refs: label_refs(ns, &record.labels, &graph.snapshotters),
        ..Object::default()
    })
}

/// Every image is a root for its target and what its labels reference.
fn load_images(db: &dyn Reader, graph: &mut Graph) -> Result<(), Error> {
    load_tree(db, Kind::Image, graph, |ns, record: images::Record, graph| {
        let mut refs = label_refs(ns, &record.labels, &graph.snapshotters);
        refs.push(Node::new(Kind::Content, ns, &record.digest.to_string()));
        Object {
            root: true,
            refs,
            ..Object::default()
        }
    })
}

/// Every container is a root for its snapshot (`snapshotter`/`snapshot_key`),
/// the image of its name (a root of its own while it exists) and what its
/// labels reference.
fn load_containers(db: &dyn Reader, graph: &mut Graph) -> Result<(), Error> {
    load_tree(db, Kind::Container, graph, |ns, record: containers::Record, graph| {
        let mut refs = label_refs(ns, &record.labels, &graph.snapshotters);
        if let Some(snapshotter) = snapshotter_of(&record.snapshotter, &graph.snapshotters) {
            if !record.snapshot_key.is_empty() {
                refs.push(Node::new(Kind::Snapshot(snapshotter), ns, &record.snapshot_key));
            }
        }
        if !record.image.is_empty() {
            refs.push(Node::new(Kind::Image, ns, &record.image));
        }
        Object {
            root: true,
            refs,
            ..Object::default()
        }
    })
}

/// A snapshot keeps its parent, and what its labels reference.
fn load_snapshots(db: &dyn Reader, snapshotter: &'static str, graph: &mut Graph) -> Result<(), Error> {
    load_tree(
        db,
        Kind::Snapshot(snapshotter),
        graph,
        |ns, record: snapshots::Record, graph| {
            let mut refs = label_refs(ns, &record.labels, &graph.snapshotters);
            if !record.parent.is_empty() {
                refs.push(Node::new(Kind::Snapshot(snapshotter), ns, &record.parent));
            }
            Object {
                root: record.labels.contains_key(gc::ROOT_LABEL),
                refs,
                ..Object::default()
            }
        },
    )
}

fn load_ingests(db: &dyn Reader, now: SystemTime, graph: &mut Graph) -> Result<(), Error> {
    load_tree(db, Kind::Ingest, graph, |_, record: content::IngestRecord, _| Object {
        root: record.expires.is_some_and(|t| t > now),
        ..Object::default()
    })
}

fn load_leases(db: &dyn Reader, now: SystemTime, graph: &mut Graph) -> Result<(), Error> {
    // An expired lease is not a root; as nothing references a lease, the
    // sweep then removes it along with its resource keys.
    load_tree(db, Kind::Lease, graph, |_, record: leases::Record, _| Object {
        root: !leases::expired(&record.labels, now),
        flat: record.labels.contains_key(leases::FLAT_LABEL),
        ..Object::default()
    })?;
    for (key, _) in db.scan_prefix(leases::RESOURCES_TREE, b"")? {
        let Some((ns, lease, resource)) = leases::parse_resource_key(&key) else {
            warn!(key = %String::from_utf8_lossy(&key), "gc: leaving a lease resource key it cannot parse");
            continue;
        };
        match graph.objects.get_mut(&Node::new(Kind::Lease, &ns, &lease)) {
            Some(lease) => {
                lease.refs.extend(resource_node(&ns, &resource, &graph.snapshotters));
                lease.dependents.push((leases::RESOURCES_TREE, key));
            }
            None => graph.dangling.push((leases::RESOURCES_TREE, key)),
        }
    }
    Ok(())
}

/// The object a lease resource names, if it is of a kind the graph has.
fn resource_node(ns: &str, resource: &leases::Resource, snapshotters: &[&'static str]) -> Option<Node> {
    match resource.kind.as_str() {
        CONTENT_RESOURCE => Some(Node::new(Kind::Content, ns, &resource.id)),
        INGEST_RESOURCE => Some(Node::new(Kind::Ingest, ns, &resource.id)),
        other => {
            let snapshotter = snapshotter_of(other.strip_prefix("snapshots/")?, snapshotters)?;
            Some(Node::new(Kind::Snapshot(snapshotter), ns, &resource.id))
        }
    }
}

/// The loaded snapshotter with this name; references to others lead nowhere.
fn snapshotter_of(name: &str, snapshotters: &[&'static str]) -> Option<&'static str> {
    snapshotters.iter().copied().find(|s| *s == name)
}

/// The references `containerd.io/gc.ref.*` labels make, always within the
/// object's own namespace. Shared by every kind that carries such labels
/// (content, images, containers and snapshots).
fn label_refs(ns: &str, labels: &BTreeMap<String, String>, snapshotters: &[&'static str]) -> Vec<Node> {
    let mut refs = Vec::new();
    for (key, value) in labels {
        // Any suffix counts (`.l.0`, `.config`, `.m.1`, ...): reading one too
        // many as a reference only keeps more.
        if key.starts_with(gc::CONTENT_REF_PREFIX) {
            if let Ok(digest) = value.parse::<Digest>() {
                refs.push(Node::new(Kind::Content, ns, &digest.to_string()));
            }
        }
        if let Some(snapshotter) = key.strip_prefix(gc::SNAPSHOT_REF_PREFIX) {
            if let Some(snapshotter) = snapshotter_of(snapshotter, snapshotters) {
                refs.push(Node::new(Kind::Snapshot(snapshotter), ns, value));
            }
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_reference_content_in_the_same_namespace() {
        let d = format!("sha256:{}", "a".repeat(64));
        let labels = BTreeMap::from([
            (format!("{}.l.0", gc::CONTENT_REF_PREFIX), d.clone()),
            (gc::CONTENT_REF_PREFIX.to_string(), d.clone()),
            (format!("{}.config", gc::CONTENT_REF_PREFIX), "not a digest".to_string()),
            (format!("{}overlayfs", gc::SNAPSHOT_REF_PREFIX), "chain".to_string()),
            ("other".to_string(), d.clone()),
        ]);
        let refs = label_refs("ns", &labels, &[]);
        assert_eq!(refs, vec![Node::new(Kind::Content, "ns", &d); 2]);
        let refs = label_refs("ns", &labels, &["overlayfs"]);
        assert!(refs.contains(&Node::new(Kind::Snapshot("overlayfs"), "ns", "chain")));
    }

    #[test]
    fn keys_split_at_the_first_slash() {
        assert_eq!(split_key(b"ns/sha256:ab"), Some(("ns", "sha256:ab")));
        assert_eq!(split_key(b"nons"), None);
        assert_eq!(split_key(&[0xff, b'/', b'a']), None);
    }
}
