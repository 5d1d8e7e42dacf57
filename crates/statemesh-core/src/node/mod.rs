//! The per-peer state machine: inputs in, outputs out, no IO.
//!
//! Inputs are [`Node::handle_tick`], [`Node::handle_link_up`], [`Node::handle_link_down`],
//! [`Node::handle_frame`] (a frame received from a peer) and local writes ([`Node::put`],
//! [`Node::add`], [`Node::transact`], [`Node::leader_put`], ...). Every input takes the current
//! local monotonic time. Outputs are drained with [`Node::poll_transmit`] (frames to send to a
//! peer), [`Node::poll_event`] (application events) and [`Node::poll_persist`] (bytes to store);
//! [`Node::poll_timeout`] says when the next tick is due.
//!
//! Local writes made between two calls to [`Node::poll_transmit`] are coalesced into one sync
//! round per peer.
//!
//! The node's parts, each in its own file beside this one (which holds the node, its inputs
//! and its outputs): `persist`, the bytes to store and the writes they make durable
//! ([`Persist`], [`Snapshot`]); `acks`, the replication acknowledgements of local writes;
//! `link`, the sync exchange with each linked peer (coalesced pushes, stall recovery); `jobs`,
//! receives and pushes run away from the node ([`SyncJob`], [`PushJob`]); `heart`, liveness,
//! election and views under a lock of their own ([`Heart`], [`Pulse`]); `gossip`, what the
//! node takes in from the heart; `timers`, ticks, beats and their deadlines; `writes` and `reads`,
//! the application's entries; `tests`.

mod acks;
mod frames;
mod gossip;
mod heart;
mod jobs;
mod link;
mod persist;
mod reads;
mod timers;
mod writes;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use automerge::ChangeHash;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, Hello, LeaderRecord, Message};
use crate::election::{Leadership, Term};
use crate::leader_records::LeaderStore;
use crate::liveness::{DeathCause, LinkDown, PeerStatus};
use crate::replica::{ApplyError, EntryChange, LoadReport, Replica, heads_digest};
use crate::{Config, Incarnation, MeshTag, PeerId, Time};

use acks::{AckBook, PendingWrite};
pub use acks::{MAX_PENDING_WRITES, PENDING_TTL, RETIRED_KEPT, WriteStatus};
pub use heart::{DecodedView, Heart, Pulse};
pub use jobs::{INLINE_BYTES, PUSH_AT_ONCE, PushJob, STANDBY_BATCH, SyncJob};
use link::Link;
pub use persist::{Persist, Snapshot};
pub use reads::Glance;
use reads::Scratch;
pub use writes::MAX_OPEN_WRITES;

/// Identifies one local write, for durability and replication acknowledgements.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct WriteId(pub u64);

/// The result of a local write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Written {
    /// The write's id.
    pub id: WriteId,
    /// Whether it changed the document. A write equal to what is stored changes nothing; it is
    /// then already as durable and replicated as the stored value.
    pub changed: bool,
    /// How many entries (records, counter entries) it changed: its weight in the
    /// [backlog](Node::backlog), 0 for a write that changed nothing and for a leader record
    /// (those are not watched for acknowledgements).
    pub entries: usize,
}

impl Written {
    /// Write `id`, which changed nothing.
    pub(crate) fn unchanged(id: WriteId) -> Self {
        Self {
            id,
            changed: false,
            entries: 0,
        }
    }
}

