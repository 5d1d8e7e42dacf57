//! `history`: the bounded-history workload — a probe leader rewriting 100 channels every
//! second, plus a durable status flip per endpoint every two hours or so — for 24 hours of
//! virtual time on the core's deterministic simulator, then the cost of receiving a sync
//! message on the document that day left behind.
//!
//! Why the simulator: what is measured is how big the *document* grows, and it grows only with
//! what enters it. The simulator drives the very `Node` the runtime drives (same leader store,
//! same document, same sync), in virtual time, so a day takes minutes instead of a day, and
//! the answer does not depend on how fast this machine happens to be. Real window processes
//! would add sockets, not history.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::json;
use statemesh_core::codec::{self, Message};
use statemesh_core::sim::{Sim, SimConfig};
use statemesh_core::{Config, MeshTag, Node, PeerId, Scope, Time};

use super::{Opts, Out};
use crate::stats::{Summary, round3, summarize};

/// Probed endpoints: one leader channel each.
const ENDPOINTS: usize = 100;

/// The `history` scenario.
pub(crate) fn run(opts: &Opts, out: &mut Out) -> anyhow::Result<()> {
    let hours: u64 = if opts.quick { 1 } else { 24 };
    let wall = Instant::now();
    let mut sim = Sim::new(SimConfig::new(1, opts.peers));
    sim.run_for(Duration::from_secs(2));
    let all = sim.slots();
    let leader = sim
        .expected_leader(&all)
        .ok_or_else(|| anyhow!("no leader"))?;
    let ls = all
        .iter()
        .copied()
        .find(|s| sim.id(*s) == Some(leader))
        .ok_or_else(|| anyhow!("the leader is not running"))?;
    eprintln!(
        "{hours} h of virtual time on the simulator, {} peers: the leader rewrites {ENDPOINTS} \
         channels every second",
        opts.peers
    );
    let mut status = [true; ENDPOINTS];
    let mut durable_changes = 0u64;
    let mut leader_writes = 0u64;
    for second in 0..hours * 3600 {
        let now = sim.now();
        let term = sim
            .node(ls)
            .and_then(Node::my_term)
            .ok_or_else(|| anyhow!("the leader lost its leadership at {second} s"))?;
        for (i, up) in status.iter_mut().enumerate() {
            // About one status flip per endpoint every two hours.
            if sim.random(7200) == 0 {
                *up = !*up;
                let node = sim.node_mut(ls).context("the leader runs")?;
                node.put("status", &format!("ep{i}"), &(*up), Scope::Durable)?;
                durable_changes += 1;
            }
            let latency = (second % 97 + i as u64) as i64;
            let node = sim.node_mut(ls).context("the leader runs")?;
            node.leader_put(now, term, &format!("probe-{i}"), "latency", Some(&latency))?;
            leader_writes += 1;
        }
        sim.flush(ls);
        sim.run_for(Duration::from_secs(1));
        if (second + 1) % 3600 == 0 {
            eprintln!(
                "  {} h simulated ({:.1} s of wall time)",
                (second + 1) / 3600,
                wall.elapsed().as_secs_f64()
            );
        }
    }
    if let Some(v) = sim.violations.first() {
        anyhow::bail!("simulation invariant violated: {}", v.0);
    }
    let sizes: Vec<usize> = sim
        .slots()
        .iter()
        .filter_map(|s| sim.node(*s))
        .map(|n| n.replica().save().len())
        .collect();
    let doc_bytes = sizes.iter().copied().max().unwrap_or(0);
    let doc = sim.node(ls).context("the leader runs")?.replica().save();
    let simulated = wall.elapsed().as_secs_f64();
    // Each sample adds one change to the document: few enough that the day's history (about
    // 1,300 changes) stays what is measured.
    let samples = if opts.quick { 100 } else { 300 };
    eprintln!("document: {sizes:?} bytes; timing {samples} sync receives on it");
    let after_day = sync_receive(Some(&doc), samples)?;
    let fresh = sync_receive(None, samples)?;
    eprintln!(
        "receiving a one-change sync message: p99 {:.1} µs after the day, {:.1} µs on a new \
         document",
        after_day.p99, fresh.p99
    );
    out.insert("doc_bytes".into(), json!(doc_bytes));
    out.insert("sync_receive_p99_us".into(), json!(round3(after_day.p99)));
    out.insert("sync_receive_p50_us".into(), json!(round3(after_day.p50)));
    out.insert(
        "sync_receive_p99_us_new_doc".into(),
        json!(round3(fresh.p99)),
    );
    out.insert("virtual_hours".into(), json!(hours));
    out.insert("leader_writes".into(), json!(leader_writes));
    out.insert("durable_changes".into(), json!(durable_changes));
    out.insert("simulated_in_s".into(), json!(round3(simulated)));
    out.insert("method".into(), json!("simulator"));
    Ok(())
}

/// Handles what `a` sends on `b` and back until both are quiet; drains events and persists.
fn pump(a: &mut Node, b: &mut Node, now: Time) -> anyhow::Result<()> {
    loop {
        let moved = deliver(a, b, now)? | deliver(b, a, now)?;
        for n in [&mut *a, &mut *b] {
            while n.poll_event().is_some() {}
            while let Some(p) = n.poll_persist() {
                n.persisted(p.seq());
            }
        }
        if !moved {
            return Ok(());
        }
    }
}

/// Delivers everything `from` has to send to `to`; whether there was anything.
fn deliver(from: &mut Node, to: &mut Node, now: Time) -> anyhow::Result<bool> {
    let id = from.me().peer;
    let mut moved = false;
    while let Some(t) = from.poll_transmit() {
        to.handle_frame(now, id, &t.frame)?;
        moved = true;
    }
    Ok(moved)
}

/// Two nodes holding `doc` (or a new document), linked; `samples` times, one writes a status
/// record and the other's handling of the sync message carrying it is timed (decoding,
/// applying to a copy under `catch_unwind`, events). Microseconds.
fn sync_receive(doc: Option<&[u8]>, samples: usize) -> anyhow::Result<Summary> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let tag = MeshTag::derive(&[7; 32], "history");
    let mut now = Time::ZERO;
    let mut a = Node::new(
        Config::default(),
        tag,
        PeerId::generate(1_750_000_000_000, &mut rng),
        &mut rng,
        now,
    );
    let mut b = Node::new(
        Config::default(),
        tag,
        PeerId::generate(1_750_000_000_001, &mut rng),
        &mut rng,
        now,
    );
    if let Some(doc) = doc {
        a.load(doc)?;
        b.load(doc)?;
    }
    let (ha, hb) = (a.hello(), b.hello());
    a.handle_link_up(now, &hb);
    b.handle_link_up(now, &ha);
    pump(&mut a, &mut b, now)?;
    let from = a.me().peer;
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        now = Time::from_micros(now.as_micros() + 1000);
        a.put(
            "status",
            &format!("ep{}", i % ENDPOINTS),
            &(i as i64),
            Scope::Durable,
        )?;
        let mut timed = false;
        while let Some(t) = a.poll_transmit() {
            let is_sync = matches!(
                codec::decode_frame(&t.frame, usize::MAX),
                Ok(Message::Sync(_))
            );
            if is_sync && !timed {
                let start = Instant::now();
                b.handle_frame(now, from, &t.frame)?;
                times.push(start.elapsed().as_secs_f64() * 1e6);
                timed = true;
            } else {
                b.handle_frame(now, from, &t.frame)?;
            }
        }
        pump(&mut a, &mut b, now)?;
    }
    Ok(summarize(&times))
}
