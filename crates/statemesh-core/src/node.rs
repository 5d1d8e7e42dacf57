//! The per-peer state machine: inputs in, outputs out, no IO.
//!
//! Inputs are [`Node::handle_tick`], [`Node::handle_link_up`], [`Node::handle_link_down`],
//! [`Node::handle_payload`] (bytes received from a peer) and local writes ([`Node::put`],
//! [`Node::add`], [`Node::transact`], [`Node::leader_put`], ...). Every input takes the current
//! local monotonic time. Outputs are drained with [`Node::poll_transmit`] (frames to send to a
//! peer), [`Node::poll_event`] (application events) and [`Node::poll_persist`] (bytes to store);
//! [`Node::poll_timeout`] says when the next tick is due.
//!
//! Local writes made between two calls to [`Node::poll_transmit`] are coalesced into one sync
//! round per peer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use automerge::ChangeHash;
use autosurgeon::{Hydrate, Reconcile};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, Hello, LeaderRecord, Message, View};
use crate::election::{Election, Leadership, Term};
use crate::leader_records::LeaderStore;
use crate::liveness::{DeathCause, LinkDown, Liveness, LivenessChange, PeerStatus, Tombstone};
use crate::replica::{
    ApplyError, EntryChange, EntryKind, LoadReport, ReadError, Replica, Scope, Tx, WriteError,
    heads_digest,
};
use crate::{Config, Incarnation, MeshTag, PeerId, Time, Value};

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
}

/// A frame to send to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The peer.
    pub to: PeerId,
    /// The frame, header included. A broadcast is encoded once: its transmits share one buffer.
    pub frame: bytes::Bytes,
}

/// Bytes to persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persist {
    /// Append these incremental-save bytes to the stored state.
    Append {
        /// Sequence number to report back with [`Node::persisted`].
        seq: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Replace the stored state with this full snapshot (compaction).
    Snapshot {
        /// Sequence number to report back with [`Node::persisted`].
        seq: u64,
        /// The snapshot: encoded where it is first read.
        bytes: Snapshot,
    },
}

impl Persist {
    /// The sequence number to report back with [`Node::persisted`].
    pub fn seq(&self) -> u64 {
        match self {
            Self::Append { seq, .. } | Self::Snapshot { seq, .. } => *seq,
        }
    }

    /// The bytes to store. A snapshot is encoded here, at the first call: call it where
    /// encoding the whole document may take long (the runtime's store thread), not under the
    /// node.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Append { bytes, .. } => bytes,
            Self::Snapshot { bytes, .. } => bytes.bytes(),
        }
    }
}

/// A full save of the document, encoded when first read. Taking one costs a copy of the
/// document (cheap in Automerge 0.12: 0.5 ms at 10,000 records); encoding it costs a full save
/// (hundreds of milliseconds on a large document), which is why it waits for its reader:
/// [`Node::poll_persist`] runs under the runtime's lock on the node, the store's thread does
/// not.
#[derive(Clone)]
pub struct Snapshot {
    /// Boxed: a document is large, and [`Persist`] holds a snapshot in one variant.
    doc: Box<automerge::Automerge>,
    bytes: std::sync::OnceLock<Vec<u8>>,
}

impl Snapshot {
    fn new(doc: automerge::Automerge) -> Self {
        Self {
            doc: Box::new(doc),
            bytes: std::sync::OnceLock::new(),
        }
    }

    /// The encoded snapshot (a full save of the document).
    pub fn bytes(&self) -> &[u8] {
        self.bytes.get_or_init(|| self.doc.save())
    }
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Snapshot {}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("heads", &self.doc.get_heads())
            .field("encoded", &self.bytes.get().map(Vec::len))
            .finish()
    }
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
    /// Times this peer found its own ticks starved past the suspect timeout (a freeze, or a
    /// runtime too busy to tick) and moved to a new incarnation.
    pub freezes: u64,
    /// Times this peer learned it was judged dead while alive (a false suspicion, seen from
    /// its subject) and refuted with a new incarnation.
    pub suspicions_refuted: u64,
}

#[derive(Debug)]
struct Link {
    sync: automerge::sync::State,
    their_doc: Option<[u8; 8]>,
    /// The digest of the peer's leader records, from its last view.
    their_leader: Option<[u8; 8]>,
    /// Since when the documents have differed with no progress on either side.
    mismatch_since: Option<Time>,
    /// Views received since `mismatch_since` that showed the peer's document unchanged: a
    /// stall is a peer that keeps talking without progressing, not one too busy to talk.
    stalled_views: u32,
    leader_pushed: Option<Time>,
    /// Since when a sync message carrying changes is on its way to the peer, unanswered (see
    /// [`Node::push_changes`]).
    changes_in_flight: Option<Time>,
    /// Local changes wait for the peer's answer to the message in flight.
    push_pending: bool,
    /// Since when our last sync message to the peer is unanswered (no sync message came back).
    awaiting_answer: Option<Time>,
    /// Sync messages received since the documents last progressed, while they differ.
    unproductive_syncs: u32,
    /// A sync message of this peer is being applied, or one for it generated, away from the
    /// node (a [`SyncJob`] or a [`PushJob`]): nothing else touches its sync state until the job
    /// comes back.
    busy: bool,
    /// Local changes are to be pushed to this peer by the next [`PushJob`] (in the mode of
    /// [`Node::set_push_jobs`]).
    push_ready: bool,
    /// Which link this is (a link that went down and came up again is another).
    serial: u64,
}

/// A received sync message carrying changes, applied away from the node: see
/// [`Node::handle_payload_deferred`].
#[derive(Debug)]
pub struct SyncJob {
    from: PeerId,
    serial: u64,
    apply: crate::replica::SyncApply,
}

impl SyncJob {
    /// Applies the message to the job's copy of the document (the CRDT library's work: the
    /// bulk of a receive), anywhere, without the node.
    pub fn run(&mut self) {
        self.apply.run();
    }

    /// The peer that sent the message.
    pub fn from(&self) -> PeerId {
        self.from
    }
}

/// Sync messages carrying local changes, generated away from the node: see
/// [`Node::set_push_jobs`].
#[derive(Debug)]
pub struct PushJob {
    doc: automerge::Automerge,
    peers: Vec<PushTo>,
}

#[derive(Debug)]
struct PushTo {
    peer: PeerId,
    serial: u64,
    state: automerge::sync::State,
    message: Option<(Vec<u8>, bool)>,
}

impl PushJob {
    /// Generates the sync messages on the job's copy of the document (the CRDT library's work:
    /// the bulk of a push to many peers), anywhere, without the node.
    pub fn run(&mut self) {
        for to in &mut self.peers {
            to.message = Replica::generate_sync_on(&self.doc, &mut to.state);
        }
    }

    /// How many peers the job generates for.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}

/// Local changes since the last push up to which, in the mode of [`Node::set_push_jobs`], the
/// push is generated at once, under the node (a lone write leaves without a thread hop); more
/// make a [`PushJob`].
pub const PUSH_AT_ONCE: usize = 4;

#[derive(Debug)]
struct PendingWrite {
    hash: ChangeHash,
    holders: BTreeSet<PeerId>,
    at: Time,
}

impl PendingWrite {
    /// `peer` holds this write (`write`): reported once per peer.
    fn held_by(&mut self, write: WriteId, peer: PeerId, now: Time, events: &mut VecDeque<Event>) {
        if self.holders.insert(peer) {
            let after = now.saturating_since(self.at);
            events.push_back(Event::Replicated { write, peer, after });
        }
    }
}

/// Unchanged views of a peer, on top of the stall timeout, before its sync exchange is reset.
const STALLED_VIEWS: u32 = 3;

/// Sync messages received without progress while the documents differ after which a peer
/// is taken as stalled even if it looks busy (two peers can exchange messages for ever without
/// progress once their sync states are confused).
const UNPRODUCTIVE_SYNCS: u32 = 50;

/// How many stall timeouts a peer that has not answered our last sync message is taken for
/// busy rather than stalled.
const BUSY_STALLS: u32 = 10;

/// How long a local write is watched for replication acknowledgements (peers that join or
/// reconnect within this time still acknowledge it). See [`Node::replication_tracked_from`].
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// The most local writes tracked for replication acknowledgements at once: a write is no
/// longer watched once this many newer ones are.
pub const MAX_PENDING_WRITES: usize = 4096;

/// The state machine of one peer.
#[derive(Debug)]
pub struct Node {
    config: Config,
    mesh: MeshTag,
    /// Further tags accepted in a peer's hello (the mesh under other keys of a keyring).
    also_accepted: Vec<MeshTag>,
    live: Liveness,
    election: Election,
    replica: Replica,
    leader: LeaderStore,
    links: BTreeMap<PeerId, Link>,
    candidate_at: Time,
    settled: bool,
    left: bool,
    last_tick: Time,
    next_heartbeat: Time,
    /// Heartbeats fall on a grid of this phase (see [`Node::align_heartbeats`]), if set.
    heartbeat_phase: Option<Duration>,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    doc_dirty: bool,
    /// Pushes of local changes are generated by [`PushJob`]s (see [`Node::set_push_jobs`]).
    push_jobs: bool,
    /// Local changes made since the last push left (or its job was taken).
    unpushed: usize,
    leader_dirty: Vec<LeaderRecord>,
    next_write: u64,
    pending: BTreeMap<WriteId, PendingWrite>,
    persisted_heads: Vec<ChangeHash>,
    appends: usize,
    persist_seq: u64,
    unpersisted: Vec<WriteId>,
    in_persist: VecDeque<(u64, Vec<WriteId>)>,
    stats: Stats,
    scratch: std::cell::RefCell<Scratch>,
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
        Self {
            live: Liveness::new(me, &config),
            election: Election::default(),
            replica,
            leader: LeaderStore::default(),
            links: BTreeMap::new(),
            candidate_at: now + config.join_grace,
            settled: false,
            left: false,
            last_tick: now,
            next_heartbeat: now,
            heartbeat_phase: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
            doc_dirty: false,
            push_jobs: false,
            unpushed: 0,
            leader_dirty: Vec::new(),
            next_write: 0,
            pending: BTreeMap::new(),
            persisted_heads,
            // The first bytes persisted are a whole snapshot, genesis included, so that every
            // state file loads on its own.
            appends: config.compact_every,
            persist_seq: 0,
            unpersisted: Vec::new(),
            in_persist: VecDeque::new(),
            stats: Stats::default(),
            scratch: std::cell::RefCell::default(),
            next_link_serial: 0,
            mesh,
            also_accepted: Vec::new(),
            config,
        }
    }

