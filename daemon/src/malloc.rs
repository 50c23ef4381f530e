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
