//! `corten-bench`: measures corten against containerd 1.6 and prints ratios.
//!
//! Every benchmark runs the reference in the same invocation, so a ratio never
//! compares numbers taken on different machines or at different times.

mod daemon;
mod idle;
mod ingest;
mod machine;
mod probe;
mod proc_status;
mod pull;
mod run;
mod snapshots;
mod startup;
mod stats;
mod table;
mod tool;
mod workdir;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "corten-bench", about = "Benchmarks corten against containerd 1.6")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Cold start to the first answered Version RPC, and idle memory
    Startup(startup::Args),
    /// A large blob through the Content API (and ctr), against the disk's limit
    Ingest(ingest::Args),
    /// Prepare + remove cycles, and a gzip layer's apply against `tar -xzf`
    Snapshots(snapshots::Args),
    /// The ~100 MiB multi-layer image from a local registry, `corten images pull` against `ctr images pull`
    Pull(pull::Args),
    /// `ctr run --rm` latency, N containers started and removed at once, and the daemon's RSS meanwhile
    Run(run::Args),
}

/// How results are printed; shared by every benchmark.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Startup(args) => startup::run(args),
        Command::Ingest(args) => ingest::run(args),
        Command::Snapshots(args) => snapshots::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Run(args) => run::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corten-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
