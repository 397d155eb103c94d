//! glibc allocator tuning: one arena, and freed memory handed back to the system.

/// Caps glibc's malloc arenas at one. By default each worker thread may get its own arena,
/// and each keeps the chunk-sized buffers it freed: 8 parallel 200 MiB GETs peaked at 34 MiB
/// with per-thread arenas, 12 MiB with one, at the same throughput (allocations here are few
/// and large, so one arena's lock is not contended).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the free pages inside the heap to the system. glibc gives back only the top of
/// its heap by itself; chunk-sized buffers and redb's page reads freed below a live
/// allocation stayed resident (about 2.5 MiB after a day of pushes and pulls). Called once a
/// second by the janitor: a walk of a heap of a few MiB takes microseconds.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn give_back() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators are left as they are.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}

/// Other allocators are left as they are.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn give_back() {}
