//! The write transaction: several writes made as one atomic change ([`Replica::transact`](super::Replica::transact)).

use std::collections::{BTreeSet, HashSet};

use automerge::transaction::{Transactable, Transaction};
use automerge::{ObjId, ObjType, ReadDoc, ScalarValue};
use autosurgeon::Reconcile;
use indexmap::{IndexMap, IndexSet};

use super::layout::{Layout, channel_obj};
use super::{Scope, WriteError, check_name, counter_key, record_key};
use crate::PeerId;

/// A handle to make several writes in one atomic change (see [`Replica::transact`](super::Replica::transact)).
pub struct Tx<'a> {
    pub(super) tx: Transaction<'a>,
    pub(super) layout: &'a Layout,
    pub(super) me: PeerId,
    /// Channels written to that have no map yet: their writes are left out, and
    /// [`Replica::transact`](super::Replica::transact) creates the maps and runs the transaction again.
    pub(super) missing: BTreeSet<String>,
    /// The maps of the channels written to, for the change notification that follows.
    pub(super) written: Vec<(ObjId, String)>,
    /// What the writes touched, for the change notification that follows (see [`Noted`]).
    pub(super) noted: Noted,
    /// New records whose maps are made together ([`finish`](Self::finish)) before the next
    /// other write, or when the writes end (for the open change: when it is committed, or
    /// before a read of records, see [`Replica::write`](super::Replica::write)).
    made: Made,
    /// How many of `made`'s records earlier writes of the open change left (see
    /// [`Made::restore`]).
    inherited: usize,
    /// Those records, kept once this transaction made them: a rollback to its start undoes
    /// their maps too, and they are owed again.
    made_before: Vec<MadeRecord>,
    /// Whether this transaction left a new record to be made.
    pub(super) deferred: bool,
    /// The operations of earlier writes' records that this transaction made (not its own
    /// writes: a write of what a record holds changes nothing, even if it made them).
    pub(super) inherited_ops: usize,
}

/// The entries a transaction's writes changed, in the order they were first changed, each
/// once: the change notification of a local change, read from the writes themselves instead
/// of from the change's operations and the document (a local write wins over every value it
/// saw, so what it wrote is what the document holds).
#[derive(Debug, Default)]
pub(super) struct Noted {
    /// Records (flat keys) and how the last write left them: `Some(presence)` written by
    /// this peer with that scope, `None` deleted. (A key written again keeps its place.)
    pub(super) records: IndexMap<String, Option<bool>>,
    /// Counter entries (flat keys, see `counter_key`).
    pub(super) counters: IndexSet<String>,
}

/// A new record left to be made (see [`Made`]).
#[derive(Debug)]
pub(super) struct MadeRecord {
    /// Its channel's map.
    map: ObjId,
    /// Its key.
    key: String,
    /// Its flat key.
    flat: String,
    /// Its fields.
    fields: automerge::hydrate::Value,
}

/// New records left to be made in one batch, in the order written (see [`Tx::finish`]).
#[derive(Debug, Default)]
pub(super) struct Made {
    records: Vec<MadeRecord>,
    /// Their flat keys: a record written again has the maps made first.
    keys: HashSet<String>,
}

impl Made {
    /// Whether no record is left to be made.
    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// How many records are left to be made.
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// Makes the records in `tx`, each channel's run in one batch (Automerge splices its
    /// columns twice for the batch, not twice per record: criterion
    /// `write/transact_100_new_10000_records`), and returns them. On an error they are all
    /// still owed (the caller undoes what was made).
    pub(super) fn make(
        &mut self,
        tx: &mut impl Transactable,
    ) -> Result<Vec<MadeRecord>, automerge::AutomergeError> {
        let made = std::mem::take(&mut self.records);
        for run in made.chunk_by(|a, b| a.map == b.map) {
            let entries: Vec<(&str, &automerge::hydrate::Value)> =
                run.iter().map(|r| (r.key.as_str(), &r.fields)).collect();
            if let Err(e) = tx.batch_create_objects(&run[0].map, &entries) {
                self.records = made;
                return Err(e);
            }
        }
        self.keys.clear();
        Ok(made)
    }

    /// Puts `records` (made by a transaction then rolled back) back in front, owed again.
    pub(super) fn restore(&mut self, mut records: Vec<MadeRecord>) {
        self.keys.extend(records.iter().map(|r| r.flat.clone()));
        records.append(&mut self.records);
        self.records = records;
    }

    /// Forgets the records after the first `len` (a rolled-back transaction's).
    pub(super) fn truncate(&mut self, len: usize) {
        for r in self.records.drain(len.min(self.records.len())..) {
            self.keys.remove(&r.flat);
        }
    }
}

