//! Persistence bookkeeping: the bytes the runtime stores ([`Persist`]: incremental saves, and
//! now and then a compacting [`Snapshot`]) and the local writes they make durable
//! ([`Event::Durable`] once the runtime reports them stored with [`Node::persisted`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Event, Node};

/// Bytes to persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persist {
    /// Append these incremental-save bytes to the stored state.
    Append {
        /// Sequence number to report back with [`Node::persisted`].
        seq: u64,
        /// The bytes.
        bytes: Vec<u8>,
        /// Whether the bytes must be on disk (synced) before [`Node::persisted`]: they hold
        /// this window's own writes, which a `durable` acknowledgement may wait for. Changes
        /// received from peers alone need not be: no promise of this window covers them (their
        /// writers keep them durable, and `replicated` counts the windows that hold them, not
        /// disks), a crash of this process leaves them in the file (the kernel has them), and
        /// the next synced append or snapshot syncs them too. Only the machine losing power
        /// before that can lose them, and then its peers give them back.
        sync: bool,
    },
    /// Replace the stored state with this full snapshot (compaction).
    Snapshot {
        /// Sequence number to report back with [`Node::persisted`].
        seq: u64,
        /// The snapshot: encoded where it is first read.
        bytes: Snapshot,
    },
}

impl Persist {
    /// The sequence number to report back with [`Node::persisted`].
    pub fn seq(&self) -> u64 {
        match self {
            Self::Append { seq, .. } | Self::Snapshot { seq, .. } => *seq,
        }
    }

    /// The bytes to store. A snapshot is encoded here, at the first call: call it where
    /// encoding the whole document may take long (the runtime's store thread), not under the
    /// node.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Append { bytes, .. } => bytes,
            Self::Snapshot { bytes, .. } => bytes.bytes(),
        }
    }
}

/// A full save of the document, encoded when first read. Taking one costs a copy of the
/// document (cheap in Automerge 0.12: 0.5 ms at 10,000 records); encoding it costs a full save
/// (hundreds of milliseconds on a large document), which is why it waits for its reader:
/// [`Node::poll_persist`] runs under the runtime's lock on the node, the store's thread does
/// not.
#[derive(Clone)]
pub struct Snapshot {
    /// Boxed: a document is large, and [`Persist`] holds a snapshot in one variant.
    doc: Box<automerge::Automerge>,
    bytes: std::sync::OnceLock<Vec<u8>>,
    /// Told the encoded size (see [`Compaction`]).
    encoded_len: Arc<AtomicUsize>,
}

impl Snapshot {
    fn new(doc: automerge::Automerge, encoded_len: Arc<AtomicUsize>) -> Self {
        Self {
            doc: Box::new(doc),
            bytes: std::sync::OnceLock::new(),
            encoded_len,
        }
    }

    /// The encoded snapshot (a full save of the document).
    pub fn bytes(&self) -> &[u8] {
        self.bytes.get_or_init(|| {
            let bytes = self.doc.save();
            self.encoded_len.store(bytes.len(), Ordering::Relaxed);
            bytes
        })
    }
}

/// When the next persist is a snapshot: once [`Config::compact_every`] incremental saves
/// followed the last one, and their bytes amount to its size and to
/// [`Config::compact_min_bytes`]. A full save costs O(document); with the count alone, a burst
/// of writes on a large document saved it whole every 64 persists, each of a few writes. With
/// the size too, the compactions of a burst cost O(1) per byte persisted; with the floor, a
/// small document is not compacted for the fixed cost alone. The stored state stays within a
/// snapshot plus the larger of its size and the floor, plus `compact_every` saves.
///
/// [`Config::compact_every`]: crate::Config::compact_every
/// [`Config::compact_min_bytes`]: crate::Config::compact_min_bytes
#[derive(Debug)]
pub(super) struct Compaction {
    /// Incremental saves since the last snapshot.
    appends: usize,
    /// Their bytes.
    appended: usize,
    /// The last snapshot's encoded size, once its reader encoded it (0 until then).
    snapshot_len: Arc<AtomicUsize>,
}

impl Compaction {
    /// The next persist is a snapshot.
    pub(super) fn due() -> Self {
        Self {
            appends: usize::MAX,
            appended: usize::MAX,
            snapshot_len: Arc::default(),
        }
    }

    fn is_due(&self, every: usize, min_bytes: usize) -> bool {
        self.appends >= every
            && self.appended >= self.snapshot_len.load(Ordering::Relaxed).max(min_bytes)
    }

    /// A snapshot is taken: counting starts over. Returns the cell the snapshot tells its
    /// encoded size in.
    fn restart(&mut self) -> Arc<AtomicUsize> {
        *self = Self {
            appends: 0,
            appended: 0,
            snapshot_len: Arc::default(),
        };
        self.snapshot_len.clone()
    }

