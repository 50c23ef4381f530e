//! The pull results as a table for people and JSON for tools.

use std::fmt::Write as _;

use corten_tests::registry::PushedImage;
use serde::Serialize;

use super::{
    measure::{Plan, Series},
    tools::Tools,
};
use crate::table::{cpus, daemon_line, disk_line, field, notes, percent, verdict, Daemon, Versus};
use crate::workdir::Filesystem;
use crate::{
    daemon::{Kind, Subject},
    machine::Machine,
    stats::Summary,
};

/// The goal from the pull issue: corten's wall time at this share of
/// containerd's or less.
const TARGET_RATIO: f64 = 0.6;
/// What containerd 1.6 took on this kind of machine when the target was
/// set; a run far from it suggests the machine changed, not the daemons.
const CONTAINERD_SEEN_S: f64 = 1.5;

#[derive(Serialize)]
pub struct Report {
    benchmark: &'static str,
    machine: Machine,
    filesystem: Filesystem,
    settings: Settings,
    tools: ToolVersions,
    image: Image,
    /// The registry's share of all CPUs while measuring; the machine's
    /// `busy_during` counts it as other work.
    registry_cpu_share: Option<f64>,
    notes: Vec<String>,
    /// corten, then containerd (absent with --no-reference).
    daemons: Vec<DaemonResult>,
    /// corten / containerd wall time, medians; `null` with --no-reference.
    ratio: Option<f64>,
    target: Target,
}

#[derive(Serialize)]
struct Settings {
    image_mib: u64,
    runs: u32,
}

#[derive(Serialize)]
struct ToolVersions {
    cortend: Daemon,
    /// Absent with --no-reference.
    containerd: Option<Daemon>,
    corten: Client,
    ctr: Client,
    registry: String,
}

#[derive(Serialize)]
struct Client {
    binary: String,
    version: String,
}

#[derive(Serialize)]
struct Image {
    reference: String,
    manifest_digest: String,
    layers: usize,
    /// The layers' blobs as the registry serves them (gzip).
    compressed_bytes: u64,
}

#[derive(Serialize)]
struct DaemonResult {
    daemon: &'static str,
    client: &'static str,
    seconds: Summary,
    /// Compressed layer bytes over wall time.
    mib_per_s: Summary,
}

#[derive(Serialize)]
struct Target {
    ratio_to_containerd: f64,
    /// `null` with --no-reference.
    measured: Option<f64>,
    met: Option<bool>,
    containerd_seen_seconds: f64,
}

pub struct Context<'a> {
    pub plan: &'a Plan,
    pub machine: Machine,
    pub filesystem: Filesystem,
    pub subjects: &'a [Subject],
    pub tools: &'a Tools,
    pub image: &'a PushedImage,
    /// The registry's share of all CPUs while measuring, where /proc shows it.
    pub registry_share: Option<f64>,
}

