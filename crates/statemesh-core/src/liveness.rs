//! Liveness (heartbeat version vectors, tombstones, refutation) and the election built on it.
//!
//! Freshness is judged on the local monotonic clock only: a peer is fresh while its beat keeps
//! rising in our vector, whichever path the news came by. An incarnation judged dead gets a
//! tombstone; beats of that incarnation (or an older one) are merged into the vector but never
//! make it live again, whatever order old news arrives in. A process that sees a tombstone for its
//! own current incarnation refutes by moving to the next one.

use std::collections::BTreeMap;
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
        if peer == self.me {
            return;
        }
        let Some(state) = self.peers.get_mut(&peer) else {
            self.peers.insert(
                peer,
                PeerState {
                    beat,
                    eligible,
                    fresh_at: now,
                    tomb: None,
                    hint_at: None,
                },
            );
            changes.push(LivenessChange::Up(Incarnation {
                peer,
                number: beat.incarnation,
            }));
            return;
        };
        if beat <= state.beat {
            return;
        }
        let was_live = state.is_live();
        state.beat = beat;
        if !state.is_live() {
            // Late news of an incarnation already judged dead: remembered, never revived.
            return;
        }
        state.eligible = eligible;
        state.fresh_at = now;
        state.hint_at = None;
        if !was_live {
            changes.push(LivenessChange::Up(Incarnation {
                peer,
                number: beat.incarnation,
            }));
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

/// The greatest term number accepted from another peer (gossip or the document). Term numbers
/// grow by one per leadership change, so a greater one can only come from a broken or hostile
/// peer; it is ignored, so that a term above every term seen always exists.
pub const MAX_TERM: u64 = 1 << 53;

/// A leadership term: the fencing token of one leadership.
///
/// A term is a (number, leader) pair, ordered by number, then by leader id. A peer that starts
/// leading takes a number above every number it has seen, and never claims the same number
/// twice; its id is fresh at every process start. So a term names exactly one leadership, ever:
/// two peers that claim at the same moment (a fresh mesh, the sides of a partition) claim the
/// same *number* but distinct terms, and every peer orders the two the same way. The newer term
/// wins everywhere: readers ignore leader records of any older term, and a leader that learns
/// of a newer term than its own stops leading under it (if it is still the leader, it starts a
/// term above it).
///
/// On the wire, in the document (`m.terms`: leader id → number) and in leader records (writer,
/// number) a term was always stored as this pair; only the comparison changed (it used to compare
/// numbers alone).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Term {
    /// The term number: above every number its leader had seen when it claimed.
    pub number: u64,
    /// The peer that leads under it.
    pub leader: PeerId,
}

impl Term {
    /// The term `number` of `leader`.
    pub fn new(number: u64, leader: PeerId) -> Self {
        Self { number, leader }
    }
}

impl std::fmt::Display for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.number, self.leader.short())
    }
}

/// Who leads, as one peer sees it. Together, `leader` and `term` are the leadership's [`Term`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Leadership {
    /// The leader, if any peer is a candidate.
    pub leader: Option<PeerId>,
    /// The number of the leader's term, once its claim is known to be the newest; `None` while
    /// pending.
    pub term: Option<u64>,
}

impl Leadership {
    /// The leader's term, once known.
    pub fn term_id(&self) -> Option<Term> {
        Some(Term::new(self.term?, self.leader?))
    }
}

/// The election: the lowest live eligible peer id leads, under a term newer than every term
/// seen.
#[derive(Clone, Debug, Default)]
pub struct Election {
    /// The highest term number claimed by each peer.
    claims: BTreeMap<PeerId, u64>,
    /// The newest term seen anywhere.
    newest: Option<Term>,
    /// The greatest term number seen anywhere (that of `newest`, or a number stored in the
    /// document under a key that names no peer).
    max_term: u64,
    my_term: Option<u64>,
    current: Leadership,
}

/// The outcome of [`Election::update`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ElectionOutcome {
    /// The leadership changed (leader or term) to this.
    pub changed: Option<Leadership>,
    /// This peer started leading under a new term of this number.
    pub new_term: Option<u64>,
    /// This peer stopped leading.
    pub lost: bool,
}

impl Election {
    /// The current leadership.
    pub fn current(&self) -> Leadership {
        self.current
    }

    /// The greatest term number seen anywhere.
    pub fn max_term(&self) -> u64 {
        self.max_term
    }

    /// The newest term seen anywhere (this peer's own included).
    pub fn newest(&self) -> Option<Term> {
        self.newest
    }

