//! The heart: liveness, election and views, apart from the document, under a lock of their
//! own.
//!
//! A node's liveness must never wait for bulk work. In a runtime the node is held by whoever
//! works on the document (a local write, a received sync message joining it, sync messages
//! generated for every peer), and a heartbeat that waited for them made a busy window look
//! frozen to its peers. So the state that heartbeats and views need (this peer's incarnation
//! and beats, what it knows of the others' liveness, the election, the heartbeat deadlines)
//! lives in a [`Heart`], shared through a [`Pulse`] handle: a runtime's heartbeat task locks
//! the heart alone, for microseconds, and never the node.
//!
//! The heart never touches the document. What a beat or a view leaves for it is queued as
//! notes ([`Heart::wants_node`]) that the node takes in at its next input or poll: events,
//! presence entries to republish, leader records of dead writers to drop, a new term to
//! record, a peer's view to compare with the document (a sync owed). What the heart needs of
//! the document, the digests its views carry, the node publishes to it whenever they change.
//!
//! Lock order: the node, then the heart. The node takes the heart for short reads and
//! updates; the heart never takes the node.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Event, ReceiveError, Transmit};
use crate::codec::{self, Hello, Message, View};
use crate::election::{Election, ElectionOutcome, Leadership, Term};
use crate::liveness::{DeathCause, LinkDown, Liveness, LivenessChange, Tombstone};
use crate::{Config, Incarnation, PeerId, Time};

/// Notes of views alone wake the node once the first has waited this fraction (one part in
/// this many) of a heartbeat interval: a quarter, 50 ms by default, longer than the burst in
/// which one interval's views arrive at 64 windows on 2 cores (see [`Heart::take_wake`]).
const VIEW_NOTES_WAIT_PARTS: u32 = 4;

/// A shared handle on a node's [`Heart`] (see [`Node::pulse`](super::Node::pulse)).
#[derive(Clone, Debug)]
pub struct Pulse(Arc<Mutex<Heart>>);

impl Pulse {
    pub(super) fn new(heart: Heart) -> Self {
        Self(Arc::new(Mutex::new(heart)))
    }

