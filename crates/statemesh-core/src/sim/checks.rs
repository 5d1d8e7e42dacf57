//! What the simulator records of every peer's events, and the invariants it checks after every
//! step.

use super::{Sim, Slot};
use crate::{Event, PeerId, Term, Time};

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

impl Sim {
    pub(super) fn observe(&mut self, by: PeerId, event: Event) {
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
            Event::Changed(_)
            | Event::PeerAddresses { .. }
            | Event::ViewRoute { .. }
            | Event::ViewsHeard { .. } => return,
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
                    let t = crate::leader_records::term_of(r);
                    if Some(t) != newest {
                        self.violations.push(Violation(format!(
                            "{me:?} shows {channel}/{key} of term {t}, newest known {newest:?}"
                        )));
                    }
                }
            }
        }
    }

    /// The lowest id among the running, unfrozen, eligible peers of `among`.
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
