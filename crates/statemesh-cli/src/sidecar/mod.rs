//! `statemesh sidecar`: a mesh peer for windows that are not written in Rust (a VS Code
//! extension host, an Electron process). The window spawns the sidecar and speaks JSON-RPC 2.0
//! with it over stdin and stdout, framed like LSP (`Content-Length: N\r\n\r\n` + N bytes of
//! UTF-8 JSON). Logs go to stderr only. `docs/sidecar.md` specifies the protocol.
//!
//! The pieces that handle untrusted input are pure and public so that tests and fuzz targets
//! can drive them: [`framing`] (bytes to message bodies), [`rpc`] (bodies to requests) and
//! [`values`] (JSON to mesh values).

pub mod framing;
pub mod rpc;
#[cfg(feature = "runtime")]
mod server;
pub mod values;

#[cfg(feature = "runtime")]
pub use server::{SidecarArgs, run};
