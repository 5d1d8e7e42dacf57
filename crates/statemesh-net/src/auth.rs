//! Proof of knowledge of the mesh secret, bound to one connection.
//!
//! On a QUIC link, after the TLS handshake, each side sends
//! `HMAC-SHA256(secret, "statemesh auth v1" ‖ role ‖ exporter ‖ client id ‖ server id ‖ mesh)`,
//! where `exporter` is keying material exported from that TLS session. The exporter differs on
//! every connection (so a proof cannot be replayed elsewhere, nor relayed by a man in the
//! middle, who holds two different sessions), and the role differs between the two sides (so a
//! proof cannot be echoed back). On a local socket, fresh random nonces from both sides take the
//! exporter's place. Proofs are compared in constant time.
//!
//! # Keyrings
//!
//! A window proves with its keyring's primary key and accepts a proof under any of its keys
//! (see [`crate::keyring`]). The proof does not name its key: the verifier computes the MAC under
//! every accepted key (at most [`MAX_KEYS`](crate::keyring::MAX_KEYS)), compares each in
//! constant time and never stops early, so the time taken depends on how many keys it holds,
//! not on which one matched nor on how much of a proof was right. The wire is the one of a
//! single secret: a window holding a keyring and one of an older version holding that key as
//! its secret authenticate each other. The server of a QUIC link answers with the key the
//! client proved with, which both hold.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use statemesh_core::PeerId;

use crate::keyring::{KeyId, Keyring};
use crate::secret::Secret;

/// Length of a proof.
pub const PROOF_LEN: usize = 32;

/// The label under which keying material is exported from the TLS session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-statemesh-auth-v1";

/// Which end of a connection proves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// The side that dialled.
    Client,
    /// The side that accepted.
    Server,
}

/// What a proof is bound to.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    /// Keying material unique to this connection (TLS exporter, or both nonces).
    pub channel: &'a [u8],
    /// The dialling peer.
    pub client: PeerId,
    /// The accepting peer.
    pub server: PeerId,
    /// The mesh name.
    pub mesh: &'a str,
}

/// The proof that `role` knows `secret`, for this binding.
pub fn prove(secret: &Secret, role: Role, b: &Binding<'_>) -> [u8; PROOF_LEN] {
    mac(secret, role, b).finalize().into_bytes().into()
}

/// Checks, in constant time, the proof the peer in `role` sent.
pub fn verify(secret: &Secret, role: Role, b: &Binding<'_>, proof: &[u8]) -> bool {
    mac(secret, role, b).verify_slice(proof).is_ok()
}

/// Checks the proof the peer in `role` sent against every key of `ring` (all of them, each in
/// constant time, see the module docs). Returns the key it proved with.
pub fn verify_any<'r>(
    ring: &'r Keyring,
    role: Role,
    b: &Binding<'_>,
    proof: &[u8],
) -> Option<(KeyId, &'r Secret)> {
    let mut found = None;
    for key in ring.keys() {
        let ok = verify(key, role, b, proof);
        if ok && found.is_none() {
            found = Some(key);
        }
    }
    found.map(|k| (KeyId::of(k), k))
}

fn mac(secret: &Secret, role: Role, b: &Binding<'_>) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"statemesh auth v1\0");
    mac.update(match role {
        Role::Client => b"client",
        Role::Server => b"server",
    });
    for part in [
        b.channel,
        b.client.as_uuid().as_bytes(),
        b.server.as_uuid().as_bytes(),
        b.mesh.as_bytes(),
    ] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    mac
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn ids() -> (PeerId, PeerId) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        (PeerId::generate(1, &mut rng), PeerId::generate(2, &mut rng))
    }

    #[test]
    fn proofs_are_bound_to_role_channel_ids_mesh_and_secret() {
        let (c, s) = ids();
        let secret = Secret::from_bytes([7; 32]);
        let b = Binding {
            channel: b"exporter",
            client: c,
            server: s,
            mesh: "ws",
        };
        let p = prove(&secret, Role::Client, &b);
        assert!(verify(&secret, Role::Client, &b, &p));
        assert!(!verify(&secret, Role::Server, &b, &p), "echoed back");
        assert!(
            !verify(
                &secret,
                Role::Client,
                &Binding {
                    channel: b"other",
                    ..b
                },
                &p
            ),
            "replayed"
        );
        assert!(!verify(
            &secret,
            Role::Client,
            &Binding {
                client: s,
                server: c,
                ..b
            },
            &p
        ));
        assert!(!verify(
            &secret,
            Role::Client,
            &Binding { mesh: "ws2", ..b },
            &p
        ));
        assert!(
            !verify(&Secret::from_bytes([8; 32]), Role::Client, &b, &p),
            "wrong secret"
        );
        assert!(!verify(&secret, Role::Client, &b, &p[..31]));
    }

    #[test]
    fn any_key_of_a_keyring_is_accepted_and_named() {
        let (c, s) = ids();
        let b = Binding {
            channel: b"exporter",
            client: c,
            server: s,
            mesh: "ws",
        };
        let (a, k2) = (Secret::from_bytes([1; 32]), Secret::from_bytes([2; 32]));
        let mut ring = Keyring::single(a.clone());
        ring.install(k2.clone()).expect("installs");
        let by_a = prove(&a, Role::Client, &b);
        let by_b = prove(&k2, Role::Client, &b);
        assert_eq!(
            verify_any(&ring, Role::Client, &b, &by_a).map(|(id, _)| id),
            Some(KeyId::of(&a))
        );
        assert_eq!(
            verify_any(&ring, Role::Client, &b, &by_b).map(|(id, _)| id),
            Some(KeyId::of(&k2))
        );
        assert!(verify_any(&ring, Role::Server, &b, &by_b).is_none());
        let other = prove(&Secret::from_bytes([3; 32]), Role::Client, &b);
        assert!(verify_any(&ring, Role::Client, &b, &other).is_none());
        assert!(verify_any(&Keyring::single(k2), Role::Client, &b, &by_a).is_none());
    }
}
