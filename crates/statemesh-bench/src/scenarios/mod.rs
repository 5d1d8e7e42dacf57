//! The scenarios. Each fills the fields of the JSON line it reports.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::fleet::{Fleet, Net};
use crate::floor_window::Carried;
use crate::stats::round3;

pub(crate) mod failover;
pub(crate) mod floor;
pub(crate) mod forger;
pub(crate) mod history;
pub(crate) mod overload;
pub(crate) mod propagation;
pub(crate) mod resources;
pub(crate) mod throughput;

/// The fields of the JSON line.
pub(crate) type Out = serde_json::Map<String, serde_json::Value>;

/// What every scenario is run with.
#[derive(Clone, Debug)]
pub(crate) struct Opts {
    /// Number of windows.
    pub(crate) peers: usize,
    /// Where they run.
    pub(crate) net: Net,
    /// Shortened run (CI smoke).
    pub(crate) quick: bool,
    /// Keys per atomic change in `throughput` and `overload`.
    pub(crate) batch: u64,
    /// `throughput`: every window rewrites one key of its own instead of writing new keys.
    pub(crate) same_key: bool,
    /// `transport-floor`: what the windows carry besides their stamps (see `floor_window`).
    pub(crate) carried: Carried,
}

/// The `scale` scenario: `propagation` and `failover-kill` on one mesh of many windows.
pub(crate) fn scale(opts: &Opts, out: &mut Out) -> anyhow::Result<()> {
    let n = opts.peers;
    anyhow::ensure!(n >= 2, "scale needs at least 2 peers");
    let mut f = Fleet::new(opts.net, n)?;
    eprintln!("starting {n} windows one by one ({})", opts.net.name());
    start_many(&mut f, n)?;
    let samples = if opts.quick {
        20
    } else {
        propagation::SCALE_SAMPLES
    };
    // Paced slower than `propagation`: each write costs every one of the other windows a
    // receive, and the measure is latency, not how many writes the mesh absorbs.
    eprintln!("{samples} writes, one every 100 ms on average, spread over the heartbeat interval");
    let slots = f.slots();
    let before = sync_counts(&mut f, &slots)?;
    let pace = propagation::Pace::Spread(Duration::from_millis(100));
    let p = propagation::measure(&mut f, samples, pace)?;
    let after = sync_counts(&mut f, &slots)?;
    let (syncs, owed, turns) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    let agreed = f.ready()?;
    let trials = if opts.quick { 1 } else { 5 };
    eprintln!("{trials} leader kills");
    // No replacement windows: at this size a join (63 handshakes at once) is a load spike of
    // its own, which is not what this measures.
    let times = failover::measure(&mut f, failover::Fault::Kill, trials, agreed, false)?;
    let fo = crate::stats::summarize(&times);
    out.insert("join_failures".into(), json!(f.join_failures));
    propagation::report(&p, out);
    // Sync messages received mesh-wide per write: about two per other window when each gets
    // the write from its writer and answers it; more when windows relay it to each other.
    out.insert(
        "sync_messages_per_write".into(),
        json!(round3(syncs as f64 / samples as f64)),
    );
    // Turns of the windows' drivers per write, mesh-wide: each receiver's at least one (the
    // frame), the writer's one per answer, and what follows them (views' notes, the
    // standby's upkeep, the writer's persisted write).
    out.insert(
        "driver_turns_per_write".into(),
        json!(round3(turns as f64 / samples as f64)),
    );
    // Sync rounds owed on top of the writers' own: views showed documents that differed
    // past the relay grace (each round is a message and its answer, or more).
    out.insert(
        "view_owed_rounds_per_write".into(),
        json!(round3(owed as f64 / samples as f64)),
    );
    out.insert("failover_p50_ms".into(), json!(round3(fo.p50)));
    out.insert("failover_max_ms".into(), json!(round3(fo.max)));
    out.insert("failover_trials".into(), json!(fo.n));
    out.insert(
        "dual_leader_observations".into(),
        json!(f.safety.observations()),
    );
    Ok(())
}

/// Starts `n` windows one by one, as a user opens them: dozens started at once do not all link
/// within the fleet's timeout on two cores (every pair's handshake at once), and even one by
/// one they take a while.
pub(crate) fn start_many(f: &mut Fleet, n: usize) -> anyhow::Result<()> {
    f.within = Duration::from_secs(120);
    f.start_one_by_one(n).context("starting the windows")?;
    Ok(())
}

