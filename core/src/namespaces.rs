//! Namespaces over the metadata store: the one kind of object that lives
//! outside every namespace, and the rules for creating, labelling and
//! deleting them.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    identifiers, labels,
    metadata::{self, MetaStore, Txn},
    Error,
};

/// The metadata tree that holds one record per namespace, keyed by name.
pub const TREE: &str = "namespaces";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Default)]
struct Record {
    labels: BTreeMap<String, String>,
}

#[derive(Clone)]
pub struct Namespaces {
    store: Arc<dyn MetaStore>,
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("namespace {name:?}"))
}

impl Namespaces {
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        Namespaces { store }
    }

    pub fn create(&self, ns: &Namespace) -> Result<Namespace, Error> {
        identifiers::validate(&ns.name)?;
        labels::validate(&ns.labels)?;
        let record = metadata::encode(&Record {
            labels: ns.labels.clone(),
        })?;
        self.store.transact(&[TREE], &|txn| {
            if txn.get(TREE, ns.name.as_bytes())?.is_some() {
                return Err(Error::AlreadyExists(format!("namespace {:?}", ns.name)));
            }
            txn.insert(TREE, ns.name.as_bytes(), record.clone())
        })?;
        Ok(ns.clone())
    }

    pub fn get(&self, name: &str) -> Result<Namespace, Error> {
        identifiers::validate(name)?;
        let bytes = self.store.get(TREE, name.as_bytes())?.ok_or_else(|| not_found(name))?;
        let record: Record = metadata::decode(&bytes)?;
        Ok(Namespace {
            name: name.to_string(),
            labels: record.labels,
        })
    }

    pub fn list(&self) -> Result<Vec<Namespace>, Error> {
        self.store
            .scan_prefix(TREE, b"")?
            .into_iter()
            .map(|(k, v)| {
                let record: Record = metadata::decode(&v)?;
                Ok(Namespace {
                    name: String::from_utf8_lossy(&k).into_owned(),
                    labels: record.labels,
                })
            })
            .collect()
    }

    /// Applies the field mask as [`labels::apply_update`] does; only labels
    /// of a namespace can change.
    pub fn update(&self, ns: &Namespace, paths: &[String]) -> Result<Namespace, Error> {
        identifiers::validate(&ns.name)?;
        for path in paths {
            if path != "labels" && !path.starts_with("labels.") {
                return Err(Error::InvalidArgument(format!(
                    "cannot update {path:?} field on namespace {:?}",
                    ns.name
                )));
            }
        }
        let updated = std::cell::RefCell::new(None);
        self.store.transact(&[TREE], &|txn| {
            let bytes = txn.get(TREE, ns.name.as_bytes())?.ok_or_else(|| not_found(&ns.name))?;
            let mut record: Record = metadata::decode(&bytes)?;
            labels::apply_update(&mut record.labels, &ns.labels, paths)?;
            txn.insert(TREE, ns.name.as_bytes(), metadata::encode(&record)?)?;
            *updated.borrow_mut() = Some(record.labels);
            Ok(())
        })?;
        let labels = updated.into_inner().unwrap_or_default();
        Ok(Namespace {
            name: ns.name.clone(),
            labels,
        })
    }

    /// Deletes an empty namespace; one that still holds objects is a
    /// FailedPrecondition naming the kinds left.
    pub fn delete(&self, name: &str) -> Result<(), Error> {
        identifiers::validate(name)?;
        self.store.exclusive(&mut |db| {
            if db.get(TREE, name.as_bytes())?.is_none() {
                return Err(not_found(name));
            }
            let prefix = metadata::key(name, "");
            let mut left = Vec::new();
            for tree in db.tree_names() {
                if tree != TREE && db.has_prefix(&tree, &prefix)? {
                    left.push(tree);
                }
            }
            if !left.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "namespace {name:?} must be empty, but it still has {}",
                    left.join(", ")
                )));
            }
            db.transact(&[TREE], &|txn| txn.remove(TREE, name.as_bytes()))
        })
    }

    /// Creates the namespace inside `txn` if it is missing: containerd makes a
    /// namespace exist as soon as anything is created in it.
    pub fn ensure(txn: &dyn Txn, name: &str) -> Result<(), Error> {
        if txn.get(TREE, name.as_bytes())?.is_none() {
            txn.insert(TREE, name.as_bytes(), metadata::encode(&Record::default())?)?;
        }
        Ok(())
    }
}
