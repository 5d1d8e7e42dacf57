//! The demo's story on the core's deterministic simulator: windows, a probe leader, shared
//! counters, the leader killed, the failover measured, a graceful handover — in virtual time,
//! with no process, socket or clock. The same seed replays the same run. (`statemesh demo`
//! tells the story with real window processes.)
//!
//! The simulator is a test utility of `statemesh-core` (feature `test-utils`), so this lives
//! with the examples rather than in the shipped `statemesh` binary.
//!
//! Run: `cargo run -p statemesh-examples --bin simulated_demo -- --windows 5 --seed 7`

use std::time::Duration;

use clap::Parser;
use statemesh_core::sim::{CrashSignal, Sim, SimConfig, Slot};
use statemesh_core::{PeerId, Scope, Time};

/// Plays the demo's story on the deterministic simulator (virtual time, no processes).
#[derive(Parser, Debug)]
struct Args {
    /// Number of windows.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(2..=64))]
    windows: u16,
    /// Seed of the simulation (the same seed replays the same run).
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    demo(usize::from(args.windows), args.seed)
}

struct Story {
    sim: Sim,
    names: Vec<(PeerId, char)>,
}

impl Story {
    fn name(&self, id: Option<PeerId>) -> String {
        id.and_then(|id| self.names.iter().find(|(p, _)| *p == id))
            .map_or_else(|| "nobody".to_owned(), |(_, c)| format!("window {c}"))
    }

    fn say(&self, what: impl std::fmt::Display) {
        println!(
            "[{:>9.4} s] {what}",
            self.sim.now().as_micros() as f64 / 1e6
        );
    }

    fn slot_of(&self, id: Option<PeerId>) -> Option<Slot> {
        self.sim.slots().into_iter().find(|s| self.sim.id(*s) == id)
    }

    /// Runs until every window agrees on the expected leader; returns when.
    fn await_agreement(&mut self) -> anyhow::Result<(Time, Option<PeerId>, u64)> {
        let all = self.sim.slots();
        let at = self
            .sim
            .run_until_true(Duration::from_secs(10), |s| {
                s.agree_on(&all, s.expected_leader(&all))
            })
            .ok_or_else(|| anyhow::anyhow!("windows did not agree on a leader"))?;
        let leadership = self
            .sim
            .node(all[0])
            .map(|n| n.leadership())
            .unwrap_or_default();
        Ok((at, leadership.leader, leadership.term.unwrap_or(0)))
    }

    fn probe(&mut self, round: u64) -> anyhow::Result<()> {
        let all = self.sim.slots();
        let leader = self.sim.expected_leader(&all);
        let slot = self
            .slot_of(leader)
            .ok_or_else(|| anyhow::anyhow!("no leader"))?;
        let now = self.sim.now();
        let node = self
            .sim
            .node_mut(slot)
            .ok_or_else(|| anyhow::anyhow!("leader gone"))?;
        let term = node
            .my_term()
            .ok_or_else(|| anyhow::anyhow!("leader has no term"))?;
        for (i, endpoint) in ["api:443", "db:5432", "cache:6379"].iter().enumerate() {
            let status = if *endpoint == "cache:6379" && round > 0 {
                "down"
            } else {
                "up"
            };
            let latency = 3 + i as i64 * 4 + round as i64;
            node.leader_put(
                now,
                term,
                "probes",
                endpoint,
                Some(&format!("{status} {latency} ms")),
            )?;
        }
        self.sim.flush(slot);
        self.say(format!(
            "{} (leader, term {term}) writes 3 probe results",
            self.name(leader)
        ));
        let all_see = self.sim.run_until_true(Duration::from_secs(2), |s| {
            s.slots().iter().all(|x| {
                s.node(*x)
                    .is_some_and(|n| n.leader_keys("probes").len() == 3)
            })
        });
        if all_see.is_some() {
            let first = self
                .sim
                .node(all[0])
                .ok_or_else(|| anyhow::anyhow!("window gone"))?;
            let shown: Vec<String> = first
                .leader_keys("probes")
                .iter()
                .filter_map(|k| {
                    first
                        .leader_get::<String>("probes", k)
                        .ok()
                        .flatten()
                        .map(|(v, _)| format!("{k} {v}"))
                })
                .collect();
            self.say(format!("every window shows: {}", shown.join(" · ")));
        }
        Ok(())
    }
}

