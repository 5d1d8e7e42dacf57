//! Simulation tests of the mesh's properties over many seeds: leadership (properties 1 to 4:
//! agreement after faults within the bound, failover, graceful leave, joiners, partitions).
//! What the documents hold is tested in tests/simulation_documents.rs, terms and fencing in
//! tests/simulation_terms.rs; what they share is in tests/support.
//!
//! Each test runs `SIM_SEEDS` seeds (default 1000; `SIM_SEEDS=100000` for a long hunt). A failing
//! seed is printed with the command that replays it: `SEED=<n> [PEERS=<n>] cargo test -p
//! statemesh-core --features test-utils --test simulation <test>`.

mod support;

use std::time::Duration;

use statemesh_core::sim::{CrashSignal, Sim, SimConfig};
use support::{bound, chaos, check_violations, fail, lossy, peers_for, seeds, stop_faults};

/// Property 1 (and 3 throughout): after faults stop, every live peer agrees on one leader, the
/// lowest live eligible id, under one term, within the bound.
#[test]
fn agreement_after_faults_within_bound() {
    let seeds = seeds();
    let mut worst = Duration::ZERO;
    for &seed in &seeds {
        let peers = peers_for(seed, 3, 5);
        let mut sim = Sim::new(lossy(seed, peers));
        sim.run_for(Duration::from_secs(2));
        chaos(&mut sim, 8);
        let stopped = stop_faults(&mut sim);
        let limit = bound(&sim.config) + sim.config.node.join_grace;
        let agreed = sim.run_until_true(Duration::from_secs(10), |s| {
            let all = s.slots();
            s.agree_on(&all, s.expected_leader(&all))
        });
        let Some(at) = agreed else {
            fail(
                "agreement_after_faults_within_bound",
                seed,
                peers,
                "no agreement within 10 s",
            )
        };
        let took = at.saturating_since(stopped);
        if took > limit {
            fail(
                "agreement_after_faults_within_bound",
                seed,
                peers,
                format!("agreement took {took:?}, bound {limit:?}"),
            );
        }
        worst = worst.max(took);
        // Agreement must hold once reached.
        sim.run_for(Duration::from_secs(2));
        let all = sim.slots();
        if !sim.agree_on(&all, sim.expected_leader(&all)) {
            if std::env::var("SIM_DEBUG").is_ok() {
                for o in sim.log.iter().filter(|o| o.at >= at) {
                    eprintln!("{:?} {:?} {:?}", o.at, o.by, o.event);
                }
                for s in &all {
                    let n = sim.node(*s).expect("runs");
                    eprintln!("{:#?}", n.explain(sim.now()));
                }
            }
            fail(
                "agreement_after_faults_within_bound",
                seed,
                peers,
                "agreement did not hold",
            );
        }
        check_violations(&sim, "agreement_after_faults_within_bound", seed);
    }
    eprintln!(
        "property 1: {} seeds, worst agreement {:?} after faults stopped",
        seeds.len(),
        worst
    );
}

/// Property 1, the failover case: the leader crashes (each kind of signal) on a calm network;
/// the survivors agree on the next-lowest id within the bound.
#[test]
fn leader_crash_failover_within_bound() {
    let seeds = seeds();
    let mut worst = [Duration::ZERO; 3];
    for &seed in &seeds {
        let peers = peers_for(seed, 2, 6);
        let mut sim = Sim::new(SimConfig::new(seed, peers));
        sim.run_for(Duration::from_secs(2));
        let all = sim.slots();
        let leader = sim.expected_leader(&all);
        if !sim.agree_on(&all, leader) {
            fail(
                "leader_crash_failover_within_bound",
                seed,
                peers,
                "no initial agreement",
            );
        }
        let victim = all
            .iter()
            .copied()
            .find(|s| sim.id(*s) == leader)
            .expect("leader runs");
        let kind = (seed % 3) as usize;
        let signal = [CrashSignal::Eof, CrashSignal::Hint, CrashSignal::Silent][kind];
        let crashed_at = sim.now();
        sim.crash(victim, signal);
        let rest = sim.slots();
        let agreed = sim.run_until_true(Duration::from_secs(5), |s| {
            s.agree_on(&rest, s.expected_leader(&rest))
        });
        let Some(at) = agreed else {
            fail(
                "leader_crash_failover_within_bound",
                seed,
                peers,
                "no agreement",
            )
        };
        let took = at.saturating_since(crashed_at);
        if took > bound(&sim.config) {
            fail(
                "leader_crash_failover_within_bound",
                seed,
                peers,
                format!("failover took {took:?}"),
            );
        }
        worst[kind] = worst[kind].max(took);
        check_violations(&sim, "leader_crash_failover_within_bound", seed);
    }
    eprintln!(
        "failover: {} seeds, worst after EOF {:?}, after hint {:?}, after silence {:?}",
        seeds.len(),
        worst[0],
        worst[1],
        worst[2]
    );
}

