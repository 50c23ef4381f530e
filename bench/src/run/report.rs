//! The run results as a table for people and JSON for tools.

use std::fmt::Write as _;

use corten_tests::registry::PushedImage;
use serde::Serialize;

use super::{
    ctr::{Ctr, LONG_COMMAND, RUN_COMMAND},
    host::Runtime,
    measure::{Plan, Series},
};
use crate::{
    daemon::{Kind, Subject},
    machine::Machine,
    stats::Summary,
    table::{align, cpus, disk_line, field, notes, ratio, verdict},
    workdir::Filesystem,
};

/// The goals from the containers issue: corten's times at this share of
/// containerd's or less, and the daemon's own RSS with the containers
/// running under this many MiB.
const TARGET_TIME_RATIO: f64 = 0.8;
const TARGET_RSS_MIB: f64 = 15.0;
/// What containerd 1.6 showed on this kind of 2-core machine when the
/// targets were set; a reference far from these suggests the machine
/// changed, not the daemons.
const CONTAINERD_SEEN_RUN_RM_MS: f64 = 120.0;
const CONTAINERD_SEEN_RSS_MIB: f64 = 51.0;

#[derive(Serialize)]
pub struct Report {
    benchmark: &'static str,
    machine: Machine,
    filesystem: Filesystem,
    settings: Settings,
    tools: Tools,
    image: Image,
    notes: Vec<String>,
    /// corten, then containerd; one of them alone with --no-reference or
    /// --only-reference.
    daemons: Vec<DaemonResult>,
    /// corten / containerd, medians; `null` unless both were measured.
    ratios: Option<Ratios>,
    targets: Targets,
}

#[derive(Serialize)]
struct Settings {
    runs: u32,
    warmup: u32,
    containers: u32,
    rounds: u32,
    settle_ms: u128,
}

#[derive(Serialize)]
struct Tools {
    daemons: Vec<Daemon>,
    ctr: Tool,
    shim: Tool,
    runc: Tool,
    registry: String,
}

#[derive(Serialize)]
struct Daemon {
    daemon: &'static str,
    binary: String,
    version: String,
    namespace: String,
}

#[derive(Serialize)]
struct Tool {
    binary: String,
    version: String,
}

#[derive(Serialize)]
struct Image {
    reference: String,
    manifest_digest: String,
}

#[derive(Serialize)]
struct DaemonResult {
    daemon: &'static str,
    /// `ctr run --rm IMAGE ID true`, exec to exit.
    run_rm_ms: Summary,
    /// Every `ctr run -d` of a round, first exec to last exit.
    start_all_ms: Summary,
    /// CPU used meanwhile: every CPU's busy time, whoever used it, and the
    /// daemon's own process (not its shims).
    start_all_cpu_ms: Summary,
    start_daemon_cpu_ms: Summary,
    /// Every kill and removal of a round, first exec to last exit.
    teardown_all_ms: Summary,
    /// CPU used meanwhile, as for the start.
    teardown_all_cpu_ms: Summary,
    teardown_daemon_cpu_ms: Summary,
    /// The daemon's VmRSS with every container running.
    rss_mib: Summary,
    /// Its anonymous part (heap, stacks) and its file-backed part (code).
    rss_anon_mib: Summary,
    rss_file_mib: Summary,
    /// The VmRSS of each round in order: a daemon that keeps what each
    /// round leaves grows along it.
    rss_by_round_mib: Vec<f64>,
    /// Its shims' VmRSS together at the same moment (not the daemon's).
    shims_rss_mib: Summary,
    /// Shim processes at that moment, per round.
    shims: Vec<usize>,
    /// ctr's FIFO directories left after containers were removed (the
    /// benchmark removed them).
    fifos_left: usize,
}

#[derive(Serialize)]
struct Ratios {
    run_rm: f64,
    start_all: f64,
    teardown_all: f64,
    rss: f64,
}

#[derive(Serialize)]
struct Targets {
    time_ratio_to_containerd: f64,
    rss_mib: f64,
    /// `null` where not judged: the time ratios need both daemons, the
    /// RSS needs corten.
    run_rm_met: Option<bool>,
    start_all_met: Option<bool>,
    teardown_all_met: Option<bool>,
    rss_met: Option<bool>,
    containerd_seen_run_rm_ms: f64,
    containerd_seen_rss_mib: f64,
}

