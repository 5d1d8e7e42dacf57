//! State files of the first layout (schema 1), and their migration on load.
//!
//! Schema 1 kept every record in one flat map, `ROOT."r"`: `"<channel>\u{1f}<key>"` ->
//! `{v, w, p}`. Its genesis change differs from today's (the schema number is part of it), so
//! its changes cannot join a document of today's layout. A file of schema 1 is read into a
//! document of its own, and every record, counter entry and leadership term in it is written
//! anew into the replica, in today's layout, keeping each record's writer and scope.

use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ObjType, ROOT, ReadDoc, ScalarValue};

use super::{ApplyError, Replica, SEP, WriteError, channel_obj, genesis};
use crate::value::Value;

/// The genesis document of schema 1, byte for byte as statemesh built it.
pub(super) fn genesis_v1() -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from([0u8; 16].as_slice()));
    let mut tx = doc.transaction();
    (|| -> Result<(), automerge::AutomergeError> {
        tx.put_object(ROOT, "r", ObjType::Map)?;
        tx.put_object(ROOT, "c", ObjType::Map)?;
        let meta = tx.put_object(ROOT, "m", ObjType::Map)?;
        tx.put(&meta, "schema", 1u64)?;
        tx.put_object(&meta, "terms", ObjType::Map)?;
        Ok(())
    })()
    .unwrap_or_else(|e| unreachable!("genesis operations on a fresh document cannot fail: {e}"));
    tx.commit_with(CommitOptions::default().with_time(0));
    doc
}

/// Reads stored bytes as a document of schema 1: `Some` when they hold changes built on the
/// schema 1 genesis change (and not today's genesis change).
pub(super) fn read_v1(bytes: &[u8]) -> Option<Automerge> {
    catch_unwind(|| {
        let mut doc = genesis_v1();
        let base = doc.get_heads();
        doc.load_incremental(bytes).ok()?;
        let today = genesis().0.get_heads();
        let ours = today.iter().any(|h| doc.has_change(h));
        (doc.get_heads() != base && !ours).then_some(doc)
    })
    .ok()
    .flatten()
}

/// One record of a schema 1 document.
struct OldRecord {
    channel: String,
    key: String,
    value: Value,
    writer: Option<String>,
    presence: bool,
}

/// Everything a schema 1 document holds, read out of it.
struct OldState {
    records: Vec<OldRecord>,
    /// Counter entries: flat key `"<name>\u{1f}<writer>\u{1f}d|p"` -> value.
    counters: Vec<(String, i64)>,
    terms: Vec<(String, u64)>,
}

fn read_state(old: &Automerge) -> OldState {
    let get_obj = |obj: &automerge::ObjId, key: &str| match old.get(obj, key) {
        Ok(Some((automerge::Value::Object(_), id))) => Some(id),
        _ => None,
    };
    let mut state = OldState {
        records: Vec::new(),
        counters: Vec::new(),
        terms: Vec::new(),
    };
    if let Some(records) = get_obj(&ROOT, "r") {
        for item in old.map_range(&records, ..) {
            let Some((channel, key)) = item.key.split_once(SEP) else {
                continue;
            };
            if super::record_key(channel, key).is_err() {
                continue;
            }
            let rec = item.id();
            let Ok(value) = autosurgeon::hydrate_prop::<_, Value, _, _>(old, &rec, "v") else {
                continue;
            };
            let writer = match old.get(&rec, "w") {
                Ok(Some((v, _))) => v.into_string().ok(),
                _ => None,
            };
            let presence =
                matches!(old.get(&rec, "p"), Ok(Some((v, _))) if v.as_bool() == Some(true));
            state.records.push(OldRecord {
                channel: channel.to_owned(),
                key: key.to_owned(),
                value,
                writer,
                presence,
            });
        }
    }
    if let Some(counters) = get_obj(&ROOT, "c") {
        for item in old.map_range(&counters, ..) {
            let n = match automerge::Value::from(item.value) {
                automerge::Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Counter(c) => i64::from(c),
                    ScalarValue::Int(i) => *i,
                    _ => continue,
                },
                automerge::Value::Object(_) => continue,
            };
            state.counters.push((item.key.to_string(), n));
        }
    }
    if let Some(meta) = get_obj(&ROOT, "m")
        && let Some(terms) = get_obj(&meta, "terms")
    {
        for item in old.map_range(&terms, ..) {
            let v = automerge::Value::from(item.value);
            if let Some(t) = v
                .as_u64()
                .or_else(|| v.as_i64().and_then(|i| u64::try_from(i).ok()))
            {
                state.terms.push((item.key.to_string(), t));
            }
        }
    }
    state
}

