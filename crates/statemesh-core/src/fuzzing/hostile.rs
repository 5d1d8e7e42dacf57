//! Programs of hostile changes: a fuzz input read as changes a hostile peer makes, either
//! through Automerge on a copy of the receiver's document or encoded directly from operations
//! (read by the `sync_receive` and `state_load` targets).

use std::collections::BTreeMap;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue};

use super::common::{PEERS, Reader, peer_ids};
use crate::PeerId;

/// Names a hostile program may use as map keys: the layout's own, channel names and record
/// keys, statemesh's flat counter keys, and arbitrary ones.
fn key(r: &mut Reader<'_>, ids: &[PeerId; PEERS]) -> String {
    let sep = crate::replica::SEP;
    let (me, peer) = (ids[0], ids[1]);
    match r.byte() % 16 {
        0 => "r".into(),
        1 => "c".into(),
        2 => "m".into(),
        3 => "terms".into(),
        4 => "schema".into(),
        5 => "v".into(),
        6 => "w".into(),
        7 => "p".into(),
        8 => me.to_string(),
        9 => peer.to_string(),
        10 => "probes".into(),
        11 => "api:443".into(),
        12 => format!("ws/desired{sep}{me}{sep}d"),
        13 => format!("ws/running{sep}{peer}{sep}p"),
        14 => "limits".into(),
        _ => String::from_utf8_lossy(&r.bytes()).into_owned(),
    }
}

/// A scalar of any type; values of unknown type (which the format allows for forward
/// compatibility) only when `unknown`.
fn scalar(r: &mut Reader<'_>, ids: &[PeerId; PEERS], unknown: bool) -> ScalarValue {
    match r.byte() % if unknown { 10 } else { 9 } {
        0 => ScalarValue::Null,
        1 => ScalarValue::Boolean(r.byte() & 1 == 1),
        2 => ScalarValue::Int(r.number() as i64),
        3 => ScalarValue::Uint(r.number()),
        4 => ScalarValue::F64(f64::from_bits(r.u64())),
        5 => ScalarValue::Str(key(r, ids).into()),
        6 => ScalarValue::Bytes(r.bytes()),
        7 => ScalarValue::Counter((r.number() as i64).into()),
        8 => ScalarValue::Timestamp(r.number() as i64),
        _ => ScalarValue::Unknown {
            type_code: r.byte(),
            bytes: r.bytes(),
        },
    }
}

fn obj_type(r: &mut Reader<'_>) -> ObjType {
    match r.byte() % 4 {
        0 => ObjType::Map,
        1 => ObjType::List,
        2 => ObjType::Text,
        _ => ObjType::Table,
    }
}

/// The most operations of one hostile program, and the most changes.
const MAX_OPS: usize = 256;
const MAX_CHANGES: usize = 16;

/// Builds, from the program `data`, the sync message a hostile peer sends: changes made on a
/// copy of `base` (the receiver's document) under a chosen actor, each either
///
/// - made through Automerge's own transactions (puts of any type anywhere, objects, deletes,
///   increments, text, statemesh-shaped records): well-formed changes with hostile contents;
/// - or encoded directly from operations (any action, object, key, predecessors, actor,
///   sequence number, start op, dependencies, values of unknown type): what a peer running
///   something other than Automerge could send.
///
/// Returns `None` when the hostile side itself cannot build the message (Automerge refuses or
/// panics on what it was asked to make: that is not the node under test).
pub(super) fn hostile_sync(base: &Automerge, data: &[u8]) -> Option<Vec<u8>> {
    let (chunks, heads) = hostile_changes(base, data)?;
    Some(crate::replica::message_carrying(chunks, heads).encode())
}

/// The hostile changes of the program `data` made on a copy of `base` (see [`hostile_sync`]),
/// encoded, and the heads a peer would announce with them. `None` when the hostile side itself
/// fails to make them.
pub(super) fn hostile_changes(
    base: &Automerge,
    data: &[u8],
) -> Option<(Vec<Vec<u8>>, Vec<ChangeHash>)> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| make_changes(base, data))).ok()
}

