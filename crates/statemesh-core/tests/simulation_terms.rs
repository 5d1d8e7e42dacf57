//! Simulation tests of terms and fencing, over many seeds: a term names exactly one
//! leadership, ever (property 7), and a leader frozen past the suspect timeout is fenced on
//! waking.
//!
//! Each test runs `SIM_SEEDS` seeds (default 1000) like tests/simulation.rs; a failing seed is
//! printed with the command that replays it: `SEED=<n> [PEERS=<n>] cargo test -p
//! statemesh-core --features test-utils --test simulation_terms <test>`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use statemesh_core::sim::{CrashSignal, Sim, SimConfig, Slot};
use statemesh_core::{Term, Time};
use support::{chaos, check_violations, fail, peers_for, seeds, stop_faults};

/// A term names exactly one leadership, ever: windows started at once whose links come up late
/// (some settling at once, as a window alone at its first scan does), windows joining during a
/// partition, crashes and restarts from disk, freezes, loss. Checked across all peers and all
/// time, restarted processes included: no term is granted twice (`Sim::grants`), no observer
/// shows a term that was not granted to the leader it names, no peer leads under a term older
/// than one it knows or shows a leader record of a term other than the newest it knows (after
/// every step); and at the end all agree on one leader under one term.
#[test]
fn terms_name_one_leadership() {
    let seeds = seeds();
    let mut granted = 0;
    let mut numbers_shared = 0;
    let mut seeds_sharing = 0;
    for &seed in &seeds {
        let peers = peers_for(seed, 3, 4);
        let mut config = SimConfig::new(seed, peers);
        config.connect_delay = Duration::from_millis(1500);
        config.drop = 0.02;
        config.same_machine = seed.is_multiple_of(2);
        let mut sim = Sim::new(config);
        // Simultaneous starts: some windows find nobody at their first scan and settle at once.
        for s in sim.slots() {
            if sim.random(2) == 0 {
                sim.settle(s);
            }
        }
        for s in sim.slots() {
            let now = sim.now();
            leader_write(&mut sim, s, now);
        }
        let wait = Duration::from_millis(300 + sim.random(1500));
        sim.run_for(wait);
        // Joins during a partition.
        let mut sides = [Vec::new(), Vec::new()];
        for s in sim.slots() {
            sides[sim.random(2) as usize].push(s);
        }
        sim.partition(&sides);
        for _ in 0..1 + sim.random(2) {
            let side = sim.random(2) as u32;
            let s = sim.spawn_in(side);
            if sim.random(2) == 0 {
                sim.settle(s);
            }
        }
        for _ in 0..3 {
            let wait = Duration::from_millis(200 + sim.random(800));
            sim.run_for(wait);
            for s in sim.slots() {
                let now = sim.now();
                leader_write(&mut sim, s, now);
            }
        }
        // Restarts from disk, then more faults.
        let slots = sim.slots();
        let victim = slots[sim.random(slots.len() as u64) as usize];
        sim.crash(victim, CrashSignal::Eof);
        let wait = Duration::from_millis(sim.random(1200));
        sim.run_for(wait);
        sim.restart(victim);
        chaos(&mut sim, 4);
        stop_faults(&mut sim);
        let agreed = sim.run_until_true(Duration::from_secs(10), |s| {
            let all = s.slots();
            s.agree_on(&all, s.expected_leader(&all))
        });
        if agreed.is_none() {
            fail("terms_name_one_leadership", seed, peers, "no agreement");
        }
        check_violations(&sim, "terms_name_one_leadership", seed);
        let mut leaders_by_number: BTreeMap<u64, usize> = BTreeMap::new();
        for t in sim.grants.keys() {
            *leaders_by_number.entry(t.number).or_default() += 1;
        }
        granted += sim.grants.len();
        let shared = leaders_by_number.values().filter(|n| **n > 1).count();
        numbers_shared += shared;
        seeds_sharing += usize::from(shared > 0);
    }
    eprintln!(
        "terms: {} seeds, {granted} terms granted, all distinct; {seeds_sharing} seeds had one \
         term number claimed by several leaders ({numbers_shared} numbers in all), as distinct \
         terms",
        seeds.len()
    );
}

/// The leader of `slot`, if it leads, writes a leader record under its term.
fn leader_write(sim: &mut Sim, slot: Slot, now: Time) {
    let Some(node) = sim.node_mut(slot) else {
        return;
    };
    if let Some(term) = node.my_term() {
        let me = node.me().peer.to_string();
        node.leader_put(now, term, "probes", "who", Some(&me))
            .expect("a leader writes under its own term");
        sim.flush(slot);
    }
}

/// A leader frozen past the suspect timeout learns on waking that its leadership is over: its
/// writes under the old term are refused, and its successor's records win.
#[test]
fn frozen_leader_is_fenced_on_waking() {
    for seed in seeds().into_iter().take(100) {
        let mut sim = Sim::new(SimConfig::new(seed, 3));
        sim.run_for(Duration::from_secs(2));
        let all = sim.slots();
        let leader = sim.expected_leader(&all).expect("leader");
        let ls = all
            .iter()
            .copied()
            .find(|s| sim.id(*s) == Some(leader))
            .expect("runs");
        let term = sim.node(ls).and_then(|n| n.my_term()).expect("leads");
        let now = sim.now();
        sim.node_mut(ls)
            .expect("runs")
            .leader_put(now, term, "probes", "api", Some(&"up".to_string()))
            .expect("leader write");
        sim.flush(ls);
        sim.freeze(ls, Duration::from_secs(3));
        sim.run_for(Duration::from_secs(2));
        // The others moved on.
        let rest: Vec<Slot> = all.iter().copied().filter(|s| *s != ls).collect();
        let next = sim.expected_leader(&rest);
        assert!(sim.agree_on(&rest, next), "seed {seed}");
        let ns = rest
            .iter()
            .copied()
            .find(|s| sim.id(*s) == next)
            .expect("runs");
        let new_term = sim.node(ns).and_then(|n| n.my_term()).expect("leads");
        assert!(new_term > term, "seed {seed}");
        let now = sim.now();
        sim.node_mut(ns)
            .expect("runs")
            .leader_put(now, new_term, "probes", "api", Some(&"down".to_string()))
            .expect("write");
        sim.flush(ns);
        sim.run_for(Duration::from_millis(1500));
        // The old leader wakes: a write under its old term is refused.
        let now = sim.now();
        let stale = sim.node_mut(ls).expect("runs").leader_put(
            now,
            term,
            "probes",
            "api",
            Some(&"up".to_string()),
        );
        assert!(stale.is_err(), "seed {seed}: stale-term write accepted");
        sim.flush(ls);
        // Nobody ever sees the deposed leader's value again: the successor's stands until the
        // woken peer (the lowest id, so leader again under a newer term) writes its own.
        for _ in 0..40 {
            sim.run_for(Duration::from_millis(50));
            for s in sim.slots() {
                let got = sim
                    .node(s)
                    .expect("runs")
                    .leader_get::<String>("probes", "api")
                    .expect("read");
                if let Some((value, t)) = got {
                    let successor = Term::new(new_term, next.expect("a successor"));
                    assert!(t >= successor, "seed {seed}: stale term {t} visible");
                    assert_eq!(value, "down", "seed {seed}");
                }
            }
        }
        let relead = sim.node(ls).and_then(|n| n.my_term()).expect("leads again");
        assert!(relead > new_term, "seed {seed}");
        check_violations(&sim, "frozen_leader_is_fenced_on_waking", seed);
    }
}
