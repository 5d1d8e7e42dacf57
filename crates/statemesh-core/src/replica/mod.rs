//! The replicated state: one Automerge document per mesh, laid out so that no two peers ever
//! create competing containers.
//!
//! Layout (schema 2). The containers of the root are created by the *genesis* change, which
//! every peer builds byte for byte identically — same actor, sequence number, time and
//! operations — so all peers share the very same objects; each channel's map is created by
//! the channel's own change, which every peer also builds byte for byte identically:
//!
//! ```text
//! ROOT
//! ├── "r": map   records:  "<channel>" -> map (the channel's own change)
//! │                           "<key>" -> { "v": value, "w": writer id, "p": presence? }
//! ├── "c": map   counters: "<name>\u{1f}<writer id>\u{1f}d|p" -> Counter  (one entry per writer)
//! └── "m": map   meta:     "schema" -> 2, "terms" -> map { "<leader id>" -> term }
//! ```
//!
//! A channel's map is made by a change built on a document holding only the genesis change,
//! by an actor derived from the channel's name (a hash), at time 0, without a message, with
//! the one operation `put_object(records, "<channel>", Map)`: its dependencies (the genesis
//! change), sequence number (1) and first operation number (right after the genesis change's)
//! do not depend on the local document's history, so two peers that write to a new channel
//! at once make the very same change (Automerge keeps a change once, by its hash) and share
//! one map. A received change may touch the records map only as such a change (`validate`).
//! Applying a received record then walks the records of its channel, not of the mesh.
//!
//! A record is a last-writer-wins register whose fields merge when updated concurrently.
//! Counters stay per-writer entries of one flat map, combined on read: each writer only ever
//! creates its own entry, so `desired += 1` from two windows at once adds up. State files of
//! schema 1 (every record a flat key `"<channel>\u{1f}<key>"` of the records map) are
//! migrated on load (`legacy`).
//!
//! The replica's parts, each in its own file beside this one (which holds the replica, its
//! reads, the presence index, load and save): `layout`, the schema, the genesis change and
//! the change that creates a channel's map; `tx`, the write transaction ([`Tx`]); `sync`, sync messages
//! generated and received, and received changes applied away from the replica
//! ([`SyncApply`]); `validate`, the checks received changes must pass before they join the
//! document (the security boundary); `standby`, the copy kept equal to the document that a
//! received message failing is undone from; `touched`, change notifications (the entries new changes
//! touched); `legacy`, state files of schema 1 and their migration; `tests`.

mod layout;
mod legacy;
mod open;
mod presence;
mod receive;
mod standby;
mod sync;
mod touched;
mod tx;
mod validate;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue};
use autosurgeon::Hydrate;
use serde::{Deserialize, Serialize};

use crate::PeerId;

pub use layout::SCHEMA;
#[cfg(test)]
use layout::channel_actor;
pub(crate) use layout::channel_change;
use layout::{Layout, channel_obj, genesis};
#[cfg(any(test, feature = "fuzzing"))]
pub use legacy::schema1_file;
use presence::PresenceIndex;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use sync::message_carrying;
pub use sync::{CATCH_UP_AT_ONCE, CATCH_UP_ROUNDS, JOB_BYTES, SyncApplied, SyncApply, SyncFinish};
pub use tx::Tx;
use validate::check_new_changes;

/// Separator between the parts of a flat key. Channel names, keys and counter names may not
/// contain it.
pub const SEP: char = '\u{1f}';

/// The longest channel name, key or counter name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// How many times [`Replica::transact`] runs a transaction that keeps writing to channels
/// without a map (each run creates the maps the previous one missed).
const MAX_NEW_CHANNEL_RUNS: usize = 8;

/// How long an entry lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum Scope {
    /// Stays until overwritten or deleted, whatever happens to its writer.
    #[default]
    Durable,
    /// Disappears from every view as soon as its writer's incarnation is judged dead (e.g. the
    /// `running` count of a window that crashed).
    Presence,
}