/// An application event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The leadership (leader or term) changed, as this peer sees it.
    Leadership(Leadership),
    /// This peer became the leader under the term numbered `term` (the [`Term`] of this number
    /// led by this peer: no other peer ever leads under it).
    Elected {
        /// The new term's number.
        term: u64,
    },
    /// This peer stopped leading: it learned or must suspect that the leadership of `term` is
    /// over. Writes under that term are refused from now on.
    Deposed {
        /// The number of the term that ended (led by this peer).
        term: u64,
    },
    /// An incarnation became live.
    PeerUp(Incarnation),
    /// An incarnation was judged dead.
    PeerDown {
        /// The dead incarnation.
        incarnation: Incarnation,
        /// Why.
        cause: DeathCause,
    },
    /// This peer learned it had been judged dead (or woke from a freeze) and moved to a new
    /// incarnation.
    Refuted(Incarnation),
    /// An entry changed (locally or by a peer), or appeared/vanished with its writer's presence.
    Changed(EntryChange),
    /// `peer` now holds local write `write`.
    Replicated {
        /// The write.
        write: WriteId,
        /// The peer that holds it.
        peer: PeerId,
        /// Time from the write to this acknowledgement, on this node's clock: the write's trip
        /// to the peer and the acknowledgement's trip back (no clocks are compared).
        after: Duration,
    },
    /// Local write `write` is in bytes the runtime reported as persisted.
    Durable {
        /// The write.
        write: WriteId,
    },
    /// Peer exchange: linked peer `from` says where its other peers can be reached (see
    /// [`Node::share_peers`]). Discovery's business, not the node's: the runtime decides
    /// whether to dial them.
    PeerAddresses {
        /// The peer that shared them.
        from: PeerId,
        /// The addresses, as `from` reaches them.
        peers: Vec<codec::PeerAddress>,
    },
    /// Linked peer `from` takes its link's views sealed, on this route (see
    /// [`Node::offer_view_route`]). The runtime's business, like the views' transport.
    ViewRoute {
        /// The peer that takes them.
        from: PeerId,
        /// Where and under which route.
        route: codec::ViewRoute,
    },
    /// Linked peer `from` hears the views sealed on its route `route`.
    ViewsHeard {
        /// The peer that hears them.
        from: PeerId,
        /// Its route.
        route: u64,
    },
}

/// A frame to send to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The peer.
    pub to: PeerId,
    /// The frame, header included. A broadcast is encoded once: its transmits share one buffer.
    pub frame: bytes::Bytes,
}

/// A received frame that could not be handled. The runtime should close the link it came on;
/// the node's state is unchanged by the offending message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The bytes are not a valid message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The sync message could not be applied.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A hello arrived on a link that was already up.
    #[error("unexpected hello on an established link")]
    UnexpectedHello,
    /// A frame arrived from a peer with no link up.
    #[error("no link to peer {0}")]
    NoLink(PeerId),
    /// A frame given as a view ([`Heart::handle_view`]) holds another message.
    #[error("a view was expected")]
    NotAView,
}

/// A hello that must be refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {theirs}, this build speaks {ours}")]
    Version {
        /// Their version.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// The peer belongs to another mesh (or holds another secret).
    #[error("peer belongs to another mesh")]
    OtherMesh,
    /// The hello carries this peer's own id.
    #[error("connected to itself")]
    SelfConnection,
    /// The hello announces an incarnation already judged dead.
    #[error("incarnation {0} was judged dead")]
    DeadIncarnation(Incarnation),
}

/// Why this peer leads or not, for the CLI's `leader` command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// This peer.
    pub me: Incarnation,
    /// The current leadership.
    pub leadership: Leadership,
    /// The greatest term number seen.
    pub max_term: u64,
    /// The newest term seen (its number is `max_term`, unless that came from a stored entry
    /// that names no peer).
    pub newest_term: Option<Term>,
    /// Whether this peer may claim leadership now (eligible and past its join grace).
    pub me_candidate: bool,
    /// Every known peer, this one first.
    pub peers: Vec<PeerStatus>,
}

impl Explanation {
    /// The leader of the newest term seen, when that term's number is the greatest seen (so
    /// that `max_term` and this make the newest term).
    pub fn max_term_leader(&self) -> Option<PeerId> {
        self.newest_term
            .filter(|t| t.number == self.max_term)
            .map(|t| t.leader)
    }
}

