//! Change notifications: the entries (records, counters) that new changes touched, read from
//! the changes' operations, and the presence index kept up to date with them.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use automerge::{ActorId, Automerge, ChangeHash, ObjId, ObjType, ReadDoc};
use smallvec::SmallVec;

use super::layout::channel_obj;
use super::{EntryChange, EntryKind, Layout, Replica, SEP, split_counter_key};
use crate::PeerId;

impl Replica {
    /// The entries touched by the changes the document gained since the heads `before`, in
    /// the order the changes touched them; updates the presence index to match.
    ///
    /// This reads the new changes' operations (it costs what they hold, not what the document
    /// holds). An entry is reported when any of its operations is new, also one that lost a
    /// concurrent conflict or was overwritten since: readers re-read the entry.
    pub fn touched_since(&mut self, before: &[ChangeHash]) -> Vec<EntryChange> {
        self.commit_open();
        let known = std::mem::take(&mut self.written);
        if let Some((heads, touched)) = self.received.take()
            && heads == before
        {
            // Found while the received message was checked.
            return self.report_touched(touched, None);
        }
        if let Some((heads, hash, noted)) = self.local.take()
            && heads == before
            && self.doc.get_heads() == [hash]
        {
            // One local transaction since `before`: its writes noted what they changed. The
            // standby is left behind: the next receive catches it up (see `standby`).
            return self.report_local(noted);
        }
        let changes = self.doc.get_changes(before);
        let touched = touched_keys(&self.doc, &self.layout, &changes, known);
        // Local changes: the standby takes them from here, without reading them again.
        self.mirror_local(before, &changes);
        self.report_touched(touched, None)
    }

    /// The entry changes of touched keys (from [`touched_keys`]); updates the presence index.
    /// `read`: what a sync job read of each record on its copy of the document (see
    /// [`read_records`]), and the records written here since (read again); without it,
    /// every record is read here.
    pub(super) fn report_touched(
        &mut self,
        (records, counters): Touched,
        read: Option<(Vec<RecordRead>, HashSet<String>)>,
    ) -> Vec<EntryChange> {
        let (reads, stale) = match read {
            Some((reads, stale)) if reads.len() == records.len() => (reads, Some(stale)),
            _ => (
                read_records(&self.doc, &self.layout, &records, &MadeRecords::default()),
                None,
            ),
        };
        let mut out = Vec::with_capacity(records.len() + counters.len());
        for (flat, (mut by, mut presence)) in records.into_iter().zip(reads) {
            let Some((c, k)) = flat.split_once(SEP) else {
                continue;
            };
            if stale.as_ref().is_some_and(|s| s.contains(&flat)) {
                let one = std::slice::from_ref(&flat);
                (by, presence) =
                    read_records(&self.doc, &self.layout, one, &MadeRecords::default())
                        .pop()
                        .unwrap_or((None, false));
            }
            out.push(self.report_record(&flat, c, k, by, presence));
        }
        self.report_counters(&counters, &mut out);
        out
    }

    /// [`report_touched`](Self::report_touched) for the entries a local transaction noted as
    /// it wrote them: no read of the document.
    pub(super) fn report_local(&mut self, noted: super::tx::Noted) -> Vec<EntryChange> {
        let mut out = Vec::with_capacity(noted.records.len() + noted.counters.len());
        for (flat, state) in noted.records {
            let Some((c, k)) = flat.split_once(SEP) else {
                continue;
            };
            let by = state.map(|_| self.me);
            out.push(self.report_record(&flat, c, k, by, state == Some(true)));
        }
        self.report_counters(&noted.counters, &mut out);
        out
    }

    /// The change of record `flat` (channel `c`, key `k`), now written by `by` (`None`:
    /// deleted), presence-scoped or not; files it in the presence index.
    fn report_record(
        &mut self,
        flat: &str,
        c: &str,
        k: &str,
        by: Option<PeerId>,
        presence: bool,
    ) -> EntryChange {
        self.presence.set_record(flat, presence.then_some(by));
        EntryChange {
            kind: EntryKind::Record,
            channel: c.into(),
            key: k.into(),
            by,
        }
    }

