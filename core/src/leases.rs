//! Leases: named holds on resources, so what a client is still putting
//! together (an ingest, a half-pulled image) survives garbage collection.
//!
//! The key layout lives here because every store that creates resources
//! under a lease writes into it, in the same transaction as the resource.

use std::{collections::BTreeMap, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::{filters::Adaptor, metadata, Error};

/// One record per lease: `<ns>/<id>`.
pub const TREE: &str = "leases";
/// One empty record per reference: `<ns>/<lease>\0<type>\0<id>`. NUL
/// separates parts because resource types and ids may contain `/`.
pub const RESOURCES_TREE: &str = "lease_resources";

/// The lease-header name containerd clients send.
pub const HEADER: &str = "containerd-lease";
/// RFC 3339 time after which the lease no longer protects anything.
pub const EXPIRE_LABEL: &str = "containerd.io/gc.expire";
/// Keeps only the listed resources, not what they reference.
pub const FLAT_LABEL: &str = "containerd.io/gc.flat";

/// The longest lease id accepted.
pub const MAX_ID_LEN: usize = 1024;

/// Lease ids are opaque, as containerd treats them: its own clients use
/// paths (`ctr images mount` names the lease after its target) and random
/// ids outside the identifier rule. They must not be empty, overlong, or
/// hold control characters (NUL separates the parts of resource keys).
pub fn validate_id(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::InvalidArgument("lease id must not be empty".into()));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::InvalidArgument(format!(
            "lease id longer than {MAX_ID_LEN} bytes"
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "lease id {id:?} contains control characters"
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub id: String,
    pub created_at: SystemTime,
    pub labels: BTreeMap<String, String>,
}

/// Filter fields: `id`, `labels.<key>`.
impl Adaptor for Lease {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "id" => Some(self.id.clone()),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => self.labels.get(&rest.join(".")).cloned(),
            _ => None,
        }
    }
}

/// A resource a lease holds: `content` (a digest), `ingests` (a ref) or
/// `snapshots/<snapshotter>` (a key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resource {
    pub id: String,
    pub kind: String,
}

#[derive(Serialize, Deserialize)]
pub struct Record {
    pub created_at: SystemTime,
    pub labels: BTreeMap<String, String>,
}

pub fn resource_prefix(ns: &str, lease: &str) -> Vec<u8> {
    let mut key = metadata::key(ns, lease);
    key.push(0);
    key
}

pub fn resource_key(ns: &str, lease: &str, resource: &Resource) -> Vec<u8> {
    let mut key = resource_prefix(ns, lease);
    key.extend_from_slice(resource.kind.as_bytes());
    key.push(0);
    key.extend_from_slice(resource.id.as_bytes());
    key
}

/// Reads the resource back out of a key made by [`resource_key`].
pub fn parse_resource_key(key: &[u8]) -> Option<(String, String, Resource)> {
    let text = std::str::from_utf8(key).ok()?;
    let (ns, rest) = text.split_once('/')?;
    let mut parts = rest.splitn(3, '\0');
    let lease = parts.next()?;
    let kind = parts.next()?;
    let id = parts.next()?;
    Some((
        ns.into(),
        lease.into(),
        Resource {
            id: id.into(),
            kind: kind.into(),
        },
    ))
}

/// Adds `resource` to `lease` inside `txn` (which must include both lease
/// trees); a lease that does not exist is NotFound.
pub fn add_resource(txn: &dyn metadata::Txn, ns: &str, lease: &str, resource: &Resource) -> Result<(), Error> {
    if txn.get(TREE, &metadata::key(ns, lease))?.is_none() {
        return Err(Error::NotFound(format!("lease {lease:?}")));
    }
    txn.insert(RESOURCES_TREE, &resource_key(ns, lease, resource), Vec::new())
}

/// Drops `resource` from `lease` inside `txn`.
pub fn remove_resource(txn: &dyn metadata::Txn, ns: &str, lease: &str, resource: &Resource) -> Result<(), Error> {
    txn.remove(RESOURCES_TREE, &resource_key(ns, lease, resource))
}

/// Whether a lease with these labels has passed its `gc.expire` time. A
/// label that is not a valid time never expires, as in containerd.
pub fn expired(labels: &BTreeMap<String, String>, now: SystemTime) -> bool {
    labels
        .get(EXPIRE_LABEL)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .is_some_and(|t| t <= now)
}

/// The lease manager the leases service uses.
pub trait LeaseManager: Send + Sync + 'static {
    fn create(&self, ns: &str, id: &str, labels: BTreeMap<String, String>) -> Result<Lease, Error>;
    fn delete(&self, ns: &str, id: &str) -> Result<(), Error>;
    fn list(&self, ns: &str) -> Result<Vec<Lease>, Error>;
    fn add_resource(&self, ns: &str, id: &str, resource: &Resource) -> Result<(), Error>;
    fn delete_resource(&self, ns: &str, id: &str, resource: &Resource) -> Result<(), Error>;
    fn list_resources(&self, ns: &str, id: &str) -> Result<Vec<Resource>, Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_keys_round_trip() {
        let r = Resource {
            id: "a/b/c".into(),
            kind: "snapshots/overlayfs".into(),
        };
        let key = resource_key("ns", "l1", &r);
        assert_eq!(parse_resource_key(&key), Some(("ns".into(), "l1".into(), r)));
        assert!(key.starts_with(&resource_prefix("ns", "l1")));
        assert!(!key.starts_with(&resource_prefix("ns", "l")));
    }

    #[test]
    fn ids_are_opaque_but_bounded() {
        for ok in ["/tmp/x/rootfs", "429744575-_Ksn", "465572956--G-d", "a b"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a\0b", "a\nb", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        // An id with '/' cannot reach into another lease's resources.
        let r = Resource {
            id: "x".into(),
            kind: "content".into(),
        };
        assert!(!resource_key("ns", "a/b", &r).starts_with(&resource_prefix("ns", "a")));
    }

    #[test]
    fn expiry() {
        let now = SystemTime::now();
        let mut labels = BTreeMap::new();
        assert!(!expired(&labels, now));
        labels.insert(EXPIRE_LABEL.to_string(), "2000-01-01T00:00:00Z".to_string());
        assert!(expired(&labels, now));
        labels.insert(EXPIRE_LABEL.to_string(), "2999-01-01T00:00:00Z".to_string());
        assert!(!expired(&labels, now));
    }
}