/// What kind of entry changed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum EntryKind {
    /// A record of a channel.
    Record,
    /// A counter.
    Counter,
    /// A leader record (written under a leadership term, not stored in the document).
    Leader,
}

/// Which entry changed, and who wrote it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EntryChange {
    /// The kind of entry.
    pub kind: EntryKind,
    /// The channel (for counters: empty).
    pub channel: String,
    /// The key within the channel (for counters: the counter's name).
    pub key: String,
    /// The peer whose write this is, when known.
    pub by: Option<PeerId>,
}

/// A write that could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A channel name, key or counter name is empty, too long, or holds a control character.
    #[error("invalid name {0:?}: names are 1 to 256 bytes without control characters")]
    InvalidName(String),
    /// The value could not be written into the document.
    #[error("could not write the value: {0}")]
    Reconcile(Box<autosurgeon::ReconcileError>),
    /// The document refused the operation.
    #[error(transparent)]
    Automerge(Box<automerge::AutomergeError>),
    /// A transaction kept writing to channels without a map, run after run (it names new
    /// channels each time it runs; see [`Replica::transact`]). Nothing was written.
    #[error("the transaction wrote to new channels (such as {0:?}) every time it ran")]
    NewChannels(String),
    /// The value could not be converted to the dynamic form leader records travel in.
    #[error("could not convert the value: {0}")]
    Build(String),
    /// A leader write was made without leadership, or under a term that is no longer current.
    #[error("not the leader under term {term}: leadership was lost or is stale")]
    NotLeader {
        /// The term the write was made under.
        term: u64,
    },
    /// An addition would take this writer's share of a counter (its own entry, of the scope
    /// written) beyond the signed 64-bit range. Nothing was written. (Reads of a counter whose
    /// shares add up beyond the range saturate at `i64::MIN`/`i64::MAX`.)
    #[error(
        "counter {name:?}: adding {by} to this window's share of {share} would leave the signed 64-bit range; nothing was written"
    )]
    CounterOverflow {
        /// The counter.
        name: String,
        /// This writer's share before the addition.
        share: i64,
        /// The addition refused.
        by: i64,
    },
}

impl From<autosurgeon::ReconcileError> for WriteError {
    fn from(e: autosurgeon::ReconcileError) -> Self {
        Self::Reconcile(Box::new(e))
    }
}

impl From<automerge::AutomergeError> for WriteError {
    fn from(e: automerge::AutomergeError) -> Self {
        Self::Automerge(Box::new(e))
    }
}

/// A read that could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A channel name or key is invalid.
    #[error("invalid name {0:?}: names are 1 to 256 bytes without control characters")]
    InvalidName(String),
    /// The stored value does not have the shape of the requested type.
    #[error("stored value does not match the requested type: {0}")]
    Hydrate(#[from] autosurgeon::HydrateError),
}

/// A sync message that could not be applied. The document is left exactly as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The bytes are not an Automerge sync message.
    #[error("malformed sync message: {0}")]
    Decode(#[from] automerge::sync::ReadMessageError),
    /// Automerge refused the message.
    #[error("sync message refused: {0}")]
    Refused(#[from] automerge::AutomergeError),
    /// Stored bytes hold nothing Automerge can read.
    #[error("no readable Automerge data")]
    Unreadable,
    /// Automerge panicked on the message; the panic was contained and the message dropped.
    #[error("sync message made the CRDT library panic; message dropped")]
    Panicked,
    /// A change that Automerge accepts but that no Automerge peer makes, and that would make
    /// the saved document unloadable.
    #[error("invalid change: {0}")]
    Invalid(&'static str),
}

/// What loading stored bytes found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LoadReport {
    /// Whether the bytes were read whole. `false`: the file was damaged and only what could
    /// be read was kept; the caller should move the file aside and report it.
    pub complete: bool,
    /// Whether the document gained anything.
    pub changed: bool,
}

/// Checks a channel name, key or counter name.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(name.to_owned());
    }
    Ok(())
}

