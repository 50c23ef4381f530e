//! The metadata store interface: what the metadata plugin provides and every
//! stateful plugin uses. Kept as a trait so the backing database (sled today)
//! can change without touching its users.
//!
//! Layout: one tree per kind of object; keys inside a tree start with the
//! namespace and a `/` (`<ns>/<id>`), except in the `namespaces` tree itself.
//! Identifiers never contain `/`, so a namespace's objects are exactly the keys
//! with the prefix `<ns>/`.

use serde::{de::DeserializeOwned, Serialize};

use crate::Error;

/// The plugin type metadata stores register under.
pub const PLUGIN_TYPE: &str = "io.containerd.metadata.v1";

/// Key/value pairs as a scan returns them, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads and writes inside one atomic transaction.
pub trait Txn {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    fn insert(&self, tree: &str, key: &[u8], value: Vec<u8>) -> Result<(), Error>;
    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), Error>;
}

/// Reads outside transactions, each a consistent point-in-time view of one tree.
pub trait Reader {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Pairs, Error>;
    /// Whether any key in `tree` starts with `prefix`.
    fn has_prefix(&self, tree: &str, prefix: &[u8]) -> Result<bool, Error>;
    /// The trees that exist, in name order.
    fn tree_names(&self) -> Vec<String>;
}

/// Under the exclusive lock: reads that may scan, and transactions, with no
/// writer running at the same time.
pub trait Exclusive: Reader {
    fn transact(&self, trees: &[&str], f: &dyn Fn(&dyn Txn) -> Result<(), Error>) -> Result<(), Error>;
}

pub trait MetaStore: Reader + Send + Sync + 'static {
    /// Runs `f` atomically over `trees` (the only trees it may touch). `f` may
    /// run more than once when transactions conflict, so it must only compute.
    /// Returns after the writes are durable. Many transactions run at once; they
    /// all wait while an [`exclusive`](MetaStore::exclusive) section runs.
    fn transact(&self, trees: &[&str], f: &dyn Fn(&dyn Txn) -> Result<(), Error>) -> Result<(), Error>;

    /// Runs `f` with every other writer held off: for work that must scan and
    /// then write consistently (namespace deletion, garbage collection).
    fn exclusive(&self, f: &mut dyn FnMut(&dyn Exclusive) -> Result<(), Error>) -> Result<(), Error>;

    /// Calls `callback` after every committed transaction that wrote
    /// anything, with the trees it removed a key from (none for a
    /// transaction that only inserted): how the garbage collector learns
    /// there may be garbage, and whose, without every store calling it.
    fn on_mutation(&self, callback: MutationCallback);
}

pub type MutationCallback = std::sync::Arc<dyn Fn(&[&str]) + Send + Sync>;

/// The format version stamped on every record, so a later corten can read
/// what an earlier one wrote.
const RECORD_VERSION: u8 = 1;

/// Serialises a record with its version byte.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    let out = vec![RECORD_VERSION];
    postcard::to_extend(value, out).map_err(|e| Error::internal("encode record", e))
}

/// Reads a record written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| Error::internal("decode record", e)),
        Some((v, _)) => Err(Error::Internal(format!(
            "record version {v} is not one this corten reads"
        ))),
        None => Err(Error::Internal("empty record".into())),
    }
}

/// The key of object `id` of namespace `ns` in a per-kind tree.
pub fn key(ns: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + 1 + id.len());
    k.extend_from_slice(ns.as_bytes());
    k.push(b'/');
    k.extend_from_slice(id.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_their_version() {
        let v = std::collections::BTreeMap::from([("a".to_string(), "b".to_string())]);
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<std::collections::BTreeMap<String, String>>(&bytes).unwrap(), v);
        assert!(decode::<u8>(&[9, 1]).is_err());
    }
}
