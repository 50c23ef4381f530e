//! Per-container metrics at scrape time: each task's shim is asked for its
//! cgroup statistics (`Stats`), decoded as cgroup v1 or v2 metrics, and
//! exported under containerd 1.6's names with the labels `container_id`
//! and `namespace`.
//!
//! containerd exports all of them as gauges; the ones whose name ends in
//! `_total` are exported as counters here (they are monotonic), so the
//! output stays clean for `promtool check metrics` apart from containerd's
//! own unit names.
//!
//! A collector is synchronous and the scrape runs on the async runtime:
//! the shims are asked from `block_in_place`, every call bounded by the
//! task-state timeout, so a stuck shim costs one scrape at most that long.

use std::{collections::BTreeMap, sync::Weak, time::Duration};

use corten_api::{
    containerd::task::v2::{StatsRequest, StatsResponse},
    io::containerd::cgroups::{v1, v2},
};
use futures::future::join_all;
use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    CounterVec, GaugeVec, Opts,
};
use prost::Message;
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::runtime::Inner;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
}

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: Kind::Gauge,
        labels: &[],
    }
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: Kind::Counter,
        labels: &[],
    }
}

const fn labelled(family: Family, labels: &'static [&'static str]) -> Family {
    Family { labels, ..family }
}

const BLKIO: &[&str] = &["op", "device", "major", "minor"];
const DEVICE: &[&str] = &["major", "minor"];

// cgroup v1
const CPU_TOTAL: Family = gauge("container_cpu_total_nanoseconds", "The total cpu time");
const CPU_KERNEL: Family = gauge("container_cpu_kernel_nanoseconds", "The total kernel cpu time");
const CPU_USER: Family = gauge("container_cpu_user_nanoseconds", "The total user cpu time");
const PER_CPU: Family = labelled(
    gauge("container_per_cpu_nanoseconds", "The total cpu time per cpu"),
    &["cpu"],
);
const THROTTLE_PERIODS: Family = counter("container_cpu_throttle_periods_total", "The total cpu throttle periods");
const THROTTLED_PERIODS: Family = counter(
    "container_cpu_throttled_periods_total",
    "The total cpu throttled periods",
);
const THROTTLED_TIME: Family = gauge(
    "container_cpu_throttled_time_nanoseconds",
    "The total cpu throttled time",
);
const MEM_CACHE: Family = gauge("container_memory_cache_bytes", "The cache amount used");
const MEM_RSS: Family = gauge("container_memory_rss_bytes", "The rss amount used");
const MEM_TOTAL_CACHE: Family = gauge("container_memory_total_cache_bytes", "The total_cache amount used");
const MEM_TOTAL_RSS: Family = gauge("container_memory_total_rss_bytes", "The total_rss amount used");
const MEM_USAGE_FAILCNT: Family = counter("container_memory_usage_failcnt_total", "The usage failcnt");
const MEM_USAGE_LIMIT: Family = gauge("container_memory_usage_limit_bytes", "The memory limit");
const MEM_USAGE_MAX: Family = gauge("container_memory_usage_max_bytes", "The memory maximum usage");
const MEM_USAGE_USAGE: Family = gauge("container_memory_usage_usage_bytes", "The memory usage");
const MEM_SWAP_FAILCNT: Family = counter("container_memory_swap_failcnt_total", "The swap failcnt");
const MEM_SWAP_LIMIT: Family = gauge("container_memory_swap_limit_bytes", "The swap limit");
const MEM_SWAP_MAX: Family = gauge("container_memory_swap_max_bytes", "The swap maximum usage");
const MEM_SWAP_USAGE: Family = gauge("container_memory_swap_usage_bytes", "The swap usage");
const MEM_KERNEL_FAILCNT: Family = counter("container_memory_kernel_failcnt_total", "The kernel failcnt");
const MEM_KERNEL_LIMIT: Family = gauge("container_memory_kernel_limit_bytes", "The kernel limit");
const MEM_KERNEL_MAX: Family = gauge("container_memory_kernel_max_bytes", "The kernel maximum usage");
const MEM_KERNEL_USAGE: Family = gauge("container_memory_kernel_usage_bytes", "The kernel usage");
const PIDS_CURRENT: Family = gauge("container_pids_current", "The current number of pids");
const PIDS_LIMIT: Family = gauge("container_pids_limit", "The limit to the number of pids allowed");
const BLKIO_BYTES: Family = labelled(
    gauge(
        "container_blkio_io_service_bytes_recursive_bytes",
        "The blkio io service bytes recursive",
    ),
    BLKIO,
);
const BLKIO_SERVICED: Family = labelled(
    counter(
        "container_blkio_io_serviced_recursive_total",
        "The blkio io serviced recursive",
    ),
    BLKIO,
);

