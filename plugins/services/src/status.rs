//! The one place domain errors become gRPC statuses.

use corten_core::Error;
use tonic::{Code, Status};

/// Maps a domain error to the code containerd uses for its class; clients
/// test the code, so this mapping is part of the wire contract.
pub fn to_status(err: Error) -> Status {
    let code = match &err {
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::Unavailable(_) => Code::Unavailable,
        Error::OutOfRange(_) => Code::OutOfRange,
        Error::Unimplemented(_) => Code::Unimplemented,
        Error::Internal(_) => Code::Internal,
    };
    Status::new(code, err.to_string())
}

/// Runs a point read of the stores (one record, or a snapshot's short
/// chain) on the calling worker and maps its error. Such a read is served
/// from memory in microseconds: handing it to the blocking pool and back
/// costs two thread wake-ups, more than the read (on this project's
/// 2-CPU VMs, about 0.06 ms a call; `corten-bench run` prints the time per
/// method). A read that misses the caches blocks this worker for one disk
/// read. Lists, scans and writes (which sync) go through [`blocking`].
pub fn inline<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Status> {
    f().map_err(to_status)
}

/// Runs blocking store work off the async workers and maps its error.
pub async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
        .map_err(to_status)
}
