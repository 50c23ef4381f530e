//! Client processes run side by side, each a chain of commands (the next
//! starts when the one before it succeeded), timed from the first spawn to
//! the last exit, with a deadline.

use std::{
    fs::File,
    io::{Read as _, Seek as _},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::interrupt;

/// How often the children are polled: the resolution of the timings,
/// small next to the ~100 ms a `ctr run` takes.
const POLL: Duration = Duration::from_millis(1);

/// What a finished command printed.
#[derive(Default)]
pub struct Printed {
    pub stdout: String,
}

/// Whether a stop request (see `interrupt`) cuts the wait short. The
/// cleanup after a failure must not be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    Abort,
    Finish,
}

/// Runs every chain at once and waits for all of them; the wall time from
/// just before the first spawn to the last exit. Any failed command fails
/// the whole, after the other chains have ended (they are not cut short:
/// a half-made container is harder to clean up than a whole one). A chain
/// still running at `timeout`, or when a stop is requested, is killed and
/// fails the whole. The output of each chain's last command is returned in
/// the chains' order.
pub fn run_chains(chains: Vec<Vec<Command>>, timeout: Duration) -> anyhow::Result<(Duration, Vec<Printed>)> {
    run_chains_with(chains, timeout, OnStop::Abort)
}

pub fn run_chains_with(
    chains: Vec<Vec<Command>>,
    timeout: Duration,
    on_stop: OnStop,
) -> anyhow::Result<(Duration, Vec<Printed>)> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut running: Vec<Chain> = chains.into_iter().map(Chain::new).collect();
    for chain in &mut running {
        chain.advance()?;
    }
    let mut failures = Vec::new();
    loop {
        let mut busy = false;
        for chain in &mut running {
            if let Err(e) = chain.poll() {
                failures.push(format!("{e:#}"));
            }
            busy |= chain.current.is_some();
        }
        if !busy {
            break;
        }
        let now = Instant::now();
        let interrupted = on_stop == OnStop::Abort && interrupt::requested();
        if now >= deadline || interrupted {
            let hung: Vec<String> = running.iter_mut().filter_map(Chain::kill).collect();
            if interrupted {
                bail!("interrupted while waiting for: {}", hung.join("; "));
            }
            bail!(
                "still running after {timeout:?}, killed: {}{}",
                hung.join("; "),
                failures
                    .iter()
                    .map(|f| format!("\nand earlier: {f}"))
                    .collect::<String>()
            );
        }
        std::thread::sleep(POLL);
    }
    let elapsed = started.elapsed();
    match failures.len() {
        0 => {}
        1 => bail!("{}", failures[0]),
        n => bail!("{n} commands failed:\n{}", failures.join("\n")),
    }
    Ok((
        elapsed,
        running.iter_mut().map(|c| std::mem::take(&mut c.printed)).collect(),
    ))
}

/// One command, as one chain.
pub fn run_one(command: Command, timeout: Duration) -> anyhow::Result<(Duration, String)> {
    run_one_with(command, timeout, OnStop::Abort)
}

pub fn run_one_with(command: Command, timeout: Duration, on_stop: OnStop) -> anyhow::Result<(Duration, String)> {
    let (elapsed, mut printed) = run_chains_with(vec![vec![command]], timeout, on_stop)?;
    Ok((elapsed, printed.remove(0).stdout))
}

struct Chain {
    pending: std::vec::IntoIter<Command>,
    current: Option<Step>,
    printed: Printed,
}

struct Step {
    description: String,
    child: Child,
    stdout: File,
    stderr: File,
}

impl Chain {
    fn new(commands: Vec<Command>) -> Chain {
        Chain {
            pending: commands.into_iter(),
            current: None,
            printed: Printed::default(),
        }
    }

    /// Starts the next command, if any. Output goes to anonymous files
    /// rather than pipes, which a chatty client could fill while nobody
    /// reads them.
    fn advance(&mut self) -> anyhow::Result<()> {
        let Some(mut command) = self.pending.next() else {
            return Ok(());
        };
        let stdout = tempfile::tempfile().context("create a file for a client's output")?;
        let stderr = tempfile::tempfile().context("create a file for a client's output")?;
        command
            .stdin(Stdio::null())
            .stdout(stdout.try_clone()?)
            .stderr(stderr.try_clone()?);
        let description = format!("{command:?}");
        let child = command.spawn().with_context(|| format!("start {description}"))?;
        self.current = Some(Step {
            description,
            child,
            stdout,
            stderr,
        });
        Ok(())
    }

    /// Reaps the current command if it has ended and starts the next; a
    /// failure ends the chain.
    fn poll(&mut self) -> anyhow::Result<()> {
        let Some(step) = self.current.as_mut() else {
            return Ok(());
        };
        let Some(status) = step.child.try_wait().context("poll a client process")? else {
            return Ok(());
        };
        let mut step = self.current.take().expect("checked above");
        let stdout = read_all(&mut step.stdout);
        if !status.success() {
            self.pending = Vec::new().into_iter();
            let stderr = read_all(&mut step.stderr);
            bail!(
                "{} failed ({status}): {}{}",
                step.description,
                stderr.trim(),
                stdout.trim()
            );
        }
        self.printed.stdout = stdout;
        self.advance()
    }

    /// Kills the current command, naming it.
    fn kill(&mut self) -> Option<String> {
        let mut step = self.current.take()?;
        let _ = step.child.kill();
        let _ = step.child.wait();
        self.pending = Vec::new().into_iter();
        Some(step.description)
    }
}

fn read_all(file: &mut File) -> String {
    let mut text = String::new();
    if file.rewind().is_ok() {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// Chains that are dropped unfinished (an error on the way) do not leave
/// their clients running.
impl Drop for Chain {
    fn drop(&mut self) {
        self.kill();
    }
}