impl<'a> Tx<'a> {
    /// A handle writing through `tx`, nothing written or noted yet; `made`: the new records
    /// earlier writes of the same open change left to be made.
    pub(super) fn new(tx: Transaction<'a>, layout: &'a Layout, me: PeerId, made: Made) -> Self {
        Self {
            tx,
            layout,
            me,
            missing: BTreeSet::new(),
            written: Vec::new(),
            noted: Noted::default(),
            inherited: made.len(),
            made,
            made_before: Vec::new(),
            deferred: false,
            inherited_ops: 0,
        }
    }

    /// Runs `f`'s writes through this handle, then makes what they left for the end (see
    /// [`finish`](Self::finish)) unless `keep_made` (the open change: see
    /// [`Replica::write`](super::Replica::write)), and unless they wrote to channels that have
    /// no map yet (the transaction is then rolled back and runs again). On an error the
    /// caller rolls back.
    pub(super) fn run<R>(
        &mut self,
        keep_made: bool,
        f: impl FnOnce(&mut Self) -> Result<R, WriteError>,
    ) -> Result<R, WriteError> {
        let r = f(self)?;
        if self.missing.is_empty() && !keep_made {
            self.finish()?;
        }
        Ok(r)
    }

    /// Makes the maps of the new records left to be made (see [`Made::make`]). Every other
    /// write comes after it, so the change's operations keep the writes' order (the change
    /// notification read from them lists the entries as the writes' notes do).
    fn finish(&mut self) -> Result<(), WriteError> {
        if self.made.is_empty() {
            return Ok(());
        }
        let before = self.tx.pending_ops();
        let mut made = self.made.make(&mut self.tx)?;
        if self.inherited > 0 {
            // With this transaction's own new records, if any: `deferred` says it changed.
            self.inherited_ops += self.tx.pending_ops() - before;
            // Made within this transaction: a rollback to its start owes them again.
            made.truncate(self.inherited);
            self.made_before = made;
            self.inherited = 0;
        }
        Ok(())
    }

    /// The new records left to be made, taken out. After a rollback to this transaction's
    /// start (`rolled_back`): those earlier writes left, owed again, and none of this
    /// transaction's.
    pub(super) fn take_made(&mut self, rolled_back: bool) -> Made {
        if rolled_back {
            self.made.truncate(self.inherited);
            self.made.restore(std::mem::take(&mut self.made_before));
        }
        self.inherited = 0;
        std::mem::take(&mut self.made)
    }
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
        if self.made.keys.contains(&flat) {
            self.finish()?;
        }
        let Some(ch) = channel_obj(&self.tx, &self.layout.records, channel) else {
            // Written once the map exists: the transaction runs again (see `missing`).
            self.missing.insert(channel.to_owned());
            return Ok(());
        };
        if !self.written.iter().any(|(_, c)| c == channel) {
            self.written.push((ch.clone(), channel.to_owned()));
        }
        let presence = scope == Scope::Presence;
        let (rec, existed) = match self.tx.get(&ch, key)? {
            Some((automerge::Value::Object(ObjType::Map), id)) => {
                self.finish()?;
                (id, true)
            }
            // A new record's map is made with its writer, scope and (unless only the document
            // can build it) value in one batch: Automerge splices its columns once for the
            // batch, not once per field (criterion `write/put_new_1000_records`: 36.4 -> 29.5
            // µs with the writer and scope).
            found => {
                let built = crate::value::hydrate_new(value);
                let complete = built.is_some();
                let fields = record_fields(self.me, presence, built);
                if complete && found.is_none() {
                    // No value at the key: made with the new records written next to it (see
                    // `finish`).
                    self.made.keys.insert(flat.clone());
                    self.made.records.push(MadeRecord {
                        map: ch,
                        key: key.to_owned(),
                        flat: flat.clone(),
                        fields,
                    });
                    self.deferred = true;
                    self.noted.records.insert(flat, Some(presence));
                    return Ok(());
                }
                self.finish()?;
                let rec = self.tx.batch_create_object(&ch, key, &fields, false)?;
                if complete {
                    self.noted.records.insert(flat, Some(presence));
                    return Ok(());
                }
                (rec, false)
            }
        };
        let ops = self.tx.pending_ops();
        autosurgeon::reconcile_prop(&mut self.tx, &rec, "v", value)?;
        if !existed {
            self.noted.records.insert(flat, Some(presence));
            return Ok(());
        }
        if !presence
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
        // A record that existed: noted if its value, writer or scope changed.
        if self.tx.pending_ops() != ops {
            self.noted.records.insert(flat, Some(presence));
        }
        Ok(())
    }

    /// Deletes record `key` of `channel` (whoever wrote it).
    pub fn delete(&mut self, channel: &str, key: &str) -> Result<(), WriteError> {
        let flat = record_key(channel, key).map_err(WriteError::InvalidName)?;
        self.finish()?;
        if let Some(ch) = channel_obj(&self.tx, &self.layout.records, channel)
            && self.tx.get(&ch, key)?.is_some()
        {
            self.tx.delete(&ch, key)?;
            self.noted.records.insert(flat, None);
        }
        Ok(())
    }

    /// Adds `by` to counter `name` (this writer's entry of the given scope).
    pub fn add(&mut self, name: &str, by: i64, scope: Scope) -> Result<(), WriteError> {
        check_name(name).map_err(WriteError::InvalidName)?;
        if by == 0 {
            return Ok(());
        }
        self.finish()?;
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
        self.noted.counters.insert(key);
        Ok(())
    }
}

