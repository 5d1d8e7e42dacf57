//! A deterministic simulator: a virtual clock and a virtual network that delays, drops,
//! duplicates, reorders and partitions messages, and crashes, freezes and restarts peers, all
//! from one seed.
//!
//! The simulator drives real [`Node`]s exactly as the runtime does: hellos on link up, frames
//! through the codec, ticks at [`Node::poll_timeout`], persisted bytes fed back on restart. Every
//! random choice comes from one ChaCha RNG seeded by [`SimConfig::seed`], so a seed replays a
//! run exactly. [`SimConfig::from_env`] reads `SEED` and `PEERS` from the environment.
//!
//! Persistence takes time: bytes a node asks to persist reach its disk (written and fsynced)
//! after a delay of [`SimConfig::persist_delay`], in order, and only then is the node told
//! ([`Node::persisted`]). A process that crashes with persists in flight keeps a random prefix of
//! them on its disk (the crash fell before or after each fsync). Delays and the fate of in-flight
//! persists are drawn from a second RNG seeded from the same seed, so the network's schedule of
//! a seed does not depend on them.
//!
//! The simulator records what every peer was told, including peers that later died: every term
//! granted ([`Sim::grants`]), every durable and replicated acknowledgement ([`Sim::durable`],
//! [`Sim::replicated`]). After every step it checks that no term was granted twice, that no peer
//! leads under a term older than one it knows, and that no peer shows a leader record of a term
//! other than the newest it knows (see [`Sim::violations`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::{
    Config, Event, Incarnation, LinkDown, MeshTag, Node, PeerId, Persist, Term, Time, WriteId,
};

/// Settings of a simulated network.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// Number of peers started at once.
    pub peers: usize,
    /// Node configuration.
    pub node: Config,
    /// Smallest one-way delay.
    pub min_delay: Duration,
    /// Largest one-way delay (delays are uniform in between, so messages reorder).
    pub max_delay: Duration,
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Whether all peers share one machine: a crash then closes its local sockets, a certain
    /// death signal to its peers.
    pub same_machine: bool,
    /// The largest delay before a new process's links come up (discovery, dialling): each link
    /// of a starting process comes up after a delay uniform up to this. Zero: at once.
    pub connect_delay: Duration,
    /// Time to write and fsync persisted bytes: uniform between the two.
    pub persist_delay: (Duration, Duration),
    /// A deliberate bug, for testing the tests: the runtime reports bytes persisted as soon as
    /// it takes them, before they are on disk, so writes are acknowledged durable too early.
    pub bug_ack_before_fsync: bool,
}

impl SimConfig {
    /// A lossless, low-latency network of `peers` peers.
    pub fn new(seed: u64, peers: usize) -> Self {
        Self {
            seed,
            peers,
            node: Config::default(),
            min_delay: Duration::from_micros(100),
            max_delay: Duration::from_millis(20),
            drop: 0.0,
            duplicate: 0.0,
            same_machine: false,
            connect_delay: Duration::ZERO,
            persist_delay: (Duration::from_micros(200), Duration::from_millis(30)),
            bug_ack_before_fsync: false,
        }
    }

    /// Reads `SEED` and `PEERS` from the environment, falling back to the given defaults.
    pub fn from_env(default_seed: u64, default_peers: usize) -> Self {
        let seed = std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_seed);
        let peers = std::env::var("PEERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_peers);
        Self::new(seed, peers)
    }
}

/// A handle to one simulated process.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Slot(pub usize);

/// What happens to a crashed process's links.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CrashSignal {
    /// Its peers see its local sockets close (same machine): certain death.
    Eof,
    /// Its peers see their QUIC connections close: a hint.
    Hint,
    /// Nothing at all: its peers only notice the silence (a cable cut, a power loss).
    Silent,
}

enum Delivery {
    Frame {
        from: PeerId,
        to: PeerId,
        frame: Vec<u8>,
        link_epoch: u64,
    },
    LinkDown {
        at: PeerId,
        peer: PeerId,
        how: LinkDown,
    },
    Connect {
        a: PeerId,
        b: PeerId,
    },
}