/// Graceful leave: the survivors agree on the next leader within a few network delays.
#[test]
fn graceful_leave_hands_over_at_once() {
    let seeds = seeds();
    let mut worst = Duration::ZERO;
    for &seed in &seeds {
        let peers = peers_for(seed, 2, 6);
        let mut sim = Sim::new(SimConfig::new(seed, peers));
        sim.run_for(Duration::from_secs(2));
        let all = sim.slots();
        let leader = sim.expected_leader(&all);
        let victim = all
            .iter()
            .copied()
            .find(|s| sim.id(*s) == leader)
            .expect("leader runs");
        let left_at = sim.now();
        sim.shutdown(victim);
        let rest = sim.slots();
        let agreed = sim.run_until_true(Duration::from_secs(5), |s| {
            s.agree_on(&rest, s.expected_leader(&rest))
        });
        let Some(at) = agreed else {
            fail(
                "graceful_leave_hands_over_at_once",
                seed,
                peers,
                "no agreement",
            )
        };
        let took = at.saturating_since(left_at);
        // A leave message and one round of claims: three network delays.
        if took > 3 * sim.config.max_delay {
            fail(
                "graceful_leave_hands_over_at_once",
                seed,
                peers,
                format!("handover took {took:?}"),
            );
        }
        worst = worst.max(took);
        check_violations(&sim, "graceful_leave_hands_over_at_once", seed);
    }
    eprintln!(
        "graceful leave: {} seeds, worst handover {:?}",
        seeds.len(),
        worst
    );
}

/// Property 2: a joining peer never takes leadership from a live, eligible, lower-id peer — not
/// in its own view, not in anyone's.
#[test]
fn joiners_never_take_leadership() {
    let seeds = seeds();
    for &seed in &seeds {
        let peers = peers_for(seed, 1, 5);
        let mut config = SimConfig::new(seed, peers);
        config.duplicate = 0.1;
        let mut sim = Sim::new(config);
        sim.run_for(Duration::from_secs(2));
        let leader = sim.expected_leader(&sim.slots()).expect("a leader");
        let mut joiners = Vec::new();
        for _ in 0..3 {
            let s = sim.spawn();
            joiners.push(sim.id(s).expect("runs"));
            let wait = Duration::from_millis(sim.random(700));
            sim.run_for(wait);
        }
        sim.run_for(Duration::from_secs(2));
        for o in &sim.log {
            if let statemesh_core::Event::Leadership(l) = &o.event
                && l.leader.is_some_and(|x| joiners.contains(&x))
            {
                fail(
                    "joiners_never_take_leadership",
                    seed,
                    peers,
                    format!("{:?} saw joiner {:?} lead over {leader:?}", o.by, l.leader),
                );
            }
        }
        let all = sim.slots();
        if !sim.agree_on(&all, Some(leader)) {
            fail(
                "joiners_never_take_leadership",
                seed,
                peers,
                "leadership moved",
            );
        }
        check_violations(&sim, "joiners_never_take_leadership", seed);
    }
}

/// Property 4: under a partition each side elects its own leader; on heal they converge to one.
#[test]
fn partitions_elect_per_side_and_heal_to_one() {
    let seeds = seeds();
    let mut worst_heal = Duration::ZERO;
    for &seed in &seeds {
        let peers = peers_for(seed, 2, 6);
        let mut sim = Sim::new(SimConfig::new(seed, peers));
        sim.run_for(Duration::from_secs(2));
        let all = sim.slots();
        let cut = 1 + sim.random(all.len() as u64 - 1) as usize;
        let (a, b) = all.split_at(cut);
        let (a, b) = (a.to_vec(), b.to_vec());
        sim.partition(&[a.clone(), b.clone()]);
        let limit = bound(&sim.config);
        let split = sim.run_until_true(limit + Duration::from_millis(100), |s| {
            s.agree_on(&a, s.expected_leader(&a)) && s.agree_on(&b, s.expected_leader(&b))
        });
        if split.is_none() {
            fail(
                "partitions_elect_per_side_and_heal_to_one",
                seed,
                peers,
                "sides did not each elect a leader",
            );
        }
        sim.run_for(Duration::from_secs(1));
        let healed_at = sim.now();
        sim.heal();
        let healed = sim.run_until_true(Duration::from_secs(5), |s| {
            s.agree_on(&all, s.expected_leader(&all))
        });
        let Some(at) = healed else {
            fail(
                "partitions_elect_per_side_and_heal_to_one",
                seed,
                peers,
                "no agreement after heal",
            )
        };
        let took = at.saturating_since(healed_at);
        if took > limit {
            fail(
                "partitions_elect_per_side_and_heal_to_one",
                seed,
                peers,
                format!("heal took {took:?}"),
            );
        }
        worst_heal = worst_heal.max(took);
        check_violations(&sim, "partitions_elect_per_side_and_heal_to_one", seed);
    }
    eprintln!(
        "partitions: {} seeds, worst convergence after heal {:?}",
        seeds.len(),
        worst_heal
    );
}
