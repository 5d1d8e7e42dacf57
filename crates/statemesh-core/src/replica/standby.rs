//! The standby: a second copy of the document, at most some changes behind it, from which the
//! document is restored when a received message makes the CRDT library panic or fails the
//! checks of `validate`.
//!
//! A received message carrying changes is applied to the document itself, under
//! `catch_unwind`. The standby may lack changes the document holds (local ones, and received
//! ones that passed the checks): they are read from the document first, while it is sound,
//! and on failure given to the standby, which then becomes the document, exactly as it was.
//! On success the standby is left further behind, by the message's changes (checked, and
//! rebuilt by the checks, so kept by the document): the runtime's
//! [`Node::catch_up_standby`](crate::Node::catch_up_standby) applies what it lacks in one
//! batch once the driver has been idle for a moment and a batch's worth is owed
//! ([`STANDBY_BATCH`](crate::node::STANDBY_BATCH)), or after a longer idle; a sync job catches
//! it up first. Automerge applies small changes in a batch for a fraction of what it costs one
//! at a time (one record per change, 1,000 records, release: 20.2 µs per change one at a time,
//! 8.0 in batches of 8, 6.3 in batches of 64). (Measured in `propagation`, 4 windows: a small
//! message's turn took 255 µs at the median with the standby's apply in it, 203 µs without;
//! applied at the end of the turn, it held the node while the application, just notified,
//! waited to read.) A small document (up to about 1,000 records) is copied instead: Automerge's
//! apply costs about 50 µs a call whatever the document's size, more than a copy of such a
//! document (see `APPLY_CALL_IN_COPIED_OPS`). Keeping the standby costs what a change costs,
//! where a fresh copy for every message cost what the document holds (Automerge 0.12's `clone`
//! copies every column and rebuilds the object index, and the copy replaced dropped as much
//! again).
//! Local changes do not reach the standby as they are made (a local transaction's own change
//! notification does not read its change: its writes noted what they changed): the runtime's
//! idle upkeep, or a sync job (see [`Replica::start_sync`]), brings the standby up to date in
//! one batch, or the job copies the document instead when the
//! standby lacks more than applying is worth (see `APPLY_PER_COPY`). Keeping the standby equal
//! change for change (batches of 8 local changes, applied on the writer's turn) cost 20-28 % of
//! `throughput --peers 4 --batch 1` and `overload`; it was needed only while a writer could
//! run 2,048 writes ahead of its peers (with that backlog bound, `overload --peers 8` stalled
//! without it: every sync message walks what the peer has not acknowledged, see
//! `docs/under-load.md`, ninth slice).
//!
//! A sync job (the runtime's receive, [`Replica::start_sync`]) takes the standby as its own
//! document, applies the message to it off the replica, and the document it replaces becomes
//! the standby, behind by that message's changes: the next job or the idle upkeep applies the
//! changes it lacks (what they hold, not what the document holds), so a receive after a receive copies
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

use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::{Automerge, Change, ChangeHash, ReadDoc};

use super::Replica;
use super::sync::{APPLY_CALL_IN_COPIED_OPS, STANDBY_APPLY_PER_COPY};

impl Replica {
    /// Gives the standby, if there is one, the changes it lacks, in one batch; drops it
    /// if that fails.
    pub(super) fn catch_up_standby(&mut self) {
        self.commit_open();
        let heads = self.doc.get_heads();
        let Some(theirs) = self.standby.as_ref().map(Automerge::get_heads) else {
            return;
        };
        if theirs == heads {
            return;
        }
        let (missing, size) = self.missing_and_size(&theirs, &heads);
        if missing
            .saturating_mul(STANDBY_APPLY_PER_COPY)
            .saturating_add(APPLY_CALL_IN_COPIED_OPS)
            >= size
        {
            // A small document: a copy costs less than Automerge's apply of even one change
            // (the changes read for a restore go with the old standby).
            self.standby = Some(self.doc.clone());
            self.lacking = None;
            return;
        }
        // What a receive read already is not read again.
        self.read_lacking(theirs, heads.clone());
        let missing = self.lacking.take().map(|l| l.changes).unwrap_or_default();
        let Some(standby) = self.standby.as_mut() else {
            return;
        };
        if !(standby.apply_changes(missing).is_ok() && standby.get_heads() == heads) {
            self.standby = None;
        }
    }

    /// How many changes of the document the standby lacks; `None` when there is no standby.
    ///
    /// The standby is an earlier state of the document (it holds a subset of its changes), so
    /// what it lacks is the difference of their counts, which Automerge keeps. Every receive
    /// asks (see `Node::handle_frame_deferred`), and a walk of the changes since the standby's
    /// heads cost 10-20 µs there with 64 windows' changes (`scale`: 1.3 ms of CPU per write
    /// mesh-wide, growing with the document; docs/under-load.md, thirty-seventh slice).
    pub fn standby_lag(&self) -> Option<usize> {
        let standby = self.standby.as_ref()?;
        Some(changes_held(&self.doc).saturating_sub(changes_held(standby)))
    }

