//! `failover-kill`, `failover-graceful`, `failover-cut`: the leader goes away; how long until
//! every survivor reports the same new leader (under the same term).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::json;

use super::{Opts, Out};
use crate::clock::{ms_between, now_ns};
use crate::fleet::{Agreement, Fleet, Net};
use crate::stats::{round3, summarize};

/// How the leader goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// SIGKILL.
    Kill,
    /// A graceful `shutdown()`.
    Leave,
    /// Its machine's veth goes down: no FIN, no EOF, its packets just stop.
    Cut,
}

/// Takes the leader away `trials` times (with `replace`, a new window replaces it each time,
/// so the mesh keeps its size; without, the mesh shrinks by one per trial); returns each failover time in milliseconds: from the fault (the harness's
/// clock reading just before the SIGKILL or the `ip link` command; the leader's own reading
/// just before it calls `shutdown()`) to the moment the last survivor reported the new leader
/// with its term (that survivor's own reading).
pub(crate) fn measure(
    f: &mut Fleet,
    fault: Fault,
    trials: usize,
    mut agreed: Agreement,
    replace: bool,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(trials);
    for trial in 0..trials {
        let leader = f.slot_of(&agreed.leader)?;
        let machine = f.machine(leader)?;
        let survivors: Vec<usize> = f.slots().into_iter().filter(|s| *s != leader).collect();
        f.unsettle();
        let t0 = match fault {
            Fault::Kill => f.kill(leader)?,
            Fault::Leave => f.leave(leader)?,
            Fault::Cut => {
                let t = now_ns();
                f.lan()
                    .ok_or_else(|| anyhow!("cutting a link needs --net lan"))?
                    .link(machine, false)?;
                t
            }
        };
        let new = f
            .agree(&survivors)
            .with_context(|| format!("trial {}: the survivors never agreed", trial + 1))?;
        let ms = ms_between(t0, new.t);
        f.settle(&new, &survivors);
        eprintln!(
            "  trial {}/{trials}: {} survivors agree on the new leader after {ms:.3} ms",
            trial + 1,
            survivors.len()
        );
        times.push(ms);
        // Restore the mesh's size with a new window (it has the highest id: it will not lead).
        match fault {
            Fault::Kill => {}
            Fault::Leave => f.reap(leader)?,
            Fault::Cut => {
                f.kill(leader)?;
                f.lan()
                    .ok_or_else(|| anyhow!("cutting a link needs --net lan"))?
                    .link(machine, true)?;
            }
        }
        if replace {
            f.spawn(machine)?;
        }
        agreed = f.ready()?;
        if agreed.leader != new.leader {
            bail!(
                "the leader changed from {} to {} when a window joined",
                new.leader,
                agreed.leader
            );
        }
    }
    // Watch for late disagreement for two heartbeats after the last trial.
    f.observe_for(Duration::from_millis(400))?;
    Ok(times)
}

/// Busy-loop threads on every core, until dropped.
struct CpuLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    fn start() -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..cores {
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("busy-{i}"))
                    .spawn(move || {
                        let mut x = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            x = std::hint::black_box(x.wrapping_mul(6364136223846793005) + 1);
                        }
                    })?,
            );
        }
        Ok(Self { stop, threads })
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Per window: (incarnation, leadership changes, live peers).
fn infos(f: &mut Fleet) -> anyhow::Result<Vec<(u64, u64, u64)>> {
    let mut out = Vec::new();
    for s in f.slots() {
        let info = f.ask(s, &json!({"op": "info"}), "info")?;
        let n = |k: &str| info[k].as_u64().unwrap_or(0);
        out.push((n("incarnation"), n("leadership_changes"), n("live")));
    }
    Ok(out)
}

/// A quiet period under full CPU load: no faults. Returns (false suspicions, leadership changes
/// seen): a window judged dead while alive refutes by moving to a new incarnation (and one that
/// notices it was starved past the suspect timeout does the same), so the sum of incarnation
/// increases counts every false suspicion that reached its subject.
fn quiet_under_load(f: &mut Fleet, d: Duration) -> anyhow::Result<(u64, u64)> {
    let before = infos(f)?;
    let load = CpuLoad::start()?;
    eprintln!(
        "quiet period of {:.0} s with {} busy-loop threads",
        d.as_secs_f64(),
        load.threads.len()
    );
    f.observe_for(d)?;
    drop(load);
    let after = infos(f)?;
    let refutations = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.0.saturating_sub(b.0))
        .sum();
    let changes = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.1.saturating_sub(b.1))
        .sum();
    Ok((refutations, changes))
}

/// The `failover-kill`, `failover-graceful` and `failover-cut` scenarios.
pub(crate) fn run(opts: &Opts, out: &mut Out, fault: Fault) -> anyhow::Result<()> {
    let n = opts.peers;
    anyhow::ensure!(n >= 2, "failover needs at least 2 peers");
    if fault == Fault::Cut && opts.net != Net::Lan {
        bail!("failover-cut needs --net lan (it takes a namespace's veth down)");
    }
    let mut f = Fleet::new(opts.net, n)?;
    eprintln!("starting {n} windows ({})", opts.net.name());
    let agreed = f.start(n).context("starting the windows")?;
    if fault == Fault::Cut {
        let quiet = if opts.quick { 5 } else { 60 };
        let (suspicions, changes) = quiet_under_load(&mut f, Duration::from_secs(quiet))?;
        eprintln!("  {suspicions} false suspicions, {changes} leadership changes");
        out.insert("false_suspicions".into(), json!(suspicions));
        out.insert("quiet_s".into(), json!(quiet));
        out.insert("quiet_leadership_changes".into(), json!(changes));
    }
    let trials = match (fault, opts.quick) {
        (Fault::Cut, true) => 2,
        (Fault::Cut, false) => 10,
        (_, true) => 3,
        (_, false) => 20,
    };
    eprintln!("{trials} trials");
    // After the quiet period, start from what the mesh agrees on now.
    let agreed = if fault == Fault::Cut {
        f.ready()?
    } else {
        agreed
    };
    let times = measure(&mut f, fault, trials, agreed, true)?;
    let s = summarize(&times);
    out.insert("join_failures".into(), json!(f.join_failures));
    out.insert("p50_ms".into(), json!(round3(s.p50)));
    out.insert("max_ms".into(), json!(round3(s.max)));
    out.insert("trials".into(), json!(s.n));
    out.insert(
        "dual_leader_observations".into(),
        json!(f.safety.observations()),
    );
    out.insert(
        "same_term_claims".into(),
        json!(f.safety.same_term_claims()),
    );
    out.insert(
        "disagreements_after_settling".into(),
        json!(f.safety.after_settling),
    );
    Ok(())
}
