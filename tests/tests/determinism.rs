//! A seed replays a simulated run exactly: same events, same documents.

use std::time::Duration;

use statemesh_core::Scope;
use statemesh_core::sim::{CrashSignal, Sim, SimConfig};

fn run(seed: u64) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut config = SimConfig::new(seed, 4);
    config.drop = 0.05;
    config.duplicate = 0.05;
    let mut sim = Sim::new(config);
    sim.run_for(Duration::from_secs(1));
    for s in sim.slots() {
        let node = sim.node_mut(s).expect("runs");
        node.add("n", 1, Scope::Durable).expect("write");
        sim.flush(s);
    }
    let victim = sim.slots()[0];
    sim.crash(victim, CrashSignal::Silent);
    sim.run_for(Duration::from_secs(3));
    let log = sim
        .log
        .iter()
        .map(|o| format!("{:?} {:?} {:?}", o.at, o.by, o.event))
        .collect();
    let docs = sim
        .slots()
        .iter()
        .filter_map(|s| sim.node(*s))
        .map(|n| n.replica().save())
        .collect();
    (log, docs)
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let (log_a, docs_a) = run(11);
    let (log_b, docs_b) = run(11);
    assert!(log_a.len() > 10);
    assert_eq!(log_a, log_b);
    assert_eq!(docs_a, docs_b);
    let (log_c, _) = run(12);
    assert_ne!(log_a, log_c, "different seeds should differ");
}
