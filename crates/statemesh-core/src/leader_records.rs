//! Leader records: what the probe leader writes under its term, kept out of the document.
//!
//! A probe leader may rewrite every probed endpoint every second. In the Automerge document that
//! would grow history without bound (every change is kept forever), so leader records live in a
//! small last-writer-wins store instead: one entry per (channel, key), ordered by
//! (term, writer, sequence number) — a record's term is the pair (term number, writer), see
//! [`Term`] — gossiped to every link and repaired by digest comparison.
//! An entry is visible only while its writer is live and its term is the newest known: the probe
//! results of a dead or deposed leader disappear with it, and a leader that lost leadership
//! cannot overwrite what its successor wrote.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::PeerId;
use crate::codec::LeaderRecord;
use crate::election::Term;

/// The store of leader records of one peer.
#[derive(Clone, Debug, Default)]
pub struct LeaderStore {
    records: BTreeMap<String, BTreeMap<String, LeaderRecord>>,
    len: usize,
    my_seq: u64,
    /// XOR of every stored record's hash: order-independent, updated in O(1) per merge.
    digest: [u8; 8],
}

fn order(r: &LeaderRecord) -> (Term, u64) {
    (term_of(r), r.seq)
}

/// The term a record was written under: its number, led by its writer.
pub fn term_of(r: &LeaderRecord) -> Term {
    Term::new(r.term, r.writer)
}

/// Whether `r` is visible to a reader whose newest known term is `newest`: a value, written
/// under that very term (or a newer one, not yet known as a claim), by a live writer.
fn shown(r: &LeaderRecord, newest: Option<Term>, is_live: &impl Fn(&PeerId) -> bool) -> bool {
    r.value.is_some() && Some(term_of(r)) >= newest && is_live(&r.writer)
}

fn record_hash(r: &LeaderRecord) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(r.channel.as_bytes());
    h.update([0]);
    h.update(r.key.as_bytes());
    h.update([0]);
    h.update(r.writer.to_bytes());
    h.update(r.term.to_be_bytes());
    h.update(r.seq.to_be_bytes());
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

fn xor(acc: &mut [u8; 8], h: [u8; 8]) {
    for (a, b) in acc.iter_mut().zip(h) {
        *a ^= b;
    }
}

impl LeaderStore {
    /// The next sequence number for this peer's own leader writes.
    pub fn next_seq(&mut self) -> u64 {
        self.my_seq += 1;
        self.my_seq
    }

    /// Merges a record; returns true if it replaced what was stored.
    pub fn merge(&mut self, record: LeaderRecord) -> bool {
        let channel = match self.records.get_mut(&record.channel) {
            Some(c) => c,
            None => self.records.entry(record.channel.clone()).or_default(),
        };
        if channel
            .get(&record.key)
            .is_some_and(|old| order(old) >= order(&record))
        {
            return false;
        }
        xor(&mut self.digest, record_hash(&record));
        match channel.insert(record.key.clone(), record) {
            Some(old) => xor(&mut self.digest, record_hash(&old)),
            None => self.len += 1,
        }
        true
    }

    /// The stored record of (channel, key), visible or not.
    pub fn get(&self, channel: &str, key: &str) -> Option<&LeaderRecord> {
        self.records.get(channel)?.get(key)
    }

    /// The current value of (channel, key) if present, not deleted, written under term `newest`
    /// (the newest the reader knows) or a newer one, and by a live writer.
    pub fn visible(
        &self,
        channel: &str,
        key: &str,
        newest: Option<Term>,
        is_live: impl Fn(&PeerId) -> bool,
    ) -> Option<&LeaderRecord> {
        self.get(channel, key)
            .filter(|r| shown(r, newest, &is_live))
    }

