//! A higher CPU priority for the thread that opens sled, while it does.
//!
//! sled 0.34 starts its I/O thread pool the first time it is used, during
//! the open: the opening thread spawns seven threads, and each of them
//! busy-waits (a compare-and-swap loop that never yields) on the pool's
//! lazy initialisation until the opening thread has spawned the rest. On
//! a machine with two CPUs the spinners outnumber the CPUs after the second
//! spawn, and the opening thread then waits for a scheduler time slice
//! between spawns. Measured from sled's first file to the metadata
//! plugin's end, on a fresh root, 60 starts: 4.3 ms on average, most
//! starts taking 4-16 ms rather than 1-2.
//!
//! At nice -20 the opening thread outweighs a spinner about 87 to 1, and
//! the same measure gives 2.4 ms on average, most starts 1-2 ms. The
//! threads it starts meanwhile do not inherit that (`SCHED_RESET_ON_FORK`
//! starts them at nice 0), so sled's pool runs at the daemon's own
//! priority: the boost is skipped unless that is the default one. Raising
//! a priority needs `CAP_SYS_NICE`; without it the open runs as before.

use nix::libc;

/// The opening thread's nice value while it opens.
const OPENING_NICE: libc::c_int = -20;

/// Raised priority of the current thread, put back to the default (nice 0)
/// on drop.
pub struct Raised {
    tid: libc::id_t,
}

impl Raised {
    /// Raises the current thread's priority, or returns `None` where it
    /// cannot be raised (no `CAP_SYS_NICE`) or where the thread runs at a
    /// policy or priority other than the default, which it then keeps.
    pub fn current_thread() -> Option<Raised> {
        let tid = this_thread()?;
        // SAFETY: sched_getscheduler takes a thread id (0: this one) and returns a number.
        if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
            return None;
        }
        // Children of a raised thread start at nice 0: the daemon's own
        // priority only when that is 0 too.
        // SAFETY: getpriority reads a value (-1 on error, refused here too).
        if unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) } != 0 {
            return None;
        }
        // The nice value first: only it needs the privilege, and clearing
        // the flag below again would need it too. On Linux, PRIO_PROCESS
        // with a thread id sets that thread alone.
        // SAFETY: setpriority takes plain numbers.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, OPENING_NICE) } != 0 {
            return None;
        }
        // From here on, dropping `raised` puts back what was changed.
        let raised = Raised { tid };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` outlives the call, which only reads it.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER | libc::SCHED_RESET_ON_FORK, &param) } != 0 {
            return None;
        }
        Some(raised)
    }
}

fn this_thread() -> Option<libc::id_t> {
    libc::id_t::try_from(nix::unistd::gettid().as_raw()).ok()
}

impl Drop for Raised {
    fn drop(&mut self) {
        // SAFETY: as above. The thread had the privilege to raise itself,
        // so it has it to go back; were it refused, the thread would only
        // stay favoured over the daemon's others.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, self.tid, 0);
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of(tid: libc::id_t) -> libc::c_int {
        // SAFETY: as in `current_thread`.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) }
    }

    #[test]
    fn raises_this_thread_alone_and_puts_it_back() {
        // The tests run as root, as the daemon does.
        std::thread::spawn(|| {
            let tid = this_thread().unwrap();
            let raised = Raised::current_thread().expect("raise priority (needs CAP_SYS_NICE)");
            assert_eq!(nice_of(tid), OPENING_NICE);
            let child = std::thread::spawn(|| {
                // SAFETY: as in `current_thread`.
                let policy = unsafe { libc::sched_getscheduler(0) };
                (nice_of(this_thread().unwrap()), policy)
            })
            .join()
            .unwrap();
            assert_eq!(
                child,
                (0, libc::SCHED_OTHER),
                "a thread started meanwhile runs at the default"
            );
            drop(raised);
            assert_eq!(nice_of(tid), 0);
            // SAFETY: as in `current_thread`.
            assert_eq!(
                unsafe { libc::sched_getscheduler(0) },
                libc::SCHED_OTHER,
                "flag cleared"
            );
        })
        .join()
        .unwrap();
    }
}
