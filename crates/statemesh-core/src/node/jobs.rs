//! Receives and pushes run away from the node: a received sync message carrying more than a
//! few changes is applied by a [`SyncJob`], a burst of local changes is generated for the
//! linked peers by a [`PushJob`], on another thread, while the node keeps taking every other
//! input. (A small message is applied at once: see [`INLINE_BYTES`].) The messages several
//! peers sent while the last job ran join one job ([`Node::join_frame`]), applied in one call
//! of the CRDT library's.

use super::{Node, ReceiveError};
use crate::codec::Message;
use crate::replica::Replica;
use crate::{PeerId, Time};

/// Received sync messages carrying changes, applied away from the node: see
/// [`Node::handle_frame_deferred`] and [`Node::join_frame`].
#[derive(Debug)]
pub struct SyncJob {
    /// The peer (and its link's serial) of each of the apply's entries, in order.
    from: Vec<(PeerId, u64)>,
    apply: crate::replica::SyncApply,
}

impl SyncJob {
    /// Applies the message to the job's copy of the document (the CRDT library's work: the
    /// bulk of a receive), anywhere, without the node.
    pub fn run(&mut self) {
        self.apply.run();
    }

    /// The peer that sent the job's first message.
    pub fn from(&self) -> PeerId {
        self.from[0].0
    }

    /// Whether the job holds a message of `peer`.
    pub fn includes(&self, peer: PeerId) -> bool {
        self.from.iter().any(|(p, _)| *p == peer)
    }

    /// Whether the job takes more messages ([`Node::join_frame`]): it has not run yet, and its
    /// messages carry less than [`JOB_BYTES`](crate::replica::JOB_BYTES) of changes.
    pub fn accepts(&self) -> bool {
        self.apply.accepts()
    }

    /// Whether [`Node::join_frame`] should be given `frame`, from `from`, while this job waits
    /// to start: the job takes more messages, and the frame is a sync message or comes from a
    /// peer the job holds no message of (a runtime keeps any other frame of a peer in the job
    /// until the job is done, so that the peer's frames are handled in order).
    pub fn takes(&self, from: PeerId, frame: &[u8]) -> bool {
        self.accepts() && (!self.includes(from) || crate::codec::is_sync(frame))
    }

    /// How many sync messages the job applies.
    pub fn messages(&self) -> usize {
        self.apply.messages()
    }

    /// How many peers' messages the job applies.
    pub fn peers(&self) -> usize {
        self.from.len()
    }
}

/// Sync messages carrying local changes, generated away from the node: see
/// [`Node::set_push_jobs`].
#[derive(Debug)]
pub struct PushJob {
    doc: Box<automerge::Automerge>,
    peers: Vec<PushTo>,
}

#[derive(Debug)]
struct PushTo {
    peer: PeerId,
    serial: u64,
    state: automerge::sync::State,
    message: Option<(Vec<u8>, bool)>,
}

impl PushJob {
    /// Generates the sync messages on the job's copy of the document (the CRDT library's work:
    /// the bulk of a push to many peers), anywhere, without the node.
    pub fn run(&mut self) {
        for to in &mut self.peers {
            to.message = Replica::generate_sync_on(&self.doc, &mut to.state);
        }
    }