fn record_key(channel: &str, key: &str) -> Result<String, String> {
    check_name(channel)?;
    check_name(key)?;
    Ok(format!("{channel}{SEP}{key}"))
}

fn counter_key(name: &str, writer: PeerId, scope: Scope) -> String {
    let s = match scope {
        Scope::Durable => 'd',
        Scope::Presence => 'p',
    };
    format!("{name}{SEP}{writer}{SEP}{s}")
}

/// The replicated document of one peer.
#[derive(Debug)]
pub struct Replica {
    doc: Automerge,
    layout: Layout,
    me: PeerId,
    presence: PresenceIndex,
    /// The maps of the channels the last local transaction wrote to: the change notification
    /// that follows it names them without a search ([`Replica::touched_since`]).
    written: Vec<(ObjId, String)>,
    /// A copy of the document, kept equal to it, to restore it from when a received message
    /// fails (see `standby`).
    standby: standby::Standby,
    /// The changes the standby lacks, as last read from the document (see
    /// `standby::Lacking`).
    lacking: Option<standby::Lacking>,
    /// The entries touched by the last received message, found while checking it, with the
    /// heads before it: the change notification that follows names them without reading the
    /// changes again ([`Replica::touched_since`]).
    received: Option<(Vec<ChangeHash>, touched::Touched)>,
    /// The entries the last local transaction changed, noted by its writes, with the heads
    /// before it and its change: the change notification that follows needs neither the
    /// change's operations nor reads of the document ([`Replica::touched_since`]).
    local: Option<(Vec<ChangeHash>, ChangeHash, tx::Noted)>,
    /// The channels' maps: object -> channel name (a change notification names a received
    /// record's channel from it, without reading the records map). An entry never goes stale
    /// (a channel's map is made by the channel's own change, the same on every peer, and
    /// nothing else may touch the records map); a map missing from it is looked up.
    channels: HashMap<ObjId, String>,
    /// The records local transactions wrote since the sync job out started (see
    /// [`Replica::start_sync`]): the job read every record its changes touched on its own
    /// copy, and those reads stand unless a local write touched the record meanwhile. `None`:
    /// not known (no job out, or the document changed otherwise): every record is read again.
    written_while_out: Option<HashSet<String>>,
    /// Local writes not committed yet: one transaction left open across writes, so that
    /// writes made between two sends leave as one change (see [`Replica::write`]).
    open: Option<open::Open>,
    /// Changes of local writes committed and not yet taken by [`Replica::settle`], with how
    /// many writes each holds.
    settled: Vec<(ChangeHash, usize)>,
}

/// The magic number every Automerge chunk (document or change) starts with.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// A counter entry's flat key, split: `(name, writer, scope)`.
fn split_counter_key(flat: &str) -> Option<(&str, &str, &str)> {
    let mut parts = flat.split(SEP);
    let parsed = (parts.next()?, parts.next()?, parts.next()?);
    parts.next().is_none().then_some(parsed)
}

impl Replica {
    /// A replica holding only the genesis change, writing as `actor`.
    pub fn new(me: PeerId, actor: [u8; 16]) -> Self {
        let (doc, layout) = genesis();
        Self {
            doc: doc.with_actor(ActorId::from(actor.as_slice())),
            layout,
            me,
            presence: PresenceIndex::default(),
            written: Vec::new(),
            standby: None,
            lacking: None,
            received: None,
            local: None,
            channels: HashMap::new(),
            written_while_out: None,
            open: None,
            settled: Vec::new(),
        }
    }

    /// The underlying document (read-only).
    pub fn doc(&self) -> &Automerge {
        debug_assert!(self.open.is_none(), "local writes left open (see `settle`)");
        &self.doc
    }

