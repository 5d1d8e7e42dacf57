//! Frame splitting and message decoding on arbitrary bytes.
//! The body, and the invariants it checks, are in `statemesh_core::fuzzing::frame_decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statemesh_core::fuzzing;

fuzz_target!(init: fuzzing::init(), |data: &[u8]| fuzzing::frame_decode(data));