fn demo(windows: usize, seed: u64) -> anyhow::Result<()> {
    println!("statemesh demo — {windows} windows, seed {seed}");
    println!("(the core state machine on statemesh's deterministic simulator: virtual time, one");
    println!(
        " machine, heartbeat 200 ms, suspect timeout 1 s; the same seed replays the same run)\n"
    );
    let mut config = SimConfig::new(seed, windows);
    config.same_machine = true;
    config.min_delay = Duration::from_micros(50);
    config.max_delay = Duration::from_micros(400);
    let sim = Sim::new(config);
    let mut ids: Vec<PeerId> = sim.live_ids();
    ids.sort();
    let names = ids.iter().zip('A'..='Z').map(|(p, c)| (*p, c)).collect();
    let mut story = Story { sim, names };
    for (id, c) in &story.names {
        story.say(format!("window {c} started, peer id {id}"));
    }
    let (_, leader, term) = story.await_agreement()?;
    story.say(format!(
        "all {windows} windows agree: {} leads (term {term}) — the lowest id",
        story.name(leader)
    ));
    story.probe(0)?;

    for slot in story.sim.slots() {
        if let Some(node) = story.sim.node_mut(slot) {
            node.add("workspaces/ws-1/desired", 1, Scope::Durable)?;
            node.add("workspaces/ws-1/running", 1, Scope::Presence)?;
        }
        story.sim.flush(slot);
    }
    story.say("every window adds 1 to ws-1 desired and running, at the same instant (no lock)");
    story.sim.run_for(Duration::from_millis(50));
    let first = story.sim.slots()[0];
    if let Some(n) = story.sim.node(first) {
        story.say(format!(
            "every window shows ws-1: desired {}, running {}",
            n.counter("workspaces/ws-1/desired"),
            n.counter("workspaces/ws-1/running")
        ));
    }
    story.sim.run_for(Duration::from_millis(500));

    let victim = story
        .slot_of(leader)
        .ok_or_else(|| anyhow::anyhow!("leader gone"))?;
    let killed_at = story.sim.now();
    story.say(format!(
        "SIGKILL {} (its local socket closes: a certain death signal)",
        story.name(leader)
    ));
    story.sim.crash(victim, CrashSignal::Eof);
    let (at, next, term) = story.await_agreement()?;
    story.say(format!(
        "all {} survivors agree: {} leads (term {term}) — failover took {:.1} ms",
        windows - 1,
        story.name(next),
        at.saturating_since(killed_at).as_secs_f64() * 1e3
    ));
    if let Some(n) = story.sim.slots().first().and_then(|s| story.sim.node(*s)) {
        story.say(format!(
            "the dead leader's probe results are gone ({} left) and its running count with it: desired {}, running {}",
            n.leader_keys("probes").len(),
            n.counter("workspaces/ws-1/desired"),
            n.counter("workspaces/ws-1/running")
        ));
    }
    story.probe(1)?;

    if windows > 2 {
        let leaving = story
            .slot_of(next)
            .ok_or_else(|| anyhow::anyhow!("leader gone"))?;
        let left_at = story.sim.now();
        story.say(format!(
            "{} shuts down gracefully (announces its leave)",
            story.name(next)
        ));
        story.sim.shutdown(leaving);
        let (at, third, term) = story.await_agreement()?;
        story.say(format!(
            "{} leads (term {term}) — handover took {:.1} ms",
            story.name(third),
            at.saturating_since(left_at).as_secs_f64() * 1e3
        ));
    }
    story.sim.run_for(Duration::from_millis(500));
    if !story.sim.violations.is_empty() {
        anyhow::bail!("invariant violations: {:?}", story.sim.violations);
    }
    println!("\ndone: one leader at every moment, no write lost, no lock file.");
    Ok(())
}
