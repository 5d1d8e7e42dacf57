//! Local writes: records, counters and atomic transactions in the document, and leader
//! records under the writer's term.

use automerge::ChangeHash;
use autosurgeon::Reconcile;

use super::{Event, Node, WriteId, Written};
use crate::Time;
use crate::codec::LeaderRecord;
use crate::replica::{EntryChange, EntryKind, Scope, Tx, WriteError};

/// The most writes one change of local writes holds: a write beyond it commits the open
/// change (see [`Node::transact`]).
pub const MAX_OPEN_WRITES: usize = 256;

impl Node {
    /// Writes record `key` of `channel` (typed through autosurgeon).
    pub fn put<T: Reconcile>(
        &mut self,
        channel: &str,
        key: &str,
        value: &T,
        scope: Scope,
    ) -> Result<Written, WriteError> {
        self.transact(|tx| tx.put(channel, key, value, scope))
            .map(|(_, w)| w)
    }

    /// Deletes record `key` of `channel`.
    pub fn delete(&mut self, channel: &str, key: &str) -> Result<Written, WriteError> {
        self.transact(|tx| tx.delete(channel, key)).map(|(_, w)| w)
    }

    /// Adds `by` to counter `name`.
    pub fn add(&mut self, name: &str, by: i64, scope: Scope) -> Result<Written, WriteError> {
        self.transact(|tx| tx.add(name, by, scope)).map(|(_, w)| w)
    }

    /// Makes several writes as one atomic change. `f` runs once more when it writes to a
    /// channel for the first time (see [`Replica::transact`](crate::replica::Replica::transact)).
    ///
    /// The writes join the replica's open change (see
    /// [`Replica::write`](crate::replica::Replica::write)): reads see them at once, and the
    /// change is committed ([`settle`](Self::settle)), to be sent, persisted and tracked, where
    /// the document must leave or take in changes: a sync message or push about to be
    /// generated, a persist while none is being stored, a received message that carries
    /// changes, a sync job's copy or return, a tick, a leave; or once it holds
    /// [`MAX_OPEN_WRITES`] writes. Writes made between two sends thus leave as one change.
    pub fn transact<R>(
        &mut self,
        f: impl FnMut(&mut Tx<'_>) -> Result<R, WriteError>,
    ) -> Result<(R, Written), WriteError> {
        let (r, changes) = self.replica.write(f)?;
        self.next_write += 1;
        let id = WriteId(self.next_write);
        // The replica may have committed earlier writes (a write to a new channel does).
        self.claim_settled();
        let Some(changes) = changes else {
            return Ok((r, Written::unchanged(id)));
        };
        let written = self.local_change_made(id, changes);
        self.open_writes
            .push_back((id, self.last_tick, written.entries));
        if self.open_writes.len() >= MAX_OPEN_WRITES {
            // A bound on a change's size.
            self.settle();
        }
        Ok((r, written))
    }

    /// Commits the local writes left open (see [`transact`](Self::transact)) and tracks
    /// them.
    pub fn settle(&mut self) {
        if !self.open_writes.is_empty() {
            let settled = self.replica.settle();
            self.track_settled(settled);
        }
    }

    /// Tracks the writes of the changes the replica committed by itself (an operation that
    /// needed the document without a transaction open), leaving the open change open.
    pub(super) fn claim_settled(&mut self) {
        let settled = self.replica.take_settled();
        self.track_settled(settled);
    }

    /// Tracks the writes of changes the replica committed, each as its change.
    /// (`open_writes` holds the writes in the order they were made, as the changes hold them.)
    fn track_settled(&mut self, settled: Vec<(ChangeHash, usize)>) {
        if settled.is_empty() {
            return;
        }
        for (hash, writes) in settled {
            for _ in 0..writes {
                if let Some((id, at, entries)) = self.open_writes.pop_front() {
                    self.track_write(id, hash, at, entries);
                }
            }
        }
        self.publish_digests();
    }

    /// Writes leader record `key` of `channel` under `term`, which must be this peer's current
    /// leadership term (the fencing token). Checks for a freeze first: a peer that was frozen
    /// has lost its leadership and its write is refused. A value equal to the stored one is not
    /// rewritten.
    pub fn leader_put<T: Reconcile>(
        &mut self,
        now: Time,
        term: u64,
        channel: &str,
        key: &str,
        value: Option<&T>,
    ) -> Result<Written, WriteError> {
        self.advance(now);
        self.reelect(now);
        if self.my_term() != Some(term) || self.heart().left {
            return Err(WriteError::NotLeader { term });
        }
        crate::replica::check_name(channel).map_err(WriteError::InvalidName)?;
        crate::replica::check_name(key).map_err(WriteError::InvalidName)?;
        let tokens = value
            .map(|v| crate::value::reconcile_to_value(v).map(|v| v.to_tokens()))
            .transpose()
            .map_err(|e| WriteError::Build(e.to_string()))?;
        self.next_write += 1;
        let id = WriteId(self.next_write);
        let me = self.me;
        if let Some(old) = self.leader.get(channel, key)
            && old.writer == me
            && old.term == term
            && old.value == tokens
        {
            return Ok(Written::unchanged(id));
        }
        let record = LeaderRecord {
            channel: channel.into(),
            key: key.into(),
            writer: me,
            term,
            seq: self.leader.next_seq(),
            value: tokens,
        };
        self.leader.merge(record.clone());
        self.publish_digests();
        self.leader_dirty.push(record);
        self.events.push_back(Event::Changed(EntryChange {
            kind: EntryKind::Leader,
            channel: channel.into(),
            key: key.into(),
            by: Some(me),
        }));
        Ok(Written {
            id,
            changed: true,
            entries: 0,
        })
    }

    pub(super) fn after_local_change(
        &mut self,
        before: &[ChangeHash],
        hash: Option<ChangeHash>,
    ) -> Written {
        self.next_write += 1;
        let id = WriteId(self.next_write);
        let Some(hash) = hash else {
            return Written::unchanged(id);
        };
        self.publish_digests();
        let changes = self.replica.touched_since(before);
        let written = self.local_change_made(id, changes);
        self.track_write(id, hash, self.last_tick, written.entries);
        written
    }

    /// What local write `id`, which changed the document's entries `changes`, owes every
    /// output (a push, a persist, the standby's catch-up, the change notifications); its
    /// weight in the backlog is the entries it changed, at least 1. The callers watch it from
    /// the last input's time: the runtime gives the write's own time with `handle_time` just
    /// before it.
    fn local_change_made(&mut self, id: WriteId, changes: Vec<EntryChange>) -> Written {
        self.doc_dirty = true;
        self.standby_owed += 1;
        self.unpushed += 1;
        let entries = changes.len().max(1);
        self.events.extend(changes.into_iter().map(Event::Changed));
        self.unpersisted.push(id);
        Written {
            id,
            changed: true,
            entries,
        }
    }
}
