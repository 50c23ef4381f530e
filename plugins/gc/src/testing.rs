//! Fixtures for the tests: a real sled store with helpers that write records
//! the way the stores do, and a content store that only counts backend sweeps.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use corten_core::{
    content::{self, ContentStore, Info, Status, WriteOptions, Writer},
    digest::Digest,
    leases,
    metadata::{self, MetaStore},
    namespaces::{self, Namespaces},
    Error,
};
use corten_metadata::SledStore;

/// The n-th made-up digest.
pub(crate) fn digest(n: usize) -> String {
    format!("sha256:{n:064x}")
}

pub(crate) struct Db {
    pub store: Arc<dyn MetaStore>,
    _dir: tempfile::TempDir,
}

impl Db {
    pub fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("meta"), 1 << 20).unwrap();
        Db {
            store: Arc::new(store),
            _dir: dir,
        }
    }

    pub fn raw(&self, tree: &str, key: &[u8], value: Vec<u8>) {
        self.store
            .transact(&[tree], &|t| t.insert(tree, key, value.clone()))
            .unwrap();
    }

    pub fn blob(&self, ns: &str, n: usize, labels: Vec<(String, String)>) {
        let record = content::Record {
            size: 1,
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
            labels: labels.into_iter().collect(),
        };
        let value = metadata::encode(&record).unwrap();
        self.store
            .transact(&[namespaces::TREE, content::TREE], &|t| {
                Namespaces::ensure(t, ns)?;
                t.insert(content::TREE, &metadata::key(ns, &digest(n)), value.clone())
            })
            .unwrap();
    }

    /// A committed snapshot `key` of snapshotter `sn` with `parent` ("" for none).
    pub fn snapshot(&self, sn: &str, ns: &str, key: &str, parent: &str, labels: Vec<(String, String)>) {
        let record = corten_core::snapshots::Record {
            backend_key: format!("{ns}/1/{key}"),
            parent: parent.into(),
            kind: corten_core::snapshots::Kind::Committed,
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
            labels: labels.into_iter().collect(),
        };
        self.raw(
            &corten_core::snapshots::tree(sn),
            &metadata::key(ns, key),
            metadata::encode(&record).unwrap(),
        );
    }

    pub fn has_snapshot(&self, sn: &str, ns: &str, key: &str) -> bool {
        self.store
            .get(&corten_core::snapshots::tree(sn), &metadata::key(ns, key))
            .unwrap()
            .is_some()
    }

    /// A container on snapshot `key` of snapshotter `sn`, made from `image`.
    pub fn container(&self, ns: &str, id: &str, sn: &str, key: &str, image: &str, labels: Vec<(String, String)>) {
        let record = corten_core::containers::Record {
            labels: labels.into_iter().collect(),
            image: image.into(),
            runtime_name: "io.containerd.runc.v2".into(),
            runtime_options: None,
            spec: Some(corten_core::any_value::AnyValue::new("spec", b"{}".to_vec())),
            snapshotter: sn.into(),
            snapshot_key: key.into(),
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
            extensions: BTreeMap::new(),
        };
        let value = metadata::encode(&record).unwrap();
        let tree = corten_core::containers::TREE;
        self.store
            .transact(&[namespaces::TREE, tree], &|t| {
                Namespaces::ensure(t, ns)?;
                t.insert(tree, &metadata::key(ns, id), value.clone())
            })
            .unwrap();
    }

    pub fn delete_container(&self, ns: &str, id: &str) {
        let tree = corten_core::containers::TREE;
        self.store
            .transact(&[tree], &|t| t.remove(tree, &metadata::key(ns, id)))
            .unwrap();
    }

    /// An image `name` whose target is the n-th made-up digest.
    pub fn image(&self, ns: &str, name: &str, n: usize) {
        let record = corten_core::images::Record {
            labels: BTreeMap::new(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest(n).parse().unwrap(),
            size: 1,
            annotations: BTreeMap::new(),
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
        };
        let value = metadata::encode(&record).unwrap();
        let tree = corten_core::images::TREE;
        self.store
            .transact(&[namespaces::TREE, tree], &|t| {
                Namespaces::ensure(t, ns)?;
                t.insert(tree, &metadata::key(ns, name), value.clone())
            })
            .unwrap();
    }

    pub fn delete_image(&self, ns: &str, name: &str) {
        let tree = corten_core::images::TREE;
        self.store
            .transact(&[tree], &|t| t.remove(tree, &metadata::key(ns, name)))
            .unwrap();
    }

    pub fn has_blob(&self, ns: &str, n: usize) -> bool {
        self.store
            .get(content::TREE, &metadata::key(ns, &digest(n)))
            .unwrap()
            .is_some()
    }

    pub fn ingest(&self, ns: &str, reference: &str, expires: Option<SystemTime>) {
        let value = metadata::encode(&content::IngestRecord { expires }).unwrap();
        self.store
            .transact(&[namespaces::TREE, content::INGESTS_TREE], &|t| {
                Namespaces::ensure(t, ns)?;
                t.insert(content::INGESTS_TREE, &metadata::key(ns, reference), value.clone())
            })
            .unwrap();
    }

    pub fn ingests(&self, ns: &str) -> Vec<String> {
        self.store
            .scan_prefix(content::INGESTS_TREE, &metadata::key(ns, ""))
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k[ns.len() + 1..].to_vec()).unwrap())
            .collect()
    }

    /// A lease holding `(kind, id)` resources.
    pub fn lease(&self, ns: &str, id: &str, labels: Vec<(String, String)>, resources: &[(&str, &str)]) {
        let record = leases::Record {
            created_at: SystemTime::now(),
            labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
        };
        let value = metadata::encode(&record).unwrap();
        let trees = [namespaces::TREE, leases::TREE, leases::RESOURCES_TREE];
        self.store
            .transact(&trees, &|t| {
                Namespaces::ensure(t, ns)?;
                t.insert(leases::TREE, &metadata::key(ns, id), value.clone())?;
                for (kind, rid) in resources {
                    let resource = leases::Resource {
                        id: rid.to_string(),
                        kind: kind.to_string(),
                    };
                    leases::add_resource(t, ns, id, &resource)?;
                }
                Ok(())
            })
            .unwrap();
    }

    pub fn has_lease(&self, ns: &str, id: &str) -> bool {
        self.store.get(leases::TREE, &metadata::key(ns, id)).unwrap().is_some()
    }

    /// Deletes a lease the way the lease manager does: record and resources together.
    pub fn delete_lease(&self, ns: &str, id: &str) {
        let resources = self
            .store
            .scan_prefix(leases::RESOURCES_TREE, &leases::resource_prefix(ns, id))
            .unwrap();
        self.store
            .transact(&[leases::TREE, leases::RESOURCES_TREE], &|t| {
                t.remove(leases::TREE, &metadata::key(ns, id))?;
                resources
                    .iter()
                    .try_for_each(|(k, _)| t.remove(leases::RESOURCES_TREE, k))
            })
            .unwrap();
    }

    pub fn resource_keys(&self) -> Vec<Vec<u8>> {
        let pairs = self.store.scan_prefix(leases::RESOURCES_TREE, b"").unwrap();
        pairs.into_iter().map(|(k, _)| k).collect()
    }

    pub fn has_namespace(&self, ns: &str) -> bool {
        self.store.get(namespaces::TREE, ns.as_bytes()).unwrap().is_some()
    }
}