    /// Locks the heart. It is held for microseconds by whoever holds it (its work is bounded
    /// by the number of peers), so a heartbeat task that locks it never waits for bulk work.
    pub fn lock(&self) -> MutexGuard<'_, Heart> {
        // No poisoning: a panic while holding the heart can only come from a bug in statemesh
        // itself, and the heart's state is consistent between its calls.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The heart, if nobody holds it: the node's own bookkeeping with the heart (its clock,
    /// the notes to take in, the leadership to publish) is put off rather than waited for
    /// while the pulse holds it (see [`Node::advance`](super::Node)).
    pub(super) fn try_lock(&self) -> Option<MutexGuard<'_, Heart>> {
        match self.0.try_lock() {
            Ok(heart) => Some(heart),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

/// The digests of the node's document heads and of its leader records, which every view
/// carries: written by the node after each change without taking the heart, read by the heart
/// for its views. The two are read apart; a view that pairs a newer one with an older one is a
/// view that differs, which the receiving node checks against its own document.
#[derive(Debug)]
pub(super) struct PublishedDigests {
    doc: std::sync::atomic::AtomicU64,
    leader: std::sync::atomic::AtomicU64,
}

impl PublishedDigests {
    pub(super) fn new(doc: [u8; 8], leader: [u8; 8]) -> Arc<Self> {
        Arc::new(Self {
            doc: u64::from_le_bytes(doc).into(),
            leader: u64::from_le_bytes(leader).into(),
        })
    }

    pub(super) fn doc(&self) -> [u8; 8] {
        self.doc
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes()
    }

    pub(super) fn leader(&self) -> [u8; 8] {
        self.leader
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes()
    }

    /// Publishes both; returns the document's digest before.
    pub(super) fn publish(&self, doc: [u8; 8], leader: [u8; 8]) -> [u8; 8] {
        use std::sync::atomic::Ordering::Relaxed;
        self.leader.store(u64::from_le_bytes(leader), Relaxed);
        self.doc
            .swap(u64::from_le_bytes(doc), Relaxed)
            .to_le_bytes()
    }
}

/// A view frame decoded before the heart is taken, so that whoever holds the heart holds it
/// for the view's judgement only: a thread that takes the heart for a batch of views and is
/// preempted meanwhile keeps every other taker waiting until it runs again (at 64 windows on
/// 2 cores a node waited up to 53 ms for it during a write; docs/under-load.md,
/// thirty-seventh slice).
#[derive(Debug)]
pub struct DecodedView {
    /// The frame's length.
    len: usize,
    message: Result<Message, codec::DecodeError>,
}

impl DecodedView {
    /// Decodes `frame` (whole, header included), as [`Heart::handle_view`] would.
    pub fn decode(frame: &[u8], max_frame: usize) -> Self {
        Self {
            len: frame.len(),
            message: codec::decode_frame(frame, max_frame),
        }
    }
}

/// What the heart leaves for the node (see the module documentation).
#[derive(Debug)]
pub(super) enum Note {
    /// An application event, in order with the node's own.
    Event(Event),
    /// `peer`'s presence changed: its presence-scoped entries appear or vanish.
    Presence(PeerId),
    /// A peer was judged dead: its leader records go.
    Prune,
    /// This peer became the leader under term `number`: the document records it, a heartbeat
    /// interval later (see `Node::record_claimed_term`).
    RecordTerm(u64),
    /// A view arrived from `from` at `at`, showing these digests of its document and leader
    /// records.
    View {
        /// The sender.
        from: PeerId,
        /// When it arrived.
        at: Time,
        /// Its document's digest.
        doc: [u8; 8],
        /// Its leader records' digest.
        leader: [u8; 8],
    },
}

/// The digests a view carries: of the sender's document heads, and of its leader records.
type Digests = ([u8; 8], [u8; 8]);

/// Counters the heart keeps (merged into the node's [`Stats`](super::Stats)).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct HeartStats {
    pub(super) frames_in: u64,
    pub(super) bytes_in: u64,
    pub(super) frames_out: u64,
    pub(super) bytes_out: u64,
    pub(super) decode_errors: u64,
    pub(super) leadership_changes: u64,
    pub(super) freezes: u64,
    pub(super) suspicions_refuted: u64,
}

/// Liveness, election and views of one peer: the part of a node a heartbeat needs.
#[derive(Debug)]
pub struct Heart {
    config: Config,
    pub(super) live: Liveness,
    pub(super) election: Election,
    /// Peers with a link up (views go to them), each with the digests of the last view of it
    /// that the node took in while they were this peer's own: until either side's digests
    /// change, its views tell the node nothing new, and are not handed to it.
    links: BTreeMap<PeerId, Option<Digests>>,
    pub(super) candidate_at: Time,
    pub(super) settled: bool,
    pub(super) left: bool,
    last_tick: Time,
    pub(super) next_heartbeat: Time,
    /// Heartbeats fall on a grid of this phase (see [`Node::align_heartbeats`]), if set.
    ///
    /// [`Node::align_heartbeats`]: super::Node::align_heartbeats
    pub(super) heartbeat_phase: Option<std::time::Duration>,
    /// Views to send.
    out_views: VecDeque<Transmit>,
    /// What the node must take in (see [`Note`]).
    pub(super) notes: VecDeque<Note>,
    /// When notes of views alone, if any wait, should wake the node (see
    /// [`Heart::take_wake`]); `None` once that wake was given, or the notes taken in.
    view_notes_due: Option<Time>,
    /// The digests of the node's document heads and of its leader records, as the node last
    /// published them (without the heart: see [`PublishedDigests`]).
    pub(super) digests: Arc<PublishedDigests>,
    pub(super) stats: HeartStats,
    /// The leadership and this peer's own term as [`leadership`](Self::leadership) last
    /// returned them, and how many times they changed (its version).
    leadership_seen: (Leadership, Option<u64>, u64),
}

impl Heart {
    pub(super) fn new(
        config: Config,
        me: PeerId,
        now: Time,
        digests: Arc<PublishedDigests>,
    ) -> Self {
        Self {
            live: Liveness::new(me, &config),
            election: Election::default(),
            links: BTreeMap::new(),
            candidate_at: now + config.join_grace,
            settled: false,
            left: false,
            last_tick: now,
            next_heartbeat: now,
            heartbeat_phase: None,
            out_views: VecDeque::new(),
            notes: VecDeque::new(),
            view_notes_due: None,
            leadership_seen: (Leadership::default(), None, 0),
            digests,
            stats: HeartStats::default(),
            config,
        }
    }

    /// This peer's current incarnation.
    pub fn me(&self) -> Incarnation {
        self.live.me()
    }

    /// Handles a view frame received from `from` (whole, header included; see
    /// [`codec::is_view`]). A frame that is not a view, or does not decode, is refused and
    /// changes nothing; the runtime should close the link it came on.
    pub fn handle_view(
        &mut self,
        now: Time,
        from: PeerId,
        frame: &[u8],
    ) -> Result<(), ReceiveError> {
        let view = DecodedView::decode(frame, self.config.max_frame);
        self.handle_decoded_view(now, from, view)
    }

