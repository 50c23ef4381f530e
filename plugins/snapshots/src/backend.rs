//! The backend: snapshot directories by number, and its own small database
//! of which backend keys name which directory and which directory layers on
//! which.
//!
//! Under the root:
//! - `snapshots/<id>/fs`: the snapshot's files (an overlay upper dir, or a full copy);
//! - `snapshots/<id>/work`: overlayfs's work dir, where a driver has one;
//! - `backend.redb`: [`KEYS`] and [`SNAPSHOTS`];
//! - `spare/`: directories made ahead of need ([`spares`]);
//! - `trash/`: directories on their way out ([`Backend::remove_dirs`]).
//!
//! Why redb rather than a second sled or a file per snapshot: it is an
//! embedded ACID store with checksummed commits that cost one `fdatasync`,
//! it starts no threads and keeps a cache we size to half a MiB, where a
//! second sled would add its flusher threads and page cache to a daemon
//! that idles at 8 MiB. A file per snapshot written atomically needs the
//! file, its directory and `snapshots/` synced: three syncs per prepare.
//!
//! The kind (active, view, committed) is the metadata record's alone: a
//! commit only adds a second key for the same directory and stores the usage
//! measured then. Were the kind kept here too, a crash between the two
//! commits, or two racing commits of one key, could leave the stores
//! disagreeing on whether a snapshot may still change.
//!
//! # Crash safety
//!
//! What must hold after any crash (SIGKILL or power loss), once
//! [`SnapshotStore::open`](crate::SnapshotStore::open) has run: every
//! metadata record names a backend key this store maps to the snapshot the
//! record's caller was given, that snapshot layers on its parent's, and its
//! directories exist. State no record references may be left over; the next
//! [`Backend::prune`] removes it.
//!
//! Every commit to `backend.redb` is durable (one `fdatasync`), but not
//! everything goes there at once:
//!
//! - Directories are made (or moved in from [`spares`])
//!   before any state names them, and never synced: on ext4 and xfs a
//!   later journal commit carries them, but a power loss may lose them
//!   where nothing orders them (ext4 without a journal). An active snapshot
//!   or a view then gets empty directories back (its files could be
//!   anything after such a crash anyway); a committed one is reported, as
//!   its files are gone.
//! - Creating a snapshot (prepare, view) keeps its entry *in memory*
//!   ([`Pending`]), then writes the metadata record naming its key durably
//!   (the metadata store syncs before it returns). One sync per creation,
//!   the metadata store's, instead of two, and no database commit. Pending
//!   entries reach the database with the commit of the snapshot or at the
//!   close; a cleanup that finds them garbage drops them. A crash loses the
//!   pending entries whose records survive; everything they held follows
//!   from the records, so the open restores them, durably, before anything
//!   is served ([`Backend::restore`]):
//!   - the number: a creation takes one number for the `<seq>` of its
//!     backend key `<ns>/<seq>/<key>` and for its directory, so the number is
//!     in the key. Numbers only go up, and the next one is above every
//!     number in either store and every directory, so no other snapshot
//!     ever had it;
//!   - the parent: the snapshot the record's parent key names. A parent is
//!     committed, and commits are durable (below), so that key is in the
//!     database; a parent cannot be removed while a record layers on it
//!     (removal checks for children, the collector keeps parents), so it is
//!     the same one;
//!   - the usage: none, as for any snapshot not committed;
//!   - the directories: as after any crash (above).
//!
//!   A crash before the record is durable leaves directories no record
//!   names: garbage.
//! - Committing a snapshot writes its entry, its keys and the usage it
//!   measured to the database, durably, before the committed record is
//!   written: the committed record's key has a fresh number, not the
//!   directory's, so nothing in that record leads back to the directory. A
//!   crash in between leaves a key no record names: garbage.
//! - Pruning forgets keys and entries no record references, and removes
//!   directories only after that is durable. Only referenced snapshots are
//!   repaired at open, so garbage is never mistaken for a lost snapshot.
//!   A snapshot's directory is emptied where it is and then kept as a
//!   husk for a new snapshot (see [`spares`]): no mount or client ever saw
//!   `snapshots/<id>` itself, only what was inside it, which is gone
//!   first. Anything else goes to `trash/` and is removed there. A crash
//!   in between leaves a directory no record names, emptied or not, which
//!   the next prune finds again, or something in `trash/`, which the next
//!   removal empties.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, DirBuilder},
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use corten_core::{metadata, snapshots::Usage, Error};
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
use redb::{Database, ReadOnlyTable, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use crate::{
    priority,
    spares::{self, Spares},
};

/// Backend key (`<ns>/<seq>/<key>`) -> snapshot id. A committed snapshot has
/// two keys until cleanup drops the one its active record had.
const KEYS: TableDefinition<&str, u64> = TableDefinition::new("keys");
/// Snapshot id -> [`Entry`], encoded with [`metadata::encode`].
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");

/// redb keeps recently used pages in memory (nine tenths of this for reads,
/// a tenth for writes not yet committed); the state is a few hundred bytes
/// per snapshot, so a small cache holds the hot part of it, and a miss is
/// a `pread` of a page the kernel has cached. It is kept under the 532 KiB
/// of allocator state redb writes when it creates a database: with room for
/// it, the read cache would keep that buffer, which is never read again,
/// resident for the daemon's life, in each snapshotter.
const CACHE_BYTES: usize = 512 << 10;

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

/// An entry a crash lost while the record naming it survived, as
/// [`Backend::restore`] makes it again: see the module's crash argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub key: String,
    pub id: u64,
    pub parent: Option<u64>,
}

