//! The ingest results as a table for people and JSON for tools.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    ctr::Ctr,
    measure::{Measured, Plan, Route},
};
use crate::table::{cpus, daemon_lines, disk_line, field, notes, verdict, Daemon, Versus};
use crate::workdir::Filesystem;
use crate::{
    daemon::{Kind, Subject},
    machine::Machine,
    stats::Summary,
};

/// The goal from the ingest issue: corten's API ingest at this share of
/// the limit or better.
const TARGET_RATIO: f64 = 0.7;
/// What was seen on this kind of machine when the target was set; a run far
/// from these suggests the machine changed, not the daemons.
const CONTAINERD_SEEN_CTR_MIB_S: f64 = 150.0;
const SEEN_SHA256_MB_S: f64 = 1500.0;
const SEEN_DISK_MB_S: f64 = 400.0;

#[derive(Serialize)]
pub struct Report {
    benchmark: &'static str,
    machine: Machine,
    filesystem: Filesystem,
    settings: Settings,
    tools: Tools,
    /// The input's digest; every ingest committed exactly this.
    digest: String,
    notes: Vec<String>,
    /// In table order; the containerd rows are absent with --no-reference.
    paths: Vec<PathResult>,
    limit: Limit,
    target: Target,
}

#[derive(Serialize)]
struct Settings {
    size_mib: u64,
    chunk_kib: usize,
    runs: u32,
}

#[derive(Serialize)]
struct Tools {
    cortend: Daemon,
    /// Absent with --no-reference.
    containerd: Option<Daemon>,
    ctr: String,
    openssl: String,
}

#[derive(Serialize)]
struct PathResult {
    path: String,
    label: String,
    mib_per_s: Summary,
    seconds: Summary,
    /// The wait for the disk at the end, where it can be seen: from the last
    /// WRITE's answer to the COMMIT's on the API rows, the `sync` of the
    /// copy on the copy+sync row.
    flush_seconds: Option<Summary>,
    /// Median throughput over the limit's.
    ratio_to_limit: f64,
    /// corten over containerd on the same path, medians; corten rows only,
    /// and only with the reference.
    ratio_to_containerd: Option<f64>,
}

#[derive(Serialize)]
struct Limit {
    /// The slower of the two limit rows (medians).
    mib_per_s: f64,
    set_by: String,
}

#[derive(Serialize)]
struct Target {
    path: String,
    ratio_to_limit: f64,
    measured: f64,
    met: bool,
    containerd_seen_ctr_mib_per_s: f64,
    seen_sha256_mb_per_s: f64,
    seen_disk_mb_per_s: f64,
}

pub struct Context<'a> {
    pub plan: &'a Plan,
    pub machine: Machine,
    pub filesystem: Filesystem,
    pub subjects: &'a [Subject],
    pub ctr: &'a Ctr,
    pub openssl: String,
}

impl Report {
    pub fn new(context: Context<'_>, measured: Measured) -> Report {
        let Context {
            plan,
            machine,
            filesystem,
            subjects,
            ctr,
            openssl,
        } = context;
        let mib = plan.size as f64 / (1u64 << 20) as f64;
        let summaries: Vec<(Route, Summary, Summary, Option<Summary>)> = measured
            .series
            .into_iter()
            .map(|s| {
                let rates = s.seconds.iter().map(|secs| mib / secs).collect();
                let flush = (!s.flush_seconds.is_empty()).then(|| Summary::of(s.flush_seconds));
                (s.route, Summary::of(rates), Summary::of(s.seconds), flush)
            })
            .collect();
        let median_of = |wanted: Route| {
            summaries
                .iter()
                .find(|(route, ..)| *route == wanted)
                .map(|(_, rate, ..)| rate.median)
        };
        let (limit_route, limit) = [Route::Sha256, Route::CopySync]
            .into_iter()
            .map(|r| (r, median_of(r).expect("the limit is always measured")))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("two limit routes");
        let paths: Vec<PathResult> = summaries
            .iter()
            .map(|(route, rate, secs, flush)| {
                let same_on_containerd = match route {
                    Route::Api(Kind::Corten) => median_of(Route::Api(Kind::Containerd)),
                    Route::Ctr(Kind::Corten) => median_of(Route::Ctr(Kind::Containerd)),
                    _ => None,
                };
                PathResult {
                    path: route.key(),
                    label: route.label(),
                    mib_per_s: rate.clone(),
                    seconds: secs.clone(),
                    flush_seconds: flush.clone(),
                    ratio_to_limit: rate.median / limit,
                    ratio_to_containerd: same_on_containerd.map(|c| rate.median / c),
                }
            })
            .collect();
        let measured_ratio = median_of(Route::Api(Kind::Corten)).expect("corten is always measured") / limit;

        let mut daemons = subjects.iter().zip(measured.versions).map(|(s, version)| Daemon {
            binary: s.binary.display().to_string(),
            version,
        });
        let cortend = daemons.next().expect("corten is always measured");
        let containerd = daemons.next();

        let mut notes = vec![
            format!(
                "MiB/s = {} MiB / wall time, medians over {} runs; each ingest ran on a freshly started daemon \
                 (start not timed) whose root was in the benchmark directory, after a `sync`",
                plan.size >> 20,
                plan.runs
            ),
            format!(
                "API: this tool's client on an open connection, from the first WRITE to the COMMIT's answer; \
                 {} KiB per WRITE, sent without waiting for the answers, which are read as they come",
                plan.chunk >> 10
            ),
            "flush at end: medians of the time from the last WRITE's answer to the COMMIT's (fsync, \
             rename, record), and of `sync COPY` after the copy"
                .to_string(),
            "via ctr: `ctr content ingest --expected-size N --expected-digest D REF < FILE`, exec to exit, \
             so ctr's own start-up and its lease are included; ctr waits for the answer to each write"
                .to_string(),
            "limit: sha256 is `openssl dgst -sha256` of the input, which is in the page cache, so it \
             measures hashing; copy+sync is `cp --reflink=never` then `sync COPY` (an fsync of the \
             copy, as a daemon does at commit)"
                .to_string(),
        ];
        notes.extend(subjects.iter().flat_map(Subject::notes));
        notes.extend(machine.busy_note());

        Report {
            benchmark: "ingest",
            machine,
            filesystem,
            settings: Settings {
                size_mib: plan.size >> 20,
                chunk_kib: plan.chunk >> 10,
                runs: plan.runs,
            },
            tools: Tools {
                cortend,
                containerd,
                ctr: ctr.version.clone(),
                openssl,
            },
            digest: measured.digest,
            notes,
            paths,
            limit: Limit {
                mib_per_s: limit,
                set_by: limit_route.key(),
            },
            target: Target {
                path: Route::Api(Kind::Corten).key(),
                ratio_to_limit: TARGET_RATIO,
                measured: measured_ratio,
                met: measured_ratio >= TARGET_RATIO,
                containerd_seen_ctr_mib_per_s: CONTAINERD_SEEN_CTR_MIB_S,
                seen_sha256_mb_per_s: SEEN_SHA256_MB_S,
                seen_disk_mb_per_s: SEEN_DISK_MB_S,
            },
        }
    }