/// Counters of what a node did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes received (frames, headers included).
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Sync messages sent.
    pub sync_out: u64,
    /// Sync messages received.
    pub sync_in: u64,
    /// Frames refused as malformed.
    pub decode_errors: u64,
    /// Leadership changes seen.
    pub leadership_changes: u64,
    /// Sync exchanges restarted after a stall.
    pub sync_resets: u64,
    /// Sync rounds a peer's view made owed: its document had differed from this node's for
    /// longer than the relay grace (it lacked a change its writer had not brought it, or this
    /// node lacked one). Each write reaches every linked peer from its writer; these are the
    /// rounds on top.
    pub syncs_owed_by_views: u64,
    /// Times this peer found its own ticks starved past the suspect timeout (a freeze, or a
    /// runtime too busy to tick) and moved to a new incarnation.
    pub freezes: u64,
    /// Times this peer learned it was judged dead while alive (a false suspicion, seen from
    /// its subject) and refuted with a new incarnation.
    pub suspicions_refuted: u64,
}

/// The state machine of one peer.
#[derive(Debug)]
pub struct Node {
    config: Config,
    mesh: MeshTag,
    /// Further tags accepted in a peer's hello (the mesh under other keys of a keyring).
    also_accepted: Vec<MeshTag>,
    /// This peer's id (its incarnations live in the heart).
    me: PeerId,
    /// Liveness, election and views, under a lock of their own (see [`Heart`]).
    heart: Pulse,
    /// The digests the heart's views carry, published without it (see [`heart::PublishedDigests`]).
    digests: std::sync::Arc<heart::PublishedDigests>,
    /// The stored terms last given the heart (newest, greatest number): a receive that leaves
    /// them as they were takes nothing to it.
    stored_terms: Option<(Option<Term>, u64)>,
    replica: Replica,
    leader: LeaderStore,
    links: BTreeMap<PeerId, Link>,
    /// The time of the last input.
    last_tick: Time,
    /// The documents this node held lately (see [`gossip::LeftDocs`]).
    left_docs: gossip::LeftDocs,
    out: VecDeque<Transmit>,
    /// Some link's `sync_due` is set.
    sync_due: bool,
    events: VecDeque<Event>,
    doc_dirty: bool,
    /// Pushes of local changes are generated by [`PushJob`]s (see [`Node::set_push_jobs`]).
    push_jobs: bool,
    /// Local changes made since the last push left (or its job was taken).
    unpushed: usize,
    /// The replica's standby lacks changes the document holds (a sync message applied in place
    /// by [`Node::handle_frame_deferred`], or a local change): [`Node::catch_up_standby`] owes
    /// it them.
    standby_owed: usize,
    /// The messages of a sync job of several that failed, to apply one at a time (see
    /// [`Node::retry_job`]): sender, its link's serial, message.
    retry: VecDeque<(PeerId, u64, automerge::sync::Message)>,
    leader_dirty: Vec<LeaderRecord>,
    next_write: u64,
    pending: BTreeMap<WriteId, PendingWrite>,
    acks: AckBook,
    persisted_heads: Vec<ChangeHash>,
    compaction: persist::Compaction,
    persist_seq: u64,
    unpersisted: Vec<WriteId>,
    /// Since when the document holds changes received from peers that no persist holds yet,
    /// while no local write waits: they are persisted together by the first flush once a
    /// heartbeat interval has passed since the first, or at once with the next local write or
    /// a graceful leave (see [`Node::poll_persist`]).
    received_unpersisted: Option<Time>,
    /// A term this peer claimed, to record in the document (`m.terms`) at the time given: a
    /// heartbeat interval after the claim, once the failover it ends is over (see
    /// [`Node::record_claimed_term`]).
    term_to_record: Option<(u64, Time)>,
    /// Local writes in the replica's open change (not committed yet), with their times and
    /// how many entries each changed (its weight in the backlog), oldest first: tracked for
    /// acknowledgements once [`settle`](Self::settle) commits them.
    open_writes: VecDeque<(WriteId, Time, usize)>,
    in_persist: VecDeque<(u64, Vec<WriteId>)>,
    stats: Stats,
    scratch: std::cell::RefCell<Scratch>,
    /// Who was live when the node last took in a change of a peer's liveness (see
    /// `Node::live_now`).
    live_seen: std::cell::RefCell<reads::LiveNow>,
    next_link_serial: u64,
}

