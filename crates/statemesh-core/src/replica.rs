//! The replicated state: one Automerge document per mesh, laid out so that no two peers ever
//! create competing containers.
//!
//! Layout (every container below is created by the *genesis* change, which every peer builds
//! byte for byte identically — same actor, sequence number, time and operations — so all peers
//! share the very same objects):
//!
//! ```text
//! ROOT
//! ├── "r": map   records:  "<channel>\u{1f}<key>" -> { "v": value, "w": writer id, "p": presence? }
//! ├── "c": map   counters: "<name>\u{1f}<writer id>\u{1f}d|p" -> Counter  (one entry per writer)
//! └── "m": map   meta:     "schema" -> 1, "terms" -> map { "<leader id>" -> term }
//! ```
//!
//! Records are flat keys of one shared map, so two peers writing different keys of one channel
//! at once never race to create a channel container. A record is a last-writer-wins register
//! whose fields merge when updated concurrently. Counters are per-writer entries combined on
//! read: each writer only ever creates its own entry, so `desired += 1` from two windows at once
//! adds up.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::sync::SyncDoc;
use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue};
use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};

use crate::PeerId;

/// Separator between the parts of a flat key. Channel names, keys and counter names may not
/// contain it.
pub const SEP: char = '\u{1f}';

/// The longest channel name, key or counter name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

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

/// The object ids of the three genesis containers.
#[derive(Clone, Debug)]
struct Layout {
    records: ObjId,
    counters: ObjId,
    terms: ObjId,
}

/// Builds the genesis document: identical, byte for byte, on every peer.
fn genesis() -> (Automerge, Layout) {
    let mut doc = Automerge::new().with_actor(ActorId::from([0u8; 16].as_slice()));
    let mut tx = doc.transaction();
    let layout = (|| -> Result<Layout, automerge::AutomergeError> {
        let records = tx.put_object(ROOT, "r", ObjType::Map)?;
        let counters = tx.put_object(ROOT, "c", ObjType::Map)?;
        let meta = tx.put_object(ROOT, "m", ObjType::Map)?;
        tx.put(&meta, "schema", 1u64)?;
        let terms = tx.put_object(&meta, "terms", ObjType::Map)?;
        Ok(Layout {
            records,
            counters,
            terms,
        })
    })()
    .unwrap_or_else(|e| unreachable!("genesis operations on a fresh document cannot fail: {e}"));
    tx.commit_with(CommitOptions::default().with_time(0));
    (doc, layout)
}

/// The replicated document of one peer.
#[derive(Debug)]
pub struct Replica {
    doc: Automerge,
    layout: Layout,
    me: PeerId,
    presence: PresenceIndex,
}

/// The presence-scoped entries of each writer, kept up to date with every change to the
/// document, so that a writer's death costs a lookup of its own entries, not a scan of all.
#[derive(Debug, Default)]
struct PresenceIndex {
    /// Flat record keys and counter names, by writer.
    by_writer: BTreeMap<PeerId, BTreeSet<(EntryKind, String)>>,
    /// The writer each indexed record is filed under (records can change hands or scope).
    record_writer: HashMap<String, PeerId>,
}

impl PresenceIndex {
    /// Files record `flat` under `writer` when it is presence-scoped, and nowhere otherwise.
    fn set_record(&mut self, flat: &str, presence_writer: Option<PeerId>) {
        let old = self.record_writer.get(flat).copied();
        if old == presence_writer {
            return;
        }
        if let Some(old) = old {
            self.record_writer.remove(flat);
            if let Some(set) = self.by_writer.get_mut(&old) {
                set.remove(&(EntryKind::Record, flat.to_owned()));
                if set.is_empty() {
                    self.by_writer.remove(&old);
                }
            }
        }
        if let Some(w) = presence_writer {
            self.record_writer.insert(flat.to_owned(), w);
            self.by_writer
                .entry(w)
                .or_default()
                .insert((EntryKind::Record, flat.to_owned()));
        }
    }

    /// Files counter `name`'s presence-scoped entry of `writer` (counter entries are never
    /// deleted).
    fn add_counter(&mut self, name: &str, writer: PeerId) {
        self.by_writer
            .entry(writer)
            .or_default()
            .insert((EntryKind::Counter, name.to_owned()));
    }
}

/// A counter entry's flat key, split: `(name, writer, scope)`.
fn split_counter_key(flat: &str) -> Option<(&str, &str, &str)> {
    let mut parts = flat.split(SEP);
    let parsed = (parts.next()?, parts.next()?, parts.next()?);
    parts.next().is_none().then_some(parsed)
}

/// A handle to make several writes in one atomic change (see [`Replica::transact`]).
pub struct Tx<'a> {
    tx: Transaction<'a>,
    layout: &'a Layout,
    me: PeerId,
}

