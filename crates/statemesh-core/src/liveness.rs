//! Liveness: heartbeat version vectors, tombstones, refutation. The election built on it is in
//! [`crate::election`].
//!
//! Freshness is judged on the local monotonic clock only: a peer is fresh while its beat keeps
//! rising in our vector, whichever path the news came by. An incarnation judged dead gets a
//! tombstone; beats of that incarnation (or an older one) are merged into the vector but never
//! make it live again, whatever order old news arrives in. A process that sees a tombstone for its
//! own current incarnation refutes by moving to the next one.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::vv::{Beat, VersionVector};
use crate::{Config, Incarnation, PeerId, Time};

/// Why an incarnation was judged dead.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum DeathCause {
    /// No fresh heartbeat within the suspect timeout.
    Timeout,
    /// Its link closed: certainly (a local socket's EOF) or as a hint confirmed by silence.
    LinkClosed,
    /// It announced a graceful leave.
    Left,
}

/// A dead incarnation: every incarnation up to and including `incarnation` is dead.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Tombstone {
    /// The highest dead incarnation number.
    pub incarnation: u64,
    /// Why it was judged dead.
    pub cause: DeathCause,
}

/// The greatest incarnation number a tombstone received from another peer may name. A process
/// moves to a new incarnation only when it refutes a tombstone or wakes from a freeze, so a
/// greater one can only come from a broken or hostile peer.
pub const MAX_INCARNATION: u64 = 1 << 53;

/// How a link to a peer went down.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LinkDown {
    /// A certain death signal: the peer's local socket reached EOF (same kernel: the process is
    /// gone). Its current incarnation is judged dead at once.
    Certain,
    /// A strong hint (a closed QUIC connection): the peer is judged dead unless fresh news of it
    /// arrives within the hint timeout.
    Hint,
}

/// A change of liveness, reported by the [`Liveness`] table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LivenessChange {
    /// An incarnation became live.
    Up(Incarnation),
    /// An incarnation was judged dead.
    Down(Incarnation, DeathCause),
    /// This process learned it was judged dead and moved to a new incarnation.
    Refuted(Incarnation),
}

#[derive(Clone, Debug)]
struct PeerState {
    beat: Beat,
    eligible: bool,
    fresh_at: Time,
    tomb: Option<(Tombstone, Time)>,
    hint_at: Option<Time>,
}

impl PeerState {
    fn is_live(&self) -> bool {
        self.tomb
            .is_none_or(|(t, _)| self.beat.incarnation > t.incarnation)
    }

    /// A beat of this known peer heard at local time `now`.
    fn observe(&mut self, b: &GossipBeat, now: Time, changes: &mut Vec<LivenessChange>) {
        if b.beat <= self.beat {
            return;
        }
        let was_live = self.is_live();
        self.beat = b.beat;
        if !self.is_live() {
            // Late news of an incarnation already judged dead: remembered, never revived.
            return;
        }
        self.eligible = b.eligible;
        self.fresh_at = now;
        self.hint_at = None;
        if !was_live {
            changes.push(LivenessChange::Up(Incarnation {
                peer: b.peer,
                number: b.beat.incarnation,
            }));
        }
    }
}

/// One peer's view of the mesh's liveness.
#[derive(Clone, Debug)]
pub struct Liveness {
    me: PeerId,
    my_beat: Beat,
    my_eligible: bool,
    peers: BTreeMap<PeerId, PeerState>,
    suspect_timeout: Duration,
    hint_timeout: Duration,
    tombstone_gossip: Duration,
}

/// One row of a liveness explanation: what this peer knows of another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer.
    pub peer: PeerId,
    /// Its highest known incarnation.
    pub incarnation: u64,
    /// Its highest known heartbeat counter.
    pub counter: u64,
    /// Whether its highest known incarnation is live.
    pub live: bool,
    /// Whether it may lead.
    pub eligible: bool,
    /// Time since its beat last rose, on the local clock (zero for this peer itself).
    pub silent_for: Duration,
    /// Why it was judged dead, if it was.
    pub death: Option<DeathCause>,
}

