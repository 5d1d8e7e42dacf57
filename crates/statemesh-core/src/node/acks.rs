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
        for (write, w) in &mut self.pending {
            w.held_by(*write, peer, now, &mut self.events);
        }
    }

    pub(super) fn check_replicated(&mut self, now: Time, peer: PeerId) {
        let Some(link) = self.links.get(&peer) else {
            return;
        };
        let waiting: Vec<(WriteId, ChangeHash)> = self
            .pending
            .iter()
            .filter(|(_, w)| !w.holders.contains(&peer))
            .map(|(id, w)| (*id, w.hash))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let hashes: Vec<ChangeHash> = waiting.iter().map(|(_, h)| *h).collect();
        let held = self.replica.held_by(&link.sync, &hashes);
        for ((write, _), held) in waiting.into_iter().zip(held) {
            if !held {
                continue;
            }
            if let Some(w) = self.pending.get_mut(&write) {
                w.held_by(write, peer, now, &mut self.events);
            }
        }
    }
}
