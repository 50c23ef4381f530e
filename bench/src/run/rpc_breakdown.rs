//! Where the time of `ctr run --rm` goes inside each daemon: both serve
//! their Prometheus metrics on a free loopback port, and
//! `grpc_server_handling_seconds_sum`/`_count` per gRPC method are scraped
//! right before the first and right after the last measured `ctr run --rm`
//! (never while one runs). The difference gives, per method, the calls and
//! the mean time the daemon spent handling one.
//!
//! Both daemons count every RPC whether or not the endpoint is on (corten's
//! metrics layer always runs, containerd 1.6 always installs
//! go-grpc-prometheus' interceptors); the endpoint adds an idle listener and
//! containerd's `grpc_histogram` one histogram observation per call.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::session::Session;
use crate::{
    daemon::Kind,
    table::{align, ratio},
};

const SUM: &str = "grpc_server_handling_seconds_sum";
const COUNT: &str = "grpc_server_handling_seconds_count";
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// A loopback address with a port nobody listens on right now. The port is
/// free again when this returns; the daemon binds it a moment later (a
/// collision fails the daemon's start loudly, it cannot go unnoticed).
pub fn free_loopback() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("find a free loopback port")?;
    Ok(listener.local_addr()?)
}

/// gRPC service and method, as go-grpc-prometheus labels them.
type Method = (String, String);

/// Handling seconds and calls per method, cumulative since the daemon
/// started.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scrape(BTreeMap<Method, (f64, u64)>);

impl Scrape {
    /// `GET /v1/metrics` over HTTP/1.0, so that neither server chunks or
    /// compresses the answer.
    pub fn fetch(address: SocketAddr) -> anyhow::Result<Scrape> {
        let mut stream =
            TcpStream::connect_timeout(&address, SCRAPE_TIMEOUT).with_context(|| format!("connect to {address}"))?;
        stream.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
        stream.write_all(b"GET /v1/metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .with_context(|| format!("read the metrics from {address}"))?;
        let response = String::from_utf8_lossy(&response);
        let Some((head, body)) = response.split_once("\r\n\r\n") else {
            bail!("no HTTP header in the answer from {address}");
        };
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            bail!("http://{address}/v1/metrics answered {status:?}");
        }
        Ok(Scrape::parse(body))
    }

    /// The `_sum` and `_count` samples of the handling-time histogram in
    /// Prometheus' text format; every other line is ignored.
    pub fn parse(text: &str) -> Scrape {
        let mut out = BTreeMap::<Method, (f64, u64)>::new();
        for line in text.lines() {
            let (is_sum, rest) = if let Some(rest) = line.strip_prefix(SUM) {
                (true, rest)
            } else if let Some(rest) = line.strip_prefix(COUNT) {
                (false, rest)
            } else {
                continue;
            };
            let Some(rest) = rest.strip_prefix('{') else { continue };
            let Some((labels, value)) = rest.rsplit_once('}') else {
                continue;
            };
            let labels = parse_labels(labels);
            let (Some(service), Some(method)) = (labels.get("grpc_service"), labels.get("grpc_method")) else {
                continue;
            };
            let Some(value) = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            let entry = out.entry((service.clone(), method.clone())).or_default();
            if is_sum {
                entry.0 = value;
            } else {
                entry.1 = value as u64;
            }
        }
        Scrape(out)
    }

    /// What happened between `before` and this scrape; methods without calls
    /// in between are left out.
    pub fn since(&self, before: &Scrape) -> Scrape {
        Scrape(
            self.0
                .iter()
                .filter_map(|(method, &(sum, count))| {
                    let (sum0, count0) = before.0.get(method).copied().unwrap_or_default();
                    (count > count0).then(|| (method.clone(), ((sum - sum0).max(0.0), count - count0)))
                })
                .collect(),
        )
    }
}

/// `key="value",...` with Prometheus' escapes (`\\`, `\"`, `\n`).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next() != Some('=') || chars.next() != Some('"') {
            return labels;
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                None => return labels,
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => return labels,
                },
                Some(c) => value.push(c),
            }
        }
        labels.insert(key.trim().to_string(), value);
    }
}

/// Scrapes of every session that serves metrics, before and after.
pub struct Recorder {
    before: Vec<Option<Scrape>>,
}

