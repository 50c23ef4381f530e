//! Staying with one process of a task from the client's side, as `ctr run`
//! and `ctr tasks exec` do: wait for it, start it, keep its terminal's
//! size, pass on stdin's end and the signals this command receives, and
//! hand back its exit status once its output is out.

use std::future::pending;

use anyhow::{bail, Context as _};
use corten_api::containerd::services::tasks::v1::{
    tasks_client::TasksClient, CloseIoRequest, KillRequest, ResizePtyRequest, StartRequest, WaitRequest,
};
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

use super::stdio::Copier;
use crate::{
    client::Channel,
    error::{self, rpc},
};

/// Starts the created process `exec_id` of task `id` (the task's own
/// process when `exec_id` is empty) and waits until it has exited and its
/// output has been copied; returns its exit status.
///
/// The wait is asked for before the start so the exit cannot be missed.
/// While the process runs, the end of the local stdin becomes a CloseIO,
/// the local terminal's size goes to ResizePty, and SIGHUP, SIGINT,
/// SIGQUIT, SIGTERM, SIGUSR1 and SIGUSR2 sent to this command are passed on
/// to the process with Kill.
pub async fn start_and_wait(
    tasks: &TasksClient<Channel>,
    id: &str,
    exec_id: &str,
    mut copier: Option<&mut Copier>,
) -> anyhow::Result<u32> {
    let mut waiter = tasks.clone();
    let request = WaitRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
    };
    let wait = tokio::spawn(async move { waiter.wait(request).await });
    // Aborts the wait on every early return.
    let mut wait = AbortOnDrop(wait);
    tokio::task::yield_now().await;

    if let Some(copier) = copier.as_deref_mut() {
        let resizer = tasks.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        copier
            .on_resize(move |width, height| {
                let mut tasks = resizer.clone();
                let request = ResizePtyRequest {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                    width,
                    height,
                };
                async move {
                    // A resize that does not arrive is not worth failing for.
                    let _ = tasks.resize_pty(request).await;
                }
            })
            .context("watching the terminal's size")?;
    }

    let request = StartRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
    };
    tasks
        .clone()
        .start(request)
        .await
        .map_err(rpc)
        .with_context(|| format!("starting {}", describe(id, exec_id)))?;

    let mut signals = Forwarded::install()?;
    let status = loop {
        tokio::select! {
            waited = &mut wait.0 => {
                let reply = waited
                    .context("waiting for the process")?
                    .map_err(rpc)
                    .with_context(|| format!("waiting for {}", describe(id, exec_id)))?;
                break reply.into_inner().exit_status;
            }
            () = stdin_closed(copier.as_deref_mut()) => {
                let request = CloseIoRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    stdin: true,
                };
                if let Err(status) = tasks.clone().close_io(request).await {
                    let err = rpc(status).context("closing the process's stdin");
                    eprintln!("corten: warning: {}", error::one_line(&err));
                }
            }
            signal = signals.recv() => {
                let request = KillRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    signal: signal as u32,
                    all: false,
                };
                if let Err(status) = tasks.clone().kill(request).await {
                    let err = rpc(status).context(format!("forwarding signal {signal}"));
                    eprintln!("corten: warning: {}", error::one_line(&err));
                }
            }
        }
    };

    if let Some(copier) = copier {
        if let Err(err) = copier.wait_output().await {
            if err.kind() != std::io::ErrorKind::BrokenPipe {
                let err = anyhow::Error::from(err).context("copying the process's output");
                eprintln!("corten: warning: {}", error::one_line(&err));
            }
        }
    }
    Ok(status)
}

async fn stdin_closed(copier: Option<&mut Copier>) {
    match copier {
        Some(copier) => copier.stdin_closed().await,
        None => pending().await,
    }
}

/// "task X" or "process E of task X", for messages.
fn describe(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        format!("task {id:?}")
    } else {
        format!("process {exec_id:?} of task {id:?}")
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The signals this command passes on to the process it runs.
struct Forwarded {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl Forwarded {
    fn install() -> anyhow::Result<Self> {
        let kinds = [
            (Signal::SIGHUP, SignalKind::hangup()),
            (Signal::SIGINT, SignalKind::interrupt()),
            (Signal::SIGQUIT, SignalKind::quit()),
            (Signal::SIGTERM, SignalKind::terminate()),
            (Signal::SIGUSR1, SignalKind::user_defined1()),
            (Signal::SIGUSR2, SignalKind::user_defined2()),
        ];
        let streams = kinds
            .into_iter()
            .map(|(sig, kind)| Ok((sig, signal(kind).with_context(|| format!("handling {sig}"))?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Forwarded { streams })
    }

    /// The number of the next signal received.
    async fn recv(&mut self) -> i32 {
        first_signal(&mut self.streams).await
    }
}

/// Waits on every stream at once and yields the first signal to arrive.
async fn first_signal(streams: &mut [(Signal, tokio::signal::unix::Signal)]) -> i32 {
    std::future::poll_fn(|cx| {
        for (sig, stream) in streams.iter_mut() {
            if stream.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*sig as i32);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Reads a signal as `kill` takes it: a number, or a name with or without
/// `SIG`, in any case (`9`, `KILL`, `SIGKILL`, `sigterm`).
pub fn parse_signal(text: &str) -> anyhow::Result<i32> {
    let trimmed = text.trim();
    if let Ok(number) = trimmed.parse::<i32>() {
        if Signal::try_from(number).is_ok() || (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&number) {
            return Ok(number);
        }
        bail!("invalid signal {text:?}: no such signal number");
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| anyhow::anyhow!("invalid signal {text:?}: expected a name such as SIGTERM or a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("SIGKILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("hup").unwrap(), 1);
        assert_eq!(parse_signal("34").unwrap(), 34);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("200").is_err());
        assert!(parse_signal("").is_err());
    }

    #[test]
    fn descriptions_name_the_process() {
        assert_eq!(describe("c", ""), "task \"c\"");
        assert_eq!(describe("c", "e"), "process \"e\" of task \"c\"");
    }
}
