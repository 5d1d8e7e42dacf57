//! statemesh: one shared state and one probe leader for every window of a desktop application,
//! on one machine or across a LAN, with no lock file, daemon or server.
//!
//! Each window embeds a [`Mesh`]. Windows find each other through local sockets (same machine)
//! or mDNS and static peers (LAN mode, opt-in), authenticate with a shared secret, exchange
//! Automerge sync messages over QUIC, and agree on the probe leader: the lowest live peer id.
//!
//! ```no_run
//! # async fn run() -> Result<(), statemesh::MeshError> {
//! use statemesh::{Mesh, Scope};
//!
//! let mesh = Mesh::builder("my-workspace").join().await?;
//! // Merges with every other window's additions; resolves once on this machine's disk.
//! mesh.add("workspaces/ws-1/desired", 1, Scope::Durable)?.durable().await?;
//! mesh.put("windows", &mesh.id().to_string(), &"open", Scope::Presence)?;
//! let mut changes = mesh.changes(); // a `Stream` of changes, `Err(Lagged)` if behind
//! let leadership = mesh.leadership(); // a `Stream` of snapshots, and `current()`
//! println!("leader: {:?}", leadership.current().leader);
//! while let Some(lead) = mesh.lead().await {
//!     lead.put("probes", "api:443", &"up".to_string())?; // carries the term
//!     lead.cancelled().await;
//! }
//! # let _ = changes.recv().await;
//! mesh.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Each operation fails with its own error type ([`JoinError`], [`WriteError`], [`ReadError`],
//! [`AckError`], [`KeyringError`], [`Closed`]); all convert into [`MeshError`] for `?`. Which
//! items are stable API is written in the guide (`docs/guide.md`, "Which parts are stable").
//!
//! Inside, one driver task per mesh owns every link, task and discovery, and carries out what the
//! node (`statemesh_core::Node`) says; the handles share only the node and what the driver
//! publishes (see `docs/architecture.md`, "The runtime").

mod builder;
mod dialer;
mod driver;
pub mod error;
pub mod keys;
mod mesh;
pub mod metrics;
mod shared;
mod status;
pub mod store;
mod subscribe;

pub use builder::MeshBuilder;
pub use error::{
    AckError, Closed, JoinError, KeyringError, MeshError, NoRuntime, ReadError, WriteError,
};
pub use mesh::{Lead, Mesh, Pending, Tx};
pub use metrics::Metrics;
pub use statemesh_core::{
    Config, DeathCause, EntryChange as Change, EntryKind, PeerId, Scope, Term, Value, WriteId,
};
pub use statemesh_net::discovery;
pub use status::{Explanation, Leadership, Member};
pub use subscribe::{ChangeStream, Lagged, LeadershipStream};
// The bounds every window enforces on names and values (the sidecar reports them to clients).
pub use statemesh_core::{replica::MAX_NAME_LEN, value::MAX_VALUE_DEPTH};

/// The CRDT library, at the version statemesh uses (for `automerge` types in typed records).
pub use automerge;
/// Typed records' `Reconcile`/`Hydrate`, at the version statemesh uses. The derives expand to
/// paths under `autosurgeon`, so a crate deriving them still lists `autosurgeon` among its own
/// dependencies, at this version.
pub use autosurgeon;
pub use keys::{KeyringHandle, KeyringInfo};
pub use statemesh_net::keyring::{KeyId, Keyring, read_key_file};
pub use statemesh_net::secret::{Secret, SecretError};
