//! The allocator's arenas, large blocks and thread caches.
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
//!
//! Each thread's own cache of freed small blocks (glibc's tcache, up to
//! seven blocks of each of 64 sizes) is off. The daemon runs some thirty
//! threads, most of them tokio's blocking pool, and each cache kept what
//! its thread last freed, holding those blocks and the pages under them:
//! with 20 containers running the daemon's RSS was 15.2 MiB and grew by
//! about 0.4 MiB with every round of 20 started and removed; without the
//! caches it was 13.5 MiB and flat (`corten-bench run`, 5 rounds). Small
//! blocks then come from the two arenas under their locks, which no
//! benchmark here could tell apart. glibc reads that setting only from the
//! environment as a process starts, so [`apply_tunables`] starts cortend
//! again with it, once, before anything else runs: about a millisecond
//! more to start.

use std::{
    env,
    ffi::{OsStr, OsString},
    os::unix::{ffi::OsStrExt, process::CommandExt},
    process::Command,
    sync::Arc,
    time::Duration,
};

use tokio::sync::Notify;

/// What cortend sets in `GLIBC_TUNABLES` for itself.
const TUNABLE: &str = "glibc.malloc.tcache_count=0";
const TUNABLES_VAR: &str = "GLIBC_TUNABLES";
/// Set for the second start only: the `GLIBC_TUNABLES` the first one was
/// given (empty for none), restored so that what cortend starts (shims,
/// runc, mount helpers) gets the environment cortend was given.
const GIVEN_VAR: &str = "CORTEND_GIVEN_GLIBC_TUNABLES";

/// Starts cortend again with [`TUNABLE`] unless it runs with it already;
/// in the second start, restores the environment it was given. Must run
/// first in `main`, while the process has one thread. An operator who sets
/// `glibc.malloc.tcache_count` themselves keeps their value, and a failed
/// exec (no `/proc`) only leaves the caches on.
pub fn apply_tunables() {
    if let Some(given) = env::var_os(GIVEN_VAR) {
        // Environment writes race with other threads reading it; there are
        // none yet.
        if given.is_empty() {
            env::remove_var(TUNABLES_VAR);
        } else {
            env::set_var(TUNABLES_VAR, &given);
        }
        env::remove_var(GIVEN_VAR);
        restore_name();
        return;
    }
    let given = env::var_os(TUNABLES_VAR).unwrap_or_default();
    let Some(tunables) = with_caches_off(&given) else {
        return;
    };
    let mut args = env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("cortend"));
    // Only returns on failure.
    let failed = Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env(TUNABLES_VAR, tunables)
        .env(GIVEN_VAR, given)
        .exec();
    // Logging is not set up yet.
    eprintln!("cortend: warning: running with glibc's thread caches on: restart through /proc/self/exe: {failed}");
}

/// Names the process after its binary again. An exec names a process after
/// the file it ran, here `/proc/self/exe`: without this, `ps`, `top` and
/// `pkill cortend` would see a process called `exe`.
fn restore_name() {
    let Some(name) = env::current_exe()
        .ok()
        .and_then(|path| path.file_name().map(|n| n.as_bytes().to_vec()))
    else {
        return;
    };
    // The kernel keeps the first 15 bytes. Only the name shown for the
    // process changes; failure keeps `exe`.
    if let Ok(name) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

/// `given` with [`TUNABLE`] added, or `None` when it sets the caches already.
fn with_caches_off(given: &OsStr) -> Option<OsString> {
    if given.to_string_lossy().contains("glibc.malloc.tcache_count=") {
        return None;
    }
    let mut tunables = given.to_owned();
    if !tunables.is_empty() {
        tunables.push(":");
    }
    tunables.push(TUNABLE);
    Some(tunables)
}

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

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::with_caches_off;

    #[test]
    fn adds_the_setting_to_what_the_operator_gave() {
        assert_eq!(with_caches_off(OsStr::new("")).unwrap(), "glibc.malloc.tcache_count=0");
        assert_eq!(
            with_caches_off(OsStr::new("glibc.malloc.arena_max=4")).unwrap(),
            "glibc.malloc.arena_max=4:glibc.malloc.tcache_count=0"
        );
    }

    #[test]
    fn keeps_the_operators_own_cache_setting() {
        assert!(with_caches_off(OsStr::new("glibc.malloc.tcache_count=3")).is_none());
        assert!(with_caches_off(OsStr::new("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=7")).is_none());
    }
}
