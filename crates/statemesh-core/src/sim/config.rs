//! The settings of a simulated network.

use std::time::Duration;

use crate::Config;

/// Settings of a simulated network.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// Number of peers started at once.
    pub peers: usize,
    /// Node configuration.
    pub node: Config,
    /// Smallest one-way delay.
    pub min_delay: Duration,
    /// Largest one-way delay (delays are uniform in between, so messages reorder).
    pub max_delay: Duration,
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Whether all peers share one machine: a crash then closes its local sockets, a certain
    /// death signal to its peers.
    pub same_machine: bool,
    /// The largest delay before a new process's links come up (discovery, dialling): each link
    /// of a starting process comes up after a delay uniform up to this. Zero: at once.
    pub connect_delay: Duration,
    /// Time to write and fsync persisted bytes: uniform between the two.
    pub persist_delay: (Duration, Duration),
    /// Whether frames are handed over as statemesh's runtime does: a sync message carrying
    /// more than a few changes is applied by a job that takes [`JOB_TIME`], frames arriving
    /// meanwhile are held, and those held when it ends join the next job
    /// (`Node::handle_frame_deferred`, `Node::join_frame`, `Node::retry_job`). Otherwise every
    /// frame is handled at once (`Node::handle_frame`). On for odd seeds.
    pub jobs: bool,
    /// A deliberate bug, for testing the tests: the runtime reports bytes persisted as soon as
    /// it takes them, before they are on disk, so writes are acknowledged durable too early.
    pub bug_ack_before_fsync: bool,
}

/// How long a simulated sync job runs (see [`SimConfig::jobs`]).
pub const JOB_TIME: Duration = Duration::from_millis(2);

impl SimConfig {
    /// A lossless, low-latency network of `peers` peers.
    pub fn new(seed: u64, peers: usize) -> Self {
        Self {
            seed,
            peers,
            node: Config::default(),
            min_delay: Duration::from_micros(100),
            max_delay: Duration::from_millis(20),
            drop: 0.0,
            duplicate: 0.0,
            same_machine: false,
            connect_delay: Duration::ZERO,
            persist_delay: (Duration::from_micros(200), Duration::from_millis(30)),
            jobs: seed % 2 == 1,
            bug_ack_before_fsync: false,
        }
    }

    /// Reads `SEED` and `PEERS` from the environment, falling back to the given defaults.
    pub fn from_env(default_seed: u64, default_peers: usize) -> Self {
        let seed = std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_seed);
        let peers = std::env::var("PEERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_peers);
        Self::new(seed, peers)
    }
}
