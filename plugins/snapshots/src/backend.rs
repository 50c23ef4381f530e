//! The backend: snapshot directories by number, and its own small database
//! of which backend keys name which directory and which directory layers on
//! which.
//!
//! Under the root:
//! - `snapshots/<id>/fs`: the snapshot's files (an overlay upper dir, or a full copy);
//! - `snapshots/<id>/work`: overlayfs's work dir, where a driver has one;
//! - `backend.redb`: [`KEYS`] and [`SNAPSHOTS`].
//!
//! Why redb rather than a second sled or a file per snapshot: it is an
//! embedded ACID store with checksummed commits that cost one `fdatasync`
//! (~0.25 ms here), it starts no threads and keeps a cache we size to a few
//! MiB, where a second sled would add its flusher threads and page cache to
//! a daemon that idles at 8 MiB. A file per snapshot written atomically
//! needs the file, its directory and `snapshots/` synced: three syncs per
//! prepare instead of one.
//!
//! Ordering, so a crash never leaves a metadata record without its snapshot:
//! directories are made before the state that names them, and that state is
//! committed before the metadata record that names its key. A crash in
//! between leaves directories or state no record references, which
//! [`Backend::prune`] removes later; nothing else removes state.
//!
//! The kind (active, view, committed) is the metadata record's alone: a
//! commit only adds a second key for the same directory and stores the usage
//! measured then. Were the kind kept here too, a crash between the two
//! commits, or two racing commits of one key, could leave the stores
//! disagreeing on whether a snapshot may still change.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, DirBuilder},
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use corten_core::{metadata, snapshots::Usage, Error};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

/// Backend key (`<ns>/<seq>/<key>`) -> snapshot id. A committed snapshot has
/// two keys until cleanup drops the one its active record had.
const KEYS: TableDefinition<&str, u64> = TableDefinition::new("keys");
/// Snapshot id -> [`Entry`], encoded with [`metadata::encode`].
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");

/// redb keeps recently used pages in memory; the state is a few hundred
/// bytes per snapshot, so a small cache holds all of it.
const CACHE_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    parent: Option<u64>,
    /// `(size, inodes)` measured at commit: a committed snapshot's files no
    /// longer change, so its usage is not walked again.
    usage: Option<(u64, u64)>,
}

