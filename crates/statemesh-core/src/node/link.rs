//! The sync exchange with each linked peer ([`Link`]): sync messages sent and received, local
//! changes pushed coalesced (one message per round trip while one is unanswered), and a stalled
//! exchange restarted — unless the peer is busy (applying a backlog, or a job of this node
//! holds its sync state) and still productive.

use automerge::ChangeHash;

use super::{Event, Node, PUSH_AT_ONCE};
use crate::codec::Message;
use crate::replica::{EntryChange, Replica, heads_digest};
use crate::{PeerId, Time};

#[derive(Debug)]
pub(super) struct Link {
    pub(super) sync: automerge::sync::State,
    pub(super) their_doc: Option<[u8; 8]>,
    /// The digest of the peer's leader records, from its last view.
    pub(super) their_leader: Option<[u8; 8]>,
    /// Since when the documents have differed with no progress on either side.
    pub(super) mismatch_since: Option<Time>,
    /// Views received since `mismatch_since` that showed the peer's document unchanged: a
    /// stall is a peer that keeps talking without progressing, not one too busy to talk.
    pub(super) stalled_views: u32,
    pub(super) leader_pushed: Option<Time>,
    /// Since when a sync message carrying changes is on its way to the peer, unanswered (see
    /// [`Node::push_changes`]).
    pub(super) changes_in_flight: Option<Time>,
    /// Local changes wait for the peer's answer to the message in flight.
    pub(super) push_pending: bool,
    /// Since when our last sync message to the peer is unanswered (no sync message came back).
    pub(super) awaiting_answer: Option<Time>,
    /// Sync messages received since the documents last progressed, while they differ.
    pub(super) unproductive_syncs: u32,
    /// A sync message of this peer is being applied, or one for it generated, away from the
    /// node (a [`SyncJob`](super::SyncJob) or a [`PushJob`](super::PushJob)): nothing else
    /// touches its sync state until the job comes back.
    pub(super) busy: bool,
    /// Local changes are to be pushed to this peer by the next [`PushJob`](super::PushJob) (in
    /// the mode of [`Node::set_push_jobs`]).
    pub(super) push_ready: bool,
    /// Which link this is (a link that went down and came up again is another).
    pub(super) serial: u64,
    /// The newest pending local write the peer is known to hold. It holds every earlier one
    /// too: each change of this peer's actor depends on the one before it. See
    /// [`Node::backlog`].
    pub(super) held_upto: super::WriteId,
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

impl Node {
    /// Restarts the sync exchange of every stalled link (see [`Node::handle_tick`]).
    pub(super) fn reset_stalled_syncs(&mut self, now: Time) {
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
                // A peer owed a message that a push job is to generate is not stalled either:
                // the message is on its way.
                !l.busy
                    && !l.push_ready
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

    /// What follows a sync message from `from` applied on top of heads `before`, the entries
    /// its changes touched being `changes`.
    pub(super) fn after_sync(
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
        if !self.links.values().any(|l| l.push_ready || l.push_pending) {
            // The reply carried what waited: no push is owed to anyone.
            self.unpushed = 0;
        }
        self.check_replicated(now, from);
    }

    pub(super) fn sync_with(&mut self, peer: PeerId) {
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
    pub(super) fn push_changes(&mut self, peer: PeerId, now: Time) {
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

    pub(super) fn push_leader(&mut self, peer: PeerId, now: Time) {
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
}
