//! The allocator's arenas and large blocks.
//!
//! glibc gives each thread that allocates its own arena (up to eight per
//! core), and memory freed into an arena stays resident there. cortend's
//! threads are mostly tokio's blocking pool, which grows with bursts of
//! container starts and then idles: with one arena per thread, each burst
//! leaves megabytes behind. Two arenas keep contention low on the two async
//! workers and hold the daemon's footprint flat.
//!
//! Blocks of [`MMAP_THRESHOLD`] and more get pages of their own, returned
//! to the kernel when freed. glibc's default threshold starts there too but
//! rises to the size of any such block freed, up to 32 MiB: once the first
//! 1 MiB copy buffer (content reads, pulls, unpacks) or redb's 532 KiB
//! buffer at open was freed, later ones came from the arenas, and their
//! pages stayed resident there after they were freed. Setting the
//! threshold keeps it in place. A large block costs a `mmap` and its page
//! faults, small next to the copying of the bulk data such blocks hold.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;

const ARENAS: i32 = 2;

const MMAP_THRESHOLD: i32 = 128 << 10;

/// Must run before any other thread starts, so every thread shares them.
pub fn tune() {
    // SAFETY: mallopt only sets allocator parameters; it takes no
    // pointers and is called before any other thread exists, so nothing
    // allocates concurrently. It returns 0 on failure, which only costs
    // memory, so the results are ignored.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, ARENAS);
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// How long the daemon must have had no new RPC before freed memory is
/// given back: long enough that a burst of calls is one trim, short enough
/// that what a burst freed is gone by the time anyone looks.
const QUIET: Duration = Duration::from_millis(500);

/// Gives the allocator's free pages back to the kernel once the daemon
/// goes quiet after RPCs.
///
/// glibc returns memory to the kernel only from the top of an arena. A
/// burst of container starts frees hundreds of KiB in the middle of the
/// arenas (requests, bundles, shim connections being set up), and those
/// pages stay resident until something asks for them back: about 0.4 MiB
/// measured with 20 containers just started. `malloc_trim` walks the free
/// lists and releases every whole free page. It runs on a blocking thread,
/// once per quiet spell, and never while the daemon is idle: only an RPC
/// wakes the task.
#[derive(Clone)]
pub struct Trimmer {
    activity: Arc<Notify>,
}

impl Trimmer {
    /// Starts the task on the current runtime.
    pub fn spawn() -> Trimmer {
        let activity = Arc::new(Notify::new());
        let woken = activity.clone();
        tokio::spawn(async move {
            loop {
                woken.notified().await;
                // Calls during the wait leave one permit, so a steady
                // stream of them trims once per QUIET rather than never.
                tokio::time::sleep(QUIET).await;
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        });
        Trimmer { activity }
    }

    /// Records an RPC.
    pub fn touch(&self) {
        self.activity.notify_one();
    }
}

fn trim() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free
    // memory under its own locks; it takes no pointers of ours.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