fn make_changes(base: &Automerge, data: &[u8]) -> (Vec<Vec<u8>>, Vec<ChangeHash>) {
    let ids = peer_ids();
    let mut r = Reader { data };
    let actors = [
        ActorId::from([0u8; 16].as_slice()),
        base.get_actor().clone(),
        ActorId::from([0xb0u8; 16].as_slice()),
    ];
    let mut doc = base
        .clone()
        .with_actor(actors[usize::from(r.byte()) % 3].clone());
    // The root, a channel's map, the counters, the meta map and its terms (the records map,
    // where only a channel's own change may write, is reached by the encoded changes: genesis
    // operation 1). A document without a channel gets one first, made as every peer makes it
    // (its change is the first one sent).
    let mut chunks = Vec::new();
    let records = doc.get(ROOT, "r").ok().flatten().map(|(_, id)| id);
    let mut channels: Vec<ObjId> = records
        .iter()
        .flat_map(|r| doc.map_range(r, ..).map(|item| item.id()).take(1))
        .collect();
    if channels.is_empty()
        && let Some(records) = &records
    {
        let mut change = crate::replica::channel_change("probes");
        if doc.apply_changes([change.clone()]).is_ok()
            && let Ok(Some((_, ch))) = doc.get(records, "probes")
        {
            chunks.push(change.bytes().into_owned());
            channels.push(ch);
        }
    }
    let mut objs: Vec<ObjId> = vec![ROOT];
    objs.extend(channels.first().cloned().or_else(|| records.clone()));
    for name in ["c", "m"] {
        if let Ok(Some((_, id))) = doc.get(ROOT, name) {
            objs.push(id);
        }
    }
    if let Some(m) = objs.get(3).cloned()
        && let Ok(Some((_, terms))) = doc.get(&m, "terms")
    {
        objs.push(terms);
    }
    let mut raw = RawChanges {
        deps: doc.get_heads(),
        seqs: BTreeMap::new(),
        // Right after the operations of the changes the first one depends on (channels' own
        // changes number their operations from the genesis change, so a count of the
        // document's operations is not it).
        next_op: doc
            .get_heads()
            .iter()
            .filter_map(|h| doc.get_change_meta_by_hash(h).map(|c| c.max_op))
            .max()
            .unwrap_or(0)
            + 1,
        made: Vec::new(),
    };
    let mut ops = 0;
    while ops < MAX_OPS && chunks.len() < MAX_CHANGES && !r.data.is_empty() {
        let time = r.number() as i64;
        if r.byte() % 4 == 3 {
            let change = raw.change(&mut r, &ids, &actors, time, &mut ops);
            chunks.push(change);
            continue;
        }
        let mut tx = doc.transaction();
        while let Some(op) = r.next() {
            ops += 1;
            if ops > MAX_OPS || op % 8 == 7 {
                break;
            }
            let obj = objs[usize::from(r.byte()) % objs.len()].clone();
            // Operations the document refuses (a map key on a list, ...) are simply skipped.
            let _ = match op % 8 {
                0 => {
                    let (k, v) = (key(&mut r, &ids), scalar(&mut r, &ids, false));
                    tx.put(&obj, k, v)
                }
                1 => {
                    let (k, t) = (key(&mut r, &ids), obj_type(&mut r));
                    tx.put_object(&obj, k, t).map(|id| {
                        if objs.len() < 64 {
                            objs.push(id);
                        }
                    })
                }
                2 => {
                    let k = key(&mut r, &ids);
                    tx.delete(&obj, k)
                }
                3 => {
                    let (k, by) = (key(&mut r, &ids), r.number() as i64);
                    tx.increment(&obj, k, by)
                }
                4 => {
                    let (at, v) = (usize::from(r.byte()), scalar(&mut r, &ids, false));
                    tx.insert(&obj, at, v)
                }
                5 => {
                    let (at, del) = (usize::from(r.byte()), isize::from(r.byte() % 8));
                    let text = key(&mut r, &ids);
                    tx.splice_text(&obj, at, del, &text)
                }
                _ => {
                    // A record shaped like statemesh's own: { v, w, p }.
                    let k = key(&mut r, &ids);
                    let v = scalar(&mut r, &ids, false);
                    let (w, p) = (key(&mut r, &ids), r.byte() & 1);
                    tx.put_object(&obj, k, ObjType::Map).and_then(|rec| {
                        tx.put(&rec, "v", v)?;
                        tx.put(&rec, "w", w)?;
                        tx.put(&rec, "p", p == 1)
                    })
                }
            };
        }
        let (hash, _) = tx.commit_with(CommitOptions::default().with_time(time));
        if let Some(mut change) = hash.and_then(|h| doc.get_change_by_hash(&h)) {
            raw.deps = vec![change.hash()];
            chunks.push(change.bytes().into_owned());
        }
    }
    let heads = match r.byte() % 3 {
        0 => raw.deps.clone(),
        1 => doc.get_heads(),
        _ => Vec::new(),
    };
    (chunks, heads)
}

