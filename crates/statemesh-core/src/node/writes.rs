//! Local writes: records, counters and atomic transactions in the document, and leader
//! records under the writer's term.

use automerge::ChangeHash;
use autosurgeon::Reconcile;

use super::{Event, Node, WriteId, Written};
use crate::Time;
use crate::codec::LeaderRecord;
use crate::replica::{EntryChange, EntryKind, Scope, Tx, WriteError};

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
    pub fn transact<R>(
        &mut self,
        f: impl FnMut(&mut Tx<'_>) -> Result<R, WriteError>,
    ) -> Result<(R, Written), WriteError> {
        let before = self.replica.heads();
        let (r, hash) = self.replica.transact(f)?;
        Ok((r, self.after_local_change(&before, hash)))
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
            return Ok(Written { id, changed: false });
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
        Ok(Written { id, changed: true })
    }

    pub(super) fn after_local_change(
        &mut self,
        before: &[ChangeHash],
        hash: Option<ChangeHash>,
    ) -> Written {
        self.next_write += 1;
        let id = WriteId(self.next_write);
        let Some(hash) = hash else {
            return Written { id, changed: false };
        };
        self.doc_dirty = true;
        self.standby_owed = true;
        self.unpushed += 1;
        self.publish_digests();
        for change in self.replica.touched_since(before) {
            self.events.push_back(Event::Changed(change));
        }
        self.unpersisted.push(id);
        // The time of the last input: the runtime gives the write's own time with
        // `handle_time` just before it.
        let now = self.last_tick;
        self.track_write(id, hash, now);
        Written { id, changed: true }
    }
}
