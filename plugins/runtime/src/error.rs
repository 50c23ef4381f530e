//! What can go wrong between the runtime and a shim, and which of
//! containerd's error classes each case is: clients branch on the class.

use std::time::Duration;

use corten_core::Error;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error(
        "runtime {0:?} is not a valid runtime name: use a name such as io.containerd.runc.v2 or an absolute path \
         to a shim binary"
    )]
    InvalidRuntime(String),
    #[error("runtime {runtime:?}: shim binary {binary} not found ({searched})")]
    BinaryNotFound {
        runtime: String,
        binary: String,
        searched: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("task {0} already exists")]
    AlreadyExists(String),
    #[error("shim {binary} {action} failed ({status}): {output}")]
    Command {
        binary: String,
        action: &'static str,
        status: String,
        output: String,
    },
    #[error("shim start printed no usable address: {0}")]
    Bootstrap(String),
    /// The shim answered with an error status (a google.rpc code).
    #[error("{message}")]
    Status {
        method: &'static str,
        code: i32,
        message: String,
    },
    /// The connection to the shim is gone or never came up.
    #[error("shim {method}: connection lost: {message}")]
    Disconnected { method: &'static str, message: String },
    #[error("decode shim {what}: {message}")]
    Decode { what: &'static str, message: String },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
}

impl ShimError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ShimError::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the shim cannot be reached any more (it died or hung up).
    pub fn is_disconnected(&self) -> bool {
        matches!(self, ShimError::Disconnected { .. })
    }

    /// True for an answer of the shim meaning "no such task or process".
    pub fn is_not_found(&self) -> bool {
        matches!(self, ShimError::Status { code, .. } if *code == ttrpc::Code::NOT_FOUND as i32)
    }
}

impl From<ShimError> for Error {
    fn from(e: ShimError) -> Self {
        let text = e.to_string();
        match e {
            ShimError::InvalidRuntime(_) => Error::InvalidArgument(text),
            ShimError::BinaryNotFound { .. } => Error::NotFound(text),
            ShimError::AlreadyExists(id) => Error::AlreadyExists(format!("task {id}")),
            ShimError::Status { code, .. } => class_of(code, text),
            ShimError::Disconnected { .. } | ShimError::Timeout { .. } => Error::Unavailable(text),
            ShimError::Io { .. } | ShimError::Command { .. } | ShimError::Bootstrap(_) | ShimError::Decode { .. } => {
                Error::Internal(text)
            }
        }
    }
}

/// The class of a google.rpc code; the shim's text is kept as it is.
/// `NotFound` and `AlreadyExists` add a suffix to their text in
/// corten's errors, so the shim's own suffix is dropped to avoid
/// "...: not found: not found".
fn class_of(code: i32, text: String) -> Error {
    use ttrpc::Code;
    let trimmed = |suffix: &str| text.strip_suffix(suffix).unwrap_or(&text).to_string();
    match Code::try_from(code).unwrap_or(Code::UNKNOWN) {
        Code::NOT_FOUND => Error::NotFound(trimmed(": not found")),
        Code::ALREADY_EXISTS => Error::AlreadyExists(trimmed(": already exists")),
        Code::FAILED_PRECONDITION => Error::FailedPrecondition(text),
        Code::INVALID_ARGUMENT => Error::InvalidArgument(text),
        Code::UNAVAILABLE | Code::DEADLINE_EXCEEDED | Code::CANCELLED | Code::ABORTED => Error::Unavailable(text),
        Code::UNIMPLEMENTED => Error::Unimplemented(text),
        Code::OUT_OF_RANGE => Error::OutOfRange(text),
        _ => Error::Internal(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: ttrpc::Code, message: &str) -> Error {
        ShimError::Status {
            method: "Kill",
            code: code as i32,
            message: message.into(),
        }
        .into()
    }

    #[test]
    fn codes_become_classes() {
        assert_eq!(
            status(ttrpc::Code::NOT_FOUND, "process e1: not found"),
            Error::NotFound("process e1".into())
        );
        assert!(matches!(
            status(ttrpc::Code::FAILED_PRECONDITION, "x"),
            Error::FailedPrecondition(_)
        ));
        assert!(matches!(
            status(ttrpc::Code::INVALID_ARGUMENT, "x"),
            Error::InvalidArgument(_)
        ));
        assert!(matches!(
            status(ttrpc::Code::ALREADY_EXISTS, "x"),
            Error::AlreadyExists(_)
        ));
        assert!(matches!(
            status(ttrpc::Code::UNIMPLEMENTED, "x"),
            Error::Unimplemented(_)
        ));
        assert!(matches!(
            status(ttrpc::Code::UNKNOWN, "runc failed"),
            Error::Internal(_)
        ));
        let lost: Error = ShimError::Disconnected {
            method: "State",
            message: "eof".into(),
        }
        .into();
        assert!(matches!(lost, Error::Unavailable(_)));
    }

    #[test]
    fn runtime_errors_name_the_runtime() {
        let e: Error = ShimError::InvalidRuntime("bogus".into()).into();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("bogus")));
        let e: Error = ShimError::BinaryNotFound {
            runtime: "io.containerd.nope.v1".into(),
            binary: "containerd-shim-nope-v1".into(),
            searched: "beside /x and on PATH".into(),
        }
        .into();
        assert!(matches!(&e, Error::NotFound(m) if m.contains("containerd-shim-nope-v1")));
    }
}