impl Replica {
    /// Writes everything the schema 1 document `old` holds into this replica, in today's
    /// layout, as one change of this replica's actor: records (with their writer and scope),
    /// counter entries (each writer's share, as it was) and leadership terms (the greater of
    /// the stored and the migrated one). What the replica holds already, as it is, is not
    /// written again, so migrating the same file twice changes nothing the second time.
    /// Returns whether the document changed.
    pub(super) fn migrate_v1(&mut self, old: &Automerge) -> Result<bool, ApplyError> {
        let state =
            catch_unwind(AssertUnwindSafe(|| read_state(old))).map_err(|_| ApplyError::Panicked)?;
        let refused =
            |_: WriteError| ApplyError::Invalid("a schema 1 file that cannot be migrated");
        let before = self.doc.get_heads();
        for rec in &state.records {
            self.create_channel(&rec.channel).map_err(refused)?;
        }
        let layout = self.layout.clone();
        let me = self.me.to_string();
        let mut tx = self.doc.transaction();
        let written = (|| -> Result<(), WriteError> {
            for rec in &state.records {
                let ch = channel_obj(&tx, &layout.records, &rec.channel)
                    .ok_or_else(|| WriteError::NewChannels(rec.channel.clone()))?;
                let writer = rec.writer.clone().unwrap_or_else(|| me.clone());
                if let Some((automerge::Value::Object(ObjType::Map), obj)) =
                    tx.get(&ch, rec.key.as_str())?
                {
                    let value = autosurgeon::hydrate_prop::<_, Value, _, _>(&tx, &obj, "v").ok();
                    let w = tx.get(&obj, "w")?.and_then(|(v, _)| v.into_string().ok());
                    let p = tx.get(&obj, "p")?.and_then(|(v, _)| v.as_bool());
                    // (Compared by their printed form too: a NaN is not equal to itself.)
                    let same_value = value.as_ref().is_some_and(|v| {
                        *v == rec.value || format!("{v:?}") == format!("{:?}", rec.value)
                    });
                    if same_value
                        && w.as_deref() == Some(writer.as_str())
                        && p == Some(rec.presence)
                    {
                        continue;
                    }
                }
                let obj = tx.put_object(&ch, rec.key.as_str(), ObjType::Map)?;
                autosurgeon::reconcile_prop(&mut tx, &obj, "v", &rec.value)?;
                tx.put(&obj, "w", writer)?;
                tx.put(&obj, "p", rec.presence)?;
            }
            for (key, n) in &state.counters {
                let stored = match tx.get(&layout.counters, key.as_str())? {
                    Some((automerge::Value::Scalar(s), _)) => match s.as_ref() {
                        ScalarValue::Counter(c) => Some(i64::from(c)),
                        _ => None,
                    },
                    _ => None,
                };
                if stored != Some(*n) {
                    tx.put(&layout.counters, key.as_str(), ScalarValue::counter(*n))?;
                }
            }
            for (leader, term) in &state.terms {
                let stored = match tx.get(&layout.terms, leader.as_str())? {
                    Some((v, _)) => v.as_u64().unwrap_or(0),
                    None => 0,
                };
                if *term > stored {
                    tx.put(&layout.terms, leader.as_str(), *term)?;
                }
            }
            Ok(())
        })();
        match written {
            Ok(()) => {
                tx.commit_with(CommitOptions::default().with_time(0));
                Ok(self.doc.get_heads() != before)
            }
            Err(e) => {
                tx.rollback();
                Err(refused(e))
            }
        }
    }
}

/// A state file of schema 1, as statemesh wrote it before channels had maps of their own:
/// `records` (channel, key, value, presence-scoped) written by `writer`, each counter entry
/// `(name, scope letter "d" or "p", value)` of `writer`, and `writer`'s leadership `term`.
/// For tests and fuzz seeds: the migration's input.
#[cfg(any(test, feature = "fuzzing"))]
pub fn schema1_file(
    writer: crate::PeerId,
    records: &[(&str, &str, Value, bool)],
    counters: &[(&str, &str, i64)],
    term: u64,
) -> Vec<u8> {
    let mut doc = genesis_v1().with_actor(ActorId::from([0x51u8; 16].as_slice()));
    let get = |doc: &Automerge, obj: &automerge::ObjId, key: &str| {
        doc.get(obj, key)
            .ok()
            .flatten()
            .map(|(_, id)| id)
            .unwrap_or_else(|| unreachable!("the schema 1 genesis holds {key}"))
    };
    let r = get(&doc, &ROOT, "r");
    let c = get(&doc, &ROOT, "c");
    let m = get(&doc, &ROOT, "m");
    let terms = get(&doc, &m, "terms");
    let mut tx = doc.transaction();
    (|| -> Result<(), WriteError> {
        for (channel, key, value, presence) in records {
            let rec = tx.put_object(&r, format!("{channel}{SEP}{key}"), ObjType::Map)?;
            autosurgeon::reconcile_prop(&mut tx, &rec, "v", value)?;
            tx.put(&rec, "w", writer.to_string())?;
            tx.put(&rec, "p", *presence)?;
        }
        for (name, scope, n) in counters {
            tx.put(
                &c,
                format!("{name}{SEP}{writer}{SEP}{scope}"),
                ScalarValue::counter(*n),
            )?;
        }
        tx.put(&terms, writer.to_string(), term)?;
        Ok(())
    })()
    .unwrap_or_else(|e| unreachable!("writes on a fresh schema 1 document cannot fail: {e}"));
    tx.commit_with(CommitOptions::default().with_time(0));
    doc.save()
}
