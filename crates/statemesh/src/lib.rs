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
//! mesh.add("workspaces/ws-1/desired", 1, Scope::Durable)?.durable().await?;
//! let mut changes = mesh.changes();
//! while let Some(lead) = mesh.lead().await {
//!     lead.put("probes", "api:443", &"up".to_string())?;
//!     lead.cancelled().await;
//! }
//! # let _ = changes.recv().await;
//! mesh.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Inside, one driver task per mesh owns every link, task and discovery, and carries out what the
//! node (`statemesh_core::Node`) says; the handles share only the node and what the driver
//! publishes (see `docs/architecture.md`, "The runtime").

mod builder;
mod dialer;
mod driver;
mod error;
pub mod keys;
mod mesh;
pub mod metrics;
mod shared;
pub mod store;

pub use builder::MeshBuilder;
pub use error::{AckError, MeshError};
pub use mesh::{Lead, Member, Mesh, Pending};
pub use metrics::Metrics;
pub use shared::LeadershipInfo;
pub use statemesh_core::{
    Config, DeathCause, EntryChange as Change, EntryKind, Explanation, PeerId, PeerStatus,
    ReadError, Scope, Stats, Term, Tx, Value, WriteError, WriteId,
};
pub use statemesh_net::discovery;
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
