//! Library side of the `statemesh` command-line tool: the parts other targets (tests, fuzz
//! targets) can reach.
//!
//! - [`args`]: the flags shared by every command that joins a mesh.
//! - [`sidecar`]: `statemesh sidecar`, a mesh peer speaking JSON-RPC 2.0 over stdio for windows
//!   that are not written in Rust, with its pure framing and message codecs.

pub mod args;
pub mod sidecar;
