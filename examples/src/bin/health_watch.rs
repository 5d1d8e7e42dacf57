//! A probe leader: one window of the mesh probes TCP endpoints, every window shows the results.
//!
//! Every window is given the same endpoints. Only the leader (the longest-running window)
//! probes: it holds a lead guard, writes each endpoint's status as a leader record carrying its
//! term (`Lead::put`), and stops probing as soon as the guard is cancelled. Every window,
//! leader included, prints who leads, under which term, and each status as it changes. Leader
//! records of a dead or deposed leader disappear with it; the next leader re-probes.
//!
//! ```sh
//! cargo run -p statemesh-examples --bin health_watch -- 127.0.0.1:22 example.com:443
//! cargo run -p statemesh-examples --bin health_watch -- 127.0.0.1:22 example.com:443   # 2nd terminal
//! ```
//!
//! Kill the leader (Ctrl-C, or `kill -9`): the other window reports itself leader under a new
//! term within milliseconds and probes. `--for-secs N` leaves on its own, `--dir DIR` keeps all
//! files under DIR, `--lan` spans the LAN (see `--help`).

use std::time::Duration;

use autosurgeon::{Hydrate, Reconcile};
use clap::Parser;
use statemesh::{EntryKind, Lead, Leadership, Mesh, ReadError, WriteError};
use statemesh_examples::WindowArgs;

/// The leader channel holding one status per endpoint.
const CHANNEL: &str = "health";

#[derive(Parser)]
struct Args {
    /// TCP endpoints (host:port) to probe while this window leads.
    endpoints: Vec<String>,
    /// Milliseconds between two probes of an endpoint.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Milliseconds a connection may take before the endpoint counts as down.
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    #[command(flatten)]
    window: WindowArgs,
}

/// One endpoint's status. No timestamp: an unchanged status is not rewritten or re-sent.
#[derive(Debug, Clone, PartialEq, Reconcile, Hydrate)]
struct Status {
    up: bool,
    detail: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mesh = args.window.builder("health-watch").join().await?;
    println!("joined as {}", mesh.id());
    tokio::select! {
        () = probe_while_leading(&mesh, &args) => {}
        r = show(&mesh) => r?,
        () = args.window.done() => {}
    }
    mesh.shutdown().await;
    println!("left");
    Ok(())
}

/// Each time this window leads: probe under the guard until it is cancelled.
async fn probe_while_leading(mesh: &Mesh, args: &Args) {
    while let Some(lead) = mesh.lead().await {
        println!("leading under term {}: probing", lead.term());
        tokio::select! {
            () = lead.cancelled() => {}
            e = probe_forever(&lead, args) => println!("write refused: {e}"),
        }
        println!("term {} is over: stopped probing", lead.term());
        lead.cancelled().await; // after a refused write: wait until the guard knows it too
    }
}

/// Probes every endpoint each interval; returns only when a leader write is refused.
async fn probe_forever(lead: &Lead, args: &Args) -> WriteError {
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut every = tokio::time::interval(Duration::from_millis(args.interval_ms));
    loop {
        every.tick().await;
        for endpoint in &args.endpoints {
            let status = probe(endpoint, timeout).await;
            if let Err(e) = lead.put(CHANNEL, endpoint, &status) {
                return e; // the term is over (or the mesh closed): stop at once
            }
        }
    }
}

async fn probe(endpoint: &str, timeout: Duration) -> Status {
    let (up, detail) =
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(endpoint)).await {
            Ok(Ok(_)) => (true, "open".to_owned()),
            Ok(Err(e)) => (false, e.kind().to_string()),
            Err(_) => (false, format!("no answer within {timeout:?}")),
        };
    Status { up, detail }
}

/// Prints the leadership and every status as they change.
async fn show(mesh: &Mesh) -> anyhow::Result<()> {
    // Subscribe first, then show the current state: nothing falls in between. The leadership
    // stream starts with the current snapshot.
    let mut leadership = mesh.leadership();
    let mut changes = mesh.changes();
    print_all(mesh)?;
    loop {
        tokio::select! {
            l = leadership.recv() => match l {
                Some(l) => print_leader(l),
                None => return Ok(()), // the mesh was shut down
            },
            c = changes.recv() => match c {
                Some(Ok(c)) if c.kind == EntryKind::Leader && c.channel == CHANNEL => {
                    print_status(mesh, &c.key)?;
                }
                Some(Ok(_)) => {}
                Some(Err(_lagged)) => print_all(mesh)?,
                None => return Ok(()),
            },
        }
    }
}

fn print_leader(l: Leadership) {
    let me = if l.is_me { " (this window)" } else { "" };
    match (l.leader, l.term) {
        (Some(p), Some(t)) => println!("leader {p} term {t}{me}"),
        (Some(p), None) => println!("leader {p} term pending"),
        (None, _) => println!("no leader yet"),
    }
}

fn print_all(mesh: &Mesh) -> Result<(), ReadError> {
    mesh.leader_keys(CHANNEL)
        .iter()
        .try_for_each(|key| print_status(mesh, key))
}

fn print_status(mesh: &Mesh, endpoint: &str) -> Result<(), ReadError> {
    match mesh.leader_get::<Status>(CHANNEL, endpoint)? {
        Some((s, term)) => {
            let state = if s.up { "up" } else { "down" };
            println!("[term {}] {endpoint} {state} ({})", term.number, s.detail);
        }
        None => println!("{endpoint}: no status"),
    }
    Ok(())
}
