//! The measuring loops. Both daemons run throughout, each with the image in
//! its own namespace; the daemons take turns step by step, so a change in
//! the machine's load lands on both sides of a ratio.

use std::{io::IsTerminal as _, time::Duration};

use anyhow::{bail, Context as _};

use super::{
    host::{self, Runtime},
    interrupt,
    rpc_breakdown::{Breakdown, Recorder},
    session::Session,
};
use crate::{daemon::Kind, machine::CpuSample, proc_status};

pub struct Plan {
    /// `ctr run --rm` runs measured per daemon.
    pub runs: u32,
    /// Unmeasured `ctr run --rm` runs per daemon first.
    pub warmup: u32,
    /// Containers started at once.
    pub containers: u32,
    /// Rounds of starting and removing them, per daemon.
    pub rounds: u32,
    /// From the last container running to the reading of the daemon's RSS.
    pub settle: Duration,
}

/// One daemon's figures.
pub struct Series {
    pub kind: Kind,
    pub version: String,
    pub namespace: String,
    /// `ctr run --rm`, seconds.
    pub run_rm: Vec<f64>,
    /// All containers started, seconds.
    pub start: Vec<f64>,
    /// CPU used meanwhile, ms: every CPU's busy time, and the daemon's own.
    pub start_all_cpu_ms: Vec<f64>,
    pub start_daemon_cpu_ms: Vec<f64>,
    /// All containers killed and removed, seconds.
    pub teardown: Vec<f64>,
    /// CPU used meanwhile, ms, as for the start.
    pub teardown_all_cpu_ms: Vec<f64>,
    pub teardown_daemon_cpu_ms: Vec<f64>,
    /// The daemon's VmRSS with every container running, KiB.
    pub rss_kib: Vec<u64>,
    /// The anonymous and the file-backed part of it, KiB.
    pub rss_anon_kib: Vec<u64>,
    pub rss_file_kib: Vec<u64>,
    /// Its shims' VmRSS together at the same moment, KiB.
    pub shims_rss_kib: Vec<u64>,
    /// Shim processes at that moment.
    pub shims: Vec<usize>,
    /// ctr's FIFO directories found after the containers were removed.
    pub fifos_left: usize,
}

