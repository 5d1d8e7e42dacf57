//! The sans-IO core of statemesh: identity, liveness and election, replicated state, sync and
//! the wire codec, as one deterministic state machine per peer ([`Node`]).
//!
//! Nothing here does IO, reads a clock or draws from the operating system's random number
//! generator: time comes in as [`Time`] with every input, and randomness from an injected RNG.
//! That makes the whole mesh simulable (see the `sim` module behind the `test-utils` feature)
//! and fuzzable. The one exception is inside the Automerge library, which draws a placeholder
//! actor id from the OS whenever it constructs a document; statemesh replaces it with one drawn
//! from the injected RNG before any change is made, so no outcome depends on it.
//!
//! Modules: [`node`], the state machine (one file per job: persistence, replication
//! acknowledgements, the sync exchange of each link, the jobs run off the node, views and
//! election, writes, reads); [`liveness`], who is live (heartbeat version vectors,
//! tombstones, refutation); [`election`], who leads (the lowest live eligible peer, under a
//! [`Term`]); [`leader_records`], what the leader writes under its term, kept out of the
//! document; [`replica`], the Automerge document (its sync, the validation of received
//! changes and the change notifications in files of their own); [`codec`], the wire; [`id`],
//! [`vv`], [`value`], [`time`] and [`config`]. Behind features: `sim` (`test-utils`), the
//! simulator, and `fuzzing` (`fuzzing`), the bodies of the fuzz targets, one module per target.
//!
//! ```
//! use rand_chacha::ChaCha8Rng;
//! use rand_chacha::rand_core::SeedableRng;
//! use statemesh_core::{Config, Event, MeshTag, Node, PeerId, Scope, Time};
//!
//! let mut rng = ChaCha8Rng::seed_from_u64(1);
//! let mesh = MeshTag::derive(b"the mesh secret", "my-workspace");
//! let me = PeerId::generate(1_700_000_000_000, &mut rng);
//! let mut node = Node::new(Config::default(), mesh, me, &mut rng, Time::ZERO);
//!
//! // Any window writes at any time: counters add up across windows, no lock.
//! node.add("workspaces/ws-1/desired", 1, Scope::Durable)?;
//! // A presence-scoped record vanishes from every view when this window dies.
//! node.put("windows", &me.to_string(), &true, Scope::Presence)?;
//! assert_eq!(node.counter("workspaces/ws-1/desired"), 1);
//!
//! // Alone, once discovery has settled, this window leads under term 1.
//! node.handle_settled(Time::ZERO);
//! assert_eq!(node.my_term(), Some(1));
//! assert!(std::iter::from_fn(|| node.poll_event()).any(|e| e == Event::Elected { term: 1 }));
//! # Ok::<(), statemesh_core::WriteError>(())
//! ```

pub mod codec;
pub mod config;
pub mod election;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod id;
pub mod leader_records;
pub mod liveness;
pub mod node;
pub mod replica;
#[cfg(feature = "test-utils")]
pub mod sim;
pub mod time;
pub mod value;
pub mod vv;

pub use codec::{DecodeError, EncodeError, FrameDecoder, Hello, Message};
pub use config::Config;
pub use election::{Leadership, Term};
pub use id::{Incarnation, InvalidPeerId, MeshTag, PeerId};
pub use liveness::{DeathCause, LinkDown, PeerStatus};
pub use node::{
    DecodedView, Event, Explanation, Heart, HelloError, INLINE_BYTES, Node, PUSH_AT_ONCE, Persist,
    Pulse, PushJob, ReceiveError, Snapshot, Stats, SyncJob, Transmit, WriteId, WriteStatus,
    Written,
};
pub use replica::{
    ApplyError, EntryChange, EntryKind, LoadReport, ReadError, Scope, Tx, WriteError,
};
pub use time::Time;
pub use value::Value;
