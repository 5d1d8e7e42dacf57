//! Sync: the messages generated for a peer and those received from it. A received message
//! carrying changes is applied under `catch_unwind` and the checks of `validate`, either at
//! once to the document itself ([`Replica::receive_sync`]; on failure the document is restored
//! from the standby, see `standby`) or away from the replica, on another thread, to a copy
//! ([`SyncApply`], given back to [`Replica::finish_sync`]; the copy replaces the document only
//! if all went well).

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::sync::SyncDoc;
use automerge::{Automerge, ChangeHash};

use super::receive::{note_holds_all, receive_message, receive_messages};
use super::touched::{RecordRead, Touched, TouchedKeys, read_records};
use super::validate::check_new_changes;
use super::{ApplyError, EntryChange, Layout, Replica};

impl Replica {
    /// A new sync state for a peer.
    pub fn new_sync_state() -> automerge::sync::State {
        automerge::sync::State::new()
    }

    /// The next sync message for the peer behind `state`, encoded, if any.
    ///
    /// The state holds what the peer said (its heads, needs, bloom filters), and the CRDT
    /// library may panic on some of it when building the reply. Such a panic is contained: the
    /// state is replaced by a fresh one (the exchange starts over) and nothing is sent.
    pub fn generate_sync(&mut self, state: &mut automerge::sync::State) -> Option<Vec<u8>> {
        self.generate_sync_counted(state).map(|(bytes, _)| bytes)
    }

    /// [`generate_sync`](Self::generate_sync), and whether the message carries changes.
    pub fn generate_sync_counted(
        &mut self,
        state: &mut automerge::sync::State,
    ) -> Option<(Vec<u8>, bool)> {
        self.commit_open();
        Self::generate_sync_on(&self.doc, state)
    }

    /// [`generate_sync_counted`](Self::generate_sync_counted) on a copy of a replica's
    /// document (a push generated away from the node).
    pub(crate) fn generate_sync_on(
        doc: &Automerge,
        state: &mut automerge::sync::State,
    ) -> Option<(Vec<u8>, bool)> {
        match catch_unwind(AssertUnwindSafe(|| doc.generate_sync_message(state))) {
            Ok(message) => message.map(|m| {
                let carries = !m.changes.is_empty();
                (m.encode(), carries)
            }),
            Err(_) => {
                tracing::warn!(
                    "building a sync message panicked on the peer's sync state; restarting the exchange"
                );
                *state = Self::new_sync_state();
                None
            }
        }
    }

    /// Applies an encoded sync message from the peer behind `state`.
    ///
    /// A message that carries changes is applied under `catch_unwind`, and the document is
    /// restored from the standby (a copy kept equal to it) unless all went well, so a
    /// malformed message (even one that makes the CRDT library panic) leaves the document
    /// exactly as it was. Returns the heads before the message.
    pub fn receive_sync(
        &mut self,
        state: &mut automerge::sync::State,
        bytes: &[u8],
    ) -> Result<Vec<ChangeHash>, ApplyError> {
        let message = Self::decode_sync(bytes)?;
        self.receive_decoded(state, message)
    }

    /// Decodes a sync message and checks what the CRDT library would otherwise trip on later.
    pub fn decode_sync(bytes: &[u8]) -> Result<automerge::sync::Message, ApplyError> {
        let message = catch_unwind(|| automerge::sync::Message::decode(bytes))
            .map_err(|_| ApplyError::Panicked)??;
        // A bloom filter that claims entries but holds no bits is kept in the sync state and
        // makes the CRDT library divide by zero when it next builds a reply.
        for have in &message.have {
            catch_unwind(|| have.bloom.contains_hash(&ChangeHash([0; 32])))
                .map_err(|_| ApplyError::Invalid("a sync message with a malformed bloom filter"))?;
        }
        Ok(message)
    }