impl Liveness {
    /// A table for peer `me`, starting at incarnation 0.
    pub fn new(me: PeerId, config: &Config) -> Self {
        Self {
            me,
            my_beat: Beat::default(),
            my_eligible: config.eligible,
            peers: BTreeMap::new(),
            suspect_timeout: config.suspect_timeout,
            hint_timeout: config.hint_timeout,
            tombstone_gossip: config.tombstone_gossip,
        }
    }

    /// This peer's current incarnation.
    pub fn me(&self) -> Incarnation {
        Incarnation {
            peer: self.me,
            number: self.my_beat.incarnation,
        }
    }

    /// This peer's current beat.
    pub fn my_beat(&self) -> Beat {
        self.my_beat
    }

    /// Whether this peer may lead.
    pub fn my_eligible(&self) -> bool {
        self.my_eligible
    }

    /// Bumps this peer's heartbeat counter.
    pub fn beat(&mut self) {
        self.my_beat.counter += 1;
    }

    /// Moves this peer to a new incarnation (after a freeze, or to refute a tombstone).
    pub fn new_incarnation(&mut self, above: u64) -> Incarnation {
        // Received tombstones are at most MAX_INCARNATION, so this cannot saturate in practice.
        self.my_beat.incarnation = self.my_beat.incarnation.max(above).saturating_add(1);
        self.my_beat.counter += 1;
        self.me()
    }

    /// Records a beat of `peer` heard at local time `now` (directly or relayed).
    pub fn observe_beat(
        &mut self,
        peer: PeerId,
        beat: Beat,
        eligible: bool,
        now: Time,
        changes: &mut Vec<LivenessChange>,
    ) {
        let b = GossipBeat {
            peer,
            beat,
            eligible,
        };
        self.observe_gossiped(&b, now, changes);
    }

    /// Records the beats of a view heard at local time `now`: each as
    /// [`observe_beat`](Self::observe_beat) records it.
    ///
    /// A view lists its sender's beat first and the others' in id order, as
    /// [`gossip`](Self::gossip) makes it: those are matched against the known peers in one walk
    /// of both (a lookup per beat was a tenth of the pulse's time in an idle mesh of 64). A beat
    /// out of that order, or of a peer not known yet, is looked up on its own after the walk.
    pub fn observe_beats(
        &mut self,
        beats: &[GossipBeat],
        now: Time,
        changes: &mut Vec<LivenessChange>,
    ) {
        let Some((sender, rest)) = beats.split_first() else {
            return;
        };
        self.observe_gossiped(sender, now, changes);
        let mut aside = Vec::new();
        let mut known = self.peers.iter_mut().peekable();
        let mut last = None;
        for b in rest {
            if b.peer == self.me {
                continue;
            }
            if last.is_some_and(|last| b.peer <= last) {
                aside.push(b);
                continue;
            }
            last = Some(b.peer);
            while known.next_if(|(peer, _)| **peer < b.peer).is_some() {}
            match known.peek_mut() {
                Some((peer, state)) if **peer == b.peer => state.observe(b, now, changes),
                _ => aside.push(b),
            }
        }
        for b in aside {
            self.observe_gossiped(b, now, changes);
        }
    }

    /// One beat, looked up among the known peers.
    fn observe_gossiped(&mut self, b: &GossipBeat, now: Time, changes: &mut Vec<LivenessChange>) {
        if b.peer == self.me {
            return;
        }
        match self.peers.entry(b.peer) {
            Entry::Occupied(mut known) => known.get_mut().observe(b, now, changes),
            Entry::Vacant(new) => {
                new.insert(PeerState {
                    beat: b.beat,
                    eligible: b.eligible,
                    fresh_at: now,
                    tomb: None,
                    hint_at: None,
                });
                changes.push(LivenessChange::Up(Incarnation {
                    peer: b.peer,
                    number: b.beat.incarnation,
                }));
            }
        }
    }

