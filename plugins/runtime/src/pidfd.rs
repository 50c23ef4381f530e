//! Watching a shim process that is not our child: shims daemonise, so
//! `waitpid` cannot see them. A pidfd names the process itself (never a
//! later process that reuses the pid), becomes readable when it exits, and
//! can signal it.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    sync::Arc,
};

use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::io::{unix::AsyncFd, Interest};

#[derive(Debug, Clone)]
pub struct ShimProcess {
    pub pid: u32,
    fd: Arc<OwnedFd>,
}

impl ShimProcess {
    /// Opens a pidfd for `pid`; fails with ESRCH if it has already exited
    /// (or lives in another pid namespace).
    pub fn open(pid: u32) -> io::Result<Self> {
        let raw = i32::try_from(pid).map_err(|_| io::Error::other(format!("pid {pid} out of range")))?;
        let pid_t = Pid::from_raw(raw).ok_or_else(|| io::Error::other("pid 0 names no process"))?;
        let fd = rustix::process::pidfd_open(pid_t, PidfdFlags::empty())?;
        Ok(ShimProcess { pid, fd: Arc::new(fd) })
    }

    /// Resolves when the process has exited. Each waiter polls its own
    /// duplicate, as epoll takes one registration per descriptor.
    pub async fn exited(&self) -> io::Result<()> {
        let dup = self.fd.as_fd().try_clone_to_owned()?;
        // SAFETY: `dup` is an open descriptor the AsyncFd owns from here on;
        // an OwnedFd neither closes nor changes the descriptor it holds
        // before it is dropped, so the registration stays valid.
        let fd = unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }?;
        let _ready = fd.readable().await?;
        Ok(())
    }

    pub fn kill(&self) -> io::Result<()> {
        rustix::process::pidfd_send_signal(self.fd.as_fd(), Signal::KILL).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn sees_a_process_end() {
        let mut child = std::process::Command::new("sleep").arg("100").spawn().unwrap();
        let p = ShimProcess::open(child.id()).unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), p.exited())
            .await
            .is_err());
        p.kill().unwrap();
        tokio::time::timeout(Duration::from_secs(5), p.exited())
            .await
            .unwrap()
            .unwrap();
        child.wait().unwrap();
        assert!(ShimProcess::open(0).is_err());
    }
}