    /// The entry changes of touched counter entries (flat keys); updates the presence index.
    fn report_counters<'a>(
        &mut self,
        counters: impl IntoIterator<Item = &'a String>,
        out: &mut Vec<EntryChange>,
    ) {
        // A writer's durable and presence-scoped entries of one counter are one change.
        let mut counted: HashSet<(&str, Option<PeerId>)> = HashSet::new();
        for flat in counters {
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
    }
}

/// Flat keys of records and counters touched by `changes`, changes of `doc` (in the order the
/// changes touched them): the part of a change notification that reads the changes'
/// operations.
fn touched_keys(
    doc: &Automerge,
    layout: &Layout,
    changes: &[automerge::Change],
    known: Vec<(ObjId, String)>,
) -> Touched {
    let mut touched = TouchedKeys::new(layout);
    // Channel maps named by the local transaction: no search of the records map for them.
    for (obj, channel) in known {
        touched.place_of.insert(obj, Place::Channel(channel.into()));
    }
    touched.reserve(changes.iter().map(automerge::Change::len).sum());
    for change in changes {
        let (actor, start) = (change.actor_id().clone(), change.start_op().get());
        for (i, op) in change.decode().operations.into_iter().enumerate() {
            let id = ObjId::Id(start.saturating_add(i as u64), actor.clone(), usize::MAX);
            touched.add(doc, &op, &id);
        }
    }
    touched.finish()
}

/// Collects the record and counter keys that operations touch, one operation at a time, so
/// that a pass over new changes that reads their operations for another reason (the checks of
/// [`check_new_changes`](super::validate::check_new_changes)) collects them too, without
/// rebuilding and decoding the changes again.
pub(super) struct TouchedKeys<'a> {
    layout: &'a Layout,
    /// Touched records (flat keys), in the order first touched.
    records: Vec<Rc<str>>,
    counters: Vec<String>,
    /// Flat keys of the records in `records`.
    seen_records: HashSet<Rc<str>>,
    seen_counters: HashSet<String>,
    /// Where each object operations touched (or created) lives (see [`Place`]).
    place_of: HashMap<ObjId, Place>,
    /// Whether the channels' maps are in `place_of` yet (read from the records map, one entry
    /// per channel, the first time an object's place is not known).
    channels_read: bool,
    /// The replica's index of channel maps (object -> channel name), when given: an object
    /// found there needs no read of the records map.
    channels: Option<&'a HashMap<ObjId, String>>,
    /// Channel maps made by the operations seen (to add to the replica's index).
    made_channels: Vec<(ObjId, String)>,
    /// What the operations seen say of the records they made (see [`MadeRecords`]), when
    /// asked for ([`with_made_records`](Self::with_made_records)).
    made_records: Option<MadeRecords>,
}

impl<'a> TouchedKeys<'a> {
    pub(super) fn new(layout: &'a Layout) -> Self {
        Self {
            layout,
            records: Vec::new(),
            counters: Vec::new(),
            seen_records: HashSet::new(),
            seen_counters: HashSet::new(),
            place_of: HashMap::new(),
            channels_read: false,
            channels: None,
            made_channels: Vec::new(),
            made_records: None,
        }
    }

    /// Looks channel maps up in `channels` (the replica's index) before reading the records
    /// map, which costs one entry per channel.
    pub(super) fn with_channels(mut self, channels: &'a HashMap<ObjId, String>) -> Self {
        self.channels = Some(channels);
        self
    }

    /// The channel maps made by the operations seen.
    pub(super) fn made_channels(&mut self) -> Vec<(ObjId, String)> {
        std::mem::take(&mut self.made_channels)
    }

    /// Follows what the operations seen say of the records they made (see [`MadeRecords`]),
    /// for a change report whose reads run right after the checks, on the same document.
    pub(super) fn with_made_records(mut self) -> Self {
        self.made_records = Some(MadeRecords::default());
        self
    }

    /// What the operations seen say of the records they made (empty unless asked for with
    /// [`with_made_records`](Self::with_made_records)).
    pub(super) fn made_records(&mut self) -> MadeRecords {
        self.made_records.take().unwrap_or_default()
    }

