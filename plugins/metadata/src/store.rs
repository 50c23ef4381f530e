//! [`MetaStore`] on sled.
//!
//! sled acknowledges writes before they reach the disk, so every transaction
//! is followed by a flush before it returns. A process-wide read/write lock
//! lets transactions run together but holds them off during an exclusive
//! section (namespace deletion, garbage collection), because sled
//! transactions cannot scan.

use std::{
    cell::Cell,
    collections::HashMap,
    path::Path,
    sync::{RwLock, RwLockReadGuard},
};

use corten_core::{
    metadata::{Exclusive, MetaStore, MutationCallback, Pairs, Reader, Txn},
    Error,
};
use sled::transaction::{ConflictableTransactionError, TransactionalTree, UnabortableTransactionError};

/// The layout version of the whole database, checked at open.
const SCHEMA_VERSION: &[u8] = b"1";
const SCHEMA_KEY: &[u8] = b"corten.schema_version";
/// sled's own default tree: holds the schema key, never objects.
const DEFAULT_TREE: &[u8] = b"__sled__default";

pub struct SledStore {
    db: sled::Db,
    trees: RwLock<HashMap<String, sled::Tree>>,
    writers: RwLock<()>,
    on_mutation: RwLock<Vec<MutationCallback>>,
}

fn db_err(context: &str) -> impl Fn(sled::Error) -> Error + '_ {
    move |e| Error::internal(context, e)
}

impl SledStore {
    pub fn open(path: &Path, cache_capacity: u64) -> Result<SledStore, Error> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .open()
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
        Ok(SledStore {
            db,
            trees: RwLock::new(HashMap::new()),
            writers: RwLock::new(()),
            on_mutation: RwLock::new(Vec::new()),
        })
    }

    pub fn flush(&self) {
        if let Err(e) = self.db.flush() {
            tracing::warn!("flush metadata: {e}");
        }
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

    /// One sled transaction over `names`, then a flush; the caller holds the lock.
    fn transact_unlocked(&self, names: &[&str], f: &dyn Fn(&dyn Txn) -> Result<(), Error>) -> Result<(), Error> {
        let trees = names.iter().map(|n| self.tree(n)).collect::<Result<Vec<_>, _>>()?;
        let result = sled::Transactional::transaction(trees.as_slice(), |views: &Vec<TransactionalTree>| {
            let txn = SledTxn {
                names,
                views,
                conflicted: Cell::new(false),
                wrote: Cell::new(false),
                removed: Cell::new(false),
            };
            match f(&txn) {
                Ok(()) => Ok((txn.wrote.get(), txn.removed.get())),
                Err(_) if txn.conflicted.get() => Err(ConflictableTransactionError::Conflict),
                Err(e) => Err(ConflictableTransactionError::Abort(e)),
            }
        });
        let (wrote, removed) = match result {
            Ok(outcome) => outcome,
            Err(sled::transaction::TransactionError::Abort(e)) => return Err(e),
            Err(sled::transaction::TransactionError::Storage(e)) => {
                return Err(Error::internal("metadata transaction", e))
            }
        };
        if wrote {
            self.db.flush().map_err(db_err("flush metadata"))?;
            for callback in self.on_mutation.read().unwrap_or_else(|e| e.into_inner()).iter() {
                callback(removed);
            }
        }
        Ok(())
    }
}

struct SledTxn<'a> {
    names: &'a [&'a str],
    views: &'a [TransactionalTree],
    /// Set when sled reports a conflict, so the whole closure is retried
    /// rather than the error handed to the caller.
    conflicted: Cell<bool>,
    wrote: Cell<bool>,
    removed: Cell<bool>,
}

impl SledTxn<'_> {
    fn view(&self, tree: &str) -> Result<&TransactionalTree, Error> {
        self.names
            .iter()
            .position(|n| *n == tree)
            .map(|i| &self.views[i])
            .ok_or_else(|| Error::Internal(format!("tree {tree:?} is not part of this transaction")))
    }

    fn check<T>(&self, r: Result<T, UnabortableTransactionError>) -> Result<T, Error> {
        r.map_err(|e| {
            if matches!(e, UnabortableTransactionError::Conflict) {
                self.conflicted.set(true);
            }
            Error::internal("metadata transaction", e)
        })
    }
}

impl Txn for SledTxn<'_> {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let v = self.check(self.view(tree)?.get(key))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn insert(&self, tree: &str, key: &[u8], value: Vec<u8>) -> Result<(), Error> {
        self.wrote.set(true);
        self.check(self.view(tree)?.insert(key, value)).map(drop)
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), Error> {
        let previous = self.check(self.view(tree)?.remove(key))?;
        if previous.is_some() {
            self.wrote.set(true);
            self.removed.set(true);
        }
        Ok(())
    }
}

impl Reader for SledStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let v = self.tree(tree)?.get(key).map_err(db_err("read metadata"))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Pairs, Error> {
        self.tree(tree)?
            .scan_prefix(prefix)
            .map(|kv| {
                kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(db_err("scan metadata"))
            })
            .collect()
    }

    fn has_prefix(&self, tree: &str, prefix: &[u8]) -> Result<bool, Error> {
        match self.tree(tree)?.scan_prefix(prefix).next() {
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

    fn open(dir: &Path) -> SledStore {
        SledStore::open(&dir.join("db"), 1 << 20).unwrap()
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
    fn reports_mutations_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        s.on_mutation(Arc::new(move |deleted| log.lock().unwrap().push(deleted)));
        s.transact(&["a"], &|t| t.insert("a", b"k", vec![1])).unwrap();
        s.transact(&["a"], &|t| t.get("a", b"k").map(drop)).unwrap();
        s.transact(&["a"], &|t| t.remove("a", b"missing")).unwrap();
        s.transact(&["a"], &|t| t.remove("a", b"k")).unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![false, true]);
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