pub struct Context<'a> {
    pub plan: &'a Plan,
    pub machine: Machine,
    pub filesystem: Filesystem,
    pub subjects: &'a [Subject],
    pub ctr: &'a Ctr,
    pub runtime: &'a Runtime,
    pub registry_version: String,
    pub image: &'a PushedImage,
}

impl Report {
    /// `measured` is in the order of `subjects`.
    pub fn new(context: Context<'_>, measured: Vec<Series>) -> Report {
        let Context {
            plan,
            machine,
            filesystem,
            subjects,
            ctr,
            runtime,
            registry_version,
            image,
        } = context;
        let ms = |seconds: &[f64]| Summary::of(seconds.iter().map(|s| s * 1e3).collect());
        let mib = |kib: &[u64]| Summary::of(kib.iter().map(|k| *k as f64 / 1024.0).collect());
        let daemon_tools = subjects
            .iter()
            .zip(&measured)
            .map(|(subject, s)| Daemon {
                daemon: s.kind.name(),
                binary: subject.binary.display().to_string(),
                version: s.version.clone(),
                namespace: s.namespace.clone(),
            })
            .collect();
        let daemons: Vec<DaemonResult> = measured
            .iter()
            .map(|s| DaemonResult {
                daemon: s.kind.name(),
                run_rm_ms: ms(&s.run_rm),
                start_all_ms: ms(&s.start),
                start_all_cpu_ms: Summary::of(s.start_all_cpu_ms.clone()),
                start_daemon_cpu_ms: Summary::of(s.start_daemon_cpu_ms.clone()),
                teardown_all_ms: ms(&s.teardown),
                teardown_all_cpu_ms: Summary::of(s.teardown_all_cpu_ms.clone()),
                teardown_daemon_cpu_ms: Summary::of(s.teardown_daemon_cpu_ms.clone()),
                rss_mib: mib(&s.rss_kib),
                rss_anon_mib: mib(&s.rss_anon_kib),
                rss_file_mib: mib(&s.rss_file_kib),
                rss_by_round_mib: s.rss_kib.iter().map(|&k| k as f64 / 1024.0).collect(),
                shims_rss_mib: mib(&s.shims_rss_kib),
                shims: s.shims.clone(),
                fifos_left: s.fifos_left,
            })
            .collect();
        let find = |kind: Kind| daemons.iter().find(|d| d.daemon == kind.name());
        let corten = find(Kind::Corten);
        let ratios = corten.zip(find(Kind::Containerd)).map(|(c, r)| Ratios {
            run_rm: c.run_rm_ms.median / r.run_rm_ms.median,
            start_all: c.start_all_ms.median / r.start_all_ms.median,
            teardown_all: c.teardown_all_ms.median / r.teardown_all_ms.median,
            rss: c.rss_mib.median / r.rss_mib.median,
        });
        let time_met = |pick: fn(&Ratios) -> f64| ratios.as_ref().map(|r| pick(r) <= TARGET_TIME_RATIO);
        let targets = Targets {
            time_ratio_to_containerd: TARGET_TIME_RATIO,
            rss_mib: TARGET_RSS_MIB,
            run_rm_met: time_met(|r| r.run_rm),
            start_all_met: time_met(|r| r.start_all),
            teardown_all_met: time_met(|r| r.teardown_all),
            rss_met: corten.map(|c| c.rss_mib.median < TARGET_RSS_MIB),
            containerd_seen_run_rm_ms: CONTAINERD_SEEN_RUN_RM_MS,
            containerd_seen_rss_mib: CONTAINERD_SEEN_RSS_MIB,
        };

        let mut notes = vec![
            format!(
                "`ctr run --rm IMAGE ID {RUN_COMMAND}`: exec to exit of ctr, a new id each time, {} runs \
                 per daemon after {} unmeasured warm-up run(s); the daemons take turns run by run",
                plan.runs, plan.warmup
            ),
            format!(
                "start: {n} × `ctr run -d IMAGE ID {long}` at once, from the first exec to the last exit \
                 (ctr returns once its task has started), then `ctr tasks ls` must show all {n} RUNNING \
                 (not timed)",
                n = plan.containers,
                long = LONG_COMMAND.join(" ")
            ),
            format!(
                "teardown: for each of the {} containers at once, `ctr tasks rm --force ID` (SIGKILL, wait \
                 for the exit, delete the task) then `ctr containers rm ID`; from the first exec to the \
                 last exit; afterwards no container, task, shim or runc state may be left (not timed)",
                plan.containers
            ),
            format!(
                "RSS: VmRSS of the daemon's own process (not its shims) {} ms after the last container \
                 started; medians over {} rounds",
                plan.settle.as_millis(),
                plan.rounds
            ),
            "both daemons ran all along, each with its own root on the benchmark's disk, its own namespace, \
             the image pulled before measuring (not timed), and the same ctr, shim (checked on every \
             running shim's executable) and runc; ctr made its FIFOs in the benchmark's directory \
             (`ctr run --fifo-dir`)"
                .to_string(),
            "the shims, runc and the containers are not children of the benchmark, so the header's \
             \"during\" figure counts their CPU as other work"
                .to_string(),
        ];
        notes.extend(daemons.iter().filter(|d| d.fifos_left > 0).map(|d| {
            format!(
                "{}: {} of ctr's FIFO directories were left after their containers were removed (the \
                 benchmark removed them); ctr removes them with the task, from the FIFO paths the daemon \
                 keeps for it",
                d.daemon, d.fifos_left
            )
        }));
        notes.extend(daemons.iter().filter(|d| d.rss_by_round_mib.len() > 1).map(|d| {
            let rounds: Vec<String> = d.rss_by_round_mib.iter().map(|m| format!("{m:.1}")).collect();
            format!("{} RSS by round, MiB: {}", d.daemon, rounds.join(", "))
        }));
        for phase in [Phase::START, Phase::TEARDOWN] {
            notes.extend(daemons.iter().map(|d| phase.share_note(d)));
            notes.extend(
                corten
                    .zip(find(Kind::Containerd))
                    .map(|(c, r)| phase.bound_note(c, r, machine.cpus)),
            );
        }
        notes.extend(subjects.iter().flat_map(Subject::notes));
        notes.extend(machine.busy_note());

        Report {
            benchmark: "run",
            machine,
            filesystem,
            settings: Settings {
                runs: plan.runs,
                warmup: plan.warmup,
                containers: plan.containers,
                rounds: plan.rounds,
                settle_ms: plan.settle.as_millis(),
            },
            tools: Tools {
                daemons: daemon_tools,
                ctr: Tool {
                    binary: ctr.binary.display().to_string(),
                    version: ctr.version.clone(),
                },
                shim: Tool {
                    binary: runtime.shim.display().to_string(),
                    version: runtime.shim_version.clone(),
                },
                runc: Tool {
                    binary: runtime.runc.display().to_string(),
                    version: runtime.runc_version.clone(),
                },
                registry: registry_version,
            },
            image: Image {
                reference: image.reference.clone(),
                manifest_digest: image.manifest_digest.clone(),
            },
            notes,
            daemons,
            ratios,
            targets,
        }
    }