    /// Makes room for the entries of `ops` operations (a record takes several: its map and
    /// its fields), so that the maps do not grow one rehash at a time during a pass; at most
    /// [`RESERVED_RECORDS`] (a big change's operations may make no record at all).
    pub(super) fn reserve(&mut self, ops: usize) {
        let records = (ops / 4).min(RESERVED_RECORDS);
        self.place_of.reserve(records);
        self.seen_records.reserve(records);
        self.records.reserve(records);
        if let Some(made) = &mut self.made_records {
            made.records.reserve(records);
        }
    }

    /// Notes the entry `op` (an operation of `doc`, whose id is `id`) touches, if any.
    ///
    /// The place of an object made by an operation seen here is learnt from that operation,
    /// and a channel's map is found in the records map: Automerge 0.12's `parents` searches
    /// the whole document for an object's creating operation, so it is only asked about
    /// objects made by earlier changes (a record updated in place).
    pub(super) fn add(&mut self, doc: &Automerge, op: &automerge::legacy::Op, id: &ObjId) {
        let automerge::legacy::ObjectId::Id(parent) = &op.obj else {
            return;
        };
        let layout = self.layout;
        let obj = ObjId::Id(parent.counter(), parent.actor().clone(), usize::MAX);
        if let Some(made) = &mut self.made_records {
            made.add(&obj, op, id);
        }
        if let automerge::legacy::OpType::Make(_) = op.action {
            // The record this operation touches, when its place says so already.
            let mut touches = None;
            let made = match (&op.key, obj == layout.records) {
                (automerge::legacy::Key::Map(name), true) => {
                    self.made_channels.push((id.clone(), name.to_string()));
                    Place::Channel(name.as_str().into())
                }
                (_, true) => Place::Elsewhere,
                (key, false) if obj != layout.counters => match (self.place(doc, &obj), key) {
                    (Place::Channel(channel), automerge::legacy::Key::Map(key)) => {
                        if let Some(made) = &mut self.made_records {
                            made.made(id);
                        }
                        let flat: Rc<str> = format!("{channel}{SEP}{key}").into();
                        touches = Some(Rc::clone(&flat));
                        Place::Record(flat)
                    }
                    (Place::Record(flat), _) => {
                        touches = Some(Rc::clone(&flat));
                        Place::Record(flat)
                    }
                    _ => Place::Elsewhere,
                },
                _ => Place::Elsewhere,
            };
            self.place_of.insert(id.clone(), made);
            if let Some(flat) = touches {
                self.touch_record(flat);
                return;
            }
        }
        if obj == layout.records {
            // A channel's map created: no record yet.
            return;
        }
        if obj == layout.counters {
            let automerge::legacy::Key::Map(key) = &op.key else {
                return;
            };
            if !self.seen_counters.contains(key.as_str()) {
                self.seen_counters.insert(key.to_string());
                self.counters.push(key.to_string());
            }
            return;
        }
        match (self.place(doc, &obj), &op.key) {
            (Place::Channel(channel), automerge::legacy::Key::Map(key)) => {
                self.touch_record(format!("{channel}{SEP}{key}").into());
            }
            (Place::Record(flat), _) => self.touch_record(flat),
            _ => {}
        }
    }

    /// Notes that record `flat` was touched (once, in the order first touched).
    fn touch_record(&mut self, flat: Rc<str>) {
        if self.seen_records.insert(Rc::clone(&flat)) {
            self.records.push(flat);
        }
    }

    /// Where `obj` lives: learnt from an operation seen, a channel's map, or (an object made
    /// by an earlier change) asked of the document.
    fn place(&mut self, doc: &Automerge, obj: &ObjId) -> Place {
        if let Some(place) = self.place_of.get(obj) {
            return place.clone();
        }
        if let Some(channel) = self.channels.and_then(|c| c.get(obj)) {
            let place = Place::Channel(channel.as_str().into());
            self.place_of.insert(obj.clone(), place.clone());
            return place;
        }
        if !self.channels_read {
            self.channels_read = true;
            for item in doc.map_range(&self.layout.records, ..) {
                self.place_of
                    .entry(item.id())
                    .or_insert_with(|| Place::Channel(item.key.as_ref().into()));
            }
            if let Some(place) = self.place_of.get(obj) {
                return place.clone();
            }
        }
        let place = place_of(doc, self.layout, obj);
        self.place_of.insert(obj.clone(), place.clone());
        place
    }

