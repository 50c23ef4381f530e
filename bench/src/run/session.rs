//! One daemon for the whole benchmark, with the image pulled into its own
//! namespace, and the guard that removes its containers however the
//! benchmark ends.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};

use super::{
    ctr::{Client, Ctr},
    host::{self, Runtime, Shim},
    rpc_breakdown,
};
use crate::{
    daemon::{Kind, Running, Subject},
    probe::Prober,
    workdir::Workdir,
};

const POLL: Duration = Duration::from_millis(1);
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shims may take to exit once their containers are removed.
pub const SHIM_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Each client of the cleanup after a failure; short, since the daemon may
/// be what failed.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Session<'a> {
    pub kind: Kind,
    pub version: String,
    pub namespace: String,
    /// Where the daemon serves its Prometheus metrics, if it does.
    pub metrics: Option<SocketAddr>,
    ctr: &'a Ctr,
    runtime: &'a Runtime,
    reference: String,
    /// Where ctr makes the FIFOs of this daemon's containers.
    fifo_dir: PathBuf,
    /// `None` once stopped.
    daemon: Option<Running>,
}

impl<'a> Session<'a> {
    /// Starts the daemon on a root in `workdir` and pulls `reference` into
    /// namespace `bench-<daemon>` (not timed). With `metrics`, the daemon
    /// serves its metrics on a free loopback port.
    pub fn start(
        subject: &Subject,
        workdir: &Workdir,
        ctr: &'a Ctr,
        runtime: &'a Runtime,
        reference: &str,
        metrics: bool,
    ) -> anyhow::Result<Session<'a>> {
        let namespace = format!("bench-{}", subject.kind.name());
        host::check_namespace_free(&namespace)?;
        let fifo_dir = workdir.file(&format!("fifo-{}", subject.kind.name()));
        std::fs::create_dir(&fifo_dir).with_context(|| format!("create {}", fifo_dir.display()))?;
        let metrics = metrics.then(rpc_breakdown::free_loopback).transpose()?;
        let mut daemon = subject.launch_with_metrics(Some(workdir.path()), metrics)?;
        let layout = daemon.layout();
        host::guard(
            &namespace,
            &layout.socket,
            &[&layout.state, &layout.root],
            &runtime.runc,
            daemon.pid(),
        );
        // The run's directories: the socket's (config, log) and the one
        // holding root and state.
        for dir in [layout.socket.parent(), layout.state.parent()].into_iter().flatten() {
            host::guard_dir(dir);
        }
        let ready = match daemon.wait_ready(&Prober, POLL, READY_TIMEOUT) {
            Ok(ready) => ready,
            Err(e) => {
                host::unguard(&namespace);
                return Err(e);
            }
        };
        let session = Session {
            kind: subject.kind,
            version: ready.version,
            namespace,
            metrics,
            ctr,
            runtime,
            reference: reference.to_string(),
            fifo_dir,
            daemon: Some(daemon),
        };
        session
            .client()
            .pull(reference)
            .map_err(|e| session.explain(e))
            .context("pull the image (not timed)")?;
        Ok(session)
    }

    pub fn client(&self) -> Client<'_> {
        self.ctr.at(self.socket(), &self.namespace, &self.fifo_dir)
    }

    fn running(&self) -> &Running {
        self.daemon.as_ref().expect("the daemon runs until finish")
    }

    pub fn socket(&self) -> &Path {
        self.running().socket()
    }

    pub fn pid(&self) -> u32 {
        self.running().pid()
    }

    /// Whether the daemon has exited; it stays a zombie until it is reaped
    /// at the end, so its pid is still there.
    pub fn exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid())) {
            Ok(stat) => stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_none_or(|state| state == "Z" || state == "X"),
            Err(_) => true,
        }
    }

    /// The shims this daemon started that are running now.
    pub fn shims(&self) -> Vec<Shim> {
        host::shims_of(self.socket())
    }

    /// `error` with the end of the daemon's output, which usually says more
    /// than the client's message.
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        match &self.daemon {
            Some(d) => anyhow::anyhow!("{error:#}\nthe daemon ({}){}", self.kind.name(), d.output_tail()),
            None => error,
        }
    }

    /// Nothing of this daemon's containers may be left: no container, no
    /// task, no shim, no runc state. Returns how many of ctr's FIFO
    /// directories were left (and removes them): ctr removes them with the
    /// task, from the FIFO paths the daemon kept for it, so a leftover is
    /// reported but does not stop the benchmark.
    pub fn check_empty(&self) -> anyhow::Result<usize> {
        let client = self.client();
        let containers = client.containers()?;
        if !containers.is_empty() {
            bail!("containers left after removal: {}", containers.join(", "));
        }
        let tasks = client.tasks()?;
        if !tasks.is_empty() {
            bail!("tasks left after removal: {tasks:?}");
        }
        host::wait_shims_gone(self.socket(), SHIM_EXIT_TIMEOUT)?;
        let left = host::runc_containers(&self.namespace);
        if !left.is_empty() {
            bail!(
                "runc still has state for {} under {}",
                left.join(", "),
                Path::new(host::RUNC_ROOT).join(&self.namespace).display()
            );
        }
        let mut fifos = 0;
        for entry in std::fs::read_dir(&self.fifo_dir).with_context(|| format!("list {}", self.fifo_dir.display()))? {
            let path = entry?.path();
            fifos += 1;
            std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
        }
        Ok(fifos)
    }

    /// The clean end: the image removed, nothing left, the daemon stopped
    /// with SIGTERM (and exit status 0).
    /// Returns the FIFO directories that were left, as `check_empty`.
    pub fn finish(mut self) -> anyhow::Result<usize> {
        let fifos = self.check_empty().map_err(|e| self.explain(e))?;
        self.client()
            .remove_image(&self.reference)
            .map_err(|e| self.explain(e))?;
        let daemon = self.daemon.take().expect("the daemon runs until finish");
        let state_dir = daemon.layout().state.clone();
        daemon.stop()?;
        let mounts = host::mounts_under(&state_dir);
        if !mounts.is_empty() {
            bail!("mounts left under the daemon's state directory: {mounts:?}");
        }
        host::remove_namespace_dirs(&self.namespace);
        host::unguard(&self.namespace);
        Ok(fifos)
    }

    /// After a failure: the containers removed through the daemon where it
    /// still answers, then by force whatever is left.
    fn clean_up(&mut self) {
        let Some(daemon) = self.daemon.as_mut() else {
            host::unguard(&self.namespace);
            return;
        };
        let mut notes = Vec::new();
        if daemon.alive() {
            let client = self.ctr.at(daemon.socket(), &self.namespace, &self.fifo_dir);
            match client.containers_within(CLEANUP_TIMEOUT) {
                Ok(ids) => notes.extend(client.remove_all(&ids, CLEANUP_TIMEOUT)),
                Err(e) => notes.push(format!("list containers: {e:#}")),
            }
        }
        let layout = daemon.layout();
        notes.extend(host::sweep(
            &self.namespace,
            &layout.socket,
            &[&layout.state, &layout.root],
            &self.runtime.runc,
        ));
        host::unguard(&self.namespace);
        if !notes.is_empty() {
            eprintln!(
                "corten-bench run: cleaning up after {} (namespace {}):\n  {}",
                self.kind.name(),
                self.namespace,
                notes.join("\n  ")
            );
        }
    }
}

/// However the benchmark ends, no container or shim of this daemon
/// survives it. Runs before the daemon itself is dropped (and killed), so
/// the daemon can still remove its containers properly.
impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.clean_up();
    }
}
