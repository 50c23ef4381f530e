//! `snapshots`: prepare + remove cycles through the Snapshots service, and
//! the apply of a gzip layer through the Diff service, beside `tar -xzf` of
//! the same layer on the same disk.

mod client;
mod layer;
mod limit;
mod measure;
mod report;

use std::{io::IsTerminal as _, path::PathBuf};

use clap::ValueEnum;
use serde::Serialize;

use crate::{daemon::DaemonArgs, machine::Watch, Format};

/// The snapshotters both daemons ship, by the names the API uses.
#[derive(ValueEnum, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Snapshotter {
    Overlayfs,
    Native,
}

impl Snapshotter {
    pub fn name(self) -> &'static str {
        match self {
            Snapshotter::Overlayfs => "overlayfs",
            Snapshotter::Native => "native",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub daemons: DaemonArgs,
    /// Prepare + remove cycles per run, over one connection
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub cycles: u32,
    /// Snapshotters measured, in this order (repeat or separate with commas)
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [Snapshotter::Overlayfs, Snapshotter::Native]
    )]
    pub snapshotter: Vec<Snapshotter>,
    /// Rough size of the gzip layer; its tar is 1.25 times as large
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub layer_mib: u64,
    /// Runs of every row (each daemon row on a freshly started daemon)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Directory on the disk to measure; the layer, tar's output and the
    /// daemons' roots go in a temporary directory under it. RAM-backed
    /// filesystems are refused [default: the first disk-backed of /var/tmp, /tmp]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    // A snapshotter named twice would be measured twice and reported once.
    let mut snapshotters = Vec::new();
    for s in args.snapshotter.drain(..) {
        if !snapshotters.contains(&s) {
            snapshotters.push(s);
        }
    }
    // Every tool is checked before the layer is built.
    let subjects = args.daemons.subjects()?;
    let tools = limit::Tools::locate()?;
    let plan = measure::Plan {
        cycles: args.cycles,
        layer_mib: args.layer_mib,
        snapshotters,
        runs: args.runs,
    };
    let layer_size = layer::Shape::for_mib(args.layer_mib);
    let workdir = crate::workdir::Workdir::create(
        args.dir.as_deref(),
        layer_size.space_needed(),
        "snapshots",
        "--layer-mib",
    )?;
    if std::io::stderr().is_terminal() {
        eprintln!("snapshots: building the layer (not timed)");
    }
    let layer = layer::build(&workdir.file("layer.tar.gz"), &layer_size)?;

    let watch = Watch::start();
    let measured = measure::run(&plan, &subjects, &tools, &workdir, &layer)?;
    let machine = watch.finish();
    let context = report::Context {
        plan: &plan,
        machine,
        idle: crate::idle::Idle::read(),
        filesystem: workdir.filesystem.clone(),
        subjects: &subjects,
        tools: &tools,
        layer: &layer,
    };
    let report = report::Report::new(context, measured);
    match args.format {
        Format::Table => print!("{}", report.table()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}