    /// The current heads.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Makes several writes as one atomic change. Returns the change's hash, or `None` when the
    /// writes changed nothing (writing a value equal to the stored one is not a change). On an
    /// error nothing is written.
    ///
    /// `f` runs again when it wrote to channels that had no map yet: the transaction is rolled
    /// back, the channel maps are created (each by its own change, the same on every peer, see
    /// the module docs) and `f` runs on a transaction that sees them. A channel's first write
    /// costs one more run of `f`; every later write, none.
    pub fn transact<R>(
        &mut self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<R, WriteError>,
    ) -> Result<(R, Option<ChangeHash>), WriteError> {
        self.commit_open();
        // A run collects every channel it misses, so the second run sees them all, unless `f`
        // names new channels on every run.
        let mut last = String::new();
        for _ in 0..MAX_NEW_CHANNEL_RUNS {
            let before = self.doc.get_heads();
            let missing = {
                let mut tx = Tx::new(
                    self.doc.transaction(),
                    &self.layout,
                    self.me,
                    tx::Made::default(),
                );
                let result = tx.run(false, &mut f);
                let Tx {
                    tx,
                    missing,
                    written,
                    noted,
                    ..
                } = tx;
                match result {
                    Ok(r) if missing.is_empty() => {
                        let (hash, _) = tx.commit_with(CommitOptions::default().with_time(0));
                        self.written = written;
                        if let Some(out) = &mut self.written_while_out {
                            out.extend(noted.records.keys().cloned());
                        }
                        self.local = hash.map(|h| (before, h, noted));
                        return Ok((r, hash));
                    }
                    Err(e) if missing.is_empty() => {
                        tx.rollback();
                        return Err(e);
                    }
                    _ => {
                        tx.rollback();
                        missing
                    }
                }
            };
            for channel in &missing {
                self.create_channel(channel)?;
            }
            last = missing.into_iter().next().unwrap_or_default();
        }
        Err(WriteError::NewChannels(last))
    }

    /// Creates channel `channel`'s map, unless it exists (see [`channel_change`]).
    fn create_channel(&mut self, channel: &str) -> Result<(), WriteError> {
        if channel_obj(&self.doc, &self.layout.records, channel).is_none() {
            self.doc.apply_changes([channel_change(channel)])?;
            if let Some(obj) = channel_obj(&self.doc, &self.layout.records, channel) {
                self.channels.insert(obj, channel.to_owned());
            }
        }
        Ok(())
    }

    /// Records that this peer led under `term` (kept so a restarted mesh never reuses a term).
    pub fn record_term(&mut self, term: u64) -> Result<Option<ChangeHash>, WriteError> {
        let terms = self.layout.terms.clone();
        let me = self.me.to_string();
        self.transact(|tx| {
            tx.tx.put(&terms, me.as_str(), term)?;
            Ok(())
        })
        .map(|(_, h)| h)
    }

    /// The greatest term number stored by any leader (terms above
    /// [`MAX_TERM`](crate::election::MAX_TERM), which no leader can have reached, are ignored).
    pub fn max_stored_term(&self) -> u64 {
        self.stored_terms().map(|(_, t)| t).max().unwrap_or(0)
    }

    /// The newest term stored: the greatest (number, leader) pair among entries whose key is a
    /// peer id (every version of statemesh has stored `"<leader id>" -> number`, so files written
    /// before terms were compared as pairs load as they are).
    pub fn newest_stored_term(&self) -> Option<crate::election::Term> {
        self.stored_terms()
            .filter_map(|(k, number)| {
                let leader = k.parse().ok()?;
                Some(crate::election::Term { number, leader })
            })
            .max()
    }

