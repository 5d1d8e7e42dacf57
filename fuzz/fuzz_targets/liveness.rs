//! The liveness and election state machine driven by an arbitrary sequence of events.
//! The body, and the invariants it checks, are in `statemesh_core::fuzzing::liveness`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statemesh_core::fuzzing;

fuzz_target!(init: fuzzing::init(), |data: &[u8]| fuzzing::liveness(data));
