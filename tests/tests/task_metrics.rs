//! Per-container metrics: `ctr tasks metrics` (the shim's Stats through the
//! tasks service) and the series on /v1/metrics, named as containerd 1.6
//! names them and labelled with the container id and namespace, present
//! while the container runs (across a daemon restart) and gone once it is
//! removed.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Stdio,
};

use corten_tests::{
    system_tool,
    tasks::{cgroup_v2, Env},
    wait_for,
};

/// The value of the first sample of `name` for container `id` in `ns`.
fn sample(body: &str, name: &str, id: &str, ns: &str) -> Option<f64> {
    let id_label = format!(r#"container_id="{id}""#);
    let ns_label = format!(r#"namespace="{ns}""#);
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| l.contains(&id_label) && l.contains(&ns_label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Every sample line labelled with container `id`.
fn series_of(body: &str, id: &str) -> Vec<String> {
    let id_label = format!(r#"container_id="{id}""#);
    body.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&id_label))
        .map(str::to_string)
        .collect()
}

/// containerd 1.6's names, which depend on the cgroup version the shim
/// reports: (CPU time, memory in use, pids).
fn names() -> (&'static str, &'static str, &'static str) {
    if cgroup_v2() {
        (
            "container_cpu_usage_usec",
            "container_memory_usage_bytes",
            "container_pids_current",
        )
    } else {
        (
            "container_cpu_total_nanoseconds",
            "container_memory_usage_usage_bytes",
            "container_pids_current",
        )
    }
}

/// GET /v1/metrics as HTTP/1.0, so the body comes whole, never chunked
/// (large expositions are, over HTTP/1.1, from Go's server at least).
fn scrape(env: &Env) -> String {
    let mut stream = TcpStream::connect(&env.d.metrics).expect("connect to metrics");
    stream
        .write_all(b"GET /v1/metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default();
    assert!(status.contains(" 200"), "{status}");
    body.to_string()
}

/// The exposition parses (promtool exits 1 on a parse error; 3 only for
/// lint findings, which containerd's own container_* names give too:
/// nanoseconds rather than seconds, `_total` on gauges).
fn assert_parses(body: &str) {
    let mut promtool = std::process::Command::new(system_tool("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = promtool.stdin.take().unwrap();
    let input = body.to_string();
    // promtool stops reading at a parse error: its report says why.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = promtool.wait_with_output().unwrap();
    let _ = writer.join();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)) && !report.contains("error while linting"),
        "promtool ({}): {report}",
        out.status
    );
}

#[test]
fn per_container_metrics_while_it_runs() {
    let mut env = Env::start("metrics");
    let id = "measured";
    env.run_detached(id, &["sleep", "1000"]);

    // ctr tasks metrics: a table, and JSON of the cgroup stats.
    let table = env.ctr_ok("tasks metrics", &["tasks", "metrics", id]);
    assert!(table.contains(id) && table.contains("METRIC"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("pids.current")), "{table}");
    let json: serde_json::Value = serde_json::from_str(&env.ctr_ok(
        "tasks metrics --format json",
        &["tasks", "metrics", "--format", "json", id],
    ))
    .unwrap();
    assert!(json["pids"]["current"].as_u64().unwrap_or_default() >= 1, "{json}");
    assert!(json["memory"].is_object(), "{json}");
    assert!(json["cpu"].is_object(), "{json}");

    // /v1/metrics.
    let (cpu, memory, pids) = names();
    let check = |env: &Env| {
        let mut body = String::new();
        wait_for("the container's series on /v1/metrics", || {
            body = scrape(env);
            sample(&body, pids, id, &env.ns).is_some()
        });
        assert!(sample(&body, pids, id, &env.ns).unwrap() >= 1.0, "{body}");
        assert!(sample(&body, memory, id, &env.ns).unwrap_or_default() > 0.0, "{body}");
        assert!(sample(&body, cpu, id, &env.ns).is_some(), "{body}");
        assert_parses(&body);
    };
    check(&env);

    // After a restart the recovered task is measured again.
    env.d.restart();
    env.wait_status(id, "RUNNING");
    check(&env);

    env.remove(id);
    wait_for("the removed container's series to go", || {
        series_of(&scrape(&env), id).is_empty()
    });
    env.assert_nothing_left(&[id]);
}
