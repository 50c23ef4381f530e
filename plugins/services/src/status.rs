//! The one place domain errors become gRPC statuses.

use std::sync::atomic::{AtomicBool, Ordering};

use corten_core::Error;
use tokio::runtime::{Handle, RuntimeFlavor};
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

/// Set while a worker runs a short write itself ([`short_write`]).
static WORKER_WRITING: AtomicBool = AtomicBool::new(false);

/// Clears [`WORKER_WRITING`] when the write is over, even by a panic.
struct Writing;

impl Drop for Writing {
    fn drop(&mut self) {
        WORKER_WRITING.store(false, Ordering::Release);
    }
}

/// Runs a short store write (a record or two and their sync, no walk or
/// copy of files) on the calling worker, as long as no other worker is
/// running one; otherwise as [`blocking`]. The hand-off to the blocking
/// pool and back is two thread wake-ups on the request's path, and on this
/// project's 2-CPU VMs that was about a fifth of a snapshot prepare +
/// remove cycle (`corten-bench snapshots`). One worker at most waits on
/// the disk this way, so the others go on serving every other request and
/// stream; concurrent writes still share their syncs through the pool.
pub async fn short_write<T, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    let may_block = Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread;
    if may_block
        && WORKER_WRITING
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    {
        let _writing = Writing;
        return f().map_err(to_status);
    }
    blocking(f).await
}
