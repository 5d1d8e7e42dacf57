//! Replication acknowledgements: the local writes watched until each linked peer holds them
//! ([`Event::Replicated`]), for [`PENDING_TTL`] and up to [`MAX_PENDING_WRITES`] at once.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use automerge::ChangeHash;

use super::{Event, Node, WriteId};
use crate::{PeerId, Time};

/// How long a local write is watched for replication acknowledgements (peers that join or
/// reconnect within this time still acknowledge it). See [`Node::replication_tracked_from`].
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// The most local writes tracked for replication acknowledgements at once: a write is no
/// longer watched once this many newer ones are.
pub const MAX_PENDING_WRITES: usize = 4096;

#[derive(Debug)]
pub(super) struct PendingWrite {
    pub(super) hash: ChangeHash,
    pub(super) holders: BTreeSet<PeerId>,
    pub(super) at: Time,
}

impl PendingWrite {
    /// `peer` holds this write (`write`): reported once per peer.
    fn held_by(&mut self, write: WriteId, peer: PeerId, now: Time, events: &mut VecDeque<Event>) {
        if self.holders.insert(peer) {
            let after = now.saturating_since(self.at);
            events.push_back(Event::Replicated { write, peer, after });
        }
    }
}

impl Node {
    /// Local writes with an id below this one are no longer watched for replication
    /// acknowledgements (older than [`PENDING_TTL`], or [`MAX_PENDING_WRITES`] newer ones are
    /// watched): no further [`Event::Replicated`] comes for them. A runtime uses it to end the
    /// waits of such writes instead of letting them hang.
    pub fn replication_tracked_from(&self) -> WriteId {
        self.pending
            .first_key_value()
            .map_or(WriteId(self.next_write + 1), |(id, _)| *id)
    }

    /// Stops watching local writes older than [`PENDING_TTL`] (they are in id order).
    pub(super) fn expire_pending(&mut self, now: Time) {
        while self
            .pending
            .first_key_value()
            .is_some_and(|(_, w)| now.saturating_since(w.at) >= PENDING_TTL)
        {
            self.pending.pop_first();
        }
    }

    /// `peer` holds every pending local write.
    pub(super) fn pending_held_by(&mut self, now: Time, peer: PeerId) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let from = link.held_upto;
        link.held_upto = WriteId(self.next_write);
        for (write, w) in self.pending.range_mut(next_id(from)..) {
            w.held_by(*write, peer, now, &mut self.events);
        }
    }

    /// How many local writes the live linked peers have not all acknowledged yet: the
    /// tracked writes after the newest one that every live linked peer holds (0 with no live
    /// link). The runtime's backpressure counts it (see `docs/architecture.md`, *The
    /// runtime*). It is at most [`MAX_PENDING_WRITES`], and costs one step per write counted.
    pub fn backlog(&self) -> usize {
        let floor = self
            .links
            .iter()
            .filter(|(p, _)| self.live.is_live(p))
            .map(|(_, l)| l.held_upto)
            .min();
        floor.map_or(0, |w| self.pending.range(next_id(w)..).count())
    }

    pub(super) fn check_replicated(&mut self, now: Time, peer: PeerId) {
        let Some(link) = self.links.get(&peer) else {
            return;
        };
        // Writes up to `held_upto` are held (each depends on the one before it).
        let waiting: Vec<(WriteId, ChangeHash)> = self
            .pending
            .range(next_id(link.held_upto)..)
            .filter(|(_, w)| !w.holders.contains(&peer))
            .map(|(id, w)| (*id, w.hash))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let hashes: Vec<ChangeHash> = waiting.iter().map(|(_, h)| *h).collect();
        let held = self.replica.held_by(&link.sync, &hashes);
        let mut newest = None;
        for ((write, _), held) in waiting.into_iter().zip(held) {
            if !held {
                continue;
            }
            newest = Some(write);
            if let Some(w) = self.pending.get_mut(&write) {
                w.held_by(write, peer, now, &mut self.events);
            }
        }
        if let Some(newest) = newest
            && let Some(link) = self.links.get_mut(&peer)
        {
            link.held_upto = link.held_upto.max(newest);
        }
    }
}

/// The write id after `w`.
fn next_id(w: WriteId) -> WriteId {
    WriteId(w.0.saturating_add(1))
}