    /// Gives the standby the changes it lacks, in one batch, if they are at most `max`;
    /// further behind, it is left for the next receive or sync job, which weigh a copy against
    /// the apply.
    pub fn catch_up_standby_within(&mut self, max: usize) {
        if self.standby_lag().is_some_and(|lag| lag <= max) {
            self.catch_up_standby();
        }
    }

    /// Gives the standby the local changes `changes` made on top of heads `before` (already
    /// read from the document by the caller), if it is at `before`.
    pub(super) fn mirror_local(&mut self, before: &[ChangeHash], changes: &[Change]) {
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

    /// Readies the standby for a receive that may fail: a copy of the document when there is
    /// none; else the changes it lacks, read from the document (kept in `lacking` for
    /// [`restore_from_standby`](Self::restore_from_standby), should the receive fail). Only
    /// the changes the document took since the last receive are read: a receive's turn does
    /// not read again what the standby lacked before.
    pub(super) fn ready_standby(&mut self) {
        let Some(standby) = self.standby.as_ref() else {
            self.standby = Some(self.doc.clone());
            self.lacking = None;
            return;
        };
        let (base, heads) = (standby.get_heads(), self.doc.get_heads());
        if base == heads {
            self.lacking = None;
        } else {
            self.read_lacking(base, heads);
        }
    }

    /// Brings `lacking` to the changes of the document since `base` (the standby's heads) up
    /// to `heads` (the document's): only those since the last read when it started from
    /// `base`, all of them otherwise.
    fn read_lacking(&mut self, base: Vec<ChangeHash>, heads: Vec<ChangeHash>) {
        match self.lacking.as_mut() {
            Some(l) if l.base == base => {
                if l.upto != heads {
                    l.changes.extend(self.doc.get_changes(&l.upto));
                    l.upto = heads;
                }
            }
            _ => {
                self.lacking = Some(Lacking {
                    changes: self.doc.get_changes(&base),
                    base,
                    upto: heads,
                });
            }
        }
    }

    /// Restores the document as it was at `heads` (a received message failed) from the
    /// standby and the changes it lacked then (read by
    /// [`ready_standby`](Self::ready_standby) before the message was applied), or keeps it
    /// when there is no standby (nothing was applied to it).
    pub(super) fn restore_from_standby(&mut self, heads: &[ChangeHash]) {
        let Some(mut standby) = self.standby.take() else {
            return;
        };
        let lacking = self.lacking.take();
        if let Some(lacking) = lacking.filter(|l| l.base == standby.get_heads()) {
            // Changes the document took before, on a document holding what it held then:
            // they apply as they did (a panic is contained all the same).
            let changes = lacking.changes;
            let applied = catch_unwind(AssertUnwindSafe(|| standby.apply_changes(changes)));
            if !matches!(applied, Ok(Ok(()))) {
                tracing::error!(
                    "the standby did not take changes the document held; \
                     restored without them (peers hold those received)"
                );
            }
        }
        if standby.get_heads() != heads {
            tracing::error!("the document was restored short of what it held before");
        }
        self.doc = standby;
    }

    /// Drops the standby: the document changed in a way it was not told about.
    pub(super) fn drop_standby(&mut self) {
        self.standby = None;
    }
}

/// How many changes `doc` holds (not those it queued for missing dependencies): Automerge
/// counts them as it adds them.
fn changes_held(doc: &Automerge) -> usize {
    usize::try_from(doc.stats().num_changes).unwrap_or(usize::MAX)
}

/// The standby of a replica (see the module docs).
pub(super) type Standby = Option<Automerge>;

/// The changes the standby lacks: those of the document since heads `base` (the standby's),
/// read up to the document's heads `upto`.
#[derive(Debug)]
pub(super) struct Lacking {
    base: Vec<ChangeHash>,
    upto: Vec<ChangeHash>,
    changes: Vec<Change>,
}

#[cfg(test)]
mod tests {
    use super::super::tests::{forged_insertion, replica, sync};
    use automerge::transaction::{CommitOptions, Transactable};

    use super::super::{ApplyError, CATCH_UP_AT_ONCE, Replica, Scope, SyncFinish};

