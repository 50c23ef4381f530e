//! How a failure becomes the single line a user sees on stderr.

use std::fmt;

use tonic::{Code, Status};

/// A call the daemon answered with a non-OK status.
///
/// Kept as a type (not just text) so a command can still branch on the code
/// after the status has been turned into an `anyhow::Error`.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl From<Status> for RpcError {
    fn from(status: Status) -> Self {
        let mut message = status.message().to_string();
        // Transport failures carry the interesting part (reset, refused, ...)
        // in the source chain and only a generic word in the message.
        let mut source = std::error::Error::source(&status);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !text.is_empty() && !message.contains(&text) {
                if !message.is_empty() {
                    message.push_str(": ");
                }
                message.push_str(&text);
            }
            source = cause.source();
        }
        if message.is_empty() {
            message = status.code().description().to_string();
        }
        RpcError {
            code: status.code(),
            message,
        }
    }
}

/// Shorthand for `.map_err(rpc)?` on a tonic call.
pub fn rpc(status: Status) -> anyhow::Error {
    RpcError::from(status).into()
}

/// The daemon could not be reached at all.
#[derive(Debug)]
pub struct ConnectError {
    pub address: String,
    pub reason: String,
    /// Whether the reason suggests nothing is listening, so pointing at the
    /// daemon helps more than the raw OS error does.
    pub not_running: bool,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot connect to {}: {}", self.address, self.reason)?;
        if self.not_running {
            f.write_str(" (is cortend running?)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {}

/// A command has already told the user about each of its failures (one line
/// apiece) and only the exit status is left to report.
#[derive(Debug, thiserror::Error)]
#[error("{0} operation(s) failed")]
pub struct AlreadyReported(pub usize);

/// A command ran a process whose exit status becomes the command's own
/// (`corten run`, `corten tasks exec`); nothing is printed for it.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct ExitStatus(pub u32);

impl ExitStatus {
    /// The status as a process exit code: its low byte, as a shell sees
    /// it, but never 0 for a failure.
    pub fn code(&self) -> u8 {
        match (self.0 & 0xff) as u8 {
            0 if self.0 != 0 => 1,
            code => code,
        }
    }
}

/// `err` with its context chain joined on one line, so output stays
/// greppable and never spills a multi-line dump.
pub fn one_line(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Prints `err` as the one `corten: ...` line on stderr.
pub fn report(err: &anyhow::Error) {
    eprintln!("corten: {}", one_line(err));
}

/// Whether the failure is a closed stdout (`corten ... | head`), which is
/// the reader's choice rather than an error worth reporting.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_error_names_the_code() {
        let err = rpc(Status::not_found("namespace \"x\": not found"));
        assert_eq!(one_line(&err), "namespace \"x\": not found (NotFound)");
        assert_eq!(err.downcast_ref::<RpcError>().map(|e| e.code), Some(Code::NotFound));
    }

    #[test]
    fn empty_status_message_falls_back_to_code_description() {
        let err = rpc(Status::new(Code::Unavailable, ""));
        assert!(one_line(&err).ends_with("(Unavailable)"));
        assert!(!one_line(&err).starts_with(" ("));
    }

    #[test]
    fn one_line_flattens_newlines_and_context() {
        let err = anyhow::anyhow!("first\nsecond").context("outer");
        assert_eq!(one_line(&err), "outer: first second");
    }

    #[test]
    fn exit_status_codes() {
        assert_eq!(ExitStatus(7).code(), 7);
        assert_eq!(ExitStatus(137).code(), 137);
        assert_eq!(ExitStatus(256).code(), 1);
        assert_eq!(ExitStatus(257).code(), 1);
    }

    #[test]
    fn connect_error_hints_only_when_nothing_listens() {
        let mut err = ConnectError {
            address: "/x.sock".into(),
            reason: "No such file or directory".into(),
            not_running: true,
        };
        assert_eq!(
            err.to_string(),
            "cannot connect to /x.sock: No such file or directory (is cortend running?)"
        );
        err.not_running = false;
        err.reason = "Permission denied".into();
        assert_eq!(err.to_string(), "cannot connect to /x.sock: Permission denied");
    }

    #[test]
    fn broken_pipe_is_recognised_through_context() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let err = anyhow::Error::from(io).context("writing table");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}

/// The outcome of a command that removes several objects one call at a
/// time (every `rm`): it keeps going past a failure, with one error line
/// apiece, prints each name removed, and goes on removing when stdout is
/// closed (`| head`); the exit status says whether all went.
#[derive(Default)]
pub struct Removals {
    failed: usize,
    stdout_error: Option<std::io::Error>,
}

impl Removals {
    pub fn removed(&mut self, name: &str) {
        if let Err(e) = crate::output::print(&format!("{name}\n")) {
            self.stdout_error.get_or_insert(e);
        }
    }

    pub fn failed(&mut self, err: &anyhow::Error) {
        self.failed += 1;
        report(err);
    }

    /// Failures first: they were reported, so only the status is left.
    pub fn finish(self) -> anyhow::Result<()> {
        if self.failed > 0 {
            return Err(AlreadyReported(self.failed).into());
        }
        match self.stdout_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