    /// An incremental save of `len` bytes is taken.
    fn note_append(&mut self, len: usize) {
        self.appends += 1;
        self.appended = self.appended.saturating_add(len);
    }
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Snapshot {}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("heads", &self.doc.get_heads())
            .field("encoded", &self.bytes.get().map(Vec::len))
            .finish()
    }
}

/// Heartbeat intervals after the first of them by which changes received alone are persisted
/// even if nothing else comes in (see [`Node::poll_persist`]): in a mesh that is writing,
/// the persist rides on the turn of a later input instead of a tick of its own.
pub(super) const RECEIVED_PERSIST_LATEST_BEATS: u32 = 5;

impl Node {
    /// The next bytes to persist, if the document changed since the last ones.
    ///
    /// Local writes left open are committed first when no persist of local writes is in
    /// flight; while one is, they wait for it to be stored (and synced), with the writes made
    /// meanwhile: persists are coalesced as sends are.
    ///
    /// Changes received from peers alone wait until a heartbeat interval has passed since the
    /// first of them, then go with the runtime's next flush ([`Node::poll_data_timeout`]
    /// names a moment five intervals after the first, `RECEIVED_PERSIST_LATEST_BEATS`, for a
    /// node that has no other input), or at once with the next local write, or with a
    /// graceful leave: no promise of this window covers them (see [`Persist::Append`]'s
    /// `sync`), and a persist for every receive cost each window a turn of the store's thread
    /// and a write for every write of every peer (at 64 windows, 64 store wake-ups per write
    /// mesh-wide). A window killed meanwhile gets them back from its peers when it comes back.
    pub fn poll_persist(&mut self) -> Option<Persist> {
        if !self.open_writes.is_empty() {
            if !self.in_persist.is_empty() {
                return None;
            }
            self.settle();
        }
        let heads = self.replica.heads();
        if heads == self.persisted_heads {
            self.received_unpersisted = None;
            return None;
        }
        let hb = self.config.heartbeat_interval;
        if self.unpersisted.is_empty()
            && self
                .received_unpersisted
                .is_some_and(|since| self.last_tick.saturating_since(since) < hb)
        {
            return None;
        }
        self.received_unpersisted = None;
        self.persist_seq += 1;
        let seq = self.persist_seq;
        let persist = if self
            .compaction
            .is_due(self.config.compact_every, self.config.compact_min_bytes)
        {
            let len = self.compaction.restart();
            Persist::Snapshot {
                seq,
                bytes: Snapshot::new(self.replica.doc().clone(), len),
            }
        } else {
            let bytes = self.replica.save_after(&self.persisted_heads);
            self.compaction.note_append(bytes.len());
            Persist::Append {
                seq,
                bytes,
                sync: !self.unpersisted.is_empty(),
            }
        };
        self.persisted_heads = heads;
        // Only persists that local writes wait for are tracked: one of changes received alone
        // makes no promise, and its report would only cost the runtime a turn.
        if !self.unpersisted.is_empty() {
            self.in_persist
                .push_back((seq, std::mem::take(&mut self.unpersisted)));
        }
        Some(persist)
    }

    /// Whether local writes wait for persist `seq` to be stored: only then must the runtime
    /// report it with [`Node::persisted`]. A report covers every persist before it, and one
    /// that nothing waits for may go unreported (it holds changes received alone, whose
    /// writers keep them durable; see [`Persist::Append`]'s `sync`). In `scale` (64 windows)
    /// each receive's report was a driver turn of its own, 64 of 350 turns per write.
    pub fn awaits_persist(&self, seq: u64) -> bool {
        self.in_persist.iter().any(|(s, _)| *s == seq)
    }