    /// How many peers the job generates for.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}

/// The largest sync message (bytes of changes) that
/// [`Node::handle_frame_deferred`] applies at once, in place, rather than as a [`SyncJob`]:
/// a few dozen small changes, tens to hundreds of microseconds of the CRDT library's apply.
/// (`propagation`, 4 windows: a job's hand-over to a blocking thread and back cost 110 µs at
/// the median, 600 µs at the 90th percentile, on top of its apply.)
pub const INLINE_BYTES: usize = 8 * 1024;

/// A message is applied in place only while the standby lacks at most this many changes
/// (read from the document first, those a receive has not read yet, to restore it from the
/// standby should the message fail); further behind, a job catches the standby up.
pub(super) const INLINE_STANDBY_LAG: usize = 32;

/// [`Node::catch_up_standby`] applies at most this many changes to the standby, under the
/// node; further behind (after a job applied a burst), the next job catches it up.
const STANDBY_CATCH_UP_MAX: usize = 64;

/// Changes (or local writes) owed to the standby from which the runtime brings it up to date
/// as soon as it is idle (see [`Node::standby_batch_owed`]); fewer wait for a longer idle.
/// Automerge applies small changes in a batch of 8 for 40 % of what each costs on its own
/// (one record per change, 1,000 records, release: 8.0 against 20.2 µs per change).
pub const STANDBY_BATCH: usize = 8;

/// Local changes since the last push up to which, in the mode of [`Node::set_push_jobs`], the
/// push is generated at once, under the node (a lone write leaves without a thread hop); more
/// make a [`PushJob`].
pub const PUSH_AT_ONCE: usize = 4;

impl Node {
    /// Handles one frame like [`handle_frame`](Self::handle_frame), except a sync message
    /// that carries changes: that one is returned as a [`SyncJob`] to be
    /// [run](SyncJob::run) anywhere (another thread) and given back to
    /// [`finish_sync`](Self::finish_sync). Meanwhile the node takes every other input — ticks,
    /// views, local writes — so liveness never waits for the CRDT library's apply, however
    /// large the message. The runtime runs one job at a time and keeps the sender's later
    /// frames until it finished (they may depend on it).
    pub fn handle_frame_deferred(
        &mut self,
        now: Time,
        from: PeerId,
        frame: &[u8],
    ) -> Result<Option<SyncJob>, ReceiveError> {
        let Some(decoded) = self.sync_message_of(now, from, frame)? else {
            return Ok(None);
        };
        // A message without changes, or a small one with a standby about up to date, is
        // applied at once, in place: a job's two hand-overs between threads cost more than its
        // apply. The standby is then owed the message's changes (see `receive_in_place`).
        let size: usize = decoded.changes.iter().map(<[u8]>::len).sum();
        let carried = !decoded.changes.is_empty();
        if !carried
            || size <= INLINE_BYTES
                && self
                    .replica
                    .standby_lag()
                    .is_some_and(|lag| lag <= INLINE_STANDBY_LAG)
        {
            self.receive_in_place(now, from, decoded)?;
            return Ok(None);
        }
        let Some(link) = self.links.get_mut(&from) else {
            return Err(ReceiveError::NoLink(from));
        };
        link.busy = true;
        Ok(Some(SyncJob {
            from: vec![(from, link.serial)],
            apply: self.replica.start_sync(&link.sync, decoded),
        }))
    }

    /// Handles one frame like [`handle_frame_deferred`](Self::handle_frame_deferred) while
    /// `job` (a job it returned, not yet run, that [accepts](SyncJob::accepts) more) waits to
    /// start: a sync message that carries changes joins the job instead of making another, and
    /// so does any sync message of a peer the job holds one of (its messages are applied in the
    /// order they came). A runtime that finds frames of several peers waiting when a job ends
    /// gives them to the next job this way, one apply for all of them: a call of the CRDT
    /// library's with many changes costs less per change than several with few, and a change
    /// that several peers relayed is applied once. Any other frame is handled as
    /// [`handle_frame`](Self::handle_frame) does. A runtime gives it only the frames the job
    /// [takes](SyncJob::takes), and keeps the others until the job is done.
    pub fn join_frame(
        &mut self,
        now: Time,
        job: &mut SyncJob,
        from: PeerId,
        frame: &[u8],
    ) -> Result<(), ReceiveError> {
        debug_assert!(
            job.accepts(),
            "a job that runs, or ran, takes no more messages"
        );
        let Some(decoded) = self.sync_message_of(now, from, frame)? else {
            return Ok(());
        };
        let entry = job.from.iter().position(|(p, _)| *p == from);
        if entry.is_none() && decoded.changes.is_empty() {
            return self.receive_in_place(now, from, decoded);
        }
        let Some(link) = self.links.get_mut(&from) else {
            return Err(ReceiveError::NoLink(from));
        };
        link.busy = true;
        if job.apply.join(entry, &link.sync, decoded) == job.from.len() {
            job.from.push((from, link.serial));
        }
        Ok(())
    }

