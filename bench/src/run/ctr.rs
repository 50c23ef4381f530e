//! containerd 1.6's `ctr`, the client for both daemons: every command of
//! the benchmark is the same for corten and for the reference.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _};

use super::jobs::{run_chains, run_one, run_one_with, OnStop};
use crate::tool;

pub const DEFAULT_BINARY: &str = "/usr/bin/ctr";

/// The command every measured run starts in a container.
pub const RUN_COMMAND: &str = "true";
/// What the parallel containers run until they are killed.
pub const LONG_COMMAND: [&str; 2] = ["sleep", "1000"];

/// A `ctr` binary known to run.
pub struct Ctr {
    pub binary: PathBuf,
    pub version: String,
    /// How long one client (or one parallel batch) may take.
    pub timeout: Duration,
}

impl Ctr {
    pub fn locate(binary: &Path, timeout: Duration) -> anyhow::Result<Ctr> {
        let version = tool::version(
            binary,
            "install Debian's containerd package (apt-get install -y containerd), which ships it, \
             or pass --ctr PATH",
        )?;
        Ok(Ctr {
            binary: binary.to_path_buf(),
            version,
            timeout,
        })
    }

    /// ctr aimed at one daemon and one namespace, with the FIFOs of
    /// containers' stdio in `fifo_dir`.
    pub fn at<'a>(&'a self, socket: &'a Path, namespace: &'a str, fifo_dir: &'a Path) -> Client<'a> {
        Client {
            ctr: self,
            socket,
            namespace,
            fifo_dir,
        }
    }
}

pub struct Client<'a> {
    ctr: &'a Ctr,
    socket: &'a Path,
    namespace: &'a str,
    /// Instead of ctr's default, /run/containerd/fifo, which other users of
    /// ctr on the machine share: what is left in it is this run's.
    fifo_dir: &'a Path,
}

impl Client<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.ctr.binary);
        command
            .arg("--address")
            .arg(self.socket)
            .args(["--namespace", self.namespace])
            .args(args);
        command
    }

    fn one(&self, args: &[&str]) -> anyhow::Result<(Duration, String)> {
        run_one(self.command(args), self.ctr.timeout)
    }

    /// `ctr images pull --plain-http REF`, then `ctr images check` must show
    /// it complete and unpacked. Not timed.
    pub fn pull(&self, reference: &str) -> anyhow::Result<()> {
        self.one(&["images", "pull", "--plain-http", reference])?;
        let (_, checked) = self.one(&["images", "check"])?;
        tool::image_checked(&checked, reference)
    }

    /// `ctr run --fifo-dir DIR ARGS...`.
    fn run_command(&self, args: &[&str]) -> Command {
        let mut command = self.command(&["run", "--fifo-dir"]);
        command.arg(self.fifo_dir).args(args);
        command
    }

    /// `ctr run --rm REF ID true`, exec to exit. ctr's own stdio is what
    /// the container gets (/dev/null in, files out), through ctr's FIFOs.
    pub fn run_rm(&self, reference: &str, id: &str) -> anyhow::Result<Duration> {
        let command = self.run_command(&["--rm", reference, id, RUN_COMMAND]);
        Ok(run_one(command, self.ctr.timeout)?.0)
    }

    /// `ctr run -d REF ID sleep 1000` for every id at once; from the first
    /// exec to the last exit. ctr returns once the task has started, so
    /// every container is running at the end.
    pub fn start_detached(&self, reference: &str, ids: &[String]) -> anyhow::Result<Duration> {
        let chains = ids
            .iter()
            .map(|id| {
                let mut args = vec!["--detach", reference, id.as_str()];
                args.extend(LONG_COMMAND);
                vec![self.run_command(&args)]
            })
            .collect();
        Ok(run_chains(chains, self.ctr.timeout)?.0)
    }

    /// For every id at once: `ctr tasks rm --force ID` (SIGKILL to the
    /// task's processes, wait for the exit, delete the task) then `ctr
    /// containers rm ID` (the container and its snapshot); from the first
    /// exec to the last exit.
    pub fn teardown(&self, ids: &[String]) -> anyhow::Result<Duration> {
        let chains = ids
            .iter()
            .map(|id| {
                vec![
                    self.command(&["tasks", "rm", "--force", id]),
                    self.command(&["containers", "rm", id]),
                ]
            })
            .collect();
        Ok(run_chains(chains, self.ctr.timeout)?.0)
    }

    /// `ctr tasks ls`: (id, status) per task.
    pub fn tasks(&self) -> anyhow::Result<Vec<(String, String)>> {
        let (_, listed) = self.one(&["tasks", "ls"])?;
        parse_tasks(&listed)
    }

    /// `ctr containers ls -q`: the ids.
    pub fn containers(&self) -> anyhow::Result<Vec<String>> {
        let (_, listed) = self.one(&["containers", "ls", "--quiet"])?;
        Ok(listed.split_whitespace().map(String::from).collect())
    }

    /// `ctr images rm REF`.
    pub fn remove_image(&self, reference: &str) -> anyhow::Result<()> {
        self.one(&["images", "rm", reference]).map(drop)
    }

    /// Best effort, for cleaning up after a failure: for each container,
    /// `ctr tasks rm --force` (which fails harmlessly where there is no task)
    /// then `ctr containers rm`. Returns what went wrong.
    pub fn remove_all(&self, ids: &[String], timeout: Duration) -> Vec<String> {
        let mut problems = Vec::new();
        for id in ids {
            let _ = run_one_with(self.command(&["tasks", "rm", "--force", id]), timeout, OnStop::Finish);
            if let Err(e) = run_one_with(self.command(&["containers", "rm", id]), timeout, OnStop::Finish) {
                problems.push(format!("{e:#}"));
            }
        }
        problems
    }

    /// As `containers`, with its own deadline, for the cleanup (so not cut
    /// short by a stop request).
    pub fn containers_within(&self, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let command = self.command(&["containers", "ls", "--quiet"]);
        let (_, listed) = run_one_with(command, timeout, OnStop::Finish)?;
        Ok(listed.split_whitespace().map(String::from).collect())
    }
}

/// `TASK PID STATUS` rows under a header.
fn parse_tasks(listed: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut lines = listed.lines();
    match lines.next() {
        Some(header) if header.split_whitespace().next() == Some("TASK") => {}
        Some(other) => bail!("`ctr tasks ls` printed an unexpected header: {other:?}"),
        None => return Ok(Vec::new()),
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [id, _pid, status] => Ok((id.to_string(), status.to_string())),
                _ => None.with_context(|| format!("`ctr tasks ls` printed an unexpected row: {line:?}")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_tasks;

    #[test]
    fn reads_task_rows() {
        let listed = "TASK     PID     STATUS    \np-1-01   4242    RUNNING\np-1-02   4243    STOPPED\n";
        assert_eq!(
            parse_tasks(listed).unwrap(),
            vec![
                ("p-1-01".to_string(), "RUNNING".to_string()),
                ("p-1-02".to_string(), "STOPPED".to_string())
            ]
        );
    }

    #[test]
    fn no_output_is_no_tasks() {
        assert!(parse_tasks("").unwrap().is_empty());
        assert!(parse_tasks("TASK PID STATUS\n").unwrap().is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(parse_tasks("ID X\n").is_err());
        assert!(parse_tasks("TASK PID STATUS\nonly-two 12\n").is_err());
    }
}
