//! Records of one kind kept in one metadata tree, each named within a
//! namespace (`<ns>/<name>`): the storage the container and image stores
//! share, so that each of them holds only its own rules. Callers validate
//! the namespace and their input first, in the order their errors must
//! come in.

use std::{cell::RefCell, sync::Arc};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    metadata::{self, MetaStore},
    namespaces::{self, Namespaces},
    Error,
};

#[derive(Clone)]
pub struct Records {
    store: Arc<dyn MetaStore>,
    tree: &'static str,
}

impl Records {
    pub fn new(store: Arc<dyn MetaStore>, tree: &'static str) -> Self {
        Records { store, tree }
    }

    /// The record `name` of `ns`, or the error `missing` makes.
    pub fn get<R: DeserializeOwned>(&self, ns: &str, name: &str, missing: impl FnOnce() -> Error) -> Result<R, Error> {
        let bytes = self
            .store
            .get(self.tree, &metadata::key(ns, name))?
            .ok_or_else(missing)?;
        metadata::decode(&bytes)
    }

    /// Every record of `ns`, with its name, in name order.
    pub fn list<R: DeserializeOwned>(&self, ns: &str) -> Result<Vec<(String, R)>, Error> {
        let prefix = metadata::key(ns, "");
        self.store
            .scan_prefix(self.tree, &prefix)?
            .into_iter()
            .map(|(k, v)| {
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((name, metadata::decode(&v)?))
            })
            .collect()
    }

    /// Stores `record` as `name` in `ns`, which is created if it does not
    /// exist yet; the error `taken` makes if `name` is already there.
    pub fn create<R: Serialize>(
        &self,
        ns: &str,
        name: &str,
        record: &R,
        taken: impl Fn() -> Error,
    ) -> Result<(), Error> {
        let bytes = metadata::encode(record)?;
        let key = metadata::key(ns, name);
        self.store.transact(&[self.tree, namespaces::TREE], &|txn| {
            Namespaces::ensure(txn, ns)?;
            if txn.get(self.tree, &key)?.is_some() {
                return Err(taken());
            }
            txn.insert(self.tree, &key, bytes.clone())
        })
    }

    /// Replaces the record `name` of `ns` with what `change` makes of it, in
    /// one transaction, and returns the new record. `change` may run more
    /// than once (see [`MetaStore::transact`]), so it must only compute.
    pub fn update<R: Serialize + DeserializeOwned>(
        &self,
        ns: &str,
        name: &str,
        missing: impl Fn() -> Error,
        change: impl Fn(R) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let key = metadata::key(ns, name);
        let updated = RefCell::new(None);
        self.store.transact(&[self.tree], &|txn| {
            let bytes = txn.get(self.tree, &key)?.ok_or_else(&missing)?;
            let record = change(metadata::decode(&bytes)?)?;
            txn.insert(self.tree, &key, metadata::encode(&record)?)?;
            *updated.borrow_mut() = Some(record);
            Ok(())
        })?;
        Ok(updated.into_inner().expect("a committed update sets the record"))
    }

    /// Removes the record `name` of `ns`; the error `missing` makes if
    /// there is none.
    pub fn delete(&self, ns: &str, name: &str, missing: impl Fn() -> Error) -> Result<(), Error> {
        let key = metadata::key(ns, name);
        self.store.transact(&[self.tree], &|txn| {
            txn.get(self.tree, &key)?.ok_or_else(&missing)?;
            txn.remove(self.tree, &key)
        })
    }
}
