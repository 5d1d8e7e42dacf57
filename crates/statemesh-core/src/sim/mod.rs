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
//!
//! This module holds the simulated mesh and what a test scenario does with it (start, crash,
//! freeze, restart and partition processes; run the clock); `network` moves frames, link
//! changes and persists between the nodes, and `checks` records what the peers were told and
//! checks the invariants.

mod checks;
mod config;
mod network;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

pub use self::checks::{Observed, Violation};
pub use self::config::{JOB_TIME, SimConfig};
use self::network::{Delivery, Process, key, store};
use crate::{Incarnation, LinkDown, MeshTag, Node, PeerId, Term, Time, WriteId};

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
    /// Sync jobs run (see [`SimConfig::jobs`]), and of them those that applied the messages of
    /// several peers at once.
    pub sync_jobs: (usize, usize),
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
            sync_jobs: (0, 0),
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
                job: None,
                held: VecDeque::new(),
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

    /// The nodes of the running processes, for reads of records (which take a node mutably:
    /// they may make the records of local writes left open).
    pub fn nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.procs.values_mut().map(|p| &mut p.node)
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
}