    /// [`handle_view`](Self::handle_view) for a frame decoded beforehand, without the heart
    /// (see [`DecodedView`]).
    pub fn handle_decoded_view(
        &mut self,
        now: Time,
        from: PeerId,
        view: DecodedView,
    ) -> Result<(), ReceiveError> {
        self.stats.bytes_in += view.len as u64;
        self.stats.frames_in += 1;
        let view = match view.message {
            Ok(Message::View(view)) => view,
            Ok(_) => return Err(ReceiveError::NotAView),
            Err(e) => {
                self.stats.decode_errors += 1;
                return Err(e.into());
            }
        };
        self.advance(now);
        if !self.links.contains_key(&from) {
            return Err(ReceiveError::NoLink(from));
        }
        self.on_view(now, from, view);
        Ok(())
    }

    /// The liveness part of a tick, and only that (see
    /// [`Node::handle_beat`](super::Node::handle_beat)).
    pub fn handle_beat(&mut self, now: Time) {
        self.advance(now);
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
    }

    /// The next time [`handle_beat`](Self::handle_beat) must be called: the next heartbeat,
    /// the next judgement of a silent peer, the end of the join grace.
    pub fn poll_beat_timeout(&self) -> Time {
        let mut t = self.next_heartbeat;
        if let Some(d) = self.live.next_deadline() {
            t = t.min(d);
        }
        if !self.settled && self.candidate_at > self.last_tick {
            t = t.min(self.candidate_at);
        }
        t
    }

    /// The leadership as this peer sees it and the number of the term under which this peer
    /// leads, if it does, read together, with their version: a number that rises whenever
    /// either changed since the last call. A runtime that publishes the leadership from more
    /// than one thread (the one that runs the heart, the one that runs the node) publishes a
    /// version only if it is not older than the last it published.
    pub fn leadership(&mut self) -> (u64, Leadership, Option<u64>) {
        let (current, mine) = (self.election.current(), self.election.my_term());
        let (seen, seen_mine, version) = &mut self.leadership_seen;
        if (*seen, *seen_mine) != (current, mine) {
            (*seen, *seen_mine) = (current, mine);
            *version += 1;
        }
        (*version, current, mine)
    }

    /// Whether views wait to be sent: queued by the node (a link up, a leadership change) at
    /// a moment its runtime found the heart held (see [`Node::poll_transmit`]); a pulse that
    /// finds some sends them at once.
    ///
    /// [`Node::poll_transmit`]: super::Node::poll_transmit
    pub fn has_views(&self) -> bool {
        !self.out_views.is_empty()
    }

    /// The next view to send.
    pub fn poll_view(&mut self) -> Option<Transmit> {
        let t = self.out_views.pop_front()?;
        self.stats.frames_out += 1;
        self.stats.bytes_out += t.frame.len() as u64;
        Some(t)
    }

    /// Whether the heart left work for the node (events, a sync owed, a term to record), to be
    /// taken in at its next input or poll.
    pub fn wants_node(&self) -> bool {
        !self.notes.is_empty()
    }

    /// Whether a runtime that runs the heart on a task of its own should wake the one that
    /// holds the node now: at once for liveness and election news (events, presence, a term
    /// to record), but for notes of views alone only once the first has waited a quarter of
    /// a heartbeat interval (see
    /// [`poll_wake_timeout`](Self::poll_wake_timeout)). What a view tells the node (a sync
    /// owed past a grace of several half intervals, writes its sender holds) is not urgent,
    /// and the views of one interval arrive over a burst: at 64 windows on 2 cores each
    /// window's heart woke its node 1.7 times per write for them, a third of the nodes' turns
    /// (`scale`). A wake given for the view notes is not given again until newer ones wait.
    pub fn take_wake(&mut self, now: Time) -> bool {
        if self.notes.iter().any(|n| !matches!(n, Note::View { .. })) {
            self.view_notes_due = None;
            return true;
        }
        match self.view_notes_due {
            Some(due) if due <= now => {
                self.view_notes_due = None;
                true
            }
            _ => false,
        }
    }

    /// When notes of views waiting for the node should wake it (see
    /// [`take_wake`](Self::take_wake)), if they wait.
    pub fn poll_wake_timeout(&self) -> Option<Time> {
        self.view_notes_due
    }

