//! The runtime against the real Debian shim (containerd 1.6's
//! `containerd-shim-runc-v2`) and runc, without a daemon.

mod support;

use std::{sync::Arc, time::Duration};

use corten_api::containerd::events::{TaskDelete, TaskExit};
use corten_core::{
    runtime::{Runtime, Status},
    Error,
};
use prost::Message;
use support::{alive, available, mounted, process, shim_pids, until, Env};

const SIGKILL: u32 = 9;

fn topics(events: &[Arc<corten_core::events::Envelope>]) -> Vec<&str> {
    events.iter().map(|e| e.topic.as_str()).collect()
}

/// Nothing of task `id` is left: bundle, work directory, mount, shim.
fn nothing_left(env: &Env, id: &str) {
    let bundle = env.bundle(id);
    assert!(!bundle.exists(), "bundle {} is left", bundle.display());
    assert!(!env.work(id).exists(), "work dir of {id} is left");
    assert!(!mounted(&bundle.join("rootfs")), "rootfs of {id} is still mounted");
    until(Duration::from_secs(5), "the shim to exit", || {
        shim_pids(&env.namespace, Some(id)).is_empty()
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_with_exit_code_and_events_once() {
    if !available() {
        return;
    }
    let env = Env::new("life");
    let rt = env.runtime().await;
    let mut sub = env.subscribe();
    let ns = env.namespace.as_str();

    let task = rt
        .create(ns, "c1", env.opts("c1", &["sh", "-c", "echo hello; exit 7"], "c1.out"))
        .await
        .unwrap();
    assert!(task.pid() > 0);
    let bundle = env.bundle("c1");
    for file in ["config.json", "bootstrap.json", "shim-binary-path", "log", "address"] {
        assert!(bundle.join(file).exists(), "{file} in the bundle");
    }
    assert_eq!(std::fs::read_link(bundle.join("work")).unwrap(), env.work("c1"));
    assert!(mounted(&bundle.join("rootfs")));
    assert_eq!(task.state("").await.unwrap().status, Status::Created);
    assert_eq!(rt.list(ns).await.len(), 1);
    assert!(rt.list("other-namespace").await.is_empty());

    let pid = task.start("").await.unwrap();
    assert_eq!(pid, task.pid());
    let exit = task.wait("").await.unwrap();
    assert_eq!(exit.exit_status, 7);
    assert!(exit.exited_at.is_some());
    env.wait_output("c1.out", "hello");
    let state = task.state("").await.unwrap();
    assert_eq!((state.status, state.exit_status), (Status::Stopped, 7));

    let deleted = rt.delete(ns, "c1").await.unwrap();
    assert_eq!((deleted.pid, deleted.exit_status), (pid, 7));
    nothing_left(&env, "c1");
    assert!(matches!(rt.get(ns, "c1").await, Err(Error::NotFound(_))));

    // The shim publishes the lifecycle itself; the runtime adds nothing.
    let events = env.drain(&mut sub).await;
    assert_eq!(
        topics(&events),
        ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    );
    let exit = TaskExit::decode(events[2].value.as_slice()).unwrap();
    assert_eq!(
        (events[2].type_url.as_str(), exit.exit_status),
        ("containerd.events.TaskExit", 7)
    );
    rt.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_pids_pause_resume_kill() {
    if !available() {
        return;
    }
    let env = Env::new("ops");
    let rt = env.runtime().await;
    let ns = env.namespace.as_str();
    let task = rt
        .create(ns, "c2", env.opts("c2", &["sleep", "1000"], "c2.out"))
        .await
        .unwrap();
    let pid = task.start("").await.unwrap();
    assert_eq!(task.state("").await.unwrap().status, Status::Running);

    task.exec(
        "e1",
        process(&["sh", "-c", "echo from-exec; exit 3"]),
        env.file_io("e1.out"),
    )
    .await
    .unwrap();
    assert!(matches!(
        task.exec("e1", process(&["true"]), env.file_io("e1.out")).await,
        Err(Error::AlreadyExists(_))
    ));
    task.exec("e2", process(&["sleep", "1000"]), env.file_io("e2.out"))
        .await
        .unwrap();
    task.start("e2").await.unwrap();
    let e = task.delete_process("e2").await.unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
    task.kill("e2", SIGKILL, false).await.unwrap();
    assert_eq!(task.wait("e2").await.unwrap().exit_status, 137);
    task.delete_process("e2").await.unwrap();
    let exec_pid = task.start("e1").await.unwrap();
    assert!(exec_pid > 0 && exec_pid != pid);
    assert_eq!(task.wait("e1").await.unwrap().exit_status, 3);
    env.wait_output("e1.out", "from-exec");
    assert_eq!(task.delete_process("e1").await.unwrap().exit_status, 3);
    assert!(matches!(task.state("e1").await, Err(Error::NotFound(_))));

    let pids = task.pids().await.unwrap();
    assert!(pids.iter().any(|p| p.pid == pid), "{pids:?}");

    task.pause().await.unwrap();
    assert_eq!(task.state("").await.unwrap().status, Status::Paused);
    task.resume().await.unwrap();
    assert_eq!(task.state("").await.unwrap().status, Status::Running);
    assert!(task.stats().await.unwrap().is_some());

    let e = rt.delete(ns, "c2").await.unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
    task.kill("", SIGKILL, false).await.unwrap();
    assert_eq!(task.wait("").await.unwrap().exit_status, 137);
    rt.delete(ns, "c2").await.unwrap();
    nothing_left(&env, "c2");
    rt.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_shim_is_cleaned_up_after() {
    if !available() {
        return;
    }
    let env = Env::new("death");
    let rt = env.runtime().await;
    let mut sub = env.subscribe();
    let ns = env.namespace.as_str();
    let task = rt
        .create(ns, "c3", env.opts("c3", &["sleep", "1000"], "c3.out"))
        .await
        .unwrap();
    let pid = task.start("").await.unwrap();
    let waiter = {
        let task = task.clone();
        tokio::spawn(async move { task.wait("").await })
    };
    let boot: corten_runtime::bootstrap::Bootstrap =
        serde_json::from_slice(&std::fs::read(env.bundle("c3").join("bootstrap.json")).unwrap()).unwrap();
    let socket = std::path::PathBuf::from(boot.address.strip_prefix("unix://").unwrap());
    assert!(socket.exists());
    let shims = shim_pids(ns, Some("c3"));
    assert_eq!(shims.len(), 1, "{shims:?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(shims[0] as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();

    let exit = env.next(&mut sub, "/tasks/exit").await;
    let exit = TaskExit::decode(exit.value.as_slice()).unwrap();
    assert_eq!((exit.container_id.as_str(), exit.id.as_str()), ("c3", "c3"));
    assert!(matches!(exit.exit_status, 137 | 255), "{exit:?}");
    let delete = env.next(&mut sub, "/tasks/delete").await;
    assert_eq!(TaskDelete::decode(delete.value.as_slice()).unwrap().container_id, "c3");
    // The waiter hears the same end.
    let waited = waiter.await.unwrap().unwrap();
    assert_eq!(waited.exit_status, exit.exit_status);

    nothing_left(&env, "c3");
    assert!(!socket.exists(), "the dead shim's socket is removed");
    until(Duration::from_secs(5), "the container to be killed", || !alive(pid));
    assert!(matches!(rt.get(ns, "c3").await, Err(Error::NotFound(_))));
    rt.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_after_a_restart() {
    if !available() {
        return;
    }
    let env = Env::new("recover");
    let ns = env.namespace.as_str();
    let rt = env.runtime().await;
    let live = rt
        .create(ns, "live", env.opts("live", &["sleep", "1000"], "live.out"))
        .await
        .unwrap();
    let pid = live.start("").await.unwrap();
    let doomed = rt
        .create(ns, "doomed", env.opts("doomed", &["sleep", "1000"], "doomed.out"))
        .await
        .unwrap();
    doomed.start("").await.unwrap();
    drop((live, doomed));
    rt.close().await;
    drop(rt);
    assert!(!env.path("ttrpc.sock").exists(), "closing removes the ttrpc socket");
    assert_eq!(shim_pids(ns, Some("live")).len(), 1, "shims outlive the runtime");

    // While "the daemon is down", one shim dies.
    for shim in shim_pids(ns, Some("doomed")) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(shim as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
    }
    until(Duration::from_secs(5), "the doomed shim to exit", || {
        shim_pids(ns, Some("doomed")).is_empty()
    });

    let mut sub = env.subscribe();
    let rt = env.runtime().await;
    let events = env.drain(&mut sub).await;
    assert_eq!(topics(&events), ["/tasks/exit", "/tasks/delete"]);
    assert_eq!(
        TaskExit::decode(events[0].value.as_slice()).unwrap().container_id,
        "doomed"
    );
    nothing_left(&env, "doomed");

    let tasks = rt.list(ns).await;
    assert_eq!(tasks.len(), 1);
    let task = rt.get(ns, "live").await.unwrap();
    assert_eq!(task.pid(), pid);
    assert_eq!(task.state("").await.unwrap().status, Status::Running);
    task.exec(
        "e1",
        process(&["sh", "-c", "echo after-restart"]),
        env.file_io("e1.out"),
    )
    .await
    .unwrap();
    task.start("e1").await.unwrap();
    assert_eq!(task.wait("e1").await.unwrap().exit_status, 0);
    env.wait_output("e1.out", "after-restart");
    task.kill("", SIGKILL, false).await.unwrap();
    assert_eq!(task.wait("").await.unwrap().exit_status, 137);
    assert_eq!(rt.delete(ns, "live").await.unwrap().exit_status, 137);
    nothing_left(&env, "live");
    rt.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_leaves_nothing_behind() {
    if !available() {
        return;
    }
    let env = Env::new("bad");
    let rt = env.runtime().await;
    let ns = env.namespace.as_str();

    let mut opts = env.opts("x", &["true"], "x.out");
    opts.runtime = "bogus".into();
    let e = rt.create(ns, "x", opts).await.err().unwrap();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("bogus")), "{e}");
    nothing_left(&env, "x");

    let mut opts = env.opts("x", &["true"], "x.out");
    opts.runtime = "io.containerd.nope.v1".into();
    let e = rt.create(ns, "x", opts).await.err().unwrap();
    assert!(
        matches!(&e, Error::NotFound(m) if m.contains("containerd-shim-nope-v1")),
        "{e}"
    );
    nothing_left(&env, "x");

    let mut opts = env.opts("x", &["true"], "x.out");
    opts.runtime = "/nonexistent/containerd-shim-x-v2".into();
    assert!(matches!(rt.create(ns, "x", opts).await, Err(Error::NotFound(_))));

    // runc refuses a process that does not exist: the shim is stopped, the
    // mount and the bundle go.
    let e = rt
        .create(ns, "x", env.opts("x", &["/bin/no-such-binary"], "x.out"))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("no-such-binary"), "{e}");
    nothing_left(&env, "x");
    assert!(rt.list(ns).await.is_empty());

    let e = rt
        .create(ns, "bad/id", env.opts("x", &["true"], "x.out"))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");

    let task = rt
        .create(ns, "dup", env.opts("dup", &["sleep", "1000"], "dup.out"))
        .await
        .unwrap();
    let e = rt
        .create(ns, "dup", env.opts("dup", &["true"], "dup.out"))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
    assert!(env.bundle("dup").exists(), "the first task's bundle stays");
    // A task that was created but never started can be deleted.
    drop(task);
    rt.delete(ns, "dup").await.unwrap();
    nothing_left(&env, "dup");
    assert!(matches!(rt.delete(ns, "dup").await, Err(Error::NotFound(_))));
    rt.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn container_metrics_at_scrape_time() {
    if !available() {
        return;
    }
    let env = Env::new("metrics");
    let rt = env.runtime().await;
    let ns = env.namespace.as_str();
    let task = rt
        .create(ns, "m1", env.opts("m1", &["sleep", "1000"], "m1.out"))
        .await
        .unwrap();
    task.start("").await.unwrap();
    let stats = task.stats().await.unwrap().unwrap();
    assert!(stats.type_url.ends_with("io.containerd.cgroups.v1.Metrics") || stats.type_url.ends_with("v2.Metrics"));

    let registry = prometheus::Registry::new();
    registry.register(Box::new(rt.collector())).unwrap();
    let mut text = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    let labels = format!(r#"{{container_id="m1",namespace="{ns}"}}"#);
    for name in [
        "container_pids_current",
        "container_memory_usage_usage_bytes",
        "container_cpu_total_nanoseconds",
    ] {
        assert!(text.contains(&format!("{name}{labels}")), "no {name} in\n{text}");
    }
    let pids: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("container_pids_current{labels} ")))
        .unwrap()
        .parse()
        .unwrap();
    assert!(pids >= 1.0, "{text}");

    task.kill("", SIGKILL, false).await.unwrap();
    task.wait("").await.unwrap();
    rt.delete(ns, "m1").await.unwrap();
    assert!(registry.gather().is_empty());
    rt.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_shim_without_its_task_is_shut_down_at_recovery() {
    if !available() {
        return;
    }
    let env = Env::new("orphan");
    let ns = env.namespace.as_str();
    // A bundle whose shim started but whose task was never created (the
    // daemon died in between).
    let state = env.path("state");
    let bundle = corten_runtime::bundle::Bundle::at(&state, &env.path("root"), ns, "o1");
    bundle.create(&support::spec(ns, "o1", &["true"])).unwrap();
    let log = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(bundle.log())
        .unwrap();
    let shim_env = corten_runtime::command::ShimEnv {
        grpc_address: env.path("grpc.sock").display().to_string(),
        ttrpc_address: env.path("ttrpc.sock").display().to_string(),
        publish_binary: std::env::current_exe().unwrap(),
        sched_core: false,
    };
    let binary = std::path::Path::new(support::SHIM_BINARY);
    let command = corten_runtime::command::ShimCommand {
        env: &shim_env,
        binary,
        namespace: ns,
        id: "o1",
        bundle: &bundle.path,
    };
    let out = command.start(None).await.unwrap();
    let boot = corten_runtime::bootstrap::Bootstrap::parse(&out).unwrap();
    assert_eq!(boot.version, 2, "Debian's shim prints a plain v2 address: {out:?}");
    corten_runtime::bootstrap::save_binary(&bundle.path, binary).unwrap();
    until(Duration::from_secs(5), "the shim to listen", || {
        shim_pids(ns, Some("o1")).len() == 1
    });

    let rt = env.runtime().await;
    drop(log);
    assert!(rt.list(ns).await.is_empty());
    nothing_left(&env, "o1");
    rt.close().await;
}
