//! Both snapshotters on the real kernel overlayfs, real mounts and a real
//! sled metadata store, each test in its own temporary directory.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::SystemTime,
};

use corten_core::{
    leases,
    metadata::{self, MetaStore},
    mount::Mount,
    namespaces::Namespaces,
    snapshots::{self, Kind, Record, Snapshotter},
    Error,
};
use corten_metadata::SledStore;
use corten_snapshots::{Driver, Native, Overlay, SnapshotStore, UPPERDIR_LABEL};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Which {
    Overlay,
    Native,
}

impl Which {
    fn id(self) -> &'static str {
        match self {
            Which::Overlay => "overlayfs",
            Which::Native => "native",
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    which: Which,
    meta: Arc<dyn MetaStore>,
    store: SnapshotStore,
}

impl Fixture {
    fn new(which: Which) -> Fixture {
        Fixture::with_label(which, false)
    }

    fn with_label(which: Which, upperdir_label: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> = Arc::new(SledStore::open(&dir.path().join("meta"), 1 << 20).unwrap());
        let store = open(which, &dir.path().join("root"), meta.clone(), upperdir_label);
        Fixture {
            dir,
            which,
            meta,
            store,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn reopen(self) -> Fixture {
        let Fixture {
            dir,
            which,
            meta,
            store,
        } = self;
        drop(store);
        let store = open(which, &dir.path().join("root"), meta.clone(), false);
        Fixture {
            dir,
            which,
            meta,
            store,
        }
    }

    fn record(&self, ns: &str, key: &str) -> Option<Record> {
        self.meta
            .get(&snapshots::tree(self.which.id()), &metadata::key(ns, key))
            .unwrap()
            .map(|b| metadata::decode(&b).unwrap())
    }

    /// The numbered directories under `snapshots/`.
    fn snapshot_dirs(&self) -> BTreeSet<String> {
        fs::read_dir(self.root().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }
}

fn open(which: Which, root: &Path, meta: Arc<dyn MetaStore>, upperdir_label: bool) -> SnapshotStore {
    fs::create_dir_all(root).unwrap();
    let driver: Box<dyn Driver> = match which {
        Which::Overlay => Box::new(Overlay::probe(root, upperdir_label).expect("overlayfs works on this machine")),
        Which::Native => Box::new(Native),
    };
    SnapshotStore::open(which.id(), root, meta, driver).unwrap()
}

fn none() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Mounts as a runtime would, with the `mount` command; unmounts on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn new(mounts: &[Mount], target: &Path) -> Mounted {
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        let m = &mounts[0];
        fs::create_dir_all(target).unwrap();
        let out = Command::new("mount")
            .args(["-t", &m.kind, "-o", &m.options.join(","), &m.source])
            .arg(target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {m:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mounted(target.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn option<'a>(mount: &'a Mount, name: &str) -> Option<&'a str> {
    mount.options.iter().find_map(|o| o.strip_prefix(&format!("{name}=")))
}

/// `<root>/snapshots/<digits>/fs`
fn assert_fs_dir(root: &Path, path: &str) {
    let rest = Path::new(path).strip_prefix(root.join("snapshots")).unwrap();
    let parts: Vec<_> = rest.iter().map(|p| p.to_str().unwrap()).collect();
    assert_eq!(parts.len(), 2, "{path}");
    assert!(parts[0].bytes().all(|b| b.is_ascii_digit()), "{path}");
    assert_eq!(parts[1], "fs");
}

fn bind_source(mounts: &[Mount], writable: bool) -> String {
    let want = if writable { "rw" } else { "ro" };
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].kind, "bind");
    assert_eq!(mounts[0].options, vec![want.to_string(), "rbind".to_string()]);
    assert!(mounts[0].target.is_empty());
    mounts[0].source.clone()
}

fn lifecycle(which: Which) {
    let f = Fixture::new(which);
    let s = &f.store;
    let mnt = f.dir.path().join("mnt");

    // A first layer is a writable bind of its own directory.
    let mounts = s.prepare("ns", "a", "", none(), None).unwrap();
    let a_fs = bind_source(&mounts, true);
    assert_fs_dir(&f.root(), &a_fs);
    assert_eq!(s.mounts("ns", "a").unwrap(), mounts);
    {
        let _m = Mounted::new(&mounts, &mnt);
        fs::write(mnt.join("hello.txt"), b"from a").unwrap();
    }
    s.commit("ns", "base", "a", none(), None).unwrap();
    assert!(matches!(s.stat("ns", "a"), Err(Error::NotFound(_))));
    assert_eq!(s.stat("ns", "base").unwrap().kind, Kind::Committed);
    assert!(matches!(s.mounts("ns", "base"), Err(Error::FailedPrecondition(_))));

    // A child sees its parent, adds a file and deletes the parent's.
    let mounts = s.prepare("ns", "b", "base", none(), None).unwrap();
    let b_fs = match which {
        Which::Overlay => {
            let m = &mounts[0];
            assert_eq!((m.kind.as_str(), m.source.as_str()), ("overlay", "overlay"));
            let upper = option(m, "upperdir").unwrap().to_string();
            let work = option(m, "workdir").unwrap();
            assert_eq!(
                m.options,
                vec![
                    "index=off".to_string(),
                    format!("workdir={work}"),
                    format!("upperdir={upper}"),
                    format!("lowerdir={a_fs}"),
                ]
            );
            assert_eq!(Path::new(work), Path::new(&upper).with_file_name("work"));
            upper
        }
        Which::Native => bind_source(&mounts, true),
    };
    assert_fs_dir(&f.root(), &b_fs);
    {
        let _m = Mounted::new(&mounts, &mnt);
        assert_eq!(fs::read(mnt.join("hello.txt")).unwrap(), b"from a");
        fs::write(mnt.join("new.txt"), b"from b").unwrap();
        fs::remove_file(mnt.join("hello.txt")).unwrap();
    }
    let gone = fs::symlink_metadata(Path::new(&b_fs).join("hello.txt"));
    match which {
        Which::Overlay => {
            let whiteout = gone.expect("a whiteout in the upper directory");
            assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
        }
        Which::Native => assert!(gone.is_err(), "deleted from the copy"),
    }
    assert_eq!(fs::read(Path::new(&a_fs).join("hello.txt")).unwrap(), b"from a");
    s.commit("ns", "top", "b", none(), None).unwrap();

    // A view of two layers is read-only and shows the child's tree.
    let mounts = s.view("ns", "v", "top", none(), None).unwrap();
    match which {
        Which::Overlay => assert_eq!(
            mounts,
            vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec!["index=off".into(), format!("lowerdir={b_fs}:{a_fs}")],
            }]
        ),
        Which::Native => {
            let copy = bind_source(&mounts, false);
            assert_fs_dir(&f.root(), &copy);
            assert_ne!(copy, b_fs);
        }
    }
    {
        let _m = Mounted::new(&mounts, &mnt);
        let names: BTreeSet<_> = fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, BTreeSet::from(["new.txt".to_string()]));
        assert_eq!(fs::read(mnt.join("new.txt")).unwrap(), b"from b");
        let err = fs::write(mnt.join("nope"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
    }
    // A view of one layer is that layer, read-only.
    let mounts = s.view("ns", "v1", "base", none(), None).unwrap();
    let source = bind_source(&mounts, false);
    match which {
        Which::Overlay => assert_eq!(source, a_fs),
        Which::Native => assert_ne!(source, a_fs),
    }
    assert_eq!(s.mounts("ns", "v1").unwrap(), mounts);
    // A view of nothing is an empty read-only directory of its own.
    let mounts = s.view("ns", "empty", "", none(), None).unwrap();
    assert_fs_dir(&f.root(), &bind_source(&mounts, false));

    let v = s.stat("ns", "v").unwrap();
    assert_eq!((v.kind, v.parent.as_str()), (Kind::View, "top"));
    let names: BTreeSet<_> = s.list("ns").unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["base", "empty", "top", "v", "v1"].map(String::from).into());

    // Parents go only after their children.
    for (key, child) in [("base", "top"), ("top", "v")] {
        match s.remove("ns", key, None) {
            Err(Error::FailedPrecondition(m)) => assert!(m.contains(child), "{m}"),
            other => panic!("remove {key}: {other:?}"),
        }
    }
    for key in ["v", "v1", "empty", "top", "base"] {
        s.remove("ns", key, None).unwrap();
    }
    assert!(s.list("ns").unwrap().is_empty());
    assert!(!f.snapshot_dirs().is_empty(), "files stay until cleanup");
    assert_eq!(s.cleanup().unwrap().removed, 5);
    assert!(f.snapshot_dirs().is_empty());
    assert_eq!(s.cleanup().unwrap().removed, 0);
}

#[test]
fn overlay_lifecycle() {
    lifecycle(Which::Overlay);
}

#[test]
fn native_lifecycle() {
    lifecycle(Which::Native);
}

fn stat_update_usage(which: Which) {
    let f = Fixture::new(which);
    let s = &f.store;
    let labels = BTreeMap::from([("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())]);
    let mounts = s.prepare("ns", "k", "", labels.clone(), None).unwrap();
    let fs_dir = PathBuf::from(&mounts[0].source);
    let info = s.stat("ns", "k").unwrap();
    assert_eq!(
        (info.kind, info.parent.as_str(), &info.labels),
        (Kind::Active, "", &labels)
    );
    assert!(info.created_at <= SystemTime::now() && info.created_at == info.updated_at);

    let empty = s.usage("ns", "k").unwrap();
    assert_eq!(empty.inodes, 1, "just the root directory");
    fs::write(fs_dir.join("big"), vec![1u8; 1 << 20]).unwrap();
    fs::hard_link(fs_dir.join("big"), fs_dir.join("same")).unwrap();
    let grown = s.usage("ns", "k").unwrap();
    assert_eq!(grown.inodes, 2);
    assert!(grown.size >= empty.size + (1 << 20), "{grown:?}");

    // Update: one label set, one removed, through the mask.
    let mut want = info.clone();
    want.labels = BTreeMap::from([("c".to_string(), "3".to_string())]);
    let updated = s
        .update("ns", &want, &["labels.c".to_string(), "labels.a".to_string()])
        .unwrap();
    assert_eq!(
        updated.labels,
        BTreeMap::from([("b".to_string(), "2".to_string()), ("c".to_string(), "3".to_string())])
    );
    assert!(updated.updated_at > info.updated_at);
    assert_eq!(s.stat("ns", "k").unwrap().labels, updated.labels);
    assert!(matches!(
        s.update("ns", &want, &["parent".to_string()]),
        Err(Error::InvalidArgument(_))
    ));
    want.name = "missing".into();
    assert!(matches!(s.update("ns", &want, &[]), Err(Error::NotFound(_))));

    // A committed snapshot reports what it measured at commit.
    s.commit(
        "ns",
        "c",
        "k",
        BTreeMap::from([("x".to_string(), "y".to_string())]),
        None,
    )
    .unwrap();
    let info = s.stat("ns", "c").unwrap();
    assert_eq!(info.labels, BTreeMap::from([("x".to_string(), "y".to_string())]));
    assert_eq!(s.usage("ns", "c").unwrap(), grown);
    fs::remove_file(fs_dir.join("big")).unwrap();
    assert_eq!(s.usage("ns", "c").unwrap(), grown, "measured once, at commit");
    s.view("ns", "v", "c", none(), None).unwrap();
    assert_eq!(s.usage("ns", "v").unwrap(), Default::default());
}

#[test]
fn overlay_stat_update_usage() {
    stat_update_usage(Which::Overlay);
}

#[test]
fn native_stat_update_usage() {
    stat_update_usage(Which::Native);
}

fn errors(which: Which) {
    let f = Fixture::new(which);
    let s = &f.store;
    s.prepare("ns", "a", "", none(), None).unwrap();
    let dirs = f.snapshot_dirs();
    assert!(matches!(
        s.prepare("ns", "a", "", none(), None),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.prepare("ns", "b", "missing", none(), None),
        Err(Error::NotFound(_))
    ));
    // containerd answers InvalidArgument for a parent that is not committed.
    assert!(matches!(
        s.prepare("ns", "b", "a", none(), None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.view("ns", "b", "a", none(), None),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(f.snapshot_dirs(), dirs, "a refused creation leaves no files");

    s.commit("ns", "c", "a", none(), None).unwrap();
    s.prepare("ns", "a2", "c", none(), None).unwrap();
    // A name in use, whatever its kind, is AlreadyExists, checked before the key.
    assert!(matches!(
        s.commit("ns", "c", "a2", none(), None),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.commit("ns", "a2", "a2", none(), None),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.commit("ns", "c", "nothing", none(), None),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.commit("ns", "d", "nothing", none(), None),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        s.commit("ns", "d", "c", none(), None),
        Err(Error::FailedPrecondition(_))
    ));
    s.view("ns", "v", "c", none(), None).unwrap();
    assert!(matches!(
        s.commit("ns", "d", "v", none(), None),
        Err(Error::FailedPrecondition(_))
    ));
    assert!(s.stat("ns", "d").is_err(), "failed commits leave no name");
    assert!(matches!(s.remove("ns", "nothing", None), Err(Error::NotFound(_))));
    assert!(matches!(s.stat("ns", "nothing"), Err(Error::NotFound(_))));
    assert!(matches!(s.usage("ns", "nothing"), Err(Error::NotFound(_))));
    assert!(matches!(s.mounts("ns", "nothing"), Err(Error::NotFound(_))));

    for bad_ns in ["", "a/b", "-x"] {
        assert!(matches!(s.stat(bad_ns, "a2"), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            s.prepare(bad_ns, "z", "", none(), None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(s.list(bad_ns), Err(Error::InvalidArgument(_))));
    }
    for bad_key in ["", "a\0b", "line\nbreak"] {
        assert!(matches!(
            s.prepare("ns", bad_key, "", none(), None),
            Err(Error::InvalidArgument(_))
        ));
    }
    assert!(matches!(
        s.prepare("ns", &"k".repeat(snapshots::MAX_KEY_LEN + 1), "", none(), None),
        Err(Error::InvalidArgument(_))
    ));
    let huge = BTreeMap::from([("k".to_string(), "v".repeat(5000))]);
    assert!(matches!(
        s.prepare("ns", "z", "", huge.clone(), None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.commit("ns", "z", "a2", huge, None),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn overlay_errors() {
    errors(Which::Overlay);
}

#[test]
fn native_errors() {
    errors(Which::Native);
}

fn namespaces_are_isolated(which: Which) {
    let f = Fixture::new(which);
    let s = &f.store;
    let one = s.prepare("one", "k", "", none(), None).unwrap();
    let two = s.prepare("two", "k", "", none(), None).unwrap();
    assert_ne!(one[0].source, two[0].source);
    fs::write(Path::new(&one[0].source).join("f"), b"1").unwrap();
    s.commit("one", "c", "k", none(), None).unwrap();
    assert_eq!(s.stat("two", "k").unwrap().kind, Kind::Active);
    assert!(matches!(s.stat("two", "c"), Err(Error::NotFound(_))));
    assert!(matches!(
        s.prepare("two", "child", "c", none(), None),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(s.remove("two", "c", None), Err(Error::NotFound(_))));
    assert_eq!(s.list("one").unwrap().len(), 1);
    assert_eq!(s.list("two").unwrap()[0].name, "k");
    assert!(s.list("three").unwrap().is_empty());

    // Creating in a namespace makes it exist, and keeps it from deletion.
    let namespaces = Namespaces::new(f.meta.clone());
    namespaces.get("one").unwrap();
    namespaces.get("two").unwrap();
    assert!(matches!(namespaces.delete("two"), Err(Error::FailedPrecondition(_))));
    s.remove("two", "k", None).unwrap();
    namespaces.delete("two").unwrap();

    let one = f.record("one", "c").unwrap();
    assert!(one.backend_key.starts_with("one/") && one.backend_key.ends_with("/c"));
}

#[test]
fn overlay_namespaces_are_isolated() {
    namespaces_are_isolated(Which::Overlay);
}

#[test]
fn native_namespaces_are_isolated() {
    namespaces_are_isolated(Which::Native);
}

/// Every path under the root, relative to it.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            if path.is_dir() && !path.is_symlink() {
                dirs.push(path);
            }
        }
    }
    out
}

fn keys_never_become_paths(which: Which) {
    let f = Fixture::new(which);
    let s = &f.store;
    let long = "x/".repeat(2000);
    let keys = [
        "../../../../etc",
        "..",
        "/absolute/path",
        "a/b/c",
        "sha256:0123",
        "spaces and ünïcödé",
        long.as_str(),
    ];
    let mut parent = String::new();
    for key in keys {
        s.prepare("ns", key, &parent, none(), None).unwrap();
        let name = format!("{key}@");
        s.commit("ns", &name, key, none(), None).unwrap();
        s.view("ns", key, &name, none(), None).unwrap();
        parent = name;
    }
    for key in keys {
        assert_eq!(s.stat("ns", key).unwrap().name, key);
    }
    assert_eq!(s.list("ns").unwrap().len(), 2 * keys.len());
    for path in tree(&f.root()) {
        let parts: Vec<_> = path.iter().map(|p| p.to_str().unwrap()).collect();
        let ok = match parts.as_slice() {
            ["backend.redb"] | ["snapshots"] | ["spare"] | ["trash"] => true,
            ["snapshots", id, rest @ ..] => {
                id.bytes().all(|b| b.is_ascii_digit()) && matches!(rest, [] | ["fs"] | ["work"] | ["fs", _])
            }
            // Directories made ahead of need, and kept to be, hold nothing.
            ["spare", "husk", rest @ ..] => matches!(rest, [] | [_]),
            ["spare", batch, rest @ ..] => {
                batch.bytes().all(|b| b.is_ascii_digit()) && matches!(rest, [] | [_] | [_, "fs"] | [_, "work"])
            }
            _ => false,
        };
        assert!(ok, "unexpected path {}", path.display());
    }
}

#[test]
fn overlay_keys_never_become_paths() {
    keys_never_become_paths(Which::Overlay);
}

#[test]
fn native_keys_never_become_paths() {
    keys_never_become_paths(Which::Native);
}

fn cleanup_removes_what_no_record_names(which: Which) {
    let f = Fixture::new(which);
    let s = &f.store;
    let tree_name = snapshots::tree(which.id());
    let gone = s.prepare("ns", "gone", "", none(), None).unwrap();
    let kept = s.prepare("ns", "kept", "", none(), None).unwrap();
    fs::write(Path::new(&kept[0].source).join("f"), b"kept").unwrap();
    s.commit("ns", "parent", "kept", none(), None).unwrap();
    let child = s.prepare("ns", "child", "parent", none(), None).unwrap();

    // Records lost behind the snapshotter's back, as a GC sweep loses them.
    f.meta
        .transact(&[&tree_name], &|t| {
            t.remove(&tree_name, &metadata::key("ns", "gone"))?;
            t.remove(&tree_name, &metadata::key("ns", "parent"))
        })
        .unwrap();
    // A directory no snapshot owns, as a crash mid-creation leaves one.
    fs::create_dir_all(f.root().join("snapshots/999999/fs")).unwrap();
    fs::create_dir_all(f.root().join("snapshots/junk")).unwrap();

    assert_eq!(s.cleanup().unwrap().removed, 3);
    let source_dir = |m: &[Mount]| PathBuf::from(&m[0].source).parent().unwrap().to_path_buf();
    assert!(!source_dir(&gone).exists());
    assert!(!f.root().join("snapshots/999999").exists());
    assert!(!f.root().join("snapshots/junk").exists());
    // The parent's record is gone but its files stay: the child layers on them.
    assert_eq!(fs::read(Path::new(&kept[0].source).join("f")).unwrap(), b"kept");
    assert_eq!(s.mounts("ns", "child").unwrap(), child);
    if which == Which::Native {
        assert_eq!(fs::read(Path::new(&child[0].source).join("f")).unwrap(), b"kept");
    }
    s.remove("ns", "child", None).unwrap();
    assert_eq!(s.cleanup().unwrap().removed, 2, "the child, then the parent it held");
    assert!(f.snapshot_dirs().is_empty());
}

#[test]
fn overlay_cleanup_removes_what_no_record_names() {
    cleanup_removes_what_no_record_names(Which::Overlay);
}

#[test]
fn native_cleanup_removes_what_no_record_names() {
    cleanup_removes_what_no_record_names(Which::Native);
}

fn leases_hold_what_is_made_under_them(which: Which) {
    let f = Fixture::new(which);
    let s = &f.store;
    let record = metadata::encode(&leases::Record {
        created_at: SystemTime::now(),
        labels: BTreeMap::new(),
    })
    .unwrap();
    f.meta
        .transact(&[leases::TREE], &|t| {
            t.insert(leases::TREE, &metadata::key("ns", "l"), record.clone())
        })
        .unwrap();
    let held = || -> Vec<leases::Resource> {
        f.meta
            .scan_prefix(leases::RESOURCES_TREE, &leases::resource_prefix("ns", "l"))
            .unwrap()
            .iter()
            .map(|(k, _)| leases::parse_resource_key(k).unwrap().2)
            .collect()
    };
    let resource = |id: &str| leases::Resource {
        id: id.into(),
        kind: snapshots::resource_kind(which.id()),
    };
    s.prepare("ns", "a", "", none(), Some("l")).unwrap();
    assert_eq!(held(), vec![resource("a")]);
    s.commit("ns", "c", "a", none(), Some("l")).unwrap();
    assert_eq!(held(), vec![resource("c")]);
    s.view("ns", "v/1", "c", none(), Some("l")).unwrap();
    assert_eq!(held(), vec![resource("c"), resource("v/1")]);

    let dirs = f.snapshot_dirs();
    assert!(matches!(
        s.prepare("ns", "b", "c", none(), Some("nope")),
        Err(Error::NotFound(_))
    ));
    assert!(f.record("ns", "b").is_none());
    assert_eq!(f.snapshot_dirs(), dirs, "an unknown lease leaves no files");

    // Removing under the lease drops its reference, so a lease that sees
    // many snapshots come and go does not keep all their names.
    s.remove("ns", "v/1", Some("l")).unwrap();
    assert_eq!(held(), vec![resource("c")]);
    // Under another lease, or none, this lease's reference stays.
    s.prepare("ns", "d", "c", none(), Some("l")).unwrap();
    s.remove("ns", "d", None).unwrap();
    assert_eq!(held(), vec![resource("c"), resource("d")]);
}

#[test]
fn overlay_leases_hold_what_is_made_under_them() {
    leases_hold_what_is_made_under_them(Which::Overlay);
}

#[test]
fn native_leases_hold_what_is_made_under_them() {
    leases_hold_what_is_made_under_them(Which::Native);
}

fn state_survives_a_reopen(which: Which) {
    let f = Fixture::new(which);
    let a = f.store.prepare("ns", "a", "", none(), None).unwrap();
    fs::write(Path::new(&a[0].source).join("f"), b"x").unwrap();
    f.store.commit("ns", "c", "a", none(), None).unwrap();
    let child = f.store.prepare("ns", "child", "c", none(), None).unwrap();
    let before = f.record("ns", "child").unwrap().backend_key;
    let usage = f.store.usage("ns", "c").unwrap();

    let f = f.reopen();
    assert_eq!(f.store.mounts("ns", "child").unwrap(), child);
    assert_eq!(f.store.usage("ns", "c").unwrap(), usage);
    f.store.prepare("ns", "new", "c", none(), None).unwrap();
    let after = f.record("ns", "new").unwrap().backend_key;
    let seq = |k: &str| k.split('/').nth(1).unwrap().parse::<u64>().unwrap();
    assert!(seq(&after) > seq(&before), "{after} after {before}");
    let new_source = &f.store.mounts("ns", "new").unwrap()[0];
    assert_ne!(new_source, &child[0], "a new snapshot gets a new directory");
    assert_eq!(f.store.cleanup().unwrap().removed, 0, "nothing referenced is removed");
}

#[test]
fn overlay_state_survives_a_reopen() {
    state_survives_a_reopen(Which::Overlay);
}

#[test]
fn native_state_survives_a_reopen() {
    state_survives_a_reopen(Which::Native);
}

/// Removals racing creations on the same parent never leave a child whose
/// parent is gone.
fn removal_races_creation(which: Which) {
    let f = Fixture::new(which);
    let s = &f.store;
    for round in 0..20 {
        let parent = format!("p{round}");
        let active = format!("a{round}");
        s.prepare("ns", &active, "", none(), None).unwrap();
        s.commit("ns", &parent, &active, none(), None).unwrap();
        let child = format!("c{round}");
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _ = s.prepare("ns", &child, &parent, none(), None);
            });
            scope.spawn(|| {
                let _ = s.remove("ns", &parent, None);
            });
        });
        let has_child = s.stat("ns", &child).is_ok();
        let has_parent = s.stat("ns", &parent).is_ok();
        assert!(!has_child || has_parent, "round {round}: child without its parent");
    }
    s.cleanup().unwrap();
    let all = s.list("ns").unwrap();
    let names: BTreeSet<_> = all.iter().map(|i| i.name.clone()).collect();
    for info in &all {
        assert!(info.parent.is_empty() || names.contains(&info.parent), "{info:?}");
        if info.kind != Kind::Committed {
            s.mounts("ns", &info.name).unwrap();
        }
    }
}

#[test]
fn overlay_removal_races_creation() {
    removal_races_creation(Which::Overlay);
}

#[test]
fn native_removal_races_creation() {
    removal_races_creation(Which::Native);
}

#[test]
fn overlay_upperdir_label() {
    let f = Fixture::with_label(Which::Overlay, true);
    let s = &f.store;
    let mounts = s.prepare("ns", "a", "", none(), None).unwrap();
    let info = s.stat("ns", "a").unwrap();
    assert_eq!(info.labels.get(UPPERDIR_LABEL), Some(&mounts[0].source));
    assert_eq!(s.list("ns").unwrap()[0].labels, info.labels);
    let set = BTreeMap::from([("k".to_string(), "v".to_string())]);
    let mut want = info.clone();
    want.labels = set;
    let updated = s.update("ns", &want, &["labels.k".to_string()]).unwrap();
    assert_eq!(updated.labels.len(), 2);
    // Not stored: only reported.
    assert_eq!(f.record("ns", "a").unwrap().labels.len(), 1);
}

#[test]
fn native_copies_keep_every_attribute() {
    use nix::sys::stat::{mknod, Mode, SFlag};

    let f = Fixture::new(Which::Native);
    let s = &f.store;
    let mounts = s.prepare("ns", "a", "", none(), None).unwrap();
    let src = PathBuf::from(&mounts[0].source);
    fs::create_dir(src.join("dir")).unwrap();
    fs::write(src.join("dir/suid"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(src.join("dir/suid"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(src.join("dir/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(src.join("dir/suid"), src.join("link")).unwrap();
    std::os::unix::fs::symlink("dir/suid", src.join("sym")).unwrap();
    std::os::unix::fs::lchown(src.join("sym"), Some(42), Some(43)).unwrap();
    mknod(
        &src.join("null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    mknod(&src.join("fifo"), SFlag::S_IFIFO, Mode::from_bits_truncate(0o640), 0).unwrap();
    xattr::set(src.join("dir/suid"), "user.note", b"kept").unwrap();
    xattr::set(src.join("dir"), "trusted.overlay.opaque", b"y").unwrap();
    fs::set_permissions(src.join("dir"), fs::Permissions::from_mode(0o1750)).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o711)).unwrap();
    let old = nix::sys::time::TimeSpec::new(1_000_000_000, 123_456_789);
    for path in [src.join("dir/suid"), src.join("dir"), src.join("sym")] {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &old,
            &old,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    s.commit("ns", "c", "a", none(), None).unwrap();
    let child = s.prepare("ns", "b", "c", none(), None).unwrap();
    let dst = PathBuf::from(&child[0].source);

    for rel in ["", "dir", "dir/suid", "link", "sym", "null", "fifo"] {
        let (a, b) = (
            fs::symlink_metadata(src.join(rel)).unwrap(),
            fs::symlink_metadata(dst.join(rel)).unwrap(),
        );
        let what = |m: &fs::Metadata| (m.mode(), m.uid(), m.gid(), m.rdev(), m.size(), m.nlink());
        assert_eq!(what(&a), what(&b), "{rel:?}");
        assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()), "{rel:?}");
    }
    assert_eq!(
        fs::metadata(dst.join("link")).unwrap().ino(),
        fs::metadata(dst.join("dir/suid")).unwrap().ino(),
        "hard links stay links"
    );
    assert_ne!(
        fs::metadata(dst.join("link")).unwrap().ino(),
        fs::metadata(src.join("link")).unwrap().ino(),
        "but not to the parent's files"
    );
    assert_eq!(fs::read_link(dst.join("sym")).unwrap(), Path::new("dir/suid"));
    assert_eq!(
        xattr::get(dst.join("dir/suid"), "user.note").unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(
        xattr::get(dst.join("dir"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
}

/// Set in a child process (this test binary run again) to the snapshotter
/// and the directory of the stores it crashes on.
const CRASH_WHICH: &str = "CORTEN_SNAPSHOTS_CRASH_WHICH";
const CRASH_DIR: &str = "CORTEN_SNAPSHOTS_CRASH_DIR";

/// Not a test of its own: the child [`crash_after_creations`] starts. It
/// opens the stores in `dir` as [`Fixture`] does, makes snapshots of every
/// kind, writes a file into two, writes down what each call returned, and
/// SIGKILLs itself: nothing is closed, flushed or synced after the last
/// call returns.
#[test]
fn crash_child() {
    let (Some(which), Some(dir)) = (std::env::var_os(CRASH_WHICH), std::env::var_os(CRASH_DIR)) else {
        return;
    };
    let which = if which == "native" {
        Which::Native
    } else {
        Which::Overlay
    };
    let dir = PathBuf::from(dir);
    let meta: Arc<dyn MetaStore> = Arc::new(SledStore::open(&dir.join("meta"), 1 << 20).unwrap());
    let s = open(which, &dir.join("root"), meta, false);
    let a = s.prepare("ns", "a", "", none(), None).unwrap();
    let a_fs = bind_source(&a, true);
    fs::write(Path::new(&a_fs).join("f"), b"committed").unwrap();
    s.commit("ns", "c", "a", none(), None).unwrap();
    let child = s.prepare("ns", "child", "c", none(), None).unwrap();
    let child_fs = match which {
        Which::Native => bind_source(&child, true),
        Which::Overlay => option(&child[0], "upperdir").unwrap().to_string(),
    };
    fs::write(Path::new(&child_fs).join("g"), b"written before the crash").unwrap();
    let view = s.view("ns", "v", "c", none(), None).unwrap();
    let lone = s.prepare("ns", "lone", "", none(), None).unwrap();
    let returned = format!("{child:?}\n{view:?}\n{lone:?}\n{child_fs}");
    fs::write(dir.join("returned"), returned).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL).unwrap();
    unreachable!("SIGKILL is not caught");
}

/// The window the lazily committed backend entry opens: a creation has
/// returned, so its metadata record is durable, but its backend entry is
/// not. A SIGKILL there loses the entries; the next open restores them
/// from the records, so every snapshot is what its creation returned.
fn crash_after_creations(which: Which) {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_WHICH, which.id())
        .env(CRASH_DIR, dir.path())
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(9), "the child did not reach its kill: {status}");
    let returned = fs::read_to_string(dir.path().join("returned")).unwrap();

    // The crash did lose them: the backend has only what the commit of `c`
    // made durable.
    let root = dir.path().join("root");
    {
        use redb::ReadableTable;
        let db = redb::Database::open(root.join("backend.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let keys: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("keys");
        let keys = txn.open_table(keys).unwrap();
        let held: BTreeSet<String> = keys
            .iter()
            .unwrap()
            .map(|kv| kv.unwrap().0.value().to_string())
            .collect();
        assert_eq!(held.len(), 2, "{held:?}: the active `a` and the committed `c`");
    }

    let meta: Arc<dyn MetaStore> = Arc::new(SledStore::open(&dir.path().join("meta"), 1 << 20).unwrap());
    let store = open(which, &root, meta.clone(), false);
    let f = Fixture {
        dir,
        which,
        meta,
        store,
    };
    let s = &f.store;
    let child = s.mounts("ns", "child").unwrap();
    let view = s.mounts("ns", "v").unwrap();
    let lone = s.mounts("ns", "lone").unwrap();
    let child_fs = returned.lines().nth(3).unwrap();
    assert_eq!(returned, format!("{child:?}\n{view:?}\n{lone:?}\n{child_fs}"));
    assert_eq!(
        fs::read(Path::new(child_fs).join("g")).unwrap(),
        b"written before the crash",
        "the restored snapshot is the directory its creation returned"
    );
    for key in ["child", "v", "lone"] {
        let record = f.record("ns", key).unwrap();
        let seq = record.backend_key.split('/').nth(1).unwrap();
        assert!(f.snapshot_dirs().contains(seq), "{key}: {}", record.backend_key);
    }
    assert_eq!(s.stat("ns", "child").unwrap().parent, "c");
    assert_eq!(s.cleanup().unwrap().removed, 0, "nothing referenced is removed");

    // Restored, they work as any other: commit, layer on, remove.
    s.commit("ns", "c2", "child", none(), None).unwrap();
    let top = s.view("ns", "top", "c2", none(), None).unwrap();
    if which == Which::Overlay {
        let lower = option(&top[0], "lowerdir").unwrap();
        assert_eq!(lower.split(':').count(), 2, "{lower}");
    } else {
        let source = bind_source(&top, false);
        assert_eq!(
            fs::read(Path::new(&source).join("g")).unwrap(),
            b"written before the crash"
        );
        assert_eq!(fs::read(Path::new(&source).join("f")).unwrap(), b"committed");
    }
    for key in ["top", "v", "lone", "c2", "c"] {
        s.remove("ns", key, None).unwrap();
    }
    s.cleanup().unwrap();
    assert!(f.snapshot_dirs().is_empty(), "{:?}", f.snapshot_dirs());

    // And a second open finds nothing to restore or repair.
    let f = f.reopen();
    assert!(f.store.list("ns").unwrap().is_empty());
}

#[test]
fn overlay_crash_after_creations() {
    crash_after_creations(Which::Overlay);
}

#[test]
fn native_crash_after_creations() {
    crash_after_creations(Which::Native);
}
