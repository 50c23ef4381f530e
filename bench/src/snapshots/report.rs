//! The snapshots results as a table for people and JSON for tools.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    layer::Layer,
    limit::Tools,
    measure::{Measured, Plan, Row},
    Snapshotter,
};
use crate::table::{cpus, daemon_lines, disk_line, field, notes, verdict, Daemon, Versus};
use crate::workdir::Filesystem;
use crate::{
    daemon::{Kind, Subject},
    idle::Idle,
    machine::Machine,
    stats::Summary,
};

/// The goals from the snapshots issue: corten's prepare + remove cycles at
/// this rate or better, and its apply at this share of `tar -xzf`'s speed.
const TARGET_CYCLES_PER_S: f64 = 1000.0;
const TARGET_APPLY_RATIO: f64 = 0.8;
/// What an fsync cost on this kind of machine when the targets were set.
const SEEN_FSYNC_MS: f64 = 0.2;
const MIB: f64 = (1u64 << 20) as f64;

#[derive(Serialize)]
pub struct Report {
    benchmark: &'static str,
    machine: Machine,
    idle: Idle,
    filesystem: Filesystem,
    settings: Settings,
    tools: ToolVersions,
    layer: Layer,
    notes: Vec<String>,
    /// One 4 KiB write + fsync in the benchmark directory; the medians of
    /// each round.
    fsync_ms: Summary,
    /// In measuring order: per snapshotter, corten then containerd (absent
    /// with --no-reference); the limit last.
    cycles: Vec<CyclesResult>,
    /// The daemons, then the limit.
    apply: Vec<ApplyResult>,
    limit: Limit,
    targets: Targets,
}

#[derive(Serialize)]
struct Settings {
    cycles: u32,
    snapshotters: Vec<Snapshotter>,
    layer_mib: u64,
    runs: u32,
}

#[derive(Serialize)]
struct ToolVersions {
    cortend: Daemon,
    /// Absent with --no-reference.
    containerd: Option<Daemon>,
    tar: String,
    gzip: String,
}

#[derive(Serialize)]
struct CyclesResult {
    row: String,
    label: String,
    cycles_per_s: Summary,
    seconds: Summary,
    /// corten over containerd with the same snapshotter, medians; corten
    /// rows only, and only with the reference.
    ratio_to_containerd: Option<f64>,
    /// Over the limit's cycles per second, medians; daemon rows only.
    ratio_to_limit: Option<f64>,
    /// One Version call on the cycles' connection, before them; daemon
    /// rows only.
    round_trip_ms: Option<Summary>,
}

#[derive(Serialize)]
struct ApplyResult {
    row: String,
    label: String,
    /// Of the gzip: the layer's size over the wall time.
    mib_per_s: Summary,
    /// Of the tar inside.
    uncompressed_mib_per_s: Summary,
    seconds: Summary,
    /// The `syncfs` right after; not part of `seconds`.
    syncfs_seconds: Summary,
    /// Gzip MiB over the medians of the time plus the syncfs.
    with_syncfs_mib_per_s: f64,
    /// Median over tar's median.
    ratio_to_tar: f64,
    /// The same with each side's syncfs added.
    with_syncfs_ratio_to_tar: f64,
    ratio_to_containerd: Option<f64>,
}

#[derive(Serialize)]
struct Limit {
    /// `tar -xzf`, no sync: gzip MiB per second.
    mib_per_s: f64,
    with_syncfs_mib_per_s: f64,
    /// The durable cycle without gRPC or a database, median.
    cycles_per_s: f64,
}

#[derive(Serialize)]
struct Targets {
    cycles_per_s: f64,
    apply_ratio_to_tar: f64,
    /// One per corten snapshotter measured.
    measured: Vec<TargetResult>,
    seen_fsync_ms: f64,
}

