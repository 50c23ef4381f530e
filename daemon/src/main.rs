//! `cortend`: the corten daemon.

mod cli;
mod logging;
mod malloc;
mod metrics;
mod plugins;
mod run;
mod server;
mod shutdown;
mod socket;
mod verify;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    malloc::apply_tunables();
    malloc::tune();
    plugins::link();
    let args = cli::Args::parse();
    match cli::dispatch(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cortend: {e:#}");
            ExitCode::FAILURE
        }
    }
}