    /// The number of the term under which this peer leads, if it does.
    pub fn my_term(&self) -> Option<u64> {
        self.my_term
    }

    /// Records a term seen, claimed or stored. Numbers above [`MAX_TERM`] are ignored.
    pub fn observe(&mut self, term: Term) {
        if term.number > MAX_TERM {
            return;
        }
        let e = self.claims.entry(term.leader).or_default();
        *e = (*e).max(term.number);
        self.newest = self.newest.max(Some(term));
        self.max_term = self.max_term.max(term.number);
    }

    /// Records term `term` claimed by `peer` (from gossip or from stored records). A term above
    /// [`MAX_TERM`] is ignored.
    pub fn observe_claim(&mut self, peer: PeerId, term: u64) {
        self.observe(Term::new(term, peer));
    }

    /// Records a term number seen in stored records whose leader is unknown (new claims go above
    /// it). A number above [`MAX_TERM`] is ignored.
    pub fn observe_term(&mut self, term: u64) {
        if term > MAX_TERM {
            return;
        }
        self.max_term = self.max_term.max(term);
    }

    /// The claims to gossip: those of `peers` and the newest one.
    pub fn gossip(&self, peers: impl Iterator<Item = PeerId>) -> Vec<(PeerId, u64)> {
        let mut out: Vec<(PeerId, u64)> = peers
            .filter_map(|p| self.claims.get(&p).map(|t| (p, *t)))
            .collect();
        if let Some(t) = self.newest
            && !out.iter().any(|(q, _)| *q == t.leader)
        {
            out.push((t.leader, t.number));
        }
        out
    }

    /// Recomputes the leader from the liveness table. `me_ready` says whether this peer, if
    /// eligible, may claim leadership now (it is past its join grace). While it is not, and it
    /// would be the leader, there is no leader yet rather than a higher one that would have to
    /// step down a moment later.
    pub fn update(&mut self, liveness: &Liveness, me_ready: bool) -> ElectionOutcome {
        let me = liveness.me().peer;
        let mut leader = liveness.live_eligible().next();
        if liveness.my_eligible() && leader.is_none_or(|l| me < l) {
            leader = me_ready.then_some(me);
        }
        let mut outcome = ElectionOutcome {
            changed: None,
            new_term: None,
            lost: false,
        };
        let term = match leader {
            Some(l) if l == me => {
                // A newer term than this peer's own exists (a partition healed, another peer
                // claimed the same number with a higher id, or it was wrongly judged dead and
                // someone else led meanwhile): its leadership under its term is over, and it
                // starts a newer one.
                let stale = self.my_term.is_none_or(|t| {
                    t < self.max_term || self.newest.is_some_and(|n| Term::new(t, me) < n)
                });
                if stale {
                    // Terms seen are at most MAX_TERM, so this cannot saturate in practice.
                    let term = self.max_term.saturating_add(1);
                    self.observe(Term::new(term, me));
                    outcome.lost = self.my_term.is_some();
                    self.my_term = Some(term);
                    outcome.new_term = Some(term);
                }
                self.my_term
            }
            Some(l) => {
                outcome.lost = self.my_term.take().is_some();
                self.claims
                    .get(&l)
                    .copied()
                    .filter(|t| Some(Term::new(*t, l)) == self.newest)
            }
            None => {
                outcome.lost = self.my_term.take().is_some();
                None
            }
        };
        let now = Leadership { leader, term };
        if now != self.current {
            self.current = now;
            outcome.changed = Some(now);
        }
        outcome
    }

