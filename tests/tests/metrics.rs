//! The Prometheus endpoint, checked by a real promtool.

use std::{io::Write, process::Stdio};

use corten_tests::{ok, system_tool, Daemon};

fn counter(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn scrape_counts_rpcs_by_code_and_passes_promtool() {
    let d = Daemon::start();
    ok(d.ctr(&["version"]));
    let _ = d.ctr(&["namespaces", "rm", "missing"]);

    let (status, body) = d.http_get("/v1/metrics");
    assert!(status.contains("200"), "{status}");
    let version = r#"grpc_method="Version""#;
    assert!(counter(&body, "grpc_server_started_total", &[version]) >= 1.0, "{body}");
    assert!(
        counter(&body, "grpc_server_handled_total", &[version, r#"grpc_code="OK""#]) >= 1.0,
        "{body}"
    );
    assert!(
        counter(
            &body,
            "grpc_server_handled_total",
            &[r#"grpc_method="Delete""#, r#"grpc_code="NotFound""#]
        ) >= 1.0,
        "{body}"
    );
    assert!(
        counter(&body, "grpc_server_handling_seconds_count", &[version]) >= 1.0,
        "{body}"
    );
    assert!(body.contains("process_resident_memory_bytes"), "{body}");
    assert!(body.contains("containerd_build_info_total{"), "{body}");

    let mut promtool = std::process::Command::new(system_tool("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && report.trim().is_empty(), "promtool: {report}");

    let (status, _) = d.http_get("/metrics");
    assert!(status.contains("404"), "{status}");
}

#[test]
fn health_reports_serving() {
    let d = Daemon::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let channel = corten_tests::grpc::channel(&d.socket).await;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        client
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner()
            .status
    });
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