#[derive(Serialize)]
struct TargetResult {
    snapshotter: Snapshotter,
    cycles_per_s: f64,
    cycles_met: bool,
    cycles_ratio_to_limit: f64,
    /// The durable cycle plus two of corten's round trips (a Prepare and a
    /// Remove are two calls), per second; and corten's cycles over it.
    limit_with_calls_per_s: f64,
    cycles_ratio_to_limit_with_calls: f64,
    apply_ratio_to_tar: f64,
    apply_met: bool,
}

pub struct Context<'a> {
    pub plan: &'a Plan,
    pub machine: Machine,
    pub idle: Idle,
    pub filesystem: Filesystem,
    pub subjects: &'a [Subject],
    pub tools: &'a Tools,
    pub layer: &'a Layer,
}

impl Report {
    pub fn new(context: Context<'_>, measured: Measured) -> Report {
        let Context {
            plan,
            machine,
            idle,
            filesystem,
            subjects,
            tools,
            layer,
        } = context;
        let gzip_mib = layer.size as f64 / MIB;
        let tar_mib = layer.uncompressed as f64 / MIB;
        let median_seconds = |wanted: Row| {
            measured
                .series
                .iter()
                .find(|s| s.row == wanted)
                .map(|s| Summary::of(s.seconds.clone()).median)
        };
        let median_syncfs = |wanted: Row| {
            measured
                .series
                .iter()
                .find(|s| s.row == wanted)
                .filter(|s| !s.syncfs_seconds.is_empty())
                .map(|s| Summary::of(s.syncfs_seconds.clone()).median)
        };
        let tar_seconds = median_seconds(Row::Tar).expect("the limit is always measured");
        let tar_flush = median_syncfs(Row::Tar).expect("the limit's syncfs is always measured");
        let limit_cycle_seconds = median_seconds(Row::CyclesLimit).expect("the limit is always measured");
        let limit = Limit {
            mib_per_s: gzip_mib / tar_seconds,
            with_syncfs_mib_per_s: gzip_mib / (tar_seconds + tar_flush),
            cycles_per_s: f64::from(plan.cycles) / limit_cycle_seconds,
        };

        let mut cycles = Vec::new();
        let mut apply = Vec::new();
        for s in &measured.series {
            let seconds = Summary::of(s.seconds.clone());
            match s.row {
                Row::Cycles(..) | Row::CyclesLimit => {
                    let rates = Summary::of(s.seconds.iter().map(|t| f64::from(plan.cycles) / t).collect());
                    let reference = match s.row {
                        Row::Cycles(Kind::Corten, sn) => median_seconds(Row::Cycles(Kind::Containerd, sn)),
                        _ => None,
                    };
                    cycles.push(CyclesResult {
                        row: s.row.key(),
                        label: s.row.label(),
                        // Rates are inverse times: corten / containerd in
                        // cycles per second is containerd's time over corten's.
                        ratio_to_containerd: reference.map(|c| c / seconds.median),
                        ratio_to_limit: (s.row != Row::CyclesLimit).then(|| limit_cycle_seconds / seconds.median),
                        round_trip_ms: (!s.round_trip_seconds.is_empty())
                            .then(|| Summary::of(s.round_trip_seconds.iter().map(|r| r * 1e3).collect())),
                        cycles_per_s: rates,
                        seconds,
                    });
                }
                Row::Apply(..) | Row::Tar => {
                    let flush = Summary::of(s.syncfs_seconds.clone());
                    let reference = match s.row {
                        Row::Apply(Kind::Corten, sn) => median_seconds(Row::Apply(Kind::Containerd, sn)),
                        _ => None,
                    };
                    let with_flush = seconds.median + flush.median;
                    apply.push(ApplyResult {
                        row: s.row.key(),
                        label: s.row.label(),
                        mib_per_s: Summary::of(s.seconds.iter().map(|t| gzip_mib / t).collect()),
                        uncompressed_mib_per_s: Summary::of(s.seconds.iter().map(|t| tar_mib / t).collect()),
                        with_syncfs_mib_per_s: gzip_mib / with_flush,
                        ratio_to_tar: tar_seconds / seconds.median,
                        with_syncfs_ratio_to_tar: (tar_seconds + tar_flush) / with_flush,
                        ratio_to_containerd: reference.map(|c| c / seconds.median),
                        seconds,
                        syncfs_seconds: flush,
                    });
                }
            }
        }
        // The limits last: the tables lead with what is judged.
        apply.sort_by_key(|a| a.row == Row::Tar.key());
        cycles.sort_by_key(|c| c.row == Row::CyclesLimit.key());

        let measured_targets = plan
            .snapshotters
            .iter()
            .map(|&sn| {
                let cycle_seconds = median_seconds(Row::Cycles(Kind::Corten, sn)).expect("corten is always measured");
                let cycles_per_s = f64::from(plan.cycles) / cycle_seconds;
                let round_trip = measured
                    .series
                    .iter()
                    .find(|s| s.row == Row::Cycles(Kind::Corten, sn))
                    .map(|s| Summary::of(s.round_trip_seconds.clone()).median)
                    .expect("corten is always measured");
                let with_calls_seconds = limit_cycle_seconds + 2.0 * round_trip * f64::from(plan.cycles);
                let apply_ratio =
                    tar_seconds / median_seconds(Row::Apply(Kind::Corten, sn)).expect("corten is always measured");
                TargetResult {
                    snapshotter: sn,
                    cycles_per_s,
                    cycles_met: cycles_per_s >= TARGET_CYCLES_PER_S,
                    cycles_ratio_to_limit: limit_cycle_seconds / cycle_seconds,
                    limit_with_calls_per_s: f64::from(plan.cycles) / with_calls_seconds,
                    cycles_ratio_to_limit_with_calls: with_calls_seconds / cycle_seconds,
                    apply_ratio_to_tar: apply_ratio,
                    apply_met: apply_ratio >= TARGET_APPLY_RATIO,
                }
            })
            .collect();

        let mut daemons = subjects.iter().zip(measured.versions).map(|(s, version)| Daemon {
            binary: s.binary.display().to_string(),
            version,
        });
        let cortend = daemons.next().expect("corten is always measured");
        let containerd = daemons.next();

        let mut notes = vec![
            format!(
                "medians over {} runs; every daemon row ran on a freshly started daemon (start not timed) \
                 whose root was in the benchmark directory, after a `sync`",
                plan.runs
            ),
            format!(
                "cycles: {} times Prepare `k<i>` (no parent) then Remove `k<i>` in namespace `bench` under a \
                 lease, one call after the other on one connection made beforehand; cycles/s = {} / the wall \
                 time of all. Without the lease both daemons' garbage collectors take unleased snapshots \
                 between a Prepare and its Remove",
                plan.cycles, plan.cycles
            ),
            "apply: the layer is written through the Content service and an empty snapshot is prepared, \
             both under a lease and not timed; then the Diff service's Apply onto the snapshot's mounts is \
             timed (the answer must name the tar's digest); MiB/s of the gzip, and of the tar inside"
                .to_string(),
            "limit: durable cycle: the cycles reduced to what any snapshotter does at least when its \
             records are durable and every snapshot gets a new `fs` directory (one without a parent needs \
             no `work`), in the benchmark's own process on the same disk, without gRPC or a database: a prepare renames a \
             ready directory into place and makes a 512-byte record durable (`pwrite` into a preallocated \
             log, then `fdatasync`), a remove makes another durable and renames the directory out; a \
             second thread makes `fs` in the ready directories, removes it from removed ones and reuses \
             the emptied directories"
                .to_string(),
            "ms per call: before its cycles, each daemon answers as many Version calls, one after the \
             other on the same connection, timed apart: the least a call costs through the daemon's gRPC \
             stack and the socket. limit + 2 calls adds two of corten's to the durable cycle, since a \
             cycle is a Prepare and a Remove"
                .to_string(),
            "limit: `tar -xzf LAYER -C DIR` into a new, empty directory on the same disk, exec to exit \
             (GNU tar runs `gzip -d` as a second process, so inflating and writing overlap on two CPUs); \
             like an apply it syncs nothing, so the ratio to tar compares without a sync"
                .to_string(),
            "with syncfs: the `syncfs` of the benchmark's filesystem right after each apply and each tar, \
             added to its time; it also writes back other processes' dirty pages on that filesystem"
                .to_string(),
        ];
        notes.extend(subjects.iter().flat_map(Subject::notes));
        notes.extend(machine.busy_note());
        if idle.halts_at_once() {
            notes.push(
                "cpuidle: this VM's idle vCPUs halt without polling first, so every wait of a cycle \
                 (for a request, for a reply, and for the disk in each fdatasync: twice where the disk \
                 has no FUA, once for the write and once for the cache flush) ends in a wake-up that \
                 goes through the hypervisor; ms per call and the fsync probe include them, and a \
                 daemon avoids them only by keeping a CPU busy"
                    .to_string(),
            );
        }

        Report {
            benchmark: "snapshots",
            machine,
            idle,
            filesystem,
            settings: Settings {
                cycles: plan.cycles,
                snapshotters: plan.snapshotters.clone(),
                layer_mib: plan.layer_mib,
                runs: plan.runs,
            },
            tools: ToolVersions {
                cortend,
                containerd,
                tar: tools.tar.clone(),
                gzip: tools.gzip.clone(),
            },
            layer: layer.clone(),
            notes,
            fsync_ms: Summary::of(measured.fsync_seconds.iter().map(|s| s * 1e3).collect()),
            cycles,
            apply,
            limit,
            targets: Targets {
                cycles_per_s: TARGET_CYCLES_PER_S,
                apply_ratio_to_tar: TARGET_APPLY_RATIO,
                measured: measured_targets,
                seen_fsync_ms: SEEN_FSYNC_MS,
            },
        }
    }

