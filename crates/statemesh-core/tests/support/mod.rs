//! What the simulation tests share (tests/simulation*.rs): the seeds and peer counts to run
//! (`SEED`, `SIM_SEEDS`, `PEERS`), the agreement bound, failing with the command that replays
//! a seed, random faults (`chaos`), stopping them, and a lossy network.

#![allow(dead_code)] // Each test binary uses its own part of this.

use std::time::Duration;

use statemesh_core::sim::{CrashSignal, Sim, SimConfig};
use statemesh_core::{PeerId, Scope, Time, WriteId};

/// The number in environment variable `name`, if it holds one.
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

pub(crate) fn seeds() -> Vec<u64> {
    if let Some(seed) = env_number("SEED") {
        return vec![seed];
    }
    let n: u64 = env_number("SIM_SEEDS").unwrap_or(1000);
    let from: u64 = env_number("SIM_FROM").unwrap_or(0);
    (from..from + n).collect()
}

pub(crate) fn peers_for(seed: u64, min: usize, spread: u64) -> usize {
    env_number("PEERS").unwrap_or(min + (seed % spread) as usize)
}

/// The agreement bound of property 1: suspect timeout + 2 heartbeats + the largest network
/// delay (plus one join grace when a peer woke from a freeze at the moment faults stopped).
pub(crate) fn bound(config: &SimConfig) -> Duration {
    let c = &config.node;
    c.suspect_timeout + 2 * c.heartbeat_interval + config.max_delay
}

pub(crate) fn fail(test: &str, seed: u64, peers: usize, what: impl std::fmt::Display) -> ! {
    panic!(
        "{what}\nreplay: SEED={seed} PEERS={peers} cargo test -p statemesh-core --features test-utils --test {} {test}",
        env!("CARGO_CRATE_NAME")
    )
}

pub(crate) fn check_violations(sim: &Sim, test: &str, seed: u64) {
    if let Some(v) = sim.violations.first() {
        fail(
            test,
            seed,
            sim.config.peers,
            format!("invariant violated: {}", v.0),
        );
    }
}

/// A local write the test made: its writer, its key in channel `writes`, its id.
pub(crate) type Write = (PeerId, String, WriteId);

/// Random faults for a while: crashes (EOF, hint or silent), restarts, partitions, freezes,
/// loss and duplication, and bursts of writes. Returns the writes each process made.
pub(crate) fn chaos(sim: &mut Sim, steps: usize) -> Vec<Write> {
    chaos_with(sim, steps, false)
}

/// [`chaos`], and with `write_then_crash` one more kind of step: a process writes, then crashes
/// within 40 ms — before or after its write was fsynced, before or after its peers got it.
pub(crate) fn chaos_with(sim: &mut Sim, steps: usize, write_then_crash: bool) -> Vec<Write> {
    let mut writes = Vec::new();
    for step in 0..steps {
        let wait = Duration::from_millis(50 + sim.random(900));
        sim.run_for(wait);
        let slots = sim.slots();
        match sim.random(if write_then_crash { 8 } else { 7 }) {
            7 if slots.len() > 1 => {
                let victim = slots[sim.random(slots.len() as u64) as usize];
                let node = sim.node_mut(victim).expect("runs");
                let me = node.me().peer;
                let key = format!("{}-{step}-last", me.short());
                if let Ok(w) = node.put("writes", &key, &(step as i64), Scope::Durable) {
                    writes.push((me, key, w.id));
                }
                sim.flush(victim);
                let d = Duration::from_micros(sim.random(40_000));
                sim.run_for(d);
                let signal = match sim.random(3) {
                    0 => CrashSignal::Eof,
                    1 => CrashSignal::Hint,
                    _ => CrashSignal::Silent,
                };
                sim.crash(victim, signal);
            }
            0 if slots.len() > 1 => {
                let victim = slots[sim.random(slots.len() as u64) as usize];
                let signal = match sim.random(3) {
                    0 => CrashSignal::Eof,
                    1 => CrashSignal::Hint,
                    _ => CrashSignal::Silent,
                };
                sim.crash(victim, signal);
            }
            1 => {
                let crashed = sim.crashed();
                if !crashed.is_empty() {
                    let s = crashed[sim.random(crashed.len() as u64) as usize];
                    sim.restart(s);
                }
            }
            2 => {
                let mut a = Vec::new();
                let mut b = Vec::new();
                for s in slots {
                    if sim.random(2) == 0 {
                        a.push(s)
                    } else {
                        b.push(s)
                    }
                }
                sim.partition(&[a, b]);
            }
            3 => sim.heal(),
            4 if !slots.is_empty() => {
                let s = slots[sim.random(slots.len() as u64) as usize];
                let d = Duration::from_millis(100 + sim.random(2500));
                sim.freeze(s, d);
            }
            _ => {
                for s in slots {
                    let Some(node) = sim.node_mut(s) else {
                        continue;
                    };
                    let me = node.me().peer;
                    let key = format!("{}-{step}", me.short());
                    if let Ok(w) = node.put("writes", &key, &(step as i64), Scope::Durable) {
                        writes.push((me, key, w.id));
                    }
                    let _ = node.add("total", 1, Scope::Durable);
                    sim.flush(s);
                }
            }
        }
    }
    writes
}

pub(crate) fn stop_faults(sim: &mut Sim) -> Time {
    sim.heal();
    sim.calm();
    sim.thaw_all();
    sim.now()
}

pub(crate) fn lossy(seed: u64, peers: usize) -> SimConfig {
    let mut c = SimConfig::new(seed, peers);
    c.drop = 0.03;
    c.duplicate = 0.05;
    c.same_machine = seed.is_multiple_of(2);
    c
}
