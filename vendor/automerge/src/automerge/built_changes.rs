//! statemesh patch: changes rebuilt from the op set, kept by hash for the next sync message.
//!
//! A change is stored only as operations in the op set, so every sync message rebuilds the
//! changes it carries (`ChangeCollector::for_hashes`), once per peer: a document that sends its
//! new changes to seven peers rebuilt each of them seven times. A change's bytes never change
//! (the hash is of its bytes), so a rebuilt change is kept here, by hash, and the next message
//! that carries it, or the next `get_changes` or `save_after`, takes the copy. Bounded by count
//! and bytes; oldest out first. A clone of the document shares its copies with the original
//! (a hash names the same bytes in every document), so a copy made to generate or apply sync
//! messages on another thread rebuilds nothing the original already did, and the other way
//! round. Only changes rebuilt from an op set are kept, never changes as received, so
//! `Automerge::rebuild_changes` can still check that received changes rebuild as they came.
//! The lock is never held while a change is rebuilt.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Change, ChangeHash};

/// Most changes kept.
const MAX_CHANGES: usize = 1024;
/// Most bytes of changes kept.
const MAX_BYTES: usize = 4 << 20;

#[derive(Default)]
pub(crate) struct BuiltChanges(Arc<Mutex<Kept>>);

#[derive(Default)]
pub(crate) struct Kept {
    by_hash: HashMap<ChangeHash, Change>,
    order: VecDeque<ChangeHash>,
    bytes: usize,
}

impl BuiltChanges {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Kept> {
        // A panic while holding the lock leaves a consistent map (every insert is whole).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Kept {
    /// The kept changes among `hashes` (by hash), and the hashes of the others, each once.
    pub(crate) fn split(
        &self,
        hashes: &[ChangeHash],
    ) -> (HashMap<ChangeHash, Change>, Vec<ChangeHash>) {
        let mut found = HashMap::with_capacity(hashes.len());
        let mut missing = Vec::new();
        let mut seen = HashSet::with_capacity(hashes.len());
        for hash in hashes {
            if !seen.insert(*hash) {
                continue;
            }
            match self.by_hash.get(hash) {
                Some(change) => {
                    found.insert(*hash, change.clone());
                }
                None => missing.push(*hash),
            }
        }
        (found, missing)
    }

    pub(crate) fn insert(&mut self, change: &Change) {
        let len = change.raw_bytes().len();
        if len > MAX_BYTES / 4 || self.by_hash.contains_key(&change.hash()) {
            return;
        }
        while self.order.len() >= MAX_CHANGES || self.bytes + len > MAX_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(c) = self.by_hash.remove(&old) {
                self.bytes -= c.raw_bytes().len();
            }
        }
        self.order.push_back(change.hash());
        self.by_hash.insert(change.hash(), change.clone());
        self.bytes += len;
    }
}

impl Clone for BuiltChanges {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl std::fmt::Debug for BuiltChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltChanges")
            .field("kept", &self.lock().order.len())
            .finish()
    }
}
