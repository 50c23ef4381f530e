//! Plugin `io.containerd.lease.v1.manager`: creates, lists and deletes
//! leases and the resources they hold, in the metadata store's layout
//! (`corten_core::leases`).

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use corten_core::{
    digest::Digest,
    identifiers, labels,
    leases::{self, Lease, LeaseManager, Record, Resource},
    metadata::{self, MetaStore},
    namespaces::{self, Namespaces},
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin, Error,
};

pub struct Leases {
    meta: Arc<dyn MetaStore>,
}

const TREES: &[&str] = &[leases::TREE, leases::RESOURCES_TREE, namespaces::TREE];

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("lease {id:?}"))
}

/// Resource kinds a lease can hold, checked as containerd checks them.
fn validate_resource(resource: &Resource) -> Result<(), Error> {
    match resource.kind.split_once('/') {
        None if resource.kind == "content" => resource.id.parse::<Digest>().map(drop),
        None if resource.kind == "ingests" => corten_core::content::validate_ref(&resource.id),
        Some(("snapshots", snapshotter)) if !snapshotter.is_empty() && !snapshotter.contains('/') => {
            if resource.id.is_empty() {
                Err(Error::InvalidArgument("snapshot resource needs a key".into()))
            } else {
                Ok(())
            }
        }
        _ => Err(Error::Unimplemented(format!(
            "resource type {:?} is not supported",
            resource.kind
        ))),
    }
}

impl Leases {
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        Leases { meta }
    }

    fn require(txn: &dyn metadata::Txn, ns: &str, id: &str) -> Result<(), Error> {
        txn.get(leases::TREE, &metadata::key(ns, id))?
            .map(drop)
            .ok_or_else(|| not_found(id))
    }
}

/// A lease id when the client gives none: unique and sortable by time.
fn generate_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

impl LeaseManager for Leases {
    fn create(&self, ns: &str, id: &str, labels: BTreeMap<String, String>) -> Result<Lease, Error> {
        identifiers::validate(ns)?;
        let id = if id.is_empty() { generate_id() } else { id.to_string() };
        leases::validate_id(&id)?;
        labels::validate(&labels)?;
        let lease = Lease {
            id: id.clone(),
            created_at: SystemTime::now(),
            labels,
        };
        let record = metadata::encode(&Record {
            created_at: lease.created_at,
            labels: lease.labels.clone(),
        })?;
        let key = metadata::key(ns, &id);
        self.meta.transact(TREES, &|txn| {
            Namespaces::ensure(txn, ns)?;
            if txn.get(leases::TREE, &key)?.is_some() {
                return Err(Error::AlreadyExists(format!("lease {id:?}")));
            }
            txn.insert(leases::TREE, &key, record.clone())
        })?;
        Ok(lease)
    }

    fn delete(&self, ns: &str, id: &str) -> Result<(), Error> {
        identifiers::validate(ns)?;
        leases::validate_id(id)?;
        let resources: Vec<Vec<u8>> = self
            .meta
            .scan_prefix(leases::RESOURCES_TREE, &leases::resource_prefix(ns, id))?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        self.meta.transact(TREES, &|txn| {
            Self::require(txn, ns, id)?;
            txn.remove(leases::TREE, &metadata::key(ns, id))?;
            resources.iter().try_for_each(|k| txn.remove(leases::RESOURCES_TREE, k))
        })
    }

    fn list(&self, ns: &str) -> Result<Vec<Lease>, Error> {
        identifiers::validate(ns)?;
        let mut out = Vec::new();
        for (key, value) in self.meta.scan_prefix(leases::TREE, &metadata::key(ns, ""))? {
            let id = String::from_utf8_lossy(&key[ns.len() + 1..]).into_owned();
            let record: Record = metadata::decode(&value)?;
            out.push(Lease {
                id,
                created_at: record.created_at,
                labels: record.labels,
            });
        }
        Ok(out)
    }

    fn add_resource(&self, ns: &str, id: &str, resource: &Resource) -> Result<(), Error> {
        identifiers::validate(ns)?;
        leases::validate_id(id)?;
        validate_resource(resource)?;
        self.meta
            .transact(TREES, &|txn| leases::add_resource(txn, ns, id, resource))
    }

