//! Containers over the metadata store: the record a task is later made from
//! (spec, runtime, root filesystem snapshot), per namespace. A container is
//! a garbage collection root for its snapshot and what its labels reference.
//!
//! The rules are containerd 1.6's: the spec and runtime name are required;
//! the snapshotter and the runtime cannot change once created; an update
//! may only name `labels`, `labels.<key>`, `spec`, `extensions`,
//! `extensions.<key>`, `image` and `snapshotkey`.

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::{any_value::AnyValue, filters::Adaptor, identifiers, labels, metadata::MetaStore, records::Records, Error};

/// `<ns>/<id>` -> [`Record`].
pub const TREE: &str = "containers";

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Runtime {
    /// Such as `io.containerd.runc.v2`, or a shim's absolute path.
    pub name: String,
    pub options: Option<AnyValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// The image name the container was made from; not checked, may be empty.
    pub image: String,
    pub runtime: Runtime,
    /// The OCI runtime spec, as the client packed it.
    pub spec: Option<AnyValue>,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub extensions: BTreeMap<String, AnyValue>,
}

impl Default for Container {
    fn default() -> Self {
        Container {
            id: String::new(),
            labels: BTreeMap::new(),
            image: String::new(),
            runtime: Runtime::default(),
            spec: None,
            snapshotter: String::new(),
            snapshot_key: String::new(),
            created_at: std::time::UNIX_EPOCH,
            updated_at: std::time::UNIX_EPOCH,
            extensions: BTreeMap::new(),
        }
    }
}

/// Filter fields, as containerd has them: `id`, `image`, `runtime.name`,
/// `labels.<key>`. An empty `image` or runtime name counts as absent.
impl Adaptor for Container {
    fn field(&self, path: &[String]) -> Option<String> {
        let present = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        match path {
            [f] if f == "id" => present(&self.id),
            [f] if f == "image" => present(&self.image),
            [f, g] if f == "runtime" && g == "name" => present(&self.runtime.name),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => self.labels.get(&rest.join(".")).cloned(),
            _ => None,
        }
    }
}

/// What the metadata store keeps per container; public so the garbage
/// collector can read the references.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub labels: BTreeMap<String, String>,
    pub image: String,
    pub runtime_name: String,
    pub runtime_options: Option<AnyValue>,
    pub spec: Option<AnyValue>,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub extensions: BTreeMap<String, AnyValue>,
}

impl Record {
    /// Labels with an empty value are not kept, as in containerd.
    fn from_container(c: &Container, created_at: SystemTime, updated_at: SystemTime) -> Record {
        Record {
            labels: c
                .labels
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            image: c.image.clone(),
            runtime_name: c.runtime.name.clone(),
            runtime_options: c.runtime.options.clone(),
            spec: c.spec.clone(),
            snapshotter: c.snapshotter.clone(),
            snapshot_key: c.snapshot_key.clone(),
            created_at,
            updated_at,
            extensions: c.extensions.clone(),
        }
    }

    fn into_container(self, id: String) -> Container {
        Container {
            id,
            labels: self.labels,
            image: self.image,
            runtime: Runtime {
                name: self.runtime_name,
                options: self.runtime_options,
            },
            spec: self.spec,
            snapshotter: self.snapshotter,
            snapshot_key: self.snapshot_key,
            created_at: self.created_at,
            updated_at: self.updated_at,
            extensions: self.extensions,
        }
    }
}

/// What every stored container satisfies, checked on create and after an update.
fn validate(c: &Container) -> Result<(), Error> {
    identifiers::validate(&c.id).map_err(|e| Error::InvalidArgument(format!("container id: {e}")))?;
    if c.extensions.keys().any(String::is_empty) {
        return Err(Error::InvalidArgument(
            "container extension keys must not be empty".into(),
        ));
    }
    labels::validate(&c.labels)?;
    if c.runtime.name.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "container {:?}: the runtime name must be set",
            c.id
        )));
    }
    if c.spec.is_none() {
        return Err(Error::InvalidArgument(format!(
            "container {:?}: the spec must be set",
            c.id
        )));
    }
    if !c.snapshot_key.is_empty() && c.snapshotter.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "container {:?}: a snapshot key needs a snapshotter",
            c.id
        )));
    }
    Ok(())
}

