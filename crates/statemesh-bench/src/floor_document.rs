//! The document of a `transport-floor --documents` window: Automerge's own work for a write
//! and its receipt, and nothing of the mesh around it.
//!
//! Every window's document starts from the same base change (one channel map, made by a fixed
//! actor at a fixed time, so every process makes the identical change) and writes with its peer
//! id as its actor. A write is what a mesh window's `put` of a new record makes: one
//! transaction creating the record's map with its value, writer and scope in one batch, one
//! change. What the writer sends is that change's bytes; a receiver applies them with
//! `load_incremental` (as the mesh applies received changes) and reads the value back. There
//! is no sync protocol (no heads, no Bloom filter, no answer), no validation of the received
//! ops, no containment copy, no persistence and no notification of the records a change
//! touched: those are the mesh's.

use std::collections::HashMap;

use anyhow::{Context, anyhow};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use statemesh_core::PeerId;

/// The channel the floor's records are written to (the `propagation` scenario's).
const CHANNEL: &str = "prop";

/// One window's document and its channel's map.
pub(crate) struct FloorDocument {
    doc: Automerge,
    channel: ObjId,
    writer: String,
}

impl FloorDocument {
    /// The shared base, forked for `me`.
    pub(crate) fn new(me: PeerId) -> anyhow::Result<Self> {
        let mut base = Automerge::new().with_actor(ActorId::from([0u8; 16].as_slice()));
        let mut tx = base.transaction();
        let records = tx.put_object(ROOT, "r", ObjType::Map)?;
        let channel = tx.put_object(&records, CHANNEL, ObjType::Map)?;
        // A fixed time: every window's base change is then the same change (the same hash).
        tx.commit_with(CommitOptions::default().with_time(0));
        let actor = ActorId::from(me.to_bytes().as_slice());
        Ok(Self {
            doc: base.fork().with_actor(actor),
            channel,
            writer: me.to_string(),
        })
    }

    /// Writes `key`'s record holding `stamp`; the bytes of the change it made.
    pub(crate) fn write(&mut self, key: &str, stamp: i64) -> anyhow::Result<Vec<u8>> {
        let fields: HashMap<&str, automerge::hydrate::Value> = HashMap::from([
            ("v", ScalarValue::Int(stamp).into()),
            ("w", self.writer.as_str().into()),
            ("p", ScalarValue::Boolean(false).into()),
        ]);
        let mut tx = self.doc.transaction();
        tx.batch_create_object(&self.channel, key, &fields.into(), false)?;
        tx.commit();
        let change = self
            .doc
            .get_last_local_change()
            .ok_or_else(|| anyhow!("a write made no change"))?;
        Ok(change.raw_bytes().to_vec())
    }

    /// Applies a peer's change, given as its bytes; an error if they hold no new change
    /// (`load_incremental` keeps what it could read and ignores the rest).
    pub(crate) fn apply(&mut self, change: &[u8]) -> anyhow::Result<()> {
        let before = self.doc.get_heads();
        self.doc
            .load_incremental(change)
            .context("a received change")?;
        anyhow::ensure!(
            self.doc.get_heads() != before,
            "a frame of {} bytes without a new change",
            change.len()
        );
        Ok(())
    }

    /// The stamp `key`'s record holds, if the document has it.
    pub(crate) fn stamp(&self, key: &str) -> Option<i64> {
        let (Value::Object(ObjType::Map), record) = self.doc.get(&self.channel, key).ok()?? else {
            return None;
        };
        match self.doc.get(&record, "v").ok()?? {
            (Value::Scalar(s), _) => match s.as_ref() {
                ScalarValue::Int(stamp) => Some(*stamp),
                _ => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn peer(seed: u64) -> PeerId {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        PeerId::generate(1_700_000_000_000 + seed, &mut rng)
    }

    #[test]
    fn a_written_record_is_read_back_from_its_change_in_another_document() -> anyhow::Result<()> {
        let (mut a, mut b) = (FloorDocument::new(peer(1))?, FloorDocument::new(peer(2))?);
        let change = a.write("s0", 42)?;
        assert_eq!(b.stamp("s0"), None);
        b.apply(&change)?;
        assert_eq!(b.stamp("s0"), Some(42));
        // Both ways, after each other's changes: the base is one change, not one per window.
        let back = b.write("s1", 7)?;
        a.apply(&back)?;
        assert_eq!(a.stamp("s1"), Some(7));
        assert_eq!(a.doc.get_heads(), b.doc.get_heads());
        Ok(())
    }

    #[test]
    fn garbage_or_a_change_held_already_is_an_error_not_a_record() -> anyhow::Result<()> {
        let (mut a, mut b) = (FloorDocument::new(peer(3))?, FloorDocument::new(peer(4))?);
        assert!(a.apply(b"not a change").is_err());
        assert_eq!(a.stamp("s0"), None);
        let change = b.write("s0", 1)?;
        a.apply(&change)?;
        assert!(a.apply(&change).is_err());
        Ok(())
    }
}
