//! The presence index: the presence-scoped entries of each writer, kept up to date with
//! every change to the document, so that a writer's death costs a lookup of its own entries,
//! not a scan of all, and a read learns whether a record is visible without reading its
//! fields.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::EntryKind;
use crate::PeerId;

/// The presence-scoped entries of each writer, and the presence-scoped records (see the
/// module docs).
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct PresenceIndex {
    /// Flat record keys and counter names, by writer.
    pub(super) by_writer: BTreeMap<PeerId, BTreeSet<(EntryKind, String)>>,
    /// The presence-scoped records, each with its writer (`None`: a writer that is no peer
    /// id, so the record is never visible). Records can change hands or scope.
    record_writer: HashMap<String, Option<PeerId>>,
}

impl PresenceIndex {
    /// Files record `flat`: `Some(writer)` when it is presence-scoped (filed under its writer
    /// when that is a peer id), `None` when it is durable or deleted.
    pub(super) fn set_record(&mut self, flat: &str, presence: Option<Option<PeerId>>) {
        let old = self.record_writer.get(flat).copied();
        if old == presence {
            return;
        }
        if let Some(old) = old {
            self.record_writer.remove(flat);
            if let Some(old) = old
                && let Some(set) = self.by_writer.get_mut(&old)
            {
                set.remove(&(EntryKind::Record, flat.to_owned()));
                if set.is_empty() {
                    self.by_writer.remove(&old);
                }
            }
        }
        if let Some(writer) = presence {
            self.record_writer.insert(flat.to_owned(), writer);
            if let Some(w) = writer {
                self.by_writer
                    .entry(w)
                    .or_default()
                    .insert((EntryKind::Record, flat.to_owned()));
            }
        }
    }

    /// Whether record `flat` is visible: durable, or presence-scoped with a live writer (the
    /// rule of every read).
    pub(super) fn visible(&self, flat: &str, is_live: &impl Fn(&PeerId) -> bool) -> bool {
        match self.record_writer.get(flat) {
            None => true,
            Some(writer) => writer.is_some_and(|w| is_live(&w)),
        }
    }

    /// Whether no record is presence-scoped (every record is visible).
    pub(super) fn is_empty(&self) -> bool {
        self.record_writer.is_empty()
    }

    /// Files counter `name`'s presence-scoped entry of `writer` (counter entries are never
    /// deleted).
    pub(super) fn add_counter(&mut self, name: &str, writer: PeerId) {
        self.by_writer
            .entry(writer)
            .or_default()
            .insert((EntryKind::Counter, name.to_owned()));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use automerge::ReadDoc;
    use automerge::transaction::Transactable;

    use super::super::tests::{replica, sync};
    use super::super::{Replica, SEP, Scope, channel_obj};
    use crate::PeerId;

    /// The visible keys of `channel` found the slow way, from each record's fields: what
    /// [`Replica::keys`] must return from the presence index.
    pub(in crate::replica) fn scanned_visible_keys(
        r: &Replica,
        channel: &str,
        is_live: impl Fn(&PeerId) -> bool,
    ) -> Vec<String> {
        let Some(ch) = channel_obj(&r.doc, &r.layout.records, channel) else {
            return Vec::new();
        };
        r.doc
            .map_range(&ch, ..)
            .filter(|item| matches!(item.value, automerge::ValueRef::Object(_)))
            .filter(|item| match r.record_meta(&item.id()) {
                (_, false) => true,
                (writer, true) => writer.is_some_and(|w| is_live(&w)),
            })
            .map(|item| item.key.to_string())
            .collect()
    }

    /// A presence-scoped record whose writer field is no peer id (a peer running something
    /// else than statemesh) is never visible, as when reads looked at each record's fields;
    /// overwritten by a durable write, it shows again.
    #[test]
    fn a_presence_record_of_no_peer_is_hidden() {
        let (mut a, mut b) = (replica(1), replica(2));
        b.transact(|tx| {
            tx.put("c", "k", &1u64, Scope::Presence)?;
            tx.put("c", "d", &2u64, Scope::Durable)
        })
        .expect("writes");
        let ch = channel_obj(&b.doc, &b.layout.records, "c").expect("the channel");
        let (_, rec) = b.doc.get(&ch, "k").expect("read").expect("the record");
        let mut tx = b.doc.transaction();
        tx.put(&rec, "w", "not a peer").expect("forged");
        tx.commit();
        let before = a.heads();
        sync(&mut a, &mut b);
        // The change notification files received records, as the node's receive does.
        a.touched_since(&before);
        let everyone = |_: &PeerId| true;
        assert_eq!(a.keys("c", everyone), vec!["d".to_owned()]);
        assert_eq!(
            a.keys("c", everyone),
            scanned_visible_keys(&a, "c", everyone)
        );
        assert_eq!(a.get::<u64>("c", "k", everyone).expect("read"), None);
        assert!(a.presence.record_writer.contains_key(&format!("c{SEP}k")));
        let before = a.heads();
        a.transact(|tx| tx.put("c", "k", &3u64, Scope::Durable))
            .expect("write");
        a.touched_since(&before);
        assert_eq!(a.keys("c", everyone), vec!["d".to_owned(), "k".to_owned()]);
        assert_eq!(a.get::<u64>("c", "k", everyone).expect("read"), Some(3));
    }
}
