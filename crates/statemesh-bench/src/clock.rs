//! One clock for every window process of this machine.
//!
//! `CLOCK_MONOTONIC` is system-wide on Linux: every process reads the same counter (network
//! namespaces do not change it; only a time namespace would, and the harness creates none). A
//! timestamp taken in one window and compared with a reading in another is therefore a valid
//! one-way delay — on one machine. Across machines it would not be, which is why the library
//! itself never compares clocks of different processes.

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub(crate) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// Nanoseconds from `from` to `to` as milliseconds (negative if `to` is earlier).
pub(crate) fn ms_between(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_does_not_go_back() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        assert!((ms_between(a, a + 1_500_000) - 1.5).abs() < 1e-9);
    }
}