    /// Starts applying a decoded sync message that carries changes away from this replica:
    /// the job holds a document of its own and a copy of the peer's sync state, is run
    /// anywhere, then given back to [`finish_sync`](Self::finish_sync).
    ///
    /// The job's document is the standby (see `standby`), which the last job left a message
    /// behind: the changes it lacks are read here (what they hold, not what the document holds)
    /// and applied by the job, off the replica. Only a replica without a standby copies the
    /// document (Automerge 0.12's `clone`: 0.5 ms at 10,000 records, 5 ms at 100,000).
    pub fn start_sync(
        &mut self,
        state: &automerge::sync::State,
        message: automerge::sync::Message,
    ) -> SyncApply {
        // Local writes left open stay open while the job runs on the standby (they are not in
        // its heads); only a copy of the document needs them committed.
        let mut heads = self.doc.get_heads();
        let (mut doc, mut catch_up, mut discard) = (None, Vec::new(), None);
        if let Some(spare) = self.standby.take() {
            let behind = spare.get_heads();
            if behind == heads {
                doc = Some(spare);
            } else if self.cheaper_than_a_copy(&behind, &heads) {
                catch_up = self.doc.get_changes(&behind);
                doc = Some(spare);
            } else {
                // Far behind (a burst): applying it all again would cost more than a copy.
                // It is dropped on the job's thread, not here.
                discard = Some(spare);
            }
        }
        let doc = match doc {
            Some(doc) => doc,
            None => {
                self.commit_open();
                heads = self.doc.get_heads();
                self.doc.clone()
            }
        };
        // The records of local writes left open are not in the job's copy.
        self.written_while_out = Some(
            self.open
                .as_ref()
                .map(|o| o.records.clone())
                .unwrap_or_default(),
        );
        SyncApply {
            base: heads,
            layout: self.layout.clone(),
            touched: (Vec::new(), Vec::new()),
            doc,
            bytes: carried_bytes(&message),
            inbound: vec![(state.clone(), vec![message])],
            applied: false,
            reads: Vec::new(),
            outcome: None,
            catch_up,
            discard,
            rounds: 0,
        }
    }

    /// Whether applying the changes made since `behind` (the standby's heads) to the standby
    /// costs less than copying the document at `heads`: an apply costs about a thousand times
    /// what a copy costs per operation (Automerge 0.12: about 26 µs per change of a few
    /// operations in a batch, against 0.05 µs per record for a copy), so after a burst the
    /// copy wins, and for a lone change the standby. The document's size is read as its
    /// operation counter (a lower bound of its operations).
    fn cheaper_than_a_copy(&self, behind: &[ChangeHash], heads: &[ChangeHash]) -> bool {
        let (missing, size) = self.missing_and_size(behind, heads);
        missing.saturating_mul(APPLY_PER_COPY) <= size
    }

    /// The operations of the changes the document made since `behind`, and the document's
    /// size at `heads` read as its operation counter (a lower bound of its operations).
    pub(super) fn missing_and_size(
        &self,
        behind: &[ChangeHash],
        heads: &[ChangeHash],
    ) -> (u64, u64) {
        let missing: u64 = self
            .doc
            .get_changes_meta(behind)
            .iter()
            .map(|c| (c.max_op + 1).saturating_sub(c.start_op))
            .sum();
        let size = heads
            .iter()
            .filter_map(|h| self.doc.get_change_meta_by_hash(h))
            .map(|c| c.max_op)
            .max()
            .unwrap_or(0);
        (missing, size)
    }

    /// Takes back a job of [`start_sync`](Self::start_sync) that ran: its copy of the document
    /// becomes the document, once the local changes made here meanwhile are applied to it. A
    /// few are applied at once; more (a writer kept writing while the job ran) go back to the
    /// job, to be applied off the node too, and the job is offered again
    /// ([`SyncFinish::Again`]; after [`CATCH_UP_ROUNDS`] rounds the rest is applied here).
    /// A job that failed (or did not run) changes nothing.
    pub fn finish_sync(&mut self, mut job: SyncApply) -> Result<SyncFinish, ApplyError> {
        self.commit_open();
        if let Err(e) = job.outcome.take().unwrap_or(Err(ApplyError::Panicked)) {
            self.written_while_out = None;
            return Err(e);
        }
        let before = self.doc.get_heads();
        if before != job.base {
            let local = self.doc.get_changes_meta(&job.base).len();
            if local > CATCH_UP_AT_ONCE && job.rounds < CATCH_UP_ROUNDS {
                job.catch_up = self.doc.get_changes(&job.base);
                job.base = before;
                job.rounds += 1;
                return Ok(SyncFinish::Again(Box::new(job)));
            }
            let local = self.doc.get_changes(&job.base);
            let doc = &mut job.doc;
            catch_unwind(AssertUnwindSafe(|| doc.apply_changes(local)))
                .map_err(|_| ApplyError::Panicked)??;
        }
        // The document replaced becomes the standby, behind by the job's received changes
        // (the next job or receive brings it up to date): nothing is copied or dropped here.
        let replaced = std::mem::replace(&mut self.doc, job.doc);
        self.standby = Some(replaced);
        // The job read the records on its copy; those written here meanwhile are read again.
        let fresh = self.written_while_out.take();
        let reads = fresh.map(|written| (job.reads, written));
        let changes = self.report_touched(job.touched, reads);
        Ok(SyncFinish::Done(Box::new(SyncApplied {
            before,
            states: job.inbound.into_iter().map(|(state, _)| state).collect(),
            changes,
        })))
    }