// cgroup v2 (memory and pids limits and swap share v1's names)
const CPU_USAGE_USEC: Family = gauge("container_cpu_usage_usec_microseconds", "Total cpu usage (cgroup v2)");
const CPU_USER_USEC: Family = gauge(
    "container_cpu_user_usec_microseconds",
    "Current cpu usage in user space (cgroup v2)",
);
const CPU_SYSTEM_USEC: Family = gauge(
    "container_cpu_system_usec_microseconds",
    "Current cpu usage in kernel space (cgroup v2)",
);
const CPU_NR_PERIODS: Family = counter(
    "container_cpu_nr_periods_total",
    "Current cpu number of periods (only if controller is enabled)",
);
const CPU_NR_THROTTLED: Family = counter(
    "container_cpu_nr_throttled_total",
    "Total number of times tasks have been throttled (only if controller is enabled)",
);
const CPU_THROTTLED_USEC: Family = gauge(
    "container_cpu_throttled_usec_microseconds",
    "Total time duration for which tasks have been throttled. (only if controller is enabled)",
);
const MEM_USAGE: Family = gauge("container_memory_usage_bytes", "Current memory usage (cgroup v2)");
const MEM_ANON: Family = gauge("container_memory_anon_bytes", "The anon amount");
const MEM_FILE: Family = gauge("container_memory_file_bytes", "The file amount");
const IO_RBYTES: Family = labelled(gauge("container_io_rbytes_bytes", "IO bytes read"), DEVICE);
const IO_WBYTES: Family = labelled(gauge("container_io_wbytes_bytes", "IO bytes written"), DEVICE);
const IO_RIOS: Family = labelled(counter("container_io_rios_total", "Number of read IOs"), DEVICE);
const IO_WIOS: Family = labelled(counter("container_io_wios_total", "Number of write IOs"), DEVICE);

const FAMILIES: &[&Family] = &[
    &CPU_TOTAL,
    &CPU_KERNEL,
    &CPU_USER,
    &PER_CPU,
    &THROTTLE_PERIODS,
    &THROTTLED_PERIODS,
    &THROTTLED_TIME,
    &MEM_CACHE,
    &MEM_RSS,
    &MEM_TOTAL_CACHE,
    &MEM_TOTAL_RSS,
    &MEM_USAGE_FAILCNT,
    &MEM_USAGE_LIMIT,
    &MEM_USAGE_MAX,
    &MEM_USAGE_USAGE,
    &MEM_SWAP_FAILCNT,
    &MEM_SWAP_LIMIT,
    &MEM_SWAP_MAX,
    &MEM_SWAP_USAGE,
    &MEM_KERNEL_FAILCNT,
    &MEM_KERNEL_LIMIT,
    &MEM_KERNEL_MAX,
    &MEM_KERNEL_USAGE,
    &PIDS_CURRENT,
    &PIDS_LIMIT,
    &BLKIO_BYTES,
    &BLKIO_SERVICED,
    &CPU_USAGE_USEC,
    &CPU_USER_USEC,
    &CPU_SYSTEM_USEC,
    &CPU_NR_PERIODS,
    &CPU_NR_THROTTLED,
    &CPU_THROTTLED_USEC,
    &MEM_USAGE,
    &MEM_ANON,
    &MEM_FILE,
    &IO_RBYTES,
    &IO_WBYTES,
    &IO_RIOS,
    &IO_WIOS,
];

/// Every metric carries these first.
const TASK_LABELS: &[&str] = &["container_id", "namespace"];

