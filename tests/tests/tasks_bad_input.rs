//! Containers and tasks that cannot be: each is refused with a clear error
//! (the text and code containerd 1.6 gives, where clients depend on it),
//! leaves no bundle directory, mount, shim process, cgroup or runc state,
//! and the daemon runs the next container normally.

use corten_api::containerd::services::{
    containers::v1::{
        container::Runtime, containers_client::ContainersClient, Container, CreateContainerRequest,
        DeleteContainerRequest,
    },
    tasks::v1::{
        tasks_client::TasksClient, CreateTaskRequest, DeleteTaskRequest, GetRequest, KillRequest, StartRequest,
        WaitRequest,
    },
};
use corten_tests::{tasks::Env, Daemon};
use tonic::{transport::Channel, Code};

/// The daemon still runs containers after the refusal.
fn still_works(env: &Env) {
    let out = env.ctr_ok(
        "a good container after the bad input",
        &["run", "--rm", &env.image, "good", "echo", "fine"],
    );
    assert_eq!(out, "fine\n");
    env.assert_nothing_left(&["good"]);
}

/// ctr deletes the container it made when the task cannot be created, as
/// with containerd; what the daemon made for the task must be gone too.
fn refused_run(env: &Env, what: &str, id: &str, options: &[&str]) -> String {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(options);
    args.extend([env.image.as_str(), id, "true"]);
    let err = env.ctr_fails(what, &args);
    assert!(env.tasks().is_empty(), "{what}: {:?}", env.tasks());
    assert!(env.containers().is_empty(), "{what}: {:?}", env.containers());
    env.assert_nothing_left(&[id]);
    err
}

#[test]
fn unknown_runtime_is_refused() {
    let env = Env::start("bad-runtime");
    // containerd: `failed to start shim: failed to resolve runtime path:
    // runtime "io.containerd.nope.v1" binary not installed
    // "containerd-shim-nope-v1": file does not exist: unknown`.
    let err = refused_run(
        &env,
        "an unknown runtime",
        "nope",
        &["--runtime", "io.containerd.nope.v1"],
    );
    assert!(
        err.contains("containerd-shim-nope-v1") || err.contains("io.containerd.nope.v1"),
        "the error names the runtime or its binary: {err}"
    );
    still_works(&env);
}

#[test]
fn missing_shim_binary_is_refused() {
    let env = Env::start("bad-shim-path");
    let missing = env.d.dir.path().join("nowhere/containerd-shim-nope-v2");
    let missing = missing.to_string_lossy();
    // containerd: `failed to start shim: failed to resolve runtime path:
    // invalid custom binary path: stat PATH: no such file or directory: unknown`.
    let err = refused_run(&env, "a missing shim binary", "noshim", &["--runtime", &missing]);
    assert!(err.contains(missing.as_ref()), "the error names the binary: {err}");
    still_works(&env);
}

#[test]
fn spec_runc_rejects_is_refused() {
    let env = Env::start("bad-spec");
    // runc refuses a relative working directory at create; containerd
    // passes its words on: `failed to create shim task: OCI runtime create
    // failed: runc create failed: Cwd must be an absolute path: unknown`.
    let err = refused_run(&env, "a relative cwd", "relcwd", &["--cwd", "relative/dir"]);
    assert!(
        err.contains("must be an absolute path"),
        "runc's reason reaches ctr: {err}"
    );
    assert!(
        err.contains("failed to create shim task: OCI runtime create failed"),
        "worded as containerd words it: {err}"
    );
    still_works(&env);
}

#[test]
fn missing_snapshot_is_refused() {
    let env = Env::start("bad-snapshot");
    let id = "nosnap";
    env.ctr_ok("create a container", &["containers", "create", &env.image, id, "true"]);
    // A container's snapshot may be removed under it, as in containerd.
    env.ctr_ok("remove its snapshot", &["snapshots", "rm", id]);
    // containerd: `snapshot nosnap does not exist: not found`.
    let err = env.ctr_fails("a task on a missing snapshot", &["tasks", "start", id]);
    assert!(err.contains(id) && err.contains("not found"), "{err}");
    assert!(env.tasks().is_empty(), "{:?}", env.tasks());
    env.assert_nothing_left(&[id]);
    // The container itself stays until it is removed.
    assert_eq!(env.containers(), [id]);
    env.ctr_ok("remove the container", &["containers", "rm", id]);
    assert!(env.containers().is_empty());
    still_works(&env);
}

