//! The standby: a second copy of the document, brought equal to it before each receive, from
//! which the document is restored when a received message makes the CRDT library panic or
//! fails the checks of `validate`.
//!
//! A received message carrying changes is applied to the document itself, under
//! `catch_unwind`, once the standby is equal to it; on failure the standby becomes the
//! document, exactly as it was. On success the standby is left behind by the message's
//! changes (checked, and rebuilt by the checks, so kept by the document): the runtime's
//! [`Node::catch_up_standby`](crate::Node::catch_up_standby) applies them once it has been
//! idle for a moment, or the next receive does, first. (Measured in `propagation`, 4 windows:
//! a small message's turn took 255 µs at the median with the standby's apply in it, 203 µs
//! without; applied at the end of the turn, it held the node while the application, just
//! notified, waited to read.) Keeping the standby costs what a change costs,
//! where a fresh copy for every message cost what the document holds (Automerge 0.12's `clone`
//! copies every column and rebuilds the object index, and the copy replaced dropped as much
//! again).
//! Local changes do not reach the standby as they are made (a local transaction's own change
//! notification does not read its change: its writes noted what they changed): the runtime's
//! idle upkeep, or else the next receive, brings the standby up to date, in one batch, before
//! it runs (see
//! [`Replica::start_sync`] and `ensure_standby`), or copies the document instead when the
//! standby lacks more than applying is worth (see `APPLY_PER_COPY`). Keeping the standby equal
//! change for change (batches of 8 local changes, applied on the writer's turn) cost 20-28 % of
//! `throughput --peers 4 --batch 1` and `overload`; it was needed only while a writer could
//! run 2,048 writes ahead of its peers (with that backlog bound, `overload --peers 8` stalled
//! without it: every sync message walks what the peer has not acknowledged, see
//! `docs/under-load.md`, ninth slice).
//!
//! A sync job (the runtime's receive, [`Replica::start_sync`]) takes the standby as its own
//! document, applies the message to it off the replica, and the document it replaces becomes
//! the standby, behind by that message's changes: the next job or receive applies the changes
//! it lacks (what they hold, not what the document holds), so a receive after a receive copies
//! and drops no whole document. A standby far behind (after a burst: see
//! `APPLY_PER_COPY`) is dropped on the job's thread and the job copies the document: there,
//! applying the changes again would cost more than the copy. A standby brought up to date
//! holds the same changes as the document, maybe applied in another order: the same document,
//! though a save may order its bytes otherwise.
//! A standby that cannot be brought up to date with certainty (after a load, a failed job) is
//! dropped, and the next receive makes a fresh copy.
//!
//! Memory: the standby is a second document (Automerge 0.12's compressed columns), held at
//! all times instead of only during a receive.

use automerge::{Automerge, Change};

use super::Replica;

impl Replica {
    /// Gives the standby, if there is one, the changes it lacks, in one batch; drops it
    /// if that fails.
    pub(super) fn catch_up_standby(&mut self) {
        self.commit_open();
        let heads = self.doc.get_heads();
        let Some(standby) = self.standby.as_mut() else {
            return;
        };
        let theirs = standby.get_heads();
        if theirs == heads {
            return;
        }
        let missing = self.doc.get_changes(&theirs);
        if !(standby.apply_changes(missing).is_ok() && standby.get_heads() == heads) {
            self.standby = None;
        }
    }

    /// How many changes of the document the standby lacks; `None` when there is no standby.
    pub fn standby_lag(&self) -> Option<usize> {
        let standby = self.standby.as_ref()?;
        Some(self.doc.get_changes_meta(&standby.get_heads()).len())
    }

    /// Gives the standby the changes it lacks, in one batch, if they are at most `max`;
    /// further behind, it is left for the next receive or sync job, which weigh a copy against
    /// the apply.
    pub fn catch_up_standby_within(&mut self, max: usize) {
        if self.standby_lag().is_some_and(|lag| lag <= max) {
            self.catch_up_standby();
        }
    }

    /// Makes the standby equal to the document: a copy when there is none, otherwise the
    /// changes it lacks. The standby must hold no change the document lacks, and every change
    /// it lacks is one the document holds (local, or received and checked), so equal heads
    /// mean equal documents.
    pub(super) fn ensure_standby(&mut self) {
        self.catch_up_standby();
        if self.standby.is_none() {
            self.standby = Some(self.doc.clone());
        }
    }

    /// Gives the standby the local changes `changes` made on top of heads `before` (already
    /// read from the document by the caller), if it is at `before`.
    pub(super) fn mirror_local(&mut self, before: &[automerge::ChangeHash], changes: &[Change]) {
        let Some(standby) = self.standby.as_mut() else {
            return;
        };
        if standby.get_heads() != before {
            return;
        }
        let ok = standby.apply_changes(changes.iter().cloned()).is_ok()
            && standby.get_heads() == self.doc.get_heads();
        if !ok {
            self.standby = None;
        }
    }

    /// Restores the document from the standby (a received message failed), or keeps it when
    /// there is no standby (nothing was applied to it).
    pub(super) fn restore_from_standby(&mut self) {
        if let Some(standby) = self.standby.take() {
            self.doc = standby;
        }
    }

    /// Drops the standby: the document changed in a way it was not told about.
    pub(super) fn drop_standby(&mut self) {
        self.standby = None;
    }
}

/// The standby of a replica (see the module docs).
pub(super) type Standby = Option<Automerge>;