struct Sample {
    family: &'static Family,
    labels: Vec<String>,
    value: f64,
}

fn sample(family: &'static Family, value: u64) -> Sample {
    Sample {
        family,
        labels: Vec::new(),
        value: value as f64,
    }
}

/// The samples in one task's `Stats` answer; unknown kinds give none.
fn samples(type_url: &str, value: &[u8]) -> Vec<Sample> {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    match name {
        "io.containerd.cgroups.v1.Metrics" => v1::Metrics::decode(value).map(samples_v1).unwrap_or_default(),
        "io.containerd.cgroups.v2.Metrics" => v2::Metrics::decode(value).map(samples_v2).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn samples_v1(m: v1::Metrics) -> Vec<Sample> {
    let mut out = Vec::new();
    if let Some(cpu) = m.cpu {
        if let Some(u) = cpu.usage {
            out.extend([
                sample(&CPU_TOTAL, u.total),
                sample(&CPU_KERNEL, u.kernel),
                sample(&CPU_USER, u.user),
            ]);
            out.extend(u.per_cpu.iter().enumerate().map(|(i, v)| Sample {
                labels: vec![i.to_string()],
                ..sample(&PER_CPU, *v)
            }));
        }
        if let Some(t) = cpu.throttling {
            out.extend([
                sample(&THROTTLE_PERIODS, t.periods),
                sample(&THROTTLED_PERIODS, t.throttled_periods),
                sample(&THROTTLED_TIME, t.throttled_time),
            ]);
        }
    }
    if let Some(mem) = m.memory {
        out.extend([
            sample(&MEM_CACHE, mem.cache),
            sample(&MEM_RSS, mem.rss),
            sample(&MEM_TOTAL_CACHE, mem.total_cache),
            sample(&MEM_TOTAL_RSS, mem.total_rss),
        ]);
        let entries = [
            (
                mem.usage,
                [&MEM_USAGE_FAILCNT, &MEM_USAGE_LIMIT, &MEM_USAGE_MAX, &MEM_USAGE_USAGE],
            ),
            (
                mem.swap,
                [&MEM_SWAP_FAILCNT, &MEM_SWAP_LIMIT, &MEM_SWAP_MAX, &MEM_SWAP_USAGE],
            ),
            (
                mem.kernel,
                [
                    &MEM_KERNEL_FAILCNT,
                    &MEM_KERNEL_LIMIT,
                    &MEM_KERNEL_MAX,
                    &MEM_KERNEL_USAGE,
                ],
            ),
        ];
        for (entry, [failcnt, limit, max, usage]) in entries {
            if let Some(e) = entry {
                out.extend([
                    sample(failcnt, e.failcnt),
                    sample(limit, e.limit),
                    sample(max, e.max),
                    sample(usage, e.usage),
                ]);
            }
        }
    }
    if let Some(p) = m.pids {
        out.extend([sample(&PIDS_CURRENT, p.current), sample(&PIDS_LIMIT, p.limit)]);
    }
    if let Some(b) = m.blkio {
        let entries = [
            (&BLKIO_BYTES, b.io_service_bytes_recursive),
            (&BLKIO_SERVICED, b.io_serviced_recursive),
        ];
        for (family, list) in entries {
            out.extend(list.into_iter().map(|e| Sample {
                labels: vec![e.op, e.device, e.major.to_string(), e.minor.to_string()],
                ..sample(family, e.value)
            }));
        }
    }
    out
}

fn samples_v2(m: v2::Metrics) -> Vec<Sample> {
    let mut out = Vec::new();
    if let Some(p) = m.pids {
        out.extend([sample(&PIDS_CURRENT, p.current), sample(&PIDS_LIMIT, p.limit)]);
    }
    if let Some(c) = m.cpu {
        out.extend([
            sample(&CPU_USAGE_USEC, c.usage_usec),
            sample(&CPU_USER_USEC, c.user_usec),
            sample(&CPU_SYSTEM_USEC, c.system_usec),
            sample(&CPU_NR_PERIODS, c.nr_periods),
            sample(&CPU_NR_THROTTLED, c.nr_throttled),
            sample(&CPU_THROTTLED_USEC, c.throttled_usec),
        ]);
    }
    if let Some(mem) = m.memory {
        out.extend([
            sample(&MEM_USAGE, mem.usage),
            sample(&MEM_USAGE_LIMIT, mem.usage_limit),
            sample(&MEM_SWAP_USAGE, mem.swap_usage),
            sample(&MEM_SWAP_LIMIT, mem.swap_limit),
            sample(&MEM_ANON, mem.anon),
            sample(&MEM_FILE, mem.file),
        ]);
    }
    if let Some(io) = m.io {
        for e in io.usage {
            let device = vec![e.major.to_string(), e.minor.to_string()];
            out.extend(
                [
                    (&IO_RBYTES, e.rbytes),
                    (&IO_WBYTES, e.wbytes),
                    (&IO_RIOS, e.rios),
                    (&IO_WIOS, e.wios),
                ]
                .map(|(family, v)| Sample {
                    labels: device.clone(),
                    ..sample(family, v)
                }),
            );
        }
    }
    out
}

fn label_names(family: &Family) -> Vec<&'static str> {
    TASK_LABELS.iter().chain(family.labels).copied().collect()
}

enum Vector {
    Gauge(GaugeVec),
    Counter(CounterVec),
}

/// Builds the metric families of one scrape from every task's samples.
fn families(stats: Vec<(String, String, Vec<Sample>)>) -> Vec<MetricFamily> {
    let mut vectors: BTreeMap<&'static str, Vector> = BTreeMap::new();
    for (namespace, id, samples) in stats {
        for s in samples {
            let vector = vectors.entry(s.family.name).or_insert_with(|| {
                let opts = Opts::new(s.family.name, s.family.help);
                let names = label_names(s.family);
                match s.family.kind {
                    Kind::Gauge => {
                        Vector::Gauge(GaugeVec::new(opts, &names).expect("static metric definitions are valid"))
                    }
                    Kind::Counter => {
                        Vector::Counter(CounterVec::new(opts, &names).expect("static metric definitions are valid"))
                    }
                }
            });
            let values: Vec<&str> = [id.as_str(), namespace.as_str()]
                .into_iter()
                .chain(s.labels.iter().map(String::as_str))
                .collect();
            match vector {
                Vector::Gauge(g) => g.with_label_values(&values).set(s.value),
                Vector::Counter(c) => {
                    let counter = c.with_label_values(&values);
                    // The same series twice in one scrape (never expected) must not add up.
                    counter.reset();
                    counter.inc_by(s.value);
                }
            }
        }
    }
    vectors
        .into_values()
        .flat_map(|v| match v {
            Vector::Gauge(g) => g.collect(),
            Vector::Counter(c) => c.collect(),
        })
        .collect()
}

/// Registered in the daemon's registry; asks the shims at each scrape.
pub struct TaskCollector {
    runtime: Weak<Inner>,
    timeout: Duration,
    /// For scrapes from outside any async runtime.
    handle: Option<Handle>,
    descs: Vec<Desc>,
}

impl TaskCollector {
    pub(crate) fn new(runtime: Weak<Inner>, timeout: Duration) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|f| {
                let labels = label_names(f).into_iter().map(String::from).collect();
                Desc::new(f.name.into(), f.help.into(), labels, Default::default())
                    .expect("static metric definitions are valid")
            })
            .collect();
        TaskCollector {
            runtime,
            timeout,
            handle: Handle::try_current().ok(),
            descs,
        }
    }

    /// Every task's samples; tasks whose shim does not answer in time are
    /// left out of this scrape.
    fn fetch(&self) -> Vec<(String, String, Vec<Sample>)> {
        let Some(inner) = self.runtime.upgrade() else {
            return Vec::new();
        };
        let tasks = inner.all();
        if tasks.is_empty() {
            return Vec::new();
        }
        let timeout = self.timeout;
        let work = async move {
            join_all(tasks.iter().map(|task| async move {
                let request = StatsRequest {
                    id: task.bundle.id.clone(),
                };
                let stats = task
                    .client
                    .call::<_, StatsResponse>("Stats", &request, Some(timeout))
                    .await
                    .ok()?
                    .stats?;
                let samples = samples(&stats.type_url, &stats.value);
                Some((task.bundle.namespace.clone(), task.bundle.id.clone(), samples))
            }))
            .await
            .into_iter()
            .flatten()
            .collect()
        };
        match Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(work))
            }
            Ok(_) => {
                // A single-threaded runtime cannot wait for its own I/O here.
                tracing::debug!("container metrics skipped: the scrape runs on a current-thread runtime");
                Vec::new()
            }
            Err(_) => match &self.handle {
                Some(handle) => handle.block_on(work),
                None => Vec::new(),
            },
        }
    }
}