    fn stored_terms(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.doc
            .map_range(&self.layout.terms, ..)
            .filter_map(|item| {
                let key = item.key.to_string();
                let v = automerge::Value::from(item.value);
                let t = v
                    .as_u64()
                    .or_else(|| v.as_i64().and_then(|i| u64::try_from(i).ok()))?;
                Some((key, t))
            })
            .filter(|(_, t)| *t <= crate::election::MAX_TERM)
    }

    /// Reads record `key` of `channel`, hiding presence-scoped records whose writer is not live.
    /// (Reads of records make the new records of local writes left open first: see
    /// [`write`](Self::write).)
    pub fn get<T: Hydrate>(
        &mut self,
        channel: &str,
        key: &str,
        is_live: impl Fn(&PeerId) -> bool,
    ) -> Result<Option<T>, ReadError> {
        let flat = record_key(channel, key).map_err(ReadError::InvalidName)?;
        self.make_open_records();
        if !self.presence.visible(&flat, &is_live) {
            return Ok(None);
        }
        let Some(rec) = self.record_obj(&flat) else {
            return Ok(None);
        };
        Ok(Some(autosurgeon::hydrate_prop(&self.doc, &rec, "v")?))
    }

    /// The writer of record `key` of `channel`.
    pub fn writer(&mut self, channel: &str, key: &str) -> Option<PeerId> {
        let flat = record_key(channel, key).ok()?;
        self.make_open_records();
        let rec = self.record_obj(&flat)?;
        self.writer_of(&rec)
    }

    /// The visible keys of `channel`, in order.
    pub fn keys(&mut self, channel: &str, is_live: impl Fn(&PeerId) -> bool) -> Vec<String> {
        self.make_open_records();
        let Some(ch) = channel_obj(&self.doc, &self.layout.records, channel) else {
            return Vec::new();
        };
        // Visibility from the presence index (a lookup per record, and none at all when no
        // record is presence-scoped), not from each record's fields (two seeks per record:
        // a second under the node's lock for a channel of 100,000 records).
        let mut flat = format!("{channel}{SEP}");
        let prefix = flat.len();
        self.doc
            .map_range(&ch, ..)
            .filter(|item| matches!(item.value, automerge::ValueRef::Object(ObjType::Map)))
            .filter(|item| {
                self.presence.is_empty() || {
                    flat.truncate(prefix);
                    flat.push_str(&item.key);
                    self.presence.visible(&flat, &is_live)
                }
            })
            .map(|item| item.key.to_string())
            .collect()
    }

    /// The names of channels holding at least one record, in order.
    pub fn channels(&mut self) -> Vec<String> {
        self.make_open_records();
        self.doc
            .map_range(&self.layout.records, ..)
            .filter(|item| self.doc.length(item.id()) > 0)
            .map(|item| item.key.to_string())
            .collect()
    }

    /// The value of counter `name`: the sum of every writer's entry, leaving out presence-scoped
    /// entries of writers that are not live. A sum beyond the signed 64-bit range (shares of
    /// several writers adding up) saturates at `i64::MIN` or `i64::MAX`; a sum within it is
    /// exact, whatever the order of the entries.
    pub fn counter(&self, name: &str, is_live: impl Fn(&PeerId) -> bool) -> i64 {
        let prefix = format!("{name}{SEP}");
        self.doc
            .map_range(&self.layout.counters, prefix.clone()..)
            .take_while(|item| item.key.starts_with(&prefix))
            .filter(|item| {
                let rest = &item.key[prefix.len()..];
                match rest.split_once(SEP) {
                    Some((_, "d")) => true,
                    Some((writer, "p")) => writer.parse::<PeerId>().is_ok_and(|w| is_live(&w)),
                    _ => false,
                }
            })
            .filter_map(|item| match automerge::Value::from(item.value) {
                automerge::Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Counter(c) => Some(i64::from(c)),
                    ScalarValue::Int(i) => Some(*i),
                    _ => None,
                },
                automerge::Value::Object(_) => None,
            })
            .map(i128::from)
            .sum::<i128>()
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The names of all counters, in order.
    pub fn counter_names(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .doc
            .map_range(&self.layout.counters, ..)
            .filter_map(|item| item.key.split_once(SEP).map(|(c, _)| c.to_owned()))
            .collect();
        set.into_iter().collect()
    }