    /// A job made of the messages of a job of several that failed, one at a time (see
    /// [`finish_sync`](Self::finish_sync)), if any is left: run it before any other, and
    /// before the frames of the peers it covers.
    pub fn retry_job(&mut self) -> Option<SyncJob> {
        while let Some((from, serial, message)) = self.retry.pop_front() {
            let Some(link) = self.links.get_mut(&from).filter(|l| l.serial == serial) else {
                continue;
            };
            link.busy = true;
            return Some(SyncJob {
                from: vec![(from, serial)],
                apply: self.replica.start_sync(&link.sync, message),
            });
        }
        None
    }

    /// Brings the replica's standby up to date after messages applied in place by
    /// [`handle_frame_deferred`](Self::handle_frame_deferred) and local changes (it is left
    /// behind by them, so that neither the receiver's turn nor the writer's waits for the
    /// copy), if it lacks few changes; a standby further behind is left to the next job. Call
    /// it while the runtime is idle (see [`standby_owed`](Self::standby_owed) and
    /// [`standby_batch_owed`](Self::standby_batch_owed)); it costs nothing when nothing is
    /// owed. Otherwise the next sync job catches the standby up first.
    pub fn catch_up_standby(&mut self) {
        self.settle();
        if std::mem::take(&mut self.standby_owed) > 0 {
            self.replica.catch_up_standby_within(STANDBY_CATCH_UP_MAX);
        }
    }

    /// Whether the standby lacks changes that [`catch_up_standby`](Self::catch_up_standby)
    /// would give it.
    pub fn standby_owed(&self) -> bool {
        self.standby_owed > 0
    }

    /// Whether the standby is owed at least [`STANDBY_BATCH`] changes (or local writes,
    /// counted one by one though an open change may hold several): worth bringing up to date
    /// at the first idle moment. A runtime waits longer for fewer, so that they are applied
    /// in one batch with the next ones (the standby is needed only when a received message
    /// fails, and then the changes it lacks are read from the document first).
    pub fn standby_batch_owed(&self) -> bool {
        self.standby_owed >= STANDBY_BATCH
    }

    /// Takes back a [`SyncJob`] that ran: its changes join the document (with the local writes
    /// made meanwhile), the senders' sync states move on, and the node answers them. An error
    /// means the job's one message was malformed: the link to its sender should be closed, as
    /// for [`handle_frame`](Self::handle_frame). A job of several messages that failed is
    /// retried one message at a time, to find the one at fault (see
    /// [`retry_job`](Self::retry_job)). A job whose links all went down meanwhile is dropped.
    ///
    /// Returns the job again when local writes made while it ran are many: they are applied to
    /// the job's copy off the node too (run it again and give it back), so that what the node
    /// does under its lock stays small however fast the application writes.
    pub fn finish_sync(
        &mut self,
        now: Time,
        job: SyncJob,
    ) -> Result<Option<SyncJob>, ReceiveError> {
        self.settle();
        self.advance(now);
        let SyncJob { from, mut apply } = job;
        let current: Vec<bool> = from
            .iter()
            .map(|(peer, serial)| self.links.get(peer).is_some_and(|l| l.serial == *serial))
            .collect();
        if !current.contains(&true) {
            return Ok(None);
        }
        let count = apply.messages();
        let messages = apply.take_messages();
        let applied = match self.replica.finish_sync(apply) {
            Ok(crate::replica::SyncFinish::Done(applied)) => *applied,
            Ok(crate::replica::SyncFinish::Again(apply)) => {
                return Ok(Some(SyncJob {
                    from,
                    apply: *apply,
                }));
            }
            Err(_) if count > 1 => {
                // Which message failed is not known: each is tried again on its own, in the
                // order they came, the links staying busy until then.
                tracing::debug!(
                    messages = count,
                    "a sync job of several messages failed: retried one at a time"
                );
                for (((peer, serial), messages), current) in
                    from.into_iter().zip(messages).zip(current)
                {
                    if current {
                        self.retry
                            .extend(messages.into_iter().map(|m| (peer, serial, m)));
                    }
                }
                return Ok(None);
            }
            Err(e) => {
                self.stats.decode_errors += 1;
                self.release(&from, &current);
                return Err(e.into());
            }
        };
        self.release(&from, &current);
        let mut peers = Vec::with_capacity(from.len());
        for (((peer, _), state), current) in from.into_iter().zip(applied.states).zip(current) {
            if let Some(link) = self.links.get_mut(&peer).filter(|_| current) {
                link.sync = state;
                peers.push(peer);
            }
        }
        self.after_syncs(now, &peers, applied.before, applied.changes, true);
        // The document the job replaced is the standby now, behind by the job's changes.
        self.standby_owed += count;
        Ok(None)
    }