impl Node {
    /// A node for peer `me` of mesh `mesh`, started at local time `now`. The Automerge actor id
    /// is drawn from `rng`.
    pub fn new(
        config: Config,
        mesh: MeshTag,
        me: PeerId,
        rng: &mut impl RngCore,
        now: Time,
    ) -> Self {
        let mut actor = [0u8; 16];
        rng.fill_bytes(&mut actor);
        let replica = Replica::new(me, actor);
        let persisted_heads = replica.heads();
        let leader = LeaderStore::default();
        let digests = heart::PublishedDigests::new(heads_digest(&persisted_heads), leader.digest());
        let heart = Heart::new(config.clone(), me, now, std::sync::Arc::clone(&digests));
        Self {
            me,
            heart: Pulse::new(heart),
            digests,
            // A new document stores no term: what the heart's election starts from.
            stored_terms: Some((None, 0)),
            replica,
            leader,
            links: BTreeMap::new(),
            last_tick: now,
            left_docs: gossip::LeftDocs::default(),
            out: VecDeque::new(),
            sync_due: false,
            events: VecDeque::new(),
            doc_dirty: false,
            push_jobs: false,
            unpushed: 0,
            standby_owed: 0,
            retry: VecDeque::new(),
            leader_dirty: Vec::new(),
            next_write: 0,
            pending: BTreeMap::new(),
            acks: AckBook::default(),
            persisted_heads,
            // The first bytes persisted are a whole snapshot, genesis included, so that every
            // state file loads on its own.
            compaction: persist::Compaction::due(),
            persist_seq: 0,
            unpersisted: Vec::new(),
            received_unpersisted: None,
            term_to_record: None,
            open_writes: VecDeque::new(),
            in_persist: VecDeque::new(),
            stats: Stats::default(),
            scratch: std::cell::RefCell::default(),
            // No peer is live before a link comes up.
            live_seen: std::cell::RefCell::new(reads::LiveNow::alone(me)),
            next_link_serial: 0,
            mesh,
            also_accepted: Vec::new(),
            config,
        }
    }

    /// This peer's current incarnation.
    pub fn me(&self) -> Incarnation {
        self.heart().me()
    }

    /// A handle on this node's [`Heart`]: liveness, election and views under a lock of their
    /// own. A runtime may run heartbeats and received views on a task of its own through it
    /// ([`Heart::handle_beat`], [`Heart::handle_view`], [`Heart::poll_view`]) without ever
    /// waiting for the node; when [`Heart::wants_node`] says so, the node has work from them
    /// (taken in at its next input or [`poll_transmit`](Self::poll_transmit)).
    pub fn pulse(&self) -> Pulse {
        self.heart.clone()
    }

    /// The heart, locked (lock order: the node, then the heart).
    fn heart(&self) -> std::sync::MutexGuard<'_, Heart> {
        self.heart.lock()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The hello this peer sends first on every link.
    pub fn hello(&self) -> Hello {
        self.heart().hello(self.mesh)
    }

    /// Changes the mesh tag this node sends in its hellos to `primary`, and accepts hellos
    /// under `primary` or any of `accepted` (a keyring's tags, see `statemesh_net::keyring`;
    /// links already up are not affected).
    pub fn set_mesh_tags(&mut self, primary: MeshTag, accepted: &[MeshTag]) {
        self.mesh = primary;
        self.also_accepted = accepted.iter().copied().filter(|t| *t != primary).collect();
    }

