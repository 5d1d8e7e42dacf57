//! `statemesh-bench`: benchmark scenarios of statemesh over real window processes.
//!
//! ```sh
//! cargo run --release -p statemesh-bench -- <scenario> [--peers N] [--net local|lan] [--json] [--quick]
//! ```
//!
//! Each scenario starts window processes — this very binary, run as the hidden `window`
//! subcommand, each joining a `statemesh::Mesh` and driven over stdin/stdout JSON lines — on
//! this machine (`--net local`: loopback only, temporary runtime and state directories and
//! secret) or one per network namespace joined by a bridge (`--net lan`, root only: mDNS and
//! QUIC never leave the namespaces). Progress goes to stderr; stdout ends with exactly one JSON
//! line (with `--json`, it is all stdout holds). `docs/performance.md` describes the method
//! and the figures.

mod cleanup;
mod clock;
mod fleet;
mod floor_document;
mod floor_window;
mod forger;
mod lan;
mod scenarios;
mod stats;
mod window;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::fleet::Net;
use crate::floor_window::Carried;
use crate::scenarios::failover::Fault;
use crate::scenarios::{Opts, Out};

/// Benchmark scenarios of statemesh over real window processes; ends with one JSON line.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every scenario takes.
#[derive(clap::Args, Debug, Clone)]
struct Common {
    /// Number of windows (default: 4; throughput and idle 8; scale 64).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=250))]
    peers: Option<u16>,
    /// Where the windows run: `local` (this machine, loopback) or `lan` (one network namespace
    /// per window, found by mDNS; needs root).
    #[arg(long, value_enum, default_value = "local")]
    net: Net,
    /// Print only the JSON line on stdout.
    #[arg(long)]
    json: bool,
    /// A shortened run (CI smoke test): fewer samples, shorter periods.
    #[arg(long)]
    quick: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One window writes a record; time until every other window's change subscription sees
    /// it (one-way, on the machine-wide monotonic clock).
    Propagation(Common),
    /// The floor under `propagation` and `scale`: the same window processes, runtime and QUIC
    /// links (loopback), without the mesh; one window writes a stamp to each link, time until
    /// every other window's application task reads it.
    TransportFloor {
        #[command(flatten)]
        common: Common,
        /// Each window also sends every link a view (a real one, of the mesh's encoding and
        /// size for this many windows) as a QUIC datagram every heartbeat interval, and reads
        /// and decodes those it gets: the liveness traffic the design puts under every write
        /// (each peer's view to each linked peer, five times a second).
        #[arg(long)]
        views: bool,
        /// Each stamp is a record written to an Automerge document (the mesh's record, one
        /// transaction, one change) and its change is what the frame carries; each receiver
        /// applies it to its own document and reads the stamp back from there: Automerge's
        /// own work for a write and its receipt, without the mesh around it.
        #[arg(long)]
        documents: bool,
        /// With `--views`: every window sends its views on multiples of the heartbeat
        /// interval of the machine's monotonic clock, as a mesh's windows do (their views
        /// then arrive together, once per interval), instead of one interval after the
        /// window started.
        #[arg(long, requires = "views")]
        aligned: bool,
    },
    /// SIGKILL the leader; time until every survivor reports the same new leader.
    FailoverKill(Common),
    /// The leader shuts down gracefully; time until every survivor reports the new leader.
    FailoverGraceful(Common),
    /// (`--net lan` only) The leader's veth goes down; time until the survivors agree on the
    /// new leader; false suspicions over a quiet period under full CPU load.
    FailoverCut(Common),
    /// Every window writes keys as fast as it can; key writes per second that reach every
    /// window.
    Throughput {
        #[command(flatten)]
        common: Common,
        /// Keys per atomic change (`transact`).
        #[arg(long, default_value_t = 100)]
        batch: u64,
        /// Every window rewrites one key of its own (`tp/w<i>`, a counter) instead of writing
        /// new keys: the workload of automerge-repo's `measure.sh` throughput. Converged once
        /// every window holds every window's last value.
        #[arg(long)]
        same_key: bool,
    },
    /// The Automerge floor under `throughput`: its records written and applied by Automerge
    /// alone in this process, one thread: CPU per key, and the updates/s the cores could
    /// converge at most.
    Floor {
        #[command(flatten)]
        common: Common,
        /// Keys per atomic change.
        #[arg(long, default_value_t = 100)]
        batch: u64,
        /// Keys written in all (`--quick`: a tenth): the documents' size at the end, about
        /// what `throughput`'s windows write in its 5 s.
        #[arg(long, default_value_t = 20_000)]
        keys: u64,
        /// Records written as the mesh writes a new one (its key looked up, then its map made
        /// with its fields in one batch), and each receiver's apply followed by what the
        /// mesh's check of received changes asks of Automerge (the changes rebuilt from the
        /// document and their operations decoded): the floor of a mesh that keeps the
        /// containment promise.
        #[arg(long)]
        as_mesh: bool,
    },
    /// Every window writes as fast as the API returns for 30 s (`--quick`: 5 s), then the mesh
    /// converges: writes/s, convergence time, liveness under load, peak memory per window.
    Overload {
        #[command(flatten)]
        common: Common,
        /// Keys per write (`transact`).
        #[arg(long, default_value_t = 1)]
        batch: u64,
    },
    /// Peak RSS of each window with 100 channels, and of a process that never joins.
    Memory(Common),
    /// 24 h of a probe leader rewriting 100 channels every second (simulator, virtual time):
    /// document size and the cost of receiving a sync message afterwards.
    History(Common),
    /// `propagation` and `failover-kill` with 64 windows.
    Scale(Common),
    /// CPU used by each of 8 idle windows (heartbeats only).
    Idle(Common),
    /// (`--net lan` only) A machine floods the LAN with forged mDNS records of the mesh (no
    /// secret needed): false suspicions, leadership changes, links and the send queues of the
    /// windows' link sockets, and how fast a window started during the flood links.
    Forger {
        #[command(flatten)]
        common: Common,
        /// Forged records.
        #[arg(long, default_value_t = 1000)]
        records: u32,
        /// The records name a live host (the forger's, every port closed) instead of hosts
        /// that do not exist.
        #[arg(long)]
        live: bool,
    },
    /// One forger process (run by the `forger` scenario).
    #[command(hide = true)]
    Forge(forger::ForgeArgs),
    /// One window process (run by the scenarios themselves).
    #[command(hide = true)]
    Window(window::WindowArgs),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Self::Propagation(_) => "propagation",
            Self::TransportFloor { .. } => "transport-floor",
            Self::FailoverKill(_) => "failover-kill",
            Self::FailoverGraceful(_) => "failover-graceful",
            Self::FailoverCut(_) => "failover-cut",
            Self::Throughput { .. } => "throughput",
            Self::Overload { .. } => "overload",
            Self::Floor { .. } => "floor",
            Self::Memory(_) => "memory",
            Self::History(_) => "history",
            Self::Scale(_) => "scale",
            Self::Idle(_) => "idle",
            Self::Forger { .. } => "forger",
            Self::Forge(_) => "forge",
            Self::Window(_) => "window",
        }
    }

    fn default_peers(&self) -> usize {
        match self {
            Self::Throughput { .. } | Self::Floor { .. } | Self::Idle(_) => 8,
            Self::Scale(_) => 64,
            Self::Forger { .. } => 3,
            _ => 4,
        }
    }
}

