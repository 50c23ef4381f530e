//! Containers and tasks run by the real `ctr` through cortend, the runtime
//! v2 manager, Debian's `containerd-shim-runc-v2` and runc: the issue's
//! acceptance commands, with what containerd 1.6 prints and returns for
//! them, and the lifecycle events in containerd's order.
//!
//! Every test has its own daemon, registry and containerd namespace (see
//! `corten_tests::tasks`), and checks that a removed container leaves no
//! shim process, mount, bundle directory, cgroup or runc state behind.

use std::{
    io::Write,
    process::Stdio,
    time::{Duration, Instant},
};

use corten_tests::{
    system_tool,
    tasks::{in_terminal, wait_output, Env, Event, Events, CTR_DEADLINE},
    DEADLINE,
};

const RUNC_V2: &str = "io.containerd.runc.v2";

/// `'a' 'b' ...`: a shell command line of plain arguments.
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            assert!(!a.contains('\''), "{a} has a quote");
            format!("'{a}'")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn run_rm_prints_output_and_passes_exit_codes() {
    let env = Env::start("run-rm");

    let out = env.ctr(&["run", "--rm", &env.image, "hello", "echo", "hello"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.d.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    let out = env.ctr(&["run", "--rm", &env.image, "seven", "sh", "-c", "exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Output on stderr reaches ctr's stderr, not its stdout.
    let out = env.ctr(&["run", "--rm", &env.image, "stderr", "sh", "-c", "echo oops >&2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"), "{out:?}");

    assert!(env.tasks().is_empty(), "{:?}", env.tasks());
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    env.assert_nothing_left(&["hello", "seven", "stderr"]);
}

/// Issue 5's last acceptance line: an image pulled by corten's server-side
/// pull (not ctr's client-side one) runs with `ctr run`, and removing every
/// image then the namespace leaves nothing.
#[test]
fn an_image_pulled_by_corten_runs() {
    let env = Env::start("corten-pulled");
    let reference = env.registry.push_busybox("corten-pulled", "1").reference;
    let out = env
        .d
        .corten(&["--namespace", &env.ns, "images", "pull", "--plain-http", &reference]);
    assert!(
        out.status.success(),
        "corten images pull: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.d.log()
    );

    let out = env.ctr(&[
        "run",
        "--rm",
        &reference,
        "pulled",
        "sh",
        "-c",
        "echo from-corten; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-corten\n");
    env.assert_nothing_left(&["pulled"]);

    env.ctr_ok("remove the images", &["images", "rm", "--sync", &reference, &env.image]);
    for snapshotter in ["overlayfs", "native"] {
        let listing = env.ctr_ok("list snapshots", &["snapshots", "--snapshotter", snapshotter, "ls"]);
        assert_eq!(listing.lines().count(), 1, "{snapshotter} snapshots left:\n{listing}");
    }
    let content = env.ctr_ok("list content", &["content", "ls", "-q"]);
    assert!(content.trim().is_empty(), "content left:\n{content}");
    env.ctr_ok("remove the namespace", &["namespaces", "rm", &env.ns]);
}

/// ctr closes the task's stdin (CloseIO) when its own stdin ends. It can
/// only do so once the task exists (before that ctr drops the close, in
/// containerd too), so the input is written once the task runs.
#[test]
fn run_passes_stdin_through() {
    let env = Env::start("run-stdin");
    let mut child = env
        .ctr_command(&["run", "--rm", &env.image, "cat", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctr");
    let mut stdin = child.stdin.take().expect("ctr stdin");
    env.wait_status("cat", "RUNNING");
    stdin.write_all(b"through stdin\n").unwrap();
    drop(stdin);
    let out = wait_output(child, CTR_DEADLINE, "ctr run --rm cat");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.d.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    assert!(env.containers().is_empty());
    env.assert_nothing_left(&["cat"]);
}

#[test]
fn detached_container_lifecycle() {
    let env = Env::start("detached");
    let id = "sleeper";

    let out = env.ctr_ok("ctr run -d", &["run", "-d", &env.image, id, "sleep", "1000"]);
    assert_eq!(out, "", "ctr run -d prints nothing");
    let task = env.wait_status(id, "RUNNING");
    assert!(task.pid > 1, "{task:?}");
    // The pid is the container's process, as the host sees it.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", task.pid)).unwrap_or_default();
    assert_eq!(cmdline, b"sleep\x001000\x00", "pid {} is not the task", task.pid);

    // While it runs there is exactly what the leftover checks look for:
    // one shim, the bundle with its config and mounted rootfs, cgroups.
    let bundle = env.bundle(id);
    assert!(bundle.join("config.json").is_file(), "{}", bundle.display());
    assert_eq!(
        corten_tests::tasks::shim_pids(&env.ns, Some(id)).len(),
        1,
        "one shim for {id}"
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let rootfs = format!(" {}/rootfs ", bundle.display());
    assert!(mountinfo.contains(&rootfs), "no rootfs mount at {rootfs}");
    assert!(!env.cgroup_dirs(id).is_empty(), "no cgroup /{}/{id}", env.ns);

    // The container record.
    let listing = env.ctr_ok("containers ls", &["containers", "ls"]);
    let row = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("{listing}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        [id, env.image.as_str(), RUNC_V2]
    );
    let info: serde_json::Value =
        serde_json::from_str(&env.ctr_ok("containers info", &["containers", "info", id])).unwrap();
    assert_eq!(info["ID"], id, "{info}");
    assert_eq!(info["Image"], env.image.as_str(), "{info}");
    assert_eq!(info["Runtime"]["Name"], RUNC_V2, "{info}");
    assert_eq!(info["SnapshotKey"], id, "{info}");
    assert_eq!(info["Snapshotter"], "overlayfs", "{info}");
    assert_eq!(
        info["Spec"]["process"]["args"],
        serde_json::json!(["sleep", "1000"]),
        "{info}"
    );
    // Update with a field mask: one label set, the one ctr set at create kept.
    env.ctr_ok("label the container", &["containers", "label", id, "team=blue"]);
    let info: serde_json::Value =
        serde_json::from_str(&env.ctr_ok("containers info", &["containers", "info", id])).unwrap();
    assert_eq!(info["Labels"]["team"], "blue", "{info}");
    assert_eq!(
        info["Labels"]["io.containerd.image.config.stop-signal"], "SIGTERM",
        "{info}"
    );

    // exec: output, exit codes, and the same exec id again once the first is gone.
    let ls = env.ctr_ok("exec ls", &["tasks", "exec", "--exec-id", "e", id, "ls", "/"]);
    for dir in ["bin", "dev", "etc", "proc", "sys"] {
        assert!(ls.lines().any(|l| l == dir), "ls / in the container: {ls}");
    }
    let out = env.ctr(&["tasks", "exec", "--exec-id", "e", id, "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let err = env.ctr_fails(
        "exec a missing binary",
        &["tasks", "exec", "--exec-id", "missing", id, "nosuchbinary"],
    );
    assert!(err.contains("nosuchbinary"), "{err}");

    // ps: the task and a detached exec, which ctr labels with its exec id.
    env.ctr_ok(
        "exec -d",
        &["tasks", "exec", "-d", "--exec-id", "bg", id, "sleep", "500"],
    );
    let ps = env.ctr_ok("tasks ps", &["tasks", "ps", id]);
    let rows: Vec<&str> = ps.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{ps}");
    assert!(
        rows.iter()
            .any(|r| r.split_whitespace().next() == Some(&task.pid.to_string())),
        "{ps}"
    );
    assert!(
        rows.iter().any(|r| r.contains("bg")),
        "the exec's row names its id: {ps}"
    );
    let err = env.ctr_fails(
        "a second exec with a running exec's id",
        &["tasks", "exec", "--exec-id", "bg", id, "true"],
    );
    assert!(err.contains("already exists"), "{err}");
    env.ctr_ok(
        "kill the exec",
        &["tasks", "kill", "--exec-id", "bg", "-s", "SIGKILL", id],
    );
    let start = Instant::now();
    loop {
        let ps = env.ctr_ok("tasks ps", &["tasks", "ps", id]);
        if ps.lines().skip(1).count() == 1 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the killed exec is still listed: {ps}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // pause and resume.
    env.ctr_ok("pause", &["tasks", "pause", id]);
    assert_eq!(env.wait_status(id, "PAUSED").pid, task.pid);
    env.ctr_ok("resume", &["tasks", "resume", id]);
    assert_eq!(env.wait_status(id, "RUNNING").pid, task.pid);

    // A running task cannot be deleted.
    let err = env.ctr_fails("tasks rm while running", &["tasks", "rm", id]);
    assert!(err.contains("failed precondition"), "{err}");
    assert_eq!(env.task(id).map(|t| t.status), Some("RUNNING".to_string()));

    // kill, then the exit status comes with the delete.
    env.ctr_ok("kill", &["tasks", "kill", "-s", "SIGKILL", id]);
    assert_eq!(env.wait_status(id, "STOPPED").pid, task.pid);
    let out = env.ctr(&["tasks", "rm", id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("exit code 137"), "ctr reports the exit status: {err}");
    assert!(env.task(id).is_none(), "{:?}", env.tasks());
    assert_eq!(env.containers(), [id]);

    env.ctr_ok("containers rm", &["containers", "rm", id]);
    assert!(env.containers().is_empty());
    env.assert_nothing_left(&[id]);
}

/// `ctr run -t` needs a terminal of its own: `script` gives it one.
/// cortend starts itself once more with glibc's per-thread malloc caches
/// off (see daemon/src/malloc.rs); the shims it starts must get the
/// environment cortend was given, without that setting or its marker.
#[test]
fn shims_get_the_daemons_environment_without_its_malloc_setting() {
    let env = Env::start("environ");
    let environ = |pid: i32| -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap_or_default()
            .split(|&b| b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    };
    // The block the second start was exec'd with; glibc read it then.
    let daemon = environ(env.d.pid().as_raw());
    assert!(
        daemon.iter().any(|v| v == "GLIBC_TUNABLES=glibc.malloc.tcache_count=0"),
        "cortend runs without GLIBC_TUNABLES=glibc.malloc.tcache_count=0: {daemon:?}"
    );
    // Named after its binary still, not after /proc/self/exe.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", env.d.pid())).unwrap_or_default();
    assert_eq!(comm.trim_end(), "cortend");

    let id = "environ";
    env.run_detached(id, &["sleep", "1000"]);
    let shims = corten_tests::tasks::shim_pids(&env.ns, Some(id));
    assert_eq!(shims.len(), 1, "one shim for {id}");
    let shim = environ(shims[0]);
    let leaked: Vec<&String> = shim
        .iter()
        .filter(|v| v.starts_with("GLIBC_TUNABLES=") || v.starts_with("CORTEND_GIVEN_GLIBC_TUNABLES="))
        .collect();
    assert!(leaked.is_empty(), "the shim inherited {leaked:?}");
    env.remove(id);
    env.assert_nothing_left(&[id]);
}

#[test]
fn run_with_a_terminal() {
    let env = Env::start("terminal");
    let ctr = system_tool("ctr", "containerd");
    let socket = env.d.socket.to_string_lossy().into_owned();
    let command = shell_words(&[
        &ctr.to_string_lossy(),
        "--address",
        &socket,
        "--namespace",
        &env.ns,
        "run",
        "-t",
        "--rm",
        &env.image,
        "tty",
        "sh",
    ]);
    let (status, shown) = in_terminal(
        &command,
        b"test -t 0 && test -t 1 && echo tty-ok; exit 3\n",
        CTR_DEADLINE,
    );
    assert_eq!(status.code(), Some(3), "terminal showed:\n{shown}\n{}", env.d.log());
    assert!(
        shown.lines().any(|l| l.trim() == "tty-ok"),
        "the shell did not see a terminal:\n{shown}"
    );
    assert!(env.containers().is_empty());
    env.assert_nothing_left(&["tty"]);
}

/// The events of one container, in the order `sub` received them: those of
/// namespace `ns` whose topic is under /containers/ or /tasks/ and whose
/// payload names `id`.
fn lifecycle(sub: &Events, ns: &str, id: &str) -> Vec<Event> {
    sub.events()
        .into_iter()
        .filter(|e| e.namespace == ns && (e.topic.starts_with("/tasks/") || e.topic.starts_with("/containers/")))
        .filter(|e| {
            let json = e.json();
            json["container_id"] == id || json["id"] == id
        })
        .collect()
}

fn topics(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.topic.as_str()).collect()
}

#[test]
fn events_show_the_lifecycle_in_order() {
    let env = Env::start("events");
    let other = corten_tests::tasks::namespace("events-other");
    let all = Events::subscribe(&env.d, &env.ns, &[]);
    // The subscription was proven with a namespace created from env.ns: as
    // in containerd, its /namespaces/create envelope carries the creating
    // request's namespace (the `namespace==` filter below relies on it).
    let created: Vec<Event> = all
        .events()
        .into_iter()
        .filter(|e| e.topic == "/namespaces/create")
        .collect();
    assert!(
        !created.is_empty() && created.iter().all(|e| e.namespace == env.ns),
        "/namespaces/create must be published in the creating request's namespace {}: {created:#?}",
        env.ns
    );
    let exits = Events::subscribe(
        &env.d,
        &env.ns,
        &[r#"topic=="/tasks/exit""#, r#"topic=="/namespaces/create""#],
    );
    let elsewhere = Events::subscribe(&env.d, &other, &[&format!("namespace=={other}")]);

    // A container that exits by itself.
    let out = env.ctr(&["run", "--rm", &env.image, "once", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    all.sync(&env.ns);
    let events = lifecycle(&all, &env.ns, "once");
    assert_eq!(
        topics(&events),
        [
            "/containers/create",
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
            "/containers/delete"
        ],
        "{events:#?}"
    );
    let json: Vec<serde_json::Value> = events.iter().map(Event::json).collect();
    assert_eq!(json[0]["image"], env.image.as_str(), "{}", json[0]);
    assert_eq!(json[0]["runtime"]["name"], RUNC_V2, "{}", json[0]);
    let bundle = env.bundle("once");
    assert_eq!(json[1]["bundle"], bundle.to_string_lossy().as_ref(), "{}", json[1]);
    let pid = json[1]["pid"].as_u64().unwrap_or_default();
    assert!(pid > 1, "{}", json[1]);
    assert_eq!(json[2]["pid"], pid, "{}", json[2]);
    assert_eq!(json[3]["id"], "once", "{}", json[3]);
    assert_eq!(json[3]["pid"], pid, "{}", json[3]);
    assert_eq!(json[3]["exit_status"], 7, "{}", json[3]);
    assert!(json[3]["exited_at"].is_string(), "{}", json[3]);
    assert_eq!(json[4]["pid"], pid, "{}", json[4]);
    assert_eq!(json[4]["exit_status"], 7, "{}", json[4]);

    // A detached one, with an exec, a pause and a kill.
    let id = "long";
    let task = env.run_detached(id, &["sleep", "1000"]);
    env.ctr_ok("exec", &["tasks", "exec", "--exec-id", "x", id, "true"]);
    env.ctr_ok("pause", &["tasks", "pause", id]);
    env.wait_status(id, "PAUSED");
    env.ctr_ok("resume", &["tasks", "resume", id]);
    env.wait_status(id, "RUNNING");
    env.remove(id);
    all.sync(&env.ns);
    let events = lifecycle(&all, &env.ns, id);
    let names = topics(&events);
    assert_eq!(names.len(), 11, "{events:#?}");
    let position = |topic: &str| names.iter().position(|t| *t == topic);
    assert_eq!(names.first().copied(), Some("/containers/create"), "{events:#?}");
    assert_eq!(&names[1..3], ["/tasks/create", "/tasks/start"], "{events:#?}");
    // How an exec's start and exit interleave is the shim's business; both
    // come after /tasks/exec-added and before the pause.
    let mut exec: Vec<&str> = names[3..6].to_vec();
    exec.sort();
    assert_eq!(
        exec,
        ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"],
        "{events:#?}"
    );
    assert_eq!(names[3], "/tasks/exec-added", "{events:#?}");
    assert_eq!(
        &names[6..],
        [
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete",
            "/containers/delete"
        ],
        "{events:#?}"
    );
    let exec_exit = events[3..6].iter().find(|e| e.topic == "/tasks/exit").unwrap().json();
    assert_eq!(exec_exit["id"], "x", "{exec_exit}");
    let started = events[position("/tasks/exec-started").unwrap()].json();
    assert_eq!(started["exec_id"], "x", "{started}");
    assert!(started["pid"].as_u64().unwrap_or_default() > 1, "{started}");
    let exit = events[8].json();
    assert_eq!(exit["id"], id, "{exit}");
    assert_eq!(exit["pid"], task.pid, "{exit}");
    assert_eq!(exit["exit_status"], 137, "{exit}");
    assert_eq!(events[9].json()["exit_status"], 137, "{:?}", events[9]);

    // Filters: topics joined with "or"; a namespace.
    exits.sync(&env.ns);
    let seen = exits.events();
    assert!(
        seen.iter()
            .all(|e| e.topic == "/tasks/exit" || e.topic == "/namespaces/create"),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|e| e.topic == "/tasks/exit" && e.json()["container_id"] == "once" && e.json()["exit_status"] == 7),
        "{seen:#?}"
    );
    elsewhere.sync(&other);
    let seen = elsewhere.events();
    assert!(seen.iter().all(|e| e.namespace == other), "{seen:#?}");

    env.assert_nothing_left(&["once", id]);
}