    pub fn table(&self) -> String {
        let n = self.settings.containers;
        let mut header = vec!["metric".to_string()];
        header.extend(self.daemons.iter().map(|d| d.daemon.to_string()));
        if self.ratios.is_some() {
            header.push("ratio".to_string());
        }
        header.push("target (corten)".to_string());
        let mut rows = vec![header];

        let t = &self.targets;
        let time_target = |met: Option<bool>| judged(&format!("<= {TARGET_TIME_RATIO} × containerd"), met);
        let cpu_count = self.machine.cpus;
        let metrics = [
            Metric {
                name: format!("ctr run --rm {RUN_COMMAND}"),
                unit: "ms",
                pick: |d| &d.run_rm_ms,
                ratio: self.ratios.as_ref().map(|r| r.run_rm),
                target: time_target(t.run_rm_met),
            },
            Metric {
                name: format!("{n} × ctr run -d, all started"),
                unit: "ms",
                pick: |d| &d.start_all_ms,
                ratio: self.ratios.as_ref().map(|r| r.start_all),
                target: time_target(t.start_all_met),
            },
        ]
        .into_iter()
        .chain(Phase::START.cpu_rows(cpu_count))
        .chain([Metric {
            name: format!("{n} killed and removed"),
            unit: "ms",
            pick: |d| &d.teardown_all_ms,
            ratio: self.ratios.as_ref().map(|r| r.teardown_all),
            target: time_target(t.teardown_all_met),
        }])
        .chain(Phase::TEARDOWN.cpu_rows(cpu_count))
        .chain([
            Metric {
                name: format!("daemon RSS, {n} running"),
                unit: "MiB",
                pick: |d| &d.rss_mib,
                ratio: self.ratios.as_ref().map(|r| r.rss),
                target: judged(&format!("< {TARGET_RSS_MIB} MiB"), t.rss_met),
            },
            Metric {
                name: "  of which anonymous".to_string(),
                unit: "MiB",
                pick: |d| &d.rss_anon_mib,
                ratio: None,
                target: "(heap, stacks)".to_string(),
            },
            Metric {
                name: "  of which file-backed".to_string(),
                unit: "MiB",
                pick: |d| &d.rss_file_mib,
                ratio: None,
                target: "(code, shared with the page cache)".to_string(),
            },
            Metric {
                name: format!("shims' RSS, {n} running"),
                unit: "MiB",
                pick: |d| &d.shims_rss_mib,
                ratio: None,
                target: "(not the daemon's)".to_string(),
            },
        ]);
        for metric in metrics {
            rows.extend(metric.rows(&self.daemons, self.ratios.is_some()));
        }

        let mut out = format!(
            "run: {}, {} × `ctr run --rm`, {} rounds of {n} containers, {}\n",
            self.image.reference,
            self.settings.runs,
            self.settings.rounds,
            cpus(&self.machine, ""),
        );
        disk_line(&mut out, &self.filesystem);
        for d in &self.tools.daemons {
            field(
                &mut out,
                &format!("{}:", d.daemon),
                format_args!("{} (version {}), namespace {}", d.binary, d.version, d.namespace),
            );
        }
        let tools = &self.tools;
        for (label, tool) in [("ctr:", &tools.ctr), ("shim:", &tools.shim), ("runc:", &tools.runc)] {
            field(&mut out, label, format_args!("{} ({})", tool.binary, tool.version));
        }
        out.push('\n');
        out.push_str(&align(&rows));
        out.push('\n');
        if self.ratios.is_some() {
            out.push_str("ratio = corten / containerd (medians)\n");
        } else {
            out.push_str("no ratios and no time targets judged: only one daemon was measured\n");
        }
        let _ = writeln!(
            out,
            "when the targets were set: containerd 1.6 took about {} ms for `ctr run --rm` and its RSS with \
             20 containers was about {} MiB on this machine",
            t.containerd_seen_run_rm_ms, t.containerd_seen_rss_mib
        );
        let _ = writeln!(out, "image: {}", self.image.manifest_digest);
        notes(&mut out, &self.notes);
        out
    }
}