/// The fields a new record's map is made with: its writer (`"w"`) and whether it is
/// presence-scoped (`"p"`), as [`Tx::put`] writes them to a record that exists, and its value
/// (`"v"`) when it could be built without the document.
fn record_fields(
    me: PeerId,
    presence: bool,
    value: Option<automerge::hydrate::Value>,
) -> automerge::hydrate::Value {
    let me = me.to_string();
    let mut fields = std::collections::HashMap::from([
        ("w", automerge::hydrate::Value::from(me.as_str())),
        ("p", ScalarValue::Boolean(presence).into()),
    ]);
    if let Some(v) = value {
        fields.insert("v", v);
    }
    fields.into()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT, hydrate};
    use autosurgeon::reconcile::NoKey;
    use autosurgeon::{Counter, Reconciler, Text};

    use super::super::tests::replica;
    use super::*;

    #[derive(Reconcile)]
    struct Endpoint {
        host: String,
        port: u16,
        latency_ms: Option<f64>,
        up: bool,
        tags: Vec<String>,
        seen: BTreeMap<String, u64>,
        raw: Vec<u8>,
    }

    /// A timestamp (Automerge keeps it apart from integers).
    struct Stamp(i64);

    impl Reconcile for Stamp {
        type Key<'a> = NoKey;
        fn reconcile<R: Reconciler>(&self, mut r: R) -> Result<(), R::Error> {
            r.timestamp(self.0)
        }
    }

    /// `value` as a new record's `"v"` holds it, written by [`Tx::put`].
    fn stored<T: Reconcile>(value: &T) -> hydrate::Value {
        let mut r = replica(1);
        r.transact(|tx| tx.put("c", "k", value, Scope::Durable))
            .expect("a write");
        let doc = r.doc();
        let ch = channel_obj(doc, &r.layout.records, "c").expect("the channel");
        let (_, rec) = doc.get(&ch, "k").expect("reads").expect("the record");
        match ReadDoc::hydrate(doc, &rec, None).expect("hydrates") {
            hydrate::Value::Map(m) => m.get("v").expect("a value").clone(),
            other => panic!("a record is a map, not {other:?}"),
        }
    }

    /// `value` as autosurgeon reconciles it into a new key of a map.
    fn reconciled<T: Reconcile>(value: &T) -> hydrate::Value {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        let m = tx.put_object(ROOT, "m", ObjType::Map).expect("a map");
        autosurgeon::reconcile_prop(&mut tx, &m, "v", value).expect("reconciles");
        tx.commit();
        match ReadDoc::hydrate(&doc, &m, None).expect("hydrates") {
            hydrate::Value::Map(m) => m.get("v").expect("a value").clone(),
            other => panic!("a map, not {other:?}"),
        }
    }

    fn assert_same<T: Reconcile>(what: &str, value: T) {
        assert_eq!(stored(&value), reconciled(&value), "{what}");
    }

    /// A new record's value is made with the record in one batch when it can be built
    /// without the document: what the document then holds is what reconciling it there
    /// makes, for every kind of value, including those only the document builds (text,
    /// counters, timestamps).
    #[test]
    fn a_new_records_value_is_held_as_reconciling_it_makes_it() {
        assert_same("an integer", -7i64);
        assert_same("an unsigned integer", 7u64);
        assert_same("a float", 1.5f64);
        assert_same("a string", "up".to_owned());
        assert_same("a boolean", true);
        assert_same("nothing", None::<i64>);
        assert_same("bytes", autosurgeon::bytes::ByteVec::from(vec![1u8, 2, 3]));
        assert_same("a list", vec![1i64, 2, 3]);
        assert_same("an empty list", Vec::<i64>::new());
        assert_same(
            "a struct",
            Endpoint {
                host: "10.0.0.1".into(),
                port: 443,
                latency_ms: Some(2.5),
                up: true,
                tags: vec!["a".into(), "b".into()],
                seen: BTreeMap::from([("x".into(), 1), ("y".into(), 2)]),
                raw: vec![0, 255],
            },
        );
        assert_same("text", Text::with_value("hello"));
        assert_same("a counter", Counter::with_value(3));
        assert_same("a timestamp", Stamp(1_700_000_000_000));
        assert_same(
            "text in a list",
            vec![Text::with_value("a"), Text::with_value("b")],
        );
    }
}
