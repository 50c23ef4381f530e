//! The measuring loop: start, wait for Version, maybe read RSS, stop.

use std::{io::IsTerminal as _, time::Duration};

use anyhow::Context as _;

use crate::{daemon::Subject, probe::Prober, proc_status, stats::Summary};

pub struct Plan {
    pub runs: u32,
    pub rss_runs: u32,
    pub warmup: u32,
    pub settle: Duration,
    pub poll: Duration,
    pub timeout: Duration,
}

/// One daemon's measurements, in the order of `subjects`.
pub struct Measured {
    pub version: String,
    pub cold_start_ms: Summary,
    pub idle_rss_mib: Summary,
}

struct Sample {
    version: String,
    cold_start: Duration,
    rss_kib: Option<u64>,
}

/// Daemons take turns run by run rather than one after the other, so a
/// drift in the machine's load (another build, a cron job) lands on both
/// sides of a ratio instead of on one.
pub fn run(plan: &Plan, subjects: &[Subject], prober: &Prober) -> anyhow::Result<Vec<Measured>> {
    for round in 0..plan.warmup {
        for subject in subjects {
            once(plan, subject, prober, false).with_context(|| context(subject, "warm-up", round))?;
        }
    }
    let rounds = plan.runs.max(plan.rss_runs);
    let mut samples: Vec<Vec<Sample>> = subjects.iter().map(|_| Vec::new()).collect();
    // A progress counter only where it redraws in place; in a CI log it
    // would be one long line of noise.
    let progress = std::io::stderr().is_terminal();
    for round in 0..rounds {
        if progress {
            eprint!("\rstartup: round {}/{rounds}", round + 1);
        }
        for (subject, into) in subjects.iter().zip(&mut samples) {
            let sample =
                once(plan, subject, prober, round < plan.rss_runs).with_context(|| context(subject, "run", round))?;
            into.push(sample);
        }
    }
    if progress {
        eprintln!();
    }
    Ok(samples.into_iter().map(|s| summarise(plan, s)).collect())
}

fn once(plan: &Plan, subject: &Subject, prober: &Prober, read_rss: bool) -> anyhow::Result<Sample> {
    let mut daemon = subject.launch()?;
    let ready = daemon.wait_ready(prober, plan.poll, plan.timeout)?;
    let rss_kib = if read_rss {
        std::thread::sleep(plan.settle);
        Some(proc_status::vm_rss_kib(daemon.pid())?)
    } else {
        None
    };
    daemon.stop()?;
    Ok(Sample {
        version: ready.version,
        cold_start: ready.after,
        rss_kib,
    })
}

fn summarise(plan: &Plan, samples: Vec<Sample>) -> Measured {
    let version = samples[0].version.clone();
    let cold: Vec<f64> = samples
        .iter()
        .take(plan.runs as usize)
        .map(|s| s.cold_start.as_secs_f64() * 1e3)
        .collect();
    let rss: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.rss_kib)
        .map(|k| k as f64 / 1024.0)
        .collect();
    Measured {
        version,
        cold_start_ms: Summary::of(cold),
        idle_rss_mib: Summary::of(rss),
    }
}

fn context(subject: &Subject, what: &str, round: u32) -> String {
    format!(
        "{} {what} {} ({})",
        subject.kind.name(),
        round + 1,
        subject.binary.display()
    )
}