    /// Records that `incarnation` of `peer` (and every older one) is dead.
    pub fn observe_tombstone(
        &mut self,
        peer: PeerId,
        tomb: Tombstone,
        now: Time,
        changes: &mut Vec<LivenessChange>,
    ) {
        if peer == self.me {
            if tomb.incarnation >= self.my_beat.incarnation {
                let inc = self.new_incarnation(tomb.incarnation);
                changes.push(LivenessChange::Refuted(inc));
            }
            return;
        }
        let state = self.peers.entry(peer).or_insert(PeerState {
            beat: Beat {
                incarnation: tomb.incarnation,
                counter: 0,
            },
            eligible: false,
            fresh_at: now,
            tomb: None,
            hint_at: None,
        });
        if state
            .tomb
            .is_some_and(|(t, _)| t.incarnation >= tomb.incarnation)
        {
            return;
        }
        let was_live = state.is_live();
        state.tomb = Some((tomb, now));
        if state.beat.incarnation < tomb.incarnation {
            state.beat = Beat {
                incarnation: tomb.incarnation,
                counter: 0,
            };
        }
        if was_live && !state.is_live() {
            let inc = Incarnation {
                peer,
                number: state.beat.incarnation,
            };
            changes.push(LivenessChange::Down(inc, tomb.cause));
        }
    }

    /// Records a tombstone received from another peer (gossiped, or a leave). One above
    /// [`MAX_INCARNATION`] is ignored: no incarnation gets that high, and a live peer must always
    /// be able to refute a tombstone by moving to the next incarnation.
    pub fn observe_received_tombstone(
        &mut self,
        peer: PeerId,
        tomb: Tombstone,
        now: Time,
        changes: &mut Vec<LivenessChange>,
    ) {
        if tomb.incarnation <= MAX_INCARNATION {
            self.observe_tombstone(peer, tomb, now, changes);
        }
    }

