//! The CPU priority of the mesh's background threads: the pulse's (heartbeats and views) and
//! the jobs' (bulk work of the CRDT library) run `background_nice` levels below the thread
//! that starts them, one of the runtime's, so that the data path (a change's receipt, its
//! answer, its publication: the runtime's threads) goes first when the cores are short.
//!
//! Why by deadline: a change's receipt is wanted within milliseconds; a view within the
//! suspect timeout (1 s by default), less a heartbeat interval. At 64 windows on 2 cores the
//! heartbeat instant brings every window 63 views at once, about 75 ms of CPU mesh-wide; at
//! one priority a write that met it waited for it (`scale` p99 60-80 ms), with the pulses 10
//! levels below it goes first (46-58 ms in the same sitting) and the views are read a few
//! milliseconds later (15 levels since the fortieth slice: see [`DEFAULT_BACKGROUND_NICE`]).
//! The jobs go down with the pulse, so that bulk work and liveness share the cores as they did
//! (the pulse alone lowered let the jobs' backlog make beats 63-65 ms late in `overload`;
//! both lowered, 12-25 ms at the most, as at one priority). See docs/under-load.md, thirty-eighth slice.
//!
//! Linux only: there a thread has a nice value of its own. Elsewhere `setpriority` would move
//! the whole process, so nothing is changed.

/// How many nice levels below the runtime's threads the background threads run by default.
///
/// Fifteen: nice weighs each thread's share, and 64 windows' pulses woken together by a
/// heartbeat instant weigh as a crowd. At 10 levels down (weight 110 each against a
/// data-path thread's 1,024) the 64 pulses of `scale` weighed seven data-path threads, and a
/// write that met their views waited for them; at 15 (29 each) they weigh under two.
/// `scale` p99 (64 windows, 2 cores, alternately) 44.4 / 52.7 / 53.9 / 43.8 / 64.8 ms at 10,
/// 40.1 / 41.0 / 41.5 / 55.7 / 53.2 at 15; `overload --peers 8` beats late at most 37 ms at
/// 10, 45 ms at 15, 0 false suspicions either way (196-261 ms at 19).
pub(crate) const DEFAULT_BACKGROUND_NICE: u8 = 15;

/// Lowers the calling thread's CPU priority by `by` nice levels (to 19 at the most), and
/// returns its nice value after; `None` where nothing was changed (`by` is 0, another OS, or
/// the kernel refused: logged).
pub(crate) fn lower_this_thread(by: u8, what: &str) -> Option<i32> {
    if by == 0 {
        return None;
    }
    lower(by, what)
}

#[cfg(target_os = "linux")]
fn lower(by: u8, what: &str) -> Option<i32> {
    use rustix::process::{getpriority_process, setpriority_process};
    let tid = rustix::thread::gettid();
    let lowered = getpriority_process(Some(tid)).and_then(|now| {
        let to = (now + i32::from(by)).min(19);
        setpriority_process(Some(tid), to).map(|()| to)
    });
    match lowered {
        Ok(to) => {
            tracing::debug!(thread = what, nice = to, "background thread lowered");
            Some(to)
        }
        Err(e) => {
            tracing::warn!(thread = what, error = %e, "could not lower the thread's CPU priority");
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lower(_by: u8, _what: &str) -> Option<i32> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's nice value, as the kernel reports it.
    fn nice_of_this_thread() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("nice value")
    }

    #[test]
    fn a_thread_lowers_itself_alone_and_stops_at_19() {
        let before = nice_of_this_thread();
        let (start, lowered, after, capped) = std::thread::spawn(|| {
            let start = nice_of_this_thread();
            let lowered = lower_this_thread(3, "test");
            let after = nice_of_this_thread();
            let capped = lower_this_thread(40, "test");
            (start, lowered, after, capped)
        })
        .join()
        .expect("thread");
        let expected = (start + 3).min(19);
        assert_eq!(lowered, Some(expected));
        assert_eq!(after, expected);
        assert_eq!(capped, Some(19));
        // The thread that spawned it keeps its own priority.
        assert_eq!(nice_of_this_thread(), before);
    }

    #[test]
    fn zero_levels_change_nothing() {
        let (lowered, moved) = std::thread::spawn(|| {
            let start = nice_of_this_thread();
            (lower_this_thread(0, "test"), nice_of_this_thread() - start)
        })
        .join()
        .expect("thread");
        assert_eq!(lowered, None);
        assert_eq!(moved, 0);
    }
}
