//! `ingest`: a large blob written through the Content service, as a share
//! of what the disk and the hash allow.

mod api;
mod ctr;
mod input;
mod limit;
mod measure;
mod report;

use std::path::PathBuf;

use crate::{daemon::DaemonArgs, machine::Watch, Format};

/// Largest chunk: a WRITE must fit in the daemons' default 16 MiB message
/// limit with room to spare.
const MAX_CHUNK_KIB: u64 = 8 << 10;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub daemons: DaemonArgs,
    /// Size of the ingested file, of random (incompressible) bytes
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub size_mib: u64,
    /// Data per WRITE message on the API path
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=MAX_CHUNK_KIB))]
    pub chunk_kib: u64,
    /// Ingests measured per path (each on a fresh daemon), and limit runs
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Directory on the disk to measure; the input, the limit's copy and the
    /// daemons' roots go in a temporary directory under it. RAM-backed
    /// filesystems are refused [default: the first disk-backed of /var/tmp, /tmp]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// `ctr` from containerd 1.6, for the "via ctr" rows
    #[arg(long, value_name = "PATH", default_value = ctr::DEFAULT_BINARY)]
    pub ctr: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Every tool is checked before minutes of writing.
    let subjects = args.daemons.subjects()?;
    let ctr = ctr::Ctr::locate(&args.ctr)?;
    let openssl = limit::openssl_version()?;
    let plan = measure::Plan {
        size: args.size_mib << 20,
        chunk: (args.chunk_kib << 10) as usize,
        runs: args.runs,
    };
    // The input and one copy of it (a blob, or the limit's copy) at a time, and headroom.
    let workdir =
        crate::workdir::Workdir::create(args.dir.as_deref(), 2 * plan.size + (256 << 20), "ingest", "--size-mib")?;
    let input = workdir.file("input");
    input::write_random(&input, plan.size)?;

    let watch = Watch::start();
    let measured = measure::run(&plan, &subjects, &ctr, &workdir, &input)?;
    let machine = watch.finish();
    let context = report::Context {
        plan: &plan,
        machine,
        filesystem: workdir.filesystem.clone(),
        subjects: &subjects,
        ctr: &ctr,
        openssl,
    };
    let report = report::Report::new(context, measured);
    match args.format {
        Format::Table => print!("{}", report.table()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}
