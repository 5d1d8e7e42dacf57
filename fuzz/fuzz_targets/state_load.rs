//! Loading a persisted state file from arbitrary bytes.
//! The body, and the invariants it checks, are in `statemesh_core::fuzzing::state_load`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statemesh_core::fuzzing;

fuzz_target!(init: fuzzing::init(), |data: &[u8]| fuzzing::state_load(data));