/// A referenced snapshot, for [`Backend::repair_dirs`]: the directories it
/// gets back if a crash lost them, or `None` for a committed one, whose
/// files cannot come back.
pub struct Referenced {
    pub id: u64,
    pub dirs: Option<&'static [DirSpec]>,
}

/// What [`Backend::empty_and_recycle`] did with a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// It was not there.
    Missing,
    /// It is gone from where it was: kept as a husk (or, not being a
    /// directory, removed).
    Recycled,
    /// It is still there, emptied if it could be, for the caller to remove.
    Left,
}

/// Entries of snapshots created since the database last saw them; see the
/// module's crash argument. Looked at before the database by every read.
#[derive(Debug, Default)]
struct Pending {
    keys: HashMap<String, u64>,
    entries: HashMap<u64, Entry>,
}

pub struct Backend {
    snapshots: PathBuf,
    /// Where directories go to be removed; see [`Backend::remove_dirs`].
    trash: PathBuf,
    /// Held by [`Backend::remove_dirs`], so two never empty `trash/` at once.
    emptying: Mutex<()>,
    /// The owner of what this process makes: `trash/`'s.
    owner: (u32, u32),
    db: Database,
    pending: Mutex<Pending>,
    /// The process's umask, when known: a directory made with a mode it
    /// clears nothing of needs no chmod after.
    umask: Option<u32>,
    spares: Spares,
}

/// The umask, read where reading it changes nothing (`umask(2)` can only
/// read it by setting it, which would race with other threads making files).
/// corten never changes its umask after start.
fn process_umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
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

/// The database's side of a read: its two tables, at one point in time.
struct Tables {
    keys: ReadOnlyTable<&'static str, u64>,
    snapshots: ReadOnlyTable<u64, &'static [u8]>,
}

impl Tables {
    fn id(&self, key: &str) -> Result<Option<u64>, Error> {
        Ok(db_ok("read snapshot backend", self.keys.get(key))?.map(|v| v.value()))
    }

    fn entry(&self, id: u64) -> Result<Option<Entry>, Error> {
        db_ok("read snapshot backend", self.snapshots.get(id))?
            .map(|v| decode_entry(v.value()))
            .transpose()
    }
}

impl Backend {
    /// Opens (or creates) the backend under `root`, keeping spare
    /// directories of `layouts` ready. Lost state is restored, and lost
    /// directories made again, by the caller, which knows the metadata
    /// records: [`Backend::restore`], [`Backend::repair_dirs`].
    pub fn open(root: &Path, layouts: &[&'static [DirSpec]]) -> Result<Backend, Error> {
        let snapshots = root.join("snapshots");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&snapshots)
            .map_err(io_err(format!("create {}", snapshots.display())))?;
        let trash = root.join("trash");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&trash)
            .map_err(io_err(format!("create {}", trash.display())))?;
        let owner = fs::metadata(&trash)
            .map(|m| (m.uid(), m.gid()))
            .map_err(io_err(format!("stat {}", trash.display())))?;
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
        let umask = process_umask();
        Ok(Backend {
            snapshots,
            trash,
            emptying: Mutex::new(()),
            owner,
            db,
            pending: Mutex::new(Pending::default()),
            umask,
            spares: Spares::open(root, umask, layouts)?,
        })
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tables(&self) -> Result<Tables, Error> {
        let txn = db_ok("read snapshot backend", self.db.begin_read())?;
        Ok(Tables {
            keys: db_ok("read snapshot backend", txn.open_table(KEYS))?,
            snapshots: db_ok("read snapshot backend", txn.open_table(SNAPSHOTS))?,
        })
    }

