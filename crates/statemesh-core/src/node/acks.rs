//! Acknowledgements of local writes, the one store of them: the local writes watched until
//! each linked peer holds them ([`Event::Replicated`]), for [`PENDING_TTL`] and up to
//! [`MAX_PENDING_WRITES`] at once, and which writes are durable. A runtime asks
//! [`Node::write_status`] and waits for [`Node::ack_progress`] to move; it keeps no copy.

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

/// How many writes no longer watched keep their count of holders (those held by at least one
/// peer), so that [`Node::write_status`] still answers for a write that reached its count just
/// before it left the window.
pub const RETIRED_KEPT: usize = 65_536;

/// What the node knows of one local write's acknowledgements: see [`Node::write_status`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStatus {
    /// How many other peers are known to hold the write (peers that held it and went away
    /// still count).
    pub holders: usize,
    /// Whether the write is in bytes the runtime reported persisted ([`Node::persisted`]).
    pub durable: bool,
    /// Whether the write is still watched for replication: if not, its count of holders no
    /// longer grows (see [`Node::replication_tracked_from`]).
    pub tracked: bool,
}

#[derive(Debug)]
pub(super) struct PendingWrite {
    pub(super) hash: ChangeHash,
    pub(super) holders: BTreeSet<PeerId>,
    pub(super) at: Time,
    /// How many entries the write changed: its weight in the [backlog](Node::backlog).
    pub(super) entries: usize,
}

/// The acknowledgement bookkeeping beside the watched writes.
#[derive(Debug)]
pub(super) struct AckBook {
    /// The newest local write reported durable: writes become durable in id order (they are
    /// persisted in the order they were made), so every older one is durable too.
    durable_upto: WriteId,
    /// Writes no longer watched that some peer held, with their count of holders, in id order,
    /// the newest [`RETIRED_KEPT`].
    retired: VecDeque<(WriteId, usize)>,
    /// Moves whenever a write's [`WriteStatus`] may have changed.
    progress: u64,
}

impl Default for AckBook {
    fn default() -> Self {
        Self {
            durable_upto: WriteId(0),
            retired: VecDeque::new(),
            progress: 0,
        }
    }
}

impl PendingWrite {
    /// `peer` holds this write (`write`): reported once per peer.
    fn held_by(
        &mut self,
        write: WriteId,
        peer: PeerId,
        now: Time,
        events: &mut VecDeque<Event>,
        progress: &mut u64,
    ) {
        if self.holders.insert(peer) {
            let after = now.saturating_since(self.at);
            events.push_back(Event::Replicated { write, peer, after });
            *progress += 1;
        }
    }
}

impl Node {
    /// Local writes with an id below this one are no longer watched for replication
    /// acknowledgements (older than [`PENDING_TTL`], or [`MAX_PENDING_WRITES`] newer ones are
    /// watched): no further [`Event::Replicated`] comes for them. A runtime uses it to end the
    /// waits of such writes instead of letting them hang.
    pub fn replication_tracked_from(&self) -> WriteId {
        // Writes in the open change are tracked once it is committed, and all come after the
        // ones tracked already.
        self.pending
            .first_key_value()
            .map(|(id, _)| *id)
            .or_else(|| self.open_writes.front().map(|(id, ..)| *id))
            .unwrap_or(WriteId(self.next_write + 1))
    }

    /// What is known of local write `id`'s acknowledgements: how many peers hold it, whether
    /// it is durable, whether it is still watched. The one store of them: a runtime waiting
    /// for a write asks here again whenever [`ack_progress`](Self::ack_progress) moved.
    pub fn write_status(&self, id: WriteId) -> WriteStatus {
        let holders = match self.pending.get(&id) {
            Some(w) => w.holders.len(),
            None => {
                let retired = &self.acks.retired;
                retired
                    .binary_search_by_key(&id, |(w, _)| *w)
                    .map_or(0, |i| retired[i].1)
            }
        };
        WriteStatus {
            holders,
            durable: id <= self.acks.durable_upto,
            tracked: id >= self.replication_tracked_from(),
        }
    }

    /// A number that moves whenever the [`write_status`](Self::write_status) of some local
    /// write may have changed (a peer holds it, it became durable, it is no longer watched).
    /// A runtime compares it after each turn to wake whoever waits for acknowledgements.
    pub fn ack_progress(&self) -> u64 {
        self.acks.progress
    }

    /// Every local write up to `id` is durable.
    pub(super) fn durable_upto(&mut self, id: WriteId) {
        if id > self.acks.durable_upto {
            self.acks.durable_upto = id;
            self.acks.progress += 1;
        }
    }

    /// Starts watching local write `id` (made at `now`, as change `hash`, changing `entries`
    /// entries), making room for it.
    pub(super) fn track_write(&mut self, id: WriteId, hash: ChangeHash, now: Time, entries: usize) {
        self.expire_pending(now);
        while self.pending.len() >= MAX_PENDING_WRITES {
            self.retire_oldest();
        }
        self.pending.insert(
            id,
            PendingWrite {
                hash,
                holders: BTreeSet::new(),
                at: now,
                entries,
            },
        );
    }

    /// Stops watching local writes older than [`PENDING_TTL`] (they are in id order).
    pub(super) fn expire_pending(&mut self, now: Time) {
        while self
            .pending
            .first_key_value()
            .is_some_and(|(_, w)| now.saturating_since(w.at) >= PENDING_TTL)
        {
            self.retire_oldest();
        }
    }

