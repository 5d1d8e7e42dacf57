//! The document's layout: its version, the genesis change every peer builds byte for byte the
//! same, and the change that creates a channel's map (the same on every peer too).

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ObjId, ObjType, ROOT, ReadDoc};

/// The layout version, stored in the genesis change as meta `"schema"`. Version 1 kept every
/// record in one flat map (`"<channel>\u{1f}<key>"` -> record); version 2 gives each channel a
/// map of its own. Files of version 1 are migrated on load (see `legacy`).
pub const SCHEMA: u64 = 2;

/// The object ids of the genesis containers.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    pub(super) records: ObjId,
    pub(super) counters: ObjId,
    pub(super) terms: ObjId,
}

/// Builds the genesis document: identical, byte for byte, on every peer.
pub(super) fn genesis() -> (Automerge, Layout) {
    let mut doc = Automerge::new().with_actor(ActorId::from([0u8; 16].as_slice()));
    let mut tx = doc.transaction();
    let layout = (|| -> Result<Layout, automerge::AutomergeError> {
        let records = tx.put_object(ROOT, "r", ObjType::Map)?;
        let counters = tx.put_object(ROOT, "c", ObjType::Map)?;
        let meta = tx.put_object(ROOT, "m", ObjType::Map)?;
        tx.put(&meta, "schema", SCHEMA)?;
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

/// The actor that creates channel `channel`'s map: derived from the name alone, so every peer
/// names it the same.
pub(super) fn channel_actor(channel: &str) -> ActorId {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"statemesh channel map\0");
    h.update(channel.as_bytes());
    let d = h.finalize();
    ActorId::from(&d[..16])
}

/// The change that creates channel `channel`'s map, byte for byte the same on every peer: made
/// on a document holding only the genesis change, by the channel's own actor
/// ([`channel_actor`]), at time 0, without a message, with the one operation
/// `put_object(records, channel, Map)`. Its dependencies (the genesis change), its sequence
/// number (1) and its first operation number (right after the genesis change's) come from
/// that document, not from the local one, so two peers creating the channel at once make the
/// very same change, which Automerge keeps once (changes are known by their hash).
pub(crate) fn channel_change(channel: &str) -> automerge::Change {
    let (doc, layout) = genesis();
    let mut doc = doc.with_actor(channel_actor(channel));
    let mut tx = doc.transaction();
    tx.put_object(&layout.records, channel, ObjType::Map)
        .unwrap_or_else(|e| unreachable!("a put into the genesis records map cannot fail: {e}"));
    tx.commit_with(CommitOptions::default().with_time(0));
    doc.get_last_local_change()
        .unwrap_or_else(|| unreachable!("the channel change was just committed"))
}

/// Channel `channel`'s map in `doc`, if it has one.
pub(super) fn channel_obj(doc: &impl ReadDoc, records: &ObjId, channel: &str) -> Option<ObjId> {
    match doc.get(records, channel).ok()? {
        Some((automerge::Value::Object(ObjType::Map), id)) => Some(id),
        _ => None,
    }
}
