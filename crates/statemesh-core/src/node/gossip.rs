//! Views, liveness and election as the node runs them: the view sent to every linked peer
//! (beats, tombstones, term claims, digests of the document and leader records), what a
//! received view changes, and the re-election after every change of liveness.

use super::{Event, Node};
use crate::codec::{Message, View};
use crate::liveness::LivenessChange;
use crate::replica::heads_digest;
use crate::{PeerId, Time};

impl Node {
    /// Takes in the terms recorded in the document: the newest stored term, and the greatest
    /// stored number (so that a new claim goes above every number ever stored).
    pub(super) fn observe_stored_terms(&mut self) {
        if let Some(t) = self.replica.newest_stored_term() {
            self.election.observe(t);
        }
        self.election.observe_term(self.replica.max_stored_term());
    }

    pub(super) fn reelect(&mut self, now: Time) {
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

    pub(super) fn apply_liveness(&mut self, changes: Vec<LivenessChange>, now: Time) {
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

    pub(super) fn view(&self, now: Time) -> View {
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

    pub(super) fn send_views(&mut self, now: Time) {
        if self.links.is_empty() || self.left {
            return;
        }
        let view = Message::View(self.view(now));
        self.broadcast(&view);
    }

    pub(super) fn on_view(&mut self, now: Time, from: PeerId, view: View) {
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
            self.want_sync(from, now);
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
}