    /// Entries whose visibility depends on `writer`'s presence (from an index kept with the
    /// document: this costs the writer's own entries, not a scan of the document).
    pub fn presence_entries_of(&self, writer: PeerId) -> Vec<EntryChange> {
        let Some(entries) = self.presence.by_writer.get(&writer) else {
            return Vec::new();
        };
        entries
            .iter()
            .filter_map(|(kind, flat)| match kind {
                EntryKind::Record => flat.split_once(SEP).map(|(c, k)| EntryChange {
                    kind: EntryKind::Record,
                    channel: c.into(),
                    key: k.into(),
                    by: Some(writer),
                }),
                _ => Some(EntryChange {
                    kind: EntryKind::Counter,
                    channel: String::new(),
                    key: flat.clone(),
                    by: Some(writer),
                }),
            })
            .collect()
    }

    /// Rebuilds the presence index and the index of channel maps from the whole document
    /// (after a load).
    fn reindex_presence(&mut self) {
        let mut index = PresenceIndex::default();
        self.channels.clear();
        for channel in self.doc.map_range(&self.layout.records, ..) {
            let ch = channel.id();
            self.channels.insert(ch.clone(), channel.key.to_string());
            for item in self.doc.map_range(&ch, ..) {
                if let (w, true) = self.record_meta(&item.id()) {
                    index.set_record(&format!("{}{SEP}{}", channel.key, item.key), Some(w));
                }
            }
        }
        for item in self.doc.map_range(&self.layout.counters, ..) {
            if let Some((name, writer, "p")) = split_counter_key(&item.key)
                && let Ok(w) = writer.parse()
            {
                index.add_counter(name, w);
            }
        }
        self.presence = index;
    }

    /// An incremental save of the changes after `heads`.
    pub fn save_after(&self, heads: &[ChangeHash]) -> Vec<u8> {
        debug_assert!(self.open.is_none(), "local writes left open (see `settle`)");
        self.doc.save_after(heads)
    }

    /// A full, compacted save.
    pub fn save(&self) -> Vec<u8> {
        debug_assert!(self.open.is_none(), "local writes left open (see `settle`)");
        self.doc.save()
    }