    /// Applies a decoded sync message (see [`receive_sync`](Self::receive_sync)).
    ///
    /// A message carrying changes is applied to the document itself under `catch_unwind`,
    /// once the standby is equal to the document; if it fails, the standby (the document
    /// before the message) becomes the document (see `standby`). If it passes, the standby is
    /// left a message behind, for
    /// [`catch_up_standby_within`](Self::catch_up_standby_within) (or the next receive) to
    /// bring up to date: the receiver's turn, and the change notification after
    /// it, do not wait for the copy's apply.
    pub fn receive_decoded(
        &mut self,
        state: &mut automerge::sync::State,
        message: automerge::sync::Message,
    ) -> Result<Vec<ChangeHash>, ApplyError> {
        // Changes are applied to a document with no transaction open; a message without
        // changes leaves the local writes open.
        if !message.changes.is_empty() {
            self.commit_open();
        }
        let before = self.doc.get_heads();
        self.received = None;
        let mut new_state = state.clone();
        if message.changes.is_empty() {
            // No change: only the sync state moves (the new one is kept only on success).
            let doc = &mut self.doc;
            catch_unwind(AssertUnwindSafe(|| {
                receive_message(doc, &mut new_state, &message)
            }))
            .map_err(|_| ApplyError::Panicked)??;
            *state = new_state;
            return Ok(before);
        }
        // The standby may lag behind the document by changes the document holds (local, or
        // received and checked). They are read now, while the document is sound, and given
        // to the standby only if this message fails; otherwise they wait to be applied in a
        // batch (see `Node::catch_up_standby`), where a change costs a fraction of its own
        // apply.
        self.ready_standby();
        // A sync job out reads its records again when it comes back (see `written_while_out`).
        self.written_while_out = None;
        let (doc, layout, channels) = (&mut self.doc, &self.layout, &self.channels);
        let result = catch_unwind(AssertUnwindSafe(|| {
            receive_message(doc, &mut new_state, &message)?;
            let mut keys = TouchedKeys::new(layout).with_channels(channels);
            check_new_changes(doc, layout, &before, Some(&mut keys))?;
            let made = keys.made_channels();
            Ok((keys.finish(), made))
        }));
        match result {
            Ok(Ok((touched, made))) => {
                // The standby stays at `before`: `catch_up_standby` (or the next receive)
                // applies the changes, rebuilt and kept by the checks, out of this turn.
                self.channels.extend(made);
                self.received = Some((before.clone(), touched));
                *state = new_state;
                Ok(before)
            }
            Ok(Err(e)) => {
                self.restore_from_standby(&before);
                Err(e)
            }
            Err(_) => {
                self.restore_from_standby(&before);
                Err(ApplyError::Panicked)
            }
        }
    }

    /// Moves `state`, the sync state of a peer known to hold exactly this document (its view
    /// carried the digest of this document's heads), as a message of the peer's saying so
    /// would: its heads and the heads both share are this document's, it needs nothing and
    /// has nothing since, every change sent to it is held. The next message to it then
    /// carries only what this document takes from now on.
    ///
    /// Without it the state moved only with the peer's own messages, and Automerge sends
    /// every change since the last one a peer named that is not in its Bloom filter: with 64
    /// windows writing in turn, a window's write reached each peer it had not exchanged with
    /// since its own last write (6.4 s, about 63 writes of others before) with 40-54 changes
    /// the peer held already, a message of over 8 KiB (docs/under-load.md, thirty-first slice).
    ///
    /// `heads` are this document's heads ([`heads`](Self::heads)), read once by a caller that
    /// notes many peers at a time (after a write, every peer's next view).
    pub(crate) fn note_peer_holds(heads: &[ChangeHash], state: &mut automerge::sync::State) {
        note_holds_all(heads, state);
    }

