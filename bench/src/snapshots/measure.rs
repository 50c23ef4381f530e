//! The measuring loop. Each round times the fsync probe and `tar -xzf`, then
//! every daemon's apply and every daemon's prepare + remove cycles, each
//! snapshotter in turn, each on a freshly started daemon whose root is in
//! the benchmark directory.

use std::{io::IsTerminal as _, sync::Arc, time::Duration};

use anyhow::Context as _;

use super::{
    client::Session,
    layer::Layer,
    limit::{self, Tools},
    Snapshotter,
};
use crate::workdir::Workdir;
use crate::{
    daemon::{Kind, Running, Subject},
    probe::Prober,
};

const POLL: Duration = Duration::from_millis(1);
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The key of the snapshot the layer is applied onto.
const APPLY_KEY: &str = "corten-bench-apply";

pub struct Plan {
    pub cycles: u32,
    /// The gzip layer's rough size, as asked for.
    pub layer_mib: u64,
    pub snapshotters: Vec<Snapshotter>,
    pub runs: u32,
}

/// What a row of the report times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    Cycles(Kind, Snapshotter),
    Apply(Kind, Snapshotter),
    Tar,
    /// [`limit::cycles`].
    CyclesLimit,
}

impl Row {
    pub fn label(self) -> String {
        match self {
            Row::Cycles(kind, sn) | Row::Apply(kind, sn) => format!("{} {}", kind.name(), sn.name()),
            Row::Tar => "limit: tar -xzf".to_string(),
            Row::CyclesLimit => "limit: durable cycle".to_string(),
        }
    }

    pub fn key(self) -> String {
        match self {
            Row::Cycles(kind, sn) | Row::Apply(kind, sn) => format!("{}_{}", kind.name(), sn.name()),
            Row::Tar => "limit_tar".to_string(),
            Row::CyclesLimit => "limit_cycles".to_string(),
        }
    }
}

/// One row's runs.
pub struct Series {
    pub row: Row,
    /// The timed part: all cycles, the Apply call, or tar from exec to exit.
    pub seconds: Vec<f64>,
    /// The `syncfs` right after an apply or tar; empty for cycles.
    pub syncfs_seconds: Vec<f64>,
    /// A daemon's cheapest call before its cycles ([`Session::round_trip`]);
    /// empty for other rows.
    pub round_trip_seconds: Vec<f64>,
}

pub struct Measured {
    /// Each daemon's reported version, in the order of the subjects.
    pub versions: Vec<String>,
    /// The apply's limit, then the applies, then the cycles' limit, then
    /// the cycles.
    pub series: Vec<Series>,
    /// Median time of one 4 KiB write + fsync, per round.
    pub fsync_seconds: Vec<f64>,
}

/// Rows alternate within a round, so a drift in the machine's load lands
/// on every row rather than on one.
pub fn run(
    plan: &Plan,
    subjects: &[Subject],
    tools: &Tools,
    workdir: &Workdir,
    layer: &Layer,
) -> anyhow::Result<Measured> {
    let blob = Arc::new(std::fs::read(&layer.path).with_context(|| format!("read {}", layer.path.display()))?);
    let mut series: Vec<Series> = rows(plan, subjects)
        .into_iter()
        .map(|row| Series {
            row,
            seconds: Vec::new(),
            syncfs_seconds: Vec::new(),
            round_trip_seconds: Vec::new(),
        })
        .collect();
    let mut versions: Vec<Option<String>> = subjects.iter().map(|_| None).collect();
    let mut fsync_seconds = Vec::new();
    let progress = std::io::stderr().is_terminal();
    for round in 0..plan.runs {
        nix::unistd::sync();
        fsync_seconds.push(limit::fsync_cost(workdir.path()).with_context(|| format!("fsync probe {}", round + 1))?);
        for into in &mut series {
            let row = into.row;
            if progress {
                let what = match row {
                    Row::Cycles(..) | Row::CyclesLimit => "cycles",
                    Row::Apply(..) => "apply",
                    Row::Tar => "",
                };
                eprint!(
                    "\rsnapshots: round {}/{}: {:<35}",
                    round + 1,
                    plan.runs,
                    format!("{what} {}", row.label())
                );
            }
            // Dirty pages of the previous step (a tree, a removed root)
            // must not be written back on this step's time.
            nix::unistd::sync();
            let context = || format!("{} run {}", row.label(), round + 1);
            match row {
                Row::Tar => {
                    let dir = workdir.file(&format!("tar-{}", round + 1));
                    let elapsed = tools.extract(&layer.path, &dir).with_context(context)?;
                    let flush = limit::syncfs(workdir.path()).with_context(context)?;
                    std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
                    into.seconds.push(elapsed.as_secs_f64());
                    into.syncfs_seconds.push(flush.as_secs_f64());
                }
                Row::CyclesLimit => {
                    let dir = workdir.file(&format!("cycles-limit-{}", round + 1));
                    std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
                    let elapsed = limit::cycles(&dir, plan.cycles).with_context(context)?;
                    std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
                    into.seconds.push(elapsed.as_secs_f64());
                }
                Row::Apply(kind, snapshotter) | Row::Cycles(kind, snapshotter) => {
                    let index = subjects
                        .iter()
                        .position(|s| s.kind == kind)
                        .expect("rows come from subjects");
                    let target = Target {
                        subject: &subjects[index],
                        snapshotter,
                        workdir,
                    };
                    let (version, elapsed, flush, round_trip) = match row {
                        Row::Apply(..) => target.apply(layer, &blob).map(|(v, e, f)| (v, e, f, None)),
                        _ => target.cycles(plan.cycles).map(|(v, e, r)| (v, e, None, Some(r))),
                    }
                    .with_context(context)?;
                    versions[index].get_or_insert(version);
                    into.seconds.push(elapsed.as_secs_f64());
                    into.syncfs_seconds.extend(flush.map(|f| f.as_secs_f64()));
                    into.round_trip_seconds.extend(round_trip.map(|r| r.as_secs_f64()));
                }
            }
        }
    }
    if progress {
        eprintln!();
    }
    Ok(Measured {
        versions: versions.into_iter().map(Option::unwrap_or_default).collect(),
        series,
        fsync_seconds,
    })
}