    fn delete_resource(&self, ns: &str, id: &str, resource: &Resource) -> Result<(), Error> {
        identifiers::validate(ns)?;
        leases::validate_id(id)?;
        validate_resource(resource)?;
        self.meta.transact(TREES, &|txn| {
            Self::require(txn, ns, id)?;
            leases::remove_resource(txn, ns, id, resource)
        })
    }

    fn list_resources(&self, ns: &str, id: &str) -> Result<Vec<Resource>, Error> {
        identifiers::validate(ns)?;
        leases::validate_id(id)?;
        if self.meta.get(leases::TREE, &metadata::key(ns, id))?.is_none() {
            return Err(not_found(id));
        }
        Ok(self
            .meta
            .scan_prefix(leases::RESOURCES_TREE, &leases::resource_prefix(ns, id))?
            .iter()
            .filter_map(|(k, _)| leases::parse_resource_key(k).map(|(_, _, r)| r))
            .collect())
    }
}

pub struct LeasesPlugin;

impl Plugin for LeasesPlugin {
    const TYPE: &'static str = "io.containerd.lease.v1";
    const ID: &'static str = "manager";
    const REQUIRES: &'static [&'static str] = &["io.containerd.metadata.v1"];
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let meta: Arc<dyn MetaStore> = ctx.get("io.containerd.metadata.v1")?;
        let manager: Arc<dyn LeaseManager> = Arc::new(Leases::new(meta));
        Ok(Instance::new(manager))
    }
}

register_plugin!(LeasesPlugin);

/// Called by the daemon binary so the linker keeps this crate, and with it
/// the plugin registrations `inventory` collects from it.
pub fn link() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> = Arc::new(corten_metadata::SledStore::open(dir.path(), 1 << 20).unwrap());
        let m = Leases::new(meta);
        let generated = m.create("ns", "", BTreeMap::new()).unwrap();
        assert!(identifiers::validate(&generated.id).is_ok());
        m.create("ns", "l", BTreeMap::from([("a".into(), "b".into())])).unwrap();
        assert!(matches!(
            m.create("ns", "l", BTreeMap::new()),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            m.create("ns", "bad\0id", BTreeMap::new()),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(m.list("ns").unwrap().len(), 2);
        // containerd's own clients use paths and such as lease ids.
        m.create("ns", "/tmp/target/rootfs", BTreeMap::new()).unwrap();
        assert!(m.list_resources("ns", "/tmp/target/rootfs").unwrap().is_empty());
        m.delete("ns", "/tmp/target/rootfs").unwrap();
        assert!(m.list("other").unwrap().is_empty());

        let digest = format!("sha256:{}", "a".repeat(64));
        let content = Resource {
            id: digest,
            kind: "content".into(),
        };
        let snapshot = Resource {
            id: "some/key".into(),
            kind: "snapshots/overlayfs".into(),
        };
        m.add_resource("ns", "l", &content).unwrap();
        m.add_resource("ns", "l", &snapshot).unwrap();
        assert_eq!(m.list_resources("ns", "l").unwrap().len(), 2);
        let bad = Resource {
            id: "sha256:xyz".into(),
            kind: "content".into(),
        };
        assert!(matches!(
            m.add_resource("ns", "l", &bad),
            Err(Error::InvalidArgument(_))
        ));
        let unknown = Resource {
            id: "x".into(),
            kind: "images".into(),
        };
        assert!(matches!(
            m.add_resource("ns", "l", &unknown),
            Err(Error::Unimplemented(_))
        ));
        assert!(matches!(
            m.add_resource("ns", "nope", &content),
            Err(Error::NotFound(_))
        ));
        m.delete_resource("ns", "l", &snapshot).unwrap();
        assert_eq!(m.list_resources("ns", "l").unwrap(), vec![content]);

        m.delete("ns", "l").unwrap();
        assert!(matches!(m.delete("ns", "l"), Err(Error::NotFound(_))));
        assert!(matches!(m.list_resources("ns", "l"), Err(Error::NotFound(_))));
    }
}
