//! The open change: local writes made between two sends, kept in one Automerge transaction
//! left open ([`Replica::write`]) until the replica commits it ([`Replica::settle`]).
//!
//! The new records its writes put are made together ([`Open::made`]): when it is committed,
//! before any other kind of write, and before a read of records. Automerge 0.12 splices each
//! of its op set's columns twice for a batch of new records (the records' maps among the
//! channel's keys, their fields at the end), so one at a time, as each write came, they cost
//! two splices each: two thirds of the writer's CPU and a fifth of all in `throughput --peers
//! 4 --batch 1` (perf), where a change holds about 130 writes.

use std::collections::HashSet;

use automerge::ChangeHash;
use automerge::transaction::{CommitOptions, Transactable};

use super::tx::Made;
use super::{EntryChange, MAX_NEW_CHANNEL_RUNS, Replica, Tx, WriteError};

/// The transaction of local writes left open (see [`Replica::write`]).
#[derive(Debug)]
pub(super) struct Open {
    pub(super) tx: automerge::transaction::SuspendedTransaction,
    /// How many writes it holds.
    pub(super) writes: usize,
    /// The records its writes touched (flat keys): a sync job started meanwhile runs on a
    /// copy without them, so its reads of these records are not to be trusted (see
    /// `written_while_out`).
    pub(super) records: HashSet<String>,
    /// The new records its writes left to be made: made in one batch when the change is
    /// committed, before any other write, or before a read of records
    /// ([`Replica::make_open_records`]).
    pub(super) made: Made,
}

impl Replica {
    /// Makes several writes as one atomic part of the open change: the change of local writes
    /// that [`settle`](Self::settle) commits, the transaction left open in between. Reads see
    /// the writes at once (a read of records makes the new records left open first); peers
    /// get them once committed. A lone write is committed as soon
    /// as its runtime sends it; writes made meanwhile join it. Returns what the writes changed (the change notification), or `None`
    /// when they changed nothing. On an error nothing of this call is written; earlier writes
    /// stay.
    ///
    /// `f` runs again when it wrote to channels that had no map yet: this call's writes are
    /// undone, the open change is committed, the channel maps are created (see
    /// [`transact`](Self::transact)) and `f` runs on a new open change that sees them.
    pub fn write<R>(
        &mut self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<R, WriteError>,
    ) -> Result<(R, Option<Vec<EntryChange>>), WriteError> {
        let mut last = String::new();
        for _ in 0..MAX_NEW_CHANNEL_RUNS {
            let (result, missing, written, noted, changed) = {
                let (tx, mut writes, mut records, made) = match self.open.take() {
                    Some(open) => (
                        self.doc.resume(open.tx),
                        open.writes,
                        open.records,
                        open.made,
                    ),
                    None => (self.doc.transaction(), 0, HashSet::new(), Made::default()),
                };
                let start = tx.pending_ops();
                let mut t = Tx::new(tx, &self.layout, self.me, made);
                let result = t.run(true, &mut f);
                let ok = result.is_ok() && t.missing.is_empty();
                let made = t.take_made(!ok);
                let Tx {
                    mut tx,
                    missing,
                    written,
                    noted,
                    deferred,
                    inherited_ops,
                    ..
                } = t;
                let changed = ok && (deferred || tx.pending_ops() != start + inherited_ops);
                if !ok {
                    tx.rollback_to(start);
                }
                if changed {
                    writes += 1;
                    records.extend(noted.records.keys().cloned());
                }
                if tx.pending_ops() == 0 && made.is_empty() {
                    tx.rollback();
                } else {
                    self.open = Some(Open {
                        tx: tx.suspend(),
                        writes,
                        records,
                        made,
                    });
                }
                (result, missing, written, noted, changed)
            };
            match result {
                Ok(r) if missing.is_empty() => {
                    if !changed {
                        return Ok((r, None));
                    }
                    for w in written {
                        if !self.written.iter().any(|(_, c)| *c == w.1) {
                            self.written.push(w);
                        }
                    }
                    if let Some(out) = &mut self.written_while_out {
                        out.extend(noted.records.keys().cloned());
                    }
                    return Ok((r, Some(self.report_local(noted))));
                }
                Err(e) if missing.is_empty() => return Err(e),
                _ => {}
            }
            self.commit_open();
            for channel in &missing {
                self.create_channel(channel)?;
            }
            last = missing.into_iter().next().unwrap_or_default();
        }
        Err(WriteError::NewChannels(last))
    }

    /// Commits the open change of local writes, if any, and returns every change of local
    /// writes committed since the last call, oldest first, with how many writes each holds
    /// (see [`write`](Self::write)): the writes in the order they were made.
    pub fn settle(&mut self) -> Vec<(ChangeHash, usize)> {
        self.commit_open();
        std::mem::take(&mut self.settled)
    }

    /// The changes of local writes committed since the last call (by an operation that had
    /// to commit the open change first), without committing the open change.
    pub fn take_settled(&mut self) -> Vec<(ChangeHash, usize)> {
        std::mem::take(&mut self.settled)
    }

    /// Commits the open change of local writes (kept for [`settle`](Self::settle)). Every
    /// operation that applies changes to the document, copies it, saves it or takes changes
    /// from it calls it first: nothing else may touch the document while a transaction is
    /// open, and no change may leave without the writes before it.
    pub(super) fn commit_open(&mut self) {
        if let Some(mut open) = self.open.take() {
            let mut tx = self.doc.resume(open.tx);
            make_records(&mut open.made, &mut tx);
            let (hash, _) = tx.commit_with(CommitOptions::default().with_time(0));
            if let Some(hash) = hash {
                self.settled.push((hash, open.writes));
            }
        }
    }

    /// Makes the new records the open change's writes left to be made (see [`Open::made`]),
    /// leaving the change open: a read of records sees every write made before it.
    pub(super) fn make_open_records(&mut self) {
        if self.open.as_ref().is_none_or(|o| o.made.is_empty()) {
            return;
        }
        if let Some(mut open) = self.open.take() {
            let mut tx = self.doc.resume(open.tx);
            make_records(&mut open.made, &mut tx);
            open.tx = tx.suspend();
            self.open = Some(open);
        }
    }
}

/// Makes the records `made` holds in `tx` (see [`Made::make`]). Their channels' maps exist
/// (a write to a channel without one runs again once it is made) and nothing but this
/// replica's own writes changed the document since (received changes are applied only with
/// no change open), so Automerge has no cause to refuse them; if it does, they are lost, and
/// said so, rather than the other writes of the change (and none is made twice: a refused
/// batch may follow a channel's batch that was made).
fn make_records(made: &mut Made, tx: &mut automerge::transaction::Transaction<'_>) {
    let owed = made.len();
    if let Err(e) = made.make(tx) {
        *made = Made::default();
        tracing::error!(records = owed, error = %e, "new records of local writes could not be made");
    }
}