    /// Runs `f` in a write transaction and commits it durably. `f` returns
    /// whether it changed anything; nothing is committed when it did not,
    /// nor when it fails.
    fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<(T, bool), Error>) -> Result<T, Error> {
        let txn = db_ok("write snapshot backend", self.db.begin_write())?;
        let (out, changed) = f(&txn)?;
        if changed {
            db_ok("commit snapshot backend", txn.commit())?;
        } else {
            db_ok("abort snapshot backend", txn.abort())?;
        }
        Ok(out)
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

    /// Gives snapshot `id` its directories, lets `fill` populate its `fs`,
    /// then records it under `key`, in memory: the caller's durable
    /// metadata record makes it stick (see the module's crash argument).
    /// `id` must be above every number either store or `snapshots/` has
    /// seen. Nothing of it is left on failure.
    pub fn create(
        &self,
        id: u64,
        key: &str,
        parent: Option<u64>,
        dirs: &'static [DirSpec],
        fill: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let dir = self.dir(id);
        if !self.spares.take(dirs, &dir) {
            // Fails, and leaves alone, a directory that is there already.
            spares::make_set(&dir, dirs, self.umask)?;
        }
        let made = fill(&self.fs(id)).and_then(|()| self.record(id, key, parent));
        if made.is_err() {
            self.remove_dir(&dir);
        }
        made
    }

    fn record(&self, id: u64, key: &str, parent: Option<u64>) -> Result<(), Error> {
        let tables = self.tables()?;
        let mut pending = self.pending();
        if pending.keys.contains_key(key) || tables.id(key)?.is_some() {
            return Err(Error::AlreadyExists(format!("backend snapshot {key:?}")));
        }
        if pending.entries.contains_key(&id) || tables.entry(id)?.is_some() {
            return Err(Error::Internal(format!("backend snapshot {id} exists already")));
        }
        if let Some(parent) = parent {
            if !pending.entries.contains_key(&parent) && tables.entry(parent)?.is_none() {
                return Err(Error::NotFound(format!("backend parent snapshot {parent}")));
            }
        }
        pending.keys.insert(key.to_string(), id);
        pending.entries.insert(id, Entry { parent, usage: None });
        Ok(())
    }

    /// Drops a snapshot [`create`](Backend::create) just made, when its
    /// metadata record could not be written after all.
    pub fn undo_create(&self, id: u64, key: &str) {
        let mut pending = self.pending();
        if pending.keys.get(key) == Some(&id) {
            pending.keys.remove(key);
        }
        pending.entries.remove(&id);
        drop(pending);
        self.remove_dir(&self.dir(id));
    }

    /// Makes again, durably, entries a crash lost while their records
    /// survived; returns how many it made. An entry that cannot be what
    /// the record says (its number taken, its parent missing) is reported
    /// and left out: its record then answers NotFound, as a record whose
    /// snapshot is gone does.
    pub fn restore(&self, lost: &[Lost]) -> Result<usize, Error> {
        if lost.is_empty() {
            return Ok(0);
        }
        let pending = self.pending();
        self.write(|txn| {
            let mut keys = db_ok("write snapshot backend", txn.open_table(KEYS))?;
            let mut snapshots = db_ok("write snapshot backend", txn.open_table(SNAPSHOTS))?;
            let mut restored = 0;
            for Lost { key, id, parent } in lost {
                if pending.keys.contains_key(key) || db_ok("read snapshot backend", keys.get(key.as_str()))?.is_some() {
                    continue;
                }
                if pending.entries.contains_key(id) || db_ok("read snapshot backend", snapshots.get(*id))?.is_some() {
                    error!(id, key, "cannot restore a lost snapshot: its number is taken");
                    continue;
                }
                if let Some(parent) = parent {
                    if db_ok("read snapshot backend", snapshots.get(*parent))?.is_none() {
                        error!(id, key, parent, "cannot restore a lost snapshot: its parent is gone");
                        continue;
                    }
                }
                let entry = metadata::encode(&Entry {
                    parent: *parent,
                    usage: None,
                })?;
                db_ok("write snapshot backend", keys.insert(key.as_str(), *id))?;
                db_ok("write snapshot backend", snapshots.insert(*id, entry.as_slice()))?;
                restored += 1;
            }
            Ok((restored, restored > 0))
        })
    }

    /// Makes again the directories of `referenced` snapshots that a crash
    /// lost (see the module's crash argument), and reports the committed
    /// ones, theirs and those of every parent they layer on, whose files
    /// are gone.
    pub fn repair_dirs(&self, referenced: &[Referenced]) -> Result<(), Error> {
        let mut committed = HashSet::new();
        for snapshot in referenced {
            match snapshot.dirs {
                None => {
                    committed.insert(snapshot.id);
                }
                Some(dirs) => {
                    let dir = self.dir(snapshot.id);
                    if !dir.exists() {
                        warn!(
                            id = snapshot.id,
                            "snapshot directory missing after a crash; making it again"
                        );
                        if let Err(e) = spares::make_set(&dir, dirs, self.umask) {
                            error!(id = snapshot.id, "make snapshot directory again: {e}");
                        }
                    }
                }
            }
            match self.parents(snapshot.id) {
                Ok(parents) => committed.extend(parents),
                Err(e) => error!(id = snapshot.id, "snapshot layers on a broken chain: {e}"),
            }
        }
        for id in committed {
            if !self.dir(id).exists() {
                error!(id, "committed snapshot has no directory: its files are lost");
            }
        }
        Ok(())
    }

    /// The snapshot `key` names, if any.
    pub fn id(&self, key: &str) -> Result<Option<u64>, Error> {
        if let Some(id) = self.pending().keys.get(key) {
            return Ok(Some(*id));
        }
        self.tables()?.id(key)
    }

    fn entry(&self, id: u64) -> Result<Option<Entry>, Error> {
        if let Some(entry) = self.pending().entries.get(&id) {
            return Ok(Some(entry.clone()));
        }
        self.tables()?.entry(id)
    }

    /// The parents of `id`, nearest first.
    pub fn parents(&self, id: u64) -> Result<Vec<u64>, Error> {
        let tables = self.tables()?;
        let pending = self.pending();
        let mut chain = Vec::new();
        let mut current = id;
        loop {
            let entry = match pending.entries.get(&current) {
                Some(entry) => Some(entry.clone()),
                None => tables.entry(current)?,
            }
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

    /// Records a commit, durably: `key` names `id` too from now on, and
    /// `usage` is what it measured. A pending entry goes to the database
    /// with it, and so do its keys.
    pub fn commit(&self, id: u64, key: &str, usage: Usage) -> Result<(), Error> {
        let (pending_entry, pending_keys) = {
            let pending = self.pending();
            if pending.keys.contains_key(key) {
                return Err(Error::AlreadyExists(format!("backend snapshot {key:?}")));
            }
            let keys: Vec<String> = pending
                .keys
                .iter()
                .filter(|(_, v)| **v == id)
                .map(|(k, _)| k.clone())
                .collect();
            (pending.entries.get(&id).cloned(), keys)
        };
        self.write(|txn| {
            let mut keys = db_ok("write snapshot backend", txn.open_table(KEYS))?;
            let mut snapshots = db_ok("write snapshot backend", txn.open_table(SNAPSHOTS))?;
            let stored = db_ok("read snapshot backend", snapshots.get(id))?
                .map(|v| decode_entry(v.value()))
                .transpose()?;
            let mut entry = pending_entry
                .clone()
                .or(stored)
                .ok_or_else(|| Error::NotFound(format!("backend snapshot {id}")))?;
            if db_ok("read snapshot backend", keys.get(key))?.is_some() {
                return Err(Error::AlreadyExists(format!("backend snapshot {key:?}")));
            }
            entry.usage = Some((usage.size, usage.inodes));
            let bytes = metadata::encode(&entry)?;
            for other in &pending_keys {
                db_ok("write snapshot backend", keys.insert(other.as_str(), id))?;
            }
            db_ok("write snapshot backend", keys.insert(key, id))?;
            db_ok("write snapshot backend", snapshots.insert(id, bytes.as_slice()))?;
            Ok(((), true))
        })?;
        // In the database now: reads find them there.
        let mut pending = self.pending();
        for other in &pending_keys {
            if pending.keys.get(other) == Some(&id) {
                pending.keys.remove(other);
            }
        }
        pending.entries.remove(&id);
        Ok(())
    }

    /// Drops the key a failed commit added; the snapshot stays under its
    /// other key.
    pub fn undo_commit(&self, key: &str) {
        let undone = self.write(|txn| {
            let mut keys = db_ok("write snapshot backend", txn.open_table(KEYS))?;
            let removed = db_ok("write snapshot backend", keys.remove(key))?.is_some();
            Ok(((), removed))
        });
        if let Err(e) = undone {
            // Harmless: cleanup drops keys no record names.
            warn!("undo snapshot commit: {e}");
        }
    }

    /// Every backend key, for seeding sequence numbers.
    pub fn keys(&self) -> Result<Vec<String>, Error> {
        let txn = db_ok("read snapshot backend", self.db.begin_read())?;
        let keys = db_ok("read snapshot backend", txn.open_table(KEYS))?;
        let mut out: Vec<String> = self.pending().keys.keys().cloned().collect();
        for kv in db_ok("read snapshot backend", keys.iter())? {
            let (k, _) = db_ok("read snapshot backend", kv)?;
            out.push(k.value().to_string());
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The highest snapshot number in use here or found in `snapshots/`;
    /// backend keys' `<seq>` numbers are the caller's to add.
    pub fn highest_id(&self) -> Result<u64, Error> {
        let entries = self.entries()?.keys().copied().max();
        let dirs = self.dir_ids()?.into_iter().filter_map(|(_, id)| id).max();
        Ok(entries.into_iter().chain(dirs).max().unwrap_or(0))
    }

    fn entries(&self) -> Result<HashMap<u64, Entry>, Error> {
        let txn = db_ok("read snapshot backend", self.db.begin_read())?;
        let snapshots = db_ok("read snapshot backend", txn.open_table(SNAPSHOTS))?;
        let mut out = HashMap::new();
        for kv in db_ok("read snapshot backend", snapshots.iter())? {
            let (k, v) = db_ok("read snapshot backend", kv)?;
            out.insert(k.value(), decode_entry(v.value())?);
        }
        out.extend(self.pending().entries.iter().map(|(id, e)| (*id, e.clone())));
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
    /// The caller must hold off creations, which make directories first,
    /// and commits.
    pub fn prune(&self, referenced: &HashSet<String>) -> Result<Pruned, Error> {
        let (pending_keys, pending_entries) = {
            let pending = self.pending();
            (pending.keys.clone(), pending.entries.clone())
        };
        // Worked out on a read, so a cleanup that finds only pending garbage,
        // the common case, writes nothing to the database.
        let mut all_keys: Vec<(String, u64)> = pending_keys.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let mut entries = pending_entries.clone();
        let mut stored_entries = HashSet::new();
        {
            let txn = db_ok("read snapshot backend", self.db.begin_read())?;
            let keys = db_ok("read snapshot backend", txn.open_table(KEYS))?;
            let snapshots = db_ok("read snapshot backend", txn.open_table(SNAPSHOTS))?;
            for kv in db_ok("read snapshot backend", keys.iter())? {
                let (k, v) = db_ok("read snapshot backend", kv)?;
                all_keys.push((k.value().to_string(), v.value()));
            }
            for kv in db_ok("read snapshot backend", snapshots.iter())? {
                let (k, v) = db_ok("read snapshot backend", kv)?;
                stored_entries.insert(k.value());
                entries.entry(k.value()).or_insert(decode_entry(v.value())?);
            }
        }
        let mut kept: HashSet<u64> = HashSet::new();
        let mut forgotten: Vec<String> = Vec::new();
        let mut stored_keys_gone: Vec<String> = Vec::new();
        for (key, id) in all_keys {
            if referenced.contains(&key) {
                kept.insert(id);
            } else if pending_keys.contains_key(&key) {
                forgotten.push(key);
            } else {
                stored_keys_gone.push(key);
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
        let stored_entries_gone: Vec<u64> = stored_entries.into_iter().filter(|id| !kept.contains(id)).collect();
        if !stored_keys_gone.is_empty() || !stored_entries_gone.is_empty() {
            // Creations and commits are held off, so this is still so.
            self.write(|txn| {
                let mut keys = db_ok("write snapshot backend", txn.open_table(KEYS))?;
                let mut snapshots = db_ok("write snapshot backend", txn.open_table(SNAPSHOTS))?;
                for key in &stored_keys_gone {
                    db_ok("write snapshot backend", keys.remove(key.as_str()))?;
                }
                for id in &stored_entries_gone {
                    db_ok("write snapshot backend", snapshots.remove(*id))?;
                }
                Ok(((), true))
            })?;
        }
        {
            let mut pending = self.pending();
            for key in &forgotten {
                pending.keys.remove(key);
            }
            pending.entries.retain(|id, _| kept.contains(id));
        }

        let dirs = self
            .dir_ids()?
            .into_iter()
            .filter(|(_, id)| id.is_none_or(|id| !kept.contains(&id)))
            .map(|(path, _)| path)
            .collect();
        Ok(Pruned { dirs })
    }

    /// Removes what [`prune`](Backend::prune) returned; returns how many went.
    ///
    /// A snapshot's directory is emptied where it is, and kept as a husk
    /// for a new snapshot when it is one of ours ([`spares`]). Anything
    /// else goes to `trash/` first and is removed there, with whatever an
    /// earlier removal left in it: removing a directory holds its parent
    /// locked while the filesystem frees its blocks (with `-o discard`,
    /// while the disk discards them), and creations must not wait for that
    /// in `snapshots/`. Emptying `snapshots/<id>` locks only it.
    pub fn remove_dirs(&self, pruned: Pruned) -> u64 {
        let _one = self.emptying.lock().unwrap_or_else(|e| e.into_inner());
        let mut removed = 0;
        for dir in pruned.dirs {
            let Some(name) = dir.file_name() else {
                continue;
            };
            match self.empty_and_recycle(&dir) {
                Gone::Missing => continue,
                Gone::Recycled => {}
                Gone::Left => {
                    let moved = renameat2(
                        AT_FDCWD,
                        &dir,
                        AT_FDCWD,
                        &self.trash.join(name),
                        RenameFlags::RENAME_NOREPLACE,
                    );
                    if moved.is_err() && !self.remove_dir(&dir) {
                        continue;
                    }
                }
            }
            removed += 1;
        }
        match fs::read_dir(&self.trash) {
            Ok(list) => {
                for entry in list.flatten() {
                    if self.empty_and_recycle(&entry.path()) == Gone::Left {
                        let _lowered = priority::lower_for_now();
                        self.remove_dir(&entry.path());
                    }
                }
            }
            Err(e) => warn!("list {}: {e}", self.trash.display()),
        }
        removed
    }

    /// Removes what is in `dir`, and keeps `dir` itself as a husk for a new
    /// snapshot when it is one of ours: its mode and owner are what
    /// [`spares`] gives one (nothing ever saw a snapshot's `snapshots/<id>`
    /// itself, only what is inside it). Anything that is not a directory is
    /// removed.
    fn empty_and_recycle(&self, dir: &Path) -> Gone {
        let Ok(meta) = fs::symlink_metadata(dir) else {
            return Gone::Missing;
        };
        if !meta.is_dir() {
            return if self.remove_dir(dir) {
                Gone::Recycled
            } else {
                Gone::Left
            };
        }
        let mut emptied = true;
        // Only the emptying runs lowered; the rename that recycles `dir`
        // does not (see `priority`).
        let lowered = priority::lower_for_now();
        match fs::read_dir(dir) {
            Ok(list) => {
                for entry in list {
                    match entry {
                        Ok(entry) => {
                            let path = entry.path();
                            let gone = match entry.file_type() {
                                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                                _ => fs::remove_file(&path),
                            };
                            if let Err(e) = gone {
                                warn!("remove {}: {e}", path.display());
                                emptied = false;
                            }
                        }
                        Err(_) => emptied = false,
                    }
                }
            }
            Err(_) => emptied = false,
        }
        drop(lowered);
        let ours = meta.permissions().mode() & 0o7777 == 0o700 && (meta.uid(), meta.gid()) == self.owner;
        if emptied && ours && self.spares.recycle(dir) {
            Gone::Recycled
        } else {
            Gone::Left
        }
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

    /// Writes the pending entries to the database, durably.
    pub fn sync(&self) -> Result<(), Error> {
        let mut pending = self.pending();
        if pending.entries.is_empty() && pending.keys.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            let mut keys = db_ok("write snapshot backend", txn.open_table(KEYS))?;
            let mut snapshots = db_ok("write snapshot backend", txn.open_table(SNAPSHOTS))?;
            for (key, id) in &pending.keys {
                db_ok("write snapshot backend", keys.insert(key.as_str(), *id))?;
            }
            for (id, entry) in &pending.entries {
                let bytes = metadata::encode(entry)?;
                db_ok("write snapshot backend", snapshots.insert(*id, bytes.as_slice()))?;
            }
            Ok(((), true))
        })?;
        *pending = Pending::default();
        Ok(())
    }
}

impl Drop for Backend {
    /// A clean close writes what is pending, so the next open has nothing
    /// to restore.
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            warn!("sync snapshot backend at close: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const DIRS: &[DirSpec] = &[("fs", 0o755), ("work", 0o711)];

    fn none(_: &Path) -> Result<(), Error> {
        Ok(())
    }

    fn open(root: &Path) -> Backend {
        Backend::open(root, &[DIRS]).unwrap()
    }

    /// Set in a child process (this test binary run again) to the stage it
    /// runs and the root it runs it on.
    const CRASH_STAGE: &str = "CORTEN_BACKEND_CRASH_STAGE";
    const CRASH_ROOT: &str = "CORTEN_BACKEND_CRASH_ROOT";

    /// The stages a child runs on `root` before it kills itself.
    fn stage(name: &str, root: &Path) {
        let b = open(root);
        match name {
            "created" => {
                b.create(1, "ns/1/a", None, DIRS, none).unwrap();
                // Durable, with the pending entry it commits.
                b.commit(1, "ns/2/base", Usage { size: 3, inodes: 4 }).unwrap();
                b.create(3, "ns/3/b", Some(1), DIRS, none).unwrap();
                b.create(4, "ns/4/c", None, DIRS, none).unwrap();
            }
            "restore" => {
                let lost = Lost {
                    key: "ns/3/b".into(),
                    id: 3,
                    parent: Some(1),
                };
                assert_eq!(b.restore(std::slice::from_ref(&lost)).unwrap(), 1);
            }
            other => panic!("no crash stage {other}"),
        }
        std::mem::forget(b);
    }

    /// Not a test of its own: the entry point of the child [`crash_after`] starts.
    #[test]
    fn crash_child() {
        let (Some(name), Some(root)) = (std::env::var_os(CRASH_STAGE), std::env::var_os(CRASH_ROOT)) else {
            return;
        };
        stage(name.to_str().unwrap(), Path::new(&root));
        // As a crash would: no destructor, no close, no flush runs.
        nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL).unwrap();
        unreachable!("SIGKILL is not caught");
    }

    /// Runs stage `name` on `root` in a child process that SIGKILLs itself
    /// right after it.
    fn crash_after(name: &str, root: &Path) {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "backend::tests::crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_STAGE, name)
            .env(CRASH_ROOT, root)
            .status()
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "stage {name} did not reach its kill: {status}"
        );
    }

    #[test]
    fn new_snapshots_get_the_number_they_are_given() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        {
            let b = open(root);
            b.create(1, "ns/1/a", None, DIRS, none).unwrap();
            assert_eq!(b.highest_id().unwrap(), 1);
        }
        fs::create_dir(root.join("snapshots/7")).unwrap();
        let b = open(root);
        assert_eq!(b.id("ns/1/a").unwrap(), Some(1), "a close keeps what was pending");
        assert_eq!(b.highest_id().unwrap(), 7);
        b.create(8, "ns/8/b", None, DIRS, none).unwrap();
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode(b.fs(8)), mode(b.work(8))), (0o755, 0o711));
        // A number in use is never handed out twice.
        assert!(b.create(8, "ns/9/c", None, DIRS, none).is_err());
        fs::remove_dir_all(root.join("snapshots/7")).unwrap();
        // Even with its directory gone, a number recorded is not reused.
        fs::remove_dir_all(root.join("snapshots/1")).unwrap();
        assert!(matches!(
            b.create(1, "ns/9/c", None, DIRS, none),
            Err(Error::Internal(_))
        ));
        assert!(!b.fs(1).exists(), "what the failed creation made is gone");
        fs::create_dir_all(b.fs(1)).unwrap();
        assert_eq!(b.id("ns/9/c").unwrap(), None);
        assert!(b.fs(8).is_dir() && b.fs(1).is_dir());
    }

    #[test]
    fn a_failed_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = open(dir.path());
        let failed = b.create(1, "ns/1/a", None, DIRS, |_| Err(Error::Internal("no".into())));
        assert!(failed.is_err());
        assert_eq!(b.id("ns/1/a").unwrap(), None);
        assert!(b.dir_ids().unwrap().is_empty());
        assert!(matches!(
            b.create(2, "ns/2/a", Some(42), DIRS, none),
            Err(Error::NotFound(_))
        ));
        assert!(b.dir_ids().unwrap().is_empty());
        b.create(3, "ns/3/a", None, DIRS, none).unwrap();
        b.undo_create(3, "ns/3/a");
        assert_eq!(b.id("ns/3/a").unwrap(), None);
        assert!(b.dir_ids().unwrap().is_empty());
    }

    #[test]
    fn chains_commits_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let b = open(dir.path());
        b.create(1, "ns/1/a", None, DIRS, none).unwrap();
        b.commit(1, "ns/2/base", Usage { size: 1, inodes: 2 }).unwrap();
        assert!(matches!(
            b.commit(1, "ns/2/base", Usage::default()),
            Err(Error::AlreadyExists(_))
        ));
        b.create(3, "ns/3/b", Some(1), DIRS, none).unwrap();
        b.commit(3, "ns/4/mid", Usage::default()).unwrap();
        b.create(5, "ns/5/c", Some(3), DIRS, none).unwrap();
        assert!(matches!(
            b.commit(5, "ns/5/c", Usage::default()),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(b.parents(5).unwrap(), vec![3, 1]);
        assert_eq!(b.id("ns/2/base").unwrap(), b.id("ns/1/a").unwrap());
        assert_eq!(b.committed_usage(1).unwrap(), Some(Usage { size: 1, inodes: 2 }));
        assert_eq!(b.committed_usage(5).unwrap(), None);

        // Only the top is referenced: its parents stay for it, stale keys go.
        let referenced = HashSet::from(["ns/5/c".to_string()]);
        let pruned = b.prune(&referenced).unwrap();
        assert!(pruned.dirs.is_empty());
        assert_eq!(b.keys().unwrap(), vec!["ns/5/c".to_string()]);
        assert_eq!(b.parents(5).unwrap(), vec![3, 1]);

        // What an interrupted removal left in `trash/` goes with the next.
        fs::create_dir_all(dir.path().join("trash/9/fs/deep")).unwrap();
        let pruned = b.prune(&HashSet::new()).unwrap();
        assert_eq!(b.remove_dirs(pruned), 3);
        assert!(b.dir_ids().unwrap().is_empty());
        assert!(b.entries().unwrap().is_empty());
        assert!(b.keys().unwrap().is_empty());
        assert!(fs::read_dir(dir.path().join("trash")).unwrap().next().is_none());
    }

    #[test]
    fn a_crash_loses_pending_entries_only_and_restoring_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        crash_after("created", dir.path());
        let b = open(dir.path());
        assert_eq!(b.id("ns/1/a").unwrap(), Some(1), "committed with its snapshot");
        assert_eq!(b.id("ns/2/base").unwrap(), Some(1));
        assert_eq!(b.committed_usage(1).unwrap(), Some(Usage { size: 3, inodes: 4 }));
        assert_eq!(b.id("ns/3/b").unwrap(), None, "pending: lost");
        assert_eq!(b.id("ns/4/c").unwrap(), None, "pending: lost");
        assert!(b.fs(3).is_dir() && b.fs(4).is_dir(), "their directories are not");
        assert_eq!(b.highest_id().unwrap(), 4);
        drop(b);

        crash_after("restore", dir.path());
        let b = open(dir.path());
        assert_eq!(b.id("ns/3/b").unwrap(), Some(3));
        assert_eq!(b.parents(3).unwrap(), vec![1]);
        let again = Lost {
            key: "ns/3/b".into(),
            id: 3,
            parent: Some(1),
        };
        assert_eq!(b.restore(&[again]).unwrap(), 0);
        // A number that is taken, or a parent that is gone, restores nothing.
        let clash = [
            Lost {
                key: "ns/9/x".into(),
                id: 3,
                parent: None,
            },
            Lost {
                key: "ns/10/y".into(),
                id: 10,
                parent: Some(7),
            },
        ];
        assert_eq!(b.restore(&clash).unwrap(), 0);
        assert_eq!(b.id("ns/9/x").unwrap(), None);
        assert_eq!(b.id("ns/10/y").unwrap(), None);
        // Garbage the crash left (`ns/1/a`, snapshot 4's directory) goes.
        let referenced = HashSet::from(["ns/2/base".to_string(), "ns/3/b".to_string()]);
        let pruned = b.prune(&referenced).unwrap();
        assert_eq!(b.remove_dirs(pruned), 1);
        assert_eq!(b.keys().unwrap(), vec!["ns/2/base".to_string(), "ns/3/b".to_string()]);
    }

    #[test]
    fn pending_garbage_is_pruned_without_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let b = open(dir.path());
        b.create(1, "ns/1/a", None, DIRS, none).unwrap();
        b.create(2, "ns/2/b", None, DIRS, none).unwrap();
        let pruned = b.prune(&HashSet::from(["ns/2/b".to_string()])).unwrap();
        assert_eq!(b.remove_dirs(pruned), 1);
        assert_eq!(b.keys().unwrap(), vec!["ns/2/b".to_string()]);
        assert!(b.tables().unwrap().entry(2).unwrap().is_none(), "still only pending");
        drop(b);
        let b = open(dir.path());
        assert_eq!(b.keys().unwrap(), vec!["ns/2/b".to_string()]);
    }

    #[test]
    fn repairs_lost_directories_of_uncommitted_snapshots_only() {
        let dir = tempfile::tempdir().unwrap();
        let b = open(dir.path());
        b.create(1, "ns/1/a", None, DIRS, none).unwrap();
        b.create(2, "ns/2/b", None, DIRS, none).unwrap();
        b.commit(2, "ns/3/c", Usage::default()).unwrap();
        b.create(4, "ns/4/d", None, DIRS, none).unwrap();
        for id in [1, 2, 4] {
            fs::remove_dir_all(dir.path().join(format!("snapshots/{id}"))).unwrap();
        }
        let referenced = [
            Referenced {
                id: 1,
                dirs: Some(DIRS),
            },
            Referenced { id: 2, dirs: None },
        ];
        b.repair_dirs(&referenced).unwrap();
        assert!(b.fs(1).is_dir() && b.work(1).is_dir());
        assert!(!b.fs(2).exists());
        assert!(!b.fs(4).exists(), "no record names it: garbage, not repaired");
    }
}
