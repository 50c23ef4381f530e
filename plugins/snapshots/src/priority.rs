//! Housekeeping at a lower CPU priority.
//!
//! Two jobs of a snapshotter answer no request as it runs: making
//! directories ahead of need ([`spares`](crate::spares)) and removing the
//! directories of snapshots that are gone (a collection's cleanup; only a
//! Cleanup call or an explicit collection waits for one). Both are heavy on the
//! filesystem: ext4 without a journal scans past every recently freed inode
//! to make a directory (a `mkdir` took 0.38 ms, most of it that scan, in the prepare +
//! remove benchmark), and with `-o discard` a removal waits for the disk to
//! discard each freed block. On a two-CPU machine they took CPU from the
//! threads answering requests. At [`NICE`] they get about a tenth of a
//! contended CPU and all of an idle one: slower under load, never starved,
//! as `SCHED_IDLE` could leave them.
//!
//! Only those calls run lowered, never a `rename`: a rename between
//! directories takes the filesystem's one rename lock, and a lowered thread
//! holding it on a busy machine would hold up every creation, which moves
//! its directory into `snapshots/` with a rename. So the priority goes back
//! up after each such call, which needs `CAP_SYS_NICE`; without it, nothing
//! is lowered. Linux keeps a nice value per thread, so only the calling
//! thread changes.

use std::sync::OnceLock;

use nix::{errno::Errno, libc, unistd::gettid};
use tracing::debug;

/// The nice value housekeeping runs at; 0 is the default, 19 the lowest.
pub const NICE: i32 = 10;

/// The calling thread's nice value.
fn current() -> Option<i32> {
    let tid = gettid().as_raw() as libc::id_t;
    // -1 is a valid nice value, so only errno tells a failure apart.
    Errno::clear();
    // SAFETY: getpriority reads a scheduling attribute of the thread named
    // by `tid`, which is this one, and touches no memory of ours.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    (nice != -1 || Errno::last_raw() == 0).then_some(nice)
}

/// Sets the calling thread's nice value.
fn set(nice: i32) -> Result<(), Errno> {
    let tid = gettid().as_raw() as libc::id_t;
    // SAFETY: as in `current`; setpriority changes only the thread's nice value.
    Errno::result(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) }).map(drop)
}

/// Lowers the calling thread to [`NICE`] until the guard is dropped. A
/// thread already lower stays as it is.
pub fn lower_for_now() -> Lowered {
    let restore = current()
        .filter(|&nice| nice < NICE && may_raise())
        .filter(|_| set(NICE).is_ok());
    Lowered { restore }
}

/// Gives the thread the nice value it had before [`lower_for_now`].
pub struct Lowered {
    restore: Option<i32>,
}

impl Drop for Lowered {
    fn drop(&mut self) {
        if let Some(nice) = self.restore {
            if let Err(e) = set(nice) {
                debug!("housekeeping left its thread at nice {NICE}: setpriority: {e}");
            }
        }
    }
}

/// Whether this process holds `CAP_SYS_NICE` (bit 23 of `CapEff`).
fn may_raise() -> bool {
    static MAY: OnceLock<bool> = OnceLock::new();
    *MAY.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << 23) != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test runs in a thread of its own, so the harness's threads keep
    // their priority. The tests run as root, which holds CAP_SYS_NICE.

    #[test]
    fn lowered_for_now_comes_back() {
        std::thread::spawn(|| {
            assert!(may_raise(), "the tests run as root, with CAP_SYS_NICE");
            let before = current().unwrap();
            assert!(before < NICE);
            {
                let _lowered = lower_for_now();
                assert_eq!(current(), Some(NICE));
            }
            assert_eq!(current(), Some(before));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn never_raises_a_thread_already_lower() {
        std::thread::spawn(|| {
            set(15).unwrap();
            {
                let _lowered = lower_for_now();
                assert_eq!(current(), Some(15));
            }
            assert_eq!(current(), Some(15));
        })
        .join()
        .unwrap();
    }
}
