//! Tunables of a node, with the defaults the project measured and documented.

use std::time::Duration;

/// The default hard limit on one frame: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Configuration of one [`Node`](crate::Node).
///
/// The defaults need no tuning for a desktop mesh on one machine or a LAN; see
/// `docs/architecture.md` for the reasoning behind each.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// How often this peer bumps its heartbeat counter and gossips its view. Default 200 ms.
    pub heartbeat_interval: Duration,
    /// How long without fresh news of a peer (directly or relayed) before its incarnation is
    /// judged dead. Default 1 s.
    pub suspect_timeout: Duration,
    /// After a link closed without a certain death signal (a closed QUIC connection), how long
    /// without fresh news before the peer is judged dead. Default 2 × heartbeat interval + 50 ms,
    /// enough for a relayed heartbeat to arrive when the peer is in fact alive.
    pub hint_timeout: Duration,
    /// How long a new peer (or one waking from a freeze) listens before it may count itself as a
    /// leader candidate, unless the runtime says discovery has settled earlier. Default 600 ms.
    pub join_grace: Duration,
    /// Hard limit on the size of one frame, checked before allocating. Default 16 MiB.
    pub max_frame: usize,
    /// Whether this peer may become the probe leader. Default true.
    pub eligible: bool,
    /// A sync exchange with a peer whose document differs is restarted from a fresh sync state
    /// when neither document has progressed for this long while the peer kept sending views
    /// (at least three unchanged ones): a peer too busy to answer is left to catch up, since a
    /// restart makes Automerge send it everything again. Default 1 s.
    pub sync_stall_timeout: Duration,
    /// A full snapshot replaces the incremental saves once this many of them followed the last
    /// one and their bytes amount to its size (so that a large document is not saved whole
    /// every few writes of a burst), and to [`compact_min_bytes`](Self::compact_min_bytes).
    /// Default 64.
    pub compact_every: usize,
    /// The fewest bytes of incremental saves a snapshot replaces. A compaction has a fixed cost
    /// (a full save, a synced temporary file, a rename, a synced directory) that a small file
    /// does not repay: while a document grows from nothing it was compacted every time its
    /// saves amounted to its size, about ten times in its first thousand records, and each
    /// took the cores that the window's and its peers' threads were waiting for
    /// (`propagation`, docs/under-load.md, twenty-fourth slice). The stored state stays within
    /// a snapshot plus the larger of its size and this. Default 64 KiB.
    pub compact_min_bytes: usize,
    /// How long a tombstone (a dead incarnation) keeps being gossiped. Default 30 s.
    pub tombstone_gossip: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let heartbeat_interval = Duration::from_millis(200);
        Self {
            heartbeat_interval,
            suspect_timeout: Duration::from_secs(1),
            hint_timeout: heartbeat_interval * 2 + Duration::from_millis(50),
            join_grace: Duration::from_millis(600),
            max_frame: DEFAULT_MAX_FRAME,
            eligible: true,
            sync_stall_timeout: Duration::from_secs(1),
            compact_every: 64,
            compact_min_bytes: 64 * 1024,
            tombstone_gossip: Duration::from_secs(30),
        }
    }
}
