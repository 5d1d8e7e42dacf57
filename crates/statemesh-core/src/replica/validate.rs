//! The security boundary: the checks that changes received from a peer (in a sync message, or
//! in a stored file) must pass, once Automerge accepted them, before they join the document.
//!
//! The promise: a message that makes Automerge panic, or that Automerge accepts but cannot
//! keep (it would fail, or panic, whenever the document is next sent, saved or loaded), leaves
//! the document exactly as it was. Received changes are applied under `catch_unwind` to a copy
//! of the document ([`SyncApply::run`](super::SyncApply::run),
//! [`Replica::load_stored`](super::Replica::load_stored)), which replaces the document only if
//! [`check_new_changes`] passes too, or to the document itself
//! ([`Replica::receive_decoded`](super::Replica::receive_decoded)), which is restored from the
//! standby (a copy kept equal to it, see `standby`) unless both passed. (Before that,
//! [`Replica::decode_sync`](super::Replica::decode_sync) refuses what the peer's sync state
//! would keep and trip on later.)

use std::collections::BTreeSet;

use automerge::{Automerge, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue};

use super::touched::TouchedKeys;
use super::{ApplyError, Layout, channel_change, check_name};

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
/// - each operation must be one statemesh could have made (see [`check_operation`]);
/// - nothing but the genesis change touches the root, and nothing but a channel's own change
///   ([`channel_change`]) touches the records map: a change that creates, replaces or deletes
///   a channel's map any other way would put a competing object beside the channel's map, or
///   in its place, and hide the channel's records. The receiver rebuilds the expected change
///   from the channel's name and compares hashes.
///
/// Without this, one such message would break every peer it reached, and their state files.
/// Call it under `catch_unwind`: rebuilding a change may panic. With `touched`, the entries the
/// new operations touch are collected in the same pass.
pub(super) fn check_new_changes(
    doc: &Automerge,
    layout: &Layout,
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
    let rebuilt = doc.rebuild_changes(before);
    if rebuilt.iter().map(|c| c.hash()).collect::<BTreeSet<_>>() != received {
        return Err(ApplyError::Invalid(
            "a change the CRDT library cannot reproduce as it came",
        ));
    }
    if let Some(touched) = touched.as_deref_mut() {
        touched.reserve(rebuilt.iter().map(automerge::Change::len).sum());
    }
    // The type of the object the last operation was on: a record's fields come one after
    // another, each on the record's map.
    let mut last = None;
    for change in &rebuilt {
        let (actor, start) = (change.actor_id().clone(), change.start_op().get());
        for (i, op) in change.decode().operations.into_iter().enumerate() {
            check_operation(doc, &op, &mut last)?;
            check_layout(layout, change, &op)?;
            if let Some(touched) = touched.as_deref_mut() {
                let id = ObjId::Id(start.saturating_add(i as u64), actor.clone(), usize::MAX);
                touched.add(doc, &op, &id);
            }
        }
    }
    Ok(())
}

/// Checks that an operation leaves the layout's containers alone: no operation on the root
/// (the genesis change, which every replica starts from, is never received), and on the
/// records map only the one operation of a channel's own change.
fn check_layout(
    layout: &Layout,
    change: &automerge::Change,
    op: &automerge::legacy::Op,
) -> Result<(), ApplyError> {
    use automerge::legacy::{Key, ObjectId};
    let ObjectId::Id(id) = &op.obj else {
        return Err(ApplyError::Invalid(
            "an operation on the root of the document",
        ));
    };
    if ObjId::Id(id.counter(), id.actor().clone(), usize::MAX) != layout.records {
        return Ok(());
    }
    let Key::Map(channel) = &op.key else {
        return Err(ApplyError::Invalid(
            "an operation whose key does not fit its object",
        ));
    };
    if check_name(channel).is_err() || change.hash() != channel_change(channel).hash() {
        return Err(ApplyError::Invalid(
            "a channel map made otherwise than by the channel's own change",
        ));
    }
    Ok(())
}