fn not_found(ns: &str, id: &str) -> Error {
    Error::NotFound(format!("container {id:?} in namespace {ns:?}"))
}

/// The fields a mask with no paths replaces.
const ALL_MUTABLE: [&str; 5] = ["labels", "spec", "extensions", "image", "snapshotkey"];

/// Applies one mask path from `requested` to `current`.
fn apply_path(current: &mut Container, requested: &Container, path: &str) -> Result<(), Error> {
    if let Some(key) = path.strip_prefix("labels.") {
        match requested.labels.get(key).filter(|v| !v.is_empty()) {
            Some(v) => current.labels.insert(key.to_string(), v.clone()),
            None => current.labels.remove(key),
        };
        return Ok(());
    }
    if let Some(key) = path.strip_prefix("extensions.") {
        match requested.extensions.get(key) {
            Some(v) => current.extensions.insert(key.to_string(), v.clone()),
            None => current.extensions.remove(key),
        };
        return Ok(());
    }
    match path {
        "labels" => current.labels = requested.labels.clone(),
        "spec" => current.spec = requested.spec.clone(),
        "extensions" => current.extensions = requested.extensions.clone(),
        "image" => current.image = requested.image.clone(),
        "snapshotkey" => current.snapshot_key = requested.snapshot_key.clone(),
        _ => {
            return Err(Error::InvalidArgument(format!(
                "cannot update {path:?} field on container {:?}",
                requested.id
            )))
        }
    }
    Ok(())
}

/// The container store: what the containers service and the runtime read.
#[derive(Clone)]
pub struct Containers {
    records: Records,
}