    /// Which of `hashes` (changes of this document) the peer behind `state` is known to hold:
    /// those among, or ancestors of, the heads it last advertised (or of the heads both are
    /// known to share).
    pub fn held_by(&self, state: &automerge::sync::State, hashes: &[ChangeHash]) -> Vec<bool> {
        let known = |heads: &[ChangeHash]| {
            !heads.is_empty() && heads.iter().all(|h| self.doc.has_change(h))
        };
        let heads = match state.their_heads.as_deref() {
            Some(h) if known(h) => h,
            _ if known(&state.shared_heads) => &state.shared_heads,
            _ => return vec![false; hashes.len()],
        };
        // Everything we have that is not covered by their heads: computed once for all hashes,
        // from the changes' metadata (Automerge 0.12 rebuilds a whole change, every operation
        // re-encoded, for `get_changes`: with a peer thousands of changes behind, that was most
        // of the cost of every sync message received from it).
        let uncovered: BTreeSet<ChangeHash> = self
            .doc
            .get_changes_meta(heads)
            .iter()
            .map(|c| c.hash)
            .collect();
        hashes.iter().map(|h| !uncovered.contains(h)).collect()
    }
}

/// Local changes made while a sync job ran that [`Replica::finish_sync`] applies to the job's
/// copy at once, under the node's lock; more go back to the job.
pub const CATCH_UP_AT_ONCE: usize = 4;

/// How many times a sync job goes back to catch up with local changes before the rest is
/// applied under the node's lock (a writer faster than the apply would otherwise keep it out).
pub const CATCH_UP_ROUNDS: u32 = 3;

/// What applying an operation costs, in operations copied: a sync job takes the standby as
/// its document only while the operations it lacks, times this, are fewer than the document's
/// (see `Replica::cheaper_than_a_copy`). Measured (`receive` bench, `throughput`): a standby
/// used whatever it lacked cost 12-20 % of throughput in bursts.
const APPLY_PER_COPY: u64 = 500;

/// What the standby's upkeep reckons one call of Automerge's apply costs, in operations
/// copied, and then each operation it applies ([`STANDBY_APPLY_PER_COPY`]): it copies the
/// document instead of applying the changes the standby lacks while their operations times
/// that, plus this, are at least the document's (see `Replica::catch_up_standby`). Measured
/// (criterion `core -- standby`, changes of one record, 4 operations each, release): one
/// change applied in 46-75 µs, eight in one call in 123-161 µs, whatever the document's size
/// (100 to 10,000 records); a copy (with the old standby dropped) in 6.6 µs at 100 records, 15
/// at 300, 45 at 1,000, 116 at 3,000, 382 at 10,000 (about 0.01 µs an operation). So a call
/// costs about what copying 4,500 operations costs, and a change in a batch about 1,100: the
/// rule copies up to about 1,000 records for one change, 2,750 for eight, a little short of
/// where the two meet.
pub(super) const APPLY_CALL_IN_COPIED_OPS: u64 = 3_000;

/// See [`APPLY_CALL_IN_COPIED_OPS`]: an operation applied in a batch of small changes, in
/// operations copied. (A sync job weighs a standby against a copy with [`APPLY_PER_COPY`],
/// measured on received bursts.)
pub(super) const STANDBY_APPLY_PER_COPY: u64 = 250;

/// What [`Replica::finish_sync`] made of a job.
#[derive(Debug)]
pub enum SyncFinish {
    /// The job's changes joined the document.
    Done(Box<SyncApplied>),
    /// The job must run again (local changes to apply to its copy) and come back.
    Again(Box<SyncApply>),
}

/// What [`Replica::finish_sync`] did.
#[derive(Debug)]
pub struct SyncApplied {
    /// The heads before.
    pub before: Vec<ChangeHash>,
    /// The peers' new sync states, in the order they joined the job.
    pub states: Vec<automerge::sync::State>,
    /// The entries the received changes touched.
    pub changes: Vec<EntryChange>,
}

/// A received sync message carrying changes, applied to a copy of the document away from
/// the replica (see [`Replica::start_sync`]): the CRDT library's apply is the bulk of a
/// receive, and a runtime can run it on another thread while the node keeps ticking.
#[derive(Debug)]
pub struct SyncApply {
    base: Vec<ChangeHash>,
    layout: Layout,
    /// What the received changes touched, found by `run`.
    touched: Touched,
    doc: Automerge,
    /// Each peer's sync state and its messages, in order (see [`SyncApply::join`]).
    inbound: Vec<(automerge::sync::State, Vec<automerge::sync::Message>)>,
    /// Bytes of changes the messages carry.
    bytes: usize,
    /// Whether `run` applied the messages.
    applied: bool,
    /// What `run` read of each record the changes touched (see `Touched`), on the copy.
    reads: Vec<RecordRead>,
    outcome: Option<Result<(), ApplyError>>,
    /// Local changes to apply to the copy (see [`Replica::finish_sync`]).
    catch_up: Vec<automerge::Change>,
    /// A standby too far behind to be used, dropped by `run` (a whole document's drop).
    discard: Option<Automerge>,
    rounds: u32,
}

