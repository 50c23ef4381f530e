//! [`MetaStore`] on sled.
//!
//! sled acknowledges writes before they reach the disk, so every transaction
//! is made durable by a log of our own before it returns. A process-wide
//! read/write lock lets transactions run together but holds them off during
//! an exclusive section (namespace deletion, garbage collection), because
//! sled transactions cannot scan.
//!
//! Transactions read and stage their writes one at a time, under a mutex,
//! and only their syncs overlap ([`SledStore::transact_unlocked`]): with
//! no other writer between its reads and its writes, a transaction needs no
//! conflict detection, and its writes are applied as plain sled writes. A
//! sled transaction would cost a second log write per commit (its batch
//! manifest goes out in a buffer of its own, with a `sync_file_range` and a
//! thread hand-off of its own) and hold off every flush while it commits.
//!
//! # Atomicity of a transaction that writes several keys
//!
//! Against a crash: the writes are first recorded together as one sled
//! value, the *intent* ([`INTENT_KEY`], in sled's default tree, which holds
//! no objects), then applied one by one, then the intent is removed; all
//! before the next transaction writes anything. sled recovers its log up to
//! the first message that is missing or torn and no further, so what a
//! crash leaves is every write before some point in the log, never a later
//! one without an earlier one: either nothing of the transaction (not even
//! the intent), or the intent with a prefix of its writes, or all of it.
//! [`SledStore::open`] applies a surviving intent again in full (each write
//! sets a key to a value or removes it, so applying twice is applying once)
//! and removes it before anything else runs. A single write is one log
//! message, atomic by itself.
//!
//! Against readers: the writes are applied with [`SledStore::visible`]
//! held exclusively, and every read takes it shared, so no read sees some
//! of a transaction's writes and not the rest (as sled's transactions hold
//! reads off while they commit).
//!
//! # Durability
//!
//! sled 0.34's `flush` writes its log buffers with `pwrite` and waits for
//! them with `sync_file_range` only (its periodic flusher thread calls
//! `fsync`, every 500 ms). That survives the death of the process, as the
//! page cache holds the data, but not a power loss: `sync_file_range`
//! neither flushes the disk's volatile write cache nor commits the file's
//! size and extents when the log grows. A flush followed by an `fdatasync`
//! of sled's log ([`Syncer`]) is durable, but it is two disk round trips
//! and a chain of wake-ups among sled's I/O threads per transaction.
//!
//! So a transaction is made durable through a write-ahead log of our own
//! ([`Wal`]): once its writes are applied to sled (in memory), its record
//! (the same encoding as an intent) is appended to the log, still under the
//! mutex, so records are in the order transactions were applied; after the
//! mutex, one `fdatasync` of the log, shared by transactions that finish
//! together, and the transaction is acknowledged. A transaction that read
//! another's write before that one was durable is durable only after it,
//! as a sync covers every record before its own.
//!
//! Every transaction has a number, and the last one applied is written to
//! sled with the transaction's writes ([`APPLIED_KEY`], before the intent
//! is removed). What sled recovers after a crash is transactions `1..=n`
//! whole, by that key, and perhaps a prefix of `n + 1`, whose intent is
//! there if it wrote several keys. The open applies the intent again (it
//! is transaction `n` or `n + 1`), then, in order, the log's records
//! numbered above `n`: the same writes again, then the ones sled lost. A
//! transaction whose record is not whole in the log was never
//! acknowledged; if sled has part of it, the intent completes it.
//!
//! When the log is full, a *checkpoint* (sled's flush and the `fdatasync`
//! of its log, under the mutex) makes sled durable through the last
//! transaction, and the log starts again at its beginning. A transaction
//! whose record is too large for the log is made durable by a checkpoint
//! too. sled writes a value too large for its log (over a quarter of a
//! segment, 128 KiB) to a file of its own in `blobs/` and syncs neither;
//! only such transactions write one, and the syncer syncs each new one,
//! and the directory, first. A transaction whose record cannot be written
//! or synced is made durable by a checkpoint as well, and after a failed
//! sync so is every later one: the kernel may have dropped the pages it
//! could not write, so a later sync of the log proves nothing.
//!
//! At open, what the replay wrote is made durable in sled before any
//! record is written over, and numbering goes on as many numbers above
//! the highest known as the log could ever hold records: any record still
//! in the log, read or not, is numbered below every later transaction, so
//! it ends the log wherever a later record is followed by it.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    ffi::OsString,
    fs::{self, File},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, RwLock, RwLockReadGuard,
    },
    time::{Duration, SystemTime},
};

use corten_core::{
    metadata::{Exclusive, MetaStore, MutationCallback, Pairs, Reader, Txn},
    Error,
};

use crate::wal::{self, Wal};

