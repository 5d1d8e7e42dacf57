//! Time: the node's ticks and their deadlines. A tick's liveness part (heartbeat, judgement of
//! silent peers, election) runs apart as [`Node::handle_beat`], so that a runtime can run it
//! on a task of its own on [`Node::poll_beat_timeout`], and the rest on
//! [`Node::poll_data_timeout`]; views leave through [`Node::poll_view`].

use std::time::Duration;

use super::{Node, PENDING_TTL, Transmit};
use crate::PeerId;
use crate::time::Time;

impl Node {
    /// Puts this node's heartbeats, after the next one, on the instants `phase + k *
    /// heartbeat_interval` of its clock instead of one interval after each beat.
    ///
    /// Windows of one machine that align on the machine's monotonic clock send their views at
    /// the same instants, so each wakes once per interval for all the views it receives (and
    /// once for their acknowledgements) instead of once per peer: idle CPU falls, failure
    /// detection is unchanged (still one view per interval from each peer).
    pub fn align_heartbeats(&mut self, phase: Duration) {
        self.heart().heartbeat_phase = Some(phase);
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
        self.handle_beat(now);
        if self.heart().left {
            return;
        }
        self.settle();
        self.record_claimed_term(Some(now));
        self.expire_pending(now);
        let waiting: Vec<PeerId> = self
            .links
            .iter()
            .filter(|(_, l)| l.push_pending && !l.busy)
            .map(|(p, _)| *p)
            .collect();
        for peer in waiting {
            self.push_changes(peer, now);
        }
        self.reset_stalled_syncs(now);
    }

    /// The liveness part of a tick, and only that: the heartbeat if one is due (its views are
    /// queued for [`poll_view`](Self::poll_view)), the judgement of silent peers, and the
    /// election that follows. It never generates a sync message nor touches the document
    /// beyond recording a new term, so it stays cheap however busy the document is.
    ///
    /// A runtime may call it from a task of its own, on the deadlines of
    /// [`poll_beat_timeout`](Self::poll_beat_timeout), so that heartbeats never wait for bulk
    /// work; [`handle_tick`](Self::handle_tick) includes it.
    pub fn handle_beat(&mut self, now: Time) {
        self.heart().handle_beat(now);
        self.last_tick = self.last_tick.max(now);
        self.absorb();
    }

    /// The next time [`handle_beat`](Self::handle_beat) must be called: the next heartbeat,
    /// the next judgement of a silent peer, the end of the join grace.
    pub fn poll_beat_timeout(&self) -> Time {
        self.heart().poll_beat_timeout()
    }

    /// The next time [`handle_tick`](Self::handle_tick) must be called.
    pub fn poll_timeout(&self) -> Time {
        let mut t = self.poll_beat_timeout();
        let hb = self.config.heartbeat_interval;
        for link in self.links.values().filter(|l| l.push_pending && !l.busy) {
            if let Some(since) = link.changes_in_flight {
                t = t.min(since + hb);
            }
        }
        t
    }

    /// The next time [`handle_tick`](Self::handle_tick) has work beyond the liveness part
    /// (see [`handle_beat`](Self::handle_beat)), if any: a push that waits for a peer's
    /// answer, a sync exchange to check for a stall (every heartbeat interval while documents
    /// differ), a local write to stop watching, received changes to persist. A runtime that runs
    /// [`handle_beat`](Self::handle_beat) on a task of its own ticks its other task on these
    /// deadlines only: an idle node has none.
    pub fn poll_data_timeout(&self) -> Option<Time> {
        let hb = self.config.heartbeat_interval;
        let mut t: Option<Time> = None;
        let mut at = |d: Time| t = Some(t.map_or(d, |t| t.min(d)));
        for link in self.links.values().filter(|l| !l.busy) {
            if link.push_pending
                && let Some(since) = link.changes_in_flight
            {
                at(since + hb);
            }
            if link.mismatch_since.is_some() {
                at(self.last_tick + hb);
            }
        }
        if let Some((_, w)) = self.pending.first_key_value() {
            at(w.at + PENDING_TTL);
        }
        if let Some(since) = self.received_unpersisted {
            at(since + hb * super::persist::RECEIVED_PERSIST_LATEST_BEATS);
        }
        if let Some((_, due)) = self.term_to_record {
            at(due);
        }
        t
    }

    /// The next view (heartbeat) to send, and only views: unlike
    /// [`poll_transmit`](Self::poll_transmit) it never generates a sync message, so a task
    /// that sends heartbeats (after [`handle_beat`](Self::handle_beat)) takes the node for
    /// microseconds. [`poll_transmit`](Self::poll_transmit) returns queued views first too.
    pub fn poll_view(&mut self) -> Option<Transmit> {
        self.heart().poll_view()
    }

    /// Whether the node holds outputs other than views (frames or sync messages to generate,
    /// events, leader records): a runtime that handled views and heartbeats on a task of its
    /// own wakes the one that carries out the rest.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
            || !self.events.is_empty()
            || self.doc_dirty
            || self.sync_due
            || !self.leader_dirty.is_empty()
            || self.heart.try_lock().is_some_and(|h| h.wants_node())
    }
}