/// The parallel start or the teardown, for the notes on its CPU time.
struct Phase {
    name: &'static str,
    wall_ms: fn(&DaemonResult) -> &Summary,
    all_cpu_ms: fn(&DaemonResult) -> &Summary,
    daemon_cpu_ms: fn(&DaemonResult) -> &Summary,
}

impl Phase {
    const START: Phase = Phase {
        name: "start",
        wall_ms: |d| &d.start_all_ms,
        all_cpu_ms: |d| &d.start_all_cpu_ms,
        daemon_cpu_ms: |d| &d.start_daemon_cpu_ms,
    };
    const TEARDOWN: Phase = Phase {
        name: "teardown",
        wall_ms: |d| &d.teardown_all_ms,
        all_cpu_ms: |d| &d.teardown_all_cpu_ms,
        daemon_cpu_ms: |d| &d.teardown_daemon_cpu_ms,
    };

    /// The rows under the phase's time: every CPU's busy time, and the
    /// daemon's own.
    fn cpu_rows(&self, cpus: usize) -> [Metric; 2] {
        [
            Metric {
                name: "  CPU busy meanwhile, all".to_string(),
                unit: "ms",
                pick: self.all_cpu_ms,
                ratio: None,
                target: format!("(at most {cpus} × the time above)"),
            },
            Metric {
                name: "  of which the daemon's".to_string(),
                unit: "ms",
                pick: self.daemon_cpu_ms,
                ratio: None,
                target: "(its own process)".to_string(),
            },
        ]
    }