    pub fn table(&self) -> String {
        let mut table = Versus::new(
            &[
                "path",
                "MiB/s",
                "min-max",
                "ratio to limit",
                "of the time: flush at end",
            ],
            self.tools.containerd.is_some(),
        );
        for p in &self.paths {
            table.row(
                vec![
                    p.label.clone(),
                    format!("{:.1}", p.mib_per_s.median),
                    format!("{:.1}-{:.1}", p.mib_per_s.min, p.mib_per_s.max),
                    format!("{:.2}", p.ratio_to_limit),
                    p.flush_seconds.as_ref().map_or_else(String::new, |f| {
                        format!(
                            "{:.2} of {:.2} s ({:.0}%)",
                            f.median,
                            p.seconds.median,
                            100.0 * f.median / p.seconds.median
                        )
                    }),
                ],
                p.ratio_to_containerd,
            );
        }

        let mut out = format!(
            "ingest: {} MiB, {} runs, {}\n",
            self.settings.size_mib,
            self.settings.runs,
            cpus(&self.machine, ""),
        );
        disk_line(&mut out, &self.filesystem);
        let t = &self.tools;
        daemon_lines(&mut out, &t.cortend, t.containerd.as_ref());
        field(&mut out, "ctr:", &t.ctr);
        field(&mut out, "openssl:", &t.openssl);
        out.push('\n');
        out.push_str(&table.render());
        out.push('\n');
        let limit_label = self
            .paths
            .iter()
            .find(|p| p.path == self.limit.set_by)
            .map_or(self.limit.set_by.as_str(), |p| p.label.as_str());
        let _ = writeln!(
            out,
            "limit = {:.1} MiB/s, the slower of the two limit rows ({limit_label})",
            self.limit.mib_per_s
        );
        let _ = writeln!(
            out,
            "target: corten API at {} of the limit or better: {:.2}, {}",
            self.target.ratio_to_limit,
            self.target.measured,
            verdict(self.target.met)
        );
        if let Some(via_ctr) = self.paths.iter().find(|p| p.path == Route::Ctr(Kind::Corten).key()) {
            let _ = writeln!(
                out,
                "        corten via ctr: {:.2} of the limit ({})",
                via_ctr.ratio_to_limit,
                if via_ctr.ratio_to_limit >= self.target.ratio_to_limit {
                    "also at the target"
                } else {
                    "below the target"
                }
            );
        }
        let _ = writeln!(
            out,
            "when the target was set: containerd 1.6 ingested about {} MiB/s via ctr on this machine, \
             sha256 ran at about {} MB/s and the disk wrote about {} MB/s",
            self.target.containerd_seen_ctr_mib_per_s, self.target.seen_sha256_mb_per_s, self.target.seen_disk_mb_per_s
        );
        let _ = writeln!(out, "input: {}", self.digest);
        notes(&mut out, &self.notes);
        out
    }
}
