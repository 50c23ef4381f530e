//! The namespaced snapshotter over a [`Backend`]: what containerd keeps in
//! its metadata package. A record per snapshot in the metadata store says
//! which keys a namespace has, their kind, parent and labels, and which
//! backend key holds the files, so the backend never sees a user's key and
//! two namespaces never share one.
//!
//! A creation keeps the backend's entry in memory and only its record is
//! synced; [`SnapshotStore::open`] restores entries a crash lost from their
//! records before anything is served. Why that is complete is argued at the
//! top of the `backend` module.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
    time::{Instant, SystemTime},
};

use corten_core::{
    identifiers, labels, leases,
    metadata::{self, MetaStore},
    mount::Mount,
    namespaces::{self, Namespaces},
    snapshots::{self, Cleaned, Info, Kind, Record, Snapshotter, Usage},
    Error,
};

use tracing::error;

use crate::{
    backend::{Backend, Lost, Referenced},
    driver::{Driver, Layers},
    usage::disk_usage,
};

pub struct SnapshotStore {
    tree: String,
    resource_kind: String,
    meta: Arc<dyn MetaStore>,
    backend: Backend,
    driver: Box<dyn Driver>,
    /// The `<seq>` of backend keys, and the number of a new snapshot's
    /// directory: a creation takes one number for both, which is what lets
    /// the open restore an entry a crash lost from its record. Seeded at open
    /// above the highest in use in either store or in `snapshots/` rather
    /// than kept in the metadata store: a counter key would make every two
    /// creations conflict, and the GC and the namespace checks read every key
    /// of the tree as `<ns>/<key>`. A number nothing holds any more may come
    /// round again after a restart, which nothing can notice.
    next: AtomicU64,
    /// Held shared by a creation from its first backend write to its
    /// record's commit, and exclusively by cleanup, so cleanup never takes a
    /// snapshot whose record is on its way for garbage.
    creating: RwLock<()>,
    /// Held exclusively by a removal from its scan for children to its
    /// commit, and shared by a creation around its commit, so no child
    /// appears under a parent as it goes.
    removing: RwLock<()>,
}

// Worded as containerd words them: clients show the text as it comes.
fn not_found(key: &str) -> Error {
    Error::NotFound(format!("snapshot {key} does not exist"))
}

fn already_exists(key: &str) -> Error {
    Error::AlreadyExists(format!("snapshot {key:?}"))
}

fn read(lock: &RwLock<()>) -> RwLockReadGuard<'_, ()> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write(lock: &RwLock<()>) -> RwLockWriteGuard<'_, ()> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// Whether a failed transaction surely wrote nothing. A store failure may
/// come after the writes applied (a failed flush), so what the backend made
/// for it stays, for cleanup to remove if no record names it after all.
fn refused(e: &Error) -> bool {
    !matches!(e, Error::Internal(_))
}

/// The `<seq>` of a `<ns>/<seq>/<key>` backend key.
fn seq_of(backend_key: &str) -> Option<u64> {
    let (_, rest) = backend_key.split_once('/')?;
    rest.split_once('/')?.0.parse().ok()
}