impl SyncApply {
    /// Applies the message to the copy, under `catch_unwind` (a message that makes the CRDT
    /// library panic fails the job and leaves the replica as it was). Runs once.
    pub fn run(&mut self) {
        drop(self.discard.take());
        if !self.catch_up.is_empty() {
            // Changes the document holds and this copy lacks (checked when they joined it).
            let changes = std::mem::take(&mut self.catch_up);
            let doc = &mut self.doc;
            let result = catch_unwind(AssertUnwindSafe(|| doc.apply_changes(changes)));
            let result = match result {
                Ok(r) => r.map_err(ApplyError::from),
                Err(_) => Err(ApplyError::Panicked),
            };
            if result.is_err() || self.applied {
                self.outcome = Some(result);
                return;
            }
        }
        if std::mem::replace(&mut self.applied, true) {
            return;
        }
        let (doc, base) = (&mut self.doc, &self.base);
        let (layout, touched, reads) = (&self.layout, &mut self.touched, &mut self.reads);
        let mut batch: Vec<_> = self
            .inbound
            .iter_mut()
            .map(|(state, messages)| (state, messages.as_slice()))
            .collect();
        let result = catch_unwind(AssertUnwindSafe(|| {
            receive_messages(doc, &mut batch)?;
            // The checks read every new operation; the change notifications' reading of them
            // rides along (one rebuild and one decode per received change).
            let mut keys = TouchedKeys::new(layout).with_made_records();
            check_new_changes(doc, layout, base, Some(&mut keys))?;
            let made = keys.made_records();
            *touched = keys.finish();
            // The change report's reads of the records, here rather than under the node.
            *reads = read_records(doc, layout, &touched.0, &made);
            Ok(())
        }));
        self.outcome = Some(result.unwrap_or(Err(ApplyError::Panicked)));
    }
}

impl SyncApply {
    /// Whether the job takes more messages ([`join`](Self::join)): it has not run, and its
    /// messages carry fewer than [`JOB_BYTES`] of changes.
    pub fn accepts(&self) -> bool {
        !self.applied && self.bytes < JOB_BYTES
    }

    /// Adds a message to the job (see [`accepts`](Self::accepts)), from the peer of its entry
    /// `entry` (applied after that peer's earlier messages) or, with `None`, from another peer
    /// whose sync state is `state`; returns the peer's entry. All the job's messages are
    /// applied in one call of the CRDT library's.
    pub fn join(
        &mut self,
        entry: Option<usize>,
        state: &automerge::sync::State,
        message: automerge::sync::Message,
    ) -> usize {
        self.bytes += carried_bytes(&message);
        match entry.and_then(|i| self.inbound.get_mut(i).map(|e| (i, e))) {
            Some((i, (_, messages))) => {
                messages.push(message);
                i
            }
            None => {
                self.inbound.push((state.clone(), vec![message]));
                self.inbound.len() - 1
            }
        }
    }

    /// How many messages the job holds.
    pub fn messages(&self) -> usize {
        self.inbound.iter().map(|(_, m)| m.len()).sum()
    }

    /// Takes the job's messages out, each peer's in order (once it ran, it needs them no
    /// more): a job of several that failed is retried one message at a time, to find the one
    /// at fault.
    pub fn take_messages(&mut self) -> Vec<Vec<automerge::sync::Message>> {
        self.inbound
            .iter_mut()
            .map(|(_, messages)| std::mem::take(messages))
            .collect()
    }
}

/// Bytes of changes a sync job's messages may carry before it takes no more (see
/// [`SyncApply::accepts`]): a few hundred changes of a hundred keys, a second or so of the
/// CRDT library's apply on this project's 2-core reference machine.
pub const JOB_BYTES: usize = 4 * 1024 * 1024;

/// Bytes of changes a sync message carries.
fn carried_bytes(message: &automerge::sync::Message) -> usize {
    message.changes.iter().map(<[u8]>::len).sum()
}

/// A sync message that carries `chunks` (encoded changes) and announces `heads`, asking and
/// offering nothing else: what a peer that hand-encodes its changes sends (tests and the fuzz
/// targets forge with it).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn message_carrying(
    chunks: Vec<Vec<u8>>,
    heads: Vec<ChangeHash>,
) -> automerge::sync::Message {
    automerge::sync::Message {
        heads,
        need: Vec::new(),
        have: Vec::new(),
        changes: chunks.into(),
        flags: None,
        version: automerge::sync::MessageVersion::V1,
    }
}