    fn share_note(&self, d: &DaemonResult) -> String {
        format!(
            "{}: {}'s own process used {:.0}% of the CPU time every process used meanwhile (medians); the \
             rest went to ctr, the shims, runc and the benchmark, the same for both daemons",
            self.name,
            d.daemon,
            100.0 * (self.daemon_cpu_ms)(d).median / (self.all_cpu_ms)(d).median.max(1.0)
        )
    }

    /// What corten could reach at best while the other processes need the
    /// CPU they needed: no phase takes less time than their CPU time spread
    /// over every CPU, even with a daemon that uses none.
    fn bound_note(&self, corten: &DaemonResult, containerd: &DaemonResult, cpus: usize) -> String {
        let cpus = cpus.max(1) as f64;
        let all = (self.all_cpu_ms)(corten).median;
        let others = all - (self.daemon_cpu_ms)(corten).median;
        let wall = (self.wall_ms)(corten).median;
        let floor = others / cpus;
        format!(
            "{}: with corten the {cpus} CPUs were busy {:.0}% of the time; the other processes alone used \
             {others:.0} ms of CPU, so even a daemon using no CPU at all would take at least {floor:.0} ms: a \
             ratio of {:.2} at best to containerd's {:.0} ms",
            self.name,
            100.0 * all / (cpus * wall).max(1.0),
            floor / (self.wall_ms)(containerd).median.max(1e-9),
            (self.wall_ms)(containerd).median
        )
    }
}

/// `what: met`, `what: MISSED`, or `what: not judged`.
fn judged(what: &str, met: Option<bool>) -> String {
    format!("{what}: {}", met.map_or("not judged", verdict))
}

/// One measured quantity as a median row and a spread row.
struct Metric {
    name: String,
    unit: &'static str,
    pick: fn(&DaemonResult) -> &Summary,
    ratio: Option<f64>,
    target: String,
}