/// Checks that an operation received from a peer is one statemesh (through autosurgeon) could
/// have made: on an existing object, with a key of the kind its object takes (a name in a map,
/// an element in a list or text, inserting only into a sequence), no text marks, no value of
/// unknown type. Automerge accepts some such operations and then fails to save, send or load
/// the document holding them. `last`: the object the previous operation checked was on, and
/// its type (the document does not change during a pass).
fn check_operation(
    doc: &Automerge,
    op: &automerge::legacy::Op,
    last: &mut Option<(automerge::legacy::OpId, ObjType)>,
) -> Result<(), ApplyError> {
    use automerge::legacy::{ElementId, Key, ObjectId, OpType};
    let obj_type = match &op.obj {
        ObjectId::Root => ObjType::Map,
        ObjectId::Id(id) => match last {
            Some((at, typ)) if at == id => *typ,
            _ => {
                // The actor index is looked up from the actor id when it does not match.
                let obj = ObjId::Id(id.counter(), id.actor().clone(), usize::MAX);
                let typ = doc.object_type(&obj).map_err(|_| {
                    ApplyError::Invalid("an operation on an object that does not exist")
                })?;
                *last = Some((id.clone(), typ));
                typ
            }
        },
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

#[cfg(test)]
mod tests {
    use super::super::tests::{forged_insertion, replica, sync};
    use super::super::{ApplyError, Replica, Scope};

    /// A forged change no Automerge makes (a record's field put as an insertion, encoded by
    /// hand) is refused and leaves the document exactly as it was. With debug assertions
    /// Automerge's own check of its op order panics (contained); in a release build Automerge
    /// accepts and rebuilds the change as it came, and the operation check refuses it
    /// (`cargo test --release -p statemesh-core --lib forged_insertion`).
    #[test]
    fn a_forged_insertion_into_a_record_is_refused() {
        let (mut a, mut b) = (replica(1), replica(2));
        a.transact(|tx| tx.put("probes", "api", &"up", Scope::Durable))
            .expect("write");
        sync(&mut a, &mut b);
        b.transact(|tx| tx.put("probes", "db", &"up", Scope::Durable))
            .expect("write");
        let honest = b.doc.get_last_local_change().expect("b's change");
        let forged = forged_insertion(&honest);
        assert_ne!(forged.hash(), honest.hash());
        let message =
            super::super::message_carrying(vec![forged.raw_bytes().to_vec()], vec![forged.hash()]);
        let (heads, saved) = (a.heads(), a.save());
        let e = a
            .receive_sync(&mut Replica::new_sync_state(), &message.encode())
            .expect_err("the forged change was accepted");
        if cfg!(debug_assertions) {
            assert!(matches!(e, ApplyError::Panicked), "{e}");
        } else {
            assert!(
                matches!(e, ApplyError::Invalid(why) if why.contains("does not fit")),
                "{e}"
            );
        }
        assert_eq!(
            (a.heads(), a.save()),
            (heads, saved),
            "not exactly as it was"
        );
        // The honest change still joins.
        sync(&mut a, &mut b);
        assert_eq!(a.heads(), b.heads());
    }

    /// A change whose operations go from a record's map to a list in it and back (a record
    /// whose value is a list, then another record) passes the checks: each operation is
    /// checked against its own object's type, not the previous operation's.
    #[test]
    fn operations_on_maps_and_lists_in_turn_are_each_checked_against_their_object() {
        let (mut a, mut b) = (replica(1), replica(2));
        a.transact(|tx| {
            tx.put("jobs", "a", &vec![1u32, 2, 3], Scope::Durable)?;
            tx.put("jobs", "b", &"idle", Scope::Durable)?;
            tx.put("jobs", "c", &vec!["x".to_string()], Scope::Durable)
        })
        .expect("write");
        sync(&mut a, &mut b);
        assert_eq!(a.heads(), b.heads());
        assert_eq!(
            b.get::<Vec<u32>>("jobs", "a", |_| true).expect("read"),
            Some(vec![1, 2, 3])
        );
        assert_eq!(
            b.get::<Vec<String>>("jobs", "c", |_| true).expect("read"),
            Some(vec!["x".to_string()])
        );
    }
}
