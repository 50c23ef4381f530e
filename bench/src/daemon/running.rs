//! A started daemon process: waiting for it to serve, and stopping it.

use std::{
    fs::File,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use super::Layout;
use crate::probe::Prober;

/// How long a daemon may take to exit after SIGTERM before the run fails.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Lines of the daemon's own output quoted when it misbehaves.
const LOG_TAIL_LINES: usize = 20;

pub struct Running {
    name: &'static str,
    child: Option<Child>,
    started: Instant,
    layout: Layout,
}

/// The first answered Version call.
pub struct Ready {
    pub after: Duration,
    pub version: String,
}

impl Running {
    pub fn spawn(name: &'static str, mut command: Command, layout: Layout) -> anyhow::Result<Running> {
        // Output goes to a file rather than a pipe nobody drains, which could
        // block a chatty daemon, and is kept to explain a failed run.
        let log = File::create(&layout.log).with_context(|| format!("create {}", layout.log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicate the log file")?)
            .stderr(log);
        let started = Instant::now();
        let child = command.spawn().with_context(|| format!("start {name}: {command:?}"))?;
        Ok(Running {
            name,
            child: Some(child),
            started,
            layout,
        })
    }

    /// The daemon's gRPC socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.layout.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon already reaped").id()
    }

    /// The run's directories (root, state, socket).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether the process is still there; reaps it if it has exited.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            // An error says nothing about the process: keep it, so that
            // dropping this still kills it.
            Some(Ok(None) | Err(_)) => true,
            Some(Ok(Some(_))) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// The end of the daemon's own output, to explain a failure.
    pub fn output_tail(&self) -> String {
        self.log_tail()
    }

    /// Polls with a fresh connection every `interval` until Version is
    /// answered. The wait between attempts is a blocking sleep because the
    /// async timer rounds to whole milliseconds, which at this scale would
    /// add up to a millisecond of bias per run.
    pub fn wait_ready(&mut self, prober: &Prober, interval: Duration, timeout: Duration) -> anyhow::Result<Ready> {
        let deadline = self.started + timeout;
        let mut last_error = None;
        loop {
            if let Some(status) = self.child_mut().try_wait().context("poll the daemon process")? {
                self.child = None;
                bail!(
                    "{} exited ({status}) before answering Version{}",
                    self.name,
                    self.log_tail()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                let why = last_error.map_or(String::new(), |e: anyhow::Error| format!("; last attempt: {e:#}"));
                bail!(
                    "{} did not answer Version within {timeout:?} of exec{why}{}",
                    self.name,
                    self.log_tail()
                );
            }
            match prober.version(&self.layout.socket, deadline - now) {
                Ok(version) => {
                    return Ok(Ready {
                        after: self.started.elapsed(),
                        version,
                    })
                }
                Err(e) => last_error = Some(e),
            }
            std::thread::sleep(interval);
        }
    }

    /// SIGTERM, then waits; a daemon that needs SIGKILL or exits with an error
    /// fails the run, since its next start might then find leftovers.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = self.terminate()?;
        if !status.success() {
            bail!("{} exited with {status} after SIGTERM{}", self.name, self.log_tail());
        }
        Ok(())
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name);
        };
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGTERM).with_context(|| format!("send SIGTERM to {}", self.name))?;
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().context("wait for the daemon")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within {STOP_DEADLINE:?} of SIGTERM and was killed{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("daemon already reaped")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.layout.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            // The log's path is not worth quoting: the run's directory is
            // removed before the error is printed.
            return " (it printed nothing)".to_string();
        }
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        format!("; last lines of its output:\n  {}", tail.join("\n  "))
    }
}

/// A benchmark that fails part-way must not leave daemons behind.
impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