/// A content store with no content: it only counts the backend sweeps the
/// collector asks for.
#[derive(Default)]
pub(crate) struct CountingContent {
    pub sweeps: AtomicU64,
}

impl CountingContent {
    pub fn sweeps(&self) -> u64 {
        self.sweeps.load(Ordering::SeqCst)
    }
}

fn unimplemented<T>() -> Result<T, Error> {
    Err(Error::Unimplemented("test content store".into()))
}

impl ContentStore for CountingContent {
    fn info(&self, _: &str, _: &Digest) -> Result<Info, Error> {
        unimplemented()
    }
    fn update(&self, _: &str, _: &Info, _: &[String]) -> Result<Info, Error> {
        unimplemented()
    }
    fn list(&self, _: &str) -> Result<Vec<Info>, Error> {
        unimplemented()
    }
    fn delete(&self, _: &str, _: &Digest) -> Result<(), Error> {
        unimplemented()
    }
    fn open(&self, _: &str, _: &Digest) -> Result<(std::fs::File, u64), Error> {
        unimplemented()
    }
    fn status(&self, _: &str, _: &str) -> Result<Status, Error> {
        unimplemented()
    }
    fn list_statuses(&self, _: &str) -> Result<Vec<Status>, Error> {
        unimplemented()
    }
    fn abort(&self, _: &str, _: &str) -> Result<(), Error> {
        unimplemented()
    }
    fn writer(&self, _: &str, _: &str, _: WriteOptions) -> Result<Box<dyn Writer>, Error> {
        unimplemented()
    }
    fn verify(&self) -> Result<Vec<String>, Error> {
        unimplemented()
    }
    fn sweep_backend(&self) -> Result<u64, Error> {
        // Reports one removed blob per sweep, so the stats show it was asked.
        self.sweeps.fetch_add(1, Ordering::SeqCst);
        Ok(1)
    }
}
