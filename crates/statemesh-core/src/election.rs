//! The election: the lowest live eligible peer id leads, under a term newer than every term
//! seen.
//!
//! Every peer computes the leader from its own [`Liveness`] view — `leader = min { live,
//! eligible peers, self included }` — so the same view gives the same answer everywhere. A
//! leadership carries a [`Term`], its fencing token: a (number, leader) pair above every term
//! seen in gossip, in leader records and in the document, so that a term names exactly one
//! leadership, ever.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::PeerId;
use crate::liveness::Liveness;

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
    use super::*;
    use crate::Config;
    use crate::liveness::tests::{ids, t};
    use crate::vv::Beat;

    #[test]
    fn absurd_terms_from_peers_are_ignored() {
        let p = ids(2);
        let l = Liveness::new(p[0], &Config::default());
        let mut e = Election::default();
        e.observe_claim(p[1], u64::MAX);
        e.observe_term(MAX_TERM + 1);
        assert_eq!(e.max_term(), 0);
        e.observe_claim(p[1], MAX_TERM);
        assert_eq!(e.update(&l, true).new_term, Some(MAX_TERM + 1));
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