/// Sync messages the windows of `slots` received so far, the sync rounds views made owed
/// (see `Metrics::syncs_owed_by_views`) and the turns of their drivers, each summed.
fn sync_counts(f: &mut Fleet, slots: &[usize]) -> anyhow::Result<(u64, u64, u64)> {
    let (mut received, mut owed, mut turns) = (0, 0, 0);
    for s in slots {
        let info = f.ask(*s, &json!({"op": "info"}), "info")?;
        received += info["sync_in"].as_u64().unwrap_or(0);
        owed += info["syncs_owed_by_views"].as_u64().unwrap_or(0);
        turns += info["driver_turns"].as_u64().unwrap_or(0);
    }
    Ok((received, owed, turns))
}

/// What load did to liveness, over every window of `slots` (asked now): `refutations` (the
/// sum of incarnation numbers: every move to a new incarnation), of which `false_suspicions`
/// (a window learned it was judged dead while alive) and `freezes` (a window found its own
/// ticks starved past the suspect timeout); `leadership_changes` (the most any window saw);
/// restarted sync exchanges, and sync rounds owed because of views; the largest backlog and
/// the views dropped; the views received sealed and the datagrams refused; the bytes received; and the worst heartbeat tick lateness and driver
/// turn.
pub(crate) fn load_report(f: &mut Fleet, slots: &[usize]) -> anyhow::Result<Out> {
    let mut out = Out::new();
    let (mut refutations, mut suspicions, mut freezes, mut resets, mut leadership) =
        (0, 0, 0, 0, 0);
    let (mut late_p99, mut late_max, mut turn_p99, mut turn_max) = (0u64, 0u64, 0u64, 0u64);
    let (mut backlog_peak, mut views_dropped, mut bytes_in) = (0u64, 0u64, 0u64);
    let (mut view_owed, mut sealed, mut sealed_refused) = (0u64, 0u64, 0u64);
    for s in slots {
        let info = f.ask(*s, &json!({"op": "info"}), "info")?;
        let n = |k: &str| info[k].as_u64().unwrap_or(0);
        refutations += n("incarnation");
        suspicions += n("suspicions_refuted");
        freezes += n("freezes");
        resets += n("sync_resets");
        view_owed += n("syncs_owed_by_views");
        leadership = leadership.max(n("leadership_changes"));
        late_p99 = late_p99.max(n("tick_late_p99_us"));
        late_max = late_max.max(n("tick_late_max_us"));
        turn_p99 = turn_p99.max(n("driver_turn_p99_us"));
        turn_max = turn_max.max(n("driver_turn_max_us"));
        backlog_peak = backlog_peak.max(n("backlog_peak"));
        views_dropped += n("views_dropped");
        sealed += n("views_sealed_received");
        sealed_refused += n("views_sealed_refused");
        bytes_in += n("bytes_in");
    }
    out.insert("refutations".into(), json!(refutations));
    out.insert("false_suspicions".into(), json!(suspicions));
    out.insert("freezes".into(), json!(freezes));
    out.insert("sync_resets".into(), json!(resets));
    // Sync rounds owed on top of the writers' own, because views showed documents that
    // differed past the relay grace (see `Metrics::syncs_owed_by_views`).
    out.insert("view_owed_rounds".into(), json!(view_owed));
    out.insert("leadership_changes".into(), json!(leadership));
    // The largest backlog any window saw (local writes not acknowledged by every peer, and
    // frames queued to links), and views dropped unread (superseded by newer ones).
    out.insert("backlog_peak".into(), json!(backlog_peak));
    out.insert("views_dropped".into(), json!(views_dropped));
    // Views that arrived sealed beside QUIC, and datagrams the view sockets refused.
    out.insert("views_sealed_received".into(), json!(sealed));
    out.insert("views_sealed_refused".into(), json!(sealed_refused));
    // Every frame every window received since it started (sync messages, views, the rest):
    // what the mesh cost the network.
    out.insert("received_mb".into(), json!(round3(bytes_in as f64 / 1e6)));
    out.insert(
        "tick_late_p99_ms".into(),
        json!(round3(late_p99 as f64 / 1e3)),
    );
    out.insert(
        "tick_late_max_ms".into(),
        json!(round3(late_max as f64 / 1e3)),
    );
    out.insert(
        "driver_turn_p99_ms".into(),
        json!(round3(turn_p99 as f64 / 1e3)),
    );
    out.insert(
        "driver_turn_max_ms".into(),
        json!(round3(turn_max as f64 / 1e3)),
    );
    Ok(out)
}