/// Makes again the backend entries of active snapshots and views whose
/// records survived a crash that their pending entries did not,
/// from the records alone; the argument is at the top of the `backend`
/// module. `records` are the snapshotter's, by `<ns>/<key>`.
fn restore(backend: &Backend, records: &[(String, Record)]) -> Result<(), Error> {
    let by_key: HashMap<&str, &Record> = records.iter().map(|(k, r)| (k.as_str(), r)).collect();
    let mut lost = Vec::new();
    for (key, record) in records {
        if backend.id(&record.backend_key)?.is_some() {
            continue;
        }
        // Committed entries are durable before their records: this one
        // was lost some other way, and its number is not in its key.
        if record.kind == Kind::Committed {
            error!(key, "committed snapshot has no backend state");
            continue;
        }
        let Some(id) = seq_of(&record.backend_key) else {
            error!(key, backend_key = record.backend_key, "snapshot has no backend state");
            continue;
        };
        let parent = match record.parent.as_str() {
            "" => None,
            parent => {
                let ns = key.split_once('/').map_or("", |(ns, _)| ns);
                let parent_key = String::from_utf8_lossy(&metadata::key(ns, parent)).into_owned();
                match by_key.get(parent_key.as_str()) {
                    Some(p) => backend.id(&p.backend_key)?,
                    None => None,
                }
            }
        };
        if parent.is_none() && !record.parent.is_empty() {
            error!(
                key,
                parent = record.parent,
                "cannot restore a lost snapshot: its parent is gone"
            );
            continue;
        }
        lost.push(Lost {
            key: record.backend_key.clone(),
            id,
            parent,
        });
    }
    // Parents are older than their children: restored first, should a
    // parent ever be among them.
    lost.sort_by_key(|l| l.id);
    let restored = backend.restore(&lost)?;
    if restored > 0 {
        tracing::warn!(
            restored,
            "restored the backend entries of snapshots from their records: the last run did not close"
        );
    }
    Ok(())
}

impl SnapshotStore {
    /// Opens the snapshotter `id` (its plugin id, which names its metadata
    /// tree) with its files under `root`.
    pub fn open(
        id: &str,
        root: &Path,
        meta: Arc<dyn MetaStore>,
        driver: Box<dyn Driver>,
    ) -> Result<SnapshotStore, Error> {
        // Mount sources must not depend on the daemon's working directory.
        let root = std::path::absolute(root).map_err(|e| Error::internal("snapshotter root", e))?;
        // Spare directories are kept for the layouts creations ask for most:
        // active snapshots with and without a parent.
        let mut layouts = vec![driver.dirs(Kind::Active, false), driver.dirs(Kind::Active, true)];
        layouts.dedup();
        let backend = Backend::open(&root, &layouts)?;
        let tree = snapshots::tree(id);
        let mut records = Vec::new();
        for (key, value) in meta.scan_prefix(&tree, b"")? {
            match metadata::decode::<Record>(&value) {
                Ok(record) => records.push((String::from_utf8_lossy(&key).into_owned(), record)),
                Err(e) => error!(key = %String::from_utf8_lossy(&key), "unreadable snapshot record: {e}"),
            }
        }
        let highest = backend
            .keys()?
            .iter()
            .chain(records.iter().map(|(_, r)| &r.backend_key))
            .filter_map(|k| seq_of(k))
            .chain([backend.highest_id()?])
            .max()
            .unwrap_or(0);
        restore(&backend, &records)?;
        let mut referenced = Vec::new();
        for (_, record) in &records {
            if let Some(id) = backend.id(&record.backend_key)? {
                let dirs = match record.kind {
                    Kind::Committed => None,
                    kind => Some(driver.dirs(kind, !record.parent.is_empty())),
                };
                referenced.push(Referenced { id, dirs });
            }
        }
        backend.repair_dirs(&referenced)?;
        Ok(SnapshotStore {
            tree,
            resource_kind: snapshots::resource_kind(id),
            meta,
            backend,
            driver,
            next: AtomicU64::new(highest + 1),
            creating: RwLock::new(()),
            removing: RwLock::new(()),
        })
    }

    /// Writes what the backend keeps in memory to its database, so the next
    /// open has nothing to restore. Creations may still come after; they
    /// are restored then, as after a crash.
    pub fn close(&self) {
        if let Err(e) = self.backend.sync() {
            tracing::warn!("sync snapshot backend: {e}");
        }
    }

    fn trees(&self) -> [&str; 4] {
        [&self.tree, namespaces::TREE, leases::TREE, leases::RESOURCES_TREE]
    }

    /// A number no snapshot and no backend key has had.
    fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    fn backend_key(ns: &str, seq: u64, key: &str) -> String {
        format!("{ns}/{seq}/{key}")
    }

    fn resource(&self, key: &str) -> leases::Resource {
        leases::Resource {
            id: key.to_string(),
            kind: self.resource_kind.clone(),
        }
    }