struct Process {
    node: Node,
    frozen_until: Option<Time>,
    /// Persisted bytes, replayed into the next process of this slot on restart.
    disk: Vec<Vec<u8>>,
    /// Persists written but not yet fsynced, in order, with when each completes.
    inflight: VecDeque<(Time, Persist)>,
}

impl Process {
    /// When the next in-flight persist completes (a stopped process completes nothing).
    fn next_persist(&self) -> Option<Time> {
        let (at, _) = self.inflight.front()?;
        Some(self.frozen_until.map_or(*at, |u| u.max(*at)))
    }
}

/// Puts persisted bytes on a disk.
fn store(disk: &mut Vec<Vec<u8>>, p: Persist) -> u64 {
    match p {
        Persist::Append { seq, bytes } => {
            disk.push(bytes);
            seq
        }
        Persist::Snapshot { seq, bytes } => {
            *disk = vec![bytes.bytes().to_vec()];
            seq
        }
    }
}

/// One application event seen by one peer, with when.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Virtual time.
    pub at: Time,
    /// The observing peer.
    pub by: PeerId,
    /// The event.
    pub event: Event,
}

/// A violation of a checked invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub String);

/// The simulated mesh.
pub struct Sim {
    /// The settings.
    pub config: SimConfig,
    rng: ChaCha8Rng,
    /// Draws persistence delays and crash outcomes, apart from the network's schedule.
    disk_rng: ChaCha8Rng,
    now: Time,
    wall_ms: u64,
    mesh: MeshTag,
    procs: BTreeMap<Slot, Process>,
    dead_disks: BTreeMap<Slot, Vec<Vec<u8>>>,
    ids: BTreeMap<PeerId, Slot>,
    links: BTreeMap<(PeerId, PeerId), u64>,
    closing: BTreeSet<u64>,
    link_epoch: u64,
    side: BTreeMap<PeerId, u32>,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    pending: BTreeMap<u64, Delivery>,
    seq: u64,
    next_slot: usize,
    /// Every liveness and leadership event every peer emitted, in order.
    pub log: Vec<Observed>,
    /// Replication acknowledgements seen: (write, peer that holds it).
    pub acks: Vec<(WriteId, PeerId)>,
    /// Every write acknowledged as durable: (writer, write), of every process that ever ran.
    pub durable: BTreeSet<(PeerId, WriteId)>,
    /// Every write acknowledged as replicated: (writer, write) → the peers said to hold it, of
    /// every process that ever ran.
    pub replicated: BTreeMap<(PeerId, WriteId), BTreeSet<PeerId>>,
    /// Every term granted (an `Elected` event: the term's number, led by the peer that was told)
    /// and when, over all peers and all time, restarted processes included.
    pub grants: BTreeMap<Term, Time>,
    judged_dead: BTreeMap<PeerId, BTreeSet<Incarnation>>,
    /// Invariant violations seen so far.
    pub violations: Vec<Violation>,
    /// Receive errors (malformed frames) seen by any peer.
    pub receive_errors: usize,
}

impl Sim {
    /// A simulation with `config.peers` peers started and linked.
    pub fn new(config: SimConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let disk_rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x6469_736b_5f72_6e67);
        let mut sim = Self {
            rng,
            disk_rng,
            now: Time::ZERO,
            wall_ms: 1_750_000_000_000,
            mesh: MeshTag::derive(&[7; 32], "sim"),
            procs: BTreeMap::new(),
            dead_disks: BTreeMap::new(),
            ids: BTreeMap::new(),
            links: BTreeMap::new(),
            closing: BTreeSet::new(),
            link_epoch: 0,
            side: BTreeMap::new(),
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            next_slot: 0,
            log: Vec::new(),
            acks: Vec::new(),
            durable: BTreeSet::new(),
            replicated: BTreeMap::new(),
            grants: BTreeMap::new(),
            judged_dead: BTreeMap::new(),
            violations: Vec::new(),
            receive_errors: 0,
            config,
        };
        for _ in 0..sim.config.peers {
            sim.spawn();
        }
        sim
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// A random number from the simulation's RNG (for test scenarios).
    pub fn random(&mut self, below: u64) -> u64 {
        if below == 0 {
            0
        } else {
            self.rng.next_u64() % below
        }
    }