/// Series in the order of `sessions`, and the gRPC time per method of the
/// measured `ctr run --rm` runs where the sessions serve metrics.
pub fn run(
    plan: &Plan,
    sessions: &[Session<'_>],
    runtime: &Runtime,
    reference: &str,
) -> anyhow::Result<(Vec<Series>, Option<Breakdown>)> {
    let mut series: Vec<Series> = sessions
        .iter()
        .map(|s| Series {
            kind: s.kind,
            version: s.version.clone(),
            namespace: s.namespace.clone(),
            run_rm: Vec::new(),
            start: Vec::new(),
            start_all_cpu_ms: Vec::new(),
            start_daemon_cpu_ms: Vec::new(),
            teardown: Vec::new(),
            teardown_all_cpu_ms: Vec::new(),
            teardown_daemon_cpu_ms: Vec::new(),
            rss_kib: Vec::new(),
            rss_anon_kib: Vec::new(),
            rss_file_kib: Vec::new(),
            shims_rss_kib: Vec::new(),
            shims: Vec::new(),
            fifos_left: 0,
        })
        .collect();
    let progress = Progress::new();

    for round in 0..plan.warmup {
        for session in sessions {
            progress.say(format_args!(
                "run: warm-up {}/{}: {}",
                round + 1,
                plan.warmup,
                session.kind.name()
            ));
            interrupt::check()?;
            run_rm(session, reference, &format!("warm-{}", round + 1))
                .with_context(|| format!("{} warm-up run {}", session.kind.name(), round + 1))?;
        }
    }
    let recorder = Recorder::start(sessions)?;
    for round in 0..plan.runs {
        for (session, into) in sessions.iter().zip(&mut series) {
            progress.say(format_args!(
                "run: ctr run --rm {}/{}: {}",
                round + 1,
                plan.runs,
                session.kind.name()
            ));
            interrupt::check()?;
            let elapsed = run_rm(session, reference, &format!("rm-{}", round + 1))
                .with_context(|| format!("{} `ctr run --rm`, run {}", session.kind.name(), round + 1))?;
            into.run_rm.push(elapsed.as_secs_f64());
        }
    }
    let breakdown = recorder.finish(sessions, plan.runs)?;
    for (session, into) in sessions.iter().zip(&mut series) {
        into.fifos_left += session
            .check_empty()
            .map_err(|e| session.explain(e))
            .with_context(|| format!("{} after the `ctr run --rm` runs", session.kind.name()))?;
    }

    for round in 0..plan.rounds {
        for (session, into) in sessions.iter().zip(&mut series) {
            progress.say(format_args!(
                "run: {} containers, round {}/{}: {}",
                plan.containers,
                round + 1,
                plan.rounds,
                session.kind.name()
            ));
            interrupt::check()?;
            parallel_round(plan, session, runtime, reference, round, into).with_context(|| {
                format!(
                    "{}: {} containers at once, round {}",
                    session.kind.name(),
                    plan.containers,
                    round + 1
                )
            })?;
        }
    }
    progress.done();
    Ok((series, breakdown))
}

fn run_rm(session: &Session<'_>, reference: &str, id: &str) -> anyhow::Result<Duration> {
    session.client().run_rm(reference, id).map_err(|e| session.explain(e))
}

/// Start them all, check them (not timed), read the RSS, remove them all,
/// check that nothing is left (not timed).
fn parallel_round(
    plan: &Plan,
    session: &Session<'_>,
    runtime: &Runtime,
    reference: &str,
    round: u32,
    into: &mut Series,
) -> anyhow::Result<()> {
    let ids: Vec<String> = (1..=plan.containers)
        .map(|i| format!("par-{}-{i:02}", round + 1))
        .collect();
    let client = session.client();
    let cpu_before = CpuSample::take(session.pid()).context("read CPU times")?;
    let started = client
        .start_detached(reference, &ids)
        .map_err(|e| session.explain(e))
        .context("start")?;
    let (all_cpu_ms, daemon_cpu_ms) = CpuSample::take(session.pid())
        .context("read CPU times")?
        .since(&cpu_before);

    let tasks = client.tasks().map_err(|e| session.explain(e))?;
    let mut not_running: Vec<String> = ids
        .iter()
        .filter(|id| !tasks.iter().any(|(t, status)| t == *id && status == "RUNNING"))
        .cloned()
        .collect();
    if !not_running.is_empty() {
        not_running.truncate(5);
        bail!(
            "`ctr tasks ls` does not show every container RUNNING after `ctr run -d` returned \
             (first missing: {}); it shows {tasks:?}",
            not_running.join(", ")
        );
    }
    let shims = session.shims();
    check_shims(&shims, runtime)?;

    std::thread::sleep(plan.settle);
    if session.exited() {
        return Err(session.explain(anyhow::anyhow!("the daemon exited while its containers ran")));
    }
    let rss = proc_status::resident_kib(session.pid()).context("read the daemon's RSS")?;
    let shims_rss = host::rss_kib(&shims);

    interrupt::check()?;
    let cpu_before = CpuSample::take(session.pid()).context("read CPU times")?;
    let teardown = client
        .teardown(&ids)
        .map_err(|e| session.explain(e))
        .context("teardown")?;
    let (teardown_all_cpu_ms, teardown_daemon_cpu_ms) = CpuSample::take(session.pid())
        .context("read CPU times")?
        .since(&cpu_before);
    into.fifos_left += session
        .check_empty()
        .map_err(|e| session.explain(e))
        .context("after the teardown")?;

    into.start.push(started.as_secs_f64());
    into.start_all_cpu_ms.push(all_cpu_ms);
    into.start_daemon_cpu_ms.push(daemon_cpu_ms);
    into.teardown.push(teardown.as_secs_f64());
    into.teardown_all_cpu_ms.push(teardown_all_cpu_ms);
    into.teardown_daemon_cpu_ms.push(teardown_daemon_cpu_ms);
    into.rss_kib.push(rss.total);
    into.rss_anon_kib.push(rss.anon);
    into.rss_file_kib.push(rss.file);
    into.shims_rss_kib.push(shims_rss);
    into.shims.push(shims.len());
    Ok(())
}

/// Both daemons must run the same shim: every shim process must be the
/// binary found on PATH.
fn check_shims(shims: &[host::Shim], runtime: &Runtime) -> anyhow::Result<()> {
    if shims.is_empty() {
        bail!("no shim process was started with this daemon's socket as -address");
    }
    if let Some(other) = shims.iter().find(|s| s.exe != runtime.shim) {
        bail!(
            "shim pid {} runs {}, not {}: both daemons must use the same shim",
            other.pid,
            other.exe.display(),
            runtime.shim.display()
        );
    }
    Ok(())
}

/// A progress line redrawn in place, only where stderr is a terminal; in a
/// CI log it would be noise.
struct Progress {
    on: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
        }
    }

    fn say(&self, what: std::fmt::Arguments<'_>) {
        if self.on {
            eprint!("\r{:<60}", what.to_string());
        }
    }

    fn done(&self) {
        if self.on {
            eprintln!();
        }
    }
}
