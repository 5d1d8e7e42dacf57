//! What a mesh operation can fail with: [`MeshError`], and [`AckError`] for acknowledgements
//! that will never come.

use statemesh_core::{ReadError, WriteError};
use statemesh_net::secret::SecretError;

use crate::store::StoreError;

/// Something a mesh operation could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The secret (keyring) file could not be read or created, or a keyring change was
    /// refused.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Persistence failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A QUIC endpoint could not be set up.
    #[error(transparent)]
    Link(#[from] statemesh_net::quic::LinkError),
    /// A discovery (local sockets, mDNS) could not start.
    #[error(transparent)]
    Discovery(#[from] statemesh_net::discovery::DiscoveryError),
    /// A write was refused.
    #[error(transparent)]
    Write(Box<WriteError>),
    /// A read failed.
    #[error(transparent)]
    Read(Box<ReadError>),
    /// No directory for state could be found (no `$HOME`).
    #[error("no per-user state directory (is $HOME set?)")]
    NoStateDir,
    /// The mesh was shut down.
    #[error("the mesh is shut down")]
    Closed,
    /// The mesh's own runtime could not be started (blocking use).
    #[error("runtime: {0}")]
    Runtime(String),
    /// A wait ended before it was satisfied.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// An acknowledgement that will never come (the write itself was applied).
    #[error(transparent)]
    Ack(#[from] AckError),
    /// The write was refused, nothing written: this window's backlog (its local writes that
    /// its linked peers have not all acknowledged, and the frames queued to its links) is at
    /// the hard bound ([`MeshBuilder::backpressure`](crate::MeshBuilder::backpressure)). A UI
    /// shows "busy" and retries once [`Mesh::backpressure`](crate::Mesh::backpressure)
    /// resolves.
    #[error("busy: {backlog} local writes and frames not yet taken by peers (limit {limit})")]
    Backpressure {
        /// The backlog when the write was refused.
        backlog: usize,
        /// The hard bound.
        limit: usize,
    },
    /// A tunable is out of range (a zero or day-long timer, a suspect timeout not longer than
    /// the heartbeat interval, a frame limit under 4 KiB).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// Why a write's acknowledgement ([`Pending::durable`](crate::Pending::durable),
/// [`Pending::replicated`](crate::Pending::replicated)) will never come. The write itself was
/// applied to this window's document and still spreads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// Persistence is off ([`MeshBuilder::persist`](crate::MeshBuilder::persist)`(false)`): no
    /// write is ever on disk.
    #[error("persistence is off: no write is ever durable")]
    PersistenceOff,
    /// Writing state to disk failed: this write is not on disk, and no later one will be
    /// reported durable (the store stops at its first failure; see `Metrics::persist_errors`).
    #[error("the store failed, so the write is not durable: {0}")]
    StoreFailed(String),
    /// The write is no longer watched for replication: it is older than 600 s, or 4,096 newer
    /// writes are watched (`statemesh_core::node::PENDING_TTL`, `MAX_PENDING_WRITES`).
    #[error(
        "the write is no longer watched for replication (older than 600 s, or 4,096 newer writes)"
    )]
    Untracked,
}

impl From<WriteError> for MeshError {
    fn from(e: WriteError) -> Self {
        Self::Write(Box::new(e))
    }
}

impl From<ReadError> for MeshError {
    fn from(e: ReadError) -> Self {
        Self::Read(Box::new(e))
    }
}