fn main() {
    let command = match Cli::parse().command {
        Command::Window(args) => {
            let code = match window::run(args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("window: {e:#}");
                    1
                }
            };
            std::process::exit(code);
        }
        Command::Forge(args) => {
            let code = match forger::run(args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("forge: {e:#}");
                    1
                }
            };
            std::process::exit(code);
        }
        other => other,
    };
    let (common, batch) = match &command {
        Command::Throughput { common, batch, .. }
        | Command::Overload { common, batch }
        | Command::Floor { common, batch, .. } => (common.clone(), *batch),
        Command::Forger { common, .. } | Command::TransportFloor { common, .. } => {
            (common.clone(), 100)
        }
        Command::Propagation(c)
        | Command::FailoverKill(c)
        | Command::FailoverGraceful(c)
        | Command::FailoverCut(c)
        | Command::Memory(c)
        | Command::History(c)
        | Command::Scale(c)
        | Command::Idle(c) => (c.clone(), 100),
        Command::Window(_) | Command::Forge(_) => unreachable!("handled above"),
    };
    let scenario = command.name();
    let mut opts = Opts {
        peers: common
            .peers
            .map_or_else(|| command.default_peers(), usize::from),
        net: common.net,
        quick: common.quick,
        batch,
        same_key: false,
        carried: Carried::default(),
    };
    match &command {
        Command::Throughput { same_key, .. } => opts.same_key = *same_key,
        Command::TransportFloor {
            views,
            documents,
            aligned,
            ..
        } => {
            opts.carried = Carried {
                views: *views,
                documents: *documents,
                aligned: *aligned,
            }
        }
        _ => {}
    }
    let mut out = Out::new();
    out.insert("scenario".into(), json!(scenario));
    out.insert("peers".into(), json!(opts.peers));
    out.insert("net".into(), json!(opts.net.name()));
    out.insert("quick".into(), json!(opts.quick));
    let mut interrupted = out.clone();
    interrupted.insert("error".into(), json!("interrupted by a signal"));
    cleanup::set_interrupted_line(serde_json::Value::Object(interrupted).to_string());
    let result = cleanup::on_signals().and_then(|()| {
        if opts.net == Net::Lan && matches!(command, Command::Floor { .. }) {
            anyhow::bail!("floor runs in this process: it has no `--net lan`");
        }
        if opts.net == Net::Lan && matches!(command, Command::TransportFloor { .. }) {
            anyhow::bail!("transport-floor links windows on loopback: it has no `--net lan`");
        }
        if opts.net == Net::Lan && !matches!(command, Command::History(_)) {
            lan::check_root()?;
        }
        match &command {
            Command::Propagation(_) => scenarios::propagation::run(&opts, &mut out),
            Command::TransportFloor { .. } => scenarios::propagation::run_floor(&opts, &mut out),
            Command::FailoverKill(_) => scenarios::failover::run(&opts, &mut out, Fault::Kill),
            Command::FailoverGraceful(_) => scenarios::failover::run(&opts, &mut out, Fault::Leave),
            Command::FailoverCut(_) => scenarios::failover::run(&opts, &mut out, Fault::Cut),
            Command::Throughput { .. } => scenarios::throughput::run(&opts, &mut out),
            Command::Overload { .. } => scenarios::overload::run(&opts, &mut out),
            Command::Floor { keys, as_mesh, .. } => {
                scenarios::floor::run(&opts, &mut out, *keys, *as_mesh)
            }
            Command::Memory(_) => scenarios::resources::run_memory(&opts, &mut out),
            Command::History(_) => scenarios::history::run(&opts, &mut out),
            Command::Scale(_) => scenarios::scale(&opts, &mut out),
            Command::Idle(_) => scenarios::resources::run_idle(&opts, &mut out),
            Command::Forger { records, live, .. } => {
                scenarios::forger::run(&opts, &mut out, *records, *live)
            }
            Command::Window(_) | Command::Forge(_) => Ok(()),
        }
    });
    let code = match &result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("statemesh-bench {scenario}: error: {e:#}");
            out.insert("error".into(), json!(format!("{e:#}")));
            1
        }
    };
    if !common.json {
        summary(&out);
    }
    cleanup::print_line(&serde_json::Value::Object(out).to_string());
    std::process::exit(code);
}

