//! What each mesh operation can fail with: one error type per kind of operation, each naming
//! only the failures that operation can produce, and [`MeshError`], the umbrella every one of
//! them converts into (for `?` in an application that does not tell them apart).
//!
//! | operation | error |
//! |---|---|
//! | [`MeshBuilder::join`](crate::MeshBuilder::join), [`join_blocking`](crate::MeshBuilder::join_blocking) | [`JoinError`] |
//! | [`Mesh::put`](crate::Mesh::put), [`add`](crate::Mesh::add), [`delete`](crate::Mesh::delete), [`transact`](crate::Mesh::transact), [`Lead::put`](crate::Lead::put) | [`WriteError`] |
//! | [`Mesh::get`](crate::Mesh::get), [`leader_get`](crate::Mesh::leader_get) | [`ReadError`] |
//! | [`Pending::durable`](crate::Pending::durable), [`replicated`](crate::Pending::replicated) | [`AckError`] |
//! | [`Mesh::synced`](crate::Mesh::synced) | [`Closed`] |
//! | [`KeyringHandle`](crate::KeyringHandle)'s changes | [`KeyringError`] |
//! | [`Mesh::block_on`](crate::Mesh::block_on) | [`NoRuntime`] |
//!
//! Every enum is `#[non_exhaustive]`: a later release may add a failure (match with a `_` arm).
//! Causes are kept as [`source`](std::error::Error::source)s.

use std::time::Duration;

use statemesh_net::secret::SecretError;

use crate::store::StoreError;

pub use statemesh_core::ReadError;

/// The mesh is shut down (by [`Mesh::shutdown`](crate::Mesh::shutdown), or the last handle
/// was dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the mesh is shut down")]
pub struct Closed;

/// Why a mesh could not be joined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// A tunable is out of range (a zero or day-long timer, a suspect timeout not longer than
    /// the heartbeat interval, a frame limit under 4 KiB).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The secret (keyring) file could not be read or created.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// No directory for state could be found (no `$HOME`).
    #[error("no per-user state directory (is $HOME set?)")]
    NoStateDir,
    /// The state directory could not be opened or its files read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Link(#[from] statemesh_net::quic::LinkError),
    /// A discovery (local sockets, mDNS) could not start.
    #[error(transparent)]
    Discovery(#[from] statemesh_net::discovery::DiscoveryError),
    /// A thread or runtime the mesh needs could not be started (the store's writer thread, or
    /// the own runtime of [`join_blocking`](crate::MeshBuilder::join_blocking)).
    #[error("cannot start the mesh's {what}: {source}")]
    Runtime {
        /// What could not be started.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A boxed cause, for failures whose cause has no type of its own in the public API.
pub type BoxedCause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a write was refused. Nothing of a refused write is applied (a transaction is refused
/// whole).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The mesh is shut down.
    #[error("the mesh is shut down")]
    Closed,
    /// A channel name, key or counter name is empty, longer than
    /// [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes, or holds a control character.
    #[error("invalid name {0:?}: names are 1 to 256 bytes without control characters")]
    InvalidName(String),
    /// The value cannot be stored (it does not map to the document, or it is nested deeper
    /// than [`MAX_VALUE_DEPTH`](crate::MAX_VALUE_DEPTH)).
    #[error("invalid value: {0}")]
    InvalidValue(#[source] BoxedCause),
    /// A leader write was made without leadership, or under a term that is no longer current
    /// (also after this process was frozen).
    #[error("not the leader under term {term}: leadership was lost or is stale")]
    NotLeader {
        /// The term the write was made under.
        term: u64,
    },
    /// An addition would take this window's share of a counter beyond the signed 64-bit
    /// range. (Reads of a counter whose shares add up beyond the range saturate at
    /// `i64::MIN`/`i64::MAX`.)
    #[error(
        "counter {name:?}: adding {by} to this window's share of {share} would leave the signed 64-bit range; nothing was written"
    )]
    CounterOverflow {
        /// The counter.
        name: String,
        /// This window's share before the addition.
        share: i64,
        /// The addition refused.
        by: i64,
    },
    /// The write was refused, nothing written: this window's backlog (the entries changed by
    /// its local writes that its linked peers have not all acknowledged, and the frames queued
    /// to its links) is at
    /// the hard bound ([`MeshBuilder::backpressure`](crate::MeshBuilder::backpressure)). A UI
    /// shows "busy" and retries once [`Mesh::backpressure`](crate::Mesh::backpressure)
    /// resolves.
    #[error("busy: {backlog} written entries and frames not yet taken by peers (limit {limit})")]
    Backpressure {
        /// The backlog when the write was refused.
        backlog: usize,
        /// The hard bound.
        limit: usize,
    },
    /// The document refused the operation.
    #[error("the document refused the write: {0}")]
    Document(#[source] BoxedCause),
}

impl From<statemesh_core::WriteError> for WriteError {
    fn from(e: statemesh_core::WriteError) -> Self {
        use statemesh_core::WriteError as Core;
        match e {
            Core::InvalidName(name) => Self::InvalidName(name),
            Core::Reconcile(e) => Self::InvalidValue(e),
            Core::Build(why) => Self::InvalidValue(why.into()),
            Core::NotLeader { term } => Self::NotLeader { term },
            Core::CounterOverflow { name, share, by } => Self::CounterOverflow { name, share, by },
            Core::Automerge(e) => Self::Document(e),
            other => Self::Document(Box::new(other)),
        }
    }
}

impl From<Closed> for WriteError {
    fn from(Closed: Closed) -> Self {
        Self::Closed
    }
}

/// Why a write's acknowledgement ([`Pending::durable`](crate::Pending::durable),
/// [`Pending::replicated`](crate::Pending::replicated)) did not come. The write itself was
/// applied to this window's document and still spreads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The mesh shut down first.
    #[error("the mesh is shut down")]
    Closed,
    /// The wait ran out ([`Pending::timeout`](crate::Pending::timeout),
    /// [`MeshBuilder::ack_timeout`](crate::MeshBuilder::ack_timeout)); the acknowledgement may
    /// still come later.
    #[error("no acknowledgement within {waited:?}")]
    Timeout {
        /// How long it waited.
        waited: Duration,
    },
    /// Persistence is off ([`MeshBuilder::persist`](crate::MeshBuilder::persist)`(false)`): no
    /// write is ever on disk.
    #[error("persistence is off: no write is ever durable")]
    PersistenceOff,
    /// Writing state to disk failed: this write is not on disk, and no later one will be
    /// reported durable (the store stops at its first failure; see
    /// [`Metrics::persist_errors`](crate::Metrics::persist_errors)).
    #[error("the store failed, so the write is not durable: {0}")]
    StoreFailed(String),
    /// The write is no longer watched for replication: it is older than 600 s, or 4,096 newer
    /// writes are watched.
    #[error(
        "the write is no longer watched for replication (older than 600 s, or 4,096 newer writes)"
    )]
    Untracked,
}