    /// A link to `peer` went down.
    pub fn link_down(
        &mut self,
        peer: PeerId,
        how: LinkDown,
        now: Time,
        changes: &mut Vec<LivenessChange>,
    ) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if !state.is_live() {
            return;
        }
        match how {
            LinkDown::Certain => {
                let tomb = Tombstone {
                    incarnation: state.beat.incarnation,
                    cause: DeathCause::LinkClosed,
                };
                self.observe_tombstone(peer, tomb, now, changes);
            }
            LinkDown::Hint => state.hint_at = Some(now),
        }
    }

    /// Gives every live peer a fresh start (after this process was frozen: its silence was ours).
    pub fn refresh_all(&mut self, now: Time) {
        for state in self.peers.values_mut() {
            state.fresh_at = now;
            state.hint_at = None;
        }
    }

    /// Judges silent incarnations dead.
    pub fn judge(&mut self, now: Time, changes: &mut Vec<LivenessChange>) {
        let mut dead = Vec::new();
        for (peer, state) in &self.peers {
            if !state.is_live() {
                continue;
            }
            let silent = now.saturating_since(state.fresh_at);
            let hinted = state
                .hint_at
                .is_some_and(|h| now.saturating_since(h) >= self.hint_timeout);
            if silent > self.suspect_timeout {
                dead.push((*peer, state.beat.incarnation, DeathCause::Timeout));
            } else if hinted {
                dead.push((*peer, state.beat.incarnation, DeathCause::LinkClosed));
            }
        }
        for (peer, incarnation, cause) in dead {
            self.observe_tombstone(peer, Tombstone { incarnation, cause }, now, changes);
        }
    }

    /// The earliest local time at which [`judge`](Self::judge) may change something.
    pub fn next_deadline(&self) -> Option<Time> {
        self.peers
            .values()
            .filter(|s| s.is_live())
            .flat_map(|s| {
                let timeout = s.fresh_at + self.suspect_timeout + Duration::from_micros(1);
                let hint = s.hint_at.map(|h| h + self.hint_timeout);
                [Some(timeout), hint]
            })
            .flatten()
            .min()
    }

    /// Whether `peer`'s highest known incarnation is live (this peer itself always is).
    pub fn is_live(&self, peer: &PeerId) -> bool {
        *peer == self.me || self.peers.get(peer).is_some_and(PeerState::is_live)
    }

    /// The items of `sorted` (pairs of a peer and a value, in ascending peer order, as a
    /// `BTreeMap` keyed by peer lists them) whose peer [`is_live`](Self::is_live), found in one
    /// walk beside the known peers instead of a lookup each: the runtime asks it every turn of
    /// every link. An item out of order is looked up.
    pub fn live_among<'p, T>(
        &self,
        sorted: impl IntoIterator<Item = (&'p PeerId, T)>,
    ) -> impl Iterator<Item = T> {
        let mut known = self.peers.iter().peekable();
        let mut last: Option<&'p PeerId> = None;
        sorted.into_iter().filter_map(move |(peer, value)| {
            let live = if last.is_some_and(|l| peer < l) {
                self.is_live(peer)
            } else {
                last = Some(peer);
                while known.next_if(|(id, _)| *id < peer).is_some() {}
                *peer == self.me
                    || known
                        .peek()
                        .is_some_and(|(id, state)| *id == peer && state.is_live())
            };
            live.then_some(value)
        })
    }

    /// The highest known incarnation of `peer`, if known.
    pub fn incarnation_of(&self, peer: &PeerId) -> Option<u64> {
        if *peer == self.me {
            return Some(self.my_beat.incarnation);
        }
        self.peers.get(peer).map(|s| s.beat.incarnation)
    }

    /// Whether incarnation `number` of `peer` has been judged dead.
    pub fn is_dead(&self, peer: &PeerId, number: u64) -> bool {
        if *peer == self.me {
            return number < self.my_beat.incarnation;
        }
        self.peers
            .get(peer)
            .and_then(|s| s.tomb)
            .is_some_and(|(t, _)| number <= t.incarnation)
    }

    /// Live peers other than this one, in id order.
    pub fn live_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers
            .iter()
            .filter(|(_, s)| s.is_live())
            .map(|(p, _)| *p)
    }

    /// Live and eligible peers other than this one, in id order.
    pub fn live_eligible(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers
            .iter()
            .filter(|(_, s)| s.is_live() && s.eligible)
            .map(|(p, _)| *p)
    }

    /// What to gossip: this peer's beat and those of live peers, and recent tombstones.
    pub fn gossip(&self, now: Time) -> (Vec<GossipBeat>, Vec<(PeerId, Tombstone)>) {
        let mut beats = vec![GossipBeat {
            peer: self.me,
            beat: self.my_beat,
            eligible: self.my_eligible,
        }];
        let mut tombs = Vec::new();
        for (peer, s) in &self.peers {
            if s.is_live() {
                beats.push(GossipBeat {
                    peer: *peer,
                    beat: s.beat,
                    eligible: s.eligible,
                });
            } else if let Some((t, at)) = s.tomb
                && now.saturating_since(at) <= self.tombstone_gossip
            {
                tombs.push((*peer, t));
            }
        }
        (beats, tombs)
    }

    /// The vector of highest beats known (this peer included).
    pub fn vector(&self) -> VersionVector {
        std::iter::once((self.me, self.my_beat))
            .chain(self.peers.iter().map(|(p, s)| (*p, s.beat)))
            .collect()
    }

    /// Every known peer's status, this peer first.
    pub fn explain(&self, now: Time) -> Vec<PeerStatus> {
        let me = PeerStatus {
            peer: self.me,
            incarnation: self.my_beat.incarnation,
            counter: self.my_beat.counter,
            live: true,
            eligible: self.my_eligible,
            silent_for: Duration::ZERO,
            death: None,
        };
        std::iter::once(me)
            .chain(self.peers.iter().map(|(peer, s)| PeerStatus {
                peer: *peer,
                incarnation: s.beat.incarnation,
                counter: s.beat.counter,
                live: s.is_live(),
                eligible: s.eligible,
                silent_for: now.saturating_since(s.fresh_at),
                death: if s.is_live() {
                    None
                } else {
                    s.tomb.map(|(t, _)| t.cause)
                },
            }))
            .collect()
    }
}

/// One entry of a gossiped view: a peer's beat and whether it may lead.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GossipBeat {
    /// The peer.
    pub peer: PeerId,
    /// Its beat.
    pub beat: Beat,
    /// Whether it may lead.
    pub eligible: bool,
}

#[cfg(test)]
pub(crate) mod tests;