/// The targets the project set, as (field, comparison, bound, what).
fn targets(out: &Out) -> Vec<(&'static str, bool, f64, &'static str)> {
    let lan = out["net"] == "lan";
    match out["scenario"].as_str().unwrap_or_default() {
        "propagation" if lan => vec![("p99_us", true, 3000.0, "p99 < 3 ms (namespace LAN)")],
        "propagation" => vec![("p99_us", true, 1000.0, "p99 < 1 ms (local)")],
        "failover-kill" if !lan => vec![("p50_ms", true, 50.0, "p50 < 50 ms (local)")],
        "failover-graceful" => vec![("p50_ms", true, 5.0, "p50 < 5 ms")],
        "failover-cut" => vec![
            (
                "max_ms",
                true,
                1400.0,
                "within suspect_timeout + 2 heartbeats",
            ),
            ("false_suspicions", true, 0.5, "no false suspicion"),
        ],
        "idle" => vec![("idle_cpu_percent", true, 0.5, "< 0.5 % CPU per window")],
        "forger" => vec![
            ("false_suspicions", true, 0.5, "no false suspicion"),
            ("leadership_changes", true, 0.5, "no leadership change"),
            (
                "late_window_linked_ms",
                true,
                2000.0,
                "a window started during the flood links within 2 s",
            ),
        ],
        "memory" => vec![("rss_kb_peak", true, 8192.0, "peak RSS < 8 MB per window")],
        // The 4-window target is 5x automerge-repo measured beside it (`measure.sh 4`): not a
        // constant this binary can judge.
        "throughput" if out["peers"] == 8 && out["batch"] == 100 => vec![(
            "updates_per_s",
            false,
            10000.0,
            "8 windows, 100 keys per change: >= 10,000 updates/s",
        )],
        "scale" => vec![("p99_us", true, 50000.0, "64 peers: p99 < 50 ms")],
        _ => Vec::new(),
    }
}

/// A human-readable summary on stdout (without `--json`).
fn summary(out: &Out) {
    for (k, v) in out {
        println!("{k:>28}: {v}");
    }
    for (field, below, bound, what) in targets(out) {
        if let Some(x) = out.get(field).and_then(serde_json::Value::as_f64) {
            let met = if below { x < bound } else { x >= bound };
            println!(
                "{:>28}: {what}: {}",
                "target",
                if met { "met" } else { "MISSED" }
            );
        }
    }
}