#[test]
fn duplicate_ids_are_refused() {
    let env = Env::start("bad-duplicate");

    // Two containers with one id (no snapshot involved: --rootfs).
    let rootfs = env.d.dir.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let rootfs = rootfs.to_string_lossy();
    let create = ["containers", "create", "--rootfs", &rootfs, "twice", "true"];
    env.ctr_ok("the first container", &create);
    // containerd: `container "twice": already exists`.
    let err = env.ctr_fails("the same id again", &create);
    assert!(err.contains("twice") && err.contains("already exists"), "{err}");
    assert_eq!(env.containers(), ["twice"]);
    let info: serde_json::Value =
        serde_json::from_str(&env.ctr_ok("the first is intact", &["containers", "info", "twice"])).unwrap();
    assert_eq!(info["ID"], "twice");
    env.ctr_ok("remove it", &["containers", "rm", "twice"]);

    // A running container's id, for a new container and for a second task.
    let task = env.run_detached("busy", &["sleep", "1000"]);
    let err = env.ctr_fails(
        "ctr run with a running container's id",
        &["run", "-d", &env.image, "busy", "true"],
    );
    assert!(err.contains("already exists"), "{err}");
    // containerd: `task busy: already exists`.
    let err = env.ctr_fails("a second task", &["tasks", "start", "-d", "busy"]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(env.tasks(), [task], "the first task is untouched");
    assert_eq!(
        corten_tests::tasks::shim_pids(&env.ns, Some("busy")).len(),
        1,
        "one shim for busy"
    );
    env.remove("busy");
    env.assert_nothing_left(&["twice", "busy"]);
    still_works(&env);
}

#[test]
fn tasks_of_containers_without_one_are_not_found() {
    let env = Env::start("bad-notask");
    // containerd: `container "nosuch" in namespace "NS": not found`.
    for args in [
        &["tasks", "start", "nosuch"][..],
        &["tasks", "start", "-d", "nosuch"],
        &["tasks", "kill", "nosuch"],
        &["tasks", "rm", "nosuch"],
        &["tasks", "ps", "nosuch"],
    ] {
        let err = env.ctr_fails("a task of no container", args);
        assert!(err.contains("nosuch") && err.contains("not found"), "{args:?}: {err}");
    }
    // containerd: `no running task found: task notask not found: not found`.
    env.ctr_ok("a container", &["containers", "create", &env.image, "notask", "true"]);
    for args in [
        &["tasks", "kill", "notask"][..],
        &["tasks", "rm", "notask"],
        &["tasks", "ps", "notask"],
        &["tasks", "pause", "notask"],
        &["tasks", "resume", "notask"],
        &["tasks", "metrics", "notask"],
        &["tasks", "exec", "--exec-id", "x", "notask", "true"],
    ] {
        let err = env.ctr_fails("a task the container does not have", args);
        assert!(err.contains("not found"), "{args:?}: {err}");
    }
    env.assert_nothing_left(&["nosuch", "notask"]);
    env.ctr_ok("remove the container", &["containers", "rm", "notask"]);
    still_works(&env);
}

fn namespaced<T>(ns: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("containerd-namespace", ns.parse().unwrap());
    request
}

async fn connect(d: &Daemon) -> Channel {
    corten_tests::grpc::channel(&d.socket).await
}

/// The codes containerd's tasks and containers services give, which its
/// clients test (`errdefs.IsNotFound`, `IsAlreadyExists`).
#[tokio::test(flavor = "multi_thread")]
async fn task_and_container_errors_carry_containerd_codes() {
    let env = Env::start("bad-grpc");
    let ns = env.ns.clone();
    let channel = connect(&env.d).await;
    let mut tasks = TasksClient::new(channel.clone());
    let mut containers = ContainersClient::new(channel);

    for id in ["nosuch", "bare"] {
        let code = |r: Result<_, tonic::Status>| r.err().map(|s| s.code());
        let expect = Some(Code::NotFound);
        if id == "nosuch" {
            let create = tasks
                .create(namespaced(
                    &ns,
                    CreateTaskRequest {
                        container_id: id.into(),
                        ..Default::default()
                    },
                ))
                .await;
            assert_eq!(code(create.map(|_| ())), expect, "Create {id}");
        }
        let start = tasks
            .start(namespaced(
                &ns,
                StartRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            ))
            .await;
        assert_eq!(code(start.map(|_| ())), expect, "Start {id}");
        let get = tasks
            .get(namespaced(
                &ns,
                GetRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            ))
            .await;
        assert_eq!(code(get.map(|_| ())), expect, "Get {id}");
        let kill = tasks
            .kill(namespaced(
                &ns,
                KillRequest {
                    container_id: id.into(),
                    signal: 9,
                    ..Default::default()
                },
            ))
            .await;
        assert_eq!(code(kill.map(|_| ())), expect, "Kill {id}");
        let delete = tasks
            .delete(namespaced(
                &ns,
                DeleteTaskRequest {
                    container_id: id.into(),
                },
            ))
            .await;
        assert_eq!(code(delete.map(|_| ())), expect, "Delete {id}");
        let wait = tasks
            .wait(namespaced(
                &ns,
                WaitRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            ))
            .await;
        assert_eq!(code(wait.map(|_| ())), expect, "Wait {id}");

        if id == "nosuch" {
            // A container with no task, for the second round.
            let container = Container {
                id: "bare".into(),
                runtime: Some(Runtime {
                    name: "io.containerd.runc.v2".into(),
                    options: None,
                }),
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                    value: br#"{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/"},"root":{"path":"rootfs"}}"#
                        .to_vec(),
                }),
                ..Default::default()
            };
            containers
                .create(namespaced(
                    &ns,
                    CreateContainerRequest {
                        container: Some(container.clone()),
                    },
                ))
                .await
                .expect("create a container");
            let again = containers
                .create(namespaced(
                    &ns,
                    CreateContainerRequest {
                        container: Some(container),
                    },
                ))
                .await;
            assert_eq!(code(again.map(|_| ())), Some(Code::AlreadyExists), "a second bare");
        }
    }
    containers
        .delete(namespaced(&ns, DeleteContainerRequest { id: "bare".into() }))
        .await
        .expect("delete the container");
    let again = containers
        .delete(namespaced(&ns, DeleteContainerRequest { id: "bare".into() }))
        .await;
    assert_eq!(again.err().map(|s| s.code()), Some(Code::NotFound));
    env.assert_nothing_left(&["nosuch", "bare"]);
}
