//! The bodies of the cargo-fuzz targets in `fuzz/` (feature `fuzzing`), and the seed inputs
//! they start from.
//!
//! Every surface that reads untrusted bytes or event sequences has a target. Each target is a
//! one-liner calling the function of the same name here, and `tests/tests/crashers.rs` replays
//! every committed crash and seed input through the same functions with the ordinary test
//! runner. A function drives the real code path its input takes and panics when an invariant
//! breaks; it must not panic otherwise. Everything is deterministic (fixed RNG seeds, fixed peer
//! ids, virtual time), so an input replays exactly.
//!
//! | target | input | checked |
//! |---|---|---|
//! | [`frame_decode`](fn@frame_decode) | a byte stream from a link | no panic; frames cut from it pass the header checks; accepted messages re-encode identically |
//! | [`sync_receive`](fn@sync_receive) | one payload from a linked peer (also fed as a whole frame) | no panic escapes; a refused frame changes nothing; the node stays usable |
//! | [`state_load`](fn@state_load) | a persisted state file | no panic; a report or a typed refusal; loading is idempotent; the node stays usable |
//! | [`liveness`](fn@liveness) | a sequence of liveness events | the election and liveness invariants after every step |
//!
//! One file per target (`frame_decode`, `sync_receive`, `state_load`, `liveness`); what
//! several share is in `common` (fixed peer ids, draining a node, what a node shows) and
//! `hostile` (programs of hostile changes, read by `sync_receive` and `state_load`); the seed
//! inputs are made in `seeds`.

mod common;
mod frame_decode;
mod hostile;
mod liveness;
mod seeds;
mod state_load;
mod sync_receive;

pub use frame_decode::frame_decode;
pub use liveness::liveness;
pub use seeds::seeds;
pub use state_load::state_load;
pub use sync_receive::sync_receive;

/// The fuzz targets, by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpus and
/// crasher folders).
pub const TARGETS: [&str; 4] = ["frame_decode", "sync_receive", "state_load", "liveness"];

/// The function behind fuzz target `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    match name {
        "frame_decode" => Some(frame_decode),
        "sync_receive" => Some(sync_receive),
        "state_load" => Some(state_load),
        "liveness" => Some(liveness),
        _ => None,
    }
}

/// Installs a panic hook for fuzzing; call it once before the first input.
///
/// libfuzzer-sys installs a hook that aborts on *every* panic, including one the node contains
/// with `catch_unwind` (a sync message or a stored file that makes the CRDT library panic is
/// refused: that is the behaviour under test). Only a panic that escapes a target is a finding.
/// This hook only records the panic (printing every contained one would also slow fuzzing
/// down); the target functions print it if it escapes, and libfuzzer-sys then aborts.
pub fn init() {
    std::panic::set_hook(Box::new(|info| {
        // Symbols are resolved only if the panic escapes.
        let report = (info.to_string(), std::backtrace::Backtrace::force_capture());
        LAST_PANIC.with(|last| *last.borrow_mut() = Some(report));
    }));
}

thread_local! {
    /// The last panic recorded by the hook [`init`] installs, and where it happened.
    static LAST_PANIC: std::cell::RefCell<Option<(String, std::backtrace::Backtrace)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs a target's body; if a panic escapes it, prints what the hook recorded of it (nothing is
/// recorded without [`init`]: the standard hook printed it already) and lets it go on.
fn escaping(body: impl FnOnce()) {
    LAST_PANIC.with(|last| last.borrow_mut().take());
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        if let Some((message, backtrace)) = LAST_PANIC.with(|last| last.borrow_mut().take()) {
            eprintln!("panic escaped the target: {message}\n{backtrace}");
        }
        std::panic::resume_unwind(panic);
    }
}