    /// Merges stored bytes (a snapshot, possibly followed by incremental saves) into the
    /// document, under the same containment as sync messages.
    ///
    /// A damaged file is salvaged: every chunk that can still be read is merged, and the report
    /// says the file was incomplete so the caller can move it aside. Bytes with nothing readable
    /// are refused and change nothing.
    pub fn load_stored(&mut self, bytes: &[u8]) -> Result<LoadReport, ApplyError> {
        self.commit_open();
        use automerge::{LoadOptions, OnPartialLoad, VerificationMode};
        // A sync job out reads its records again when it comes back (see `written_while_out`).
        self.written_while_out = None;
        if !bytes.starts_with(&CHUNK_MAGIC) {
            return Err(ApplyError::Unreadable);
        }
        // A strict parse says whether the file is whole; the merge below keeps every readable
        // chunk either way.
        let strict = catch_unwind(|| {
            Automerge::load_with_options(
                bytes,
                LoadOptions::new()
                    .on_partial_load(OnPartialLoad::Error)
                    .verification_mode(VerificationMode::DontCheck),
            )
        });
        // Changes whose dependencies live in another file (or the genesis) parse whole but load
        // as "missing dependencies": that file is complete.
        let complete = matches!(
            strict,
            Ok(Ok(_) | Err(automerge::AutomergeError::MissingDeps))
        );
        let mut doc = self.doc.clone();
        let before = doc.get_heads();
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            doc.load_incremental(bytes)?;
            check_new_changes(&doc, &self.layout, &before, None)
        }));
        let result = match loaded {
            Ok(Ok(())) => {
                let changed = doc.get_heads() != before;
                self.doc = doc;
                // Loaded changes may wait in the queue (their dependencies in another file),
                // which the standby would lack: it is made afresh.
                self.drop_standby();
                Ok(LoadReport { complete, changed })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ApplyError::Panicked),
        };
        // A file of the first layout does not load as it is (its genesis change is another
        // change of the genesis actor, which Automerge refuses, and its other changes do not
        // descend from today's): it is migrated.
        let result = match result {
            Ok(LoadReport { changed: false, .. })
            | Err(ApplyError::Invalid(_) | ApplyError::Refused(_)) => {
                match legacy::read_v1(bytes) {
                    Some(old) => self
                        .migrate_v1(&old)
                        .map(|changed| LoadReport { complete, changed }),
                    None => result,
                }
            }
            other => other,
        };
        if let Ok(LoadReport { changed: true, .. }) = result {
            self.reindex_presence();
        }
        result
    }

    /// The record behind flat key `"<channel>\u{1f}<key>"`.
    fn record_obj(&self, flat: &str) -> Option<ObjId> {
        let (channel, key) = flat.split_once(SEP)?;
        let ch = channel_obj(&self.doc, &self.layout.records, channel)?;
        self.record_in(&ch, key)
    }

    /// The map of record `key` in the channel whose map is `ch`.
    fn record_in(&self, ch: &ObjId, key: &str) -> Option<ObjId> {
        record_in(&self.doc, ch, key)
    }

    /// A record's writer and whether it is presence-scoped (see [`record_meta`]).
    fn record_meta(&self, rec: &ObjId) -> (Option<PeerId>, bool) {
        record_meta(&self.doc, rec)
    }

    fn writer_of(&self, rec: &ObjId) -> Option<PeerId> {
        let (v, _) = self.doc.get(rec, "w").ok()??;
        v.into_string().ok()?.parse().ok()
    }

    /// Whether record `rec` is presence-scoped, read from the document (reads take it from the
    /// presence index; tests check the two agree).
    #[cfg(test)]
    fn is_presence(&self, rec: &ObjId) -> bool {
        self.record_meta(rec).1
    }
}

/// The map of record `key` in the channel whose map is `ch`. (The vendored Automerge's
/// `get_map_object` answers as `get` does, reading 4 of the op set's columns instead of all
/// 20: the change report looks up every record a received change touched.)
fn record_in(doc: &Automerge, ch: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get_map_object(ch, key).ok()? {
        Some((ObjType::Map, id)) => Some(id),
        _ => None,
    }
}

/// A record's writer and whether it is presence-scoped, read in one pass over the record's
/// map (Automerge 0.12 seeks the object anew for each `get`).
fn record_meta(doc: &Automerge, rec: &ObjId) -> (Option<PeerId>, bool) {
    use automerge::{ScalarValueRef, ValueRef};
    let (mut writer, mut presence) = (None, false);
    for item in doc.map_range(rec, ..) {
        match (item.key.as_ref(), item.value) {
            ("w", ValueRef::Scalar(ScalarValueRef::Str(s))) => writer = s.parse().ok(),
            ("p", ValueRef::Scalar(ScalarValueRef::Boolean(b))) => presence = b,
            _ => {}
        }
    }
    (writer, presence)
}

/// A digest of a set of heads: equal digests mean (with overwhelming probability) equal
/// documents.
pub fn heads_digest(heads: &[ChangeHash]) -> [u8; 8] {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&ChangeHash> = heads.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    for head in sorted {
        h.update(head.0);
    }
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

#[cfg(test)]
mod made_tests;
#[cfg(test)]
mod noted_tests;
#[cfg(test)]
mod open_tests;
#[cfg(test)]
mod tests;
