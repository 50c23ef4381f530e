//! Containers and events, driven by the real `ctr` and by `containerd
//! publish` (the Go client of Events.Publish). The gRPC rules ctr cannot
//! reach (update masks, forwarded envelopes) are checked against corten and
//! against a private containerd 1.6 with the same expectations, so the two
//! cannot drift apart.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use corten_api::containerd::{
    events::ContainerDelete,
    services::{
        containers::v1::{
            container::Runtime, containers_client::ContainersClient, Container, CreateContainerRequest,
            DeleteContainerRequest, GetContainerRequest, ListContainersRequest, UpdateContainerRequest,
        },
        events::v1::{events_client::EventsClient, Envelope, ForwardRequest, PublishRequest, SubscribeRequest},
    },
};
use corten_tests::{fails, ok, registry::Registry, system_tool, Daemon, DEADLINE};
use prost::Message;
use serde_json::Value;
use tonic::Code;

/// `ctr -n NS ARGS...`
fn ctr(d: &Daemon, ns: &str, args: &[&str]) -> Output {
    d.ctr(&[&["-n", ns][..], args].concat())
}

/// Asserts success, with the daemon's log in the message when it fails.
fn ok_logged(d: &Daemon, what: &str, out: Output) -> String {
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}\ncortend log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            d.log()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The table rows of a ctr listing, without its header.
fn rows(listing: &str) -> Vec<&str> {
    listing.lines().skip(1).filter(|l| !l.trim().is_empty()).collect()
}

fn lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// An image pulled into `ns` from a fresh local registry: (registry, reference).
fn pulled_busybox(d: &Daemon, ns: &str) -> (Registry, String) {
    let registry = Registry::start();
    let image = registry.push_busybox("test/busybox", "latest");
    ok_logged(
        d,
        "ctr images pull",
        ctr(d, ns, &["images", "pull", "--plain-http", &image.reference]),
    );
    (registry, image.reference)
}