    /// Stops watching the oldest watched write, keeping its count of holders.
    fn retire_oldest(&mut self) {
        let Some((id, w)) = self.pending.pop_first() else {
            return;
        };
        self.acks.progress += 1;
        if w.holders.is_empty() {
            return;
        }
        let retired = &mut self.acks.retired;
        if retired.len() >= RETIRED_KEPT {
            retired.pop_front();
        }
        retired.push_back((id, w.holders.len()));
    }

    /// `peer` holds every pending local write: every committed one, not those still in the
    /// open change (its document cannot hold them yet).
    pub(super) fn pending_held_by(&mut self, now: Time, peer: PeerId) {
        let committed = self
            .open_writes
            .front()
            .map_or(WriteId(self.next_write), |(id, ..)| WriteId(id.0 - 1));
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let from = link.held_upto;
        if committed <= from {
            return;
        }
        link.held_upto = committed;
        for (write, w) in self.pending.range_mut(next_id(from)..) {
            w.held_by(*write, peer, now, &mut self.events, &mut self.acks.progress);
        }
    }

    /// How many entries the local writes that the live linked peers have not all
    /// acknowledged yet changed: the tracked writes after the newest one that every live
    /// linked peer holds (0 with no live link), each weighing the records and counter entries
    /// it changed (at least 1), so that a transaction of a hundred records weighs what a
    /// hundred writes of one do. The runtime's backpressure counts it (see
    /// `docs/architecture.md`, *The runtime*). It counts at most [`MAX_PENDING_WRITES`] writes,
    /// at a cost of one step per write counted.
    pub fn backlog(&self) -> usize {
        self.backlog_if(|| Some(self.heart())).unwrap_or(0)
    }

    /// [`backlog`](Self::backlog), if it can be counted without waiting for the heart (its
    /// holder, the pulse, may be preempted holding it): `None` while another thread holds it.
    pub fn try_backlog(&self) -> Option<usize> {
        self.backlog_if(|| self.heart.try_lock())
    }

    /// The backlog, counted with the heart `heart` gives (`None`: not counted).
    fn backlog_if<'a>(
        &'a self,
        heart: impl FnOnce() -> Option<std::sync::MutexGuard<'a, super::Heart>>,
    ) -> Option<usize> {
        if self.pending.is_empty() && self.open_writes.is_empty() {
            // Nothing to count: no need to find the live links (every turn of a window that
            // only receives).
            return Some(0);
        }
        let heart = heart()?;
        let floor = heart
            .live
            .live_among(self.links.iter().map(|(p, l)| (p, l.held_upto)))
            .min();
        // Writes in the open change are held by no peer yet.
        Some(floor.map_or(0, |w| {
            let open: usize = self.open_writes.iter().map(|(.., entries)| entries).sum();
            let committed: usize = self
                .pending
                .range(next_id(w)..)
                .map(|(_, p)| p.entries)
                .sum();
            committed + open
        }))
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
                w.held_by(write, peer, now, &mut self.events, &mut self.acks.progress);
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

#[cfg(test)]
mod tests {
    use super::super::tests::{deliver, linked, node};
    use super::*;
    use crate::Scope;

    /// Issue 13: the node is the one store of acknowledgements. It answers how many peers hold
    /// a write, whether it is durable and whether it is still watched, and says when any of
    /// that moved.
    #[test]
    fn the_node_answers_for_its_writes_acknowledgements() {
        let (mut a, mut b) = linked();
        let w = a.put("c", "k", &1i64, Scope::Durable).expect("write").id;
        let fresh = WriteStatus {
            holders: 0,
            durable: false,
            tracked: true,
        };
        assert_eq!(a.write_status(w), fresh);
        // Durable once the runtime reports its bytes stored, not before.
        let progress = a.ack_progress();
        let persist = a.poll_persist().expect("bytes to store");
        assert!(!a.write_status(w).durable);
        a.persisted(persist.seq());
        assert!(a.write_status(w).durable);
        assert!(a.ack_progress() > progress, "durability is progress");
        // Held by `b` once its answer says so.
        let progress = a.ack_progress();
        for _ in 0..10 {
            deliver(&mut a, &mut b, Time::ZERO);
            deliver(&mut b, &mut a, Time::ZERO);
        }
        assert_eq!(a.write_status(w).holders, 1);
        assert!(a.ack_progress() > progress, "a holder is progress");
        // Out of the window by age: no longer tracked, its count kept.
        let progress = a.ack_progress();
        a.handle_tick(Time::ZERO + PENDING_TTL);
        let status = a.write_status(w);
        assert!(!status.tracked);
        assert_eq!(status.holders, 1, "the count survives the window");
        assert!(status.durable);
        assert!(
            a.ack_progress() > progress,
            "leaving the window is progress"
        );
    }

    #[test]
    fn writes_nobody_held_leave_the_window_with_no_holders() {
        let mut a = node(3);
        let first = a.put("c", "k", &0i64, Scope::Durable).expect("write").id;
        for i in 1..=MAX_PENDING_WRITES as i64 {
            a.put("c", "k", &i, Scope::Durable).expect("write");
        }
        // Tracked once committed (the runtime commits the open change as it sends it).
        a.settle();
        assert_eq!(
            a.write_status(first),
            WriteStatus {
                holders: 0,
                durable: false,
                tracked: false
            }
        );
        assert!(a.acks.retired.is_empty(), "only held writes keep a count");
    }
}