/// The layout version of the whole database, checked at open.
const SCHEMA_VERSION: &[u8] = b"1";
const SCHEMA_KEY: &[u8] = b"corten.schema_version";
/// sled's own default tree: holds the schema key and the intent, never objects.
const DEFAULT_TREE: &[u8] = b"__sled__default";
/// The writes of the transaction being applied, while it is; see the
/// module's documentation.
const INTENT_KEY: &[u8] = b"corten.intent";
/// The number of the last transaction applied, in sled's default tree; see
/// the module's documentation.
const APPLIED_KEY: &[u8] = b"corten.applied";
/// The write-ahead log's size: records are a few hundred bytes, so it holds
/// thousands of transactions between checkpoints.
const WAL_BYTES: u64 = 1 << 20;
/// A transaction whose record is larger is made durable by a checkpoint
/// instead of the log. Kept below the size at which sled moves a value out
/// of its log into a file of its own (a quarter of a 512 KiB segment), so
/// such files only ever come from transactions that checkpoint, and the
/// checkpoint syncs them.
const WAL_RECORD_MAX: usize = 64 << 10;

pub struct SledStore {
    db: sled::Db,
    syncer: Syncer,
    wal: Wal,
    trees: RwLock<HashMap<String, sled::Tree>>,
    writers: RwLock<()>,
    /// Held by a transaction from its first read to its last write; see
    /// the module's documentation. Holds the number of the last
    /// transaction applied.
    serial: Mutex<u64>,
    /// Held shared by reads, exclusively while a transaction's writes to
    /// several keys are applied.
    visible: RwLock<()>,
    on_mutation: RwLock<Vec<MutationCallback>>,
}

fn db_err(context: &str) -> impl Fn(sled::Error) -> Error + '_ {
    move |e| Error::internal(context, e)
}

/// `fdatasync` of sled's log file, shared by callers that ask together.
///
/// A caller asks only once sled's flush of its writes has returned, so its
/// writes are in the file's pages by then; any `fdatasync` that starts after
/// it took its ticket covers them. The one that runs covers every ticket
/// taken before it started.
struct Syncer {
    /// sled's log; `fdatasync` works on any descriptor of the inode.
    file: File,
    /// sled's `blobs/`, and the names in it already synced.
    blobs: PathBuf,
    synced_blobs: Mutex<Blobs>,
    /// Tickets handed out.
    asked: AtomicU64,
    /// The highest ticket a completed `fdatasync` covers.
    synced: Mutex<u64>,
}

/// What [`Syncer::sync_blobs`] saw last.
#[derive(Default)]
struct Blobs {
    names: HashSet<OsString>,
    /// The directory's modification time then, and when it listed them.
    listed: Option<(SystemTime, SystemTime)>,
}

impl Syncer {
    /// sled 0.34 keeps its whole log, the only file a flush writes, in `<path>/db`.
    fn open(path: &Path) -> Result<Syncer, Error> {
        let log = path.join("db");
        let file = File::open(&log).map_err(|e| Error::internal(&format!("open {}", log.display()), e))?;
        Ok(Syncer {
            file,
            blobs: path.join("blobs"),
            synced_blobs: Mutex::new(Blobs::default()),
            asked: AtomicU64::new(0),
            synced: Mutex::new(0),
        })
    }

    fn sync(&self) -> Result<(), Error> {
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= ticket {
            return Ok(());
        }
        let covers = self.asked.load(Ordering::SeqCst);
        self.sync_blobs()?;
        self.file.sync_data().map_err(|e| Error::internal("sync metadata", e))?;
        *synced = covers;
        Ok(())
    }

    /// Syncs the blob files not synced yet, then their names. Blobs sled
    /// removed since are forgotten.
    fn sync_blobs(&self) -> Result<(), Error> {
        let sync_err = |e| Error::internal("sync metadata blobs", e);
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner());
        // Nothing was added since the last look if the directory has not
        // changed since, and had changed well before it (a margin for the
        // coarse clock that stamps it): one stat instead of a listing,
        // nearly always.
        let changed = fs::metadata(&self.blobs).and_then(|m| m.modified()).map_err(sync_err)?;
        if synced
            .listed
            .is_some_and(|(stamp, at)| stamp == changed && stamp + Duration::from_millis(100) < at)
        {
            return Ok(());
        }
        let listed = (changed, SystemTime::now());
        let mut present = HashSet::new();
        let mut new = false;
        for entry in fs::read_dir(&self.blobs).map_err(sync_err)? {
            let name = entry.map_err(sync_err)?.file_name();
            if !synced.names.contains(&name) {
                match File::open(self.blobs.join(&name)).and_then(|f| f.sync_all()) {
                    Ok(()) => new = true,
                    // Removed by sled since the listing: nothing to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(sync_err(e)),
                }
            }
            present.insert(name);
        }
        if new {
            File::open(&self.blobs).and_then(|d| d.sync_all()).map_err(sync_err)?;
        }
        *synced = Blobs {
            names: present,
            listed: Some(listed),
        };
        Ok(())
    }
}

