//! `run`: containers through the real `ctr`, on corten and on containerd
//! 1.6, with the same shim (Debian's `containerd-shim-runc-v2`) and runc:
//! the latency of `ctr run --rm IMAGE ID true`; N containers started at
//! once, then killed and removed at once; and the daemon's own RSS while
//! they run.

mod ctr;
mod host;
mod interrupt;
mod jobs;
mod measure;
mod report;
mod rpc_breakdown;
mod session;

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::bail;
use corten_tests::registry::Registry;

use crate::{
    daemon::{DaemonArgs, Kind},
    machine::Watch,
    tool,
    workdir::Workdir,
    Format,
};

/// The repository and tag the busybox image is pushed as.
const NAME: &str = "bench/busybox";
const TAG: &str = "v1";
/// Room for both daemons' roots (a 1 MiB image, unpacked, and the
/// containers' upper directories) and headroom.
const NEEDED_BYTES: u64 = 256 << 20;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub daemons: DaemonArgs,
    /// Measure containerd alone, without corten: checks the benchmark
    /// itself. Prints no ratios and judges no targets
    #[arg(long, conflicts_with = "no_reference")]
    pub only_reference: bool,
    /// `ctr run --rm` runs measured per daemon, each with a new container id
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Unmeasured `ctr run --rm` runs per daemon first
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Containers started at once (`ctr run -d`), then killed and removed at once
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub containers: u32,
    /// Rounds of starting and removing the containers, per daemon
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// How long after the last container started the daemon's RSS is read
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// A ctr client (or a batch of them at once) that has not finished
    /// this long after exec fails the benchmark
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_s: u64,
    /// Directory on the disk the daemons' roots go under (in a temporary
    /// directory). RAM-backed filesystems are refused [default: the first
    /// disk-backed of /var/tmp, /tmp]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// `ctr` from containerd 1.6: the client for both daemons
    #[arg(long, value_name = "PATH", default_value = ctr::DEFAULT_BINARY)]
    pub ctr: PathBuf,
    /// Keep both daemons' metrics endpoints off, and print no gRPC time
    /// per method for the `ctr run --rm` runs
    #[arg(long)]
    pub no_rpc_breakdown: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    interrupt::install()?;
    host::install_panic_sweep();
    // Everything the benchmark needs is checked before anything starts.
    let subjects = if args.only_reference {
        vec![args.daemons.reference()?]
    } else {
        args.daemons.subjects()?
    };
    let ctr = ctr::Ctr::locate(&args.ctr, Duration::from_secs(args.timeout_s))?;
    let runtime = host::Runtime::locate()?;
    if let Some(cortend) = subjects.iter().find(|s| s.kind == Kind::Corten) {
        same_shim_beside(&cortend.binary, &runtime)?;
    }
    let registry_version = tool::registry_version()?;
    tool::require_busybox()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("run the benchmark as root: runc and the daemons need root");
    }
    let plan = measure::Plan {
        runs: args.runs,
        warmup: args.warmup,
        containers: args.containers,
        rounds: args.rounds,
        settle: Duration::from_millis(args.settle_ms),
    };
    let _lock = host::lock()?;
    let workdir = Workdir::create(args.dir.as_deref(), NEEDED_BYTES, "run", "--containers")?;
    host::guard_dir(workdir.path());

    let progress = std::io::stderr().is_terminal();
    if progress {
        eprintln!("run: starting the registry, the daemons, and pulling the image into each (not timed)");
    }
    let registry = Registry::start();
    let image = registry.push_busybox(NAME, TAG);
    let mut sessions = Vec::new();
    for subject in &subjects {
        sessions.push(session::Session::start(
            subject,
            &workdir,
            &ctr,
            &runtime,
            &image.reference,
            !args.no_rpc_breakdown,
        )?);
    }
    // Only the pulls needed it; it would count as other work while measuring.
    drop(registry);

    let watch = Watch::start();
    let (mut measured, breakdown) = measure::run(&plan, &sessions, &runtime, &image.reference)?;
    let machine = watch.finish();
    for (session, series) in sessions.into_iter().zip(&mut measured) {
        series.fifos_left += session.finish()?;
    }

    let context = report::Context {
        plan: &plan,
        machine,
        filesystem: workdir.filesystem.clone(),
        subjects: &subjects,
        ctr: &ctr,
        runtime: &runtime,
        registry_version,
        image: &image,
    };
    let report = report::Report::new(context, measured);
    match args.format {
        Format::Table => {
            print!("{}", report.table());
            if let Some(breakdown) = &breakdown {
                print!("{}", breakdown.table());
            }
        }
        Format::Json => {
            let json = WithBreakdown {
                report: &report,
                rpc_breakdown: breakdown.as_ref(),
            };
            println!("{}", serde_json::to_string_pretty(&json)?)
        }
    }
    Ok(())
}

/// The report's JSON, then `rpc_breakdown` where there is one.
#[derive(serde::Serialize)]
struct WithBreakdown<'a> {
    #[serde(flatten)]
    report: &'a report::Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    rpc_breakdown: Option<&'a rpc_breakdown::Breakdown>,
}

/// A shim of the same name beside cortend could be what corten starts
/// instead of the one on PATH that containerd starts; refuse to compare
/// two different shims.
fn same_shim_beside(cortend: &Path, runtime: &host::Runtime) -> anyhow::Result<()> {
    let Some(beside) = cortend.parent().map(|d| d.join(host::SHIM)) else {
        return Ok(());
    };
    if beside.is_file() && beside.canonicalize().ok().as_deref() != Some(runtime.shim.as_path()) {
        bail!(
            "{} exists beside cortend and is not {}, the shim containerd uses from PATH: \
             remove it, so both daemons run the same shim",
            beside.display(),
            runtime.shim.display()
        );
    }
    Ok(())
}