impl Report {
    pub fn new(context: Context<'_>, measured: Vec<Series>) -> Report {
        let Context {
            plan,
            machine,
            filesystem,
            subjects,
            tools,
            image,
            registry_share,
        } = context;
        let compressed_bytes: u64 = image.layers.iter().map(|l| l.2).sum();
        let mib = compressed_bytes as f64 / (1u64 << 20) as f64;
        let mut versions = Vec::new();
        let daemons: Vec<DaemonResult> = measured
            .into_iter()
            .map(|s| {
                versions.push(s.version);
                DaemonResult {
                    daemon: s.kind.name(),
                    client: client_of(s.kind),
                    mib_per_s: Summary::of(s.seconds.iter().map(|secs| mib / secs).collect()),
                    seconds: Summary::of(s.seconds),
                }
            })
            .collect();
        let median_of = |name: &str| daemons.iter().find(|d| d.daemon == name).map(|d| d.seconds.median);
        let ratio = median_of(Kind::Corten.name())
            .zip(median_of(Kind::Containerd.name()))
            .map(|(corten, containerd)| corten / containerd);

        let mut daemon_tools = subjects.iter().zip(versions).map(|(s, version)| Daemon {
            binary: s.binary.display().to_string(),
            version,
        });
        let cortend = daemon_tools.next().expect("corten is always measured");
        let containerd = daemon_tools.next();

        let mut notes = vec![
            format!(
                "wall time of the client, exec to exit, medians over {} runs; every pull ran on a freshly \
                 started daemon (start not timed) whose root was in the benchmark directory, after a `sync`",
                plan.runs
            ),
            "both clients unpack into overlayfs as part of the pull; afterwards (not timed) `ctr images check` \
             must report the image complete and unpacked"
                .to_string(),
            format!(
                "MiB/s = {mib:.1} MiB of compressed layers / wall time; the registry (docker-registry, plain \
                 HTTP on loopback) ran throughout; its CPU while serving counts as other work in the \
                 header's \"during\" figure, which the header's \"registry\" figure is part of"
            ),
        ];
        notes.extend(subjects.iter().flat_map(Subject::notes));
        notes.extend(machine.busy_note());

        Report {
            benchmark: "pull",
            machine,
            filesystem,
            settings: Settings {
                image_mib: plan.image_mib,
                runs: plan.runs,
            },
            tools: ToolVersions {
                cortend,
                containerd,
                corten: Client {
                    binary: tools.corten.display().to_string(),
                    version: tools.corten_version.clone(),
                },
                ctr: Client {
                    binary: tools.ctr.display().to_string(),
                    version: tools.ctr_version.clone(),
                },
                registry: tools.registry_version.clone(),
            },
            image: Image {
                reference: image.reference.clone(),
                manifest_digest: image.manifest_digest.clone(),
                layers: image.layers.len(),
                compressed_bytes,
            },
            registry_cpu_share: registry_share,
            notes,
            daemons,
            ratio,
            target: Target {
                ratio_to_containerd: TARGET_RATIO,
                measured: ratio,
                met: ratio.map(|r| r <= TARGET_RATIO),
                containerd_seen_seconds: CONTAINERD_SEEN_S,
            },
        }
    }

    pub fn table(&self) -> String {
        let mut table = Versus::new(
            &["daemon", "client", "wall s", "min-max", "MiB/s"],
            self.ratio.is_some(),
        );
        for d in &self.daemons {
            table.row(
                vec![
                    d.daemon.to_string(),
                    d.client.to_string(),
                    format!("{:.3}", d.seconds.median),
                    format!("{:.3}-{:.3}", d.seconds.min, d.seconds.max),
                    format!("{:.1}", d.mib_per_s.median),
                ],
                self.ratio.filter(|_| d.daemon == Kind::Corten.name()),
            );
        }

        let mut out = format!(
            "pull: {} ({:.1} MiB compressed in {} layers), {} runs, {}\n",
            self.image.reference,
            self.image.compressed_bytes as f64 / (1u64 << 20) as f64,
            self.image.layers,
            self.settings.runs,
            cpus(
                &self.machine,
                &format!(", of which the registry {}", percent(self.registry_cpu_share))
            ),
        );
        disk_line(&mut out, &self.filesystem);
        let t = &self.tools;
        daemon_line(&mut out, "corten:", &t.cortend);
        field(
            &mut out,
            "",
            format_args!("client {} ({})", t.corten.binary, t.corten.version),
        );
        if let Some(c) = &t.containerd {
            daemon_line(&mut out, "containerd:", c);
        }
        field(&mut out, "ctr:", format_args!("{} ({})", t.ctr.binary, t.ctr.version));
        field(&mut out, "registry:", &t.registry);
        out.push('\n');
        out.push_str(&table.render());
        out.push('\n');
        match (self.target.measured, self.target.met) {
            (Some(measured), Some(met)) => {
                let _ = writeln!(
                    out,
                    "target: corten at {} of containerd's wall time or less: {measured:.2}, {}",
                    self.target.ratio_to_containerd,
                    verdict(met)
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "target: corten at {} of containerd's wall time or less: not judged without the reference",
                    self.target.ratio_to_containerd
                );
            }
        }
        let _ = writeln!(
            out,
            "when the target was set: containerd 1.6 took about {} s on this machine",
            self.target.containerd_seen_seconds
        );
        let _ = writeln!(out, "image: {}", self.image.manifest_digest);
        notes(&mut out, &self.notes);
        out
    }
}

fn client_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Corten => "corten images pull",
        Kind::Containerd => "ctr images pull",
    }
}
