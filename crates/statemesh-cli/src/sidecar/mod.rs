//! `statemesh sidecar`: a mesh peer for windows that are not written in Rust (a VS Code
//! extension host, an Electron process). The window spawns the sidecar and speaks JSON-RPC 2.0
//! with it over stdin and stdout, framed like LSP (`Content-Length: N\r\n\r\n` + N bytes of
//! UTF-8 JSON). Logs go to stderr only. `docs/sidecar.md` specifies the protocol.
//!
//! The pieces that handle untrusted input are pure and public so that tests and fuzz targets
//! can drive them: [`framing`] (bytes to message bodies), [`rpc`] (bodies to requests) and
//! [`values`] (JSON to mesh values).
//!
//! The server, built with the feature `runtime`, is private:
//!
//! | module | what |
//! |---|---|
//! | `process` | the options, stdin and stdout threads, signals and the parent's death, the main loop, the exit status |
//! | `session` | dispatching each message, answering it, the held lead guard, notifications, leaving |
//! | `methods` | the table of methods and one function per method |
//! | `params` | the parameters of each method |
//! | `answers` | the JSON of what the mesh reports, its errors as JSON-RPC errors, a write's answer |

#[cfg(feature = "runtime")]
mod answers;
pub mod framing;
#[cfg(feature = "runtime")]
mod methods;
#[cfg(feature = "runtime")]
mod params;
#[cfg(feature = "runtime")]
mod process;
pub mod rpc;
#[cfg(feature = "runtime")]
mod session;
pub mod values;

#[cfg(feature = "runtime")]
pub use process::{SidecarArgs, run};
