//! Example binaries for statemesh, and the flags they share.
//!
//! | binary | shows |
//! |---|---|
//! | `embed` | the smallest embedding: join, write, watch, leave |
//! | `health_watch` | the probe leader probes TCP endpoints under its lead guard; every window shows the results live |
//! | `orchestration` | per-window workspaces with `desired` (durable) and `running` (presence) counters, global totals |
//! | `two_windows` | the sans-IO core wired by hand, in memory |
//! | `simulated_demo` | the `statemesh demo` story on the core's deterministic simulator (virtual time; a seed replays a run) |
//!
//! The embedding guide (`docs/guide.md`) is included below as [`guide`], so its code blocks are
//! compiled by `cargo test --doc`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use statemesh::{Mesh, MeshBuilder};

#[doc = include_str!("../../docs/guide.md")]
pub mod guide {}

/// The flags every example window shares: where its files live, how it finds peers, how long
/// it runs.
#[derive(clap::Args, Debug, Clone)]
pub struct WindowArgs {
    /// Keep this window's secret, sockets and state under DIR (`DIR/secret`, `DIR/run`,
    /// `DIR/state`): windows given the same DIR form an isolated mesh. Default: the per-user
    /// files a real app uses.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The secret file (overrides --dir).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Where local sockets live (overrides --dir).
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// Where state files live (overrides --dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// LAN mode: listen on every interface and find peers by mDNS (copy the secret file to
    /// every machine). Off by default: nothing leaves this machine.
    #[arg(long)]
    pub lan: bool,
    /// QUIC listen address (default 127.0.0.1:0, or 0.0.0.0:0 with --lan).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// A peer to dial at a known address, for networks without multicast (repeatable).
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<SocketAddr>,
    /// Leave gracefully after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub for_secs: Option<u64>,
}

impl WindowArgs {
    /// A builder for mesh `name` with these flags applied.
    pub fn builder(&self, name: &str) -> MeshBuilder {
        let mut b = Mesh::builder(name).lan(self.lan);
        if let Some(dir) = &self.dir {
            b = b
                .secret_file(dir.join("secret"))
                .runtime_dir(dir.join("run"))
                .state_dir(dir.join("state"));
        }
        if let Some(f) = &self.secret_file {
            b = b.secret_file(f);
        }
        if let Some(d) = &self.runtime_dir {
            b = b.runtime_dir(d);
        }
        if let Some(d) = &self.state_dir {
            b = b.state_dir(d);
        }
        if let Some(addr) = self.listen {
            b = b.listen(addr);
        }
        for peer in &self.peers {
            b = b.static_peer(*peer);
        }
        b
    }

    /// Resolves when the window should leave: on Ctrl-C, or after `--for-secs`.
    pub async fn done(&self) {
        let deadline = async {
            match self.for_secs {
                Some(n) => tokio::time::sleep(Duration::from_secs(n)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = deadline => {}
        }
    }
}
