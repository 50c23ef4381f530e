//! The measuring loop: each round times the two halves of the limit, then
//! every daemon through the API and through ctr, each time on a freshly
//! started daemon.

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{ensure, Context as _};

use super::{api::Ingest, ctr::Ctr, limit};
use crate::workdir::Workdir;
use crate::{
    daemon::{Kind, Subject},
    probe::Prober,
};

/// The namespace every ingest goes to.
pub const NAMESPACE: &str = "bench";
const POLL: Duration = Duration::from_millis(1);
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Plan {
    pub size: u64,
    pub chunk: usize,
    pub runs: u32,
}

/// What is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Api(Kind),
    Ctr(Kind),
    Sha256,
    CopySync,
}

impl Route {
    pub fn label(self) -> String {
        match self {
            Route::Api(kind) => format!("{} API", kind.name()),
            Route::Ctr(kind) => format!("{} via ctr", kind.name()),
            Route::Sha256 => "limit: sha256".to_string(),
            Route::CopySync => "limit: copy+sync".to_string(),
        }
    }

    pub fn key(self) -> String {
        match self {
            Route::Api(kind) => format!("{}_api", kind.name()),
            Route::Ctr(kind) => format!("{}_ctr", kind.name()),
            Route::Sha256 => "limit_sha256".to_string(),
            Route::CopySync => "limit_copy_sync".to_string(),
        }
    }
}

/// One timed step.
pub struct Timing {
    pub total: Duration,
    /// The wait for the disk at the end, where it can be seen: after the
    /// last WRITE's answer on the API path, the `sync` of the copy.
    pub flush: Option<Duration>,
}

impl From<Duration> for Timing {
    fn from(total: Duration) -> Timing {
        Timing { total, flush: None }
    }
}

/// One route's runs, in seconds.
pub struct Series {
    pub route: Route,
    pub seconds: Vec<f64>,
    /// Empty where the route has no visible flush.
    pub flush_seconds: Vec<f64>,
}

pub struct Measured {
    /// The input's digest, as openssl computed it.
    pub digest: String,
    /// Each daemon's reported version, in the order of the subjects.
    pub versions: Vec<String>,
    /// In table order: the daemons, then the limit.
    pub series: Vec<Series>,
}

/// Runs alternate route by route within a round, so a drift in the
/// machine's load lands on every row rather than on one.
pub fn run(plan: &Plan, subjects: &[Subject], ctr: &Ctr, workdir: &Workdir, input: &Path) -> anyhow::Result<Measured> {
    let mut series: Vec<Series> = routes(subjects)
        .into_iter()
        .map(|route| Series {
            route,
            seconds: Vec::new(),
            flush_seconds: Vec::new(),
        })
        .collect();
    let mut digest: Option<String> = None;
    let mut versions: Vec<Option<String>> = subjects.iter().map(|_| None).collect();
    let progress = std::io::stderr().is_terminal();
    let copy = workdir.file("copy");
    for round in 0..plan.runs {
        for into in &mut series {
            let route = into.route;
            if progress {
                eprint!("\ringest: round {}/{}: {:<20}", round + 1, plan.runs, route.label());
            }
            // Dirty pages of the previous step (a blob, a copy, a removed
            // root) must not be written back on this step's time.
            nix::unistd::sync();
            let context = || format!("{} run {}", route.label(), round + 1);
            let timing = match route {
                Route::Sha256 => {
                    let (elapsed, seen) = limit::sha256(input).with_context(context)?;
                    if let Some(known) = &digest {
                        ensure!(
                            *known == seen,
                            "the input changed during the benchmark: {known}, then {seen}"
                        );
                    }
                    digest = Some(seen);
                    Timing::from(elapsed)
                }
                Route::CopySync => limit::copy_and_sync(input, &copy).with_context(context)?,
                Route::Api(kind) | Route::Ctr(kind) => {
                    let index = subjects
                        .iter()
                        .position(|s| s.kind == kind)
                        .expect("routes come from subjects");
                    let target = Target {
                        subject: &subjects[index],
                        route,
                        plan,
                        ctr,
                        data: workdir.path(),
                        input,
                        digest: digest.as_deref().expect("the digest is taken first in every round"),
                        reference: format!("corten-bench-ingest-{}", round + 1),
                    };
                    let (timing, version) = target.once().with_context(context)?;
                    versions[index].get_or_insert(version);
                    timing
                }
            };
            into.seconds.push(timing.total.as_secs_f64());
            into.flush_seconds.extend(timing.flush.map(|f| f.as_secs_f64()));
        }
    }
    if progress {
        eprintln!();
    }
    // Measured first, shown last: the table leads with what is judged.
    series.sort_by_key(|s| matches!(s.route, Route::Sha256 | Route::CopySync));
    Ok(Measured {
        digest: digest.expect("at least one round ran"),
        versions: versions.into_iter().map(Option::unwrap_or_default).collect(),
        series,
    })
}

/// The limit first: its hash is the digest every ingest is checked against.
fn routes(subjects: &[Subject]) -> Vec<Route> {
    let mut routes = vec![Route::Sha256, Route::CopySync];
    for subject in subjects {
        routes.extend([Route::Api(subject.kind), Route::Ctr(subject.kind)]);
    }
    routes
}

/// One ingest on a fresh daemon.
struct Target<'a> {
    subject: &'a Subject,
    route: Route,
    plan: &'a Plan,
    ctr: &'a Ctr,
    data: &'a Path,
    input: &'a Path,
    digest: &'a str,
    reference: String,
}

impl Target<'_> {
    /// The daemon's start is not timed; its root is on the input's
    /// filesystem. Returns the time and the daemon's version.
    fn once(self) -> anyhow::Result<(Timing, String)> {
        let mut daemon = self.subject.launch_with_data_in(Some(self.data))?;
        let ready = daemon.wait_ready(&Prober, POLL, READY_TIMEOUT)?;
        let socket: PathBuf = daemon.socket().to_path_buf();
        let timing = match self.route {
            Route::Api(_) => Ingest {
                socket: &socket,
                file: self.input,
                size: self.plan.size,
                chunk: self.plan.chunk,
                namespace: NAMESPACE,
                reference: self.reference,
                digest: self.digest,
            }
            .run()?,
            Route::Ctr(_) => self
                .ctr
                .ingest(
                    &socket,
                    NAMESPACE,
                    &self.reference,
                    self.input,
                    self.plan.size,
                    self.digest,
                )?
                .into(),
            Route::Sha256 | Route::CopySync => unreachable!("not a daemon route"),
        };
        daemon.stop()?;
        Ok((timing, ready.version))
    }
}
