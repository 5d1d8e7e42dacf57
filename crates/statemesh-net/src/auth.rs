//! Proof of knowledge of the mesh secret, bound to one connection.
//!
//! On a QUIC link, after the TLS handshake, each side sends
//! `HMAC-SHA256(secret, "statemesh auth v1" ‖ role ‖ exporter ‖ client id ‖ server id ‖ mesh)`,
//! where `exporter` is keying material exported from that TLS session. The exporter differs on
//! every connection (so a proof cannot be replayed elsewhere, nor relayed by a man in the
//! middle, who holds two different sessions), and the role differs between the two sides (so a
//! proof cannot be echoed back). On a local socket, fresh random nonces from both sides take the
//! exporter's place. Proofs are compared in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use statemesh_core::PeerId;

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
}