impl SledStore {
    pub fn open(path: &Path, cache_capacity: u64) -> Result<SledStore, Error> {
        Self::open_with_log(path, cache_capacity, WAL_BYTES)
    }

    /// [`SledStore::open`] with a write-ahead log of `wal_bytes` if it has
    /// to make one (the tests' small logs fill and restart often).
    fn open_with_log(path: &Path, cache_capacity: u64, wal_bytes: u64) -> Result<SledStore, Error> {
        let db = {
            let _raised = crate::priority::Raised::current_thread();
            sled::Config::new().path(path).cache_capacity(cache_capacity).open()
        }
        .map_err(db_err("open metadata"))?;
        match db.get(SCHEMA_KEY).map_err(db_err("read schema version"))? {
            Some(v) if v.as_ref() == SCHEMA_VERSION => {}
            Some(v) => {
                return Err(Error::FailedPrecondition(format!(
                    "metadata schema version {} is not one this corten reads",
                    String::from_utf8_lossy(&v)
                )))
            }
            None => {
                db.insert(SCHEMA_KEY, SCHEMA_VERSION)
                    .map_err(db_err("write schema version"))?;
                db.flush().map_err(db_err("flush"))?;
            }
        }
        replay(&db)?;
        let (wal, records) = Wal::open(&path.with_extension("wal"), wal_bytes)?;
        let (last, replayed) = replay_log(&db, records)?;
        if replayed {
            db.insert(APPLIED_KEY, &last.to_be_bytes())
                .map_err(db_err("write metadata sequence"))?;
            db.flush().map_err(db_err("flush metadata"))?;
        }
        // Numbers go on above every number the log may still hold, read or
        // not, so no record left in it is ever taken for a later one.
        let applied = last + wal.capacity();
        let syncer = Syncer::open(path)?;
        // What the replay wrote, whatever an earlier run flushed but never
        // synced, and the names of sled's files, which sled does not sync
        // when it creates them, become durable before anything is built
        // on them; only then may the log's records be written over.
        syncer.sync()?;
        File::open(path)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| Error::internal(&format!("sync {}", path.display()), e))?;
        Ok(SledStore {
            db,
            syncer,
            wal,
            trees: RwLock::new(HashMap::new()),
            writers: RwLock::new(()),
            serial: Mutex::new(applied),
            visible: RwLock::new(()),
            on_mutation: RwLock::new(Vec::new()),
        })
    }

    pub fn flush(&self) {
        if let Err(e) = self.durable_flush() {
            tracing::warn!("flush metadata: {e}");
        }
    }

    /// Returns once every write acknowledged so far is on stable storage.
    fn durable_flush(&self) -> Result<(), Error> {
        self.db.flush().map_err(db_err("flush metadata"))?;
        // After the sync, which transactions finishing together share.
        let synced = self.syncer.sync();
        release_garbage();
        synced
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, Error> {
        if let Some(t) = self.trees.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(t.clone());
        }
        let tree = self.db.open_tree(name).map_err(db_err("open tree"))?;
        self.trees
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), tree.clone());
        Ok(tree)
    }

    fn read_lock(&self) -> RwLockReadGuard<'_, ()> {
        self.writers.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what transaction `seq` staged (`intent`, encoded), then its
    /// number; the caller holds [`SledStore::serial`].
    fn apply(&self, trees: &[sled::Tree], staged: &Staged, intent: &[u8], seq: u64) -> Result<(), Error> {
        let applied = || {
            self.db
                .insert(APPLIED_KEY, &seq.to_be_bytes())
                .map(drop)
                .map_err(db_err("write metadata sequence"))
        };
        if let [((tree, key), value)] = staged.iter().collect::<Vec<_>>().as_slice() {
            write(&trees[*tree], key, value.as_deref())?;
            return applied();
        }
        let _hidden = self.visible.write().unwrap_or_else(|e| e.into_inner());
        self.db
            .insert(INTENT_KEY, intent)
            .map_err(db_err("write metadata intent"))?;
        for ((tree, key), value) in staged {
            write(&trees[*tree], key, value.as_deref())?;
        }
        applied()?;
        self.db.remove(INTENT_KEY).map_err(db_err("remove metadata intent"))?;
        Ok(())
    }

    /// Makes sled itself durable and starts the log again: everything the
    /// log holds is then in sled's synced log too. The caller holds
    /// [`SledStore::serial`], so no transaction is applied meanwhile.
    fn checkpoint(&self) -> Result<(), Error> {
        self.durable_flush()?;
        self.wal.restart();
        Ok(())
    }

    fn read_view(&self) -> RwLockReadGuard<'_, ()> {
        self.visible.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` over `names` with no other transaction between its reads
    /// and its writes, applies what it staged, then flushes; the caller
    /// holds the lock.
    fn transact_unlocked(&self, names: &[&str], f: &dyn Fn(&dyn Txn) -> Result<(), Error>) -> Result<(), Error> {
        let trees = names.iter().map(|n| self.tree(n)).collect::<Result<Vec<_>, _>>()?;
        let (logged, removed) = {
            let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
            let txn = StagedTxn {
                names,
                trees: &trees,
                staged: RefCell::new(BTreeMap::new()),
                removed: RefCell::new(BTreeSet::new()),
            };
            f(&txn)?;
            let staged = txn.staged.into_inner();
            if staged.is_empty() {
                return Ok(());
            }
            let seq = *serial + 1;
            let intent = encode_intent(names, &staged);
            self.apply(&trees, &staged, &intent, seq)?;
            *serial = seq;
            let logged = intent.len() <= WAL_RECORD_MAX
                && self.wal.append(seq, &intent).unwrap_or_else(|e| {
                    // Made durable by the checkpoint instead: a later
                    // transaction's record must never stand in the log
                    // without this one's writes durable somewhere.
                    tracing::warn!("metadata write-ahead log: {e}");
                    false
                });
            if !logged {
                self.checkpoint()?;
            }
            let removed: Vec<&str> = txn.removed.into_inner().into_iter().map(|i| names[i]).collect();
            (logged.then_some(seq), removed)
        };
        // Outside the mutex, so transactions that finish together share the
        // sync. A transaction that read another's write before that one is
        // durable is itself durable only after it, as the log is written in
        // the order of the transactions and a sync covers all of it.
        if let Some(seq) = logged {
            if let Err(e) = self.wal.sync(seq) {
                // A failed `fdatasync` may have dropped the pages it could
                // not write, and a later one succeed without them; sled's
                // own durable flush covers everything applied instead.
                tracing::warn!("metadata write-ahead log: {e}");
                let _serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                self.checkpoint()?;
            }
            release_garbage();
        }
        for callback in self.on_mutation.read().unwrap_or_else(|e| e.into_inner()).iter() {
            callback(&removed);
        }
        Ok(())
    }
}

/// Hands what sled retired on this thread to the global collector, which
/// frees it once no reader can still see it.
///
/// sled 0.34 frees replaced tree nodes, and each full 512 KiB log buffer,
/// through crossbeam-epoch: every thread keeps what it retired in a bag of
/// its own, and only a full bag (64 items) reaches the collector. The
/// daemon's writes run on many pool threads, each writing now and then, so
/// each kept a partly full bag with old nodes and log buffers in it: the
/// daemon grew by about 6 MiB over its first 200 containers, and stayed
/// there. Passing the bag on after every flush bounds that to what live
/// readers pin.
fn release_garbage() {
    crossbeam_epoch::pin().flush();
}

/// A staged write: the value to insert, or `None` to remove.
type Staged = BTreeMap<(usize, Vec<u8>), Option<Vec<u8>>>;

/// Inserts `value` at `key` in `tree`, or removes `key` when `value` is `None`.
fn write(tree: &sled::Tree, key: &[u8], value: Option<&[u8]>) -> Result<(), Error> {
    match value {
        Some(value) => tree.insert(key, value).map(drop),
        None => tree.remove(key).map(drop),
    }
    .map_err(|e| Error::internal("metadata write", e))
}

/// The intent of `staged`: for each write, its tree's name, its key, and
/// its value if it inserts, each length-prefixed.
fn encode_intent(names: &[&str], staged: &Staged) -> Vec<u8> {
    let mut out = Vec::new();
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    for ((tree, key), value) in staged {
        field(names[*tree].as_bytes());
        field(key);
        match value {
            Some(value) => {
                field(b"+");
                field(value);
            }
            None => field(b"-"),
        }
    }
    out
}

type IntentWrite = (String, Vec<u8>, Option<Vec<u8>>);

fn decode_intent(mut bytes: &[u8]) -> Result<Vec<IntentWrite>, Error> {
    let damaged = || Error::Internal("the metadata store's intent record is damaged".into());
    let field = |bytes: &mut &[u8]| -> Result<Vec<u8>, Error> {
        let (len, rest) = bytes.split_first_chunk::<8>().ok_or_else(damaged)?;
        let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| damaged())?;
        if rest.len() < len {
            return Err(damaged());
        }
        let (value, rest) = rest.split_at(len);
        *bytes = rest;
        Ok(value.to_vec())
    };
    let mut writes = Vec::new();
    while !bytes.is_empty() {
        let tree = String::from_utf8(field(&mut bytes)?).map_err(|_| damaged())?;
        let key = field(&mut bytes)?;
        let value = match field(&mut bytes)?.as_slice() {
            b"+" => Some(field(&mut bytes)?),
            b"-" => None,
            _ => return Err(damaged()),
        };
        writes.push((tree, key, value));
    }
    Ok(writes)
}

/// Finishes the transaction a crash interrupted, if any: see the module's
/// documentation. Flushed; the caller syncs.
fn replay(db: &sled::Db) -> Result<(), Error> {
    let Some(intent) = db.get(INTENT_KEY).map_err(db_err("read metadata intent"))? else {
        return Ok(());
    };
    let writes = decode_intent(&intent)?;
    tracing::warn!(
        writes = writes.len(),
        "finishing a metadata transaction a crash interrupted"
    );
    write_all(db, &writes)?;
    db.remove(INTENT_KEY).map_err(db_err("remove metadata intent"))?;
    db.flush().map_err(db_err("flush metadata"))?;
    Ok(())
}

fn write_all(db: &sled::Db, writes: &[IntentWrite]) -> Result<(), Error> {
    for (tree, key, value) in writes {
        let tree = db.open_tree(tree).map_err(db_err("open tree"))?;
        write(&tree, key, value.as_deref())?;
    }
    Ok(())
}

/// Applies, in order, the log's records of the transactions sled lost, and
/// returns the highest transaction number sled or the log knows, and
/// whether it applied any. Not flushed.
fn replay_log(db: &sled::Db, records: Vec<wal::Record>) -> Result<(u64, bool), Error> {
    let applied = match db.get(APPLIED_KEY).map_err(db_err("read metadata sequence"))? {
        Some(v) => u64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| Error::Internal("the metadata store's sequence number is damaged".into()))?,
        ),
        // Written by a corten from before the log: it flushed every transaction.
        None => 0,
    };
    let lost: Vec<_> = records.into_iter().filter(|r| r.seq > applied).collect();
    let Some(last) = lost.last().map(|r| r.seq) else {
        return Ok((applied, false));
    };
    tracing::warn!(
        transactions = lost.len(),
        "applying metadata transactions the log kept and the database lost"
    );
    for record in &lost {
        write_all(db, &decode_intent(&record.payload)?)?;
    }
    Ok((last, true))
}

/// A transaction as the closure sees it: reads go to the trees (no other
/// writer runs meanwhile) through what it staged so far, writes are staged.
struct StagedTxn<'a> {
    names: &'a [&'a str],
    trees: &'a [sled::Tree],
    staged: RefCell<Staged>,
    /// The trees in which a staged removal takes away a key that exists.
    removed: RefCell<BTreeSet<usize>>,
}

impl StagedTxn<'_> {
    fn index(&self, tree: &str) -> Result<usize, Error> {
        self.names
            .iter()
            .position(|n| *n == tree)
            .ok_or_else(|| Error::Internal(format!("tree {tree:?} is not part of this transaction")))
    }
}

impl Txn for StagedTxn<'_> {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let index = self.index(tree)?;
        if let Some(staged) = self.staged.borrow().get(&(index, key.to_vec())) {
            return Ok(staged.clone());
        }
        let value = self.trees[index].get(key).map_err(db_err("read metadata"))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn insert(&self, tree: &str, key: &[u8], value: Vec<u8>) -> Result<(), Error> {
        let index = self.index(tree)?;
        self.staged.borrow_mut().insert((index, key.to_vec()), Some(value));
        Ok(())
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), Error> {
        // Removing what is not there writes nothing, as in sled.
        if self.get(tree, key)?.is_none() {
            return Ok(());
        }
        let index = self.index(tree)?;
        self.staged.borrow_mut().insert((index, key.to_vec()), None);
        self.removed.borrow_mut().insert(index);
        Ok(())
    }
}

impl Reader for SledStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let tree = self.tree(tree)?;
        let _visible = self.read_view();
        let v = tree.get(key).map_err(db_err("read metadata"))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Pairs, Error> {
        let tree = self.tree(tree)?;
        let _visible = self.read_view();
        tree.scan_prefix(prefix)
            .map(|kv| {
                kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(db_err("scan metadata"))
            })
            .collect()
    }

    fn has_prefix(&self, tree: &str, prefix: &[u8]) -> Result<bool, Error> {
        let tree = self.tree(tree)?;
        let _visible = self.read_view();
        match tree.scan_prefix(prefix).next() {
            None => Ok(false),
            Some(kv) => kv.map(|_| true).map_err(db_err("scan metadata")),
        }
    }

    fn tree_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .db
            .tree_names()
            .into_iter()
            .filter(|n| n.as_ref() != DEFAULT_TREE)
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect();
        names.sort();
        names
    }
}

impl MetaStore for SledStore {
    fn transact(&self, trees: &[&str], f: &dyn Fn(&dyn Txn) -> Result<(), Error>) -> Result<(), Error> {
        let _shared = self.read_lock();
        self.transact_unlocked(trees, f)
    }

    fn exclusive(&self, f: &mut dyn FnMut(&dyn Exclusive) -> Result<(), Error>) -> Result<(), Error> {
        let _only = self.writers.write().unwrap_or_else(|e| e.into_inner());
        f(&Locked(self))
    }

    fn on_mutation(&self, callback: MutationCallback) {
        self.on_mutation
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(callback);
    }
}

/// The store as seen from inside an exclusive section.
struct Locked<'a>(&'a SledStore);

impl Reader for Locked<'_> {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.0.get(tree, key)
    }
    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Pairs, Error> {
        self.0.scan_prefix(tree, prefix)
    }
    fn has_prefix(&self, tree: &str, prefix: &[u8]) -> Result<bool, Error> {
        self.0.has_prefix(tree, prefix)
    }
    fn tree_names(&self) -> Vec<String> {
        self.0.tree_names()
    }
}

impl Exclusive for Locked<'_> {
    fn transact(&self, trees: &[&str], f: &dyn Fn(&dyn Txn) -> Result<(), Error>) -> Result<(), Error> {
        self.0.transact_unlocked(trees, f)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use corten_core::namespaces::{Namespace, Namespaces};

    use super::*;

    /// sled's I/O threads may still hold the database's lock for a moment
    /// after the last handle of an earlier open is dropped.
    fn open(dir: &Path) -> SledStore {
        open_log(dir, WAL_BYTES)
    }

    /// [`open`], making a write-ahead log of `wal_bytes` if there is none.
    fn open_log(dir: &Path, wal_bytes: u64) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open_with_log(&dir.join("db"), 1 << 20, wal_bytes) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("open again: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("open {}: {e}", dir.display()),
            }
        }
    }

    #[test]
    fn transactions_are_atomic_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            s.transact(&["a", "b"], &|t| {
                t.insert("a", b"ns/1", b"x".to_vec())?;
                t.insert("b", b"ns/2", b"y".to_vec())
            })
            .unwrap();
            let failed = s.transact(&["a"], &|t| {
                t.insert("a", b"ns/3", b"z".to_vec())?;
                Err(Error::FailedPrecondition("no".into()))
            });
            assert_eq!(failed, Err(Error::FailedPrecondition("no".into())));
            assert!(s.transact(&["a"], &|t| t.get("c", b"k").map(drop)).is_err());
        }
        let s = open(dir.path());
        assert_eq!(s.get("a", b"ns/1").unwrap(), Some(b"x".to_vec()));
        assert_eq!(s.get("a", b"ns/3").unwrap(), None);
        assert!(s.has_prefix("b", b"ns/").unwrap());
        assert!(!s.has_prefix("b", b"nt/").unwrap());
        assert_eq!(s.tree_names(), vec!["a", "b"]);
    }

    #[test]
    fn a_transaction_reads_its_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.transact(&["a"], &|t| t.insert("a", b"gone", vec![0])).unwrap();
        s.transact(&["a", "b"], &|t| {
            t.insert("a", b"k", vec![1])?;
            assert_eq!(t.get("a", b"k")?, Some(vec![1]));
            assert_eq!(t.get("b", b"k")?, None);
            t.insert("a", b"k", vec![2])?;
            assert_eq!(t.get("a", b"k")?, Some(vec![2]));
            t.remove("a", b"gone")?;
            assert_eq!(t.get("a", b"gone")?, None);
            t.insert("b", b"k", vec![3])
        })
        .unwrap();
        assert_eq!(s.get("a", b"k").unwrap(), Some(vec![2]));
        assert_eq!(s.get("a", b"gone").unwrap(), None);
        assert_eq!(s.get("b", b"k").unwrap(), Some(vec![3]));
        // A failed transaction applies nothing it staged.
        let failed = s.transact(&["a", "b"], &|t| {
            t.insert("a", b"k", vec![9])?;
            t.remove("b", b"k")?;
            Err(Error::FailedPrecondition("no".into()))
        });
        assert!(failed.is_err());
        assert_eq!(s.get("a", b"k").unwrap(), Some(vec![2]));
        assert_eq!(s.get("b", b"k").unwrap(), Some(vec![3]));
    }

    /// Set in a child process (this test binary run again) to the database
    /// it writes before it kills itself.
    const CRASH_DB: &str = "CORTEN_METADATA_CRASH_DB";

    /// Not a test of its own: the child [`acknowledged_writes_survive_sigkill`] starts.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_DB) else {
            return;
        };
        let s = open(Path::new(&dir));
        // Too large for sled's log: a file of its own, synced apart, and a
        // checkpoint rather than the write-ahead log.
        s.transact(&["a"], &|t| t.insert("a", b"large", vec![5; 300 << 10]))
            .unwrap();
        assert!(!s.syncer.synced_blobs.lock().unwrap().names.is_empty());
        // Then only the write-ahead log has these: sled's own flusher
        // writes every 500 ms, and the child is gone long before.
        for i in 0..50u8 {
            // One key, and several keys over two trees, alternately.
            s.transact(&["a"], &|t| t.insert("a", &[i], vec![i])).unwrap();
            s.transact(&["a", "b"], &|t| {
                t.remove("a", &[i])?;
                t.insert("b", &[i], vec![i])?;
                t.insert("b", &[i, i], vec![i])
            })
            .unwrap();
        }
        s.transact(&["a"], &|t| t.insert("a", b"last", vec![1])).unwrap();
        // As a crash would: no destructor, no close, no flush runs.
        nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL).unwrap();
        unreachable!("SIGKILL is not caught");
    }

    #[test]
    fn acknowledged_writes_survive_sigkill() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "store::tests::crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DB, dir.path())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(9), "the child did not reach its kill: {status}");
        let s = open(dir.path());
        assert_eq!(s.get("a", b"last").unwrap(), Some(vec![1]));
        assert_eq!(s.get("a", b"large").unwrap(), Some(vec![5; 300 << 10]));
        for i in 0..50u8 {
            assert_eq!(s.get("a", &[i]).unwrap(), None);
            assert_eq!(s.get("b", &[i]).unwrap(), Some(vec![i]));
            assert_eq!(s.get("b", &[i, i]).unwrap(), Some(vec![i]));
        }
    }

    /// Set in a child process to the database it writes transactions of
    /// several keys to until it is killed.
    const LOOP_DB: &str = "CORTEN_METADATA_LOOP_DB";
    /// The size of the write-ahead log the child makes.
    const LOOP_WAL: &str = "CORTEN_METADATA_LOOP_WAL";

    /// Not a test of its own: the child [`a_crash_never_splits_a_transaction`] starts.
    #[test]
    fn loop_child() {
        let Some(dir) = std::env::var_os(LOOP_DB) else {
            return;
        };
        let wal_bytes = std::env::var(LOOP_WAL).unwrap().parse().unwrap();
        let s = open_log(Path::new(&dir), wal_bytes);
        let start = s.scan_prefix("a", b"").unwrap().len() as u64;
        for i in start.. {
            let (key, before) = (i.to_be_bytes(), i.wrapping_sub(1).to_be_bytes());
            s.transact(&["a", "b", "d"], &|t| {
                t.insert("a", &key, key.to_vec())?;
                t.insert("b", &key, vec![7; 3000])?;
                t.remove("d", &before)?;
                t.insert("d", &key, key.to_vec())
            })
            .unwrap();
            println!("acknowledged {}", i + 1);
        }
    }

    /// SIGKILL at random moments while transactions of several keys over
    /// several trees go on: after each, every transaction is there whole or
    /// not at all, and the ones acknowledged before are all there.
    #[test]
    fn a_crash_never_splits_a_transaction() {
        crash_loop(WAL_BYTES);
    }

    /// As above, with a log that holds two transactions, so the killed
    /// child is often in a checkpoint or just after the log restarted.
    #[test]
    fn a_crash_never_splits_a_transaction_while_the_log_restarts() {
        crash_loop(8 << 10);
    }

    fn crash_loop(wal_bytes: u64) {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        println!("seed {seed}");
        let mut rng = seed;
        let dir = tempfile::tempdir().unwrap();
        let mut seen = 0;
        for round in 0..12 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["store::tests::loop_child", "--exact", "--nocapture", "--test-threads=1"])
                .env(LOOP_DB, dir.path())
                .env(LOOP_WAL, wal_bytes.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_micros(20_000 + rng % 150_000));
            child.kill().unwrap();
            let printed = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
            let acknowledged = printed
                .lines()
                .filter_map(|l| l.strip_prefix("acknowledged "))
                .next_back()
                .map_or(seen, |n| n.parse().unwrap());

            let s = open(dir.path());
            let a = s.scan_prefix("a", b"").unwrap();
            let b = s.scan_prefix("b", b"").unwrap();
            let d = s.scan_prefix("d", b"").unwrap();
            let n = a.len();
            assert!(n >= seen, "round {round}: {n} transactions after {seen}");
            assert!(
                n >= acknowledged,
                "round {round}: {n} transactions, {acknowledged} acknowledged"
            );
            assert_eq!(b.len(), n, "round {round}");
            for (i, ((ka, _), (kb, vb))) in a.iter().zip(&b).enumerate() {
                assert_eq!(ka.as_slice(), (i as u64).to_be_bytes(), "round {round}");
                assert_eq!(kb, ka, "round {round}");
                assert_eq!(vb.len(), 3000, "round {round}");
            }
            // The removal and the insert of the last transaction, together.
            let last = n.checked_sub(1).map(|i| (i as u64).to_be_bytes().to_vec());
            assert_eq!(
                d.into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
                Vec::from_iter(last),
                "round {round}"
            );
            assert_eq!(s.db.get(INTENT_KEY).unwrap(), None);
            seen = n;
        }
        assert!(seen > 0);
    }

    #[test]
    fn replays_an_intent_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            s.transact(&["a"], &|t| t.insert("a", b"gone", vec![1])).unwrap();
            // As a crash right after the intent and before its writes leaves it.
            let mut staged = Staged::new();
            staged.insert((0, b"k".to_vec()), Some(b"v".to_vec()));
            staged.insert((1, b"gone".to_vec()), None);
            s.db.insert(INTENT_KEY, encode_intent(&["b", "a"], &staged)).unwrap();
            s.db.flush().unwrap();
        }
        let s = open(dir.path());
        assert_eq!(s.get("b", b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(s.get("a", b"gone").unwrap(), None);
        assert_eq!(s.db.get(INTENT_KEY).unwrap(), None);
        assert!(decode_intent(b"\x05\0\0").is_err());
    }

    #[test]
    fn reports_mutations_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        s.on_mutation(Arc::new(move |removed: &[&str]| {
            log.lock()
                .unwrap()
                .push(removed.iter().map(|t| t.to_string()).collect::<Vec<_>>())
        }));
        s.transact(&["a"], &|t| t.insert("a", b"k", vec![1])).unwrap();
        s.transact(&["a"], &|t| t.get("a", b"k").map(drop)).unwrap();
        s.transact(&["a"], &|t| t.remove("a", b"missing")).unwrap();
        s.transact(&["a"], &|t| t.remove("a", b"k")).unwrap();
        s.transact(&["a", "b"], &|t| t.insert("b", b"k", vec![1])).unwrap();
        s.transact(&["a", "b"], &|t| {
            t.insert("a", b"k", vec![2])?;
            t.remove("b", b"k")
        })
        .unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![vec![], vec!["a".to_string()], vec![], vec!["b".to_string()]]
        );
    }

    #[test]
    fn refuses_an_unknown_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("db")).unwrap();
            db.insert(SCHEMA_KEY, b"99").unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(
            SledStore::open(&dir.path().join("db"), 1 << 20),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn concurrent_read_modify_write_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(open(dir.path()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        s.transact(&["n"], &|t| {
                            let n = t.get("n", b"c")?.map(|v| v[0]).unwrap_or(0);
                            t.insert("n", b"c", vec![n + 1])
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(s.get("n", b"c").unwrap(), Some(vec![100]));
    }

    #[test]
    fn namespaces_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let s: Arc<dyn MetaStore> = Arc::new(open(dir.path()));
        let ns = Namespaces::new(s.clone());
        let x = Namespace {
            name: "x".into(),
            labels: [("a".into(), "b".into())].into(),
        };
        ns.create(&x).unwrap();
        assert!(matches!(ns.create(&x), Err(Error::AlreadyExists(_))));
        assert!(matches!(
            ns.create(&Namespace {
                name: "a/b".into(),
                ..x.clone()
            }),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(ns.get("x").unwrap(), x);
        assert!(matches!(ns.get("y"), Err(Error::NotFound(_))));

        let set = Namespace {
            name: "x".into(),
            labels: [("c".into(), "d".into())].into(),
        };
        let got = ns.update(&set, &["labels.c".into()]).unwrap();
        assert_eq!(got.labels.len(), 2);
        let clear = Namespace {
            name: "x".into(),
            labels: Default::default(),
        };
        let got = ns.update(&clear, &["labels.a".into()]).unwrap();
        assert_eq!(got.labels, [("c".to_string(), "d".to_string())].into());
        assert!(matches!(
            ns.update(&clear, &["name".into()]),
            Err(Error::InvalidArgument(_))
        ));

        s.transact(&["images"], &|t| t.insert("images", b"x/busybox", vec![1]))
            .unwrap();
        let err = ns.delete("x").unwrap_err();
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("images")),
            "{err}"
        );
        s.transact(&["images"], &|t| t.remove("images", b"x/busybox")).unwrap();
        ns.delete("x").unwrap();
        assert!(matches!(ns.delete("x"), Err(Error::NotFound(_))));
        assert_eq!(ns.list().unwrap(), vec![]);
    }
}
