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
