//! The flags every command that joins a mesh shares, mapped onto [`statemesh::MeshBuilder`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use statemesh::{Mesh, MeshBuilder};

/// Which mesh to join, and how.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshArgs {
    /// The mesh to join (a workspace path or any name).
    #[arg(long, default_value = "default")]
    pub mesh: String,
    /// The secret file (default: `<config dir>/statemesh/secret`, created on first use).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Where local sockets live (default: `$XDG_RUNTIME_DIR/statemesh`, else
    /// `/tmp/statemesh-<uid>`).
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// LAN mode: listen on every interface and find peers by mDNS (off: nothing leaves this
    /// machine).
    #[arg(long)]
    pub lan: bool,
    /// Do not find peers of this machine through local sockets.
    #[arg(long)]
    pub no_local_discovery: bool,
    /// QUIC listen address (default 127.0.0.1:0, or 0.0.0.0:0 with --lan).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// A peer to dial (repeatable), for networks without multicast.
    #[arg(long = "peer")]
    pub peers: Vec<SocketAddr>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub heartbeat_ms: u64,
    /// Suspect timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub suspect_ms: u64,
    /// How long joining waits, at most, until this peer holds what the peers it found hold,
    /// in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub join_timeout_ms: u64,
}

impl MeshArgs {
    /// A builder with these flags applied.
    pub fn builder(&self) -> MeshBuilder {
        let mut b = Mesh::builder(&self.mesh)
            .lan(self.lan)
            .local_discovery(!self.no_local_discovery)
            .heartbeat_interval(Duration::from_millis(self.heartbeat_ms))
            .suspect_timeout(Duration::from_millis(self.suspect_ms))
            .join_timeout(Duration::from_millis(self.join_timeout_ms));
        if let Some(l) = self.listen {
            b = b.listen(l);
        }
        if let Some(f) = &self.secret_file {
            b = b.secret_file(f);
        }
        if let Some(d) = &self.runtime_dir {
            b = b.runtime_dir(d);
        }
        for p in &self.peers {
            b = b.static_peer(*p);
        }
        b
    }
}