    /// The touched keys, records first touched first. (As `String`s: a job's keys go to the
    /// node's thread.)
    pub(super) fn finish(self) -> Touched {
        let records = self.records.iter().map(|flat| flat.to_string()).collect();
        (records, self.counters)
    }
}

/// What a change report says of a record: its writer (`None`: deleted) and whether it is
/// presence-scoped.
pub(super) type RecordRead = (Option<PeerId>, bool);

/// An operation's id: its counter and actor (ordered as Automerge orders operations).
type OpKey = (u64, ActorId);

/// What the operations of a batch of received changes say of the records they made (record
/// maps created in a channel's map), so that the change report need not read the writer and
/// scope of such a record from the document: only operations of the batch can touch a record
/// the batch made (any other is causally after it, so not in the document yet).
///
/// Automerge's rule, kept here: a field's value is one of the puts to it that no operation
/// names as a predecessor (any operation, of any key or object: Automerge gives the named
/// operation a successor wherever the naming one is), the one with the greatest id. A record
/// whose `"w"` or `"p"` field got an operation of another kind (an insertion, an increment, a
/// counter) is read from the document instead.
#[derive(Debug, Default)]
pub(super) struct MadeRecords {
    records: HashMap<ObjId, MadeRecord>,
    /// Every operation a seen operation names as a predecessor.
    overwritten: HashSet<OpKey>,
}

/// The puts seen to the writer (`"w"`) and scope (`"p"`) fields of a record the batch made,
/// as the change report reads them ([`super::record_meta`]).
#[derive(Debug, Default)]
struct MadeRecord {
    writer: SmallVec<[(OpKey, Option<PeerId>); 1]>,
    presence: SmallVec<[(OpKey, bool); 1]>,
    /// An operation on `"w"` or `"p"` this model does not follow: read the document.
    unknown: bool,
}

impl MadeRecords {
    /// Notes that the operation whose id is `id` made a record.
    fn made(&mut self, id: &ObjId) {
        self.records.insert(id.clone(), MadeRecord::default());
    }

    /// Notes operation `op` (whose id is `id`) on object `obj`. Operations come in causal
    /// order (the checks pass over the new changes as Automerge lists them, each after its
    /// dependencies), so a record's making is seen before any operation on it.
    fn add(&mut self, obj: &ObjId, op: &automerge::legacy::Op, id: &ObjId) {
        use automerge::ScalarValue;
        use automerge::legacy::{Key, OpType};
        for pred in op.pred.iter() {
            self.overwritten
                .insert((pred.counter(), pred.actor().clone()));
        }
        let Some(record) = self.records.get_mut(obj) else {
            return;
        };
        let (ObjId::Id(counter, actor, _), Key::Map(key)) = (id, &op.key) else {
            record.unknown = true;
            return;
        };
        let field = key.as_str();
        if field != "w" && field != "p" {
            return;
        }
        let at = (*counter, actor.clone());
        match (&op.action, field) {
            _ if op.insert => record.unknown = true,
            (OpType::Delete, _) => {}
            (OpType::Put(ScalarValue::Counter(_)) | OpType::Increment(_), _) => {
                record.unknown = true;
            }
            (OpType::Put(ScalarValue::Str(w)), "w") => record.writer.push((at, w.parse().ok())),
            (OpType::Put(ScalarValue::Boolean(p)), "p") => record.presence.push((at, *p)),
            (OpType::Put(_) | OpType::Make(_), "w") => record.writer.push((at, None)),
            (OpType::Put(_) | OpType::Make(_), _) => record.presence.push((at, false)),
            _ => record.unknown = true,
        }
    }