/// State for encoding changes directly from operations.
struct RawChanges {
    /// The dependencies of the next change (the last one made, or the base heads).
    deps: Vec<ChangeHash>,
    /// The last sequence number used per actor.
    seqs: BTreeMap<Vec<u8>, u64>,
    /// The next operation counter, as far as the hostile side knows.
    next_op: u64,
    /// Operations made so far (objects and elements to refer to).
    made: Vec<automerge::legacy::OpId>,
}

impl RawChanges {
    /// An operation id: one of the genesis operations (the layout's containers), one made
    /// earlier, or any.
    fn op_id(&self, r: &mut Reader<'_>, actors: &[ActorId; 3]) -> automerge::legacy::OpId {
        use automerge::legacy::OpId;
        match r.byte() % 4 {
            0 | 1 => OpId(1 + u64::from(r.byte() % 5), actors[0].clone()),
            2 if !self.made.is_empty() => {
                self.made[usize::from(r.byte()) % self.made.len()].clone()
            }
            _ => OpId(r.number(), actors[usize::from(r.byte()) % 3].clone()),
        }
    }

    fn change(
        &mut self,
        r: &mut Reader<'_>,
        ids: &[PeerId; PEERS],
        actors: &[ActorId; 3],
        time: i64,
        ops: &mut usize,
    ) -> Vec<u8> {
        use automerge::legacy::{ElementId, Key, MarkData, ObjectId, Op, OpId, OpType};
        let actor = match r.byte() % 4 {
            3 => ActorId::from(r.bytes().as_slice()),
            i => actors[usize::from(i)].clone(),
        };
        let last = self.seqs.get(actor.to_bytes()).copied().unwrap_or(0);
        let seq = match r.byte() % 4 {
            0 | 1 => last + 1,
            2 => last,
            _ => r.number(),
        };
        self.seqs.insert(actor.to_bytes().to_vec(), seq);
        let start_op = match r.byte() % 4 {
            0 | 1 => self.next_op,
            2 => self.next_op.saturating_sub(1),
            _ => r.number(),
        };
        let deps = match r.byte() % 4 {
            0 | 1 => self.deps.clone(),
            2 => Vec::new(),
            _ => vec![ChangeHash([r.byte(); 32])],
        };
        let n = usize::from(r.byte() % 8);
        let mut operations = Vec::with_capacity(n);
        for i in 0..n {
            *ops += 1;
            let obj = match r.byte() % 3 {
                0 => ObjectId::Root,
                _ => ObjectId::Id(self.op_id(r, actors)),
            };
            let prop = match r.byte() % 3 {
                0 => Key::Seq(ElementId::Head),
                1 => Key::Seq(ElementId::Id(self.op_id(r, actors))),
                _ => Key::Map(key(r, ids).into()),
            };
            let action = match r.byte() % 6 {
                0 => OpType::Make(obj_type(r)),
                1 => OpType::Delete,
                2 => OpType::Increment(r.number() as i64),
                3 => OpType::MarkBegin(MarkData {
                    name: key(r, ids).into(),
                    value: scalar(r, ids, true),
                    expand: r.byte() & 1 == 1,
                }),
                4 => OpType::MarkEnd(r.byte() & 1 == 1),
                _ => OpType::Put(scalar(r, ids, true)),
            };
            let pred = (0..r.byte() % 3).map(|_| self.op_id(r, actors)).collect();
            let insert = r.byte() & 1 == 1;
            operations.push(Op {
                action,
                obj,
                key: prop,
                pred,
                insert,
            });
            if self.made.len() < 64 {
                self.made
                    .push(OpId(start_op.saturating_add(i as u64), actor.clone()));
            }
        }
        self.next_op = start_op.saturating_add(n as u64);
        let message = (r.byte() & 1 == 1).then(|| key(r, ids));
        let extra_bytes = r.bytes();
        let mut change = automerge::Change::from(automerge::ExpandedChange {
            operations,
            actor_id: actor,
            hash: None,
            seq,
            start_op: std::num::NonZeroU64::new(start_op).unwrap_or(std::num::NonZeroU64::MIN),
            time,
            message,
            deps,
            extra_bytes,
            author: None,
        });
        self.deps = vec![change.hash()];
        change.bytes().into_owned()
    }
}
