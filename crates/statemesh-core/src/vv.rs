//! Version vectors of heartbeat positions, merged by pointwise maximum.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::PeerId;

/// A heartbeat position of one peer: its incarnation, then its heartbeat counter.
///
/// Ordered lexicographically, so any beat of a newer incarnation is newer than every beat of an
/// older one.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Beat {
    /// The incarnation number.
    pub incarnation: u64,
    /// The heartbeat counter, which only grows.
    pub counter: u64,
}

/// A version vector: for each peer, the highest [`Beat`] seen.
///
/// Merging takes the pointwise maximum, which is commutative, associative and idempotent, so
/// views can be relayed, duplicated and reordered freely.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<PeerId, Beat>);

impl VersionVector {
    /// An empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest beat seen of `peer`.
    pub fn get(&self, peer: &PeerId) -> Option<Beat> {
        self.0.get(peer).copied()
    }

    /// Raises the entry of `peer` to `beat`; returns true if it rose.
    pub fn observe(&mut self, peer: PeerId, beat: Beat) -> bool {
        match self.0.get_mut(&peer) {
            Some(b) if *b >= beat => false,
            Some(b) => {
                *b = beat;
                true
            }
            None => {
                self.0.insert(peer, beat);
                true
            }
        }
    }

    /// Pointwise maximum with `other`; returns the peers whose entry rose.
    pub fn merge(&mut self, other: &Self) -> Vec<PeerId> {
        other
            .0
            .iter()
            .filter(|(p, b)| self.observe(**p, **b))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether every entry of `other` is at most the matching entry of `self`.
    pub fn dominates(&self, other: &Self) -> bool {
        other
            .0
            .iter()
            .all(|(p, b)| self.0.get(p).is_some_and(|mine| mine >= b))
    }

    /// The entries, in peer id order.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &Beat)> {
        self.0.iter()
    }

    /// Removes the entry of `peer`.
    pub fn remove(&mut self, peer: &PeerId) {
        self.0.remove(peer);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(PeerId, Beat)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (PeerId, Beat)>>(iter: I) -> Self {
        let mut v = Self::new();
        for (p, b) in iter {
            v.observe(p, b);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::id::test_peer as peer;

    fn vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u8..6, 0u64..3, 0u64..20), 0..8).prop_map(|entries| {
            entries
                .into_iter()
                .map(|(p, i, c)| {
                    (
                        peer(p),
                        Beat {
                            incarnation: i,
                            counter: c,
                        },
                    )
                })
                .collect()
        })
    }

    fn merged(a: &VersionVector, b: &VersionVector) -> VersionVector {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in vv(), b in vv()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in vv(), b in vv(), c in vv()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in vv(), b in vv()) {
            let m = merged(&a, &b);
            prop_assert_eq!(merged(&m, &b), m.clone());
            prop_assert_eq!(merged(&a, &a), a.clone());
        }

        #[test]
        fn merge_is_an_upper_bound(a in vv(), b in vv()) {
            let m = merged(&a, &b);
            prop_assert!(m.dominates(&a));
            prop_assert!(m.dominates(&b));
        }

        #[test]
        fn merge_reports_exactly_the_risen_entries(a in vv(), b in vv()) {
            let mut m = a.clone();
            let risen = m.merge(&b);
            for (p, beat) in m.iter() {
                let rose = a.get(p).is_none_or(|old| old < *beat);
                prop_assert_eq!(risen.contains(p), rose);
            }
        }
    }
}