    /// Every note for the node to take in, oldest first: taken at once, so that the node
    /// takes the heart once for them, not once each (whoever holds the heart may be preempted
    /// holding it, and the node then waits; at 64 windows a write left 63 notes).
    pub(super) fn take_notes(&mut self) -> VecDeque<Note> {
        self.view_notes_due = None;
        std::mem::take(&mut self.notes)
    }

    /// The hello this peer sends first on every link.
    pub(super) fn hello(&self, mesh: crate::MeshTag) -> Hello {
        Hello {
            version: codec::PROTOCOL_VERSION,
            mesh,
            incarnation: self.live.me(),
            eligible: self.live.my_eligible(),
        }
    }

    /// Whether this node is past joining at `now`: discovery settled, or its join grace over.
    pub(super) fn joined(&self, now: Time) -> bool {
        self.settled || now >= self.candidate_at
    }

    pub(super) fn me_candidate(&self, now: Time) -> bool {
        self.live.my_eligible() && !self.left && self.joined(now)
    }

    /// Moves the clock; detects that this process was frozen (no input for longer than the
    /// suspect timeout): its leadership is over, its silence was its own, and it rejoins.
    pub(super) fn advance(&mut self, now: Time) {
        if now.saturating_since(self.last_tick) > self.config.suspect_timeout {
            self.live.refresh_all(now);
            if let Some(term) = self.election.my_term() {
                self.election.step_down();
                self.notes.push_back(Note::Event(Event::Deposed { term }));
            }
            let inc = self.live.new_incarnation(0);
            self.stats.freezes += 1;
            self.notes.push_back(Note::Event(Event::Refuted(inc)));
            self.candidate_at = now + self.config.join_grace;
            self.settled = false;
            self.next_heartbeat = now;
        }
        self.last_tick = self.last_tick.max(now);
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

    /// A link to the peer of `hello` came up: its first beat, and (unless this peer left) a
    /// view to it.
    pub(super) fn link_up(&mut self, now: Time, hello: &Hello) {
        let peer = hello.incarnation.peer;
        self.links.insert(peer, None);
        let mut changes = Vec::new();
        let beat = crate::vv::Beat {
            incarnation: hello.incarnation.number,
            counter: 0,
        };
        self.live
            .observe_beat(peer, beat, hello.eligible, now, &mut changes);
        self.apply_liveness(changes, now);
        if !self.left {
            let view = Message::View(self.view(now));
            self.queue_view(&view, std::iter::once(peer));
        }
    }

    /// The link to `peer` went down (see [`Node::handle_link_down`](super::Node::handle_link_down)).
    pub(super) fn link_down(&mut self, now: Time, peer: PeerId, how: LinkDown) {
        if self.links.remove(&peer).is_none() && how == LinkDown::Hint {
            return;
        }
        let mut changes = Vec::new();
        self.live.link_down(peer, how, now, &mut changes);
        self.apply_liveness(changes, now);
        self.reelect(now);
    }

    /// `inc` announced a graceful leave.
    pub(super) fn on_leave(&mut self, now: Time, inc: Incarnation) {
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

    /// This peer leaves: it stops leading.
    pub(super) fn leave(&mut self, now: Time) {
        self.left = true;
        if let Some(term) = self.election.my_term() {
            self.election.step_down();
            self.notes.push_back(Note::Event(Event::Deposed { term }));
        }
        self.reelect(now);
    }

    /// Takes in the terms recorded in the document: the newest stored term, and the greatest
    /// stored number (so that a new claim goes above every number ever stored).
    pub(super) fn observe_stored_terms(&mut self, newest: Option<Term>, max: u64) {
        if let Some(t) = newest {
            self.election.observe(t);
        }
        self.election.observe_term(max);
    }

    pub(super) fn reelect(&mut self, now: Time) {
        let old_term = self.election.my_term();
        let outcome = self.election.update(&self.live, self.me_candidate(now));
        if outcome.lost
            && let Some(term) = old_term
        {
            self.notes.push_back(Note::Event(Event::Deposed { term }));
        }
        if let Some(term) = outcome.new_term {
            self.notes.push_back(Note::Event(Event::Elected { term }));
            self.notes.push_back(Note::RecordTerm(term));
        }
        if let Some(l) = outcome.changed {
            self.stats.leadership_changes += 1;
            self.notes.push_back(Note::Event(Event::Leadership(l)));
            self.announce(now, &outcome);
        }
    }

    /// Who hears of a leadership change at once, not with the next heartbeat. Everyone, when
    /// this peer's own claim changed (it claimed a new term, or stopped leading): a claim
    /// should not wait a heartbeat. When another peer became the leader and its claim is not
    /// known here yet, that peer alone: what made it the leader here (a death this peer saw
    /// first) may be news to it, and it claims once it knows. Every other peer hears the
    /// same from the new leader's claim, which it sends to all, and from its own links.
    ///
    /// Every peer telling every other at once made a failover of `n` windows a burst of
    /// about `2 n^2` views on top of the claim (each survivor's view when it saw the death,
    /// and again when it learned the new term): at 64 windows on 2 cores, 8,000 views.
    fn announce(&mut self, now: Time, outcome: &ElectionOutcome) {
        if outcome.new_term.is_some() || outcome.lost {
            self.send_views(now);
            return;
        }
        if let Some(Leadership {
            leader: Some(leader),
            term: None,
        }) = outcome.changed
            && leader != self.live.me().peer
            && self.links.contains_key(&leader)
            && !self.left
        {
            let view = Message::View(self.view(now));
            self.queue_view(&view, std::iter::once(leader));
        }
    }

    fn apply_liveness(&mut self, changes: Vec<LivenessChange>, now: Time) {
        for change in changes {
            match change {
                LivenessChange::Up(inc) => {
                    self.notes.push_back(Note::Event(Event::PeerUp(inc)));
                    self.notes.push_back(Note::Presence(inc.peer));
                }
                LivenessChange::Down(inc, cause) => {
                    self.notes.push_back(Note::Event(Event::PeerDown {
                        incarnation: inc,
                        cause,
                    }));
                    self.notes.push_back(Note::Presence(inc.peer));
                    self.notes.push_back(Note::Prune);
                }
                LivenessChange::Refuted(inc) => {
                    self.stats.suspicions_refuted += 1;
                    self.notes.push_back(Note::Event(Event::Refuted(inc)));
                    self.send_views(now);
                }
            }
        }
    }

    /// This peer's view: beats, tombstones, term claims and the digests the node published.
    pub(super) fn view(&self, now: Time) -> View {
        let (beats, tombs) = self.live.gossip(now);
        let claims = self.election.gossip(beats.iter().map(|b| b.peer));
        View {
            beats,
            tombs,
            claims,
            doc: self.digests.doc(),
            leader: self.digests.leader(),
        }
    }

    /// Queues this peer's view for every linked peer, encoded once.
    pub(super) fn send_views(&mut self, now: Time) {
        if self.links.is_empty() || self.left {
            return;
        }
        let view = Message::View(self.view(now));
        let links = std::mem::take(&mut self.links);
        self.queue_view(&view, links.keys().copied());
        self.links = links;
    }

    fn queue_view(&mut self, view: &Message, to: impl Iterator<Item = PeerId>) {
        match codec::encode_frame(view, self.config.max_frame) {
            Ok(frame) => {
                let frame = bytes::Bytes::from(frame);
                for to in to {
                    self.out_views.push_back(Transmit {
                        to,
                        frame: frame.clone(),
                    });
                }
            }
            Err(e) => tracing::error!(error = %e, "dropping an outgoing view"),
        }
    }

    /// A view from linked peer `from`: its liveness and claims here, its digests for the node.
    pub(super) fn on_view(&mut self, now: Time, from: PeerId, view: View) {
        let mut changes = Vec::new();
        self.live.observe_beats(&view.beats, now, &mut changes);
        for (peer, tomb) in &view.tombs {
            self.live
                .observe_received_tombstone(*peer, *tomb, now, &mut changes);
        }
        for (peer, term) in &view.claims {
            self.election.observe_claim(*peer, *term);
        }
        self.apply_liveness(changes, now);
        self.reelect(now);
        let digests = (view.doc, view.leader);
        let Some(told) = self.links.get_mut(&from) else {
            return;
        };
        if digests == (self.digests.doc(), self.digests.leader()) {
            if *told == Some(digests) {
                // The node took in a view of these very digests while they were its own, and
                // neither side changed since: its document, its leader records and every
                // local write are known to be held by `from`. In a quiet mesh this is every
                // view, and the node is not woken for it.
                return;
            }
            *told = Some(digests);
        } else {
            *told = None;
        }
        // A newer view of `from` supersedes one the node has not taken in yet: the notes stay
        // bounded however long the node is busy (one view per peer, and liveness changes).
        self.notes
            .retain(|n| !matches!(n, Note::View { from: f, .. } if *f == from));
        if !self.notes.iter().any(|n| matches!(n, Note::View { .. })) {
            self.view_notes_due =
                Some(now + self.config.heartbeat_interval / VIEW_NOTES_WAIT_PARTS);
        }
        self.notes.push_back(Note::View {
            from,
            at: now,
            doc: view.doc,
            leader: view.leader,
        });
    }
}
