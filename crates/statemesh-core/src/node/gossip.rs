//! What the node takes in from its heart (see `heart`): events, presence entries, leader
//! records of dead writers, a new term to record, and what a peer's view says of its
//! document (a sync owed, writes it holds); and what the node publishes to the heart, the
//! digests its views carry.

use std::collections::VecDeque;

use automerge::ChangeHash;

use super::heart::Note;
use super::link::{Link, RELAY_GRACE_HALF_BEATS};
use super::{Event, Node};
use crate::replica::{Replica, heads_digest};
use crate::{PeerId, Time};

/// The documents a node held lately, by their heads' digest, each with the time the node left
/// it (its heads moved on): a peer whose view shows one of them holds nothing this node lacks,
/// and lacks exactly what came here since (a document's heads only move forward).
#[derive(Debug, Default)]
pub(super) struct LeftDocs(VecDeque<([u8; 8], Time)>);

impl LeftDocs {
    /// Documents kept: at 64 windows, each writing in turn every 100 ms, six seconds' worth;
    /// one left earlier than that is judged as one never held (see [`Link::differs_since`]).
    const KEPT: usize = 64;

    fn left(&mut self, doc: [u8; 8], at: Time) {
        if self.0.len() == Self::KEPT {
            self.0.pop_front();
        }
        self.0.push_back((doc, at));
    }

    fn when_left(&self, doc: [u8; 8]) -> Option<Time> {
        self.0
            .iter()
            .rev()
            .find(|(d, _)| *d == doc)
            .map(|(_, at)| *at)
    }
}

/// Documents a peer's views showed that a node has not held, kept per link. Once full, newer
/// ones are not kept: the grace then runs from the oldest, which can only owe a round sooner.
const UNREACHED_KEPT: usize = 16;

impl Link {
    /// Since when the peer's document, `doc` in a view received `now` (not this node's `mine`),
    /// has differed from this node's in a way that owes it a sync round once the grace has
    /// passed: a change in flight from its writer arrives within it, a change that can only
    /// come relayed does not.
    ///
    /// - A document this node held (`left`): the peer lacks what came here since this node
    ///   left it, and nothing else. Since then.
    /// - Any other: the peer holds something this node lacks (and may lack something of this
    ///   node's). Since the first view that showed a document this node has not reached since:
    ///   once this node holds (or held) the document of a view, it holds everything the
    ///   peer's earlier views showed.
    pub(super) fn differs_since(
        &mut self,
        now: Time,
        doc: [u8; 8],
        mine: [u8; 8],
        left: &LeftDocs,
    ) -> Time {
        if let Some(at) = left.when_left(doc) {
            self.unreached.clear();
            return at;
        }
        let reached = |(d, _): &([u8; 8], Time)| *d == mine || left.when_left(*d).is_some();
        if let Some(last) = self.unreached.iter().rposition(reached) {
            self.unreached.drain(..=last);
        }
        if self.unreached.back().is_none_or(|(d, _)| *d != doc)
            && self.unreached.len() < UNREACHED_KEPT
        {
            self.unreached.push_back((doc, now));
        }
        self.unreached.front().map_or(now, |(_, since)| *since)
    }
}

impl Node {
    /// Takes in the terms recorded in the document: the newest stored term, and the greatest
    /// stored number (so that a new claim goes above every number ever stored).
    pub(super) fn observe_stored_terms(&mut self) -> bool {
        let newest = self.replica.newest_stored_term();
        let max = self.replica.max_stored_term();
        if self.stored_terms == Some((newest, max)) {
            return false;
        }
        self.stored_terms = Some((newest, max));
        self.heart().observe_stored_terms(newest, max);
        true
    }

    /// Runs the election again, and takes in what it changed.
    pub(super) fn reelect(&mut self, now: Time) {
        self.heart().reelect(now);
        self.absorb();
    }

    /// Gives the heart the digests of the document and of the leader records, for its views;
    /// keeps the document left, if the document moved.
    pub(super) fn publish_digests(&mut self) {
        let doc = heads_digest(&self.replica.heads());
        let leader = self.leader.digest();
        let before = self.digests.publish(doc, leader);
        if before != doc {
            self.left_docs.left(before, self.last_tick);
        }
    }

    /// Takes in, in order, what the heart left for the node.
    pub(super) fn absorb(&mut self) {
        // This document's heads and their digest, read once for all the views' notes: after a
        // write every peer's next view names a new digest, 63 notes at 64 windows.
        let mut mine: Option<(Vec<ChangeHash>, [u8; 8])> = None;
        loop {
            // Those the heart left while the last ones were taken in, too.
            let Some(notes) = self.heart.try_lock().map(|mut heart| {
                let notes = heart.take_notes();
                // A peer's liveness changed: reads that do not wait for the heart see it from
                // now on (see `Node::live_now`).
                if notes.iter().any(|n| matches!(n, Note::Presence(_))) {
                    *self.live_seen.borrow_mut() = super::reads::LiveNow::of(&heart);
                }
                notes
            }) else {
                return;
            };
            if notes.is_empty() {
                return;
            }
            for note in notes {
                self.absorb_note(note, &mut mine);
            }
        }
    }