    /// Checks a peer's hello before its link is brought up.
    pub fn check_hello(&self, hello: &Hello) -> Result<(), HelloError> {
        if hello.version != codec::PROTOCOL_VERSION {
            return Err(HelloError::Version {
                theirs: hello.version,
                ours: codec::PROTOCOL_VERSION,
            });
        }
        if hello.mesh != self.mesh && !self.also_accepted.contains(&hello.mesh) {
            return Err(HelloError::OtherMesh);
        }
        if hello.incarnation.peer == self.me {
            return Err(HelloError::SelfConnection);
        }
        Ok(())
    }

    /// Merges stored bytes (a snapshot and incremental saves found on disk) into the document,
    /// salvaging what can be read from a damaged file (see [`LoadReport`]).
    pub fn load(&mut self, bytes: &[u8]) -> Result<LoadReport, ApplyError> {
        self.settle();
        let report = self.replica.load_stored(bytes)?;
        self.observe_stored_terms();
        self.publish_digests();
        // What was loaded is on disk already; the next persist compacts it all into a snapshot.
        self.compaction = persist::Compaction::due();
        Ok(report)
    }

    /// The runtime's discovery has found every peer it could initially: this peer may count
    /// itself as a leader candidate without waiting for the rest of its join grace.
    pub fn handle_settled(&mut self, now: Time) {
        self.advance(now);
        self.heart().settled = true;
        self.reelect(now);
    }

    /// A link to `peer` (whose hello passed [`check_hello`](Self::check_hello)) is up.
    pub fn handle_link_up(&mut self, now: Time, hello: &Hello) {
        self.settle();
        self.advance(now);
        self.next_link_serial += 1;
        let peer = hello.incarnation.peer;
        self.links.insert(
            peer,
            Link {
                sync: Replica::new_sync_state(),
                their_doc: None,
                their_leader: None,
                mismatch_since: None,
                unreached: Default::default(),
                stalled_views: 0,
                leader_pushed: None,
                changes_in_flight: None,
                push_pending: false,
                awaiting_answer: None,
                unproductive_syncs: 0,
                idle_rounds: 0,
                their_last_heads: None,
                busy: false,
                push_ready: false,
                sync_due: false,
                serial: self.next_link_serial,
                held_upto: WriteId(0),
            },
        );
        let left = {
            let mut heart = self.heart();
            heart.link_up(now, hello);
            heart.left.then(|| heart.me())
        };
        self.absorb();
        if let Some(me) = left {
            self.send(peer, &Message::Leave(me));
            return;
        }
        self.sync_with(peer);
        self.push_leader(peer, now);
        self.reelect(now);
    }

    /// The link to `peer` went down.
    ///
    /// A [`LinkDown::Certain`] signal (the peer's local socket closed) counts even when no sync
    /// link is up: the presence connection is separate from the link.
    pub fn handle_link_down(&mut self, now: Time, peer: PeerId, how: LinkDown) {
        self.advance(now);
        self.links.remove(&peer);
        self.heart().link_down(now, peer, how);
        self.absorb();
    }

    /// Peer exchange: tells linked peer `to` where `peers` can be reached. Frames beyond
    /// [`codec::MAX_PEER_ADDRESSES`] addresses are split.
    pub fn share_peers(&mut self, to: PeerId, peers: &[codec::PeerAddress]) {
        if !self.links.contains_key(&to) {
            return;
        }
        for chunk in peers.chunks(codec::MAX_PEER_ADDRESSES) {
            self.send(to, &Message::Peers(chunk.to_vec()));
        }
    }

    /// Tells linked peer `to` where this node takes the link's views sealed, beside the link
    /// (a [`Message::ViewRoute`]); the peer's node reports it as an [`Event::ViewRoute`].
    pub fn offer_view_route(&mut self, to: PeerId, route: codec::ViewRoute) {
        if self.links.contains_key(&to) {
            self.send(to, &Message::ViewRoute(route));
        }
    }

