//! `corten`: a ctr-style client for cortend.

mod client;
mod commands;
mod content_write;
mod duration;
mod error;
mod labels;
mod mounts;
mod output;
mod progress;
mod run;
mod signals;

use std::{process::ExitCode, time::Duration};

use clap::{error::ErrorKind, parser::ValueSource, ArgMatches, CommandFactory, FromArgMatches, Parser};

use crate::{
    client::ConnectOptions,
    commands::{Command, Context},
    output::Format,
};

const DEFAULT_ADDRESS: &str = "/run/corten/corten.sock";
const DEFAULT_NAMESPACE: &str = "default";

/// Exit status for a command that ran and failed.
const EXIT_FAILURE: u8 = 1;
/// Exit status for a command line that could not be understood.
const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "corten",
    version,
    about = "Command line client for the cortend container daemon"
)]
struct Cli {
    /// Daemon socket: a path or unix:///path
    #[arg(short, long, env = "CONTAINERD_ADDRESS", default_value = DEFAULT_ADDRESS)]
    address: String,
    /// Namespace the request acts in
    #[arg(short, long, env = "CONTAINERD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// How long to wait for the connection (e.g. 500ms, 10s; 0 waits indefinitely)
    #[arg(long, value_parser = duration::parse, default_value = "10s")]
    timeout: Duration,
    /// Output format for listings
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    let ctx = Context {
        connect: ConnectOptions {
            address: cli.address,
            namespace: cli.namespace,
            timeout: cli.timeout,
        },
        format: cli.format,
    };
    // One request at a time: a single-threaded runtime is all a CLI needs.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            error::report(&anyhow::Error::from(err).context("starting runtime"));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(commands::run(cli.command, &ctx)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if error::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) if err.is::<error::AlreadyReported>() => ExitCode::from(EXIT_FAILURE),
        Err(err) if err.is::<error::ExitStatus>() => ExitCode::from(
            err.downcast_ref::<error::ExitStatus>()
                .map_or(EXIT_FAILURE, |s| s.code()),
        ),
        Err(err) => {
            error::report(&err);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn parse_args() -> Result<Cli, clap::Error> {
    let matches = Cli::command().try_get_matches()?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if set_but_empty_in_env(&matches, "address", &cli.address) {
        cli.address = DEFAULT_ADDRESS.to_string();
    }
    if set_but_empty_in_env(&matches, "namespace", &cli.namespace) {
        cli.namespace = DEFAULT_NAMESPACE.to_string();
    }
    Ok(cli)
}

/// `CONTAINERD_ADDRESS=` in a shell profile means "unset" to people, so it
/// falls back to the default; an explicit empty flag stays an error.
fn set_but_empty_in_env(matches: &ArgMatches, id: &str, value: &str) -> bool {
    value.is_empty() && matches.value_source(id) == Some(ValueSource::EnvVariable)
}

/// Help and version go out as clap writes them; real mistakes become one
/// line, like every other failure.
fn usage_error(err: clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::from(err.exit_code() as u8)
        }
        _ => {
            eprintln!("corten: {}", one_line_usage(&err.render().to_string()));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Squeezes clap's multi-paragraph report into one line: the message
/// paragraph (which may list missing arguments on following lines) plus
/// the usage of the command that was being parsed.
fn one_line_usage(rendered: &str) -> String {
    let mut paragraphs = rendered.split("\n\n");
    let message = paragraphs.next().unwrap_or_default();
    let message = message.strip_prefix("error: ").unwrap_or(message);
    let mut line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let usage = paragraphs.find_map(|p| p.trim().strip_prefix("Usage: "));
    match usage {
        Some(usage) => line.push_str(&format!(" (usage: {})", usage.trim())),
        None => line.push_str(" (see 'corten --help')"),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_line(args: &[&str]) -> String {
        let err = Cli::try_parse_from(args).unwrap_err();
        one_line_usage(&err.render().to_string())
    }

    #[test]
    fn missing_argument_names_it_and_the_usage() {
        assert_eq!(
            usage_line(&["corten", "ns", "rm"]),
            "the following required arguments were not provided: <NAMES>... \
             (usage: corten namespaces rm <NAMES>...)"
        );
    }

    #[test]
    fn unknown_subcommand_is_one_line() {
        let line = usage_line(&["corten", "bogus"]);
        assert!(line.starts_with("unrecognized subcommand 'bogus'"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn format_is_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from(["corten", "plugins", "ls", "--format", "json"]).unwrap();
        assert_eq!(cli.format, Format::Json);
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