impl Recorder {
    pub fn start(sessions: &[Session<'_>]) -> anyhow::Result<Recorder> {
        let before = sessions.iter().map(scrape).collect::<anyhow::Result<_>>()?;
        Ok(Recorder { before })
    }

    /// `runs` is the number of measured `ctr run --rm` per daemon.
    pub fn finish(self, sessions: &[Session<'_>], runs: u32) -> anyhow::Result<Option<Breakdown>> {
        let mut daemons = Vec::new();
        for (session, before) in sessions.iter().zip(self.before) {
            if let (Some(before), Some(after)) = (before, scrape(session)?) {
                daemons.push((session.kind, after.since(&before)));
            }
        }
        Ok((!daemons.is_empty()).then(|| Breakdown::new(&daemons, runs)))
    }
}

fn scrape(session: &Session<'_>) -> anyhow::Result<Option<Scrape>> {
    session
        .metrics
        .map(|address| {
            Scrape::fetch(address)
                .map_err(|e| session.explain(e))
                .with_context(|| format!("{}: scrape the gRPC metrics", session.kind.name()))
        })
        .transpose()
}

/// Per method, over the measured `ctr run --rm` runs.
#[derive(Debug, Serialize)]
pub struct Breakdown {
    runs: u32,
    /// The daemons in the order measured (corten first).
    daemons: Vec<&'static str>,
    methods: Vec<Row>,
}

#[derive(Debug, Serialize)]
struct Row {
    service: String,
    method: String,
    /// Per daemon, in the order of `daemons`; `null` where it had no call.
    calls: Vec<Option<u64>>,
    mean_ms: Vec<Option<f64>>,
    /// corten / containerd of the means, where both had calls.
    ratio: Option<f64>,
}

impl Breakdown {
    fn new(daemons: &[(Kind, Scrape)], runs: u32) -> Breakdown {
        let mut methods: Vec<&Method> = daemons.iter().flat_map(|(_, s)| s.0.keys()).collect();
        methods.sort();
        methods.dedup();
        let pick = |kind: Kind, method: &Method| {
            daemons
                .iter()
                .find(|(k, _)| *k == kind)
                .and_then(|(_, s)| s.0.get(method))
                .map(|&(sum, count)| sum * 1e3 / count as f64)
        };
        let mut rows: Vec<Row> = methods
            .into_iter()
            .map(|method| {
                let found: Vec<Option<(f64, u64)>> = daemons.iter().map(|(_, s)| s.0.get(method).copied()).collect();
                Row {
                    service: method.0.clone(),
                    method: method.1.clone(),
                    calls: found.iter().map(|f| f.map(|(_, c)| c)).collect(),
                    mean_ms: found.iter().map(|f| f.map(|(s, c)| s * 1e3 / c as f64)).collect(),
                    ratio: pick(Kind::Corten, method)
                        .zip(pick(Kind::Containerd, method))
                        .map(|(c, r)| c / r),
                }
            })
            .collect();
        // The costliest first: by the time per run of the first daemon.
        let per_run = |row: &Row| {
            row.calls[0]
                .zip(row.mean_ms[0])
                .map_or(0.0, |(c, m)| c as f64 * m / f64::from(runs))
        };
        rows.sort_by(|a, b| per_run(b).total_cmp(&per_run(a)));
        Breakdown {
            runs,
            daemons: daemons.iter().map(|(k, _)| k.name()).collect(),
            methods: rows,
        }
    }

    pub fn table(&self) -> String {
        let both = self.daemons.len() > 1;
        let mut header = vec!["rpc".to_string()];
        for d in &self.daemons {
            header.push(format!("calls {d}"));
        }
        for d in &self.daemons {
            header.push(format!("mean ms {d}"));
        }
        if both {
            header.push("ratio".to_string());
        }
        let mut rows = vec![header];
        let mut total = vec![0.0; self.daemons.len()];
        for row in &self.methods {
            let service = row.service.rsplit('.').next().unwrap_or(&row.service);
            let mut cells = vec![format!("{service}/{}", row.method)];
            cells.extend(
                row.calls
                    .iter()
                    .map(|c| c.map_or_else(|| "-".to_string(), |c| c.to_string())),
            );
            cells.extend(
                row.mean_ms
                    .iter()
                    .map(|m| m.map_or_else(|| "-".to_string(), |m| format!("{m:.2}"))),
            );
            if both {
                cells.push(ratio(row.ratio));
            }
            for (i, t) in total.iter_mut().enumerate() {
                *t += row.calls[i].zip(row.mean_ms[i]).map_or(0.0, |(c, m)| c as f64 * m);
            }
            rows.push(cells);
        }
        let runs = f64::from(self.runs);
        let mut cells = vec!["all, per run".to_string()];
        cells.extend(self.daemons.iter().map(|_| String::new()));
        cells.extend(total.iter().map(|t| format!("{:.2}", t / runs)));
        if both {
            cells.push(ratio((total[1] > 0.0).then(|| total[0] / total[1])));
        }
        rows.push(cells);
        format!(
            "\ngRPC time per method over the {} measured `ctr run --rm` runs (the daemons' \
             grpc_server_handling_seconds, scraped before and after):\n{}\
             ratio = corten / containerd (means); ctr calls Tasks/Wait before Tasks/Start and Wait \
             returns at the task's exit, so the two overlap and `all, per run` counts that time twice\n",
            self.runs,
            align(&rows)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_labels, Breakdown, Scrape};
    use crate::daemon::Kind;

    const TEXT: &str = "\
# HELP grpc_server_handling_seconds Histogram of response latency
# TYPE grpc_server_handling_seconds histogram
grpc_server_handling_seconds_bucket{grpc_method=\"Create\",grpc_service=\"containerd.services.tasks.v1.Tasks\",grpc_type=\"unary\",le=\"0.005\"} 0
grpc_server_handling_seconds_sum{grpc_method=\"Create\",grpc_service=\"containerd.services.tasks.v1.Tasks\",grpc_type=\"unary\"} 0.5
grpc_server_handling_seconds_count{grpc_method=\"Create\",grpc_service=\"containerd.services.tasks.v1.Tasks\",grpc_type=\"unary\"} 10
grpc_server_handling_seconds_sum{grpc_method=\"Get\",grpc_service=\"containerd.services.containers.v1.Containers\",grpc_type=\"unary\"} 0.01
grpc_server_handling_seconds_count{grpc_method=\"Get\",grpc_service=\"containerd.services.containers.v1.Containers\",grpc_type=\"unary\"} 5
grpc_server_started_total{grpc_method=\"Get\",grpc_service=\"containerd.services.containers.v1.Containers\",grpc_type=\"unary\"} 5
";

    fn method(service: &str, method: &str) -> (String, String) {
        (service.to_string(), method.to_string())
    }

    #[test]
    fn reads_sums_and_counts_per_method() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.0.len(), 2);
        assert_eq!(s.0[&method("containerd.services.tasks.v1.Tasks", "Create")], (0.5, 10));
    }

    #[test]
    fn labels_with_escapes() {
        let l = parse_labels(r#"a="x\"y",b="\\", c="""#);
        assert_eq!(l["a"], "x\"y");
        assert_eq!(l["b"], "\\");
        assert_eq!(l["c"], "");
    }

    #[test]
    fn differences_and_the_table() {
        let before = Scrape::parse(TEXT);
        let after = Scrape::parse(&TEXT.replace("} 0.5", "} 0.9").replace("} 10", "} 14"));
        let delta = after.since(&before);
        assert_eq!(delta.0.len(), 1, "Get had no new call");
        let (sum, count) = delta.0[&method("containerd.services.tasks.v1.Tasks", "Create")];
        assert!((sum - 0.4).abs() < 1e-9 && count == 4);

        let mut reference = delta.clone();
        reference.0.values_mut().for_each(|v| v.0 *= 2.0);
        let b = Breakdown::new(&[(Kind::Corten, delta), (Kind::Containerd, reference)], 4);
        let table = b.table();
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
        };
        assert_eq!(
            row("Tasks/Create"),
            Some(vec!["Tasks/Create", "4", "4", "100.00", "200.00", "0.50"]),
            "{table}"
        );
        assert_eq!(
            row("all, per run"),
            Some(vec!["all,", "per", "run", "100.00", "200.00", "0.50"]),
            "{table}"
        );
    }
}
