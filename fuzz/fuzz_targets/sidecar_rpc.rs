//! The sidecar's input path on an arbitrary client byte stream: framing, JSON-RPC requests,
//! the answers built for them and value conversion.
//! The body, and the invariants it checks, are in `statemesh_cli::fuzzing::sidecar_rpc`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statemesh_cli::fuzzing;

fuzz_target!(|data: &[u8]| fuzzing::sidecar_rpc(data));