impl From<Closed> for AckError {
    fn from(Closed: Closed) -> Self {
        Self::Closed
    }
}

/// Why a change of this window's keyring ([`KeyringHandle`](crate::KeyringHandle)) was refused;
/// the keyring is left as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// The mesh has no keyring file to read (it was built with
    /// [`MeshBuilder::secret`](crate::MeshBuilder::secret) or
    /// [`MeshBuilder::keyring`](crate::MeshBuilder::keyring)).
    #[error("this mesh has no keyring file (built with a secret or keyring in memory)")]
    NoFile,
    /// The keyring refused the change (an unknown key, the last or primary key, too many
    /// keys), or its file could not be read or written.
    #[error(transparent)]
    Keyring(#[from] SecretError),
}

/// [`Mesh::block_on`](crate::Mesh::block_on) on a mesh that has no runtime of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this mesh runs on the caller's runtime; await instead")]
pub struct NoRuntime;

/// Any of the errors above, for `?` in an application that handles them alike.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// See [`JoinError`].
    #[error(transparent)]
    Join(#[from] JoinError),
    /// See [`WriteError`].
    #[error(transparent)]
    Write(#[from] WriteError),
    /// See [`ReadError`].
    #[error(transparent)]
    Read(#[from] ReadError),
    /// See [`AckError`].
    #[error(transparent)]
    Ack(#[from] AckError),
    /// See [`KeyringError`].
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// See [`Closed`].
    #[error(transparent)]
    Closed(#[from] Closed),
    /// See [`NoRuntime`].
    #[error(transparent)]
    NoRuntime(#[from] NoRuntime),
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn core_write_errors_map_to_their_kind_and_keep_their_cause() {
        let e = WriteError::from(statemesh_core::WriteError::InvalidName(String::new()));
        assert!(matches!(e, WriteError::InvalidName(ref n) if n.is_empty()));
        let e = WriteError::from(statemesh_core::WriteError::Build("too deep".into()));
        assert!(matches!(e, WriteError::InvalidValue(_)));
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("too deep")
        );
        let e = WriteError::from(statemesh_core::WriteError::NotLeader { term: 7 });
        assert!(matches!(e, WriteError::NotLeader { term: 7 }));
    }

    #[test]
    fn the_umbrella_keeps_the_kind_and_the_chain() {
        let e = MeshError::from(AckError::Timeout {
            waited: Duration::from_millis(5),
        });
        assert!(matches!(
            e,
            MeshError::Ack(AckError::Timeout { waited }) if waited == Duration::from_millis(5)
        ));
        let e = MeshError::from(WriteError::from(statemesh_core::WriteError::Build(
            "bad".into(),
        )));
        // Transparent: the umbrella's source is the write error's own cause.
        assert_eq!(e.source().map(ToString::to_string).as_deref(), Some("bad"));
        assert_eq!(MeshError::from(Closed).to_string(), "the mesh is shut down");
    }
}
