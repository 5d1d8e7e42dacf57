//! Leader records: what the probe leader writes under its term, kept out of the document.
//!
//! A probe leader may rewrite every probed endpoint every second. In the Automerge document that
//! would grow history without bound (every change is kept forever), so leader records live in a
//! small last-writer-wins store instead: one entry per (channel, key), ordered by
//! (term, writer, sequence number), gossiped to every link and repaired by digest comparison.
//! An entry is visible only while its writer is live and its term is the newest known: the probe
//! results of a dead or deposed leader disappear with it, and a leader that lost leadership
//! cannot overwrite what its successor wrote.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::PeerId;
use crate::codec::LeaderRecord;

/// The store of leader records of one peer.
#[derive(Clone, Debug, Default)]
pub struct LeaderStore {
    records: BTreeMap<(String, String), LeaderRecord>,
    my_seq: u64,
}

fn order(r: &LeaderRecord) -> (u64, PeerId, u64) {
    (r.term, r.writer, r.seq)
}

impl LeaderStore {
    /// The next sequence number for this peer's own leader writes.
    pub fn next_seq(&mut self) -> u64 {
        self.my_seq += 1;
        self.my_seq
    }

    /// Merges a record; returns true if it replaced what was stored.
    pub fn merge(&mut self, record: LeaderRecord) -> bool {
        let key = (record.channel.clone(), record.key.clone());
        match self.records.get(&key) {
            Some(old) if order(old) >= order(&record) => false,
            _ => {
                self.records.insert(key, record);
                true
            }
        }
    }

    /// The stored record of (channel, key), visible or not.
    pub fn get(&self, channel: &str, key: &str) -> Option<&LeaderRecord> {
        self.records.get(&(channel.to_owned(), key.to_owned()))
    }

    /// The current value of (channel, key) if present, not deleted, written under `term` or a
    /// newer one, and by a live writer.
    pub fn visible(
        &self,
        channel: &str,
        key: &str,
        term: u64,
        is_live: impl Fn(&PeerId) -> bool,
    ) -> Option<&LeaderRecord> {
        self.get(channel, key)
            .filter(|r| r.value.is_some() && r.term >= term && is_live(&r.writer))
    }

    /// Visible keys of `channel`, in order.
    pub fn keys(&self, channel: &str, term: u64, is_live: impl Fn(&PeerId) -> bool) -> Vec<String> {
        self.records
            .range((channel.to_owned(), String::new())..)
            .take_while(|((c, _), _)| c == channel)
            .filter(|(_, r)| r.value.is_some() && r.term >= term && is_live(&r.writer))
            .map(|((_, k), _)| k.clone())
            .collect()
    }

    /// Channels with at least one record, in order.
    pub fn channels(&self) -> Vec<String> {
        let mut out: Vec<String> = self.records.keys().map(|(c, _)| c.clone()).collect();
        out.dedup();
        out
    }

    /// Every record, for a full push to a peer.
    pub fn all(&self) -> Vec<LeaderRecord> {
        self.records.values().cloned().collect()
    }

    /// Records written by `writer`.
    pub fn written_by(&self, writer: PeerId) -> impl Iterator<Item = &LeaderRecord> {
        self.records.values().filter(move |r| r.writer == writer)
    }

    /// Drops records of writers that are dead (they can never be visible again).
    pub fn prune(&mut self, is_dead: impl Fn(&PeerId) -> bool) {
        self.records.retain(|_, r| !is_dead(&r.writer));
    }

    /// A digest of the store: equal digests mean equal stores.
    pub fn digest(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        for ((c, k), r) in &self.records {
            h.update(c.as_bytes());
            h.update([0]);
            h.update(k.as_bytes());
            h.update([0]);
            h.update(r.writer.to_bytes());
            h.update(r.term.to_be_bytes());
            h.update(r.seq.to_be_bytes());
        }
        let d = h.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&d[..8]);
        out
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}
