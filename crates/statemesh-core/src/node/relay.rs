//! Changes received from a peer, held back from the other peers for a while: their writer
//! sends them to every peer it is linked to, so a copy relayed at once is most often a copy
//! its receiver gets twice.
//!
//! Automerge's sync protocol sends a peer every change its last message did not show it
//! holding. A window that receives a change and then answers, or pushes to, another peer
//! includes that change whenever the other peer's last message predates it, which in a
//! working mesh is almost always: the other peer hears it from its writer a moment later. At
//! 8 windows writing 100 keys per change (`throughput --peers 8 --batch 100`) 69-73 % of the
//! changes received were held already (counted in a scratch build): 218-226 MB of changes
//! carried where about 60 MB were new.
//!
//! A change received from a peer is therefore marked sent in the sync state of every other
//! link (Automerge sends nothing it believes sent) for [`RELAY_HOLD_BEATS`] heartbeat
//! intervals, and the mark is taken back at the end, when the peer asks for the change by hash
//! (its need: it holds a change that depends on it), or when an exchange stops progressing.
//! The marks are made when a change arrives and taken back once, so a sync message costs
//! nothing more to generate however many changes are held. A change still reaches a peer that
//! can only get it relayed (a peer not linked to its writer, or whose writer died before
//! sending it): once the hold is over, the next sync round carries it, and the views that keep
//! differing meanwhile owe that round (see `RELAY_GRACE_HALF_BEATS`).

use std::collections::{HashSet, VecDeque};

use automerge::ChangeHash;

use super::Node;
use crate::{PeerId, Time};

/// How long, in heartbeat intervals, a change received from a peer is held back from the
/// others: five (1 s at the default 200 ms). Measured (release, back to back with the build
/// before): `throughput --peers 4 --batch 1` received 32.2 / 31.6 MB mesh-wide instead of
/// 49.1 / 48.1 at the same rate (7,017 / 7,309 against 7,001 / 7,081 updates/s); `overload
/// --peers 8` 311 MB instead of 362. A window 300 ms of writes behind still gets relays from
/// a hold of 300 ms: `scale` at 64 windows sent as many sync messages per write with it.
/// `throughput --peers 8 --batch 100`, whose receivers are seconds behind, keeps most of its
/// duplicates (18,992 changes received held already instead of 21,182).
pub(super) const RELAY_HOLD_BEATS: u32 = 5;

/// The most changes held at once; past it the oldest are released early (a flood of changes
/// costs relays, never memory).
const MAX_HELD: usize = 4096;

/// The most marks made at once over all links (each about 80 bytes: an entry in the link's
/// `held` and one in its sync state's sent hashes): with many links fewer changes are held
/// (64 windows: 520), so that the marks stay under about 2.6 MB.
const MAX_MARKS: usize = 32 * 1024;

/// The changes held back, with when each arrived.
#[derive(Debug, Default)]
pub(super) struct RelayHold {
    order: VecDeque<(Time, ChangeHash)>,
    held: HashSet<ChangeHash>,
}

impl Node {
    /// Holds back `hashes`, received at `now` from `from`, from every other linked peer whose
    /// sync state is here (a link whose state is with a job is left out: its job's messages
    /// may relay them).
    pub(super) fn hold_received(&mut self, now: Time, from: PeerId, hashes: Vec<ChangeHash>) {
        for hash in hashes {
            if !self.relay.held.insert(hash) {
                continue;
            }
            self.relay.order.push_back((now, hash));
            for (peer, link) in &mut self.links {
                if *peer != from && !link.busy && link.sync.sent_hashes.insert(hash) {
                    link.held.insert(hash);
                }
            }
        }
        let most = MAX_HELD.min(MAX_MARKS / self.links.len().max(1));
        while self.relay.order.len() > most {
            if let Some((_, hash)) = self.relay.order.pop_front() {
                self.release(hash);
            }
        }
    }

    /// Releases what has been held long enough at `now`.
    pub(super) fn release_held(&mut self, now: Time) {
        let hold = self.config.heartbeat_interval * RELAY_HOLD_BEATS;
        while let Some((at, hash)) = self.relay.order.front().copied() {
            if now.saturating_since(at) < hold {
                break;
            }
            self.relay.order.pop_front();
            self.release(hash);
        }
    }

    fn release(&mut self, hash: ChangeHash) {
        self.relay.held.remove(&hash);
        for link in self.links.values_mut() {
            if link.busy {
                // Its state is with a job: the mark comes back with it (`settle_held`).
                link.held_stale |= link.held.contains(&hash);
            } else if link.held.remove(&hash) {
                link.sync.sent_hashes.remove(&hash);
            }
        }
    }

    /// Before a sync message is generated for `peer` (its state is here): the marks of changes
    /// released while its state was with a job are taken back, and so are those of changes
    /// the peer asks for, or all of them when the last round left both sides where they were
    /// (a peer may lack a held change and be unable to name it).
    pub(super) fn settle_held(&mut self, peer: PeerId) {
        let now = self.last_tick;
        self.release_held(now);
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if link.held.is_empty() || link.busy {
            return;
        }
        if link.idle_rounds > 0 {
            for hash in link.held.drain() {
                link.sync.sent_hashes.remove(&hash);
            }
            link.held_stale = false;
            return;
        }
        if std::mem::take(&mut link.held_stale) {
            let held = &self.relay.held;
            let sent = &mut link.sync.sent_hashes;
            link.held.retain(|hash| {
                let keep = held.contains(hash);
                if !keep {
                    sent.remove(hash);
                }
                keep
            });
        }
        for hash in link.sync.their_need.iter().flatten() {
            if link.held.remove(hash) {
                link.sync.sent_hashes.remove(hash);
            }
        }
    }

    /// How many changes are held.
    #[cfg(test)]
    pub(super) fn held_count(&self) -> usize {
        self.relay.order.len()
    }
}