    /// A random probability draw.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    /// Starts a new process (with a fresh peer id) in a new slot and links it to every
    /// reachable live peer.
    pub fn spawn(&mut self) -> Slot {
        self.spawn_in(0)
    }

    /// Starts a new process in a new slot on side `side` of a partition (see
    /// [`Sim::partition`]: side `i` is the `i`-th list given), linked to the live peers there.
    pub fn spawn_in(&mut self, side: u32) -> Slot {
        let slot = Slot(self.next_slot);
        self.next_slot += 1;
        self.start(slot, Vec::new(), side);
        slot
    }

    /// Tells the process in `slot` that discovery has settled (it found every peer it could
    /// at first; a window alone at its first scan settles at once).
    pub fn settle(&mut self, slot: Slot) {
        let now = self.now;
        let Some(id) = self.id(slot) else { return };
        if let Some(p) = self.procs.get_mut(&slot) {
            p.node.handle_settled(now);
        }
        self.drain(id);
    }

    /// Starts a process in `slot` with `disk` as its stored state.
    fn start(&mut self, slot: Slot, disk: Vec<Vec<u8>>, side: u32) {
        self.wall_ms += 1 + self.random(5);
        let id = PeerId::generate(self.wall_ms, &mut self.rng);
        let mut node = Node::new(
            self.config.node.clone(),
            self.mesh,
            id,
            &mut self.rng,
            self.now,
        );
        for bytes in &disk {
            if let Err(e) = node.load(bytes) {
                self.violations.push(Violation(format!(
                    "stored state of {slot:?} failed to load: {e}"
                )));
            }
        }
        self.ids.insert(id, slot);
        self.side.insert(id, side);
        self.procs.insert(
            slot,
            Process {
                node,
                frozen_until: None,
                disk,
                inflight: VecDeque::new(),
            },
        );
        let others: Vec<PeerId> = self.live_ids().into_iter().filter(|p| *p != id).collect();
        for other in others {
            if self.config.connect_delay.is_zero() {
                self.connect(id, other);
            } else {
                let max = self.config.connect_delay.as_micros() as u64;
                let at = self.now + Duration::from_micros(self.random(max + 1));
                self.schedule(at, Delivery::Connect { a: id, b: other });
            }
        }
        self.drain(id);
    }

    /// The peer id of the process in `slot`, if it runs.
    pub fn id(&self, slot: Slot) -> Option<PeerId> {
        self.procs.get(&slot).map(|p| p.node.me().peer)
    }

    /// Slots with a running process.
    pub fn slots(&self) -> Vec<Slot> {
        self.procs.keys().copied().collect()
    }

    /// Peer ids of running processes (frozen ones included).
    pub fn live_ids(&self) -> Vec<PeerId> {
        self.procs.values().map(|p| p.node.me().peer).collect()
    }

    /// The node of a running process.
    pub fn node(&self, slot: Slot) -> Option<&Node> {
        self.procs.get(&slot).map(|p| &p.node)
    }

    /// The node of a running process, for local writes. Call [`Sim::flush`] after writing.
    pub fn node_mut(&mut self, slot: Slot) -> Option<&mut Node> {
        self.procs.get_mut(&slot).map(|p| &mut p.node)
    }

    /// Sends what a node produced after local writes.
    pub fn flush(&mut self, slot: Slot) {
        if let Some(id) = self.id(slot) {
            self.drain(id);
        }
    }

    fn reachable(&self, a: PeerId, b: PeerId) -> bool {
        self.side.get(&a) == self.side.get(&b)
    }

