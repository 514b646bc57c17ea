//! Handing freed memory back to the system.

/// Asks the allocator to return free memory to the system. glibc keeps
/// memory freed in the middle of its heap (say, the pages a scan of the
/// whole queue read, once dropped) as part of the resident set until asked;
/// elsewhere this does nothing.
pub(crate) fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is
    // thread-safe and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Caps glibc's malloc arenas at one per 4 CPUs (at least one), unless the
/// environment already sets a cap (`MALLOC_ARENA_MAX`, or
/// `glibc.malloc.arena_max` in `GLIBC_TUNABLES`). Call it first thing in
/// `main`, before any thread starts; elsewhere than glibc it does nothing.
///
/// glibc's default is 8 arenas per CPU. A thread that scans the whole queue
/// (the admin API's listing, a bulk action) then allocates the pages it
/// reads in whichever arena it lands on, next to long-lived data such as
/// sled's page table, and what it frees there stays resident as holes. At
/// 1,000,000 queued messages, four `queue list` runs in a row left the
/// server at 206-230 MiB with glibc's default or with 2 arenas (it depends
/// on where the scans land), and at 166 MiB, every time, with one arena.
/// On 2 CPUs one arena cost no SMTP throughput at 1, 20 or 100 sessions,
/// but `queue hold --all` and `release --all` at 1,000,000 messages took
/// about 40% longer (34 s against 24 s, one run; README, Performance). On
/// bigger machines, where threads would queue for one arena's lock, one per
/// 4 CPUs is a guess, not a measurement.
pub fn limit_heap_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_operator = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|tunables| tunables.contains("arena_max"));
        if set_by_operator {
            return;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |cpus| cpus.get());
        let arenas = libc::c_int::try_from((cpus / 4).max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX is
        // valid at any time and only bounds arenas created afterwards.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