    /// This peer's current incarnation.
    pub fn me(&self) -> Incarnation {
        self.live.me()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The hello this peer sends first on every link.
    pub fn hello(&self) -> Hello {
        Hello {
            version: codec::PROTOCOL_VERSION,
            mesh: self.mesh,
            incarnation: self.live.me(),
            eligible: self.live.my_eligible(),
        }
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
        if hello.incarnation.peer == self.live.me().peer {
            return Err(HelloError::SelfConnection);
        }
        Ok(())
    }

    /// Merges stored bytes (a snapshot and incremental saves found on disk) into the document,
    /// salvaging what can be read from a damaged file (see [`LoadReport`]).
    pub fn load(&mut self, bytes: &[u8]) -> Result<LoadReport, ApplyError> {
        let report = self.replica.load_stored(bytes)?;
        self.observe_stored_terms();
        // What was loaded is on disk already; the next persist compacts it all into a snapshot.
        self.appends = self.config.compact_every;
        Ok(report)
    }

    /// The runtime's discovery has found every peer it could initially: this peer may count
    /// itself as a leader candidate without waiting for the rest of its join grace.
    pub fn handle_settled(&mut self, now: Time) {
        self.advance(now);
        self.settled = true;
        self.reelect(now);
    }

    /// Puts this node's heartbeats, after the next one, on the instants `phase + k *
    /// heartbeat_interval` of its clock instead of one interval after each beat.
    ///
    /// Windows of one machine that align on the machine's monotonic clock send their views at
    /// the same instants, so each wakes once per interval for all the views it receives (and
    /// once for their acknowledgements) instead of once per peer: idle CPU falls, failure
    /// detection is unchanged (still one view per interval from each peer).
    pub fn align_heartbeats(&mut self, phase: Duration) {
        self.heartbeat_phase = Some(phase);
    }

    /// When the heartbeat after one sent at `now` is due.
    fn next_beat_after(&self, now: Time) -> Time {
        let interval = self.config.heartbeat_interval;
        let Some(phase) = self.heartbeat_phase else {
            return now + interval;
        };
        let i = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let phase = u64::try_from(phase.as_micros()).unwrap_or(0) % i;
        let t = now.as_micros();
        let next = if t < phase {
            phase
        } else {
            ((t - phase) / i + 1)
                .saturating_mul(i)
                .saturating_add(phase)
        };
        Time::from_micros(next)
    }

    /// Moves the node's clock to `now` without ticking: the runtime calls it before a local
    /// write, so that the write is stamped with the time it was made (its replication delays
    /// are measured from it) rather than with the last tick's, up to a heartbeat earlier. Like
    /// every input, it notices a freeze (no input for longer than the suspect timeout).
    pub fn handle_time(&mut self, now: Time) {
        self.advance(now);
    }

    /// Advances time: heartbeats, failure detection, election, sync stall recovery.
    pub fn handle_tick(&mut self, now: Time) {
        self.advance(now);
        self.expire_pending(now);
        if self.left {
            return;
        }
        if now >= self.next_heartbeat {
            self.live.beat();
            self.next_heartbeat = self.next_beat_after(now);
            self.send_views(now);
        }
        let mut changes = Vec::new();
        self.live.judge(now, &mut changes);
        self.apply_liveness(changes, now);
        self.reelect(now);
        let waiting: Vec<PeerId> = self
            .links
            .iter()
            .filter(|(_, l)| l.push_pending && !l.busy)
            .map(|(p, _)| *p)
            .collect();
        for peer in waiting {
            self.push_changes(peer, now);
        }
        let stall = self.config.sync_stall_timeout;
        // A sync exchange that has made no progress (no new heads on either side) for the
        // stall timeout while the documents differ is restarted from a fresh sync state: lost,
        // duplicated or reordered messages can leave Automerge's per-peer state believing
        // something was delivered that never was.
        let stalled: Vec<PeerId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                // A peer that has not answered our last sync message for a heartbeat is busy
                // (it applies a backlog, and keeps sending views meanwhile), not stalled: a
                // reset would make Automerge send it everything again. Up to a bound: a message
                // lost on a lossy network is never answered. (A peer that answers at once but
                // makes no progress is stalled: the exchange is reset.)
                let unanswered = |since: Option<Time>| {
                    since.is_some_and(|t| now.saturating_since(t) < stall * BUSY_STALLS)
                };
                // A peer that keeps answering without progress is stalled whatever else.
                let busy = l.unproductive_syncs < UNPRODUCTIVE_SYNCS
                    && (unanswered(l.awaiting_answer) || unanswered(l.changes_in_flight));
                !l.busy
                    && !busy
                    && l.stalled_views >= STALLED_VIEWS
                    && l.mismatch_since
                        .is_some_and(|t| now.saturating_since(t) > stall)
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in stalled {
            if let Some(link) = self.links.get_mut(&peer) {
                link.sync = Replica::new_sync_state();
                link.mismatch_since = Some(now);
                link.stalled_views = 0;
                link.unproductive_syncs = 0;
                self.stats.sync_resets += 1;
            }
            self.sync_with(peer);
        }
    }

    /// The next time [`handle_tick`](Self::handle_tick) must be called.
    pub fn poll_timeout(&self) -> Time {
        let mut t = self.next_heartbeat;
        if let Some(d) = self.live.next_deadline() {
            t = t.min(d);
        }
        if !self.settled && self.candidate_at > self.last_tick {
            t = t.min(self.candidate_at);
        }
        let hb = self.config.heartbeat_interval;
        for link in self.links.values().filter(|l| l.push_pending && !l.busy) {
            if let Some(since) = link.changes_in_flight {
                t = t.min(since + hb);
            }
        }
        t
    }

    /// A link to `peer` (whose hello passed [`check_hello`](Self::check_hello)) is up.
    pub fn handle_link_up(&mut self, now: Time, hello: &Hello) {
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
                stalled_views: 0,
                leader_pushed: None,
                changes_in_flight: None,
                push_pending: false,
                awaiting_answer: None,
                unproductive_syncs: 0,
                busy: false,
                push_ready: false,
                serial: self.next_link_serial,
            },
        );
        let mut changes = Vec::new();
        let beat = crate::vv::Beat {
            incarnation: hello.incarnation.number,
            counter: 0,
        };
        self.live
            .observe_beat(peer, beat, hello.eligible, now, &mut changes);
        self.apply_liveness(changes, now);
        if self.left {
            self.send(peer, &Message::Leave(self.live.me()));
            return;
        }
        let view = self.view(now);
        self.send(peer, &Message::View(view));
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
        if self.links.remove(&peer).is_none() && how == LinkDown::Hint {
            return;
        }
        let mut changes = Vec::new();
        self.live.link_down(peer, how, now, &mut changes);
        self.apply_liveness(changes, now);
        self.reelect(now);
    }

    /// Handles one frame payload (without its length header) received from `from`.
    pub fn handle_payload(
        &mut self,
        now: Time,
        from: PeerId,
        payload: &[u8],
    ) -> Result<(), ReceiveError> {
        self.stats.bytes_in += (payload.len() + codec::HEADER_LEN) as u64;
        self.stats.frames_in += 1;
        let message =
            codec::decode_message(payload).inspect_err(|_| self.stats.decode_errors += 1)?;
        self.handle_message(now, from, message)
    }

    /// Handles one frame payload like [`handle_payload`](Self::handle_payload), except a sync
    /// message that carries changes: that one is returned as a [`SyncJob`] to be
    /// [run](SyncJob::run) anywhere (another thread) and given back to
    /// [`finish_sync`](Self::finish_sync). Meanwhile the node takes every other input — ticks,
    /// views, local writes — so liveness never waits for the CRDT library's apply, however
    /// large the message. The runtime runs one job at a time and keeps the sender's later
    /// frames until it finished (they may depend on it).
    pub fn handle_payload_deferred(
        &mut self,
        now: Time,
        from: PeerId,
        payload: &[u8],
    ) -> Result<Option<SyncJob>, ReceiveError> {
        self.stats.bytes_in += (payload.len() + codec::HEADER_LEN) as u64;
        self.stats.frames_in += 1;
        let message =
            codec::decode_message(payload).inspect_err(|_| self.stats.decode_errors += 1)?;
        let Message::Sync(bytes) = message else {
            return self.handle_message(now, from, message).map(|()| None);
        };
        self.advance(now);
        let Some(link) = self.links.get_mut(&from) else {
            return Err(ReceiveError::NoLink(from));
        };
        let decoded =
            Replica::decode_sync(&bytes).inspect_err(|_| self.stats.decode_errors += 1)?;
        if decoded.changes.is_empty() {
            let before = self
                .replica
                .receive_decoded(&mut link.sync, decoded)
                .inspect_err(|_| self.stats.decode_errors += 1)?;
            self.after_sync(now, from, before, Vec::new());
            return Ok(None);
        }
        link.busy = true;
        Ok(Some(SyncJob {
            from,
            serial: link.serial,
            apply: self.replica.start_sync(&link.sync, decoded),
        }))
    }

    /// Takes back a [`SyncJob`] that ran: its changes join the document (with the local writes
    /// made meanwhile), the sender's sync state moves on, and the node answers it. An error
    /// means the message was malformed: the link should be closed, as for
    /// [`handle_payload`](Self::handle_payload). A job whose link went down meanwhile is
    /// dropped.
    ///
    /// Returns the job again when local writes made while it ran are many: they are applied to
    /// the job's copy off the node too (run it again and give it back), so that what the node
    /// does under its lock stays small however fast the application writes.
    pub fn finish_sync(
        &mut self,
        now: Time,
        job: SyncJob,
    ) -> Result<Option<SyncJob>, ReceiveError> {
        self.advance(now);
        let SyncJob {
            from,
            serial,
            apply,
        } = job;
        let Some(link) = self.links.get_mut(&from).filter(|l| l.serial == serial) else {
            return Ok(None);
        };
        link.busy = false;
        let applied = match self
            .replica
            .finish_sync(apply)
            .inspect_err(|_| self.stats.decode_errors += 1)?
        {
            crate::replica::SyncFinish::Done(applied) => *applied,
            crate::replica::SyncFinish::Again(apply) => {
                link.busy = true;
                return Ok(Some(SyncJob {
                    from,
                    serial,
                    apply: *apply,
                }));
            }
        };
        if let Some(link) = self.links.get_mut(&from) {
            link.sync = applied.state;
        }
        self.after_sync(now, from, applied.before, applied.changes);
        Ok(None)
    }

    /// In this mode (off by default) a push of many local changes to the linked peers (the
    /// sync messages that carry a burst of writes) is not generated under the node: it is
    /// taken with [`start_push`](Self::start_push) as a [`PushJob`], [run](PushJob::run)
    /// anywhere, and given back to [`finish_push`](Self::finish_push). Up to [`PUSH_AT_ONCE`]
    /// local changes still leave at once from [`poll_transmit`](Self::poll_transmit).
    pub fn set_push_jobs(&mut self, on: bool) {
        self.push_jobs = on;
    }

    /// The push waiting to be generated off the node, if any (see
    /// [`set_push_jobs`](Self::set_push_jobs)). Call it after
    /// [`poll_transmit`](Self::poll_transmit) has run dry; the peers it covers are busy until
    /// [`finish_push`](Self::finish_push).
    pub fn start_push(&mut self) -> Option<PushJob> {
        let mut peers = Vec::new();
        for (peer, link) in &mut self.links {
            if link.push_ready && !link.busy {
                link.push_ready = false;
                link.busy = true;
                peers.push(PushTo {
                    peer: *peer,
                    serial: link.serial,
                    state: link.sync.clone(),
                    message: None,
                });
            }
        }
        if peers.is_empty() {
            return None;
        }
        if !self.links.values().any(|l| l.push_ready) {
            self.unpushed = 0;
        }
        Some(PushJob {
            doc: self.replica.doc().clone(),
            peers,
        })
    }

    /// Takes back a [`PushJob`] that ran: the peers' sync states move on and the messages
    /// leave (through [`poll_transmit`](Self::poll_transmit)). Peers whose link went down
    /// meanwhile are skipped.
    pub fn finish_push(&mut self, now: Time, job: PushJob) {
        self.advance(now);
        let now = self.last_tick;
        for to in job.peers {
            let Some(link) = self
                .links
                .get_mut(&to.peer)
                .filter(|l| l.serial == to.serial)
            else {
                continue;
            };
            link.busy = false;
            link.sync = to.state;
            // Local changes made while the job ran (they asked for a push meanwhile) go with
            // the next flush, coalesced with the answer to this message.
            if link.push_pending {
                self.doc_dirty = true;
            }
            if let Some((bytes, carries)) = to.message {
                if carries {
                    link.changes_in_flight.get_or_insert(now);
                }
                link.awaiting_answer.get_or_insert(now);
                link.push_pending = false;
                self.stats.sync_out += 1;
                self.send(to.peer, &Message::Sync(bytes));
            }
        }
    }

    /// Handles one decoded message received from `from`.
    pub fn handle_message(
        &mut self,
        now: Time,
        from: PeerId,
        message: Message,
    ) -> Result<(), ReceiveError> {
        self.advance(now);
        if !self.links.contains_key(&from) {
            return Err(ReceiveError::NoLink(from));
        }
        match message {
            Message::Hello(_) => return Err(ReceiveError::UnexpectedHello),
            Message::View(view) => self.on_view(now, from, view),
            Message::Leave(inc) => {
                let mut changes = Vec::new();
                let tomb = Tombstone {
                    incarnation: inc.number,
                    cause: DeathCause::Left,
                };
                self.live
                    .observe_received_tombstone(inc.peer, tomb, now, &mut changes);
                self.apply_liveness(changes, now);
                self.reelect(now);
            }
            Message::Sync(bytes) => self
                .on_sync(now, from, &bytes)
                .inspect_err(|_| self.stats.decode_errors += 1)?,
            Message::Peers(peers) => {
                self.events.push_back(Event::PeerAddresses { from, peers });
            }
            Message::Leader(records) => {
                for r in records {
                    let change = EntryChange {
                        kind: EntryKind::Leader,
                        channel: r.channel.clone(),
                        key: r.key.clone(),
                        by: Some(r.writer),
                    };
                    let writer_known_dead = self.live.incarnation_of(&r.writer).is_some()
                        && !self.live.is_live(&r.writer);
                    if writer_known_dead {
                        continue;
                    }
                    // A record is proof that its writer led under its term: known from now on,
                    // even before the writer's claim arrives in a view.
                    self.election.observe(crate::leader_records::term_of(&r));
                    if self.leader.merge(r) {
                        self.events.push_back(Event::Changed(change));
                    }
                }
                self.reelect(now);
            }
        }
        Ok(())
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

    /// Announces a graceful leave to every linked peer and stops leading. The node should be
    /// dropped once the leave frames are sent.
    pub fn leave(&mut self, now: Time) {
        self.advance(now);
        self.left = true;
        let me = self.live.me();
        self.broadcast(&Message::Leave(me));
        if let Some(term) = self.election.my_term() {
            self.election.step_down();
            self.events.push_back(Event::Deposed { term });
        }
        self.reelect(now);
    }

    /// The next frame to send. Flushes coalesced local writes first: one sync round per peer.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.doc_dirty {
            self.doc_dirty = false;
            let now = self.last_tick;
            for peer in self.links.keys().copied().collect::<Vec<_>>() {
                self.push_changes(peer, now);
            }
            if !self.links.values().any(|l| l.push_ready) {
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
        self.events.pop_front()
    }

    /// The next bytes to persist, if the document changed since the last ones.
    pub fn poll_persist(&mut self) -> Option<Persist> {
        let heads = self.replica.heads();
        if heads == self.persisted_heads {
            return None;
        }
        self.persist_seq += 1;
        let seq = self.persist_seq;
        let persist = if self.appends >= self.config.compact_every {
            self.appends = 0;
            Persist::Snapshot {
                seq,
                bytes: Snapshot::new(self.replica.doc().clone()),
            }
        } else {
            self.appends += 1;
            Persist::Append {
                seq,
                bytes: self.replica.save_after(&self.persisted_heads),
            }
        };
        self.persisted_heads = heads;
        self.in_persist
            .push_back((seq, std::mem::take(&mut self.unpersisted)));
        Some(persist)
    }

    /// The runtime stored (and synced to disk) the bytes of persist `seq` and all before it.
    pub fn persisted(&mut self, seq: u64) {
        while self.in_persist.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, writes)) = self.in_persist.pop_front() {
                self.events
                    .extend(writes.into_iter().map(|write| Event::Durable { write }));
            }
        }
    }

    // ---- local writes ----

    /// Writes record `key` of `channel` (typed through autosurgeon).
    pub fn put<T: Reconcile>(
        &mut self,
        channel: &str,
        key: &str,
        value: &T,
        scope: Scope,
    ) -> Result<Written, WriteError> {
        self.transact(|tx| tx.put(channel, key, value, scope))
            .map(|(_, w)| w)
    }

    /// Deletes record `key` of `channel`.
    pub fn delete(&mut self, channel: &str, key: &str) -> Result<Written, WriteError> {
        self.transact(|tx| tx.delete(channel, key)).map(|(_, w)| w)
    }

    /// Adds `by` to counter `name`.
    pub fn add(&mut self, name: &str, by: i64, scope: Scope) -> Result<Written, WriteError> {
        self.transact(|tx| tx.add(name, by, scope)).map(|(_, w)| w)
    }

    /// Makes several writes as one atomic change.
    pub fn transact<R>(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, WriteError>,
    ) -> Result<(R, Written), WriteError> {
        let before = self.replica.heads();
        let (r, hash) = self.replica.transact(f)?;
        Ok((r, self.after_local_change(&before, hash)))
    }

    /// Writes leader record `key` of `channel` under `term`, which must be this peer's current
    /// leadership term (the fencing token). Checks for a freeze first: a peer that was frozen
    /// has lost its leadership and its write is refused. A value equal to the stored one is not
    /// rewritten.
    pub fn leader_put<T: Reconcile>(
        &mut self,
        now: Time,
        term: u64,
        channel: &str,
        key: &str,
        value: Option<&T>,
    ) -> Result<Written, WriteError> {
        self.advance(now);
        self.reelect(now);
        if self.election.my_term() != Some(term) || self.left {
            return Err(WriteError::NotLeader { term });
        }
        crate::replica::check_name(channel).map_err(WriteError::InvalidName)?;
        crate::replica::check_name(key).map_err(WriteError::InvalidName)?;
        let tokens = value
            .map(|v| crate::value::reconcile_to_value(v).map(|v| v.to_tokens()))
            .transpose()
            .map_err(|e| WriteError::Build(e.to_string()))?;
        self.next_write += 1;
        let id = WriteId(self.next_write);
        let me = self.live.me().peer;
        if let Some(old) = self.leader.get(channel, key)
            && old.writer == me
            && old.term == term
            && old.value == tokens
        {
            return Ok(Written { id, changed: false });
        }
        let record = LeaderRecord {
            channel: channel.into(),
            key: key.into(),
            writer: me,
            term,
            seq: self.leader.next_seq(),
            value: tokens,
        };
        self.leader.merge(record.clone());
        self.leader_dirty.push(record);
        self.events.push_back(Event::Changed(EntryChange {
            kind: EntryKind::Leader,
            channel: channel.into(),
            key: key.into(),
            by: Some(me),
        }));
        Ok(Written { id, changed: true })
    }

    // ---- reads ----

    /// Reads record `key` of `channel`.
    pub fn get<T: Hydrate>(&self, channel: &str, key: &str) -> Result<Option<T>, ReadError> {
        self.replica.get(channel, key, |p| self.live.is_live(p))
    }

    /// The visible keys of `channel`.
    pub fn keys(&self, channel: &str) -> Vec<String> {
        self.replica.keys(channel, |p| self.live.is_live(p))
    }

    /// Channels holding records.
    pub fn channels(&self) -> Vec<String> {
        self.replica.channels()
    }

    /// The value of counter `name` (presence-scoped entries of dead writers left out).
    pub fn counter(&self, name: &str) -> i64 {
        self.replica.counter(name, |p| self.live.is_live(p))
    }

    /// Names of all counters.
    pub fn counter_names(&self) -> Vec<String> {
        self.replica.counter_names()
    }

    /// Reads leader record `key` of `channel`, with the term it was written under: present only
    /// if written by a live leader under the newest known term.
    pub fn leader_get<T: Hydrate>(
        &self,
        channel: &str,
        key: &str,
    ) -> Result<Option<(T, Term)>, ReadError> {
        let Some(r) = self
            .leader
            .visible(channel, key, self.election.newest(), |p| {
                self.live.is_live(p)
            })
        else {
            return Ok(None);
        };
        let Some(tokens) = &r.value else {
            return Ok(None);
        };
        let value = Value::from_tokens(tokens).map_err(|_| {
            ReadError::Hydrate(autosurgeon::HydrateError::unexpected(
                "a value",
                "a malformed value".into(),
            ))
        })?;
        Ok(Some((
            self.scratch.borrow_mut().hydrate(&value)?,
            crate::leader_records::term_of(r),
        )))
    }

    /// The visible keys of leader channel `channel`.
    pub fn leader_keys(&self, channel: &str) -> Vec<String> {
        self.leader
            .keys(channel, self.election.newest(), |p| self.live.is_live(p))
    }

    /// Leader channels holding records.
    pub fn leader_channels(&self) -> Vec<String> {
        self.leader.channels()
    }

    /// The current leadership.
    pub fn leadership(&self) -> Leadership {
        self.election.current()
    }

    /// The number of the term under which this peer leads, if it does.
    pub fn my_term(&self) -> Option<u64> {
        self.election.my_term()
    }

    /// The term under which this peer leads, if it does: its number, led by this peer.
    pub fn my_term_id(&self) -> Option<Term> {
        Some(Term::new(self.election.my_term()?, self.live.me().peer))
    }

    /// The newest term this peer knows of (its own included).
    pub fn newest_term(&self) -> Option<Term> {
        self.election.newest()
    }

    /// Whether `peer`'s highest known incarnation is live.
    pub fn is_live(&self, peer: &PeerId) -> bool {
        self.live.is_live(peer)
    }

    /// Whether incarnation `number` of `peer` was judged dead.
    pub fn is_dead(&self, peer: &PeerId, number: u64) -> bool {
        self.live.is_dead(peer, number)
    }

    /// Live peers other than this one.
    pub fn live_peers(&self) -> Vec<PeerId> {
        self.live.live_peers().collect()
    }

    /// Peers with a link up.
    pub fn linked_peers(&self) -> Vec<PeerId> {
        self.links.keys().copied().collect()
    }

    /// Local writes with an id below this one are no longer watched for replication
    /// acknowledgements (older than [`PENDING_TTL`], or [`MAX_PENDING_WRITES`] newer ones are
    /// watched): no further [`Event::Replicated`] comes for them. A runtime uses it to end the
    /// waits of such writes instead of letting them hang.
    pub fn replication_tracked_from(&self) -> WriteId {
        self.pending
            .first_key_value()
            .map_or(WriteId(self.next_write + 1), |(id, _)| *id)
    }

    /// Whether this node is past joining: discovery settled, or its join grace is over. The
    /// peers it knows by then are the ones that were there when it started.
    pub fn joined(&self, now: Time) -> bool {
        self.settled || now >= self.candidate_at
    }

    /// Whether every linked peer's last view showed the same document and leader records as
    /// this node holds (true with no links).
    pub fn in_sync(&self) -> bool {
        let doc = heads_digest(&self.replica.heads());
        let leader = self.leader.digest();
        self.links
            .values()
            .all(|l| l.their_doc == Some(doc) && l.their_leader == Some(leader))
    }

    /// Why this peer leads or not, at local time `now`.
    pub fn explain(&self, now: Time) -> Explanation {
        Explanation {
            me: self.live.me(),
            leadership: self.election.current(),
            max_term: self.election.max_term(),
            newest_term: self.election.newest(),
            me_candidate: self.me_candidate(now),
            peers: self.live.explain(now),
        }
    }

    /// The document heads.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.replica.heads()
    }

    /// The replicated document (read-only).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The leader record store (read-only).
    pub fn leader_store(&self) -> &LeaderStore {
        &self.leader
    }

    /// Counters of what this node did.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ---- internals ----

    fn me_candidate(&self, now: Time) -> bool {
        self.live.my_eligible() && !self.left && (self.settled || now >= self.candidate_at)
    }

    /// Moves the clock; detects that this process was frozen (no tick for longer than the
    /// suspect timeout): its leadership is over, its silence was its own, and it rejoins.
    fn advance(&mut self, now: Time) {
        if now.saturating_since(self.last_tick) > self.config.suspect_timeout {
            self.live.refresh_all(now);
            if let Some(term) = self.election.my_term() {
                self.election.step_down();
                self.events.push_back(Event::Deposed { term });
            }
            let inc = self.live.new_incarnation(0);
            self.stats.freezes += 1;
            self.events.push_back(Event::Refuted(inc));
            self.candidate_at = now + self.config.join_grace;
            self.settled = false;
            self.next_heartbeat = now;
        }
        self.last_tick = self.last_tick.max(now);
    }

    fn after_local_change(&mut self, before: &[ChangeHash], hash: Option<ChangeHash>) -> Written {
        self.next_write += 1;
        let id = WriteId(self.next_write);
        let Some(hash) = hash else {
            return Written { id, changed: false };
        };
        self.doc_dirty = true;
        self.unpushed += 1;
        for change in self.replica.touched_since(before) {
            self.events.push_back(Event::Changed(change));
        }
        self.unpersisted.push(id);
        // The time of the last input: the runtime gives the write's own time with
        // `handle_time` just before it.
        let now = self.last_tick;
        self.expire_pending(now);
        if self.pending.len() >= MAX_PENDING_WRITES {
            self.pending.pop_first();
        }
        self.pending.insert(
            id,
            PendingWrite {
                hash,
                holders: BTreeSet::new(),
                at: now,
            },
        );
        Written { id, changed: true }
    }

    /// Stops watching local writes older than [`PENDING_TTL`] (they are in id order).
    fn expire_pending(&mut self, now: Time) {
        while self
            .pending
            .first_key_value()
            .is_some_and(|(_, w)| now.saturating_since(w.at) >= PENDING_TTL)
        {
            self.pending.pop_first();
        }
    }

    /// Takes in the terms recorded in the document: the newest stored term, and the greatest
    /// stored number (so that a new claim goes above every number ever stored).
    fn observe_stored_terms(&mut self) {
        if let Some(t) = self.replica.newest_stored_term() {
            self.election.observe(t);
        }
        self.election.observe_term(self.replica.max_stored_term());
    }

    fn reelect(&mut self, now: Time) {
        let old_term = self.election.my_term();
        let outcome = self.election.update(&self.live, self.me_candidate(now));
        if outcome.lost
            && let Some(term) = old_term
        {
            self.events.push_back(Event::Deposed { term });
        }
        if let Some(term) = outcome.new_term {
            self.events.push_back(Event::Elected { term });
            let before = self.replica.heads();
            match self.replica.record_term(term) {
                Ok(hash) => {
                    self.after_local_change(&before, hash);
                }
                Err(e) => tracing::warn!(error = %e, "could not record leadership term"),
            }
        }
        if let Some(l) = outcome.changed {
            self.stats.leadership_changes += 1;
            self.events.push_back(Event::Leadership(l));
            // Tell everyone at once: claims and leadership news should not wait a heartbeat.
            self.send_views(now);
        }
    }

    fn apply_liveness(&mut self, changes: Vec<LivenessChange>, now: Time) {
        for change in changes {
            match change {
                LivenessChange::Up(inc) => {
                    self.events.push_back(Event::PeerUp(inc));
                    self.presence_changed(inc.peer);
                }
                LivenessChange::Down(inc, cause) => {
                    self.events.push_back(Event::PeerDown {
                        incarnation: inc,
                        cause,
                    });
                    self.presence_changed(inc.peer);
                    let live = &self.live;
                    self.leader.prune(|w| !live.is_live(w));
                }
                LivenessChange::Refuted(inc) => {
                    self.stats.suspicions_refuted += 1;
                    self.events.push_back(Event::Refuted(inc));
                    self.send_views(now);
                }
            }
        }
    }

    fn presence_changed(&mut self, writer: PeerId) {
        for change in self.replica.presence_entries_of(writer) {
            self.events.push_back(Event::Changed(change));
        }
    }

    fn view(&self, now: Time) -> View {
        let (beats, tombs) = self.live.gossip(now);
        let claims = self.election.gossip(beats.iter().map(|b| b.peer));
        View {
            beats,
            tombs,
            claims,
            doc: heads_digest(&self.replica.heads()),
            leader: self.leader.digest(),
        }
    }

    fn send_views(&mut self, now: Time) {
        if self.links.is_empty() || self.left {
            return;
        }
        let view = Message::View(self.view(now));
        self.broadcast(&view);
    }

    fn on_view(&mut self, now: Time, from: PeerId, view: View) {
        let mut changes = Vec::new();
        for b in &view.beats {
            self.live
                .observe_beat(b.peer, b.beat, b.eligible, now, &mut changes);
        }
        for (peer, tomb) in &view.tombs {
            self.live
                .observe_received_tombstone(*peer, *tomb, now, &mut changes);
        }
        for (peer, term) in &view.claims {
            self.election.observe_claim(*peer, *term);
        }
        self.apply_liveness(changes, now);
        self.reelect(now);
        let mine = heads_digest(&self.replica.heads());
        let leader_mismatch = view.leader != self.leader.digest();
        let Some(link) = self.links.get_mut(&from) else {
            return;
        };
        let progressed = link.their_doc != Some(view.doc);
        link.their_doc = Some(view.doc);
        link.their_leader = Some(view.leader);
        if view.doc == mine {
            link.mismatch_since = None;
        } else {
            if progressed || link.mismatch_since.is_none() {
                link.mismatch_since = Some(now);
                link.stalled_views = 0;
                link.unproductive_syncs = 0;
            } else {
                link.stalled_views = link.stalled_views.saturating_add(1);
            }
            self.sync_with(from);
        }
        if leader_mismatch {
            self.push_leader(from, now);
        }
        if view.doc == mine {
            // Its document is this one, so it holds every pending local write. The sync
            // exchange alone may never say so: its last message can name heads not yet known
            // here (changes still on their way, or relayed later by a third peer), and once
            // the documents are equal no further message comes.
            self.pending_held_by(now, from);
        }
    }

    /// `peer` holds every pending local write.
    fn pending_held_by(&mut self, now: Time, peer: PeerId) {
        for (write, w) in &mut self.pending {
            w.held_by(*write, peer, now, &mut self.events);
        }
    }

    fn on_sync(&mut self, now: Time, from: PeerId, bytes: &[u8]) -> Result<(), ReceiveError> {
        let Some(link) = self.links.get_mut(&from) else {
            return Err(ReceiveError::NoLink(from));
        };
        let before = self.replica.receive_sync(&mut link.sync, bytes)?;
        let after = self.replica.heads();
        let changes = if before == after {
            Vec::new()
        } else {
            self.replica.touched_since(&before)
        };
        self.after_sync(now, from, before, changes);
        Ok(())
    }

    /// What follows a sync message from `from` applied on top of heads `before`, the entries
    /// its changes touched being `changes`.
    fn after_sync(
        &mut self,
        now: Time,
        from: PeerId,
        before: Vec<ChangeHash>,
        changes: Vec<EntryChange>,
    ) {
        if let Some(link) = self.links.get_mut(&from) {
            // The peer answered: whatever local changes waited for it leave with the reply
            // below.
            link.changes_in_flight = None;
            link.push_pending = false;
            link.awaiting_answer = None;
        }
        self.stats.sync_in += 1;
        let after = self.replica.heads();
        if before != after {
            self.events.extend(changes.into_iter().map(Event::Changed));
            self.observe_stored_terms();
            self.reelect(now);
        }
        if let Some(link) = self.links.get_mut(&from) {
            if link.their_doc == Some(heads_digest(&after)) {
                link.mismatch_since = None;
                link.unproductive_syncs = 0;
            } else if before != after && link.mismatch_since.is_some() {
                link.mismatch_since = Some(now);
                link.stalled_views = 0;
                link.unproductive_syncs = 0;
            } else if before == after {
                link.unproductive_syncs = link.unproductive_syncs.saturating_add(1);
            }
        }
        self.sync_with(from);
        self.check_replicated(now, from);
    }

    fn check_replicated(&mut self, now: Time, peer: PeerId) {
        let Some(link) = self.links.get(&peer) else {
            return;
        };
        let waiting: Vec<(WriteId, ChangeHash)> = self
            .pending
            .iter()
            .filter(|(_, w)| !w.holders.contains(&peer))
            .map(|(id, w)| (*id, w.hash))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let hashes: Vec<ChangeHash> = waiting.iter().map(|(_, h)| *h).collect();
        let held = self.replica.held_by(&link.sync, &hashes);
        for ((write, _), held) in waiting.into_iter().zip(held) {
            if !held {
                continue;
            }
            if let Some(w) = self.pending.get_mut(&write) {
                w.held_by(write, peer, now, &mut self.events);
            }
        }
    }

    fn sync_with(&mut self, peer: PeerId) {
        let now = self.last_tick;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if link.busy {
            // Its sync state is with a job: the answer to the job's message carries it all.
            link.push_pending = true;
            return;
        }
        if let Some((bytes, carries)) = self.replica.generate_sync_counted(&mut link.sync) {
            if carries {
                link.changes_in_flight.get_or_insert(now);
            }
            link.awaiting_answer.get_or_insert(now);
            link.push_pending = false;
            self.stats.sync_out += 1;
            self.send(peer, &Message::Sync(bytes));
        }
    }

    /// Sends `peer` the local changes it lacks, coalesced: while a message carrying changes
    /// is on its way, unanswered, new local changes wait for the peer's answer (they leave
    /// with the reply to it, all in one message) or for a heartbeat interval to pass. A lone
    /// write leaves at once; a burst leaves as one message per round trip per peer, which the
    /// receiver applies in one batch (Automerge's apply costs far less per change in batches)
    /// instead of one turn per change.
    fn push_changes(&mut self, peer: PeerId, now: Time) {
        let hb = self.config.heartbeat_interval;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if link
            .changes_in_flight
            .is_some_and(|t| now.saturating_since(t) < hb)
        {
            link.push_pending = true;
            return;
        }
        link.changes_in_flight = None;
        link.push_pending = false;
        if self.push_jobs && self.unpushed > PUSH_AT_ONCE {
            link.push_ready = true;
            return;
        }
        self.sync_with(peer);
    }

    fn push_leader(&mut self, peer: PeerId, now: Time) {
        let hb = self.config.heartbeat_interval;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if link
            .leader_pushed
            .is_some_and(|t| now.saturating_since(t) < hb)
            || self.leader.is_empty()
        {
            return;
        }
        link.leader_pushed = Some(now);
        let all = self.leader.all();
        self.send(peer, &Message::Leader(all));
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

/// Converts between typed values and [`Value`] through autosurgeon, using a scratch document
/// whose transactions are always rolled back (so it never grows).
#[derive(Debug)]
struct Scratch(automerge::Automerge);

impl Default for Scratch {
    fn default() -> Self {
        Self(automerge::Automerge::new().with_actor(automerge::ActorId::from([0u8; 16].as_slice())))
    }
}

impl Scratch {
    fn hydrate<T: Hydrate>(&mut self, value: &Value) -> Result<T, ReadError> {
        let mut tx = self.0.transaction();
        let out = autosurgeon::reconcile_prop(&mut tx, automerge::ROOT, "v", value)
            .map_err(|e| {
                ReadError::Hydrate(autosurgeon::HydrateError::unexpected(
                    "a storable value",
                    e.to_string(),
                ))
            })
            .and_then(|()| Ok(autosurgeon::hydrate_prop(&tx, automerge::ROOT, "v")?));
        tx.rollback();
        out
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::codec::{FrameDecoder, encode_frame};

    fn node(seed: u64) -> Node {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let id = PeerId::generate(1_000 + seed, &mut rng);
        Node::new(
            Config::default(),
            MeshTag::derive(&[1; 32], "t"),
            id,
            &mut rng,
            Time::ZERO,
        )
    }

    fn deliver(from: &mut Node, to: &mut Node, now: Time) -> bool {
        let from_id = from.me().peer;
        let mut moved = false;
        while let Some(t) = from.poll_transmit() {
            moved = true;
            let mut d = FrameDecoder::new(1 << 24);
            d.extend(&t.frame);
            let payload = d.next_payload().expect("valid").expect("complete");
            to.handle_payload(now, from_id, &payload).expect("accepted");
        }
        moved
    }

    fn pump(a: &mut Node, b: &mut Node, now: Time) {
        for _ in 0..50 {
            let ab = deliver(a, b, now);
            let ba = deliver(b, a, now);
            if !ab && !ba {
                return;
            }
        }
        panic!("sync did not settle");
    }

    fn linked() -> (Node, Node) {
        let (mut a, mut b) = (node(1), node(2));
        let (ha, hb) = (a.hello(), b.hello());
        a.check_hello(&hb).expect("same mesh");
        a.handle_link_up(Time::ZERO, &hb);
        b.handle_link_up(Time::ZERO, &ha);
        pump(&mut a, &mut b, Time::ZERO);
        (a, b)
    }

    /// Issue 14: a write that left the tracking window was never reported either way, so a
    /// runtime waiting for its replication waited for ever. The window now moves on ticks too.
    #[test]
    fn writes_leave_the_replication_window_by_count_and_by_age() {
        let mut a = node(1);
        let first = a.put("c", "k", &0i64, Scope::Durable).expect("write").id;
        assert_eq!(a.replication_tracked_from(), first);
        let mut last = first;
        for i in 1..=MAX_PENDING_WRITES as i64 {
            last = a.put("c", "k", &i, Scope::Durable).expect("write").id;
        }
        assert!(
            a.replication_tracked_from() > first,
            "the oldest left by count"
        );
        assert!(a.replication_tracked_from() <= last);
        // By age: no further write needed, a tick moves the window.
        a.handle_tick(Time::ZERO + PENDING_TTL);
        assert!(
            a.replication_tracked_from() > last,
            "every write left by age"
        );
    }

    #[test]
    fn genesis_is_identical_everywhere() {
        assert_eq!(node(1).heads(), node(2).heads());
    }

    #[test]
    fn hellos_of_other_meshes_and_versions_are_refused() {
        let a = node(1);
        let mut h = node(2).hello();
        h.mesh = MeshTag::derive(&[1; 32], "other");
        assert_eq!(a.check_hello(&h), Err(HelloError::OtherMesh));
        // Under a keyring: the hello of a peer proving with another key this node holds.
        let mut a = a;
        let own = a.hello().mesh;
        a.set_mesh_tags(own, &[own, h.mesh]);
        assert_eq!(a.check_hello(&h), Ok(()));
        a.set_mesh_tags(own, &[own]);
        assert_eq!(a.check_hello(&h), Err(HelloError::OtherMesh));
        let mut h = node(2).hello();
        h.version += 1;
        assert!(matches!(a.check_hello(&h), Err(HelloError::Version { .. })));
        assert_eq!(a.check_hello(&a.hello()), Err(HelloError::SelfConnection));
    }

    #[test]
    fn writes_sync_and_equal_writes_change_nothing() {
        let (mut a, mut b) = linked();
        let w = a
            .put("probes", "api:443", &"up".to_string(), Scope::Durable)
            .expect("write");
        assert!(w.changed);
        assert!(
            !a.put("probes", "api:443", &"up".to_string(), Scope::Durable)
                .expect("write")
                .changed
        );
        a.add("ws/desired", 2, Scope::Durable).expect("write");
        b.add("ws/desired", 3, Scope::Durable).expect("write");
        pump(&mut a, &mut b, Time::ZERO);
        assert_eq!(
            b.get::<String>("probes", "api:443").expect("read"),
            Some("up".into())
        );
        assert_eq!(a.counter("ws/desired"), 5);
        assert_eq!(b.counter("ws/desired"), 5);
        let mut replicated = false;
        while let Some(e) = a.poll_event() {
            replicated |= matches!(e, Event::Replicated { write, peer, .. } if write == w.id && peer == b.me().peer);
        }
        assert!(replicated);
    }

    #[test]
    fn a_burst_of_writes_is_one_sync_round() {
        let (mut a, mut b) = linked();
        for i in 0..100 {
            a.put("c", &format!("k{i}"), &(i as i64), Scope::Durable)
                .expect("write");
        }
        let mut frames = Vec::new();
        while let Some(t) = a.poll_transmit() {
            frames.push(t);
        }
        assert_eq!(frames.len(), 1, "one sync message for the whole burst");
        let mut d = FrameDecoder::new(1 << 24);
        d.extend(&frames[0].frame);
        let payload = d.next_payload().expect("ok").expect("complete");
        b.handle_payload(Time::ZERO, a.me().peer, &payload)
            .expect("accepted");
        assert_eq!(b.keys("c").len(), 100);
    }

    /// Issue 13: with push jobs on, a burst of writes is generated off the node (nothing
    /// leaves from `poll_transmit` until the job comes back), a lone write still leaves at
    /// once, and a write made while the job ran follows it.
    #[test]
    fn a_burst_leaves_through_a_push_job_and_a_lone_write_at_once() {
        let (mut a, mut b) = linked();
        a.set_push_jobs(true);
        let from = a.me().peer;
        a.put("c", "lone", &1i64, Scope::Durable).expect("write");
        let lone: Vec<Transmit> = std::iter::from_fn(|| a.poll_transmit()).collect();
        assert_eq!(lone.len(), 1, "a lone write leaves at once");
        assert!(a.start_push().is_none());
        b.handle_payload(Time::ZERO, from, &payload_of(&lone[0].frame))
            .expect("accepted");
        deliver(&mut b, &mut a, Time::ZERO);
        for i in 0..50 {
            a.put("c", &format!("k{i}"), &(i as i64), Scope::Durable)
                .expect("write");
        }
        assert!(
            std::iter::from_fn(|| a.poll_transmit())
                .all(|t| codec::decode_message(&payload_of(&t.frame))
                    .is_ok_and(|m| !matches!(m, Message::Sync(_)))),
            "the burst is not generated under the node"
        );
        let mut job = a.start_push().expect("a push job");
        assert_eq!(job.peers(), 1);
        assert!(a.start_push().is_none(), "the peer is busy with the job");
        // A write while the job runs: it follows the job's message.
        a.put("c", "late", &2i64, Scope::Durable).expect("write");
        job.run();
        a.finish_push(Time::ZERO, job);
        pump(&mut a, &mut b, Time::ZERO);
        for _ in 0..10 {
            if let Some(mut job) = a.start_push() {
                job.run();
                a.finish_push(Time::ZERO, job);
            }
            pump(&mut a, &mut b, Time::ZERO);
        }
        assert_eq!(
            b.keys("c").len(),
            52,
            "the burst and the late write arrived"
        );
        assert_eq!(a.heads(), b.heads());
    }

    fn payload_of(frame: &[u8]) -> Vec<u8> {
        let mut d = FrameDecoder::new(1 << 24);
        d.extend(frame);
        d.next_payload().expect("ok").expect("complete")
    }

    /// Issue 13: a window applying a large sync message is never taken for frozen. The apply
    /// runs as a job away from the node; meanwhile the node ticks past several heartbeats and
    /// the suspect timeout, sends its views, judges its peer's views, and takes local writes
    /// (to the peer whose message is being applied, too); then the job's changes join the
    /// document and both sides converge.
    #[test]
    fn a_sync_job_leaves_liveness_and_writes_going() {
        let (mut a, mut b) = linked();
        for i in 0..300 {
            b.put("c", &format!("b{i}"), &(i as i64), Scope::Durable)
                .expect("write");
        }
        let frames: Vec<Transmit> = std::iter::from_fn(|| b.poll_transmit()).collect();
        assert_eq!(frames.len(), 1, "one sync message");
        let mut job = a
            .handle_payload_deferred(Time::ZERO, b.me().peer, &payload_of(&frames[0].frame))
            .expect("accepted")
            .expect("a message with changes becomes a job");
        // The job is out. Time passes well beyond the suspect timeout: heartbeats go out, the
        // peer's views are judged, nobody is suspected, and local writes are taken.
        let hb = Config::default().heartbeat_interval;
        let mut now = Time::ZERO;
        let mut views_sent = 0;
        for i in 0..10 {
            now = now + hb;
            a.handle_tick(now);
            b.handle_tick(now);
            a.put("c", &format!("a{i}"), &i64::from(i), Scope::Durable)
                .expect("write");
            while let Some(t) = a.poll_transmit() {
                let payload = payload_of(&t.frame);
                if codec::is_view(&payload) {
                    views_sent += 1;
                    b.handle_payload(now, a.me().peer, &payload).expect("view");
                } else {
                    panic!("no sync message to the peer whose message is being applied");
                }
            }
            while let Some(t) = b.poll_transmit() {
                let payload = payload_of(&t.frame);
                if codec::is_view(&payload) {
                    a.handle_payload(now, b.me().peer, &payload).expect("view");
                }
            }
        }
        assert!(views_sent >= 10, "a beat every heartbeat: {views_sent}");
        assert_eq!(a.me().number, 0, "a never refuted nor found itself frozen");
        assert_eq!(b.me().number, 0);
        assert!(a.is_live(&b.me().peer) && b.is_live(&a.me().peer));
        assert_eq!(a.keys("c").len(), 10, "only the local writes so far");
        job.run();
        let mut again = a.finish_sync(now, job).expect("applied");
        while let Some(mut j) = again {
            // Ten local writes were made meanwhile: they join the job's copy off the node.
            j.run();
            again = a.finish_sync(now, j).expect("applied");
        }
        assert_eq!(
            a.keys("c").len(),
            310,
            "the job's changes and the writes made meanwhile"
        );
        assert!(
            std::iter::from_fn(|| a.poll_event())
                .filter(|e| matches!(e, Event::Changed(c) if c.key.starts_with('b')))
                .count()
                == 300,
            "one change event per received record"
        );
        pump(&mut a, &mut b, now);
        assert_eq!(a.heads(), b.heads());
        assert_eq!(b.keys("c").len(), 310);
    }

    /// A job whose link went down (and came up again) meanwhile is dropped; the new link syncs.
    #[test]
    fn a_sync_job_of_a_link_gone_is_dropped() {
        let (mut a, mut b) = linked();
        b.put("c", "k", &1i64, Scope::Durable).expect("write");
        // The change leaves once the exchange asks for it: pump until a message carries it.
        let mut job = None;
        for _ in 0..10 {
            while let Some(t) = b.poll_transmit() {
                if let Some(j) = a
                    .handle_payload_deferred(Time::ZERO, b.me().peer, &payload_of(&t.frame))
                    .expect("accepted")
                {
                    job = Some(j);
                }
            }
            if job.is_some() {
                break;
            }
            deliver(&mut a, &mut b, Time::ZERO);
        }
        let mut job = job.expect("a message carrying the change");
        a.handle_link_down(Time::ZERO, b.me().peer, LinkDown::Hint);
        a.handle_link_up(Time::ZERO, &b.hello());
        b.handle_link_down(Time::ZERO, a.me().peer, LinkDown::Hint);
        b.handle_link_up(Time::ZERO, &a.hello());
        job.run();
        assert!(
            a.finish_sync(Time::ZERO, job)
                .expect("dropped quietly")
                .is_none()
        );
        assert!(a.keys("c").is_empty(), "nothing applied from the old link");
        pump(&mut a, &mut b, Time::ZERO);
        assert_eq!(a.keys("c"), vec!["k".to_owned()]);
    }

    #[test]
    fn malformed_sync_input_leaves_the_document_untouched() {
        let (mut a, mut b) = linked();
        b.put("c", "k", &1i64, Scope::Durable).expect("write");
        let from = b.me().peer;
        let mut with_changes = 0;
        for _ in 0..10 {
            // Every sync frame from b reaches a first in corrupted forms, then intact.
            while let Some(t) = b.poll_transmit() {
                let mut d = FrameDecoder::new(1 << 24);
                d.extend(&t.frame);
                let Some(Message::Sync(good)) = d.next_message().expect("valid") else {
                    let payload = t.frame[codec::HEADER_LEN..].to_vec();
                    a.handle_payload(Time::ZERO, from, &payload)
                        .expect("accepted");
                    continue;
                };
                let message = automerge::sync::Message::decode(&good).expect("decodes");
                with_changes += usize::from(!message.changes.is_empty());
                let before = a.heads();
                let mut flipped = good.clone();
                let n = flipped.len();
                flipped[n - 3] ^= 0x55;
                for bad in [
                    vec![0x42],
                    vec![0xff; 40],
                    good[..good.len() / 2].to_vec(),
                    flipped,
                ] {
                    let frame = encode_frame(&Message::Sync(bad), 1 << 24).expect("fits");
                    assert!(
                        a.handle_payload(Time::ZERO, from, &frame[codec::HEADER_LEN..])
                            .is_err()
                    );
                    assert_eq!(a.heads(), before, "a refused message changed the document");
                }
                let frame = encode_frame(&Message::Sync(good), 1 << 24).expect("fits");
                a.handle_payload(Time::ZERO, from, &frame[codec::HEADER_LEN..])
                    .expect("accepted");
            }
            deliver(&mut a, &mut b, Time::ZERO);
        }
        assert!(with_changes > 0, "no sync message carried changes");
        assert_eq!(a.get::<i64>("c", "k").expect("read"), Some(1));
    }

    /// A sync message carrying one change made from `operations`, numbered from `start_op`,
    /// on top of `heads`.
    fn raw_change_payload(
        heads: &[ChangeHash],
        start_op: u64,
        operations: Vec<automerge::legacy::Op>,
    ) -> Vec<u8> {
        let change = automerge::Change::from(automerge::ExpandedChange {
            operations,
            actor_id: automerge::ActorId::from([9u8; 16].as_slice()),
            hash: None,
            seq: 1,
            start_op: std::num::NonZeroU64::new(start_op).expect("nonzero"),
            time: 0,
            message: None,
            deps: heads.to_vec(),
            extra_bytes: Vec::new(),
            author: None,
        });
        let message = automerge::sync::Message {
            heads: vec![change.hash()],
            need: Vec::new(),
            have: Vec::new(),
            changes: vec![change.raw_bytes().to_vec()].into(),
            flags: None,
            version: automerge::sync::MessageVersion::V1,
        };
        let frame = encode_frame(&Message::Sync(message.encode()), 1 << 20).expect("fits");
        frame[codec::HEADER_LEN..].to_vec()
    }

    #[test]
    fn changes_the_crdt_library_accepts_but_cannot_keep_are_refused() {
        use automerge::legacy::{ElementId, Key, ObjectId, Op, OpId, OpType};
        let (mut a, b) = linked();
        let heads = a.heads();
        let doc = a.replica().doc();
        let max_op = heads
            .iter()
            .filter_map(|h| doc.get_change_meta_by_hash(h))
            .map(|c| c.max_op)
            .max()
            .expect("known heads");
        // The genesis change made the meta map ("m") with its third operation.
        let meta = OpId(3, automerge::ActorId::from([0u8; 16].as_slice()));
        let bad = [
            // Numbered below, or with a gap after, its dependency: Automerge would then save a
            // document it refuses to load.
            raw_change_payload(&heads, max_op, Vec::new()),
            raw_change_payload(&heads, max_op + 5, Vec::new()),
            // Not descending from the genesis change: the same.
            raw_change_payload(&[], max_op + 1, Vec::new()),
            // An insertion into a map: Automerge would then fail to send or save it.
            raw_change_payload(
                &heads,
                max_op + 1,
                vec![Op {
                    action: OpType::Delete,
                    obj: ObjectId::Id(meta.clone()),
                    key: Key::Seq(ElementId::Id(meta.clone())),
                    pred: vec![meta.clone()].into(),
                    insert: true,
                }],
            ),
            // An element key on a map: Automerge would then save a document it cannot load.
            raw_change_payload(
                &heads,
                max_op + 1,
                vec![Op {
                    action: OpType::Make(automerge::ObjType::Map),
                    obj: ObjectId::Id(meta.clone()),
                    key: Key::Seq(ElementId::Head),
                    pred: Vec::new().into(),
                    insert: false,
                }],
            ),
            // A text mark ending in a map: Automerge would then save a document it refuses to
            // load.
            raw_change_payload(
                &heads,
                max_op + 1,
                vec![Op {
                    action: OpType::MarkEnd(true),
                    obj: ObjectId::Id(meta),
                    key: Key::Map("k".into()),
                    pred: Vec::new().into(),
                    insert: false,
                }],
            ),
        ];
        for payload in bad {
            let r = a.handle_payload(Time::ZERO, b.me().peer, &payload);
            assert!(matches!(r, Err(ReceiveError::Apply(_))), "accepted: {r:?}");
            assert_eq!(a.heads(), heads);
            assert!(automerge::Automerge::load(&a.replica().save()).is_ok());
            assert!(!a.replica().doc().get_changes(&[]).is_empty());
        }
    }

    #[test]
    fn persisted_state_reloads_with_its_terms() {
        let mut a = node(1);
        a.handle_settled(Time::ZERO);
        assert!(a.my_term().is_some());
        a.put("c", "k", &"v".to_string(), Scope::Durable)
            .expect("write");
        let mut stored = Vec::new();
        while let Some(p) = a.poll_persist() {
            stored.push(p.bytes().to_vec());
            a.persisted(p.seq());
        }
        let durable =
            std::iter::from_fn(|| a.poll_event()).any(|e| matches!(e, Event::Durable { .. }));
        assert!(durable);
        let mut b = node(9);
        for s in &stored {
            assert!(b.load(s).expect("loads").complete);
        }
        assert_eq!(b.get::<String>("c", "k").expect("read"), Some("v".into()));
        b.handle_settled(Time::ZERO);
        assert!(
            b.my_term() > a.my_term(),
            "a restarted mesh never reuses a term"
        );
        let before = b.heads();
        assert!(b.load(b"not an automerge file").is_err());
        assert_eq!(b.heads(), before);
        // A file cut short keeps what it can and says it was damaged.
        let whole: Vec<u8> = stored.concat();
        let mut c = node(10);
        let report = c.load(&whole[..whole.len() - 3]).expect("salvages");
        assert!(!report.complete);
    }

    #[test]
    fn a_freeze_ends_leadership() {
        let mut a = node(1);
        a.handle_settled(Time::ZERO);
        let term = a.my_term().expect("leads alone");
        let later = Time::ZERO + a.config().suspect_timeout * 3;
        let r = a.leader_put(later, term, "probes", "x", Some(&1i64));
        assert!(matches!(r, Err(WriteError::NotLeader { .. })));
        let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
        assert!(events.contains(&Event::Deposed { term }));
        assert!(events.iter().any(|e| matches!(e, Event::Refuted(_))));
    }

    #[test]
    fn explanation_lists_every_peer() {
        let (mut a, b) = linked();
        a.handle_tick(Time::from_micros(1000));
        let ex = a.explain(Time::from_micros(2000));
        assert_eq!(ex.me, a.me());
        assert_eq!(ex.peers.len(), 2);
        assert!(ex.peers.iter().any(|p| p.peer == b.me().peer && p.live));
    }

    /// Delivers every frame the nodes send to the node it is for, except those `drop` names
    /// (as `(from, to)` indexes), until none is left.
    fn route(nodes: &mut [Node], now: Time, drop: &[(usize, usize)]) {
        let index = |nodes: &[Node], id: PeerId| {
            nodes
                .iter()
                .position(|n| n.me().peer == id)
                .expect("a node")
        };
        for _ in 0..50 {
            let mut moved = false;
            for from in 0..nodes.len() {
                let from_id = nodes[from].me().peer;
                while let Some(t) = nodes[from].poll_transmit() {
                    moved = true;
                    let to = index(nodes, t.to);
                    if drop.contains(&(from, to)) {
                        continue;
                    }
                    let mut d = FrameDecoder::new(1 << 24);
                    d.extend(&t.frame);
                    let payload = d.next_payload().expect("valid").expect("complete");
                    nodes[to]
                        .handle_payload(now, from_id, &payload)
                        .expect("accepted");
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the nodes kept talking");
    }

    #[test]
    fn a_peer_whose_view_shows_our_document_holds_our_pending_writes() {
        let mut n = [node(1), node(2), node(3)];
        for a in 0..3 {
            for b in 0..3 {
                if a != b {
                    let hello = n[b].hello();
                    n[a].handle_link_up(Time::ZERO, &hello);
                }
            }
        }
        route(&mut n, Time::ZERO, &[]);
        // The writer's messages to peer 1 are still on their way; peer 1 gets the write from
        // peer 2 (their views differ, so they sync), and sends no sync message of its own to
        // the writer: only its next view (equal documents) tells.
        let write = n[0].put("c", "k", &1i64, Scope::Durable).expect("write").id;
        route(&mut n, Time::ZERO, &[(0, 1)]);
        let beat = Config::default().heartbeat_interval;
        let later = Time::from_duration(beat);
        n[1].handle_tick(later);
        n[2].handle_tick(later);
        route(&mut n, later, &[(0, 1)]);
        assert_eq!(n[1].get::<i64>("c", "k").expect("read"), Some(1));
        let p1 = n[1].me().peer;
        let held_by_1 = |node: &mut Node| {
            std::iter::from_fn(|| node.poll_event()).any(
                |e| matches!(e, Event::Replicated { write: w, peer, .. } if w == write && peer == p1),
            )
        };
        assert!(!held_by_1(&mut n[0]), "no message of peer 1 said so yet");
        let later = Time::from_duration(beat * 2);
        n[1].handle_tick(later);
        route(&mut n, later, &[(0, 1)]);
        assert!(
            held_by_1(&mut n[0]),
            "its view says its document is the writer's"
        );
    }

    #[test]
    fn aligned_heartbeats_fall_on_the_grid() {
        let mut n = node(1);
        let beat = Config::default().heartbeat_interval;
        n.align_heartbeats(Duration::from_millis(70));
        let views_at = |n: &mut Node| std::iter::from_fn(|| n.poll_transmit()).count();
        let hello = node(2).hello();
        n.handle_link_up(Time::ZERO, &hello);
        while n.poll_transmit().is_some() {}
        // The first beat is due at once; the next on the grid (70 ms), not one interval later.
        n.handle_tick(Time::from_micros(5_000));
        assert!(views_at(&mut n) > 0);
        assert!(n.poll_timeout() <= Time::from_micros(70_000));
        // A late tick does not shift the grid.
        n.handle_tick(Time::from_micros(95_000));
        assert!(views_at(&mut n) > 0);
        let next = Time::from_micros(70_000) + beat;
        assert!(n.poll_timeout() <= next);
        n.handle_tick(next - Duration::from_micros(1));
        assert_eq!(views_at(&mut n), 0, "no view before the grid point");
        n.handle_tick(next);
        assert!(views_at(&mut n) > 0, "a view on the grid point");
    }
}