    /// Takes in one note of the heart's; `mine` is this document's heads and their digest, if
    /// read already.
    fn absorb_note(&mut self, note: Note, mine: &mut Option<(Vec<ChangeHash>, [u8; 8])>) {
        match note {
            Note::Event(e) => self.events.push_back(e),
            Note::Presence(peer) => self.presence_changed(peer),
            Note::Prune => {
                let heart = self.heart.lock();
                self.leader.prune(|w| !heart.live.is_live(w));
                drop(heart);
                self.publish_digests();
            }
            Note::RecordTerm(term) => {
                let due = self.last_tick + self.config.heartbeat_interval;
                self.term_to_record = Some(match self.term_to_record {
                    Some((pending, due)) => (pending.max(term), due),
                    None => (term, due),
                });
            }
            Note::View {
                from,
                at,
                doc,
                leader,
            } => {
                let heads = mine.take().unwrap_or_else(|| {
                    let heads = self.replica.heads();
                    let digest = heads_digest(&heads);
                    (heads, digest)
                });
                self.on_view(at, from, (doc, leader), &heads);
                *mine = Some(heads);
            }
        }
    }

    /// Records the term this peer claimed in the document (`m.terms`), if one waits and is
    /// due at `now` (`None`: whenever due).
    ///
    /// A claim reaches every peer in its views at once; the record is what a mesh restarted
    /// from disk, or a peer that hears of the leader only through the document, goes above.
    /// It waits a heartbeat interval, so that the failover the claim ends is over before the
    /// record's write goes out to every peer: written at once, its commit, persist and sync
    /// messages came before the views that carried the claim, and every survivor received
    /// and applied the write while it took the claim in (`failover-kill`, 4 windows: p50
    /// 1.80-1.88 ms with it, 1.17-1.34 ms without). Safe to lose: a leader that dies before
    /// its term is recorded leaves nothing fenced by it behind but leader records, which carry
    /// the term themselves, and a later claim of the same number by another peer is another
    /// term (numbers are compared with the leader's id).
    pub(super) fn record_claimed_term(&mut self, now: Option<Time>) {
        let Some((term, due)) = self.term_to_record else {
            return;
        };
        if now.is_some_and(|now| now < due) {
            return;
        }
        self.term_to_record = None;
        self.settle();
        let before = self.replica.heads();
        match self.replica.record_term(term) {
            Ok(hash) => {
                self.after_local_change(&before, hash);
            }
            Err(e) => tracing::warn!(error = %e, "could not record leadership term"),
        }
    }

    fn presence_changed(&mut self, writer: PeerId) {
        for change in self.replica.presence_entries_of(writer) {
            self.events.push_back(Event::Changed(change));
        }
    }

    /// What a view from `from`, received at `now`, says of its document (digest `doc`) and
    /// leader records (digest `leader`): a sync owed while they differ from this node's
    /// (whose heads and their digest are `heads`), and the pending local writes it holds once
    /// they are equal.
    fn on_view(
        &mut self,
        now: Time,
        from: PeerId,
        (doc, leader): ([u8; 8], [u8; 8]),
        heads: &(Vec<ChangeHash>, [u8; 8]),
    ) {
        let mine = heads.1;
        let leader_mismatch = leader != self.leader.digest();
        let left = &self.left_docs;
        let Some(link) = self.links.get_mut(&from) else {
            return;
        };
        let progressed = link.their_doc != Some(doc);
        link.their_doc = Some(doc);
        link.their_leader = Some(leader);
        let relay_after = self.config.heartbeat_interval / 2 * RELAY_GRACE_HALF_BEATS;
        if doc == mine {
            link.mismatch_since = None;
            link.unreached.clear();
            // Its sync state as if it had said so itself (see `Replica::note_peer_holds`); not
            // while a job holds a copy of the state, which replaces it when it ends.
            if !link.busy {
                Replica::note_peer_holds(&heads.0, &mut link.sync);
            }
        } else {
            let differs_since = link.differs_since(now, doc, mine, left);
            if progressed || link.mismatch_since.is_none() {
                link.mismatch_since = Some(now);
                link.stalled_views = 0;
                link.unproductive_syncs = 0;
            } else {
                link.stalled_views = link.stalled_views.saturating_add(1);
            }
            // Not while the difference is younger than the grace: the change in flight most
            // likely arrives from its writer first (see `RELAY_GRACE_HALF_BEATS`).
            if now.saturating_since(differs_since) >= relay_after {
                self.want_sync(from, now);
            }
        }
        if leader_mismatch {
            self.push_leader(from, now);
        }
        if doc == mine {
            // Its document is this one, so it holds every pending local write. The sync
            // exchange alone may never say so: its last message can name heads not yet known
            // here (changes still on their way, or relayed later by a third peer), and once
            // the documents are equal no further message comes.
            self.pending_held_by(now, from);
        }
    }
}
