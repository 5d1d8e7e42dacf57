//! Identity: peer ids, incarnations and mesh identity.

use std::fmt;

use hmac::{Hmac, Mac};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
pub use uuid::Uuid;

/// The identity of one process taking part in a mesh: a UUID v7, fresh at every process start.
///
/// UUID v7 is time-ordered, so on one machine "the lowest live peer id" is "the longest-running
/// live peer". The wall-clock reading that goes into the id is only ever used for that initial
/// ordering; liveness never compares wall clocks.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PeerId(Uuid);

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::from_uuid(Uuid::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl PeerId {
    /// Makes a fresh peer id from an injected wall-clock reading (milliseconds since the Unix
    /// epoch) and an injected random number generator.
    pub fn generate(unix_millis: u64, rng: &mut impl RngCore) -> Self {
        let mut random = [0u8; 10];
        rng.fill_bytes(&mut random);
        Self(uuid::Builder::from_unix_timestamp_millis(unix_millis, &random).into_uuid())
    }

    /// Wraps a UUID, checking that it is a version 7 UUID of the RFC 9562 variant.
    pub fn from_uuid(uuid: Uuid) -> Result<Self, InvalidPeerId> {
        if uuid.get_version_num() != 7 || uuid.get_variant() != uuid::Variant::RFC4122 {
            return Err(InvalidPeerId);
        }
        Ok(Self(uuid))
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The 16 bytes of the UUID.
    pub fn to_bytes(self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// A short form (the last 8 hex digits, which are random) for logs and terminal views.
    pub fn short(&self) -> String {
        let s = self.0.simple().to_string();
        s[s.len() - 8..].to_owned()
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl std::str::FromStr for PeerId {
    type Err = InvalidPeerId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_uuid(Uuid::parse_str(s).map_err(|_| InvalidPeerId)?)
    }
}

/// A value that is not a valid peer id (peer ids are UUID v7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid peer id (expected a UUID v7)")]
pub struct InvalidPeerId;

/// One life of a peer: its id and an incarnation number.
///
/// A process starts at incarnation 0. If it learns that the mesh judged its current incarnation
/// dead (wrongly: it is still running), it refutes by moving to the next incarnation. Its id, and
/// so its place in the election order, stays the same.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Incarnation {
    /// The peer.
    pub peer: PeerId,
    /// The incarnation number, starting at 0.
    pub number: u64,
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.peer.short(), self.number)
    }
}

/// A tag that identifies a mesh on the wire without revealing its name: the first 16 bytes of
/// HMAC-SHA256(secret, "statemesh mesh tag v1" || name).
///
/// Peers of different meshes (or with different secrets) get different tags and never exchange
/// state. The tag is not reversible to the name without the secret.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MeshTag(pub [u8; 16]);

impl MeshTag {
    /// Derives the tag of the mesh `name` under `secret`.
    pub fn derive(secret: &[u8], name: &str) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"statemesh mesh tag v1\0");
        mac.update(name.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&digest[..16]);
        Self(tag)
    }
}

impl fmt::Debug for MeshTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshTag(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// A valid peer id made from one byte, for tests.
#[cfg(test)]
pub(crate) fn test_peer(n: u8) -> PeerId {
    let mut bytes = [n; 16];
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    PeerId(Uuid::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn ids_are_time_ordered_and_valid_v7() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let a = PeerId::generate(1_000, &mut rng);
        let b = PeerId::generate(1_001, &mut rng);
        assert!(a < b);
        assert_eq!(PeerId::from_uuid(*a.as_uuid()), Ok(a));
        assert_eq!(a.to_string().parse::<PeerId>(), Ok(a));
        assert_eq!(PeerId::from_uuid(Uuid::nil()), Err(InvalidPeerId));
    }

    #[test]
    fn same_seed_same_id() {
        let a = PeerId::generate(5, &mut ChaCha8Rng::seed_from_u64(9));
        let b = PeerId::generate(5, &mut ChaCha8Rng::seed_from_u64(9));
        assert_eq!(a, b);
    }

    #[test]
    fn mesh_tags_differ_by_name_and_secret() {
        let t = MeshTag::derive(&[1; 32], "ws");
        assert_eq!(t, MeshTag::derive(&[1; 32], "ws"));
        assert_ne!(t, MeshTag::derive(&[1; 32], "ws2"));
        assert_ne!(t, MeshTag::derive(&[2; 32], "ws"));
    }
}