    /// Gives up leadership (on leave, or on waking from a freeze).
    pub fn step_down(&mut self) -> bool {
        self.my_term.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn ids(n: usize) -> Vec<PeerId> {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        (0..n)
            .map(|i| PeerId::generate(1000 + i as u64, &mut rng))
            .collect()
    }

    fn t(ms: u64) -> Time {
        Time::from_micros(ms * 1000)
    }

    #[test]
    fn late_old_news_never_revives_a_dead_incarnation() {
        let p = ids(2);
        let mut l = Liveness::new(p[0], &Config::default());
        let mut ch = Vec::new();
        l.observe_beat(
            p[1],
            Beat {
                incarnation: 0,
                counter: 5,
            },
            true,
            t(0),
            &mut ch,
        );
        l.judge(t(1500), &mut ch);
        assert!(!l.is_live(&p[1]));
        assert!(l.is_dead(&p[1], 0));
        // A relayed, delayed heartbeat from before the death: higher counter, same incarnation.
        ch.clear();
        l.observe_beat(
            p[1],
            Beat {
                incarnation: 0,
                counter: 9,
            },
            true,
            t(1600),
            &mut ch,
        );
        assert!(!l.is_live(&p[1]), "old news revived a dead incarnation");
        assert!(ch.is_empty());
        // A refuted, newer incarnation is live.
        l.observe_beat(
            p[1],
            Beat {
                incarnation: 1,
                counter: 10,
            },
            true,
            t(1700),
            &mut ch,
        );
        assert!(l.is_live(&p[1]));
        assert_eq!(
            ch,
            vec![LivenessChange::Up(Incarnation {
                peer: p[1],
                number: 1
            })]
        );
    }

    #[test]
    fn a_wrongly_judged_peer_refutes_with_a_new_incarnation() {
        let p = ids(1);
        let mut l = Liveness::new(p[0], &Config::default());
        let mut ch = Vec::new();
        l.observe_tombstone(
            p[0],
            Tombstone {
                incarnation: 0,
                cause: DeathCause::Timeout,
            },
            t(5),
            &mut ch,
        );
        assert_eq!(l.me().number, 1);
        assert_eq!(
            ch,
            vec![LivenessChange::Refuted(Incarnation {
                peer: p[0],
                number: 1
            })]
        );
        // An older tombstone arriving late changes nothing.
        ch.clear();
        l.observe_tombstone(
            p[0],
            Tombstone {
                incarnation: 0,
                cause: DeathCause::Timeout,
            },
            t(6),
            &mut ch,
        );
        assert!(ch.is_empty());
    }

    #[test]
    fn relayed_news_keeps_a_peer_alive_and_a_hint_needs_silence() {
        let p = ids(2);
        let config = Config::default();
        let mut l = Liveness::new(p[0], &config);
        let mut ch = Vec::new();
        l.observe_beat(
            p[1],
            Beat {
                incarnation: 0,
                counter: 1,
            },
            true,
            t(0),
            &mut ch,
        );
        l.link_down(p[1], LinkDown::Hint, t(10), &mut ch);
        // Relayed news after the hint clears it.
        l.observe_beat(
            p[1],
            Beat {
                incarnation: 0,
                counter: 2,
            },
            true,
            t(200),
            &mut ch,
        );
        l.judge(t(700), &mut ch);
        assert!(l.is_live(&p[1]));
        // A hint followed by silence kills before the suspect timeout.
        l.link_down(p[1], LinkDown::Hint, t(800), &mut ch);
        l.judge(t(800) + config.hint_timeout, &mut ch);
        assert!(!l.is_live(&p[1]));
        assert!(
            t(800) + config.hint_timeout
                < t(200) + config.suspect_timeout + Duration::from_millis(600)
        );
    }

    #[test]
    fn absurd_terms_and_incarnations_from_peers_are_ignored() {
        let p = ids(2);
        let mut l = Liveness::new(p[0], &Config::default());
        let mut ch = Vec::new();
        let tomb = |incarnation| Tombstone {
            incarnation,
            cause: DeathCause::Timeout,
        };
        l.observe_received_tombstone(p[0], tomb(u64::MAX), t(0), &mut ch);
        assert_eq!(l.me().number, 0);
        assert!(ch.is_empty());
        // The highest acceptable tombstone can still be refuted.
        l.observe_received_tombstone(p[0], tomb(MAX_INCARNATION), t(0), &mut ch);
        assert_eq!(l.me().number, MAX_INCARNATION + 1);
        let mut e = Election::default();
        e.observe_claim(p[1], u64::MAX);
        e.observe_term(MAX_TERM + 1);
        assert_eq!(e.max_term(), 0);
        e.observe_claim(p[1], MAX_TERM);
        assert_eq!(e.update(&l, true).new_term, Some(MAX_TERM + 1));
    }

    #[test]
    fn certain_link_loss_kills_at_once() {
        let p = ids(2);
        let mut l = Liveness::new(p[0], &Config::default());
        let mut ch = Vec::new();
        l.observe_beat(p[1], Beat::default(), true, t(0), &mut ch);
        ch.clear();
        l.link_down(p[1], LinkDown::Certain, t(1), &mut ch);
        assert_eq!(
            ch,
            vec![LivenessChange::Down(
                Incarnation {
                    peer: p[1],
                    number: 0
                },
                DeathCause::LinkClosed
            )]
        );
    }

    #[test]
    fn election_picks_lowest_live_eligible_and_new_terms_exceed_all_seen() {
        let p = ids(3);
        let mut l = Liveness::new(p[1], &Config::default());
        let mut ch = Vec::new();
        l.observe_beat(p[0], Beat::default(), false, t(0), &mut ch);
        let mut joining = Election::default();
        joining.update(&l, false);
        assert_eq!(
            joining.current().leader,
            None,
            "the would-be leader is still joining"
        );
        l.observe_beat(p[2], Beat::default(), true, t(0), &mut ch);
        let mut e = Election::default();
        e.observe_claim(p[2], 7);
        // p0 is lower but not eligible: p1 leads, under a term above every term seen.
        let out = e.update(&l, true);
        assert_eq!(out.new_term, Some(8));
        assert_eq!(
            e.current(),
            Leadership {
                leader: Some(p[1]),
                term: Some(8)
            }
        );
        // A higher claim seen while leading starts a newer term.
        e.observe_claim(p[2], 9);
        let out = e.update(&l, true);
        assert!(out.lost);
        assert_eq!(out.new_term, Some(10));
        // So does another peer's claim of the same term (two leaderships would share one
        // fencing token).
        e.observe_claim(p[2], 10);
        let out = e.update(&l, true);
        assert!(out.lost);
        assert_eq!(out.new_term, Some(11));
        assert_eq!(
            e.update(&l, true).new_term,
            None,
            "its own claim is no collision"
        );
        // Once p1 is gone, p2 is the only candidate; as an ineligible observer sees it, p2's
        // term is pending until its claim is the newest.
        let observer = Config {
            eligible: false,
            ..Config::default()
        };
        let mut view = Liveness::new(p[0], &observer);
        view.observe_beat(p[2], Beat::default(), true, t(0), &mut ch);
        let mut other = Election::default();
        other.observe_claim(p[2], 9);
        other.observe_claim(p[1], 10);
        other.update(&view, false);
        assert_eq!(
            other.current(),
            Leadership {
                leader: Some(p[2]),
                term: None
            }
        );
        other.observe_claim(p[2], 11);
        other.update(&view, false);
        assert_eq!(
            other.current(),
            Leadership {
                leader: Some(p[2]),
                term: Some(11)
            }
        );
    }

    #[test]
    fn one_number_claimed_twice_names_two_ordered_terms() {
        // p0 < p1 < p2. p1 and p2 each claimed term 1 before hearing the other.
        let p = ids(3);
        let mut ch = Vec::new();
        let mut l1 = Liveness::new(p[1], &Config::default());
        l1.observe_beat(p[2], Beat::default(), true, t(0), &mut ch);
        let mut e1 = Election::default();
        let mut alone = Liveness::new(p[1], &Config::default());
        alone.observe_beat(p[0], Beat::default(), false, t(0), &mut ch);
        assert_eq!(e1.update(&alone, true).new_term, Some(1));
        // p1, the lower id, hears p2's claim of the same number: (1, p2) is the newer term, so
        // p1's leadership under (1, p1) is over and it starts term 2.
        e1.observe_claim(p[2], 1);
        assert_eq!(e1.newest(), Some(Term::new(1, p[2])));
        let out = e1.update(&l1, true);
        assert!(out.lost);
        assert_eq!(out.new_term, Some(2));
        assert_eq!(e1.newest(), Some(Term::new(2, p[1])));
        // p2, the higher id, hears p1's claim of 1: an older term than its own, so it would keep
        // (1, p2) if it still led; it does not (p1 is lower), and shows p1's term once newest.
        let mut l2 = Liveness::new(p[2], &Config::default());
        l2.observe_beat(p[1], Beat::default(), true, t(0), &mut ch);
        let mut e2 = Election::default();
        e2.observe_claim(p[2], 1);
        e2.observe_claim(p[1], 1);
        assert_eq!(e2.newest(), Some(Term::new(1, p[2])));
        e2.update(&l2, true);
        assert_eq!(e2.current().term, None, "(1, p1) is older than (1, p2)");
        e2.observe_claim(p[1], 2);
        e2.update(&l2, true);
        assert_eq!(e2.current().term_id(), Some(Term::new(2, p[1])));
        // Terms order by number, then leader.
        assert!(Term::new(1, p[2]) < Term::new(2, p[0]));
        assert!(Term::new(1, p[0]) < Term::new(1, p[1]));
    }
}
