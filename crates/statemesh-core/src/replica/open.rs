//! The open change: local writes made between two sends, kept in one Automerge transaction
//! left open ([`Replica::write`]) until the replica commits it ([`Replica::settle`]).

use std::collections::HashSet;

use automerge::ChangeHash;
use automerge::transaction::{CommitOptions, Transactable};

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
}

impl Replica {
    /// Makes several writes as one atomic part of the open change: the change of local writes
    /// that [`settle`](Self::settle) commits, the transaction left open in between. Reads see
    /// the writes at once; peers get them once committed. A lone write is committed as soon
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
                let (tx, mut writes, mut records) = match self.open.take() {
                    Some(open) => (self.doc.resume(open.tx), open.writes, open.records),
                    None => (self.doc.transaction(), 0, HashSet::new()),
                };
                let start = tx.pending_ops();
                let mut t = Tx::new(tx, &self.layout, self.me);
                let result = t.run(&mut f);
                let Tx {
                    mut tx,
                    missing,
                    written,
                    noted,
                    ..
                } = t;
                let ok = result.is_ok() && missing.is_empty();
                let changed = ok && tx.pending_ops() != start;
                if !ok {
                    tx.rollback_to(start);
                }
                if changed {
                    writes += 1;
                    records.extend(noted.records.keys().cloned());
                }
                if tx.pending_ops() == 0 {
                    tx.rollback();
                } else {
                    self.open = Some(Open {
                        tx: tx.suspend(),
                        writes,
                        records,
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
        if let Some(open) = self.open.take() {
            let tx = self.doc.resume(open.tx);
            let (hash, _) = tx.commit_with(CommitOptions::default().with_time(0));
            if let Some(hash) = hash {
                self.settled.push((hash, open.writes));
            }
        }
    }
}