impl Tx<'_> {
    /// Writes record `key` of `channel`.
    pub fn put<T: Reconcile>(
        &mut self,
        channel: &str,
        key: &str,
        value: &T,
        scope: Scope,
    ) -> Result<(), WriteError> {
        let flat = record_key(channel, key).map_err(WriteError::InvalidName)?;
        let (rec, existed) = match self.tx.get(&self.layout.records, flat.as_str())? {
            Some((automerge::Value::Object(ObjType::Map), id)) => (id, true),
            _ => (
                self.tx
                    .put_object(&self.layout.records, flat.as_str(), ObjType::Map)?,
                false,
            ),
        };
        let ops = self.tx.pending_ops();
        autosurgeon::reconcile_prop(&mut self.tx, &rec, "v", value)?;
        let presence = scope == Scope::Presence;
        if existed
            && !presence
            && self.tx.pending_ops() == ops
            && self.tx.get(&rec, "p")?.and_then(|(v, _)| v.as_bool()) == Some(false)
        {
            // The value stored, durable as stored: not a change, whoever writes it. The record
            // keeps its writer (only a presence-scoped record depends on who wrote it).
            return Ok(());
        }
        let me = self.me.to_string();
        if self
            .tx
            .get(&rec, "w")?
            .and_then(|(v, _)| v.into_string().ok())
            .as_deref()
            != Some(me.as_str())
        {
            self.tx.put(&rec, "w", me)?;
        }
        if self.tx.get(&rec, "p")?.and_then(|(v, _)| v.as_bool()) != Some(presence) {
            self.tx.put(&rec, "p", presence)?;
        }
        Ok(())
    }

    /// Deletes record `key` of `channel` (whoever wrote it).
    pub fn delete(&mut self, channel: &str, key: &str) -> Result<(), WriteError> {
        let flat = record_key(channel, key).map_err(WriteError::InvalidName)?;
        if self.tx.get(&self.layout.records, flat.as_str())?.is_some() {
            self.tx.delete(&self.layout.records, flat.as_str())?;
        }
        Ok(())
    }

    /// Adds `by` to counter `name` (this writer's entry of the given scope).
    pub fn add(&mut self, name: &str, by: i64, scope: Scope) -> Result<(), WriteError> {
        check_name(name).map_err(WriteError::InvalidName)?;
        if by == 0 {
            return Ok(());
        }
        let key = counter_key(name, self.me, scope);
        let share = match self.tx.get(&self.layout.counters, key.as_str())? {
            Some((automerge::Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Counter(c) => Some(i64::from(c)),
                _ => None,
            },
            _ => None,
        };
        match share {
            // Refused rather than wrapped: Automerge's counters wrap silently.
            Some(share) if share.checked_add(by).is_none() => {
                return Err(WriteError::CounterOverflow {
                    name: name.to_owned(),
                    share,
                    by,
                });
            }
            Some(_) => self.tx.increment(&self.layout.counters, key.as_str(), by)?,
            None => self.tx.put(
                &self.layout.counters,
                key.as_str(),
                ScalarValue::counter(by),
            )?,
        }
        Ok(())
    }
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
        }
    }

    /// The underlying document (read-only).
    pub fn doc(&self) -> &Automerge {
        &self.doc
    }

    /// The current heads.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Makes several writes as one atomic change. Returns the change's hash, or `None` when the
    /// writes changed nothing (writing a value equal to the stored one is not a change). On an
    /// error nothing is written.
    pub fn transact<R>(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, WriteError>,
    ) -> Result<(R, Option<ChangeHash>), WriteError> {
        let mut tx = Tx {
            tx: self.doc.transaction(),
            layout: &self.layout,
            me: self.me,
        };
        match f(&mut tx) {
            Ok(r) => {
                let (hash, _) = tx.tx.commit_with(CommitOptions::default().with_time(0));
                Ok((r, hash))
            }
            Err(e) => {
                tx.tx.rollback();
                Err(e)
            }
        }
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
    pub fn get<T: Hydrate>(
        &self,
        channel: &str,
        key: &str,
        is_live: impl Fn(&PeerId) -> bool,
    ) -> Result<Option<T>, ReadError> {
        let flat = record_key(channel, key).map_err(ReadError::InvalidName)?;
        let Some(rec) = self.record_obj(&flat) else {
            return Ok(None);
        };
        if !self.visible(&rec, &is_live) {
            return Ok(None);
        }
        Ok(Some(autosurgeon::hydrate_prop(&self.doc, &rec, "v")?))
    }

    /// The writer of record `key` of `channel`.
    pub fn writer(&self, channel: &str, key: &str) -> Option<PeerId> {
        let flat = record_key(channel, key).ok()?;
        let rec = self.record_obj(&flat)?;
        self.writer_of(&rec)
    }

    /// The visible keys of `channel`, in order.
    pub fn keys(&self, channel: &str, is_live: impl Fn(&PeerId) -> bool) -> Vec<String> {
        let prefix = format!("{channel}{SEP}");
        self.doc
            .map_range(&self.layout.records, prefix.clone()..)
            .take_while(|item| item.key.starts_with(&prefix))
            .filter_map(|item| {
                let key = item.key[prefix.len()..].to_owned();
                let rec = self.record_obj(&item.key)?;
                self.visible(&rec, &is_live).then_some(key)
            })
            .collect()
    }

    /// The names of channels holding at least one record, in order.
    pub fn channels(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .doc
            .map_range(&self.layout.records, ..)
            .filter_map(|item| item.key.split_once(SEP).map(|(c, _)| c.to_owned()))
            .collect();
        set.into_iter().collect()
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

    /// The entries touched by the changes the document gained since the heads `before`, in
    /// the order the changes touched them; updates the presence index to match.
    ///
    /// This reads the new changes' operations (it costs what they hold, not what the document
    /// holds). An entry is reported when any of its operations is new, also one that lost a
    /// concurrent conflict or was overwritten since: readers re-read the entry.
    pub fn touched_since(&mut self, before: &[ChangeHash]) -> Vec<EntryChange> {
        let touched = touched_keys(&self.doc, &self.layout, before);
        self.report_touched(touched)
    }

    /// The entry changes of touched keys (from [`touched_keys`]); updates the presence index.
    fn report_touched(&mut self, (records, counters): Touched) -> Vec<EntryChange> {
        let mut out = Vec::with_capacity(records.len() + counters.len());
        for flat in records {
            let Some((c, k)) = flat.split_once(SEP) else {
                continue;
            };
            let rec = self.record_obj(&flat);
            let by = rec.as_ref().and_then(|r| self.writer_of(r));
            let presence_writer = rec.filter(|r| self.is_presence(r)).and(by);
            self.presence.set_record(&flat, presence_writer);
            out.push(EntryChange {
                kind: EntryKind::Record,
                channel: c.into(),
                key: k.into(),
                by,
            });
        }
        // A writer's durable and presence-scoped entries of one counter are one change.
        let mut counted: HashSet<(&str, Option<PeerId>)> = HashSet::new();
        for flat in &counters {
            let Some((name, writer, scope)) = split_counter_key(flat) else {
                continue;
            };
            let by: Option<PeerId> = writer.parse().ok();
            if let (Some(w), "p") = (by, scope) {
                self.presence.add_counter(name, w);
            }
            if counted.insert((name, by)) {
                out.push(EntryChange {
                    kind: EntryKind::Counter,
                    channel: String::new(),
                    key: name.into(),
                    by,
                });
            }
        }
        out
    }

    /// Rebuilds the presence index from the whole document (after a load).
    fn reindex_presence(&mut self) {
        let mut index = PresenceIndex::default();
        for item in self.doc.map_range(&self.layout.records, ..) {
            if let Some(rec) = self.record_obj(&item.key)
                && self.is_presence(&rec)
                && let Some(w) = self.writer_of(&rec)
            {
                index.set_record(&item.key, Some(w));
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

    /// A new sync state for a peer.
    pub fn new_sync_state() -> automerge::sync::State {
        automerge::sync::State::new()
    }

    /// The next sync message for the peer behind `state`, encoded, if any.
    ///
    /// The state holds what the peer said (its heads, needs, bloom filters), and the CRDT
    /// library may panic on some of it when building the reply. Such a panic is contained: the
    /// state is replaced by a fresh one (the exchange starts over) and nothing is sent.
    pub fn generate_sync(&self, state: &mut automerge::sync::State) -> Option<Vec<u8>> {
        self.generate_sync_counted(state).map(|(bytes, _)| bytes)
    }

    /// [`generate_sync`](Self::generate_sync), and whether the message carries changes.
    pub fn generate_sync_counted(
        &self,
        state: &mut automerge::sync::State,
    ) -> Option<(Vec<u8>, bool)> {
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
    /// A message that carries changes is applied to a copy of the document under
    /// `catch_unwind`; the copy replaces the document only if all went well, so a malformed
    /// message (even one that makes the CRDT library panic) leaves the document exactly as it
    /// was. Returns the heads before the message.
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
    /// the job holds a copy of the document and of the peer's sync state (cheap in Automerge
    /// 0.12: 0.5 ms at 10,000 records) and is run anywhere, then given back to
    /// [`finish_sync`](Self::finish_sync).
    pub fn start_sync(
        &self,
        state: &automerge::sync::State,
        message: automerge::sync::Message,
    ) -> SyncApply {
        SyncApply {
            base: self.doc.get_heads(),
            layout: self.layout.clone(),
            touched: (Vec::new(), Vec::new()),
            doc: self.doc.clone(),
            state: state.clone(),
            message: Some(message),
            outcome: None,
            catch_up: Vec::new(),
            rounds: 0,
        }
    }

    /// Takes back a job of [`start_sync`](Self::start_sync) that ran: its copy of the document
    /// becomes the document, once the local changes made here meanwhile are applied to it. A
    /// few are applied at once; more (a writer kept writing while the job ran) go back to the
    /// job, to be applied off the node too, and the job is offered again
    /// ([`SyncFinish::Again`]; after [`CATCH_UP_ROUNDS`] rounds the rest is applied here).
    /// A job that failed (or did not run) changes nothing.
    pub fn finish_sync(&mut self, mut job: SyncApply) -> Result<SyncFinish, ApplyError> {
        job.outcome.take().unwrap_or(Err(ApplyError::Panicked))?;
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
        self.doc = job.doc;
        let changes = self.report_touched(job.touched);
        Ok(SyncFinish::Done(Box::new(SyncApplied {
            before,
            state: job.state,
            changes,
        })))
    }

    /// Applies a decoded sync message (see [`receive_sync`](Self::receive_sync)).
    pub fn receive_decoded(
        &mut self,
        state: &mut automerge::sync::State,
        message: automerge::sync::Message,
    ) -> Result<Vec<ChangeHash>, ApplyError> {
        let before = self.doc.get_heads();
        let mut doc = if message.changes.is_empty() {
            None
        } else {
            Some(self.doc.clone())
        };
        let mut new_state = state.clone();
        let checked = doc.is_some();
        let target = doc.as_mut().unwrap_or(&mut self.doc);
        let result = catch_unwind(AssertUnwindSafe(|| {
            target.receive_sync_message(&mut new_state, message)?;
            if checked {
                check_new_changes(target, &before, None)?;
            }
            Ok(())
        }));
        match result {
            Ok(Ok(())) => {
                if let Some(doc) = doc {
                    self.doc = doc;
                }
                *state = new_state;
                Ok(before)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ApplyError::Panicked),
        }
    }

    /// Which of `hashes` (changes of this document) the peer behind `state` is known to hold:
    /// those among, or ancestors of, the heads it last advertised (or of the heads both are
    /// known to share).
    pub fn held_by(&self, state: &automerge::sync::State, hashes: &[ChangeHash]) -> Vec<bool> {
        let known = |heads: &[ChangeHash]| {
            !heads.is_empty()
                && heads
                    .iter()
                    .all(|h| self.doc.get_change_meta_by_hash(h).is_some())
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

    /// An incremental save of the changes after `heads`.
    pub fn save_after(&self, heads: &[ChangeHash]) -> Vec<u8> {
        self.doc.save_after(heads)
    }

    /// A full, compacted save.
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    /// Merges stored bytes (a snapshot, possibly followed by incremental saves) into the
    /// document, under the same containment as sync messages.
    ///
    /// A damaged file is salvaged: every chunk that can still be read is merged, and the report
    /// says the file was incomplete so the caller can move it aside. Bytes with nothing readable
    /// are refused and change nothing.
    pub fn load_stored(&mut self, bytes: &[u8]) -> Result<LoadReport, ApplyError> {
        use automerge::{LoadOptions, OnPartialLoad, VerificationMode};
        // Every Automerge chunk (document or change) starts with this magic number.
        const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
        if !bytes.starts_with(&MAGIC) {
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
            check_new_changes(&doc, &before, None)
        }));
        match loaded {
            Ok(Ok(())) => {
                let changed = doc.get_heads() != before;
                self.doc = doc;
                if changed {
                    self.reindex_presence();
                }
                Ok(LoadReport { complete, changed })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ApplyError::Panicked),
        }
    }

    fn record_obj(&self, flat: &str) -> Option<ObjId> {
        match self.doc.get(&self.layout.records, flat).ok()? {
            Some((automerge::Value::Object(ObjType::Map), id)) => Some(id),
            _ => None,
        }
    }

    fn writer_of(&self, rec: &ObjId) -> Option<PeerId> {
        let (v, _) = self.doc.get(rec, "w").ok()??;
        v.into_string().ok()?.parse().ok()
    }

    fn is_presence(&self, rec: &ObjId) -> bool {
        self.doc
            .get(rec, "p")
            .ok()
            .flatten()
            .and_then(|(v, _)| v.as_bool())
            == Some(true)
    }

    fn visible(&self, rec: &ObjId, is_live: &impl Fn(&PeerId) -> bool) -> bool {
        !self.is_presence(rec) || self.writer_of(rec).is_some_and(|w| is_live(&w))
    }
}

/// Flat keys of records and counters touched by the changes `doc` gained since the heads
/// `before` (in the order the changes touched them): the part of a change notification that
/// reads the changes' operations, run wherever the document is (a sync job's copy, off the
/// node).
fn touched_keys(doc: &Automerge, layout: &Layout, before: &[ChangeHash]) -> Touched {
    let mut touched = TouchedKeys::new(layout);
    for change in doc.get_changes(before) {
        for op in change.decode().operations {
            touched.add(doc, &op);
        }
    }
    touched.finish()
}

/// Collects the record and counter keys that operations touch, one operation at a time, so
/// that a pass over new changes that reads their operations for another reason (the checks of
/// [`check_new_changes`]) collects them too, without rebuilding and decoding the changes again.
struct TouchedKeys<'a> {
    layout: &'a Layout,
    records: Vec<String>,
    counters: Vec<String>,
    seen: HashSet<(EntryKind, String)>,
    /// The record each object (a record, or a value nested in one) lives under.
    record_of: HashMap<ObjId, Option<String>>,
}

impl<'a> TouchedKeys<'a> {
    fn new(layout: &'a Layout) -> Self {
        Self {
            layout,
            records: Vec::new(),
            counters: Vec::new(),
            seen: HashSet::new(),
            record_of: HashMap::new(),
        }
    }

    /// Notes the entry `op` (an operation of `doc`) touches, if any.
    fn add(&mut self, doc: &Automerge, op: &automerge::legacy::Op) {
        let automerge::legacy::ObjectId::Id(id) = &op.obj else {
            return;
        };
        let layout = self.layout;
        let obj = ObjId::Id(id.counter(), id.actor().clone(), usize::MAX);
        let entry = if obj == layout.records || obj == layout.counters {
            let automerge::legacy::Key::Map(key) = &op.key else {
                return;
            };
            let kind = if obj == layout.records {
                EntryKind::Record
            } else {
                EntryKind::Counter
            };
            (kind, key.to_string())
        } else {
            let flat = self
                .record_of
                .entry(obj)
                .or_insert_with_key(|obj| record_holding(doc, layout, obj));
            match flat {
                Some(flat) => (EntryKind::Record, flat.clone()),
                None => return,
            }
        };
        if self.seen.insert(entry.clone()) {
            match entry.0 {
                EntryKind::Record => self.records.push(entry.1),
                _ => self.counters.push(entry.1),
            }
        }
    }

    fn finish(self) -> Touched {
        (self.records, self.counters)
    }
}

/// Touched record and counter keys: see [`touched_keys`].
type Touched = (Vec<String>, Vec<String>);

/// The flat key of the record `obj` is, or lives in (at any depth).
fn record_holding(doc: &Automerge, layout: &Layout, obj: &ObjId) -> Option<String> {
    for parent in doc.parents(obj).ok()? {
        if parent.obj == layout.records {
            return match parent.prop {
                automerge::Prop::Map(flat) => Some(flat),
                automerge::Prop::Seq(_) => None,
            };
        }
    }
    None
}

/// Local changes made while a sync job ran that [`Replica::finish_sync`] applies to the job's
/// copy at once, under the node's lock; more go back to the job.
pub const CATCH_UP_AT_ONCE: usize = 4;

/// How many times a sync job goes back to catch up with local changes before the rest is
/// applied under the node's lock (a writer faster than the apply would otherwise keep it out).
pub const CATCH_UP_ROUNDS: u32 = 3;

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
    /// The peer's new sync state.
    pub state: automerge::sync::State,
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
    state: automerge::sync::State,
    message: Option<automerge::sync::Message>,
    outcome: Option<Result<(), ApplyError>>,
    /// Local changes to apply to the copy (see [`Replica::finish_sync`]).
    catch_up: Vec<automerge::Change>,
    rounds: u32,
}

impl SyncApply {
    /// Applies the message to the copy, under `catch_unwind` (a message that makes the CRDT
    /// library panic fails the job and leaves the replica as it was). Runs once.
    pub fn run(&mut self) {
        let Some(message) = self.message.take() else {
            if !self.catch_up.is_empty() {
                let changes = std::mem::take(&mut self.catch_up);
                let doc = &mut self.doc;
                let result = catch_unwind(AssertUnwindSafe(|| doc.apply_changes(changes)));
                self.outcome = Some(match result {
                    Ok(r) => r.map_err(ApplyError::from),
                    Err(_) => Err(ApplyError::Panicked),
                });
            }
            return;
        };
        let (doc, state, base) = (&mut self.doc, &mut self.state, &self.base);
        let (layout, touched) = (&self.layout, &mut self.touched);
        let result = catch_unwind(AssertUnwindSafe(|| {
            doc.receive_sync_message(state, message)?;
            // The checks read every new operation; the change notifications' reading of them
            // rides along (one rebuild and one decode per received change).
            let mut keys = TouchedKeys::new(layout);
            check_new_changes(doc, base, Some(&mut keys))?;
            *touched = keys.finish();
            Ok(())
        }));
        self.outcome = Some(result.unwrap_or(Err(ApplyError::Panicked)));
    }
}

/// Checks the changes `doc` gained since the heads `before`, which Automerge accepted:
///
/// - each must descend from the genesis change, like every change a peer makes (Automerge
///   saves some changes without dependencies as a document it refuses to load);
/// - each must number its operations right after those of the changes it depends on, as
///   Automerge does for every change made on a document's current heads, which is how
///   statemesh makes all of them (otherwise Automerge may save a document it refuses to load);
/// - Automerge must rebuild each from the document as it was received (otherwise it fails, or
///   panics, whenever it sends or saves them: operations that make no sense, like an insertion
///   into a map, are accepted but not kept as they came);
/// - each operation must be one statemesh could have made (see [`check_operation`]).
///
/// Without this, one such message would break every peer it reached, and their state files.
/// Call it under `catch_unwind`: rebuilding a change may panic. With `touched`, the entries the
/// new operations touch are collected in the same pass.
fn check_new_changes(
    doc: &Automerge,
    before: &[ChangeHash],
    mut touched: Option<&mut TouchedKeys<'_>>,
) -> Result<(), ApplyError> {
    let new = doc.get_changes_meta(before);
    for change in &new {
        if change.deps.is_empty() {
            return Err(ApplyError::Invalid(
                "a change that does not descend from the shared genesis change",
            ));
        }
        let mut deps_max_op = 0;
        for dep in &change.deps {
            let dep = doc
                .get_change_meta_by_hash(dep)
                .ok_or(ApplyError::Invalid("a change depends on a missing change"))?;
            deps_max_op = deps_max_op.max(dep.max_op);
        }
        if deps_max_op.checked_add(1) != Some(change.start_op) {
            return Err(ApplyError::Invalid(
                "a change whose operations are not numbered right after those of the changes \
                 it depends on",
            ));
        }
    }
    let received: BTreeSet<ChangeHash> = new.iter().map(|c| c.hash).collect();
    let rebuilt = doc.get_changes(before);
    if rebuilt.iter().map(|c| c.hash()).collect::<BTreeSet<_>>() != received {
        return Err(ApplyError::Invalid(
            "a change the CRDT library cannot reproduce as it came",
        ));
    }
    for change in &rebuilt {
        for op in change.decode().operations {
            check_operation(doc, &op)?;
            if let Some(touched) = touched.as_deref_mut() {
                touched.add(doc, &op);
            }
        }
    }
    Ok(())
}

/// Checks that an operation received from a peer is one statemesh (through autosurgeon) could
/// have made: on an existing object, with a key of the kind its object takes (a name in a map,
/// an element in a list or text, inserting only into a sequence), no text marks, no value of
/// unknown type. Automerge accepts some such operations and then fails to save, send or load
/// the document holding them.
fn check_operation(doc: &Automerge, op: &automerge::legacy::Op) -> Result<(), ApplyError> {
    use automerge::legacy::{ElementId, Key, ObjectId, OpType};
    let obj_type = match &op.obj {
        ObjectId::Root => ObjType::Map,
        ObjectId::Id(id) => {
            // The actor index is looked up from the actor id when it does not match.
            let id = ObjId::Id(id.counter(), id.actor().clone(), usize::MAX);
            doc.object_type(&id)
                .map_err(|_| ApplyError::Invalid("an operation on an object that does not exist"))?
        }
    };
    let key_fits = match (obj_type, &op.key) {
        (ObjType::Map | ObjType::Table, Key::Map(_)) => !op.insert,
        (ObjType::List | ObjType::Text, Key::Seq(elem)) => op.insert || *elem != ElementId::Head,
        _ => false,
    };
    if !key_fits {
        return Err(ApplyError::Invalid(
            "an operation whose key does not fit its object",
        ));
    }
    match &op.action {
        OpType::MarkBegin(_) | OpType::MarkEnd(_) => Err(ApplyError::Invalid(
            "a text mark, which statemesh never makes",
        )),
        OpType::Put(ScalarValue::Unknown { .. }) => {
            Err(ApplyError::Invalid("a value of unknown type"))
        }
        OpType::Delete | OpType::Increment(_) if op.insert => {
            Err(ApplyError::Invalid("an insertion that inserts nothing"))
        }
        _ => Ok(()),
    }
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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    /// A nested value, so that writes also touch objects inside a record.
    #[derive(Debug, Clone, PartialEq, Reconcile, Hydrate)]
    struct Job {
        state: String,
        tags: Vec<String>,
    }

    fn replica(n: u8) -> Replica {
        let mut rng = ChaCha8Rng::seed_from_u64(u64::from(n));
        Replica::new(PeerId::generate(1_000 + u64::from(n), &mut rng), [n; 16])
    }

    /// Runs the sync exchange between two replicas until neither has anything to send.
    fn sync(a: &mut Replica, b: &mut Replica) {
        let (mut sa, mut sb) = (Replica::new_sync_state(), Replica::new_sync_state());
        for _ in 0..20 {
            let to_b = a.generate_sync(&mut sa);
            let to_a = b.generate_sync(&mut sb);
            if to_b.is_none() && to_a.is_none() {
                return;
            }
            if let Some(msg) = to_b {
                b.receive_sync(&mut sb, &msg).expect("a valid message");
            }
            if let Some(msg) = to_a {
                a.receive_sync(&mut sa, &msg).expect("a valid message");
            }
        }
        panic!("the replicas kept talking");
    }

    /// Issue 14: the same value written by another window was a change (its writer was
    /// rewritten) though the docs say it is not. It is not, for durable records; a
    /// presence-scoped one changes hands (its writer's death decides whether it is seen).
    #[test]
    fn the_same_durable_value_from_another_writer_is_not_a_change() {
        let (mut a, mut b) = (replica(1), replica(2));
        let put = |r: &mut Replica, v: &str, scope| {
            r.transact(|tx| tx.put("c", "k", &v.to_owned(), scope))
                .expect("write")
                .1
        };
        assert!(put(&mut a, "v", Scope::Durable).is_some());
        sync(&mut a, &mut b);
        assert_eq!(
            put(&mut b, "v", Scope::Durable),
            None,
            "same value, other writer"
        );
        assert!(put(&mut b, "w", Scope::Durable).is_some(), "another value");
        assert!(put(&mut b, "w", Scope::Presence).is_some(), "another scope");
        assert_eq!(
            put(&mut b, "w", Scope::Presence),
            None,
            "same value, same writer"
        );
        sync(&mut a, &mut b);
        assert!(
            put(&mut a, "w", Scope::Presence).is_some(),
            "presence changes hands"
        );
    }

    /// Issue 14: `add` of `i64::MAX` then 1 read `i64::MIN` (Automerge's counter wrapped).
    #[test]
    fn counters_refuse_to_wrap_and_merged_sums_saturate() {
        let (mut a, mut b) = (replica(1), replica(2));
        let add = |r: &mut Replica, by: i64| r.transact(|tx| tx.add("n", by, Scope::Durable));
        add(&mut a, i64::MAX).expect("fits");
        let e = add(&mut a, 1).expect_err("would wrap");
        assert!(
            matches!(e, WriteError::CounterOverflow { ref name, share: i64::MAX, by: 1 } if name == "n"),
            "{e}"
        );
        assert_eq!(a.counter("n", |_| true), i64::MAX, "nothing was written");
        // Within one transaction too: the second addition sees the first.
        let e = a
            .transact(|tx| {
                tx.add("m", i64::MIN, Scope::Durable)?;
                tx.add("m", -1, Scope::Durable)
            })
            .expect_err("would wrap");
        assert!(matches!(e, WriteError::CounterOverflow { .. }), "{e}");
        assert_eq!(a.counter("m", |_| true), 0, "the transaction was dropped");
        // Two writers whose shares add up beyond the range: reads saturate, on both sides.
        add(&mut b, 5).expect("fits");
        sync(&mut a, &mut b);
        assert_eq!(a.counter("n", |_| true), i64::MAX);
        assert_eq!(b.counter("n", |_| true), i64::MAX);
        add(&mut b, -10).expect("fits");
        sync(&mut a, &mut b);
        assert_eq!(
            a.counter("n", |_| true),
            i64::MAX - 5,
            "exact once within range"
        );
        add(&mut a, i64::MIN).expect("fits: -1 share");
        let mut c = replica(3);
        add(&mut c, i64::MIN).expect("fits");
        sync(&mut a, &mut c);
        assert_eq!(c.counter("n", |_| true), i64::MIN, "saturates low");
    }

    /// What the presence index must say, found the slow way: a scan of the document.
    fn scanned_presence_entries(r: &Replica, writer: PeerId) -> BTreeSet<(EntryKind, String)> {
        let mut out = BTreeSet::new();
        for item in r.doc.map_range(&r.layout.records, ..) {
            if let Some(rec) = r.record_obj(&item.key)
                && r.is_presence(&rec)
                && r.writer_of(&rec) == Some(writer)
            {
                out.insert((EntryKind::Record, item.key.to_string()));
            }
        }
        for item in r.doc.map_range(&r.layout.counters, ..) {
            if let Some((name, w, "p")) = split_counter_key(&item.key)
                && w == writer.to_string()
            {
                out.insert((EntryKind::Counter, name.to_owned()));
            }
        }
        out
    }

    fn indexed(r: &Replica, writer: PeerId) -> BTreeSet<(EntryKind, String)> {
        r.presence_entries_of(writer)
            .into_iter()
            .map(|e| match e.kind {
                EntryKind::Record => (e.kind, format!("{}{SEP}{}", e.channel, e.key)),
                _ => (e.kind, e.key),
            })
            .collect()
    }

    /// Entries whose visible state differs between two sets of heads, by Automerge's diff of
    /// the whole document (what change notifications must cover).
    fn diffed(r: &Replica, before: &[ChangeHash]) -> BTreeSet<(EntryKind, String)> {
        let mut out = BTreeSet::new();
        for patch in r.doc.diff(before, &r.heads()) {
            let (obj, prop) = if patch.path.len() >= 2 {
                (patch.path[1].0.clone(), patch.path[1].1.to_string())
            } else {
                let prop = match &patch.action {
                    automerge::PatchAction::PutMap { key, .. }
                    | automerge::PatchAction::DeleteMap { key } => key.clone(),
                    automerge::PatchAction::Increment { prop, .. }
                    | automerge::PatchAction::Conflict { prop } => prop.to_string(),
                    _ => continue,
                };
                (patch.obj.clone(), prop)
            };
            if obj == r.layout.records {
                out.insert((EntryKind::Record, prop));
            } else if obj == r.layout.counters
                && let Some((name, _, _)) = split_counter_key(&prop)
            {
                out.insert((EntryKind::Counter, name.to_owned()));
            }
        }
        out
    }

    fn reported(changes: &[EntryChange]) -> BTreeSet<(EntryKind, String)> {
        changes
            .iter()
            .map(|e| match e.kind {
                EntryKind::Record => (e.kind, format!("{}{SEP}{}", e.channel, e.key)),
                _ => (e.kind, e.key.clone()),
            })
            .collect()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put {
            who: usize,
            key: u8,
            presence: bool,
        },
        PutJob {
            who: usize,
            key: u8,
            tag: u8,
        },
        Delete {
            who: usize,
            key: u8,
        },
        Add {
            who: usize,
            name: u8,
            presence: bool,
        },
        Sync {
            a: usize,
            b: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, 0..6u8, any::<bool>()).prop_map(|(who, key, presence)| Op::Put {
                who,
                key,
                presence
            }),
            (0..3usize, 0..6u8, 0..4u8).prop_map(|(who, key, tag)| Op::PutJob { who, key, tag }),
            (0..3usize, 0..6u8).prop_map(|(who, key)| Op::Delete { who, key }),
            (0..3usize, 0..3u8, any::<bool>()).prop_map(|(who, name, presence)| Op::Add {
                who,
                name,
                presence
            }),
            (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Sync { a, b }),
        ]
    }

    fn scope(presence: bool) -> Scope {
        if presence {
            Scope::Presence
        } else {
            Scope::Durable
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// After any mix of local writes and syncs: every entry Automerge's whole-document diff
        /// shows as changed is reported by `touched_since`, and the presence index of every
        /// replica equals a scan of its document.
        #[test]
        fn touched_entries_and_presence_index_follow_the_document(ops in proptest::collection::vec(op(), 1..40)) {
            let mut rs = [replica(1), replica(2), replica(3)];
            let writers: Vec<PeerId> = rs.iter().map(|r| r.me).collect();
            for op in ops {
                let check = |r: &mut Replica, before: Vec<ChangeHash>| {
                    let expected = diffed(r, &before);
                    let got = reported(&r.touched_since(&before));
                    prop_assert!(got.is_superset(&expected), "diff {expected:?}, touched {got:?}");
                    Ok(())
                };
                match op {
                    Op::Put { who, key, presence } => {
                        let before = rs[who].heads();
                        rs[who].transact(|tx| tx.put("c", &format!("k{key}"), &u64::from(key), scope(presence))).expect("put");
                        check(&mut rs[who], before)?;
                    }
                    Op::PutJob { who, key, tag } => {
                        let before = rs[who].heads();
                        let job = Job { state: format!("s{tag}"), tags: (0..tag).map(|t| t.to_string()).collect() };
                        rs[who].transact(|tx| tx.put("jobs", &format!("k{key}"), &job, Scope::Presence)).expect("put");
                        check(&mut rs[who], before)?;
                    }
                    Op::Delete { who, key } => {
                        let before = rs[who].heads();
                        rs[who].transact(|tx| tx.delete("c", &format!("k{key}"))).expect("delete");
                        check(&mut rs[who], before)?;
                    }
                    Op::Add { who, name, presence } => {
                        let before = rs[who].heads();
                        rs[who].transact(|tx| tx.add(&format!("n{name}"), 1, scope(presence))).expect("add");
                        check(&mut rs[who], before)?;
                    }
                    Op::Sync { a, b } if a != b => {
                        let (lo, hi) = (a.min(b), a.max(b));
                        let (left, right) = rs.split_at_mut(hi);
                        let (ra, rb) = (&mut left[lo], &mut right[0]);
                        let (before_a, before_b) = (ra.heads(), rb.heads());
                        sync(ra, rb);
                        check(ra, before_a)?;
                        check(rb, before_b)?;
                    }
                    Op::Sync { .. } => {}
                }
                for r in &rs {
                    for w in &writers {
                        prop_assert_eq!(indexed(r, *w), scanned_presence_entries(r, *w));
                    }
                }
            }
        }
    }

    #[test]
    fn a_load_rebuilds_the_presence_index() {
        let mut a = replica(1);
        a.transact(|tx| {
            tx.put("c", "k", &1u64, Scope::Presence)?;
            tx.add("n", 2, Scope::Presence)
        })
        .expect("writes");
        let mut b = replica(2);
        let report = b.load_stored(&a.save()).expect("loads");
        assert!(report.changed);
        let expected: BTreeSet<_> = [
            (EntryKind::Record, format!("c{SEP}k")),
            (EntryKind::Counter, "n".to_owned()),
        ]
        .into();
        assert_eq!(indexed(&b, a.me), expected);
    }

    #[test]
    fn a_write_inside_a_nested_value_is_reported_as_its_record() {
        let mut a = replica(1);
        let job = Job {
            state: "run".into(),
            tags: vec!["x".into()],
        };
        a.transact(|tx| tx.put("jobs", "j", &job, Scope::Durable))
            .expect("put");
        let before = a.heads();
        let job = Job {
            state: "run".into(),
            tags: vec!["x".into(), "y".into()],
        };
        a.transact(|tx| tx.put("jobs", "j", &job, Scope::Durable))
            .expect("put");
        let touched = a.touched_since(&before);
        assert_eq!(
            touched,
            vec![EntryChange {
                kind: EntryKind::Record,
                channel: "jobs".into(),
                key: "j".into(),
                by: Some(a.me),
            }]
        );
    }
}