    /// A change `b` makes that Automerge accepts and statemesh refuses (a record's field put
    /// as an insertion): its receive fails and the document is restored from the standby.
    fn forged_message(b: &mut Replica) -> Vec<u8> {
        b.transact(|tx| tx.put("c", "forged", &"x", Scope::Durable))
            .expect("b writes");
        let forged = forged_insertion(&b.doc.get_last_local_change().expect("b's change"));
        super::super::message_carrying(vec![forged.raw_bytes().to_vec()], vec![forged.hash()])
            .encode()
    }

    /// The standby's upkeep copies a small document instead of applying what the standby
    /// lacks, and applies it to a large one (`APPLY_CALL_IN_COPIED_OPS`); either way the
    /// standby then holds the document, and a message that fails next is undone from it,
    /// leaving the document exactly as it was.
    #[test]
    fn a_standby_caught_up_by_a_copy_or_an_apply_restores_the_document() {
        for records in [10usize, 1_500] {
            let (mut a, mut b) = (replica(1), replica(2));
            b.transact(|tx| {
                for i in 0..records {
                    tx.put("c", &format!("k{i}"), &(i as u64), Scope::Durable)?;
                }
                Ok(())
            })
            .expect("b writes");
            sync(&mut a, &mut b);
            a.catch_up_standby_within(usize::MAX);
            // One more change received, one written here: the standby lacks both.
            b.transact(|tx| tx.put("c", "again", &1u8, Scope::Durable))
                .expect("b writes");
            sync(&mut a, &mut b);
            a.transact(|tx| tx.put("c", "mine", &2u8, Scope::Durable))
                .expect("a writes");
            assert_eq!(a.standby_lag(), Some(2), "{records} records");
            assert_lag_walked(&a, "a change received and one written");
            a.catch_up_standby_within(usize::MAX);
            assert_eq!(a.standby_lag(), Some(0), "{records} records");
            let standby = a.standby.as_ref().expect("a standby");
            assert_eq!(standby.get_heads(), a.doc.get_heads());

            let (heads, saved) = (a.heads(), a.save());
            let forged = forged_message(&mut b);
            let received = a.receive_sync(&mut Replica::new_sync_state(), &forged);
            assert!(
                received.is_err(),
                "{records} records: the forged change was accepted"
            );
            assert_eq!((a.heads(), a.save()), (heads, saved), "{records} records");
            assert_lag_walked(&a, "restored from the standby");
        }
    }

    /// The standby (the copy a refused message is undone from) follows local writes and received
    /// changes: after local writes and receives that left it behind, a refused message leaves the
    /// document exactly as it was before it, and receives go on.
    #[test]
    fn the_standby_follows_local_writes_and_receives() {
        let (mut a, mut b) = (replica(1), replica(2));
        for i in 0..3 {
            a.transact(|tx| tx.put("ch", &format!("a{i}"), &i, Scope::Durable))
                .expect("write");
            let before = a.heads();
            a.transact(|tx| tx.put("ch", "x", &i, Scope::Durable))
                .expect("write");
            // The change notification hands the local change to the standby.
            a.touched_since(&before);
            assert_lag_walked(&a, "local writes");
            b.transact(|tx| tx.put("other", &format!("b{i}"), &i, Scope::Durable))
                .expect("write");
            sync(&mut a, &mut b);
            assert_lag_walked(&a, "receives in place");
        }
        assert_eq!(a.heads(), b.heads());
        // A local write the standby has not seen, then a refused message.
        a.transact(|tx| tx.put("ch", "y", &1, Scope::Durable))
            .expect("write");
        let (heads, held) = (a.heads(), a.doc.hydrate(None));
        let lag = a.standby_lag().expect("a standby");
        assert!(
            lag > 1,
            "the standby lacks local and received changes: {lag}"
        );
        let e = offer_forged_change(&mut a, &b).expect("the forged change was accepted");
        assert!(matches!(e, ApplyError::Invalid(_)), "{e}");
        // The same changes and what they hold (a standby given the changes it lacked in one batch
        // may order a save's bytes otherwise).
        assert_eq!(
            (a.heads(), a.doc.hydrate(None)),
            (heads, held),
            "not exactly as it was"
        );
        b.transact(|tx| tx.put("ch", "z", &2, Scope::Durable))
            .expect("write");
        sync(&mut a, &mut b);
        assert_eq!(a.heads(), b.heads());
        assert_eq!(a.get::<i64>("ch", "z", |_| true).expect("read"), Some(2));
        assert_eq!(a.get::<i64>("ch", "y", |_| true).expect("read"), Some(1));
    }