impl Collector for TaskCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(self.fetch())
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    fn render(families: Vec<MetricFamily>) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn v1_stats_use_containerds_names() {
        let m = v1::Metrics {
            pids: Some(v1::PidsStat { current: 3, limit: 0 }),
            cpu: Some(v1::CpuStat {
                usage: Some(v1::CpuUsage {
                    total: 9_000,
                    kernel: 1_000,
                    user: 8_000,
                    per_cpu: vec![4_000, 5_000],
                }),
                throttling: Some(v1::Throttle::default()),
            }),
            memory: Some(v1::MemoryStat {
                usage: Some(v1::MemoryEntry {
                    usage: 487424,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            blkio: Some(v1::BlkIoStat {
                io_serviced_recursive: vec![v1::BlkIoEntry {
                    op: "Read".into(),
                    device: String::new(),
                    major: 8,
                    minor: 0,
                    value: 12,
                }],
                ..Default::default()
            }),
        };
        let text = render(families(vec![(
            "ns1".into(),
            "c1".into(),
            samples("io.containerd.cgroups.v1.Metrics", &m.encode_to_vec()),
        )]));
        for line in [
            r#"container_cpu_total_nanoseconds{container_id="c1",namespace="ns1"} 9000"#,
            r#"container_per_cpu_nanoseconds{container_id="c1",cpu="1",namespace="ns1"} 5000"#,
            r#"container_memory_usage_usage_bytes{container_id="c1",namespace="ns1"} 487424"#,
            r#"container_pids_current{container_id="c1",namespace="ns1"} 3"#,
            "# TYPE container_cpu_throttle_periods_total counter",
            "# TYPE container_pids_current gauge",
            concat!(
                r#"container_blkio_io_serviced_recursive_total{container_id="c1",device="",major="8",minor="0","#,
                r#"namespace="ns1",op="Read"} 12"#
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn v2_stats_and_unknown_kinds() {
        let m = v2::Metrics {
            pids: Some(v2::PidsStat { current: 2, limit: 10 }),
            cpu: Some(v2::CpuStat {
                usage_usec: 77,
                ..Default::default()
            }),
            memory: Some(v2::MemoryStat {
                usage: 4096,
                ..Default::default()
            }),
            io: Some(v2::IoStat {
                usage: vec![v2::IoEntry {
                    major: 259,
                    minor: 1,
                    rbytes: 512,
                    ..Default::default()
                }],
            }),
        };
        let text = render(families(vec![(
            "ns".into(),
            "c2".into(),
            samples(
                "type.googleapis.com/io.containerd.cgroups.v2.Metrics",
                &m.encode_to_vec(),
            ),
        )]));
        for line in [
            r#"container_cpu_usage_usec_microseconds{container_id="c2",namespace="ns"} 77"#,
            r#"container_memory_usage_bytes{container_id="c2",namespace="ns"} 4096"#,
            r#"container_pids_limit{container_id="c2",namespace="ns"} 10"#,
            r#"container_io_rbytes_bytes{container_id="c2",major="259",minor="1",namespace="ns"} 512"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(samples("something.Else", b"").is_empty());
        assert!(samples("io.containerd.cgroups.v1.Metrics", b"\xff\xff").is_empty());
    }

    #[test]
    fn descriptors_register_once() {
        let registry = prometheus::Registry::new();
        let collector = TaskCollector::new(Weak::new(), Duration::from_secs(1));
        registry.register(Box::new(collector)).unwrap();
        assert!(registry.gather().is_empty(), "no runtime, no samples");
    }
}