    /// One `<snapshotter> <what>` per corten snapshotter measured, joined by `separator`.
    fn per_snapshotter(&self, separator: &str, what: impl Fn(&TargetResult) -> String) -> String {
        self.targets
            .measured
            .iter()
            .map(|t| format!("{} {}", t.snapshotter.name(), what(t)))
            .collect::<Vec<_>>()
            .join(separator)
    }

    pub fn table(&self) -> String {
        let reference = self.tools.containerd.is_some();
        let mut out = format!(
            "snapshots: {} prepare + remove cycles, a {:.1} MiB gzip layer, {} runs, {}\n",
            self.settings.cycles,
            self.layer.size as f64 / MIB,
            self.settings.runs,
            cpus(&self.machine, ""),
        );
        disk_line(&mut out, &self.filesystem);
        let t = &self.tools;
        daemon_lines(&mut out, &t.cortend, t.containerd.as_ref());
        field(&mut out, "tar:", format_args!("{}; {}", t.tar, t.gzip));
        let layer = &self.layer;
        field(
            &mut out,
            "layer:",
            format_args!(
                "{:.1} MiB gzip, {:.1} MiB tar: {} files, {} directories, {} symlinks",
                layer.size as f64 / MIB,
                layer.uncompressed as f64 / MIB,
                layer.files,
                layer.dirs,
                layer.symlinks
            ),
        );
        field(&mut out, "cpuidle:", self.idle.describe());
        field(
            &mut out,
            "fsync:",
            format_args!(
                "{:.3} ms for a 4 KiB write + fsync in the benchmark directory ({:.3}-{:.3} over the rounds)",
                self.fsync_ms.median, self.fsync_ms.min, self.fsync_ms.max
            ),
        );
        out.push('\n');

        let mut table = Versus::new(
            &["prepare + remove", "cycles/s", "min-max", "ms per cycle", "ms per call"],
            reference,
        );
        for c in &self.cycles {
            table.row(
                vec![
                    c.label.clone(),
                    format!("{:.0}", c.cycles_per_s.median),
                    format!("{:.0}-{:.0}", c.cycles_per_s.min, c.cycles_per_s.max),
                    format!("{:.3}", 1e3 / c.cycles_per_s.median),
                    c.round_trip_ms
                        .as_ref()
                        .map_or_else(|| "-".to_string(), |r| format!("{:.3}", r.median)),
                ],
                c.ratio_to_containerd,
            );
        }
        out.push_str(&table.render());
        out.push('\n');

        let mut table = Versus::new(
            &[
                "apply",
                "MiB/s gzip",
                "min-max",
                "MiB/s tar",
                "seconds",
                "ratio to tar -xzf",
                "with syncfs: s, MiB/s, ratio",
            ],
            reference,
        );
        for a in &self.apply {
            table.row(
                vec![
                    a.label.clone(),
                    format!("{:.1}", a.mib_per_s.median),
                    format!("{:.1}-{:.1}", a.mib_per_s.min, a.mib_per_s.max),
                    format!("{:.1}", a.uncompressed_mib_per_s.median),
                    format!("{:.2}", a.seconds.median),
                    format!("{:.2}", a.ratio_to_tar),
                    format!(
                        "+{:.2} s, {:.1}, {:.2}",
                        a.syncfs_seconds.median, a.with_syncfs_mib_per_s, a.with_syncfs_ratio_to_tar
                    ),
                ],
                a.ratio_to_containerd,
            );
        }
        out.push_str(&table.render());
        out.push('\n');

        let to_limit = self.per_snapshotter(", ", |t| format!("at {:.2} of it", t.cycles_ratio_to_limit));
        let _ = writeln!(
            out,
            "limit = a durable cycle without gRPC or a database at {:.0}/s; corten {to_limit}",
            self.limit.cycles_per_s,
        );
        let with_calls = self.per_snapshotter("; ", |t| {
            format!(
                "{:.0}/s, corten at {:.2} of it",
                t.limit_with_calls_per_s, t.cycles_ratio_to_limit_with_calls
            )
        });
        let _ = writeln!(
            out,
            "limit + 2 calls = the durable cycle with two of corten's cheapest calls added: {with_calls}"
        );
        let _ = writeln!(
            out,
            "limit = tar -xzf at {:.1} MiB/s of gzip, without a sync (an apply syncs nothing either); \
             {:.1} MiB/s with its syncfs",
            self.limit.mib_per_s, self.limit.with_syncfs_mib_per_s
        );
        let cycles = self.per_snapshotter(", ", |t| format!("{:.0}/s {}", t.cycles_per_s, verdict(t.cycles_met)));
        let _ = writeln!(
            out,
            "target: corten at {:.0} prepare + remove cycles per second or better: {cycles}",
            self.targets.cycles_per_s,
        );
        let applies = self.per_snapshotter(", ", |t| {
            format!("{:.2} {}", t.apply_ratio_to_tar, verdict(t.apply_met))
        });
        let _ = writeln!(
            out,
            "target: corten apply at {} of tar -xzf's speed or better: {applies}",
            self.targets.apply_ratio_to_tar,
        );
        let budget_ms = 1e3 / self.targets.cycles_per_s;
        let _ = writeln!(
            out,
            "when the targets were set an fsync cost about {} ms on this disk; the target leaves {:.1} ms per \
             cycle, {:.1} fsyncs at this run's {:.3} ms",
            self.targets.seen_fsync_ms,
            budget_ms,
            budget_ms / self.fsync_ms.median,
            self.fsync_ms.median
        );
        let _ = writeln!(out, "layer: {} (tar {})", self.layer.digest, self.layer.diff_id);
        notes(&mut out, &self.notes);
        out
    }
}