    /// The links of a job's peers (those still `current`) are no longer busy with it, unless
    /// a retry of theirs waits (see [`retry_job`](Self::retry_job)).
    fn release(&mut self, from: &[(PeerId, u64)], current: &[bool]) {
        for ((peer, _), current) in from.iter().zip(current) {
            let waits = self.retry.iter().any(|(p, _, _)| p == peer);
            if let Some(link) = self.links.get_mut(peer).filter(|_| *current && !waits) {
                link.busy = false;
            }
        }
    }

    /// In this mode (off by default) a push of many local changes to the linked peers (the
    /// sync messages that carry a burst of writes) is not generated under the node: it is
    /// taken with [`start_push`](Self::start_push) as a [`PushJob`], [run](PushJob::run)
    /// anywhere, and given back to [`finish_push`](Self::finish_push). Up to [`PUSH_AT_ONCE`]
    /// local changes still leave at once from [`poll_transmit`](Self::poll_transmit).
    pub fn set_push_jobs(&mut self, on: bool) {
        self.push_jobs = on;
    }

    /// The push waiting to be generated off the node, if any (see
    /// [`set_push_jobs`](Self::set_push_jobs)). Call it after
    /// [`poll_transmit`](Self::poll_transmit) has run dry; the peers it covers are busy until
    /// [`finish_push`](Self::finish_push).
    pub fn start_push(&mut self) -> Option<PushJob> {
        let mut peers = Vec::new();
        for (peer, link) in &mut self.links {
            if link.push_ready && !link.busy {
                link.push_ready = false;
                link.busy = true;
                peers.push(PushTo {
                    peer: *peer,
                    serial: link.serial,
                    state: link.sync.clone(),
                    message: None,
                });
            }
        }
        if peers.is_empty() {
            return None;
        }
        if !self.links.values().any(|l| l.push_ready || l.push_pending) {
            self.unpushed = 0;
        }
        // The local writes left open leave in this push.
        self.settle();
        Some(PushJob {
            doc: Box::new(self.replica.doc().clone()),
            peers,
        })
    }

    /// Takes back a [`PushJob`] that ran: the peers' sync states move on and the messages
    /// leave (through [`poll_transmit`](Self::poll_transmit)). Peers whose link went down
    /// meanwhile are skipped.
    pub fn finish_push(&mut self, now: Time, job: PushJob) {
        self.advance(now);
        let now = self.last_tick;
        for to in job.peers {
            let Some(link) = self
                .links
                .get_mut(&to.peer)
                .filter(|l| l.serial == to.serial)
            else {
                continue;
            };
            link.busy = false;
            link.sync = to.state;
            // Local changes made while the job ran (they asked for a push meanwhile) go with
            // the next flush, coalesced with the answer to this message.
            if link.push_pending {
                self.doc_dirty = true;
            }
            if let Some((bytes, carries)) = to.message {
                if carries {
                    link.changes_in_flight.get_or_insert(now);
                }
                link.awaiting_answer.get_or_insert(now);
                link.push_pending = false;
                self.stats.sync_out += 1;
                self.send(to.peer, &Message::Sync(bytes));
            }
        }
    }
}
