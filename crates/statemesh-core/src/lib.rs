//! The sans-IO core of statemesh: identity, liveness and election, replicated state, sync and
//! the wire codec, as one deterministic state machine per peer ([`Node`]).
//!
//! Nothing here does IO, reads a clock or draws from the operating system's random number
//! generator: time comes in as [`Time`] with every input, and randomness from an injected RNG.
//! That makes the whole mesh simulable (see the `sim` module behind the `test-utils` feature)
//! and fuzzable. The one exception is inside the Automerge library, which draws a placeholder
//! actor id from the OS whenever it constructs a document; statemesh replaces it with one drawn
//! from the injected RNG before any change is made, so no outcome depends on it.

pub mod codec;
pub mod config;
pub mod id;
pub mod leader;
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
pub use id::{Incarnation, InvalidPeerId, MeshTag, PeerId};
pub use liveness::{DeathCause, Leadership, LinkDown, PeerStatus};
pub use node::{
    Event, Explanation, HelloError, Node, Persist, ReceiveError, Stats, Transmit, WriteId, Written,
};
pub use replica::{
    ApplyError, EntryChange, EntryKind, LoadReport, ReadError, Scope, Tx, WriteError,
};
pub use time::Time;
pub use value::Value;