    /// The runtime stored (and synced to disk) the bytes of persist `seq` and all before it
    /// (reporting is owed only for persists local writes wait for: see
    /// [`Node::awaits_persist`]).
    pub fn persisted(&mut self, seq: u64) {
        while self.in_persist.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, writes)) = self.in_persist.pop_front() {
                if let Some(newest) = writes.last() {
                    self.durable_upto(*newest);
                }
                self.events
                    .extend(writes.into_iter().map(|write| Event::Durable { write }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{linked, node, node_with, pump};
    use super::*;
    use crate::time::Time;
    use crate::{Config, Scope};

    /// Drains every persist output; the `sync` of each append, in order.
    fn appends_sync(n: &mut Node) -> Vec<bool> {
        let mut syncs = Vec::new();
        while let Some(p) = n.poll_persist() {
            if let Persist::Append { sync, .. } = p {
                syncs.push(sync);
            }
            n.persisted(p.seq());
        }
        syncs
    }

    /// Two linked nodes, each with a write of its own stored: their first persists (whole
    /// snapshots) are behind them, so the next are appends.
    fn linked_past_snapshots() -> (Node, Node) {
        let (mut a, mut b) = linked();
        a.put("c", "a", &0i64, Scope::Durable).expect("write");
        b.put("c", "b", &0i64, Scope::Durable).expect("write");
        pump(&mut a, &mut b, Time::ZERO);
        appends_sync(&mut a);
        appends_sync(&mut b);
        (a, b)
    }

    /// Only an append that holds this window's own writes asks to be synced: changes received
    /// from a peer alone are written unsynced, and a local write made with them syncs them.
    #[test]
    fn only_appends_with_local_writes_ask_for_a_sync() {
        let (mut a, mut b) = linked_past_snapshots();
        a.put("c", "k", &1i64, Scope::Durable).expect("write");
        assert_eq!(appends_sync(&mut a), [true], "a's own write");
        pump(&mut a, &mut b, Time::ZERO);
        assert_eq!(b.get::<i64>("c", "k").expect("read"), Some(1));
        assert_eq!(appends_sync(&mut b), [], "b only received: it waits");
        b.handle_time(Time::ZERO + Config::default().heartbeat_interval);
        assert_eq!(appends_sync(&mut b), [false], "b only received");
        a.put("c", "k", &2i64, Scope::Durable).expect("write");
        pump(&mut a, &mut b, Time::ZERO);
        let w = b.put("c", "mine", &3i64, Scope::Durable).expect("write");
        assert_eq!(
            appends_sync(&mut b),
            [true],
            "received and own changes together"
        );
        let events: Vec<Event> = std::iter::from_fn(|| b.poll_event()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Durable { write } if *write == w.id)),
            "the own write is reported durable: {events:?}"
        );
    }

    /// Only persists that hold local writes await a report: one of changes received alone is
    /// not (the runtime leaves it unreported), and while it is unreported local writes still
    /// commit and persist, and are reported durable by their own persist's report.
    #[test]
    fn persists_of_received_changes_alone_await_no_report() {
        let (mut a, mut b) = linked_past_snapshots();
        a.put("c", "k", &1i64, Scope::Durable).expect("write");
        pump(&mut a, &mut b, Time::ZERO);
        b.handle_time(Time::ZERO + Config::default().heartbeat_interval);
        let received = b.poll_persist().expect("the received change to store");
        assert!(
            !b.awaits_persist(received.seq()),
            "no write of b waits for it"
        );
        // Not reported: b's own write still commits and persists at once.
        let w = b.put("c", "mine", &2i64, Scope::Durable).expect("write");
        let own = b.poll_persist().expect("b's write to store");
        assert!(b.awaits_persist(own.seq()), "b's write waits for it");
        assert!(own.seq() > received.seq());
        assert!(b.poll_persist().is_none());
        b.persisted(own.seq());
        let events: Vec<Event> = std::iter::from_fn(|| b.poll_event()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Durable { write } if *write == w.id)),
            "the write is reported durable: {events:?}"
        );
        assert!(!b.awaits_persist(own.seq()), "reported");
    }

    /// Changes received alone are persisted together once a heartbeat interval has passed
    /// since the first of them (the node's data deadline names that moment), and at once with
    /// a local write or a graceful leave.
    #[test]
    fn received_changes_alone_wait_a_heartbeat_interval_or_a_local_write_or_a_leave() {
        let hb = Config::default().heartbeat_interval;
        let ms = |n: u64| Time::ZERO + std::time::Duration::from_millis(n);
        let (mut a, mut b) = linked_past_snapshots();

        // Two changes received 10 ms apart wait for one persist, a heartbeat interval after
        // the first.
        a.put("c", "k", &1i64, Scope::Durable).expect("write");
        pump(&mut a, &mut b, ms(10));
        a.put("c", "k", &2i64, Scope::Durable).expect("write");
        pump(&mut a, &mut b, ms(20));
        assert_eq!(b.get::<i64>("c", "k").expect("read"), Some(2));
        assert!(b.poll_persist().is_none(), "received alone: it waits");
        let latest = ms(10) + hb * RECEIVED_PERSIST_LATEST_BEATS;
        assert_eq!(b.poll_data_timeout(), Some(latest));
        b.handle_time(ms(10) + hb - std::time::Duration::from_millis(1));
        assert!(b.poll_persist().is_none(), "not yet");
        b.handle_time(ms(10) + hb);
        assert_eq!(appends_sync(&mut b), [false], "both, in one append");
        assert!(
            b.poll_data_timeout().is_none_or(|t| t > latest),
            "nothing left to persist"
        );

        // A local write takes what waits along, at once.
        let t = ms(1_000);
        a.put("c", "k", &3i64, Scope::Durable).expect("write");
        pump(&mut a, &mut b, t);
        assert!(b.poll_persist().is_none(), "received alone: it waits");
        b.put("c", "mine", &1i64, Scope::Durable).expect("write");
        assert_eq!(appends_sync(&mut b), [true], "with the local write");
        assert!(b.poll_persist().is_none(), "everything persisted");

        // So does a graceful leave.
        a.put("c", "k", &4i64, Scope::Durable).expect("write");
        pump(&mut a, &mut b, t);
        assert!(b.poll_persist().is_none(), "received alone: it waits");
        b.leave(t);
        assert_eq!(appends_sync(&mut b), [false], "with the leave");
    }

    /// What a node persisted, one write per persist, until a snapshot came.
    struct Saves {
        /// The incremental saves before the snapshot.
        appends: i64,
        /// Their bytes.
        appended: usize,
        /// The bytes of the last of them.
        last: usize,
        snapshot: Persist,
    }

    /// Makes write `i` with `write(n, i)`, `i` from 0, and stores each persist, until one is a
    /// snapshot.
    fn saves_until_snapshot(n: &mut Node, mut write: impl FnMut(&mut Node, i64)) -> Saves {
        let (mut appends, mut appended, mut last) = (0i64, 0usize, 0usize);
        loop {
            write(n, appends);
            let p = n.poll_persist().expect("bytes to store");
            n.persisted(p.seq());
            match p {
                Persist::Append { bytes, .. } => {
                    appends += 1;
                    last = bytes.len();
                    appended += last;
                }
                Persist::Snapshot { .. } => {
                    return Saves {
                        appends,
                        appended,
                        last,
                        snapshot: p,
                    };
                }
            }
            assert!(appends < 100_000, "a snapshot at last");
        }
    }

    /// A burst of small writes on a large document is not saved whole every
    /// `compact_every` persists: the snapshot comes once the incremental saves since the last
    /// one amount to its size, and what was stored loads back.
    #[test]
    fn a_large_document_is_compacted_once_the_saves_since_amount_to_its_size() {
        let config = Config {
            compact_every: 2,
            compact_min_bytes: 0,
            ..Config::default()
        };
        let mut n = node_with(7, config);
        n.transact(|tx| {
            for i in 0..2_000i64 {
                tx.put("c", &format!("k{i}"), &i, Scope::Durable)?;
            }
            Ok(())
        })
        .expect("writes");
        let first = n.poll_persist().expect("bytes to store");
        assert!(
            matches!(first, Persist::Snapshot { .. }),
            "the first is whole"
        );
        let size = first.bytes().len();
        n.persisted(first.seq());
        let Saves {
            appends,
            appended,
            last,
            snapshot,
        } = saves_until_snapshot(&mut n, |n, i| {
            n.put("c", "hot", &i, Scope::Durable).expect("write");
        });
        assert!(appends > 2, "not after `compact_every` saves alone");
        assert!(
            appended >= size && appended - last < size,
            "at the first persist after the saves reached the snapshot's size \
             ({appended} bytes in {appends} saves, snapshot {size})"
        );
        let mut loaded = node(8);
        loaded.load(snapshot.bytes()).expect("loads");
        // The write that made the snapshot due is in it.
        assert_eq!(loaded.get::<i64>("c", "hot").expect("read"), Some(appends));
        assert_eq!(loaded.keys("c").len(), 2_001);
    }

    /// A small document is not compacted every time its saves amount to its size: only once
    /// they amount to `compact_min_bytes` too (a compaction's fixed cost, a full save and
    /// three syncs, is not repaid by a small file).
    #[test]
    fn a_small_document_is_compacted_once_its_saves_amount_to_the_floor() {
        let floor = 4096;
        let config = Config {
            compact_every: 2,
            compact_min_bytes: floor,
            ..Config::default()
        };
        let mut n = node_with(9, config);
        n.put("c", "k", &0i64, Scope::Durable).expect("write");
        let first = n.poll_persist().expect("bytes to store");
        assert!(
            matches!(first, Persist::Snapshot { .. }),
            "the first is whole"
        );
        let size = first.bytes().len();
        assert!(size < floor / 4, "a small document ({size} bytes)");
        n.persisted(first.seq());
        let Saves {
            appends,
            appended,
            last,
            ..
        } = saves_until_snapshot(&mut n, |n, i| {
            n.put("c", &format!("k{i}"), &i, Scope::Durable)
                .expect("write");
        });
        assert!(
            appended >= floor && appended - last < floor,
            "at the first persist after the saves reached the floor \
             ({appended} bytes in {appends} saves, snapshot {size})"
        );
    }
}
