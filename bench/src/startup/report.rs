//! The startup results as a table for people and JSON for tools.

use std::fmt::Write as _;

use serde::Serialize;

use super::measure::{Measured, Plan};
use crate::{
    daemon::Subject,
    machine::Machine,
    stats::Summary,
    table::{align, percent},
};

/// The goals the startup work is held to.
const COLD_START_TARGET_MS: f64 = 15.0;
const IDLE_RSS_TARGET_MIB: f64 = 10.0;
/// What containerd 1.6 measured on this kind of machine when the targets were
/// set; a reference run far from these suggests the machine, not the daemons,
/// changed.
const CONTAINERD_SEEN_COLD_START_MS: f64 = 41.0;
const CONTAINERD_SEEN_IDLE_RSS_MIB: f64 = 38.0;

#[derive(Serialize)]
pub struct Report {
    benchmark: &'static str,
    machine: Machine,
    settings: Settings,
    notes: Vec<String>,
    corten: Daemon,
    /// Absent with --no-reference.
    containerd: Option<Daemon>,
    /// corten / containerd, from the medians; absent with --no-reference.
    ratios: Option<Ratios>,
    targets: Targets,
}

#[derive(Serialize)]
struct Settings {
    runs: u32,
    rss_runs: u32,
    warmup: u32,
    settle_ms: u128,
    poll_us: u128,
    timeout_ms: u128,
}

#[derive(Serialize)]
struct Daemon {
    binary: String,
    version: String,
    cold_start_ms: Summary,
    idle_rss_mib: Summary,
}

#[derive(Serialize)]
struct Ratios {
    cold_start: f64,
    idle_rss: f64,
}

#[derive(Serialize)]
struct Targets {
    cold_start_ms: f64,
    idle_rss_mib: f64,
    cold_start_met: bool,
    idle_rss_met: bool,
    containerd_seen_cold_start_ms: f64,
    containerd_seen_idle_rss_mib: f64,
}

impl Report {
    /// `results` is in the order of `subjects`: corten, then the reference if any.
    pub fn new(plan: &Plan, machine: Machine, subjects: &[Subject], results: Vec<Measured>) -> Report {
        let mut daemons = subjects.iter().zip(results).map(|(subject, m)| Daemon {
            binary: subject.binary.display().to_string(),
            version: m.version,
            cold_start_ms: m.cold_start_ms,
            idle_rss_mib: m.idle_rss_mib,
        });
        let corten = daemons.next().expect("corten is always measured");
        let containerd = daemons.next();
        let ratios = containerd.as_ref().map(|c| Ratios {
            cold_start: corten.cold_start_ms.median / c.cold_start_ms.median,
            idle_rss: corten.idle_rss_mib.median / c.idle_rss_mib.median,
        });
        let mut notes = vec![
            format!(
                "cold start: exec to the first answered containerd.services.version.v1.Version/Version \
                 on a fresh root, polled with a new connection every {} µs; {} unmeasured warm-up start(s) per daemon",
                plan.poll.as_micros(),
                plan.warmup
            ),
            format!("idle RSS: VmRSS {} ms after the first answer", plan.settle.as_millis()),
        ];
        notes.extend(subjects.iter().flat_map(Subject::notes));
        notes.extend(machine.busy_note());
        Report {
            benchmark: "startup",
            machine,
            settings: Settings {
                runs: plan.runs,
                rss_runs: plan.rss_runs,
                warmup: plan.warmup,
                settle_ms: plan.settle.as_millis(),
                poll_us: plan.poll.as_micros(),
                timeout_ms: plan.timeout.as_millis(),
            },
            notes,
            targets: Targets {
                cold_start_ms: COLD_START_TARGET_MS,
                idle_rss_mib: IDLE_RSS_TARGET_MIB,
                cold_start_met: corten.cold_start_ms.median < COLD_START_TARGET_MS,
                idle_rss_met: corten.idle_rss_mib.median < IDLE_RSS_TARGET_MIB,
                containerd_seen_cold_start_ms: CONTAINERD_SEEN_COLD_START_MS,
                containerd_seen_idle_rss_mib: CONTAINERD_SEEN_IDLE_RSS_MIB,
            },
            corten,
            containerd,
            ratios,
        }
    }

    pub fn table(&self) -> String {
        let reference = self.containerd.as_ref();
        let mut header = vec!["metric", "corten"];
        if reference.is_some() {
            header.extend(["containerd", "ratio"]);
        }
        header.push("target (corten)");
        let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];

        let cold = Metric {
            name: "cold start",
            unit: "ms",
            pick: |d| &d.cold_start_ms,
            ratio: self.ratios.as_ref().map(|r| r.cold_start),
            target: self.targets.cold_start_ms,
            met: self.targets.cold_start_met,
        };
        let rss = Metric {
            name: "idle RSS",
            unit: "MiB",
            pick: |d| &d.idle_rss_mib,
            ratio: self.ratios.as_ref().map(|r| r.idle_rss),
            target: self.targets.idle_rss_mib,
            met: self.targets.idle_rss_met,
        };
        for metric in [cold, rss] {
            rows.extend(metric.rows(&self.corten, reference));
        }

        let mut out = format!(
            "startup: {} cold starts, idle RSS over {} runs, {} CPUs \
             (CPU used by other work: {} before, {} during)\n",
            self.settings.runs,
            self.settings.rss_runs,
            self.machine.cpus,
            percent(self.machine.busy_before),
            percent(self.machine.busy_during),
        );
        let _ = writeln!(
            out,
            "  corten:     {} (version {})",
            self.corten.binary, self.corten.version
        );
        if let Some(c) = reference {
            let _ = writeln!(out, "  containerd: {} (version {})", c.binary, c.version);
        }
        out.push('\n');
        out.push_str(&align(&rows));
        out.push('\n');
        if reference.is_some() {
            let _ = writeln!(
                out,
                "ratio = corten / containerd (medians); containerd 1.6 was seen at about {} ms and {} MiB on this machine",
                self.targets.containerd_seen_cold_start_ms, self.targets.containerd_seen_idle_rss_mib
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

/// One measured quantity as a median row and a spread row.
struct Metric {
    name: &'static str,
    unit: &'static str,
    pick: fn(&Daemon) -> &Summary,
    ratio: Option<f64>,
    target: f64,
    met: bool,
}

impl Metric {
    fn rows(&self, corten: &Daemon, reference: Option<&Daemon>) -> [Vec<String>; 2] {
        let (name, unit, pick) = (self.name, self.unit, self.pick);
        let mut median = vec![format!("{name}, median"), format!("{:.1} {unit}", pick(corten).median)];
        let mut spread = vec![format!("{name}, min-max"), range(pick(corten), unit)];
        if let Some(c) = reference {
            median.extend([
                format!("{:.1} {unit}", pick(c).median),
                format!("{:.2}", self.ratio.unwrap_or(f64::NAN)),
            ]);
            spread.extend([range(pick(c), unit), String::new()]);
        }
        median.push(format!(
            "< {} {unit}: {}",
            self.target,
            if self.met { "met" } else { "MISSED" }
        ));
        [median, spread]
    }
}

fn range(s: &Summary, unit: &str) -> String {
    format!("{:.1}-{:.1} {unit}", s.min, s.max)
}