    fn connect(&mut self, a: PeerId, b: PeerId) {
        if !self.reachable(a, b) || self.links.contains_key(&key(a, b)) {
            return;
        }
        let (Some(sa), Some(sb)) = (self.ids.get(&a).copied(), self.ids.get(&b).copied()) else {
            return;
        };
        let (Some(ha), Some(hb)) = (
            self.procs.get(&sa).map(|p| p.node.hello()),
            self.procs.get(&sb).map(|p| p.node.hello()),
        ) else {
            return;
        };
        self.link_epoch += 1;
        self.links.insert(key(a, b), self.link_epoch);
        let now = self.now;
        if let Some(p) = self.procs.get_mut(&sa)
            && p.node.check_hello(&hb).is_ok()
        {
            p.node.handle_link_up(now, &hb);
        }
        if let Some(p) = self.procs.get_mut(&sb)
            && p.node.check_hello(&ha).is_ok()
        {
            p.node.handle_link_up(now, &ha);
        }
        self.drain(a);
        self.drain(b);
    }

    fn disconnect(
        &mut self,
        a: PeerId,
        b: PeerId,
        how_a: Option<LinkDown>,
        how_b: Option<LinkDown>,
    ) {
        if self.links.remove(&key(a, b)).is_none() {
            return;
        }
        for (at, peer, how) in [(a, b, how_a), (b, a, how_b)] {
            if let Some(how) = how {
                let delay = self.delay();
                self.schedule(self.now + delay, Delivery::LinkDown { at, peer, how });
            }
        }
    }

    /// Kills the process in `slot`; its peers learn of it as `signal` says. Its disk is kept for
    /// [`Sim::restart`].
    pub fn crash(&mut self, slot: Slot, signal: CrashSignal) {
        self.crash_with(slot, signal, false);
    }

    fn crash_with(&mut self, slot: Slot, signal: CrashSignal, graceful: bool) {
        let Some(mut p) = self.procs.remove(&slot) else {
            return;
        };
        let id = p.node.me().peer;
        // Persists in flight: the crash fell after the fsync of some prefix of them.
        while let Some((_, persist)) = p.inflight.pop_front() {
            if self.disk_rng.next_u64().is_multiple_of(2) {
                break;
            }
            store(&mut p.disk, persist);
        }
        self.dead_disks.insert(slot, p.disk);
        let how = match signal {
            CrashSignal::Eof => Some(LinkDown::Certain),
            CrashSignal::Hint => Some(LinkDown::Hint),
            CrashSignal::Silent => None,
        };
        let peers: Vec<PeerId> = self
            .links
            .keys()
            .filter_map(|(x, y)| {
                if *x == id {
                    Some(*y)
                } else if *y == id {
                    Some(*x)
                } else {
                    None
                }
            })
            .collect();
        for peer in peers {
            // Links of a silent crash stay "up" on the survivors' side until they judge it.
            if graceful {
                // A graceful close delivers what was sent before it, then closes the link.
                let Some(link_epoch) = self.links.remove(&key(id, peer)) else {
                    continue;
                };
                self.closing.insert(link_epoch);
                let at = self.now + self.config.max_delay + Duration::from_micros(1);
                if let Some(how) = how {
                    self.schedule(
                        at,
                        Delivery::LinkDown {
                            at: peer,
                            peer: id,
                            how,
                        },
                    );
                }
            } else if how.is_some() {
                self.disconnect(id, peer, None, how);
            } else {
                self.links.remove(&key(id, peer));
            }
        }
    }

    /// Gracefully shuts down the process in `slot` (a leave, then exit).
    pub fn shutdown(&mut self, slot: Slot) {
        let now = self.now;
        let Some(id) = self.id(slot) else { return };
        if let Some(p) = self.procs.get_mut(&slot) {
            p.node.leave(now);
        }
        self.drain(id);
        self.crash_with(
            slot,
            if self.config.same_machine {
                CrashSignal::Eof
            } else {
                CrashSignal::Hint
            },
            true,
        );
    }

    /// Restarts a crashed slot: a new process, a new peer id, the old disk.
    pub fn restart(&mut self, slot: Slot) -> bool {
        let Some(disk) = self.dead_disks.remove(&slot) else {
            return false;
        };
        self.start(slot, disk, 0);
        true
    }

    /// Crashed slots that can be restarted.
    pub fn crashed(&self) -> Vec<Slot> {
        self.dead_disks.keys().copied().collect()
    }