/// A directory a new snapshot gets, and its mode; `fs` is always one of them.
pub type DirSpec = (&'static str, u32);

/// What [`Backend::prune`] found unreferenced; the directories are removed
/// with [`Backend::remove_dirs`] once no lock is held.
#[derive(Debug, Default)]
pub struct Pruned {
    pub dirs: Vec<PathBuf>,
}

pub struct Backend {
    snapshots: PathBuf,
    db: Database,
    /// Directory numbers are only ever handed out upwards, so a directory a
    /// crashed creation left behind is never mistaken for a new one.
    next_id: AtomicU64,
}

/// redb's error types all convert into `redb::Error`.
fn db_ok<T, E: Into<redb::Error>>(context: &'static str, r: Result<T, E>) -> Result<T, Error> {
    r.map_err(|e| Error::internal(context, e.into()))
}

fn io_err(context: impl std::fmt::Display) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::internal(&context.to_string(), e)
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, Error> {
    metadata::decode(bytes)
}

impl Backend {
    /// Opens (or creates) the backend under `root`; `repair` are the
    /// directories an uncommitted snapshot gets back if a crash lost them.
    pub fn open(root: &Path, repair: &[DirSpec]) -> Result<Backend, Error> {
        let snapshots = root.join("snapshots");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&snapshots)
            .map_err(io_err(format!("create {}", snapshots.display())))?;
        let db = db_ok(
            "open snapshot backend",
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(root.join("backend.redb")),
        )?;
        let txn = db_ok("open snapshot backend", db.begin_write())?;
        db_ok("open snapshot backend", txn.open_table(KEYS))?;
        db_ok("open snapshot backend", txn.open_table(SNAPSHOTS))?;
        db_ok("open snapshot backend", txn.commit())?;

        let backend = Backend {
            snapshots,
            db,
            next_id: AtomicU64::new(1),
        };
        let entries = backend.entries()?;
        let highest_dir = backend.dir_ids()?.into_iter().filter_map(|(_, id)| id).max();
        let highest = entries.keys().copied().chain(highest_dir).max().unwrap_or(0);
        backend.next_id.store(highest + 1, Ordering::SeqCst);
        backend.repair(&entries, repair);
        Ok(backend)
    }

    /// Snapshot directories are made without syncing `snapshots/`: on ext4
    /// and xfs the journal commits them with the next fsync (redb's), but a
    /// filesystem that orders less could lose them in a crash. An
    /// uncommitted snapshot then gets empty directories back, which is what
    /// its files could be after such a crash anyway; a committed one is
    /// reported, as its files are gone.
    fn repair(&self, entries: &HashMap<u64, Entry>, dirs: &[DirSpec]) {
        for (id, entry) in entries {
            if self.dir(*id).exists() {
                continue;
            }
            if entry.usage.is_some() {
                error!(id, "committed snapshot has no directory: its files are lost");
                continue;
            }
            warn!(id, "snapshot directory missing after a crash; making it again");
            if let Err(e) = self.make_dirs(*id, dirs) {
                error!(id, "make snapshot directory again: {e}");
            }
        }
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.snapshots.join(id.to_string())
    }

    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }

    fn make_dirs(&self, id: u64, dirs: &[DirSpec]) -> Result<(), Error> {
        let dir = self.dir(id);
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(format!("create {}", dir.display())))?;
        for (name, mode) in dirs {
            let path = dir.join(name);
            DirBuilder::new()
                .mode(*mode)
                .create(&path)
                .map_err(io_err(format!("create {}", path.display())))?;
            // The umask must not narrow what overlayfs and the runtime see.
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                .map_err(io_err(format!("chmod {}", path.display())))?;
        }
        Ok(())
    }

    /// Makes a new snapshot's directories, lets `fill` populate its `fs`,
    /// then records it under `key`. Nothing of it is left on failure.
    pub fn create(
        &self,
        key: &str,
        parent: Option<u64>,
        dirs: &[DirSpec],
        fill: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let made = self
            .make_dirs(id, dirs)
            .and_then(|()| fill(&self.fs(id)))
            .and_then(|()| self.record(id, key, parent));
        if made.is_err() {
            self.remove_dir(&self.dir(id));
        }
        made.map(|()| id)
    }

    fn record(&self, id: u64, key: &str, parent: Option<u64>) -> Result<(), Error> {
        let entry = metadata::encode(&Entry { parent, usage: None })?;
        let txn = db_ok("write snapshot backend", self.db.begin_write())?;
        {
            let mut keys = db_ok("write snapshot backend", txn.open_table(KEYS))?;
            let mut snapshots = db_ok("write snapshot backend", txn.open_table(SNAPSHOTS))?;
            if db_ok("read snapshot backend", keys.get(key))?.is_some() {
                return Err(Error::AlreadyExists(format!("backend snapshot {key:?}")));
            }
            if let Some(parent) = parent {
                if db_ok("read snapshot backend", snapshots.get(parent))?.is_none() {
                    return Err(Error::NotFound(format!("backend parent snapshot {parent}")));
                }
            }
            db_ok("write snapshot backend", keys.insert(key, id))?;
            db_ok("write snapshot backend", snapshots.insert(id, entry.as_slice()))?;
        }
        db_ok("commit snapshot backend", txn.commit())
    }

    /// Drops a snapshot [`create`](Backend::create) just made, when its
    /// metadata record could not be written after all.
    pub fn undo_create(&self, id: u64, key: &str) {
        let undone = (|| {
            let txn = db_ok("write snapshot backend", self.db.begin_write())?;
            {
                let mut keys = db_ok("write snapshot backend", txn.open_table(KEYS))?;
                let mut snapshots = db_ok("write snapshot backend", txn.open_table(SNAPSHOTS))?;
                db_ok("write snapshot backend", keys.remove(key))?;
                db_ok("write snapshot backend", snapshots.remove(id))?;
            }
            db_ok("commit snapshot backend", txn.commit())
        })();
        match undone {
            Ok(()) => {
                self.remove_dir(&self.dir(id));
            }
            // Left for cleanup, which finds no record naming it.
            Err(e) => warn!(id, "undo snapshot creation: {e}"),
        }
    }

    /// The snapshot `key` names, if any.
    pub fn id(&self, key: &str) -> Result<Option<u64>, Error> {
        let txn = db_ok("read snapshot backend", self.db.begin_read())?;
        let keys = db_ok("read snapshot backend", txn.open_table(KEYS))?;
        Ok(db_ok("read snapshot backend", keys.get(key))?.map(|v| v.value()))
    }

    fn entry(&self, id: u64) -> Result<Option<Entry>, Error> {
        let txn = db_ok("read snapshot backend", self.db.begin_read())?;
        let snapshots = db_ok("read snapshot backend", txn.open_table(SNAPSHOTS))?;
        db_ok("read snapshot backend", snapshots.get(id))?
            .map(|v| decode_entry(v.value()))
            .transpose()
    }

    /// The parents of `id`, nearest first.
    pub fn parents(&self, id: u64) -> Result<Vec<u64>, Error> {
        let txn = db_ok("read snapshot backend", self.db.begin_read())?;
        let snapshots = db_ok("read snapshot backend", txn.open_table(SNAPSHOTS))?;
        let mut chain = Vec::new();
        let mut current = id;
        loop {
            let entry = db_ok("read snapshot backend", snapshots.get(current))?
                .map(|v| decode_entry(v.value()))
                .transpose()?
                .ok_or_else(|| Error::NotFound(format!("backend snapshot {current}")))?;
            let Some(parent) = entry.parent else {
                return Ok(chain);
            };
            // Parents are always older than their children, so a chain
            // that does not descend is damaged state, not a long history.
            if parent >= current {
                return Err(Error::Internal(format!(
                    "backend snapshot {current} has parent {parent}"
                )));
            }
            chain.push(parent);
            current = parent;
        }
    }

    /// The usage stored when `id` was committed.
    pub fn committed_usage(&self, id: u64) -> Result<Option<Usage>, Error> {
        Ok(self
            .entry(id)?
            .and_then(|e| e.usage)
            .map(|(size, inodes)| Usage { size, inodes }))
    }

    /// Records a commit: `key` names `id` too from now on, and `usage` is
    /// what it measured.
    pub fn commit(&self, id: u64, key: &str, usage: Usage) -> Result<(), Error> {
        let txn = db_ok("write snapshot backend", self.db.begin_write())?;
        {
            let mut keys = db_ok("write snapshot backend", txn.open_table(KEYS))?;
            let mut snapshots = db_ok("write snapshot backend", txn.open_table(SNAPSHOTS))?;
            let mut entry = db_ok("read snapshot backend", snapshots.get(id))?
                .map(|v| decode_entry(v.value()))
                .transpose()?
                .ok_or_else(|| Error::NotFound(format!("backend snapshot {id}")))?;
            if db_ok("read snapshot backend", keys.get(key))?.is_some() {
                return Err(Error::AlreadyExists(format!("backend snapshot {key:?}")));
            }
            entry.usage = Some((usage.size, usage.inodes));
            let bytes = metadata::encode(&entry)?;
            db_ok("write snapshot backend", keys.insert(key, id))?;
            db_ok("write snapshot backend", snapshots.insert(id, bytes.as_slice()))?;
        }
        db_ok("commit snapshot backend", txn.commit())
    }

    /// Drops the key a failed commit added; the snapshot stays under its
    /// other key.
    pub fn undo_commit(&self, key: &str) {
        let undone = (|| {
            let txn = db_ok("write snapshot backend", self.db.begin_write())?;
            {
                let mut keys = db_ok("write snapshot backend", txn.open_table(KEYS))?;
                db_ok("write snapshot backend", keys.remove(key))?;
            }
            db_ok("commit snapshot backend", txn.commit())
        })();
        if let Err(e) = undone {
            // Harmless: cleanup drops keys no record names.
            warn!("undo snapshot commit: {e}");
        }
    }

    /// Every backend key, for seeding sequence numbers.
    pub fn keys(&self) -> Result<Vec<String>, Error> {
        let txn = db_ok("read snapshot backend", self.db.begin_read())?;
        let keys = db_ok("read snapshot backend", txn.open_table(KEYS))?;
        let mut out = Vec::new();
        for kv in db_ok("read snapshot backend", keys.iter())? {
            let (k, _) = db_ok("read snapshot backend", kv)?;
            out.push(k.value().to_string());
        }
        Ok(out)
    }

    fn entries(&self) -> Result<HashMap<u64, Entry>, Error> {
        let txn = db_ok("read snapshot backend", self.db.begin_read())?;
        let snapshots = db_ok("read snapshot backend", txn.open_table(SNAPSHOTS))?;
        let mut out = HashMap::new();
        for kv in db_ok("read snapshot backend", snapshots.iter())? {
            let (k, v) = db_ok("read snapshot backend", kv)?;
            out.insert(k.value(), decode_entry(v.value())?);
        }
        Ok(out)
    }

    /// Every entry of `snapshots/`, with its number when it is one.
    fn dir_ids(&self) -> Result<Vec<(PathBuf, Option<u64>)>, Error> {
        let mut out = Vec::new();
        let list = fs::read_dir(&self.snapshots).map_err(io_err(format!("list {}", self.snapshots.display())))?;
        for entry in list {
            let entry = entry.map_err(io_err("list snapshots"))?;
            let id = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok());
            out.push((entry.path(), id));
        }
        Ok(out)
    }

    /// Forgets every key not in `referenced`, then every snapshot no key
    /// names and no kept snapshot layers on. Returns the directories to
    /// remove: theirs and any other in `snapshots/` that no snapshot owns.
    /// The caller must hold off creations, which make directories first.
    pub fn prune(&self, referenced: &HashSet<String>) -> Result<Pruned, Error> {
        let txn = db_ok("write snapshot backend", self.db.begin_write())?;
        let mut kept: HashSet<u64> = HashSet::new();
        {
            let mut keys = db_ok("write snapshot backend", txn.open_table(KEYS))?;
            let mut snapshots = db_ok("write snapshot backend", txn.open_table(SNAPSHOTS))?;
            let mut all_keys = Vec::new();
            for kv in db_ok("read snapshot backend", keys.iter())? {
                let (k, v) = db_ok("read snapshot backend", kv)?;
                all_keys.push((k.value().to_string(), v.value()));
            }
            let mut entries = HashMap::new();
            for kv in db_ok("read snapshot backend", snapshots.iter())? {
                let (k, v) = db_ok("read snapshot backend", kv)?;
                entries.insert(k.value(), decode_entry(v.value())?);
            }

            for (key, id) in &all_keys {
                if referenced.contains(key) {
                    kept.insert(*id);
                } else {
                    db_ok("write snapshot backend", keys.remove(key.as_str()))?;
                }
            }
            // A parent stays while anything kept layers on it, whatever its
            // own record says: its files are part of the child's mounts.
            let mut stack: Vec<u64> = kept.iter().copied().collect();
            while let Some(id) = stack.pop() {
                if let Some(parent) = entries.get(&id).and_then(|e| e.parent) {
                    if kept.insert(parent) {
                        stack.push(parent);
                    }
                }
            }
            for id in entries.keys().filter(|id| !kept.contains(id)) {
                db_ok("write snapshot backend", snapshots.remove(*id))?;
            }
        }
        db_ok("commit snapshot backend", txn.commit())?;

        let dirs = self
            .dir_ids()?
            .into_iter()
            .filter(|(_, id)| id.is_none_or(|id| !kept.contains(&id)))
            .map(|(path, _)| path)
            .collect();
        Ok(Pruned { dirs })
    }

    /// Removes what [`prune`](Backend::prune) returned; returns how many went.
    pub fn remove_dirs(&self, pruned: Pruned) -> u64 {
        let mut removed = 0;
        for dir in pruned.dirs {
            if self.remove_dir(&dir) {
                removed += 1;
            }
        }
        removed
    }

    fn remove_dir(&self, dir: &Path) -> bool {
        let removed = if dir.is_dir() {
            fs::remove_dir_all(dir)
        } else {
            fs::remove_file(dir)
        };
        match removed {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            // Left for the next cleanup, which finds it unowned again.
            Err(e) => {
                warn!("remove {}: {e}", dir.display());
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIRS: &[DirSpec] = &[("fs", 0o755), ("work", 0o711)];

    fn none(_: &Path) -> Result<(), Error> {
        Ok(())
    }

    #[test]
    fn numbers_never_reuse_a_directory_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        {
            let b = Backend::open(root, DIRS).unwrap();
            assert_eq!(b.create("ns/1/a", None, DIRS, none).unwrap(), 1);
        }
        fs::create_dir(root.join("snapshots/7")).unwrap();
        let b = Backend::open(root, DIRS).unwrap();
        assert_eq!(b.create("ns/2/b", None, DIRS, none).unwrap(), 8);
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode(b.fs(8)), mode(b.work(8))), (0o755, 0o711));
    }

    #[test]
    fn a_failed_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path(), DIRS).unwrap();
        let failed = b.create("ns/1/a", None, DIRS, |_| Err(Error::Internal("no".into())));
        assert!(failed.is_err());
        assert_eq!(b.id("ns/1/a").unwrap(), None);
        assert!(b.dir_ids().unwrap().is_empty());
        assert!(matches!(
            b.create("ns/1/a", Some(42), DIRS, none),
            Err(Error::NotFound(_))
        ));
        assert!(b.dir_ids().unwrap().is_empty());
    }

    #[test]
    fn chains_commits_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path(), DIRS).unwrap();
        let base = b.create("ns/1/a", None, DIRS, none).unwrap();
        b.commit(base, "ns/2/base", Usage { size: 1, inodes: 2 }).unwrap();
        assert!(matches!(
            b.commit(base, "ns/2/base", Usage::default()),
            Err(Error::AlreadyExists(_))
        ));
        let mid = b.create("ns/3/b", Some(base), DIRS, none).unwrap();
        b.commit(mid, "ns/4/mid", Usage::default()).unwrap();
        let top = b.create("ns/5/c", Some(mid), DIRS, none).unwrap();
        assert_eq!(b.parents(top).unwrap(), vec![mid, base]);
        assert_eq!(b.id("ns/2/base").unwrap(), b.id("ns/1/a").unwrap());
        assert_eq!(b.committed_usage(base).unwrap(), Some(Usage { size: 1, inodes: 2 }));
        assert_eq!(b.committed_usage(top).unwrap(), None);

        // Only the top is referenced: its parents stay for it, stale keys go.
        let referenced = HashSet::from(["ns/5/c".to_string()]);
        let pruned = b.prune(&referenced).unwrap();
        assert!(pruned.dirs.is_empty());
        assert_eq!(b.keys().unwrap(), vec!["ns/5/c".to_string()]);
        assert_eq!(b.parents(top).unwrap(), vec![mid, base]);

        let pruned = b.prune(&HashSet::new()).unwrap();
        assert_eq!(b.remove_dirs(pruned), 3);
        assert!(b.dir_ids().unwrap().is_empty());
        assert!(b.entries().unwrap().is_empty());
    }

    #[test]
    fn repairs_lost_directories_of_uncommitted_snapshots_only() {
        let dir = tempfile::tempdir().unwrap();
        let (active, committed) = {
            let b = Backend::open(dir.path(), DIRS).unwrap();
            let active = b.create("ns/1/a", None, DIRS, none).unwrap();
            let committed = b.create("ns/2/b", None, DIRS, none).unwrap();
            b.commit(committed, "ns/3/c", Usage::default()).unwrap();
            (active, committed)
        };
        for id in [active, committed] {
            fs::remove_dir_all(dir.path().join(format!("snapshots/{id}"))).unwrap();
        }
        let b = Backend::open(dir.path(), DIRS).unwrap();
        assert!(b.fs(active).is_dir() && b.work(active).is_dir());
        assert!(!b.fs(committed).exists());
    }
}