    /// What record `rec` holds, if the batch made it and this model follows it.
    fn read(&self, rec: &ObjId) -> Option<RecordRead> {
        let record = self.records.get(rec).filter(|r| !r.unknown)?;
        let writer = self.winner(&record.writer).flatten();
        let presence = self.winner(&record.presence).unwrap_or(false);
        Some((writer, presence))
    }

    /// A field's value among the puts to it: the one no operation names as a predecessor
    /// with the greatest id (`None`: no such put).
    fn winner<V: Copy>(&self, puts: &[(OpKey, V)]) -> Option<V> {
        puts.iter()
            .filter(|(at, _)| !self.overwritten.contains(at))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, v)| *v)
    }
}

#[cfg(test)]
impl MadeRecords {
    /// How many of `records` (flat keys) this model answers for (tests).
    pub(super) fn followed(&self, doc: &Automerge, layout: &Layout, records: &[String]) -> usize {
        records
            .iter()
            .filter_map(|flat| flat.split_once(SEP))
            .filter_map(|(c, k)| super::record_in(doc, &channel_obj(doc, &layout.records, c)?, k))
            .filter(|r| self.read(r).is_some())
            .count()
    }
}

/// What `doc` holds of each of `records` (flat keys): see [`RecordRead`]. A run of records of
/// one channel (a received change's records mostly share theirs) is looked up at once: the
/// channel's map found, and its operations scoped, once for the run. The writer and scope of
/// a record `made` follows are not read.
pub(super) fn read_records(
    doc: &Automerge,
    layout: &Layout,
    records: &[String],
    made: &MadeRecords,
) -> Vec<RecordRead> {
    // Each flat key split once into its channel and key (`None`: not a record's key).
    let split: Vec<Option<(&str, &str)>> = records.iter().map(|f| f.split_once(SEP)).collect();
    let mut reads = Vec::with_capacity(records.len());
    for run in split.chunk_by(|a, b| a.map(|(c, _)| c) == b.map(|(c, _)| c)) {
        let keys = run.iter().flatten().map(|(_, k)| *k);
        let found = run
            .first()
            .copied()
            .flatten()
            .and_then(|(c, _)| channel_obj(doc, &layout.records, c))
            .and_then(|ch| doc.get_map_objects(&ch, keys).ok());
        let Some(found) = found else {
            reads.extend(run.iter().map(|_| (None, false)));
            continue;
        };
        reads.extend(found.into_iter().map(|object| match object {
            Some((ObjType::Map, r)) => made.read(&r).unwrap_or_else(|| super::record_meta(doc, &r)),
            _ => (None, false),
        }));
    }
    reads
}

/// The most records [`TouchedKeys::reserve`] makes room for ahead.
const RESERVED_RECORDS: usize = 4_096;

/// Touched record and counter keys: see [`touched_keys`].
pub(super) type Touched = (Vec<String>, Vec<String>);

/// Where an object lives, as far as change notifications go. (Names shared: every operation
/// on a record's fields asks for its place.)
#[derive(Clone)]
enum Place {
    /// It is the map of this channel: an operation on it touches the record it names.
    Channel(Rc<str>),
    /// It is this record (flat key `"<channel>\u{1f}<key>"`), or lives in it at any depth.
    Record(Rc<str>),
    /// Anywhere else.
    Elsewhere,
}

/// Where `obj` lives: walks up its parents to the records map (channel map, record, value
/// nested in a record).
fn place_of(doc: &Automerge, layout: &Layout, obj: &ObjId) -> Place {
    let Ok(parents) = doc.parents(obj) else {
        return Place::Elsewhere;
    };
    // The property under which the previous object (one level down) sits in its parent.
    let mut below: Option<automerge::Prop> = None;
    for parent in parents {
        if parent.obj == layout.records {
            let automerge::Prop::Map(channel) = parent.prop else {
                return Place::Elsewhere;
            };
            return match below {
                None => Place::Channel(channel.into()),
                Some(automerge::Prop::Map(key)) => {
                    Place::Record(format!("{channel}{SEP}{key}").into())
                }
                Some(automerge::Prop::Seq(_)) => Place::Elsewhere,
            };
        }
        below = Some(parent.prop);
    }
    Place::Elsewhere
}
