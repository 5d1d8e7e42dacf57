//! Library side of the `statemesh` command-line tool: the parts other targets (tests, fuzz
//! targets) can reach.
//!
//! - `args`: the flags shared by every command that joins a mesh.
//! - [`sidecar`]: `statemesh sidecar`, a mesh peer speaking JSON-RPC 2.0 over stdio for windows
//!   that are not written in Rust, with its pure framing and message codecs.
//! - `fuzzing` (feature `fuzzing`): the body of the `sidecar_rpc` fuzz target (`fuzz/`) and
//!   its seed inputs.
//!
//! `args` and the sidecar's server (`sidecar::run`) need the default feature `runtime`, as does
//! the `statemesh` binary; without it only the pure codecs and `fuzzing` are built (fuzz/
//! builds it so, with the feature `fuzzing` alone).

#[cfg(not(any(feature = "runtime", feature = "fuzzing")))]
compile_error!(
    "statemesh-cli needs the feature `runtime` (the default: the binary) or `fuzzing` (the \
     sidecar's codecs alone, for fuzz/)"
);

#[cfg(feature = "runtime")]
pub mod args;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod sidecar;