fn info(d: &Daemon, ns: &str, id: &str) -> Value {
    let out = ok_logged(d, "ctr containers info", ctr(d, ns, &["containers", "info", id]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctr containers info: {e}:\n{out}"))
}

fn snapshot_keys(d: &Daemon, ns: &str) -> Vec<String> {
    let out = ok(ctr(d, ns, &["snapshots", "ls"]));
    rows(&out)
        .into_iter()
        .map(|r| r.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn create_list_info_label_remove() {
    let ns = "containers-life";
    let d = Daemon::start();
    let (_registry, reference) = pulled_busybox(&d, ns);

    ok_logged(
        &d,
        "ctr containers create",
        ctr(&d, ns, &["containers", "create", &reference, "c1"]),
    );

    let ls = ok(ctr(&d, ns, &["containers", "ls"]));
    let listed = rows(&ls);
    assert_eq!(listed.len(), 1, "{ls}");
    let columns: Vec<&str> = listed[0].split_whitespace().collect();
    assert_eq!(columns, ["c1", reference.as_str(), "io.containerd.runc.v2"], "{ls}");

    // What ctr made: the spec from the image config, the default runtime
    // with runc options, an overlayfs snapshot named after the container.
    let c = info(&d, ns, "c1");
    assert_eq!(c["ID"], "c1");
    assert_eq!(c["Image"], reference.as_str());
    assert_eq!(c["Runtime"]["Name"], "io.containerd.runc.v2");
    assert_eq!(c["Runtime"]["Options"]["type_url"], "containerd.runc.v1.Options");
    assert_eq!(c["Snapshotter"], "overlayfs");
    assert_eq!(c["SnapshotKey"], "c1");
    assert_eq!(c["CreatedAt"], c["UpdatedAt"]);
    assert_eq!(c["Spec"]["root"]["path"], "rootfs", "{c}");
    assert!(c["Spec"]["ociVersion"].is_string(), "{c}");
    assert!(c["Spec"]["process"]["args"].is_array(), "{c}");
    let spec: Value = serde_json::from_str(&ok(ctr(&d, ns, &["containers", "info", "--spec", "c1"]))).unwrap();
    assert_eq!(spec, c["Spec"]);
    let keys = snapshot_keys(&d, ns);
    assert!(keys.iter().any(|k| k == "c1"), "{keys:?}");

    // Labels: set, add, clear one; the listing filters on them.
    let out = ok_logged(
        &d,
        "ctr containers label",
        ctr(&d, ns, &["containers", "label", "c1", "foo=bar"]),
    );
    assert!(out.trim().split(',').any(|l| l == "foo=bar"), "{out}");
    ok(ctr(&d, ns, &["containers", "label", "c1", "a=b"]));
    let out = ok(ctr(&d, ns, &["containers", "label", "c1", "foo="]));
    assert!(!out.contains("foo="), "{out}");
    let c = info(&d, ns, "c1");
    assert_eq!(c["Labels"]["a"], "b", "{c}");
    assert!(c["Labels"].get("foo").is_none(), "{c}");
    assert_ne!(c["CreatedAt"], c["UpdatedAt"]);

    ok_logged(
        &d,
        "ctr containers create --rootfs",
        ctr(&d, ns, &["containers", "create", "--rootfs", "/nonexistent", "r1"]),
    );
    let quiet = |filter: &str| -> Vec<String> {
        let out = ok(ctr(&d, ns, &["containers", "ls", "-q", filter]));
        lines(&out).into_iter().map(String::from).collect()
    };
    assert_eq!(quiet("labels.a==b"), ["c1"]);
    assert_eq!(quiet("image~=busybox"), ["c1"]);
    assert_eq!(quiet("id==r1"), ["r1"]);
    assert_eq!(quiet("runtime.name==io.containerd.runc.v2"), ["c1", "r1"]);
    assert!(quiet("labels.foo").is_empty());
    // Not a field containerd filters containers on.
    assert!(quiet("snapshotter==overlayfs").is_empty());
    let err = fails(ctr(&d, ns, &["containers", "ls", "id=="]));
    assert!(
        err.contains("invalid argument") || err.contains("InvalidArgument"),
        "{err}"
    );

    // A duplicate id: with an image the snapshot (named after the id) is
    // refused first, as containerd does; without one, the container.
    let err = fails(ctr(&d, ns, &["containers", "create", &reference, "c1"]));
    assert!(err.contains("already exists"), "{err}");
    let err = fails(ctr(&d, ns, &["containers", "create", "--rootfs", "/nonexistent", "r1"]));
    assert!(err.contains("container \"r1\": already exists"), "{err}");
    let err = fails(ctr(
        &d,
        ns,
        &["containers", "create", "--rootfs", "/nonexistent", "bad/id"],
    ));
    assert!(err.contains("invalid argument"), "{err}");
    let err = fails(ctr(
        &d,
        ns,
        &["containers", "create", "--runtime", "", "--rootfs", "/x", "r2"],
    ));
    assert!(err.contains("invalid argument"), "{err}");
    let err = fails(ctr(&d, ns, &["containers", "create", "nosuch/image:1", "x1"]));
    assert!(err.contains("not found"), "{err}");
    assert_eq!(lines(&ok(ctr(&d, ns, &["containers", "ls", "-q"]))), ["c1", "r1"]);

    // rm takes the container and (ctr's doing) its snapshot.
    ok_logged(&d, "ctr containers rm", ctr(&d, ns, &["containers", "rm", "c1", "r1"]));
    assert_eq!(ok(ctr(&d, ns, &["containers", "ls", "-q"])).trim(), "");
    assert!(!snapshot_keys(&d, ns).iter().any(|k| k == "c1"));
    let err = fails(ctr(&d, ns, &["containers", "rm", "c1"]));
    assert!(err.contains("not found"), "{err}");
    let err = fails(ctr(&d, ns, &["containers", "info", "c1"]));
    assert!(err.contains("not found"), "{err}");
}

/// What containerd does too: the container keeps its snapshot (and through
/// it the image's layers) when its image is removed and collected; the
/// image's blobs go. Once the container is gone, collection takes the rest.
#[test]
fn a_container_holds_its_snapshot_against_gc() {
    let ns = "containers-gc";
    let d = Daemon::start();
    let (_registry, reference) = pulled_busybox(&d, ns);
    ok_logged(
        &d,
        "ctr containers create",
        ctr(&d, ns, &["containers", "create", &reference, "k1"]),
    );
    let before = snapshot_keys(&d, ns);
    assert_eq!(before.len(), 2, "the layer and k1: {before:?}");

    ok_logged(
        &d,
        "ctr images rm --sync",
        ctr(&d, ns, &["images", "rm", "--sync", &reference]),
    );
    assert_eq!(snapshot_keys(&d, ns), before, "collected under a container");
    assert_eq!(
        ok(ctr(&d, ns, &["content", "ls", "-q"])).trim(),
        "",
        "the image's blobs stay"
    );
    assert_eq!(info(&d, ns, "k1")["Image"], reference.as_str());

    // Kept by ctr, but no longer by anything the collector knows of.
    ok_logged(
        &d,
        "ctr containers rm --keep-snapshot",
        ctr(&d, ns, &["containers", "rm", "--keep-snapshot", "k1"]),
    );
    corten_tests::wait_for("the collector to take the container's snapshots", || {
        snapshot_keys(&d, ns).is_empty()
    });
    ok_logged(&d, "ctr namespaces rm", d.ctr(&["namespaces", "rm", ns]));
}

/// A `ctr events` process whose output lines arrive on a channel.
struct Events {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// One `ctr events` line: `DATE TIME +0000 UTC NAMESPACE TOPIC JSON`.
struct Line {
    namespace: String,
    topic: String,
    event: Value,
}

fn parse_line(line: &str) -> Option<Line> {
    let parts: Vec<&str> = line.splitn(7, ' ').collect();
    let [_, _, _, _, namespace, topic, json] = parts[..] else {
        return None;
    };
    Some(Line {
        namespace: namespace.into(),
        topic: topic.into(),
        event: serde_json::from_str(json).ok()?,
    })
}

impl Events {
    fn start(d: &Daemon, filters: &[&str]) -> Events {
        let mut child = Command::new(system_tool("ctr", "containerd"))
            .arg("--address")
            .arg(&d.socket)
            .arg("events")
            .args(filters)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ctr events");
        let stdout = child.stdout.take().expect("ctr events stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Events {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits up to `within` for a line with `topic` (and keeps every line).
    fn wait_within(&mut self, topic: &str, within: Duration) -> Option<Line> {
        let until = Instant::now() + within;
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if let Some(parsed) = parse_line(&line).filter(|l| l.topic == topic) {
                return Some(parsed);
            }
        }
    }

    fn wait(&mut self, topic: &str) -> Line {
        self.wait_within(topic, DEADLINE)
            .unwrap_or_else(|| panic!("no {topic} event; saw:\n{}", self.seen.join("\n")))
    }

    /// Publishes probes until this subscriber shows one: from then on it
    /// sees every event. The probe topics start with `/probe/`.
    fn subscribed(&mut self, d: &Daemon, ns: &str) {
        let start = Instant::now();
        for n in 0.. {
            publish(d, ns, &format!("/probe/ready-{n}"), "probe");
            if self
                .wait_within(&format!("/probe/ready-{n}"), Duration::from_millis(300))
                .is_some()
            {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "ctr events never subscribed");
        }
    }

    /// The events seen so far, probes left out.
    fn topics(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|l| parse_line(l))
            .map(|l| l.topic)
            .filter(|t| !t.starts_with("/probe/"))
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `containerd publish`: a ContainerDelete event for `id` on `topic`.
fn publish(d: &Daemon, ns: &str, topic: &str, id: &str) {
    let any = corten_api::pack_any("containerd.events.ContainerDelete", &ContainerDelete { id: id.into() });
    let mut child = Command::new(system_tool("containerd", "containerd"))
        .arg("--address")
        .arg(&d.socket)
        .args(["publish", "--namespace", ns, "--topic", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run containerd publish");
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &any.encode_to_vec()).unwrap();
    drop(stdin);
    ok(child.wait_with_output().unwrap());
}

#[test]
fn ctr_events_shows_container_events() {
    let ns = "containers-events";
    let d = Daemon::start();
    let mut all = Events::start(&d, &[]);
    all.subscribed(&d, ns);
    let mut deletes = Events::start(&d, &[r#"topic=="/containers/delete""#, r#"topic~="^/probe/""#]);
    deletes.subscribed(&d, ns);
    let mut e2 = Events::start(
        &d,
        &["event.id==e2,namespace==containers-events", r#"topic~="^/probe/""#],
    );
    e2.subscribed(&d, ns);
    let mut elsewhere = Events::start(&d, &["namespace!=containers-events", r#"topic=="/probe/end""#]);
    elsewhere.subscribed(&d, "probes");

    for id in ["e1", "e2"] {
        ok_logged(
            &d,
            "ctr containers create",
            ctr(&d, ns, &["containers", "create", "--rootfs", "/nonexistent", id]),
        );
    }
    ok(ctr(&d, ns, &["containers", "label", "e1", "k=v"]));
    ok(ctr(&d, ns, &["containers", "rm", "e1", "e2"]));

    let create = all.wait("/containers/create");
    assert_eq!(create.namespace, ns);
    assert_eq!(create.event["id"], "e1");
    assert_eq!(create.event["runtime"]["name"], "io.containerd.runc.v2");
    let update = all.wait("/containers/update");
    assert_eq!(update.event["id"], "e1");
    assert_eq!(update.event["labels"]["k"], "v");
    let delete = all.wait("/containers/delete");
    assert_eq!(delete.event, serde_json::json!({"id": "e1"}));
    all.wait("/containers/delete");
    assert_eq!(
        all.topics(),
        [
            "/containers/create",
            "/containers/create",
            "/containers/update",
            "/containers/delete",
            "/containers/delete"
        ]
    );

    // Once the last probe is through, each filtered subscriber has seen
    // everything before it: events arrive in publish order.
    publish(&d, "probes", "/probe/end", "end");
    for sub in [&mut deletes, &mut e2, &mut elsewhere] {
        sub.wait("/probe/end");
    }
    assert_eq!(deletes.topics(), ["/containers/delete", "/containers/delete"]);
    let ids: Vec<Value> = e2
        .seen
        .iter()
        .filter_map(|l| parse_line(l))
        .filter(|l| !l.topic.starts_with("/probe/"))
        .map(|l| l.event["id"].clone())
        .collect();
    assert_eq!(ids, ["e2", "e2"], "create and delete of e2:\n{}", e2.seen.join("\n"));
    assert!(elsewhere.topics().is_empty(), "{:?}", elsewhere.seen);

    // A published event reaches subscribers as it was sent.
    publish(&d, ns, "/my/topic", "payload");
    let mine = all.wait("/my/topic");
    assert_eq!(
        (mine.namespace.as_str(), &mine.event),
        (ns, &serde_json::json!({"id": "payload"}))
    );

    let err = fails(
        Command::new(system_tool("containerd", "containerd"))
            .arg("--address")
            .arg(&d.socket)
            .args(["publish", "--namespace", ns, "--topic", "no-slash"])
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    );
    assert!(err.contains("invalid argument"), "{err}");
    // Refused at once, so ctr ends (containerd: Unknown, corten: InvalidArgument).
    let err = fails(d.ctr(&["events", "topic==/unquoted/slash"]));
    assert!(
        err.contains("InvalidArgument") || err.contains("invalid argument"),
        "{err}"
    );
}

/// A private containerd 1.6 on its own root, state and sockets (its CRI
/// plugin off); stopped on drop.
struct Containerd {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new().prefix("ctd-").tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let config = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\naddress = {:?}\n[ttrpc]\naddress = {:?}\n[debug]\naddress = {:?}\n[metrics]\naddress = \"\"\n",
            p("root"),
            p("state"),
            p("c.sock"),
            p("c.sock.ttrpc"),
            p("debug.sock"),
        );
        std::fs::write(p("config.toml"), config).unwrap();
        let log = std::fs::File::create(p("containerd.log")).unwrap();
        let child = Command::new(system_tool("containerd", "containerd"))
            .arg("--config")
            .arg(p("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let socket = p("c.sock");
        corten_tests::wait_for("containerd to serve", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        Containerd {
            _dir: dir,
            socket,
            child,
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + DEADLINE;
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

async fn channel(socket: &Path) -> tonic::transport::Channel {
    corten_tests::grpc::channel(socket).await
}

fn namespaced<T>(ns: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("containerd-namespace", ns.parse().unwrap());
    request
}

fn any(type_url: &str, value: &[u8]) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.into(),
        value: value.to_vec(),
    }
}

fn container(id: &str) -> Container {
    Container {
        id: id.into(),
        labels: HashMap::from([("a".to_string(), "1".to_string())]),
        image: "example.com/img:1".into(),
        runtime: Some(Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(any("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")),
        snapshotter: "overlayfs".into(),
        snapshot_key: id.into(),
        ..Container::default()
    }
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// The Containers and Events rules ctr cannot reach, on the daemon at `socket`.
async fn grpc_rules(socket: &Path, ns: &str) {
    let mut c = ContainersClient::new(channel(socket).await);
    let create = |container: Container| {
        namespaced(
            ns,
            CreateContainerRequest {
                container: Some(container),
            },
        )
    };
    let update = |container: Container, paths: &[&str]| {
        namespaced(
            ns,
            UpdateContainerRequest {
                container: Some(container),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            },
        )
    };

    let created = c
        .create(create(container("g1")))
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert_eq!(created.created_at, created.updated_at);
    assert!(created.created_at.is_some());
    assert_eq!(code(c.create(create(container("g1"))).await), Code::AlreadyExists);
    let invalid = [
        Container {
            spec: None,
            ..container("g2")
        },
        Container {
            runtime: None,
            ..container("g2")
        },
        Container {
            snapshotter: String::new(),
            ..container("g2")
        },
        container("-g2"),
    ];
    for bad in invalid {
        assert_eq!(
            code(c.create(create(bad.clone())).await),
            Code::InvalidArgument,
            "{bad:?}"
        );
    }

    // Masks: labels by key; runtime and snapshotter never.
    let mut req = container("g1");
    req.labels = HashMap::from([("b".to_string(), "2".to_string())]);
    let u = c.update(update(req.clone(), &["labels.b"])).await.unwrap().into_inner();
    let u = u.container.unwrap();
    let want = HashMap::from([("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())]);
    assert_eq!(u.labels, want);
    assert_eq!(u.created_at, created.created_at);
    for path in ["runtime", "snapshotter", "id", "nonsense"] {
        assert_eq!(
            code(c.update(update(req.clone(), &[path])).await),
            Code::InvalidArgument,
            "{path}"
        );
    }
    let other_snapshotter = Container {
        snapshotter: "native".into(),
        ..req.clone()
    };
    assert_eq!(
        code(c.update(update(other_snapshotter, &[])).await),
        Code::InvalidArgument
    );
    let other_runtime = Container {
        runtime: Some(Runtime {
            name: "io.containerd.runc.v1".into(),
            options: None,
        }),
        ..req.clone()
    };
    assert_eq!(code(c.update(update(other_runtime, &[])).await), Code::InvalidArgument);
    let no_spec = Container {
        spec: None,
        ..req.clone()
    };
    assert_eq!(code(c.update(update(no_spec, &["spec"])).await), Code::InvalidArgument);
    // The snapshot key may change (containerd 1.6 allows it).
    let rekeyed = Container {
        snapshot_key: "g1-new".into(),
        ..req.clone()
    };
    let u = c
        .update(update(rekeyed, &["snapshotkey"]))
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert_eq!(u.snapshot_key, "g1-new");
    // No mask: every mutable field, as given.
    let full = Container {
        image: "example.com/other:2".into(),
        labels: HashMap::new(),
        ..container("g1")
    };
    let u = c
        .update(update(full, &[]))
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert_eq!(
        (u.image.as_str(), u.labels.len(), u.snapshot_key.as_str()),
        ("example.com/other:2", 0, "g1")
    );
    assert_eq!(code(c.update(update(container(""), &[])).await), Code::InvalidArgument);
    assert_eq!(code(c.update(update(container("missing"), &[])).await), Code::NotFound);

    // Lists, one message per container in the stream.
    c.create(create(container("g3"))).await.unwrap();
    let list = |filters: &[&str]| {
        namespaced(
            ns,
            ListContainersRequest {
                filters: filters.iter().map(|f| f.to_string()).collect(),
            },
        )
    };
    let mut stream = c.list_stream(list(&["labels.a==1"])).await.unwrap().into_inner();
    let mut streamed = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        streamed.push(m.container.unwrap().id);
    }
    assert_eq!(streamed, ["g3"]);
    let listed = c
        .list(list(&["id==g1", "id==g3"]))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 2);
    assert_eq!(code(c.list(list(&["id=="])).await), Code::InvalidArgument);

    let get = |id: &str| namespaced(ns, GetContainerRequest { id: id.into() });
    assert_eq!(code(c.get(get("nope")).await), Code::NotFound);
    let delete = |id: &str| namespaced(ns, DeleteContainerRequest { id: id.into() });
    c.delete(delete("g1")).await.unwrap();
    assert_eq!(code(c.delete(delete("g1")).await), Code::NotFound);
    assert_eq!(code(c.get(get("g1")).await), Code::NotFound);
    c.delete(delete("g3")).await.unwrap();

    // Events: a forwarded envelope arrives as it was sent; a bad one is refused.
    let mut e = EventsClient::new(channel(socket).await);
    // containerd sends a stream's headers with its first message only, so
    // the subscription is awaited beside the forwarding.
    let subscriber = {
        let mut e = e.clone();
        tokio::spawn(async move {
            let request = SubscribeRequest {
                filters: vec![r#"topic~="^/forwarded/""#.into()],
            };
            let mut stream = e.subscribe(request).await?.into_inner();
            stream.message().await
        })
    };
    let sent_at = prost_types::Timestamp {
        seconds: 1_000_000_000,
        nanos: 5,
    };
    let envelope = Envelope {
        timestamp: Some(sent_at),
        namespace: ns.into(),
        topic: "/forwarded/one".into(),
        event: Some(corten_api::pack_any(
            "containerd.events.ContainerDelete",
            &ContainerDelete { id: "fw".into() },
        )),
    };
    let forward = |envelope: Envelope| ForwardRequest {
        envelope: Some(envelope),
    };
    for bad in [
        Envelope {
            timestamp: None,
            ..envelope.clone()
        },
        Envelope {
            namespace: "bad/ns".into(),
            ..envelope.clone()
        },
        Envelope {
            topic: "forwarded".into(),
            ..envelope.clone()
        },
    ] {
        assert_eq!(
            code(e.forward(forward(bad.clone())).await),
            Code::InvalidArgument,
            "{bad:?}"
        );
    }
    // Forwarded until the subscriber, which may not be subscribed yet, has one.
    let deadline = Instant::now() + DEADLINE;
    while !subscriber.is_finished() {
        e.forward(forward(envelope.clone())).await.unwrap();
        assert!(Instant::now() < deadline, "the subscriber received nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = subscriber.await.unwrap().unwrap().unwrap();
    assert_eq!(got, envelope);

    let publish = PublishRequest {
        topic: "/published/one".into(),
        event: envelope.event.clone(),
    };
    assert_eq!(
        code(e.publish(publish.clone()).await),
        Code::FailedPrecondition,
        "no namespace"
    );
    let bad_topic = PublishRequest {
        topic: "/a//b".into(),
        ..publish.clone()
    };
    assert_eq!(code(e.publish(namespaced(ns, bad_topic)).await), Code::InvalidArgument);
    e.publish(namespaced(ns, publish)).await.unwrap();
}

#[test]
fn grpc_rules_as_containerd() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = Daemon::start();
    rt.block_on(grpc_rules(&d.socket, "containers-grpc"));
    let containerd = Containerd::start();
    rt.block_on(grpc_rules(&containerd.socket, "containers-grpc"));
}

/// Only corten is asked this: containerd 1.6 dereferences the missing event
/// and crashes.
#[test]
fn forward_without_an_event_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = Daemon::start();
    rt.block_on(async {
        let mut e = EventsClient::new(channel(&d.socket).await);
        let envelope = Envelope {
            timestamp: Some(prost_types::Timestamp { seconds: 1, nanos: 0 }),
            namespace: "ns".into(),
            topic: "/t".into(),
            event: None,
        };
        let r = e
            .forward(ForwardRequest {
                envelope: Some(envelope),
            })
            .await;
        assert_eq!(code(r), Code::InvalidArgument);
        let r = e.forward(ForwardRequest { envelope: None }).await;
        assert_eq!(code(r), Code::InvalidArgument);
    });
}
