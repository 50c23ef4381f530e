//! The allocator's arenas. glibc gives each thread that allocates its own
//! arena (up to eight per core), and memory freed into an arena stays
//! resident there. cortend's threads are mostly tokio's blocking pool, which
//! grows with bursts of container starts and then idles: with one arena per
//! thread, each burst leaves megabytes behind. Two arenas keep contention
//! low on the two async workers and hold the daemon's footprint flat.

const ARENAS: i32 = 2;

/// Must run before any other thread starts, so every thread shares them.
pub fn limit_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; it takes no
    // pointers and is called before any other thread exists, so nothing
    // allocates concurrently. It returns 0 on failure, which only costs
    // memory, so the result is ignored.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, ARENAS);
    }
}
