//! `startup`: cold start to the first answered Version RPC, and idle RSS.

mod measure;
mod report;

use std::time::Duration;

use crate::{daemon::DaemonArgs, machine::Watch, probe::Prober, Format};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub daemons: DaemonArgs,
    /// Cold starts measured per daemon
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Runs per daemon whose idle RSS is read (each waits --settle-ms)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rss_runs: u32,
    /// How long after the first answer the daemon is left idle before its RSS is read
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Unmeasured starts per daemon first, so both binaries are in the page cache
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Pause between readiness attempts; also the resolution of a cold start
    #[arg(long, default_value_t = 1000)]
    pub poll_us: u64,
    /// A daemon that has not answered this long after exec fails the benchmark
    #[arg(long, default_value_t = 10)]
    pub timeout_s: u64,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let subjects = args.daemons.subjects()?;
    let plan = measure::Plan {
        runs: args.runs,
        rss_runs: args.rss_runs,
        warmup: args.warmup,
        settle: Duration::from_millis(args.settle_ms),
        poll: Duration::from_micros(args.poll_us),
        timeout: Duration::from_secs(args.timeout_s),
    };
    let watch = Watch::start();
    let results = measure::run(&plan, &subjects, &Prober)?;
    let machine = watch.finish();
    let report = report::Report::new(&plan, machine, &subjects, results);
    match args.format {
        Format::Table => print!("{}", report.table()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}