    /// Freezes the process in `slot` (SIGSTOP) for `d`: it handles nothing until then, and
    /// what is sent to it waits.
    pub fn freeze(&mut self, slot: Slot, d: Duration) {
        let until = self.now + d;
        if let Some(p) = self.procs.get_mut(&slot) {
            p.frozen_until = Some(until);
        }
    }

    /// Splits the live peers into sides; peers on different sides cannot reach each other.
    pub fn partition(&mut self, sides: &[Vec<Slot>]) {
        for (i, side) in sides.iter().enumerate() {
            for slot in side {
                if let Some(id) = self.id(*slot) {
                    self.side.insert(id, i as u32);
                }
            }
        }
        let cut: Vec<(PeerId, PeerId)> = self
            .links
            .keys()
            .copied()
            .filter(|(a, b)| !self.reachable(*a, *b))
            .collect();
        for (a, b) in cut {
            self.disconnect(a, b, Some(LinkDown::Hint), Some(LinkDown::Hint));
        }
    }

    /// Removes every partition and links every pair of live peers.
    pub fn heal(&mut self) {
        for s in self.side.values_mut() {
            *s = 0;
        }
        let ids = self.live_ids();
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                self.connect(*a, *b);
            }
        }
    }

    /// Stops message loss and duplication.
    pub fn calm(&mut self) {
        self.config.drop = 0.0;
        self.config.duplicate = 0.0;
    }

    /// Wakes every frozen process now.
    pub fn thaw_all(&mut self) {
        let now = self.now;
        for p in self.procs.values_mut() {
            if p.frozen_until.is_some() {
                p.frozen_until = Some(now);
            }
        }
    }

    fn delay(&mut self) -> Duration {
        let min = self.config.min_delay.as_micros() as u64;
        let max = self.config.max_delay.as_micros() as u64;
        Duration::from_micros(min + self.random(max.saturating_sub(min) + 1))
    }

    fn schedule(&mut self, at: Time, d: Delivery) {
        self.seq += 1;
        self.pending.insert(self.seq, d);
        self.queue.push(Reverse((at, self.seq)));
    }

    /// Drains the outputs of peer `id`: frames onto the network, events into the log,
    /// persisted bytes onto its disk.
    fn drain(&mut self, id: PeerId) {
        let Some(slot) = self.ids.get(&id).copied() else {
            return;
        };
        let now = self.now;
        let mut frames = Vec::new();
        let mut events = Vec::new();
        {
            let Some(p) = self.procs.get_mut(&slot) else {
                return;
            };
            while let Some(t) = p.node.poll_transmit() {
                frames.push(t);
            }
            while let Some(persist) = p.node.poll_persist() {
                let (min, max) = self.config.persist_delay;
                let (min, max) = (min.as_micros() as u64, max.as_micros() as u64);
                let d = min + self.disk_rng.next_u64() % (max.saturating_sub(min) + 1);
                let last = p.inflight.back().map_or(now, |(t, _)| *t);
                let done = last.max(now + Duration::from_micros(d));
                if self.config.bug_ack_before_fsync {
                    let (Persist::Append { seq, .. } | Persist::Snapshot { seq, .. }) = &persist;
                    p.node.persisted(*seq);
                }
                p.inflight.push_back((done, persist));
            }
            while let Some(e) = p.node.poll_event() {
                events.push(e);
            }
        }
        for e in events {
            self.observe(id, e);
        }
        for t in frames {
            let Some(epoch) = self.links.get(&key(id, t.to)).copied() else {
                continue;
            };
            if self.chance(self.config.drop) {
                continue;
            }
            let copies = if self.chance(self.config.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let d = self.delay();
                self.schedule(
                    now + d,
                    Delivery::Frame {
                        from: id,
                        to: t.to,
                        frame: t.frame.to_vec(),
                        link_epoch: epoch,
                    },
                );
            }
        }
    }

    fn observe(&mut self, by: PeerId, event: Event) {
        match &event {
            Event::PeerDown { incarnation, .. } => {
                self.judged_dead.entry(by).or_default().insert(*incarnation);
            }
            Event::PeerUp(inc) if self.judged_dead.get(&by).is_some_and(|d| d.contains(inc)) => {
                self.violations.push(Violation(format!(
                    "{by:?} saw {inc} live again after judging it dead"
                )));
            }
            Event::Replicated { write, peer, .. } => {
                self.acks.push((*write, *peer));
                self.replicated
                    .entry((by, *write))
                    .or_default()
                    .insert(*peer);
                return;
            }
            Event::Durable { write } => {
                self.durable.insert((by, *write));
                return;
            }
            Event::Elected { term } => {
                let t = Term::new(*term, by);
                if let Some(at) = self.grants.insert(t, self.now) {
                    self.violations.push(Violation(format!(
                        "term {t} granted again at {:?} (first at {at:?})",
                        self.now
                    )));
                }
            }
            Event::Leadership(l) => {
                if let Some(t) = l.term_id()
                    && !self.grants.contains_key(&t)
                {
                    self.violations.push(Violation(format!(
                        "{by:?} shows term {t}, which was never granted"
                    )));
                }
            }
            // Data events are many and checked through the nodes' state instead.
            Event::Changed(_) | Event::PeerAddresses { .. } => return,
            _ => {}
        }
        self.log.push(Observed {
            at: self.now,
            by,
            event,
        });
    }

    /// Checks, for every running peer, that no incarnation it judged dead is live in its view.
    pub fn check_dead_stay_dead(&mut self) {
        for p in self.procs.values() {
            let me = p.node.me().peer;
            if let Some(dead) = self.judged_dead.get(&me) {
                for inc in dead {
                    if !p.node.is_dead(&inc.peer, inc.number) {
                        self.violations
                            .push(Violation(format!("{me:?} no longer holds {inc} dead")));
                    }
                }
            }
        }
    }

    /// Checks, for every running peer, the fencing of terms against what it knows: it leads
    /// under no term older than the newest it knows, and shows no leader record of another term.
    pub fn check_terms(&mut self) {
        for p in self.procs.values() {
            let n = &p.node;
            let me = n.me().peer;
            let newest = n.newest_term();
            if let Some(t) = n.my_term_id()
                && Some(t) != newest
            {
                self.violations.push(Violation(format!(
                    "{me:?} leads under {t} although it knows {newest:?}"
                )));
            }
            let store = n.leader_store();
            for channel in store.channels() {
                for key in store.keys(&channel, newest, |w| n.is_live(w)) {
                    let Some(r) = store.get(&channel, &key) else {
                        continue;
                    };
                    let t = crate::leader::term_of(r);
                    if Some(t) != newest {
                        self.violations.push(Violation(format!(
                            "{me:?} shows {channel}/{key} of term {t}, newest known {newest:?}"
                        )));
                    }
                }
            }
        }
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Time) {
        while let Some(next) = self.next_time() {
            if next > until {
                break;
            }
            self.step_at(next);
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Runs until `done` holds (checked after every step) or `limit` passes; returns the time
    /// it first held.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Option<Time> {
        let until = self.now + limit;
        if done(self) {
            return Some(self.now);
        }
        while let Some(next) = self.next_time() {
            if next > until {
                break;
            }
            self.step_at(next);
            if done(self) {
                return Some(self.now);
            }
        }
        self.now = self.now.max(until);
        None
    }

    fn next_time(&self) -> Option<Time> {
        let net = self.queue.peek().map(|Reverse((t, _))| *t);
        let ticks = self
            .procs
            .values()
            .flat_map(|p| {
                let tick = match p.frozen_until {
                    Some(until) => until.max(p.node.poll_timeout()),
                    None => p.node.poll_timeout(),
                };
                [Some(tick), p.next_persist()]
            })
            .flatten()
            .min();
        match (net, ticks) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|t| t.max(self.now))
    }

    fn step_at(&mut self, at: Time) {
        self.now = at;
        // Wake frozen processes whose time has come.
        for p in self.procs.values_mut() {
            if p.frozen_until.is_some_and(|u| u <= at) {
                p.frozen_until = None;
            }
        }
        // Network deliveries due now.
        while let Some(Reverse((t, seq))) = self.queue.peek().copied() {
            if t > at {
                break;
            }
            self.queue.pop();
            let Some(d) = self.pending.remove(&seq) else {
                continue;
            };
            let to = match &d {
                Delivery::Frame { to, .. } => *to,
                Delivery::LinkDown { at, .. } => *at,
                Delivery::Connect { a, b } => {
                    // Discovery found the peer: both are still running, or nothing happens.
                    let (a, b) = (*a, *b);
                    if self.ids.get(&a).is_some_and(|s| self.procs.contains_key(s))
                        && self.ids.get(&b).is_some_and(|s| self.procs.contains_key(s))
                    {
                        self.connect(a, b);
                    }
                    continue;
                }
            };
            let Some(slot) = self.ids.get(&to).copied() else {
                continue;
            };
            let frozen = self.procs.get(&slot).and_then(|p| p.frozen_until);
            if let Some(until) = frozen {
                // A stopped process reads nothing; the kernel keeps it queued.
                self.pending.insert(seq, d);
                self.queue.push(Reverse((until, seq)));
                continue;
            }
            let Some(p) = self.procs.get_mut(&slot) else {
                continue;
            };
            match d {
                Delivery::Frame {
                    from,
                    frame,
                    link_epoch,
                    ..
                } => {
                    // Frames of a link that has since closed are gone with it.
                    if self.links.get(&key(from, to)) != Some(&link_epoch)
                        && !self.closing.contains(&link_epoch)
                    {
                        continue;
                    }
                    let payload = frame.get(crate::codec::HEADER_LEN..).unwrap_or_default();
                    if p.node.handle_payload(at, from, payload).is_err() {
                        self.receive_errors += 1;
                    }
                }
                Delivery::LinkDown { peer, how, .. } => {
                    // The runtime reports the end of the link it had, never of a newer one.
                    if self.links.contains_key(&key(peer, to)) {
                        continue;
                    }
                    p.node.handle_link_down(at, peer, how);
                }
                Delivery::Connect { .. } => {}
            }
            self.drain(to);
        }
        // Persists whose fsync completes now: on disk, then the node is told.
        let done: Vec<PeerId> = self
            .procs
            .values_mut()
            .filter(|p| p.frozen_until.is_none())
            .filter_map(|p| {
                let mut any = false;
                while p.inflight.front().is_some_and(|(t, _)| *t <= at) {
                    let Some((_, persist)) = p.inflight.pop_front() else {
                        break;
                    };
                    let seq = store(&mut p.disk, persist);
                    p.node.persisted(seq);
                    any = true;
                }
                any.then(|| p.node.me().peer)
            })
            .collect();
        for id in done {
            self.drain(id);
        }
        // Ticks due now.
        let due: Vec<PeerId> = self
            .procs
            .values()
            .filter(|p| p.frozen_until.is_none() && p.node.poll_timeout() <= at)
            .map(|p| p.node.me().peer)
            .collect();
        for id in due {
            if let Some(slot) = self.ids.get(&id).copied()
                && let Some(p) = self.procs.get_mut(&slot)
            {
                p.node.handle_tick(at);
            }
            self.drain(id);
        }
        // Survivors of a silent crash keep a link entry; drop links to peers that are gone.
        self.check_dead_stay_dead();
        self.check_terms();
    }

    /// The lowest id among running, unfrozen, eligible peers reachable from `slot`'s side.
    pub fn expected_leader(&self, among: &[Slot]) -> Option<PeerId> {
        among
            .iter()
            .filter_map(|s| self.procs.get(s))
            .filter(|p| p.frozen_until.is_none() && p.node.config().eligible)
            .map(|p| p.node.me().peer)
            .min()
    }

    /// Whether every running peer in `among` sees `leader` as leader under one common term.
    pub fn agree_on(&self, among: &[Slot], leader: Option<PeerId>) -> bool {
        let mut term = None;
        for s in among {
            let Some(p) = self.procs.get(s) else { continue };
            let l = p.node.leadership();
            if l.leader != leader || l.term.is_none() {
                return false;
            }
            if term.is_some() && term != l.term {
                return false;
            }
            term = l.term;
        }
        true
    }
}

fn key(a: PeerId, b: PeerId) -> (PeerId, PeerId) {
    if a < b { (a, b) } else { (b, a) }
}