    fn record(&self, ns: &str, key: &str) -> Result<Record, Error> {
        identifiers::validate(ns)?;
        snapshots::validate_key(key)?;
        let bytes = self
            .meta
            .get(&self.tree, &metadata::key(ns, key))?
            .ok_or_else(|| not_found(key))?;
        metadata::decode(&bytes)
    }

    /// The backend snapshot a record names. Missing only when the record went
    /// and cleanup ran since it was read.
    fn backend_id(&self, key: &str, record: &Record) -> Result<u64, Error> {
        self.backend.id(&record.backend_key)?.ok_or_else(|| not_found(key))
    }

    fn info(&self, name: String, record: Record) -> Result<Info, Error> {
        let mut labels = BTreeMap::new();
        if let Some(label) = self.driver.fs_label() {
            let id = self.backend_id(&name, &record)?;
            labels.insert(label.to_string(), self.backend.fs(id).display().to_string());
        }
        labels.extend(record.labels);
        Ok(Info {
            name,
            parent: record.parent,
            kind: record.kind,
            created_at: record.created_at,
            updated_at: record.updated_at,
            labels,
        })
    }

    fn mounts_of(&self, kind: Kind, id: u64) -> Result<Vec<Mount>, Error> {
        let parents: Vec<PathBuf> = self
            .backend
            .parents(id)?
            .into_iter()
            .map(|p| self.backend.fs(p))
            .collect();
        Ok(self.driver.mounts(&Layers {
            kind,
            fs: &self.backend.fs(id),
            work: &self.backend.work(id),
            parents: &parents,
        }))
    }

    /// A parent to layer on: it must exist in the namespace and be committed
    /// (containerd answers InvalidArgument for one that is not).
    fn parent_record(&self, ns: &str, parent: &str) -> Result<Record, Error> {
        let record = self.record(ns, parent).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("parent snapshot {parent} does not exist")),
            e => e,
        })?;
        if record.kind != Kind::Committed {
            return Err(Error::InvalidArgument(format!(
                "parent snapshot {parent} is not committed"
            )));
        }
        Ok(record)
    }

    fn create(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        lease: Option<&str>,
        kind: Kind,
    ) -> Result<Vec<Mount>, Error> {
        identifiers::validate(ns)?;
        snapshots::validate_key(key)?;
        labels::validate(&labels)?;
        let record_key = metadata::key(ns, key);
        // Checked again in the transaction; here so a doomed call makes no files.
        if self.meta.get(&self.tree, &record_key)?.is_some() {
            return Err(already_exists(key));
        }

        let _creating = read(&self.creating);
        let parent_record = match parent {
            "" => None,
            parent => Some(self.parent_record(ns, parent)?),
        };
        let parent_id = parent_record.as_ref().map(|r| self.backend_id(parent, r)).transpose()?;
        let parent_fs = parent_id.map(|id| self.backend.fs(id));
        let id = self.number();
        let backend_key = Self::backend_key(ns, id, key);
        self.backend.create(
            id,
            &backend_key,
            parent_id,
            self.driver.dirs(kind, parent_id.is_some()),
            |fs| self.driver.populate(fs, parent_fs.as_deref()),
        )?;

        let now = SystemTime::now();
        let record = metadata::encode(&Record {
            backend_key: backend_key.clone(),
            parent: parent.to_string(),
            kind,
            created_at: now,
            updated_at: now,
            labels,
        })?;
        let written = {
            let _removing = read(&self.removing);
            self.meta.transact(&self.trees(), &|txn| {
                if txn.get(&self.tree, &record_key)?.is_some() {
                    return Err(already_exists(key));
                }
                if let Some(expected) = &parent_record {
                    // The parent this snapshot layers on must still be the
                    // one under that key: removed (and maybe made again)
                    // since, it is not there to layer on.
                    let current = txn
                        .get(&self.tree, &metadata::key(ns, parent))?
                        .map(|bytes| metadata::decode::<Record>(&bytes))
                        .transpose()?;
                    if current.is_none_or(|c| c.backend_key != expected.backend_key) {
                        return Err(Error::NotFound(format!("parent snapshot {parent} does not exist")));
                    }
                }
                Namespaces::ensure(txn, ns)?;
                txn.insert(&self.tree, &record_key, record.clone())?;
                if let Some(lease) = lease {
                    leases::add_resource(txn, ns, lease, &self.resource(key))?;
                }
                Ok(())
            })
        };
        if let Err(e) = written {
            if refused(&e) {
                self.backend.undo_create(id, &backend_key);
            }
            return Err(e);
        }
        self.mounts_of(kind, id)
    }
}

