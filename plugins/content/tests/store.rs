//! The content store on real files and a real sled database.

use std::{collections::BTreeMap, sync::Arc};

use corten_content::{LocalContent, SharingPolicy};
use corten_core::{
    content::{ContentStore, WriteOptions},
    digest::Digest,
    leases,
    metadata::{self, MetaStore},
    Error,
};
use corten_metadata::SledStore;

const HELLO: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

struct Fixture {
    dir: tempfile::TempDir,
    meta: Arc<dyn MetaStore>,
    store: LocalContent,
}

fn fixture(policy: SharingPolicy) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let meta: Arc<dyn MetaStore> = Arc::new(SledStore::open(&dir.path().join("meta"), 1 << 20).unwrap());
    let store = LocalContent::open(&dir.path().join("content"), meta.clone(), policy).unwrap();
    Fixture { dir, meta, store }
}

fn hello() -> Digest {
    HELLO.parse().unwrap()
}

fn ingest(store: &LocalContent, ns: &str, reference: &str, data: &[u8]) -> Result<Digest, Error> {
    let mut w = store.writer(ns, reference, WriteOptions::default())?;
    w.write_at(0, data)?;
    w.commit(BTreeMap::new())
}

fn blob_files(f: &Fixture) -> usize {
    std::fs::read_dir(f.dir.path().join("content/blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn write_read_list_delete() {
    let f = fixture(SharingPolicy::Shared);
    assert_eq!(ingest(&f.store, "ns", "r1", b"hello").unwrap(), hello());
    let info = f.store.info("ns", &hello()).unwrap();
    assert_eq!(info.size, 5);
    let (mut file, size) = f.store.open("ns", &hello()).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).unwrap();
    assert_eq!((bytes.as_slice(), size), (&b"hello"[..], 5));
    assert_eq!(f.store.list("ns").unwrap().len(), 1);
    assert!(f.store.list("other").unwrap().is_empty());
    assert!(matches!(f.store.info("other", &hello()), Err(Error::NotFound(_))));
    assert!(matches!(
        ingest(&f.store, "ns", "r2", b"hello"),
        Err(Error::AlreadyExists(_))
    ));
    assert!(
        f.store.list_statuses("ns").unwrap().is_empty(),
        "no ingest left after commit"
    );

    f.store.delete("ns", &hello()).unwrap();
    assert!(matches!(f.store.delete("ns", &hello()), Err(Error::NotFound(_))));
    assert_eq!(blob_files(&f), 1, "bytes stay until the sweep");
    assert_eq!(f.store.sweep_backend().unwrap(), 1);
    assert_eq!(blob_files(&f), 0);
}

#[test]
fn mismatches_store_nothing() {
    let f = fixture(SharingPolicy::Shared);
    let wrong: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
    let mut w = f
        .store
        .writer(
            "ns",
            "r",
            WriteOptions {
                expected: Some(wrong),
                ..Default::default()
            },
        )
        .unwrap();
    w.write_at(0, b"hello").unwrap();
    assert!(matches!(w.commit(BTreeMap::new()), Err(Error::FailedPrecondition(m)) if m.contains("digest")));
    drop(w);
    let mut w = f
        .store
        .writer(
            "ns",
            "s",
            WriteOptions {
                total: 6,
                ..Default::default()
            },
        )
        .unwrap();
    w.write_at(0, b"hello").unwrap();
    assert!(matches!(w.commit(BTreeMap::new()), Err(Error::FailedPrecondition(m)) if m.contains("size")));
    assert!(matches!(w.write_at(5, b"!!"), Err(Error::FailedPrecondition(_))));
    drop(w);
    assert!(f.store.list("ns").unwrap().is_empty());
    assert_eq!(blob_files(&f), 0);
}

#[test]
fn resumes_and_locks() {
    let f = fixture(SharingPolicy::Shared);
    let mut w = f.store.writer("ns", "r", WriteOptions::default()).unwrap();
    w.write_at(0, b"hel").unwrap();
    assert!(
        matches!(f.store.writer("ns", "r", WriteOptions::default()), Err(Error::Unavailable(m)) if m.contains("locked"))
    );
    assert!(matches!(f.store.abort("ns", "r"), Err(Error::Unavailable(_))));
    assert!(
        f.store.writer("other", "r", WriteOptions::default()).is_ok(),
        "refs are per namespace"
    );
    drop(w);

    assert_eq!(f.store.status("ns", "r").unwrap().offset, 3);
    let mut w = f.store.writer("ns", "r", WriteOptions::default()).unwrap();
    assert_eq!(w.status().unwrap().offset, 3);
    assert!(matches!(w.write_at(1, b"x"), Err(Error::OutOfRange(_))));
    w.write_at(3, b"lo").unwrap();
    assert_eq!(w.commit(BTreeMap::new()).unwrap(), hello());
}

#[test]
fn abort_removes_the_ingest() {
    let f = fixture(SharingPolicy::Shared);
    let mut w = f.store.writer("ns", "r", WriteOptions::default()).unwrap();
    w.write_at(0, b"partial").unwrap();
    drop(w);
    f.store.abort("ns", "r").unwrap();
    assert!(matches!(f.store.status("ns", "r"), Err(Error::NotFound(_))));
    assert!(matches!(f.store.abort("ns", "r"), Err(Error::NotFound(_))));
    assert_eq!(
        std::fs::read_dir(f.dir.path().join("content/ingest")).unwrap().count(),
        0
    );
}

#[test]
fn bad_refs_and_labels_are_refused() {
    let f = fixture(SharingPolicy::Shared);
    for bad in ["a/../b", "..", ".", "a\0b", ""] {
        assert!(
            matches!(
                f.store.writer("ns", bad, WriteOptions::default()),
                Err(Error::InvalidArgument(_))
            ),
            "{bad:?}"
        );
    }
    let mut w = f.store.writer("ns", "r", WriteOptions::default()).unwrap();
    w.write_at(0, b"hello").unwrap();
    let big = BTreeMap::from([("k".to_string(), "v".repeat(5000))]);
    assert!(matches!(w.commit(big), Err(Error::InvalidArgument(_))));
    assert!(f.store.list("ns").unwrap().is_empty());
}

#[test]
fn shared_policy_completes_without_bytes_isolated_does_not() {
    let f = fixture(SharingPolicy::Shared);
    ingest(&f.store, "a", "r", b"hello").unwrap();
    let mut w = f
        .store
        .writer(
            "b",
            "r",
            WriteOptions {
                expected: Some(hello()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(w.status().unwrap().offset, 5);
    assert_eq!(w.commit(BTreeMap::new()).unwrap(), hello());
    assert_eq!(f.store.info("b", &hello()).unwrap().size, 5);

    let f = fixture(SharingPolicy::Isolated);
    ingest(&f.store, "a", "r", b"hello").unwrap();
    let mut w = f
        .store
        .writer(
            "b",
            "r",
            WriteOptions {
                expected: Some(hello()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(w.status().unwrap().offset, 0);
    assert!(w.commit(BTreeMap::new()).is_err());
}

#[test]
fn leases_follow_the_ingest_into_the_blob() {
    let f = fixture(SharingPolicy::Shared);
    let record = metadata::encode(&leases::Record {
        created_at: std::time::SystemTime::now(),
        labels: BTreeMap::new(),
    })
    .unwrap();
    f.meta
        .transact(&[leases::TREE], &|t| {
            t.insert(leases::TREE, &metadata::key("ns", "l"), record.clone())
        })
        .unwrap();
    let options = WriteOptions {
        lease: Some("l".into()),
        ..Default::default()
    };
    let mut w = f.store.writer("ns", "r", options.clone()).unwrap();
    let resources = |f: &Fixture| -> Vec<leases::Resource> {
        f.meta
            .scan_prefix(leases::RESOURCES_TREE, &leases::resource_prefix("ns", "l"))
            .unwrap()
            .iter()
            .map(|(k, _)| leases::parse_resource_key(k).unwrap().2)
            .collect()
    };
    assert_eq!(
        resources(&f),
        vec![leases::Resource {
            id: "r".into(),
            kind: "ingests".into()
        }]
    );
    w.write_at(0, b"hello").unwrap();
    w.commit(BTreeMap::new()).unwrap();
    assert_eq!(
        resources(&f),
        vec![leases::Resource {
            id: HELLO.into(),
            kind: "content".into()
        }]
    );

    let missing = WriteOptions {
        lease: Some("nope".into()),
        ..Default::default()
    };
    assert!(matches!(f.store.writer("ns", "r2", missing), Err(Error::NotFound(_))));
}

#[test]
fn verify_finds_corruption_and_missing_blobs() {
    let f = fixture(SharingPolicy::Shared);
    ingest(&f.store, "ns", "r", b"hello").unwrap();
    assert!(f.store.verify().unwrap().is_empty());
    let path = f.dir.path().join("content/blobs/sha256").join(hello().hex());
    std::fs::write(&path, b"jello").unwrap();
    let problems = f.store.verify().unwrap();
    assert!(
        problems.iter().any(|p| p.contains("holds bytes of digest")),
        "{problems:?}"
    );
    std::fs::remove_file(&path).unwrap();
    let problems = f.store.verify().unwrap();
    assert!(problems.iter().any(|p| p.contains("has no blob")), "{problems:?}");
}

#[test]
fn sweep_spares_an_open_ingest_even_before_its_metadata_exists() {
    let f = fixture(SharingPolicy::Shared);
    let mut w = f.store.writer("ns", "r", WriteOptions::default()).unwrap();
    // The state between a writer creating its directory and writing its
    // metadata file: the sweep must judge by the live ref, not the files.
    for dir in std::fs::read_dir(f.dir.path().join("content/ingest")).unwrap() {
        std::fs::remove_file(dir.unwrap().path().join("meta.json")).unwrap();
    }
    f.store.sweep_backend().unwrap();
    w.write_at(0, b"hello").unwrap();
    assert_eq!(w.commit(BTreeMap::new()).unwrap(), hello());
}
