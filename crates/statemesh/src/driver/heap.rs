//! Freed memory given back to the kernel once the mesh's bulk work goes quiet (the job
//! thread's loop calls it: see `super::jobs`).

use std::time::Duration;

/// How long the job thread waits without a job before it gives freed memory back.
pub(super) const QUIET: Duration = Duration::from_secs(1);

/// Gives the C allocator's free memory back to the kernel (glibc's `malloc_trim`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(super) fn give_back() {
    // SAFETY: `malloc_trim` takes no pointer and touches no live allocation; it only returns
    // free pages of the allocator's arenas to the kernel, under each arena's lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Elsewhere the allocator keeps what it keeps.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(super) fn give_back() {}