impl Snapshotter for SnapshotStore {
    fn stat(&self, ns: &str, key: &str) -> Result<Info, Error> {
        let record = self.record(ns, key)?;
        self.info(key.to_string(), record)
    }

    fn update(&self, ns: &str, info: &Info, paths: &[String]) -> Result<Info, Error> {
        identifiers::validate(ns)?;
        snapshots::validate_key(&info.name)?;
        let key = metadata::key(ns, &info.name);
        let updated = std::cell::RefCell::new(None);
        self.meta.transact(&[&self.tree], &|txn| {
            let bytes = txn.get(&self.tree, &key)?.ok_or_else(|| not_found(&info.name))?;
            let mut record: Record = metadata::decode(&bytes)?;
            labels::apply_update(&mut record.labels, &info.labels, paths).map_err(|e| match e {
                Error::InvalidArgument(m) => Error::InvalidArgument(format!("snapshot {}: {m}", info.name)),
                e => e,
            })?;
            record.updated_at = SystemTime::now();
            txn.insert(&self.tree, &key, metadata::encode(&record)?)?;
            *updated.borrow_mut() = Some(record);
            Ok(())
        })?;
        let record = updated.into_inner().expect("a committed update sets the record");
        self.info(info.name.clone(), record)
    }

    fn usage(&self, ns: &str, key: &str) -> Result<Usage, Error> {
        let record = self.record(ns, key)?;
        // As containerd: a view reports nothing of its own, a committed
        // snapshot what it measured at commit.
        if record.kind == Kind::View {
            return Ok(Usage::default());
        }
        let id = self.backend_id(key, &record)?;
        if record.kind == Kind::Committed {
            if let Some(usage) = self.backend.committed_usage(id)? {
                return Ok(usage);
            }
        }
        disk_usage(&self.backend.fs(id))
    }

