//! Restart recovery: cortend dies (SIGKILL) while containers run; their
//! shims keep them running; the restarted daemon finds them again by their
//! bundles, lists them, execs into them, kills them and delivers their exit
//! codes, and cleans up after a shim that died while it was down.

use std::path::Path;

use corten_tests::tasks::{shim_pids, Env, Events};
use nix::{sys::signal, unistd::Pid};

const CONTAINERS: usize = 10;

/// A container that exits with `code` on SIGTERM (ctr's default signal)
/// and keeps running otherwise. `wait` is interrupted by the trapped signal.
fn trapping(code: usize) -> String {
    format!("trap 'exit {code}' TERM; sleep 1000 & wait")
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
}

#[test]
fn running_containers_survive_a_daemon_crash() {
    let mut env = Env::start("recovery");
    let ids: Vec<String> = (0..CONTAINERS).map(|i| format!("r{i}")).collect();
    let mut pids = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let script = trapping(10 + i);
        pids.push(env.run_detached(id, &["sh", "-c", &script]).pid);
    }
    let shims: Vec<Vec<i32>> = ids.iter().map(|id| shim_pids(&env.ns, Some(id))).collect();
    assert!(shims.iter().all(|s| s.len() == 1), "one shim per container: {shims:?}");

    env.d.kill();
    // The containers and their shims do not depend on the daemon.
    for (pid, shim) in pids.iter().zip(&shims) {
        assert!(alive(*pid), "container process {pid} died with cortend");
        assert!(alive(shim[0] as u32), "shim {} died with cortend", shim[0]);
    }
    env.d
        .spawn()
        .unwrap_or_else(|log| panic!("cortend did not restart:\n{log}"));

    let tasks = env.tasks();
    for (id, pid) in ids.iter().zip(&pids) {
        let task = tasks
            .iter()
            .find(|t| &t.id == id)
            .unwrap_or_else(|| panic!("{id} is not listed after the restart: {tasks:?}\n{}", env.d.log()));
        assert_eq!((task.pid, task.status.as_str()), (*pid, "RUNNING"), "{id}");
    }
    assert_eq!(tasks.len(), CONTAINERS, "{tasks:?}");
    for (id, shim) in ids.iter().zip(&shims) {
        assert_eq!(&shim_pids(&env.ns, Some(id)), shim, "{id}'s shim was replaced");
    }

    let out = env.ctr_ok(
        "exec after the restart",
        &["tasks", "exec", "--exec-id", "after", "r3", "echo", "inside"],
    );
    assert_eq!(out, "inside\n");
    let ps = env.ctr_ok("ps after the restart", &["tasks", "ps", "r3"]);
    assert!(ps.contains(&pids[3].to_string()), "{ps}");

    let events = Events::subscribe(&env.d, &env.ns, &[]);
    for id in &ids {
        env.ctr_ok("kill after the restart", &["tasks", "kill", id]);
    }
    for (i, id) in ids.iter().enumerate() {
        let exit = events.wait_for(&format!("/tasks/exit of {id}"), |e| {
            e.namespace == env.ns && e.topic == "/tasks/exit" && e.json()["id"] == id.as_str()
        });
        assert_eq!(exit.json()["exit_status"], 10 + i, "{exit:?}");
        assert_eq!(exit.json()["pid"], pids[i], "{exit:?}");
        env.wait_status(id, "STOPPED");
        let out = env.ctr(&["tasks", "rm", id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ctr tasks rm {id}: {err}");
        assert!(
            err.contains(&format!("exit code {}", 10 + i)),
            "ctr tasks rm {id} reports the exit status: {err}"
        );
        env.ctr_ok("containers rm", &["containers", "rm", id]);
    }
    assert!(env.tasks().is_empty(), "{:?}", env.tasks());
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    env.assert_nothing_left(&ids);
}

/// While the daemon runs: the shim's connection drops, the daemon runs the
/// shim binary's `delete` (runc kills what is left of the container) and
/// publishes the exit it reports, 137 here (containerd publishes 255 only
/// when `delete` itself fails), then the task's delete.
#[test]
fn a_shim_that_dies_is_cleaned_up() {
    let env = Env::start("shim-dies");
    let events = Events::subscribe(&env.d, &env.ns, &[]);
    let task = env.run_detached("orphan", &["sleep", "1000"]);
    let shims = shim_pids(&env.ns, Some("orphan"));
    assert_eq!(shims.len(), 1, "{shims:?}");
    signal::kill(Pid::from_raw(shims[0]), signal::Signal::SIGKILL).unwrap();

    let exit = events.wait_for("/tasks/exit of orphan", |e| {
        e.namespace == env.ns && e.topic == "/tasks/exit" && e.json()["container_id"] == "orphan"
    });
    assert_eq!(exit.json()["id"], "orphan", "{exit:?}");
    assert_eq!(exit.json()["pid"], task.pid, "{exit:?}");
    assert_eq!(exit.json()["exit_status"], 137, "{exit:?}");
    let delete = events.wait_for("/tasks/delete of orphan", |e| {
        e.namespace == env.ns && e.topic == "/tasks/delete" && e.json()["container_id"] == "orphan"
    });
    assert_eq!(delete.json()["exit_status"], 137, "{delete:?}");
    corten_tests::wait_for("the container process to die", || !alive(task.pid));
    corten_tests::wait_for("the task to leave the list", || env.task("orphan").is_none());
    env.assert_nothing_left(&["orphan"]);

    // The container stays and can run again.
    assert_eq!(env.containers(), ["orphan"]);
    env.ctr_ok("start a new task", &["tasks", "start", "-d", "orphan"]);
    env.wait_status("orphan", "RUNNING");
    env.remove("orphan");
    env.assert_nothing_left(&["orphan"]);
}

#[test]
fn a_shim_that_died_while_the_daemon_was_down_is_cleaned_up() {
    let mut env = Env::start("dead-shim");
    let live = env.run_detached("live", &["sleep", "1000"]);
    let dead = env.run_detached("dead", &["sleep", "1000"]);
    let shims = shim_pids(&env.ns, Some("dead"));
    assert_eq!(shims.len(), 1, "{shims:?}");

    env.d.kill();
    signal::kill(Pid::from_raw(shims[0]), signal::Signal::SIGKILL).unwrap();
    signal::kill(Pid::from_raw(dead.pid as i32), signal::Signal::SIGKILL).unwrap();
    corten_tests::wait_for("the dead shim and its container to go", || {
        !alive(shims[0] as u32) && !alive(dead.pid)
    });
    env.d
        .spawn()
        .unwrap_or_else(|log| panic!("cortend did not restart:\n{log}"));

    // The dead task is gone (its shim's `delete` ran, its bundle removed),
    // the container stays, and the live one is untouched.
    corten_tests::wait_for("the dead task to leave the list", || env.task("dead").is_none());
    env.assert_nothing_left(&["dead"]);
    assert_eq!(
        env.task("live").map(|t| (t.pid, t.status)),
        Some((live.pid, "RUNNING".into()))
    );
    let mut containers = env.containers();
    containers.sort();
    assert_eq!(containers, ["dead", "live"]);

    // The container can run again.
    env.ctr_ok("start a new task", &["tasks", "start", "-d", "dead"]);
    env.wait_status("dead", "RUNNING");

    env.remove("dead");
    env.remove("live");
    env.assert_nothing_left(&["dead", "live"]);
}
