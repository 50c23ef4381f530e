//! The measuring loop: each round pulls once per daemon, alternating, each
//! time on a freshly started daemon whose root is in the benchmark directory.

use std::{io::IsTerminal as _, time::Duration};

use anyhow::Context as _;
use corten_tests::registry::PushedImage;

use super::tools::Tools;
use crate::workdir::Workdir;
use crate::{
    daemon::{Kind, Subject},
    probe::Prober,
};

const POLL: Duration = Duration::from_millis(1);
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Plan {
    pub image_mib: u64,
    pub runs: u32,
}

/// One daemon's pulls, in seconds.
pub struct Series {
    pub kind: Kind,
    pub version: String,
    pub seconds: Vec<f64>,
}

/// Series in the order of the subjects: corten, then the reference.
pub fn run(
    plan: &Plan,
    subjects: &[Subject],
    tools: &Tools,
    workdir: &Workdir,
    image: &PushedImage,
) -> anyhow::Result<Vec<Series>> {
    let mut series: Vec<Series> = subjects
        .iter()
        .map(|s| Series {
            kind: s.kind,
            version: String::new(),
            seconds: Vec::new(),
        })
        .collect();
    let progress = std::io::stderr().is_terminal();
    for round in 0..plan.runs {
        for (subject, into) in subjects.iter().zip(&mut series) {
            if progress {
                eprint!("\rpull: round {}/{}: {:<12}", round + 1, plan.runs, subject.kind.name());
            }
            let (elapsed, version) = once(subject, tools, workdir, image)
                .with_context(|| format!("{} pull, run {}", subject.kind.name(), round + 1))?;
            into.seconds.push(elapsed.as_secs_f64());
            if into.version.is_empty() {
                into.version = version;
            }
        }
    }
    if progress {
        eprintln!();
    }
    Ok(series)
}

/// Start (not timed), `sync`, the timed pull, the check (not timed), stop.
fn once(
    subject: &Subject,
    tools: &Tools,
    workdir: &Workdir,
    image: &PushedImage,
) -> anyhow::Result<(Duration, String)> {
    let mut daemon = subject.launch_with_data_in(Some(workdir.path()))?;
    let ready = daemon.wait_ready(&Prober, POLL, READY_TIMEOUT)?;
    // The previous run's removed root must not be written back on this
    // pull's time.
    nix::unistd::sync();
    let elapsed = match subject.kind {
        Kind::Corten => tools.corten_pull(daemon.socket(), &image.reference)?,
        Kind::Containerd => tools.ctr_pull(daemon.socket(), &image.reference)?,
    };
    tools.check(daemon.socket(), &image.reference)?;
    daemon.stop()?;
    Ok((elapsed, ready.version))
}
