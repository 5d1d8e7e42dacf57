//! `statemesh node`: run one peer, printing what it sees as JSON lines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use statemesh::Mesh;

/// Options of `statemesh node`.
#[derive(clap::Args, Debug)]
pub(crate) struct NodeArgs {
    /// The mesh to join (a workspace path or any name).
    #[arg(long, default_value = "default")]
    mesh: String,
    /// The secret file (default: <config dir>/statemesh/secret, created on first use).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Where local sockets live (default: $XDG_RUNTIME_DIR/statemesh).
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    /// Where state files live (default: <state dir>/statemesh).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Do not persist state.
    #[arg(long)]
    no_persist: bool,
    /// Never become the probe leader.
    #[arg(long)]
    not_eligible: bool,
    /// LAN mode: listen on every interface and find peers by mDNS (off: nothing leaves this
    /// machine).
    #[arg(long)]
    lan: bool,
    /// Do not find peers of this machine through local sockets.
    #[arg(long)]
    no_local_discovery: bool,
    /// QUIC listen address (default 127.0.0.1:0, or 0.0.0.0:0 with --lan).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A peer to dial (repeatable), for networks without multicast.
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 200)]
    heartbeat_ms: u64,
    /// Suspect timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    suspect_ms: u64,
    /// Write a presence-scoped record `windows/<my id>` on start (so others see this window).
    #[arg(long)]
    announce: bool,
}

pub(crate) async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut b = Mesh::builder(&args.mesh)
        .lan(args.lan)
        .local_discovery(!args.no_local_discovery)
        .eligible(!args.not_eligible)
        .persist(!args.no_persist)
        .heartbeat_interval(std::time::Duration::from_millis(args.heartbeat_ms))
        .suspect_timeout(std::time::Duration::from_millis(args.suspect_ms));
    if let Some(l) = args.listen {
        b = b.listen(l);
    }
    if let Some(f) = &args.secret_file {
        b = b.secret_file(f);
    }
    if let Some(d) = &args.runtime_dir {
        b = b.runtime_dir(d);
    }
    if let Some(d) = &args.state_dir {
        b = b.state_dir(d);
    }
    for p in &args.peers {
        b = b.static_peer(*p);
    }
    let mesh = b.join().await?;
    let ms = || started.elapsed().as_secs_f64() * 1e3;
    println!(
        "{}",
        json!({"event": "joined", "peer": mesh.id().to_string(), "t_ms": ms()})
    );
    if args.announce {
        mesh.put_presence("windows", &mesh.id().to_string(), &true)?;
    }
    let mut leadership = mesh.leadership();
    let mut changes = mesh.changes();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            changed = leadership.changed() => {
                if changed.is_err() {
                    break;
                }
                let l = *leadership.borrow_and_update();
                println!("{}", json!({
                    "event": "leadership",
                    "leader": l.leader.map(|p| p.to_string()),
                    "term": l.term,
                    "is_me": l.is_me,
                    "t_ms": ms(),
                }));
            }
            change = changes.recv() => match change {
                Ok(c) => println!("{}", json!({
                    "event": "change",
                    "kind": format!("{:?}", c.kind).to_lowercase(),
                    "channel": c.channel,
                    "key": c.key,
                    "by": c.by.map(|p| p.to_string()),
                    "t_ms": ms(),
                })),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    println!("{}", json!({"event": "lagged", "missed": n}));
                }
                Err(_) => break,
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    mesh.shutdown().await?;
    println!("{}", json!({"event": "left", "t_ms": ms()}));
    Ok(())
}