    /// Tells linked peer `to` that its sealed views on `route` arrive (a
    /// [`Message::ViewsHeard`]); the peer's node reports it as an [`Event::ViewsHeard`].
    pub fn views_heard(&mut self, to: PeerId, route: u64) {
        if self.links.contains_key(&to) {
            self.send(to, &Message::ViewsHeard(route));
        }
    }

    /// Announces a graceful leave to every linked peer and stops leading. The node should be
    /// dropped once the leave frames are sent.
    pub fn leave(&mut self, now: Time) {
        self.settle();
        self.advance(now);
        // What was received goes with the last persist, not a heartbeat interval later; so
        // does the term this peer claimed last.
        self.received_unpersisted = None;
        self.record_claimed_term(None);
        let me = self.me();
        self.broadcast(&Message::Leave(me));
        self.heart().leave(now);
        self.absorb();
    }

    /// The next frame to send. Flushes coalesced local writes first: one sync round per peer.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.absorb();
        // Held by another thread (the pulse), the heart keeps its views: the pulse sends them
        // in the turn it holds it for, or at once after (see `Heart::has_views`).
        if let Some(t) = self.heart.try_lock().and_then(|mut h| h.poll_view()) {
            return Some(t);
        }
        if self.sync_due {
            self.sync_due = false;
            let due: Vec<PeerId> = self
                .links
                .iter_mut()
                .filter_map(|(p, l)| std::mem::take(&mut l.sync_due).then_some(*p))
                .collect();
            for peer in due {
                self.sync_with(peer);
            }
        }
        if self.doc_dirty {
            self.doc_dirty = false;
            let now = self.last_tick;
            for peer in self.links.keys().copied().collect::<Vec<_>>() {
                self.push_changes(peer, now);
            }
            // Everything left at once: the count starts again. (A push that waits for a
            // peer's answer, or for a job, keeps the count: when it leaves it carries them all.)
            if !self.links.values().any(|l| l.push_ready || l.push_pending) {
                self.unpushed = 0;
            }
        }
        if !self.leader_dirty.is_empty() {
            let records = std::mem::take(&mut self.leader_dirty);
            self.broadcast(&Message::Leader(records));
        }
        let t = self.out.pop_front()?;
        self.stats.frames_out += 1;
        self.stats.bytes_out += t.frame.len() as u64;
        Some(t)
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.absorb();
        self.events.pop_front()
    }

    /// Moves the clock (the heart's too, which detects a freeze: no input for longer than the
    /// suspect timeout) and takes in what the heart left.
    fn advance(&mut self, now: Time) {
        self.last_tick = self.last_tick.max(now);
        // Held by the pulse, the heart is being advanced by it: this input is no news of a
        // freeze, and what the heart left is taken in at the next input (the pulse wakes the
        // node for notes).
        let Some(mut heart) = self.heart.try_lock() else {
            return;
        };
        heart.advance(now);
        drop(heart);
        self.absorb();
    }

    fn send(&mut self, to: PeerId, message: &Message) {
        match codec::encode_frame(message, self.config.max_frame) {
            Ok(frame) => self.out.push_back(Transmit {
                to,
                frame: frame.into(),
            }),
            Err(e) => tracing::error!(peer = %to, error = %e, "dropping an outgoing message"),
        }
    }

    /// Sends `message` to every linked peer, encoded once.
    fn broadcast(&mut self, message: &Message) {
        if self.links.is_empty() {
            return;
        }
        match codec::encode_frame(message, self.config.max_frame) {
            Ok(frame) => {
                let frame = bytes::Bytes::from(frame);
                for &to in self.links.keys() {
                    self.out.push_back(Transmit {
                        to,
                        frame: frame.clone(),
                    });
                }
            }
            Err(e) => tracing::error!(error = %e, "dropping an outgoing broadcast"),
        }
    }
}

#[cfg(test)]
mod coalesce_tests;
#[cfg(test)]
mod held_heart_tests;
#[cfg(test)]
mod job_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod view_tests;
