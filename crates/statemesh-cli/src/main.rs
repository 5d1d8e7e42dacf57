//! The `statemesh` command-line tool.
//!
//! `statemesh demo` plays the mesh's story — windows, a probe leader, shared state, a leader
//! killed, the failover — with real window processes on this machine. (The same story on the
//! core's deterministic simulator is an example binary: `simulated_demo` in `examples/`.)

use std::process::ExitCode;
use std::time::Duration;

mod demo;
mod keys;
mod node;
mod query;
mod top;

use clap::{Parser, Subcommand};

/// statemesh: one shared state and one probe leader for every window of a desktop app.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Plays the health-watch story with real window processes on this machine: a probe
    /// leader, live statuses in every window, an endpoint down, the leader SIGKILLed and the
    /// failover measured. Needs no configuration; cleans up after itself.
    Demo {
        /// Number of windows.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(2..=64))]
        windows: u16,
        /// Pause between the story's acts, in milliseconds (0: run straight through).
        #[arg(long, default_value_t = 1500)]
        pace_ms: u64,
    },
    /// One window of the demo (started by `statemesh demo`).
    #[command(hide = true)]
    DemoWindow(demo::WindowArgs),
    /// Runs one peer of a mesh and prints what it sees (leadership, changes) as JSON lines.
    /// Stops gracefully (announcing its leave) on SIGTERM or Ctrl-C.
    Node(node::NodeArgs),
    /// Runs one peer for a window that is not written in Rust: JSON-RPC 2.0 over stdin and
    /// stdout with LSP-style framing (see docs/sidecar.md); logs go to stderr.
    Sidecar(statemesh_cli::sidecar::SidecarArgs),
    #[command(flatten)]
    Query(query::Query),
    /// A live terminal view of a mesh: members, leader and term, channels, propagation
    /// delays. `q` quits. Needs a terminal (exit code 5 without one).
    Top(query::QueryArgs),
    /// Writes a new mesh secret (32 random bytes, mode 0600); refuses to replace one without
    /// --force.
    Keygen(query::KeygenArgs),
    /// The mesh keyring: list, install, use, remove keys (rotating the secret without
    /// stopping a window; see docs/security.md). Running windows of this machine using the
    /// file apply each change.
    Keys(keys::KeysArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Demo { windows, pace_ms } => {
            demo::run(usize::from(windows), Duration::from_millis(pace_ms))
                .map(|()| ExitCode::SUCCESS)
        }
        Command::DemoWindow(args) => tokio::runtime::Runtime::new()?
            .block_on(demo::window(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Node(args) => tokio::runtime::Runtime::new()?
            .block_on(node::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Query(q) => tokio::runtime::Runtime::new()?.block_on(query::run(q)),
        Command::Keygen(args) => query::keygen(&args),
        Command::Keys(args) => keys::run(&args),
        Command::Top(args) => tokio::runtime::Runtime::new()?.block_on(top::run(args)),
        Command::Sidecar(args) => std::process::exit(statemesh_cli::sidecar::run(args)?),
    }
}