impl Containers {
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        Containers {
            records: Records::new(store, TREE),
        }
    }

    pub fn get(&self, ns: &str, id: &str) -> Result<Container, Error> {
        identifiers::validate(ns)?;
        if id.is_empty() {
            return Err(Error::InvalidArgument("a container id is required".into()));
        }
        let record: Record = self.records.get(ns, id, || not_found(ns, id))?;
        Ok(record.into_container(id.to_string()))
    }

    pub fn list(&self, ns: &str) -> Result<Vec<Container>, Error> {
        identifiers::validate(ns)?;
        Ok(self
            .records
            .list::<Record>(ns)?
            .into_iter()
            .map(|(id, record)| record.into_container(id))
            .collect())
    }

    /// Stores a new container; its timestamps are set here.
    pub fn create(&self, ns: &str, container: &Container) -> Result<Container, Error> {
        identifiers::validate(ns)?;
        validate(container)?;
        let now = SystemTime::now();
        let record = Record::from_container(container, now, now);
        self.records.create(ns, &container.id, &record, || {
            Error::AlreadyExists(format!("container {:?}", container.id))
        })?;
        Ok(record.into_container(container.id.clone()))
    }

    /// Applies the field mask `paths` from `container` to the stored one. No
    /// paths replaces every mutable field, and then the snapshotter and
    /// runtime name given must be the stored ones.
    pub fn update(&self, ns: &str, container: &Container, paths: &[String]) -> Result<Container, Error> {
        identifiers::validate(ns)?;
        if container.id.is_empty() {
            return Err(Error::InvalidArgument("a container id is required".into()));
        }
        let id = &container.id;
        let record = self.records.update(
            ns,
            id,
            || not_found(ns, id),
            |record: Record| {
                let created_at = record.created_at;
                let mut current = record.into_container(id.clone());
                if paths.is_empty() {
                    if current.snapshotter != container.snapshotter {
                        return Err(Error::InvalidArgument(format!(
                            "container {id:?}: the snapshotter cannot change"
                        )));
                    }
                    if current.runtime.name != container.runtime.name {
                        return Err(Error::InvalidArgument(format!(
                            "container {id:?}: the runtime name cannot change"
                        )));
                    }
                    for path in ALL_MUTABLE {
                        apply_path(&mut current, container, path)?;
                    }
                } else {
                    for path in paths {
                        apply_path(&mut current, container, path)?;
                    }
                }
                validate(&current)?;
                Ok(Record::from_container(&current, created_at, SystemTime::now()))
            },
        )?;
        Ok(record.into_container(id.clone()))
    }

    pub fn delete(&self, ns: &str, id: &str) -> Result<(), Error> {
        identifiers::validate(ns)?;
        if id.is_empty() {
            return Err(Error::InvalidArgument("a container id is required".into()));
        }
        self.records.delete(ns, id, || not_found(ns, id))
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, sync::Mutex};

    use super::*;
    use crate::{
        filters::Filter,
        metadata::{self, Exclusive, MutationCallback, Pairs, Reader, Txn},
        namespaces,
    };

    type Trees = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

    /// A metadata store in memory: enough for the store's rules.
    #[derive(Default)]
    struct MemStore {
        trees: Mutex<Trees>,
    }

    /// A transaction's writes over a snapshot of the trees, applied on success.
    struct MemTxn {
        trees: RefCell<Trees>,
    }

    impl Txn for MemTxn {
        fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
            Ok(self.trees.borrow().get(tree).and_then(|t| t.get(key)).cloned())
        }
        fn insert(&self, tree: &str, key: &[u8], value: Vec<u8>) -> Result<(), Error> {
            self.trees
                .borrow_mut()
                .entry(tree.to_string())
                .or_default()
                .insert(key.to_vec(), value);
            Ok(())
        }
        fn remove(&self, tree: &str, key: &[u8]) -> Result<(), Error> {
            if let Some(t) = self.trees.borrow_mut().get_mut(tree) {
                t.remove(key);
            }
            Ok(())
        }
    }

    impl Reader for MemStore {
        fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
            Ok(self.trees.lock().unwrap().get(tree).and_then(|t| t.get(key)).cloned())
        }
        fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Pairs, Error> {
            let trees = self.trees.lock().unwrap();
            Ok(trees
                .get(tree)
                .map(|t| {
                    t.iter()
                        .filter(|(k, _)| k.starts_with(prefix))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default())
        }
        fn has_prefix(&self, tree: &str, prefix: &[u8]) -> Result<bool, Error> {
            Ok(!self.scan_prefix(tree, prefix)?.is_empty())
        }
        fn tree_names(&self) -> Vec<String> {
            self.trees.lock().unwrap().keys().cloned().collect()
        }
    }

    impl MetaStore for MemStore {
        fn transact(&self, _: &[&str], f: &dyn Fn(&dyn Txn) -> Result<(), Error>) -> Result<(), Error> {
            let mut trees = self.trees.lock().unwrap();
            let txn = MemTxn {
                trees: RefCell::new(trees.clone()),
            };
            f(&txn)?;
            *trees = txn.trees.into_inner();
            Ok(())
        }
        fn exclusive(&self, _: &mut dyn FnMut(&dyn Exclusive) -> Result<(), Error>) -> Result<(), Error> {
            unimplemented!("not used by the container store")
        }
        fn on_mutation(&self, _: MutationCallback) {}
    }

    fn store() -> (Containers, Arc<MemStore>) {
        let mem = Arc::new(MemStore::default());
        (Containers::new(mem.clone()), mem)
    }

    fn spec(text: &str) -> Option<AnyValue> {
        Some(AnyValue::new(
            "types.containerd.io/opencontainers/runtime-spec/1/Spec",
            text.as_bytes(),
        ))
    }

    fn container(id: &str) -> Container {
        Container {
            id: id.into(),
            labels: BTreeMap::from([("a".into(), "1".into())]),
            image: "docker.io/library/busybox:latest".into(),
            runtime: Runtime {
                name: "io.containerd.runc.v2".into(),
                options: Some(AnyValue::new("containerd.runc.v1.Options", vec![1, 2])),
            },
            spec: spec("{}"),
            snapshotter: "overlayfs".into(),
            snapshot_key: id.into(),
            extensions: BTreeMap::from([("ext".into(), AnyValue::new("t", vec![3]))]),
            ..Container::default()
        }
    }

    fn code(r: Result<impl std::fmt::Debug, Error>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(Error::NotFound(_)) => "not found",
            Err(Error::AlreadyExists(_)) => "exists",
            Err(Error::InvalidArgument(_)) => "invalid",
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn create_get_list_delete() {
        let (s, mem) = store();
        let created = s.create("ns", &container("c1")).unwrap();
        assert!(created.created_at > std::time::UNIX_EPOCH);
        assert_eq!(created.created_at, created.updated_at);
        let got = s.get("ns", "c1").unwrap();
        assert_eq!(got, created);
        assert_eq!(
            Container {
                created_at: std::time::UNIX_EPOCH,
                updated_at: std::time::UNIX_EPOCH,
                ..got
            },
            container("c1")
        );
        // The namespace exists as soon as something is created in it.
        assert!(mem.get(namespaces::TREE, b"ns").unwrap().is_some());

        assert_eq!(code(s.create("ns", &container("c1"))), "exists");
        s.create("ns", &container("c2")).unwrap();
        s.create("other", &container("c1")).unwrap();
        let ids: Vec<String> = s.list("ns").unwrap().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["c1", "c2"]);

        s.delete("ns", "c1").unwrap();
        assert_eq!(code(s.get("ns", "c1")), "not found");
        assert_eq!(code(s.delete("ns", "c1")), "not found");
        assert_eq!(code(s.get("nope", "c1")), "not found");
        assert!(s.get("other", "c1").is_ok());
        assert_eq!(code(s.get("ns", "")), "invalid");
        assert_eq!(code(s.get("a/b", "c1")), "invalid");
    }

    #[test]
    fn create_validates_as_containerd() {
        let (s, _) = store();
        let cases: Vec<(&str, Container)> = vec![
            ("bad id", container("a/b")),
            ("empty id", container("")),
            (
                "no runtime",
                Container {
                    runtime: Runtime::default(),
                    ..container("c")
                },
            ),
            (
                "no spec",
                Container {
                    spec: None,
                    ..container("c")
                },
            ),
            (
                "key without snapshotter",
                Container {
                    snapshotter: String::new(),
                    ..container("c")
                },
            ),
            (
                "big label",
                Container {
                    labels: BTreeMap::from([("k".into(), "v".repeat(5000))]),
                    ..container("c")
                },
            ),
            (
                "empty extension key",
                Container {
                    extensions: BTreeMap::from([(String::new(), AnyValue::default())]),
                    ..container("c")
                },
            ),
        ];
        for (what, c) in cases {
            assert_eq!(code(s.create("ns", &c)), "invalid", "{what}");
        }
        assert!(s.list("ns").unwrap().is_empty());
        // Neither an image nor a snapshot is required.
        let bare = Container {
            image: String::new(),
            snapshotter: String::new(),
            snapshot_key: String::new(),
            labels: BTreeMap::new(),
            extensions: BTreeMap::new(),
            ..container("bare")
        };
        s.create("ns", &bare).unwrap();
    }

    fn paths(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn update_by_field_mask() {
        let (s, _) = store();
        let created = s.create("ns", &container("c")).unwrap();

        let mut req = container("c");
        req.labels = BTreeMap::from([("b".into(), "2".into()), ("a".into(), String::new())]);
        req.image = "other".into();
        let u = s.update("ns", &req, &paths(&["labels.b", "labels.a"])).unwrap();
        assert_eq!(u.labels, BTreeMap::from([("b".into(), "2".into())]));
        assert_eq!(u.image, created.image, "not in the mask");
        assert_eq!(u.created_at, created.created_at);
        assert!(u.updated_at >= created.updated_at);
        assert_eq!(s.get("ns", "c").unwrap(), u);

        let u = s.update("ns", &req, &paths(&["image", "labels"])).unwrap();
        assert_eq!(u.image, "other");
        assert_eq!(u.labels, BTreeMap::from([("b".into(), "2".into())]));

        req.spec = spec("{\"new\":1}");
        req.snapshot_key = "other-key".into();
        req.extensions = BTreeMap::from([("x".into(), AnyValue::new("t", vec![9]))]);
        let u = s
            .update(
                "ns",
                &req,
                &paths(&["spec", "snapshotkey", "extensions.x", "extensions.ext"]),
            )
            .unwrap();
        assert_eq!(u.spec, req.spec);
        assert_eq!(u.snapshot_key, "other-key");
        assert_eq!(u.extensions, req.extensions);

        // Not updatable by path, whatever the value.
        for path in ["runtime", "snapshotter", "id", "created_at", "bogus"] {
            assert_eq!(code(s.update("ns", &req, &paths(&[path]))), "invalid", "{path}");
        }
        // The result must still be valid: the spec cannot go.
        let no_spec = Container {
            spec: None,
            ..req.clone()
        };
        assert_eq!(code(s.update("ns", &no_spec, &paths(&["spec"]))), "invalid");
        assert_eq!(s.get("ns", "c").unwrap().spec, req.spec);

        assert_eq!(code(s.update("ns", &container("missing"), &[])), "not found");
        assert_eq!(code(s.update("ns", &container(""), &[])), "invalid");
    }

    #[test]
    fn an_empty_mask_replaces_the_mutable_fields_only() {
        let (s, _) = store();
        s.create("ns", &container("c")).unwrap();
        let mut req = container("c");
        req.labels.clear();
        req.image = String::new();
        req.extensions.clear();
        req.runtime.options = None;
        let u = s.update("ns", &req, &[]).unwrap();
        assert!(u.labels.is_empty() && u.image.is_empty() && u.extensions.is_empty());
        assert!(u.runtime.options.is_some(), "runtime options are not replaced");

        let other_snapshotter = Container {
            snapshotter: "native".into(),
            ..req.clone()
        };
        assert_eq!(code(s.update("ns", &other_snapshotter, &[])), "invalid");
        let other_runtime = Container {
            runtime: Runtime {
                name: "io.containerd.runc.v1".into(),
                options: None,
            },
            ..req.clone()
        };
        assert_eq!(code(s.update("ns", &other_runtime, &[])), "invalid");
    }

    #[test]
    fn filters() {
        let c = container("c1");
        let m = |f: &str| Filter::parse_all(&[f]).unwrap().matches(&c);
        assert!(m("id==c1"));
        assert!(!m("id==c2"));
        assert!(m("runtime.name==io.containerd.runc.v2"));
        assert!(m("image~=busybox"));
        assert!(m("labels.a==1,id~=^c"));
        assert!(!m("labels.b"));
        assert!(!m("snapshotter==overlayfs"), "not a field containerd filters on");
        let no_image = Container {
            image: String::new(),
            ..container("c2")
        };
        assert!(!Filter::parse_all(&["image"]).unwrap().matches(&no_image));
    }

    #[test]
    fn records_keep_every_field() {
        let (s, mem) = store();
        s.create("ns", &container("c")).unwrap();
        let raw = mem.get(TREE, b"ns/c").unwrap().unwrap();
        let record: Record = metadata::decode(&raw).unwrap();
        assert_eq!(record.snapshot_key, "c");
        assert_eq!(record.runtime_options, container("c").runtime.options);
    }
}
