//! What the node takes in from its heart (see `heart`): events, presence entries, leader
//! records of dead writers, a new term to record, and what a peer's view says of its
//! document (a sync owed, writes it holds); and what the node publishes to the heart, the
//! digests its views carry.

use super::heart::Note;
use super::link::RELAY_GRACE_HALF_BEATS;
use super::{Event, Node};
use crate::replica::heads_digest;
use crate::{PeerId, Time};

impl Node {
    /// Takes in the terms recorded in the document: the newest stored term, and the greatest
    /// stored number (so that a new claim goes above every number ever stored).
    pub(super) fn observe_stored_terms(&mut self) {
        let newest = self.replica.newest_stored_term();
        let max = self.replica.max_stored_term();
        self.heart().observe_stored_terms(newest, max);
    }

    /// Runs the election again, and takes in what it changed.
    pub(super) fn reelect(&mut self, now: Time) {
        self.heart().reelect(now);
        self.absorb();
    }

    /// Gives the heart the digests of the document and of the leader records, for its views.
    pub(super) fn publish_digests(&self) {
        let doc = heads_digest(&self.replica.heads());
        let leader = self.leader.digest();
        let mut heart = self.heart();
        heart.doc = doc;
        heart.leader = leader;
    }

    /// Takes in, in order, what the heart left for the node.
    pub(super) fn absorb(&mut self) {
        loop {
            let Some(note) = self.heart().notes.pop_front() else {
                return;
            };
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
                    self.settle();
                    let before = self.replica.heads();
                    match self.replica.record_term(term) {
                        Ok(hash) => {
                            self.after_local_change(&before, hash);
                        }
                        Err(e) => tracing::warn!(error = %e, "could not record leadership term"),
                    }
                }
                Note::View {
                    from,
                    at,
                    doc,
                    leader,
                } => self.on_view(at, from, doc, leader),
            }
        }
    }

    fn presence_changed(&mut self, writer: PeerId) {
        for change in self.replica.presence_entries_of(writer) {
            self.events.push_back(Event::Changed(change));
        }
    }

    /// What a view from `from`, received at `now`, says of its document (digest `doc`) and
    /// leader records (digest `leader`): a sync owed while they differ from this node's, and
    /// the pending local writes it holds once they are equal.
    fn on_view(&mut self, now: Time, from: PeerId, doc: [u8; 8], leader: [u8; 8]) {
        let mine = heads_digest(&self.replica.heads());
        let leader_mismatch = leader != self.leader.digest();
        let Some(link) = self.links.get_mut(&from) else {
            return;
        };
        let progressed = link.their_doc != Some(doc);
        link.their_doc = Some(doc);
        link.their_leader = Some(leader);
        let relay_after = self.config.heartbeat_interval / 2 * RELAY_GRACE_HALF_BEATS;
        if doc == mine {
            link.mismatch_since = None;
            link.differs_since = None;
        } else {
            let differs_since = *link.differs_since.get_or_insert(now);
            if progressed || link.mismatch_since.is_none() {
                link.mismatch_since = Some(now);
                link.stalled_views = 0;
                link.unproductive_syncs = 0;
            } else {
                link.stalled_views = link.stalled_views.saturating_add(1);
            }
            // Not at the first views that differ: the change in flight most likely arrives
            // from its writer first (see `RELAY_GRACE_HALF_BEATS`).
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