fn rows(plan: &Plan, subjects: &[Subject]) -> Vec<Row> {
    let mut rows = vec![Row::Tar];
    for &sn in &plan.snapshotters {
        rows.extend(subjects.iter().map(|s| Row::Apply(s.kind, sn)));
    }
    rows.push(Row::CyclesLimit);
    for &sn in &plan.snapshotters {
        rows.extend(subjects.iter().map(|s| Row::Cycles(s.kind, sn)));
    }
    rows
}

/// One daemon run.
struct Target<'a> {
    subject: &'a Subject,
    snapshotter: Snapshotter,
    workdir: &'a Workdir,
}

impl Target<'_> {
    /// Ingests the layer under a lease and prepares an empty snapshot (not
    /// timed), `sync`s, then times the Apply; the `syncfs` after it is
    /// timed apart. Returns the daemon's version, the apply and the syncfs.
    fn apply(&self, layer: &Layer, blob: &Arc<Vec<u8>>) -> anyhow::Result<(String, Duration, Option<Duration>)> {
        let (daemon, version) = self.start()?;
        let socket = daemon.socket().to_path_buf();
        let elapsed = runtime()?.block_on(async {
            let mut session = Session::connect(&socket).await?;
            session.lease().await?;
            session
                .write_blob(Arc::clone(blob), &layer.digest)
                .await
                .context("ingest the layer (not timed)")?;
            let mounts = session.prepare(self.snapshotter, APPLY_KEY).await?;
            nix::unistd::sync();
            session.apply(layer, mounts).await
        });
        // The runtime, and with it the connection, is gone before the stop.
        // A failed call leaves the daemon to be killed on drop; the error
        // quotes the daemon's answer, which names what it lacks.
        let elapsed = elapsed?;
        let flush = limit::syncfs(self.workdir.path())?;
        daemon.stop()?;
        Ok((version, elapsed, Some(flush)))
    }

    /// The cycles on one connection, made before the clock starts, under a
    /// lease: without one, both daemons' garbage collectors (started by the
    /// removals) take a just-prepared snapshot before its Remove comes.
    /// Before them, as many Version calls on the same connection, timed
    /// apart. Returns the version, the cycles and one call's round trip.
    fn cycles(&self, cycles: u32) -> anyhow::Result<(String, Duration, Duration)> {
        let (daemon, version) = self.start()?;
        let socket = daemon.socket().to_path_buf();
        let timed = runtime()?.block_on(async {
            let mut session = Session::connect(&socket).await?;
            session.lease().await?;
            let round_trip = session.round_trip(cycles).await?;
            Ok::<_, anyhow::Error>((session.cycles(self.snapshotter, cycles).await?, round_trip))
        });
        let (elapsed, round_trip) = timed?;
        daemon.stop()?;
        Ok((version, elapsed, round_trip))
    }

    fn start(&self) -> anyhow::Result<(Running, String)> {
        let mut daemon = self.subject.launch_with_data_in(Some(self.workdir.path()))?;
        let ready = daemon.wait_ready(&Prober, POLL, READY_TIMEOUT)?;
        Ok((daemon, ready.version))
    }
}

/// Single-threaded, like the other benchmarks' clients: on 2 cores a second
/// client worker would compete with the daemon.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the client's async runtime")
}