    /// Sync jobs take the standby as their document and leave the document they replace as the
    /// standby, a message behind: after jobs (local writes made while one ran among them), a
    /// refused message received in place still leaves the document exactly as it was, and the
    /// replicas converge.
    #[test]
    fn sync_jobs_hand_the_replaced_document_over_as_the_standby() {
        let (mut a, mut b) = (replica(1), replica(2));
        let (mut sa, mut sb) = (Replica::new_sync_state(), Replica::new_sync_state());
        for round in 0..4 {
            b.transact(|tx| tx.put("ch", &format!("b{round}"), &round, Scope::Durable))
                .expect("write");
            // `a` receives by jobs; local writes land while the last round's job runs (more than
            // are applied at once: the job goes back for them).
            for _ in 0..20 {
                let to_a = b.generate_sync(&mut sb);
                let to_b = a.generate_sync(&mut sa);
                if to_a.is_none() && to_b.is_none() {
                    break;
                }
                if let Some(msg) = to_a {
                    let message = Replica::decode_sync(&msg).expect("decodes");
                    if message.changes.is_empty() {
                        a.receive_decoded(&mut sa, message).expect("applies");
                    } else {
                        let mut job = a.start_sync(&sa, message);
                        job.run();
                        if round == 3 {
                            for i in 0..(CATCH_UP_AT_ONCE as i64 + 2) {
                                let before = a.heads();
                                a.transact(|tx| {
                                    tx.put("mine", &format!("m{i}"), &i, Scope::Durable)
                                })
                                .expect("write");
                                a.touched_since(&before);
                            }
                        }
                        loop {
                            match a.finish_sync(job).expect("a valid job") {
                                SyncFinish::Done(done) => {
                                    sa = done.states.into_iter().next().expect("one peer");
                                    assert_lag_walked(&a, "a job done");
                                    break;
                                }
                                SyncFinish::Again(again) => {
                                    job = *again;
                                    job.run();
                                }
                            }
                        }
                    }
                }
                if let Some(msg) = to_b {
                    b.receive_sync(&mut sb, &msg).expect("applies");
                }
            }
            assert_eq!(
                a.get::<i64>("ch", &format!("b{round}"), |_| true)
                    .expect("read"),
                Some(i64::from(round))
            );
        }
        sync(&mut a, &mut b);
        assert_eq!(a.heads(), b.heads());
        // A refused message, in place, after the jobs.
        // The same changes, so the same document; its saved bytes may differ (a standby brought
        // up to date applied them in another order, and a save keeps that order).
        let heads = a.heads();
        let content = |r: &mut Replica| {
            let mut all = Vec::new();
            for ch in r.channels() {
                for k in r.keys(&ch, |_| true) {
                    let v = r.get::<i64>(&ch, &k, |_| true).expect("read");
                    all.push((ch.clone(), k, v));
                }
            }
            all
        };
        let before = content(&mut a);
        assert!(
            offer_forged_change(&mut a, &b).is_some(),
            "the forged change was accepted"
        );
        let after = content(&mut a);
        assert_eq!((a.heads(), after), (heads, before), "not as it was");
        assert_lag_walked(&a, "restored after jobs");
        b.transact(|tx| tx.put("ch", "z", &2, Scope::Durable))
            .expect("write");
        sync(&mut a, &mut b);
        assert_eq!(a.heads(), b.heads());
        assert_lag_walked(&a, "a receive after jobs");
        assert_eq!(a.get::<i64>("mine", "m0", |_| true).expect("read"), Some(0));
    }

    /// `a`'s standby lag, counted, is what a walk of the document's changes since the
    /// standby's heads finds (the standby holds an earlier state of the document).
    fn assert_lag_walked(a: &Replica, when: &str) {
        let walked = a
            .standby
            .as_ref()
            .map(|s| a.doc.get_changes_meta(&s.get_heads()).len());
        assert_eq!(a.standby_lag(), walked, "{when}");
    }

    /// Syncs `a` with a copy of `b`'s document holding a forged change (a records-map entry no
    /// channel change made); returns the error `a` refused it with, `None` if it was accepted.
    fn offer_forged_change(a: &mut Replica, b: &Replica) -> Option<ApplyError> {
        use automerge::sync::SyncDoc;
        let mut forged = b.doc.clone();
        let records = b.layout.records.clone();
        let mut tx = forged.transaction();
        tx.put(&records, "ch", 1).expect("forged");
        tx.commit_with(CommitOptions::default().with_time(0));
        let (mut state, mut hostile) = (Replica::new_sync_state(), Replica::new_sync_state());
        for _ in 0..10 {
            let msg = forged.generate_sync_message(&mut hostile)?;
            if let Err(e) = a.receive_sync(&mut state, &msg.encode()) {
                return Some(e);
            }
            if let Some(reply) = a.generate_sync(&mut state) {
                forged
                    .receive_sync_message(
                        &mut hostile,
                        automerge::sync::Message::decode(&reply).expect("decodes"),
                    )
                    .expect("applies");
            }
        }
        None
    }
}
