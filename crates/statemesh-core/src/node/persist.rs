//! Persistence bookkeeping: the bytes the runtime stores ([`Persist`]: incremental saves, and
//! now and then a compacting [`Snapshot`]) and the local writes they make durable
//! ([`Event::Durable`] once the runtime reports them stored with [`Node::persisted`]).

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
}

impl Snapshot {
    fn new(doc: automerge::Automerge) -> Self {
        Self {
            doc: Box::new(doc),
            bytes: std::sync::OnceLock::new(),
        }
    }

    /// The encoded snapshot (a full save of the document).
    pub fn bytes(&self) -> &[u8] {
        self.bytes.get_or_init(|| self.doc.save())
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

impl Node {
    /// The next bytes to persist, if the document changed since the last ones.
    ///
    /// Local writes left open are committed first when no persist is in flight; while one
    /// is, they wait for it to be stored, with the writes made meanwhile: persists are
    /// coalesced as sends are.
    pub fn poll_persist(&mut self) -> Option<Persist> {
        if !self.open_writes.is_empty() {
            if !self.in_persist.is_empty() {
                return None;
            }
            self.settle();
        }
        let heads = self.replica.heads();
        if heads == self.persisted_heads {
            return None;
        }
        self.persist_seq += 1;
        let seq = self.persist_seq;
        let persist = if self.appends >= self.config.compact_every {
            self.appends = 0;
            Persist::Snapshot {
                seq,
                bytes: Snapshot::new(self.replica.doc().clone()),
            }
        } else {
            self.appends += 1;
            Persist::Append {
                seq,
                bytes: self.replica.save_after(&self.persisted_heads),
            }
        };
        self.persisted_heads = heads;
        self.in_persist
            .push_back((seq, std::mem::take(&mut self.unpersisted)));
        Some(persist)
    }

    /// The runtime stored (and synced to disk) the bytes of persist `seq` and all before it.
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
