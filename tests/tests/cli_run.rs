//! `corten run`, `corten tasks ...`, `corten containers ...` and `corten
//! events` against a real cortend, Debian's `containerd-shim-runc-v2` and
//! runc: output and exit codes, the records and tasks they make as both
//! corten and the real `ctr` see them, their events, one-line errors, and
//! that nothing is left behind once a container is removed.
//!
//! Every test has its own daemon, registry and containerd namespace (see
//! `corten_tests::tasks`).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use corten_tests::{
    bin,
    tasks::{
        cgroup_v2, in_terminal, parse_tasks, shim_pids, tail, wait_output, Env, Event, Events, Task, CTR_DEADLINE,
    },
    wait_for, DEADLINE,
};
use nix::{
    sys::signal::{self, Signal},
    unistd::Pid,
};
use serde_json::Value;

const RUNC_V2: &str = "io.containerd.runc.v2";

// ---------------------------------------------------------------- helpers

/// `corten --address SOCKET --namespace NS ARGS...`, not started.
fn corten_command(env: &Env, args: &[&str]) -> Command {
    let mut command = Command::new(bin("corten"));
    command
        .arg("--address")
        .arg(&env.d.socket)
        .arg("--namespace")
        .arg(&env.ns)
        .args(args);
    command
}

/// `corten ARGS...` with `input` on its stdin (written as soon as it runs,
/// then closed), within [`CTR_DEADLINE`].
fn corten_with_input(env: &Env, args: &[&str], input: &[u8]) -> Output {
    let mut child = corten_command(env, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corten");
    let mut stdin = child.stdin.take().expect("corten stdin");
    let input = input.to_vec();
    // From a thread, so a corten that fails early cannot block us on a full pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = wait_output(child, CTR_DEADLINE, &format!("corten {}", args.join(" ")));
    let _ = writer.join();
    out
}

/// `corten ARGS...`, stdin empty, within [`CTR_DEADLINE`].
fn corten(env: &Env, args: &[&str]) -> Output {
    let child = corten_command(env, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corten");
    wait_output(child, CTR_DEADLINE, &format!("corten {}", args.join(" ")))
}

fn describe(env: &Env, args: &[&str], out: &Output) -> String {
    format!(
        "corten {} ({}):\nstdout: {}\nstderr: {}\ncortend log (tail):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&env.d.log(), 40)
    )
}

/// Asserts that `corten ARGS` succeeds, printing nothing on stderr, and
/// returns its stdout.
fn corten_ok(env: &Env, what: &str, args: &[&str]) -> String {
    let out = corten(env, args);
    assert!(out.status.success(), "{what}: {}", describe(env, args, &out));
    assert!(
        out.stderr.is_empty(),
        "{what}: stderr not empty: {}",
        describe(env, args, &out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `out` is a failure of corten's: a non-zero exit, nothing on
/// stdout, exactly one `corten: ...` line on stderr, which it returns.
fn one_line_failure(env: &Env, what: &str, args: &[&str], out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{what}: unexpectedly succeeded: {}",
        describe(env, args, out)
    );
    assert_eq!(out.status.code(), Some(1), "{what}: {}", describe(env, args, out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.starts_with("corten: ") && err.ends_with('\n') && err.lines().count() == 1,
        "{what}: not one `corten: ...` line: {}",
        describe(env, args, out)
    );
    assert!(out.stdout.is_empty(), "{what}: {}", describe(env, args, out));
    eprintln!("{what}: {}", err.trim_end());
    err
}

/// Asserts that `corten ARGS` fails with one line, and returns it.
fn corten_fails(env: &Env, what: &str, args: &[&str]) -> String {
    let out = corten(env, args);
    one_line_failure(env, what, args, &out)
}

/// `corten tasks ls`, parsed (the same columns as ctr's).
fn corten_tasks(env: &Env) -> Vec<Task> {
    let listing = corten_ok(env, "corten tasks ls", &["tasks", "ls"]);
    assert!(
        listing
            .lines()
            .next()
            .is_some_and(|h| h.split_whitespace().eq(["TASK", "PID", "STATUS"])),
        "{listing}"
    );
    parse_tasks(&listing)
}

/// `corten tasks ls --format json`.
fn corten_tasks_json(env: &Env) -> Vec<Value> {
    let text = corten_ok(
        env,
        "corten tasks ls --format json",
        &["tasks", "ls", "--format", "json"],
    );
    match serde_json::from_str(&text) {
        Ok(Value::Array(tasks)) => tasks,
        _ => panic!("corten tasks ls --format json is not a JSON array:\n{text}"),
    }
}

/// Polls `corten tasks ls` until task `id` shows `status`.
fn corten_wait_status(env: &Env, id: &str, status: &str) -> Task {
    let start = Instant::now();
    loop {
        let tasks = corten_tasks(env);
        if let Some(task) = tasks.iter().find(|t| t.id == id && t.status == status) {
            return task.clone();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "corten tasks ls: {id} not {status} after {DEADLINE:?}: {tasks:?}\ncortend log (tail):\n{}",
            tail(&env.d.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `corten containers ls -q`.
fn corten_containers(env: &Env) -> Vec<String> {
    corten_ok(env, "corten containers ls -q", &["containers", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The keys of the overlayfs snapshots in the namespace, as ctr lists them.
fn snapshot_keys(env: &Env) -> Vec<String> {
    env.ctr_ok("list snapshots", &["snapshots", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Nothing of container `id` is left: no record, no task, no snapshot, no
/// shim, mount, bundle, cgroup or runc state.
fn assert_gone(env: &Env, id: &str) {
    assert!(
        !corten_containers(env).contains(&id.to_string()),
        "container {id} still listed"
    );
    assert!(corten_tasks(env).iter().all(|t| t.id != id), "task {id} still listed");
    assert!(!snapshot_keys(env).contains(&id.to_string()), "snapshot {id} left");
    env.assert_nothing_left(&[id]);
}

/// The entries of directory `dir` (none if it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(list) => list.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// The integer a table's `NAME VALUE` row holds.
fn table_value(table: &str, name: &str) -> u64 {
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} row:\n{table}"));
    row.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number:\n{table}"))
}

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

/// The `/tasks/*` topics of container `id` in `events` (table lines), in
/// the order they came.
fn task_topics(events: &[Event], id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.topic.starts_with("/tasks/") && e.json()["container_id"] == id)
        .map(|e| e.topic.clone())
        .collect()
}

const LIFECYCLE: [&str; 4] = ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"];

// ---------------------------------------------------------------- tests

/// `corten run` in the foreground: output, exit codes, stdin, a terminal,
/// signals passed on, a task killed from outside, a container kept without
/// `--rm`, and the events of it all in both of `corten events`' formats and
/// through filters.
#[test]
fn run_in_the_foreground_with_events() {
    let env = Env::start("cli-run-fg");
    let fifos = env.d.dir.path().join("fifo");
    let fifo_dir = fifos.to_string_lossy().into_owned();
    let table = Events::subscribe_corten(&env.d, &env.ns, &[]);
    let json = Events::subscribe_corten(&env.d, &env.ns, &["--format", "json"]);
    // Filters: any one matching lets an event through.
    let exits = Events::subscribe_corten(
        &env.d,
        &env.ns,
        &["topic==\"/tasks/exit\"", "topic==\"/namespaces/create\""],
    );

    let run = |id: &str, command: &[&str]| {
        let mut args = vec!["run", "--rm", "--fifo-dir", &fifo_dir, &env.image, id];
        args.extend_from_slice(command);
        let out = corten(&env, &args);
        let what = describe(&env, &args, &out);
        (out, what)
    };

    let (out, what) = run("hello", &["echo", "hello"]);
    assert!(out.status.success(), "{what}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    let (out, what) = run("seven", &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{what}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "an exit status is not an error"
    );

    // The task's stderr reaches corten's stderr, not its stdout.
    let (out, what) = run("stderr", &["sh", "-c", "echo oops >&2; echo out"]);
    assert!(out.status.success(), "{what}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    // stdin: written at once and closed, before the task even exists; its
    // end still reaches `cat`.
    let input = b"through stdin\nand a second line\n";
    let args = ["run", "--rm", "--fifo-dir", &fifo_dir, &env.image, "cat", "cat"];
    let out = corten_with_input(&env, &args, input);
    assert!(out.status.success(), "{}", describe(&env, &args, &out));
    assert_eq!(out.stdout, input);

    // More than a pipe holds, both ways.
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| format!("{i}\n").into_bytes()).collect();
    let args = ["run", "--rm", "--fifo-dir", &fifo_dir, &env.image, "bigcat", "cat"];
    let out = corten_with_input(&env, &args, &big);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.stdout == big,
        "cat returned {} of {} bytes",
        out.stdout.len(),
        big.len()
    );

    // A stdin that stays open (nobody writes, nobody closes it) does not
    // keep `corten run` once the task has exited.
    let args = [
        "run",
        "--rm",
        "--fifo-dir",
        &fifo_dir,
        &env.image,
        "open-stdin",
        "echo",
        "done",
    ];
    let mut child = corten_command(&env, &args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corten");
    let held = child.stdin.take();
    let out = wait_output(child, CTR_DEADLINE, "corten run with an open stdin");
    drop(held);
    assert!(out.status.success(), "{}", describe(&env, &args, &out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");

    // -t: the shell sees a terminal on stdin and stdout.
    let corten_bin = bin("corten");
    let socket = env.d.socket.to_string_lossy().into_owned();
    let command = shell_words(&[
        &corten_bin.to_string_lossy(),
        "--address",
        &socket,
        "--namespace",
        &env.ns,
        "run",
        "-t",
        "--rm",
        "--fifo-dir",
        &fifo_dir,
        &env.image,
        "tty",
        "sh",
    ]);
    let (status, shown) = in_terminal(
        &command,
        b"test -t 0 && test -t 1 && echo tty-ok; exit 3\n",
        CTR_DEADLINE,
    );
    assert_eq!(
        status.code(),
        Some(3),
        "terminal showed:\n{shown}\n{}",
        tail(&env.d.log(), 40)
    );
    assert!(
        shown.lines().any(|l| l.trim() == "tty-ok"),
        "the shell did not see a terminal:\n{shown}"
    );

    // Signals corten receives reach the task: a shell that traps SIGTERM
    // (as the container's init it hears nothing it does not trap).
    let script = "trap 'echo got-term; exit 5' TERM; sleep 1000 & wait";
    let args = [
        "run",
        "--rm",
        "--fifo-dir",
        &fifo_dir,
        &env.image,
        "forward",
        "sh",
        "-c",
        script,
    ];
    let child = corten_command(&env, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corten");
    let pid = Pid::from_raw(child.id() as i32);
    corten_wait_status(&env, "forward", "RUNNING");
    // The trap is set once `sleep` runs.
    wait_for("the shell's sleep", || {
        corten_ok(&env, "tasks ps", &["tasks", "ps", "forward"]).lines().count() == 3
    });
    signal::kill(pid, Signal::SIGTERM).expect("signal corten run");
    let out = wait_output(child, CTR_DEADLINE, "corten run forward");
    assert_eq!(out.status.code(), Some(5), "{}", describe(&env, &args, &out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got-term\n");

    // A task killed from outside: `corten run` ends with its status.
    let args = [
        "run",
        "--rm",
        "--fifo-dir",
        &fifo_dir,
        &env.image,
        "victim",
        "sleep",
        "1000",
    ];
    let child = corten_command(&env, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corten");
    corten_wait_status(&env, "victim", "RUNNING");
    corten_ok(
        &env,
        "kill the foreground task",
        &["tasks", "kill", "-s", "SIGKILL", "victim"],
    );
    let out = wait_output(child, CTR_DEADLINE, "corten run victim");
    assert_eq!(out.status.code(), Some(137), "{}", describe(&env, &args, &out));
    assert!(out.stderr.is_empty(), "{}", describe(&env, &args, &out));

    // Without --rm the container (and its snapshot) stays; its task goes.
    let args = ["run", "--fifo-dir", &fifo_dir, &env.image, "kept", "true"];
    let out = corten(&env, &args);
    assert!(out.status.success(), "{}", describe(&env, &args, &out));
    assert_eq!(corten_containers(&env), ["kept"]);
    assert!(corten_tasks(&env).is_empty(), "{:?}", corten_tasks(&env));
    assert!(snapshot_keys(&env).contains(&"kept".to_string()));
    corten_ok(&env, "remove the kept container", &["containers", "rm", "kept"]);

    for id in [
        "hello", "seven", "stderr", "cat", "bigcat", "tty", "forward", "victim", "kept",
    ] {
        assert_gone(&env, id);
    }
    assert!(
        entries(&fifos).is_empty(),
        "FIFO directories left: {:?}",
        entries(&fifos)
    );
    let leases = env.ctr_ok("list leases", &["leases", "ls", "-q"]);
    assert!(leases.trim().is_empty(), "leases left:\n{leases}");

    // The events, in containerd's order, in ctr's line format.
    table.sync(&env.ns);
    let events: Vec<Event> = table.lines().iter().filter_map(|l| Event::parse(l)).collect();
    let ours: Vec<&Event> = events.iter().filter(|e| e.namespace == env.ns).collect();
    for id in ["hello", "seven", "cat", "tty", "forward", "victim", "kept"] {
        assert_eq!(
            task_topics(&events, id),
            LIFECYCLE,
            "{id}:\n{}",
            table.lines().join("\n")
        );
        for topic in ["/containers/create", "/containers/delete"] {
            assert!(
                ours.iter().any(|e| e.topic == topic && e.json()["id"] == id),
                "no {topic} of {id}:\n{}",
                table.lines().join("\n")
            );
        }
    }
    let exit = |id: &str| {
        events
            .iter()
            .find(|e| e.topic == "/tasks/exit" && e.json()["container_id"] == id)
            .map(Event::json)
            .unwrap_or_default()
    };
    assert_eq!(exit("seven")["exit_status"], 7, "{:?}", exit("seven"));
    assert_eq!(exit("tty")["exit_status"], 3, "{:?}", exit("tty"));
    // Go leaves a zero exit status out.
    assert!(exit("hello").get("exit_status").is_none(), "{:?}", exit("hello"));
    let create = events
        .iter()
        .find(|e| e.topic == "/tasks/create" && e.json()["container_id"] == "hello")
        .map(Event::json)
        .unwrap_or_default();
    assert!(
        create["io"]["stdout"]
            .as_str()
            .is_some_and(|p| p.starts_with(&fifo_dir)),
        "{create}"
    );
    assert!(create["pid"].as_u64().is_some_and(|p| p > 1), "{create}");

    // The same, one JSON object a line.
    json.sync(&env.ns);
    let objects: Vec<Value> = json
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let topics = |id: &str| {
        objects
            .iter()
            .filter(|o| {
                o["namespace"] == env.ns.as_str()
                    && o["topic"].as_str().is_some_and(|t| t.starts_with("/tasks/"))
                    && o["event"]["container_id"] == id
            })
            .map(|o| o["topic"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    for id in ["hello", "seven", "cat"] {
        assert_eq!(topics(id), LIFECYCLE, "{id}:\n{}", json.lines().join("\n"));
    }
    let exit = objects
        .iter()
        .find(|o| o["topic"] == "/tasks/exit" && o["event"]["container_id"] == "seven")
        .unwrap_or_else(|| panic!("{}", json.lines().join("\n")));
    assert_eq!(exit["event"]["exit_status"], 7, "{exit}");
    assert!(exit["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{exit}");

    // Only what the filters let through.
    exits.sync(&env.ns);
    let events: Vec<Event> = exits.lines().iter().filter_map(|l| Event::parse(l)).collect();
    assert!(
        events
            .iter()
            .all(|e| e.topic == "/tasks/exit" || e.topic == "/namespaces/create"),
        "{}",
        exits.lines().join("\n")
    );
    let statuses: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e.topic == "/tasks/exit" && e.namespace == env.ns)
        .map(|e| {
            let json = e.json();
            let id = json["container_id"].as_str().unwrap_or_default().to_string();
            (id, json["exit_status"].as_u64().unwrap_or(0))
        })
        .collect();
    let want: Vec<(String, u64)> = [
        ("hello", 0),
        ("seven", 7),
        ("stderr", 0),
        ("cat", 0),
        ("bigcat", 0),
        ("open-stdin", 0),
        ("tty", 3),
        ("forward", 5),
        ("victim", 137),
        ("kept", 0),
    ]
    .iter()
    .map(|(id, code)| (id.to_string(), *code))
    .collect();
    assert_eq!(statuses, want, "{}", exits.lines().join("\n"));
}

/// `corten run -d` and then every `corten tasks` and `corten containers`
/// command on the running container, up to its removal.
#[test]
fn detached_container_lifecycle() {
    let env = Env::start("cli-detached");
    let id = "sleeper";

    let args = ["run", "-d", "--label", "team=blue", &env.image, id, "sleep", "1000"];
    let out = corten_ok(&env, "corten run -d", &args);
    assert_eq!(out, "", "corten run -d prints nothing");
    let task = corten_wait_status(&env, id, "RUNNING");
    assert!(task.pid > 1, "{task:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", task.pid)).unwrap_or_default();
    assert_eq!(cmdline, b"sleep\x001000\x00", "pid {} is not the task", task.pid);
    // What the leftover checks look for is there while it runs.
    assert_eq!(shim_pids(&env.ns, Some(id)).len(), 1, "one shim for {id}");
    assert!(env.bundle(id).join("config.json").is_file());
    assert!(!env.cgroup_dirs(id).is_empty(), "no cgroup /{}/{id}", env.ns);

    // tasks ls: the table (checked by corten_wait_status), -q and JSON.
    assert_eq!(
        corten_ok(&env, "tasks ls -q", &["tasks", "ls", "-q"]),
        format!("{id}\n")
    );
    let tasks = corten_tasks_json(&env);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["id"], id);
    assert_eq!(tasks[0]["pid"], task.pid);
    assert_eq!(tasks[0]["status"], "RUNNING");
    assert_eq!(tasks[0]["terminal"], false);
    assert!(tasks[0]["exit_status"].is_null(), "{}", tasks[0]);

    // containers ls and info.
    let listing = corten_ok(&env, "containers ls", &["containers", "ls"]);
    let rows: Vec<Vec<&str>> = listing.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        [
            vec!["CONTAINER", "IMAGE", "RUNTIME"],
            vec![id, env.image.as_str(), RUNC_V2]
        ],
        "{listing}"
    );
    let list: Value = serde_json::from_str(&corten_ok(
        &env,
        "containers ls --format json",
        &["containers", "ls", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(list[0]["id"], id, "{list}");
    assert_eq!(list[0]["snapshot_key"], id, "{list}");
    assert_eq!(list[0]["runtime"], RUNC_V2, "{list}");
    let info: Value = serde_json::from_str(&corten_ok(&env, "containers info", &["containers", "info", id])).unwrap();
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
    assert_eq!(
        info["Spec"]["linux"]["cgroupsPath"],
        format!("/{}/{id}", env.ns),
        "{info}"
    );
    let spec: Value = serde_json::from_str(&corten_ok(
        &env,
        "containers info --spec",
        &["containers", "info", "--spec", id],
    ))
    .unwrap();
    assert_eq!(spec, info["Spec"]);
    // ctr reads the same record.
    let ctr_info: Value =
        serde_json::from_str(&env.ctr_ok("ctr containers info", &["containers", "info", id])).unwrap();
    assert_eq!(ctr_info["Spec"], info["Spec"]);
    assert_eq!(ctr_info["SnapshotKey"], id);
    // The label, on the record and as an annotation of the spec; filters.
    assert_eq!(info["Labels"]["team"], "blue", "{info}");
    assert_eq!(info["Spec"]["annotations"]["team"], "blue", "{info}");
    let image_filter = format!("image=={}", env.image);
    for (filter, want) in [
        ("labels.team==blue", vec![id]),
        ("labels.team==red", vec![]),
        (image_filter.as_str(), vec![id]),
        ("image==elsewhere", vec![]),
    ] {
        let listed = corten_ok(&env, "containers ls FILTER", &["containers", "ls", "-q", filter]);
        assert_eq!(listed.lines().collect::<Vec<_>>(), want, "{filter}");
    }

    // metrics, before any exec: the task's one process.
    let kind = if cgroup_v2() {
        "io.containerd.cgroups.v2.Metrics"
    } else {
        "io.containerd.cgroups.v1.Metrics"
    };
    let metrics = corten_ok(&env, "tasks metrics", &["tasks", "metrics", id]);
    let mut lines = metrics.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.split_whitespace().eq(["ID", "TIMESTAMP"])),
        "{metrics}"
    );
    assert_eq!(
        lines.next().and_then(|l| l.split_whitespace().next()),
        Some(id),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l.split_whitespace().eq(["METRIC", "VALUE"])),
        "{metrics}"
    );
    assert_eq!(table_value(&metrics, "pids.current"), 1, "{metrics}");
    let metrics: Value = serde_json::from_str(&corten_ok(
        &env,
        "tasks metrics json",
        &["tasks", "metrics", "--format", "json", id],
    ))
    .unwrap();
    assert_eq!(metrics["id"], id, "{metrics}");
    assert!(metrics["type"].as_str().is_some_and(|t| t.ends_with(kind)), "{metrics}");
    assert_eq!(metrics["metrics"]["pids.current"], 1, "{metrics}");
    let memory = if cgroup_v2() {
        "memory.usage"
    } else {
        "memory.usage_in_bytes"
    };
    assert!(metrics["metrics"][memory].as_u64().is_some_and(|m| m > 0), "{metrics}");

    // exec: output, exit codes, stdin, an exec id used again once free.
    for _ in 0..2 {
        let ls = corten_ok(&env, "exec ls", &["tasks", "exec", "--exec-id", "e", id, "ls", "/"]);
        for dir in ["bin", "dev", "etc", "proc", "sys"] {
            assert!(ls.lines().any(|l| l == dir), "ls / in the container: {ls}");
        }
    }
    let out = corten(&env, &["tasks", "exec", id, "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let out = corten_with_input(&env, &["tasks", "exec", id, "cat"], b"into an exec\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "into an exec\n");
    let out = corten(
        &env,
        &[
            "tasks",
            "exec",
            "--env",
            "GREETING=hi",
            "--cwd",
            "/etc",
            id,
            "sh",
            "-c",
            "echo $GREETING $PWD",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi /etc\n");
    // exec -t: a terminal of its own.
    let corten_bin = bin("corten");
    let socket = env.d.socket.to_string_lossy().into_owned();
    let command = shell_words(&[
        &corten_bin.to_string_lossy(),
        "--address",
        &socket,
        "--namespace",
        &env.ns,
        "tasks",
        "exec",
        "-t",
        id,
        "sh",
    ]);
    let (status, shown) = in_terminal(
        &command,
        b"test -t 0 && test -t 1 && echo exec-tty-ok; exit 6\n",
        CTR_DEADLINE,
    );
    assert_eq!(
        status.code(),
        Some(6),
        "terminal showed:\n{shown}\n{}",
        tail(&env.d.log(), 40)
    );
    assert!(
        shown.lines().any(|l| l.trim() == "exec-tty-ok"),
        "the exec'd shell did not see a terminal:\n{shown}"
    );
    let args = ["tasks", "exec", "--exec-id", "missing", id, "nosuchbinary"];
    let err = corten_fails(&env, "exec a missing binary", &args);
    assert!(err.contains("nosuchbinary"), "{err}");

    // ps: the task, and a detached exec labelled with its id.
    corten_ok(
        &env,
        "exec -d",
        &["tasks", "exec", "-d", "--exec-id", "bg", id, "sleep", "500"],
    );
    let ps = corten_ok(&env, "tasks ps", &["tasks", "ps", id]);
    let rows: Vec<Vec<&str>> = ps.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "{ps}");
    assert_eq!(rows[0], ["PID", "INFO"], "{ps}");
    let task_pid = task.pid.to_string();
    assert!(rows.iter().any(|r| r[0] == task_pid && r[1] == "-"), "{ps}");
    let bg = rows
        .iter()
        .find(|r| r[1] == "exec_id=bg")
        .unwrap_or_else(|| panic!("no row for exec bg: {ps}"));
    let bg_pid: u32 = bg[0].parse().unwrap();
    let cmdline = std::fs::read(format!("/proc/{bg_pid}/cmdline")).unwrap_or_default();
    assert_eq!(cmdline, b"sleep\x00500\x00");
    let ps: Value = serde_json::from_str(&corten_ok(
        &env,
        "tasks ps json",
        &["tasks", "ps", "--format", "json", id],
    ))
    .unwrap();
    let mut want = vec![
        serde_json::json!({"pid": task.pid}),
        serde_json::json!({"pid": bg_pid, "exec_id": "bg"}),
    ];
    want.sort_by_key(|p| p["pid"].as_u64());
    let mut got = ps.as_array().cloned().unwrap_or_default();
    got.sort_by_key(|p| p["pid"].as_u64());
    assert_eq!(got, want, "{ps}");
    let err = corten_fails(
        &env,
        "a second exec with a running exec's id",
        &["tasks", "exec", "--exec-id", "bg", id, "true"],
    );
    assert!(err.contains("already exists"), "{err}");
    let metrics = serde_json::from_str::<Value>(&corten_ok(
        &env,
        "metrics",
        &["tasks", "metrics", "--format", "json", id],
    ))
    .unwrap();
    assert_eq!(metrics["metrics"]["pids.current"], 2, "{metrics}");
    corten_ok(
        &env,
        "kill the exec",
        &["tasks", "kill", "--exec-id", "bg", "-s", "SIGKILL", id],
    );
    wait_for("the killed exec to leave tasks ps", || {
        corten_ok(&env, "tasks ps", &["tasks", "ps", id]).lines().count() == 2
    });

    // pause and resume.
    corten_ok(&env, "pause", &["tasks", "pause", id]);
    assert_eq!(corten_wait_status(&env, id, "PAUSED").pid, task.pid);
    assert_eq!(corten_tasks_json(&env)[0]["status"], "PAUSED");
    assert_eq!(
        env.task(id).map(|t| t.status),
        Some("PAUSED".to_string()),
        "ctr sees it paused"
    );
    corten_ok(&env, "resume", &["tasks", "resume", id]);
    assert_eq!(corten_wait_status(&env, id, "RUNNING").pid, task.pid);

    // A running task is neither removed nor is its container.
    let err = corten_fails(&env, "tasks rm while running", &["tasks", "rm", id]);
    assert!(
        err.contains(id) && err.contains("RUNNING") && err.contains("--force"),
        "{err}"
    );
    let err = corten_fails(&env, "containers rm while running", &["containers", "rm", id]);
    assert!(err.contains(id) && err.contains("RUNNING"), "{err}");
    assert_eq!(corten_wait_status(&env, id, "RUNNING").pid, task.pid);
    assert_eq!(corten_containers(&env), [id]);

    // kill; the exit status shows in the listing and comes with the removal.
    corten_ok(&env, "kill", &["tasks", "kill", "-s", "SIGKILL", id]);
    assert_eq!(corten_wait_status(&env, id, "STOPPED").pid, task.pid);
    let stopped = corten_tasks_json(&env);
    assert_eq!(stopped[0]["exit_status"], 137, "{stopped:?}");
    assert!(stopped[0]["exited_at"].is_string(), "{stopped:?}");
    let out = corten(&env, &["tasks", "rm", id]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("corten: task {id} exited with status 137\n")
    );
    assert!(corten_tasks(&env).is_empty());
    assert_eq!(corten_containers(&env), [id]);
    let err = corten_fails(&env, "tasks rm again", &["tasks", "rm", id]);
    assert!(err.contains(id) && err.contains("NotFound"), "{err}");

    corten_ok(&env, "containers rm", &["containers", "rm", id]);
    assert!(corten_containers(&env).is_empty());
    assert_gone(&env, id);

    // A detached task's output goes nowhere, however much there is: it
    // never blocks on a full pipe.
    let script = "dd if=/dev/zero bs=1024 count=4096; echo written > /tmp/done; exec sleep 1000";
    corten_ok(
        &env,
        "run -d a chatty task",
        &["run", "-d", &env.image, "chatty", "sh", "-c", script],
    );
    wait_for("the chatty task to write everything", || {
        corten(&env, &["tasks", "exec", "chatty", "cat", "/tmp/done"]).stdout == b"written\n"
    });
    let out = corten(&env, &["tasks", "rm", "-f", "chatty"]);
    assert!(out.status.success(), "{out:?}");
    corten_ok(&env, "containers rm", &["containers", "rm", "chatty"]);
    assert_gone(&env, "chatty");
}

/// Bad input: each a non-zero exit and one clear line, and nothing left
/// behind by the failed command (nor anything it should not touch gone).
#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    let env = Env::start("cli-errors");

    // An image that is not there (and is not pulled).
    let host = env.image.split('/').next().unwrap_or_default();
    let missing = format!("{host}/nosuch/image:1");
    for flags in [&["--rm"][..], &["-d"][..], &[][..]] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend([missing.as_str(), "ghost", "true"]);
        let err = corten_fails(&env, "run an unknown image", &args);
        assert!(err.contains(&missing) && err.contains("not found"), "{err}");
        assert_gone(&env, "ghost");
    }

    // A duplicate ID: the container that has it keeps running untouched.
    corten_ok(&env, "run -d", &["run", "-d", &env.image, "dup", "sleep", "1000"]);
    let task = corten_wait_status(&env, "dup", "RUNNING");
    for flags in [&["--rm"][..], &["-d"][..], &[][..]] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend([env.image.as_str(), "dup", "echo", "second"]);
        let err = corten_fails(&env, "run a duplicate id", &args);
        assert!(err.contains("\"dup\"") && err.contains("already exists"), "{err}");
        assert_eq!(corten_wait_status(&env, "dup", "RUNNING").pid, task.pid);
        assert!(
            snapshot_keys(&env).contains(&"dup".to_string()),
            "the first dup's snapshot is gone"
        );
        let info: Value =
            serde_json::from_str(&corten_ok(&env, "containers info", &["containers", "info", "dup"])).unwrap();
        assert_eq!(
            info["Spec"]["process"]["args"],
            serde_json::json!(["sleep", "1000"]),
            "{info}"
        );
    }
    // The task still works: exec into it.
    assert_eq!(
        corten_ok(&env, "exec", &["tasks", "exec", "dup", "echo", "alive"]),
        "alive\n"
    );

    // tasks rm of a running task needs --force; with it, the task goes.
    let err = corten_fails(&env, "tasks rm while running", &["tasks", "rm", "dup"]);
    assert!(err.contains("\"dup\"") && err.contains("--force"), "{err}");
    assert_eq!(corten_wait_status(&env, "dup", "RUNNING").pid, task.pid);
    // With it the task goes; several IDs: each one failing is one line
    // and the others are still removed.
    let args = ["tasks", "rm", "--force", "nosuch", "dup"];
    let out = corten(&env, &args);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&env, &args, &out));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("corten: ") && lines[0].contains("\"nosuch\"") && lines[0].contains("not found"),
        "{err}"
    );
    assert_eq!(lines[1], "corten: task dup exited with status 137", "{err}");
    assert!(corten_tasks(&env).is_empty());
    let args = ["containers", "rm", "dup", "nosuch"];
    let out = corten(&env, &args);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&env, &args, &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().count() == 1 && err.contains("\"nosuch\""), "{err}");
    assert_gone(&env, "dup");

    // A process that cannot start: one line, and with --rm nothing left;
    // without, the container stays (as with ctr) but no task or shim.
    let err = corten_fails(
        &env,
        "run a missing binary",
        &["run", "--rm", &env.image, "nobin", "nosuchbinary"],
    );
    assert!(err.contains("nosuchbinary"), "{err}");
    assert_gone(&env, "nobin");
    for flags in [&["-d"][..], &[][..]] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend([env.image.as_str(), "nobin", "nosuchbinary"]);
        let err = corten_fails(&env, "run a missing binary", &args);
        assert!(err.contains("nosuchbinary"), "{err}");
        assert_eq!(corten_containers(&env), ["nobin"]);
        assert!(corten_tasks(&env).is_empty(), "{:?}", corten_tasks(&env));
        env.assert_nothing_left(&["nobin"]);
        corten_ok(&env, "containers rm", &["containers", "rm", "nobin"]);
        assert_gone(&env, "nobin");
    }

    // Commands on a container that does not exist.
    let commands: [&[&str]; 11] = [
        &["tasks", "ps", "nosuch"],
        &["tasks", "exec", "nosuch", "true"],
        &["tasks", "kill", "nosuch"],
        &["tasks", "kill", "-s", "SIGKILL", "nosuch"],
        &["tasks", "pause", "nosuch"],
        &["tasks", "resume", "nosuch"],
        &["tasks", "rm", "nosuch"],
        &["tasks", "metrics", "nosuch"],
        &["containers", "info", "nosuch"],
        &["containers", "rm", "nosuch"],
        &["tasks", "rm", "-f", "nosuch"],
    ];
    for args in commands {
        let err = corten_fails(&env, "a command on a missing container", args);
        assert!(err.contains("\"nosuch\"") && err.contains("not found"), "{err}");
    }

    // Commands on a task that a container does not have.
    let out = corten(&env, &["run", &env.image, "idle", "true"]);
    assert!(out.status.success(), "{}", describe(&env, &["run"], &out));
    let commands: [&[&str]; 7] = [
        &["tasks", "ps", "idle"],
        &["tasks", "exec", "idle", "true"],
        &["tasks", "kill", "-s", "SIGKILL", "idle"],
        &["tasks", "pause", "idle"],
        &["tasks", "resume", "idle"],
        &["tasks", "rm", "idle"],
        &["tasks", "metrics", "idle"],
    ];
    for args in commands {
        let err = corten_fails(&env, "a task command on a container without a task", args);
        assert!(err.contains("\"idle\""), "{err}");
    }
    assert_eq!(corten_containers(&env), ["idle"]);
    corten_ok(&env, "containers rm", &["containers", "rm", "idle"]);
    assert_gone(&env, "idle");

    // Bad arguments are caught before anything is made.
    let err = corten_fails(&env, "an unknown signal", &["tasks", "kill", "-s", "SIGNOPE", "nosuch"]);
    assert!(err.contains("SIGNOPE"), "{err}");
    let out = corten(&env, &["run", "--rm", "-d", &env.image, "both", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{out:?}");
    assert_gone(&env, "both");

    let leases = env.ctr_ok("list leases", &["leases", "ls", "-q"]);
    assert!(leases.trim().is_empty(), "leases left:\n{leases}");
}

/// What `corten run -d` makes, ctr sees and removes; what `ctr run -d`
/// makes, corten sees and removes; a kill without `-s` sends the stop
/// signal.
#[test]
fn corten_and_ctr_share_containers() {
    let env = Env::start("cli-interop");

    // corten makes it, ctr lists, execs into, kills and removes it.
    corten_ok(
        &env,
        "corten run -d",
        &["run", "-d", &env.image, "by-corten", "sleep", "1000"],
    );
    let task = env.wait_status("by-corten", "RUNNING");
    assert_eq!(corten_wait_status(&env, "by-corten", "RUNNING").pid, task.pid);
    let listing = env.ctr_ok("ctr containers ls", &["containers", "ls"]);
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().eq(["by-corten", env.image.as_str(), RUNC_V2])),
        "{listing}"
    );
    let hi = env.ctr_ok(
        "ctr exec",
        &["tasks", "exec", "--exec-id", "x", "by-corten", "echo", "hi"],
    );
    assert_eq!(hi, "hi\n");
    env.remove("by-corten");
    assert_gone(&env, "by-corten");

    // ctr makes it, corten lists, execs into, kills and removes it.
    env.run_detached("by-ctr", &["sleep", "1000"]);
    let task = corten_wait_status(&env, "by-ctr", "RUNNING");
    let listing = corten_ok(&env, "corten containers ls", &["containers", "ls"]);
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().eq(["by-ctr", env.image.as_str(), RUNC_V2])),
        "{listing}"
    );
    let json = corten_tasks_json(&env);
    let row = json
        .iter()
        .find(|t| t["id"] == "by-ctr")
        .expect("by-ctr in the JSON listing");
    assert_eq!(row["pid"], task.pid);
    // ctr's FIFOs for a detached task, left for whoever removes the task.
    let fifo_dir = row["stdout"]
        .as_str()
        .and_then(|p| Path::new(p).parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("ctr's task has no stdout FIFO: {row}"));
    assert!(fifo_dir.is_dir(), "{}", fifo_dir.display());
    assert_eq!(
        corten_ok(&env, "corten exec", &["tasks", "exec", "by-ctr", "echo", "hi"]),
        "hi\n"
    );
    let ps = corten_ok(&env, "corten tasks ps", &["tasks", "ps", "by-ctr"]);
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().next() == Some(&task.pid.to_string())),
        "{ps}"
    );
    corten_ok(
        &env,
        "corten exec -d",
        &["tasks", "exec", "-d", "--exec-id", "bg", "by-ctr", "sleep", "500"],
    );
    wait_for("the exec in tasks ps", || {
        corten_ok(&env, "tasks ps", &["tasks", "ps", "by-ctr"]).lines().count() == 3
    });
    corten_ok(
        &env,
        "corten kill --all",
        &["tasks", "kill", "--all", "-s", "SIGKILL", "by-ctr"],
    );
    assert_eq!(env.wait_status("by-ctr", "STOPPED").pid, task.pid);
    let out = corten(&env, &["tasks", "rm", "by-ctr"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "corten: task by-ctr exited with status 137\n"
    );
    assert!(
        !fifo_dir.exists(),
        "ctr's FIFO directory {} is left",
        fifo_dir.display()
    );
    assert!(env.task("by-ctr").is_none(), "{:?}", env.tasks());
    corten_ok(&env, "corten containers rm", &["containers", "rm", "by-ctr"]);
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    assert_gone(&env, "by-ctr");

    // Without -s, kill sends the stop signal (SIGTERM for busybox), which a
    // shell as the container's init only hears when it traps it.
    let script = "trap 'exit 9' TERM; sleep 1000 & wait";
    corten_ok(
        &env,
        "run a trapping shell",
        &["run", "-d", &env.image, "trap", "sh", "-c", script],
    );
    corten_wait_status(&env, "trap", "RUNNING");
    // The trap is set before `sleep` starts: wait for it to run.
    wait_for("the shell's sleep", || {
        corten_ok(&env, "tasks ps", &["tasks", "ps", "trap"]).lines().count() == 3
    });
    corten_ok(&env, "kill with the stop signal", &["tasks", "kill", "trap"]);
    corten_wait_status(&env, "trap", "STOPPED");
    let stopped = corten_tasks_json(&env);
    assert_eq!(stopped[0]["exit_status"], 9, "{stopped:?}");
    // containers rm takes a stopped task with it.
    corten_ok(&env, "containers rm", &["containers", "rm", "trap"]);
    assert_gone(&env, "trap");
}