impl Metric {
    fn rows(&self, daemons: &[DaemonResult], ratio_column: bool) -> [Vec<String>; 2] {
        let unit = self.unit;
        let mut median = vec![format!("{}, median", self.name)];
        let mut spread = vec![format!("{}, min-max", self.name)];
        for d in daemons {
            let s = (self.pick)(d);
            median.push(format!("{:.1} {unit}", s.median));
            spread.push(format!("{:.1}-{:.1} {unit}", s.min, s.max));
        }
        if ratio_column {
            median.push(ratio(self.ratio));
            spread.push(String::new());
        }
        median.push(self.target.clone());
        [median, spread]
    }
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::Duration};

    use corten_tests::registry::PushedImage;

    use super::{Context, Report};
    use crate::{
        daemon::{Kind, Subject},
        machine::Machine,
        run::{ctr::Ctr, host::Runtime, measure::Plan, measure::Series},
        workdir::Filesystem,
    };

    fn series(kind: Kind, scale: f64, rss_kib: u64) -> Series {
        Series {
            kind,
            version: "v".to_string(),
            namespace: format!("bench-{}", kind.name()),
            run_rm: vec![0.1 * scale, 0.12 * scale, 0.11 * scale],
            start: vec![1.5 * scale],
            start_all_cpu_ms: vec![2900.0 * scale],
            start_daemon_cpu_ms: vec![200.0 * scale],
            teardown: vec![1.0 * scale],
            teardown_all_cpu_ms: vec![1900.0 * scale],
            teardown_daemon_cpu_ms: vec![150.0 * scale],
            rss_kib: vec![rss_kib],
            rss_anon_kib: vec![rss_kib / 3],
            rss_file_kib: vec![rss_kib - rss_kib / 3],
            shims_rss_kib: vec![20 * 13 * 1024],
            shims: vec![20],
            fifos_left: 0,
        }
    }

    fn report(kinds: &[Kind], measured: Vec<Series>) -> Report {
        let plan = Plan {
            runs: 3,
            warmup: 1,
            containers: 20,
            rounds: 1,
            settle: Duration::from_millis(1000),
        };
        let subjects: Vec<Subject> = kinds
            .iter()
            .map(|&kind| Subject {
                kind,
                binary: PathBuf::from(format!("/bin/{}", kind.name())),
            })
            .collect();
        let ctr = Ctr {
            binary: PathBuf::from("/usr/bin/ctr"),
            version: "ctr 1.6".to_string(),
            timeout: Duration::from_secs(60),
        };
        let runtime = Runtime {
            shim: PathBuf::from("/usr/bin/containerd-shim-runc-v2"),
            shim_version: "1.6".to_string(),
            runc: PathBuf::from("/usr/sbin/runc"),
            runc_version: "runc 1.1".to_string(),
        };
        let image = PushedImage {
            reference: "127.0.0.1:5000/bench/busybox:v1".to_string(),
            manifest_digest: "sha256:00".to_string(),
            media_type: "application/vnd.oci.image.manifest.v1+json",
            config_digest: "sha256:01".to_string(),
            layers: Vec::new(),
            platforms: Vec::new(),
        };
        let context = Context {
            plan: &plan,
            machine: Machine {
                cpus: 2,
                busy_before: Some(0.0),
                busy_during: Some(0.0),
            },
            filesystem: Filesystem {
                dir: "/var/tmp/x".to_string(),
                kind: "ext4".to_string(),
                source: None,
                mount_point: None,
            },
            subjects: &subjects,
            ctr: &ctr,
            runtime: &runtime,
            registry_version: "registry".to_string(),
            image: &image,
        };
        Report::new(context, measured)
    }

    #[test]
    fn both_daemons_give_ratios_and_judge_every_target() {
        let r = report(
            &[Kind::Corten, Kind::Containerd],
            vec![
                series(Kind::Corten, 0.5, 10 * 1024),
                series(Kind::Containerd, 1.0, 51 * 1024),
            ],
        );
        let ratios = r.ratios.as_ref().expect("ratios");
        assert!((ratios.run_rm - 0.5).abs() < 1e-9);
        assert!((ratios.teardown_all - 0.5).abs() < 1e-9);
        assert_eq!(r.targets.run_rm_met, Some(true));
        assert_eq!(r.targets.start_all_met, Some(true));
        assert_eq!(r.targets.rss_met, Some(true));
        let table = r.table();
        assert!(table.contains("corten") && table.contains("containerd"));
        assert!(table.contains("0.50"));
        assert!(!table.contains("MISSED"));
    }

    #[test]
    fn a_slow_corten_misses() {
        let r = report(
            &[Kind::Corten, Kind::Containerd],
            vec![
                series(Kind::Corten, 0.9, 20 * 1024),
                series(Kind::Containerd, 1.0, 51 * 1024),
            ],
        );
        assert_eq!(r.targets.run_rm_met, Some(false));
        assert_eq!(r.targets.rss_met, Some(false));
        assert!(r.table().contains("MISSED"));
    }

    #[test]
    fn one_daemon_judges_no_time_target() {
        let r = report(&[Kind::Containerd], vec![series(Kind::Containerd, 1.0, 51 * 1024)]);
        assert!(r.ratios.is_none());
        assert_eq!(r.targets.run_rm_met, None);
        assert_eq!(r.targets.rss_met, None);
        let table = r.table();
        assert!(table.contains("not judged"));
        assert!(!table.contains("ratio  "));

        let r = report(&[Kind::Corten], vec![series(Kind::Corten, 1.0, 10 * 1024)]);
        assert_eq!(r.targets.run_rm_met, None);
        assert_eq!(r.targets.rss_met, Some(true));
    }
}