    fn mounts(&self, ns: &str, key: &str) -> Result<Vec<Mount>, Error> {
        let record = self.record(ns, key)?;
        if record.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is committed: only active snapshots and views have mounts"
            )));
        }
        let id = self.backend_id(key, &record)?;
        self.mounts_of(record.kind, id)
    }

    fn prepare(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>, Error> {
        self.create(ns, key, parent, labels, lease, Kind::Active)
    }

    fn view(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>, Error> {
        self.create(ns, key, parent, labels, lease, Kind::View)
    }

    fn commit(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
        lease: Option<&str>,
    ) -> Result<(), Error> {
        identifiers::validate(ns)?;
        snapshots::validate_key(name)?;
        labels::validate(&labels)?;
        let name_key = metadata::key(ns, name);
        let active_key = metadata::key(ns, key);
        // containerd checks the name before the key.
        if self.meta.get(&self.tree, &name_key)?.is_some() {
            return Err(already_exists(name));
        }
        let active = self.record(ns, key)?;
        if active.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!("snapshot {key} is not active")));
        }

        let _creating = read(&self.creating);
        let id = self.backend_id(key, &active)?;
        // Measured once here: nothing writes to a committed snapshot.
        let usage = disk_usage(&self.backend.fs(id))?;
        let backend_key = Self::backend_key(ns, self.number(), name);
        self.backend.commit(id, &backend_key, usage)?;

        let now = SystemTime::now();
        let record = metadata::encode(&Record {
            backend_key: backend_key.clone(),
            parent: active.parent.clone(),
            kind: Kind::Committed,
            created_at: now,
            updated_at: now,
            labels,
        })?;
        let written = self.meta.transact(&self.trees(), &|txn| {
            if txn.get(&self.tree, &name_key)?.is_some() {
                return Err(already_exists(name));
            }
            let current: Record = metadata::decode(&txn.get(&self.tree, &active_key)?.ok_or_else(|| not_found(key))?)?;
            // Removed and prepared again since it was measured: the files
            // measured are not this snapshot's.
            if current.backend_key != active.backend_key {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key} was replaced during its commit"
                )));
            }
            Namespaces::ensure(txn, ns)?;
            txn.insert(&self.tree, &name_key, record.clone())?;
            txn.remove(&self.tree, &active_key)?;
            if let Some(lease) = lease {
                leases::add_resource(txn, ns, lease, &self.resource(name))?;
                leases::remove_resource(txn, ns, lease, &self.resource(key))?;
            }
            Ok(())
        });
        if let Err(e) = written {
            if refused(&e) {
                self.backend.undo_commit(&backend_key);
            }
            return Err(e);
        }
        Ok(())
    }

    fn remove(&self, ns: &str, key: &str, lease: Option<&str>) -> Result<(), Error> {
        identifiers::validate(ns)?;
        snapshots::validate_key(key)?;
        let record_key = metadata::key(ns, key);
        let _removing = write(&self.removing);
        self.record(ns, key)?;
        // Records keep no list of children; a scan of the namespace finds them.
        for (child, value) in self.meta.scan_prefix(&self.tree, &metadata::key(ns, ""))? {
            if metadata::decode::<Record>(&value)?.parent == key {
                let child = String::from_utf8_lossy(&child[ns.len() + 1..]).into_owned();
                return Err(Error::FailedPrecondition(format!(
                    "cannot remove snapshot {key}: snapshot {child} is its child"
                )));
            }
        }
        // The files stay until cleanup: another process may still have them
        // mounted, and a crash must not leave a record without its files.
        let all = self.trees();
        let own: [&str; 1] = [&self.tree];
        let trees: &[&str] = if lease.is_some() { &all } else { &own };
        self.meta.transact(trees, &|txn| {
            txn.get(&self.tree, &record_key)?.ok_or_else(|| not_found(key))?;
            txn.remove(&self.tree, &record_key)?;
            match lease {
                Some(lease) => leases::remove_resource(txn, ns, lease, &self.resource(key)),
                None => Ok(()),
            }
        })
    }

    fn list(&self, ns: &str) -> Result<Vec<Info>, Error> {
        identifiers::validate(ns)?;
        let prefix = metadata::key(ns, "");
        let mut out = Vec::new();
        for (key, value) in self.meta.scan_prefix(&self.tree, &prefix)? {
            let Ok(name) = String::from_utf8(key[prefix.len()..].to_vec()) else {
                continue;
            };
            let record: Record = metadata::decode(&value)?;
            match self.info(name, record) {
                Ok(info) => out.push(info),
                // Removed and cleaned up while listing.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn cleanup(&self) -> Result<Cleaned, Error> {
        let (pruned, paused) = {
            let _creating = write(&self.creating);
            let locked = Instant::now();
            let mut referenced = HashSet::new();
            for (key, value) in self.meta.scan_prefix(&self.tree, b"")? {
                // Unreadable, it may name anything: remove nothing rather
                // than the files of a live snapshot.
                let record: Record = metadata::decode(&value).map_err(|e| {
                    Error::Internal(format!(
                        "snapshot record {:?} is unreadable, so no snapshot is cleaned up: {e}",
                        String::from_utf8_lossy(&key)
                    ))
                })?;
                referenced.insert(record.backend_key);
            }
            (self.backend.prune(&referenced)?, locked.elapsed())
        };
        // Outside the lock: removing a large tree takes a while.
        let removed = self.backend.remove_dirs(pruned);
        Ok(Cleaned { removed, paused })
    }
}