    /// Visible keys of `channel`, in order.
    pub fn keys(
        &self,
        channel: &str,
        newest: Option<Term>,
        is_live: impl Fn(&PeerId) -> bool,
    ) -> Vec<String> {
        self.records
            .get(channel)
            .into_iter()
            .flat_map(|c| c.iter())
            .filter(|(_, r)| shown(r, newest, &is_live))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Channels with at least one record, in order.
    pub fn channels(&self) -> Vec<String> {
        self.records.keys().cloned().collect()
    }

    /// Every record, for a full push to a peer.
    pub fn all(&self) -> Vec<LeaderRecord> {
        self.records
            .values()
            .flat_map(|c| c.values().cloned())
            .collect()
    }

    /// Drops records of writers that are dead (they can never be visible again).
    pub fn prune(&mut self, is_dead: impl Fn(&PeerId) -> bool) {
        for channel in self.records.values_mut() {
            channel.retain(|_, r| !is_dead(&r.writer));
        }
        self.records.retain(|_, c| !c.is_empty());
        self.digest = [0; 8];
        self.len = 0;
        for r in self.records.values().flat_map(|c| c.values()) {
            xor(&mut self.digest, record_hash(r));
            self.len += 1;
        }
    }

    /// A digest of the store: equal digests mean (with overwhelming probability) equal stores.
    pub fn digest(&self) -> [u8; 8] {
        self.digest
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::id::test_peer as peer;

    fn record(k: u8, w: u8, term: u64, seq: u64) -> LeaderRecord {
        LeaderRecord {
            channel: "probes".into(),
            key: format!("k{k}"),
            writer: peer(w),
            term,
            seq,
            value: Some(crate::Value::Uint(seq).to_tokens()),
        }
    }

    proptest! {
        #[test]
        fn merge_order_never_matters(mut recs in proptest::collection::vec((0u8..4, 0u8..3, 0u64..4, 0u64..6), 0..20)) {
            let mut a = LeaderStore::default();
            for (k, w, t, s) in &recs {
                a.merge(record(*k, *w, *t, *s));
            }
            recs.reverse();
            let mut b = LeaderStore::default();
            for (k, w, t, s) in &recs {
                b.merge(record(*k, *w, *t, *s));
                // Duplicates change nothing.
                prop_assert!(!b.merge(record(*k, *w, *t, *s)));
            }
            prop_assert_eq!(a.all(), b.all());
            prop_assert_eq!(a.digest(), b.digest());
            prop_assert_eq!(a.len(), b.len());
        }
    }

    #[test]
    fn newer_terms_win_and_dead_writers_are_pruned() {
        let mut s = LeaderStore::default();
        assert!(s.merge(record(1, 2, 5, 100)));
        assert!(
            !s.merge(record(1, 1, 4, 900)),
            "an older term never overwrites"
        );
        assert!(s.merge(record(1, 1, 6, 1)));
        assert_eq!(s.get("probes", "k1").map(|r| r.writer), Some(peer(1)));
        assert!(
            s.visible("probes", "k1", Some(Term::new(7, peer(0))), |_| true)
                .is_none(),
            "stale term hidden"
        );
        assert!(
            s.visible("probes", "k1", Some(Term::new(6, peer(1))), |p| *p
                != peer(1))
                .is_none(),
            "dead writer hidden"
        );
        assert!(
            s.visible("probes", "k1", Some(Term::new(6, peer(1))), |_| true)
                .is_some()
        );
        let before = s.digest();
        s.prune(|p| *p == peer(1));
        assert!(s.is_empty());
        assert_ne!(s.digest(), before);
        assert_eq!(s.digest(), LeaderStore::default().digest());
    }

    #[test]
    fn one_number_claimed_by_two_leaders_names_two_terms() {
        // Two peers led under term number 3 (they claimed at the same moment): the records of
        // the older term, (3, peer 1), are hidden from a reader that knows (3, peer 2), and
        // never overwrite the newer term's.
        let mut s = LeaderStore::default();
        assert!(s.merge(record(1, 2, 3, 1)));
        assert!(
            !s.merge(record(1, 1, 3, 50)),
            "the older term never overwrites"
        );
        assert!(s.merge(record(2, 1, 3, 51)));
        let newest = Some(Term::new(3, peer(2)));
        assert_eq!(s.keys("probes", newest, |_| true), vec!["k1".to_string()]);
        assert!(s.visible("probes", "k2", newest, |_| true).is_none());
        // A reader that knows only (3, peer 1) shows it: it is the newest term it knows.
        let older = Some(Term::new(3, peer(1)));
        assert_eq!(s.keys("probes", older, |_| true).len(), 2);
    }
}
