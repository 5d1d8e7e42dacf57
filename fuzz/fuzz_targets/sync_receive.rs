//! A linked peer's payload into a live document: raw, as a sync message, as hostile changes.
//! The body, and the invariants it checks, are in `statemesh_core::fuzzing::sync_receive`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statemesh_core::fuzzing;

fuzz_target!(init: fuzzing::init(), |data: &[u8]| fuzzing::sync_receive(data));
