//! Real QUIC endpoints on loopback: authentication with the mesh secret.

use std::net::{Ipv4Addr, SocketAddr};

use rand::SeedableRng;
use statemesh_core::PeerId;
use statemesh_net::quic::{Endpoint, LinkError};
use statemesh_net::secret::Secret;

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn ids() -> (PeerId, PeerId) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    (
        PeerId::generate(10, &mut rng),
        PeerId::generate(11, &mut rng),
    )
}

#[tokio::test]
async fn peers_with_the_secret_link_and_exchange_bytes() {
    let (a, b) = ids();
    let secret = Secret::from_bytes([3; 32]);
    let server = Endpoint::bind(loopback(), a, secret.clone(), "ws").expect("binds");
    let client = Endpoint::bind(loopback(), b, secret, "ws").expect("binds");
    let addr = server.local_addr().expect("addr");
    let (accepted, dialled) = tokio::join!(server.accept(), client.connect(addr));
    let mut accepted = accepted
        .expect("incoming")
        .expect("server side authenticates");
    let mut dialled = dialled.expect("client side authenticates");
    assert_eq!(accepted.peer, b);
    assert_eq!(dialled.peer, a);
    dialled
        .send
        .write_all(b"hello over quic")
        .await
        .expect("writes");
    let mut buf = [0u8; 15];
    accepted.recv.read_exact(&mut buf).await.expect("reads");
    assert_eq!(&buf, b"hello over quic");
}

#[tokio::test]
async fn a_peer_with_the_wrong_secret_is_refused_on_both_sides() {
    let (a, b) = ids();
    let server = Endpoint::bind(loopback(), a, Secret::from_bytes([3; 32]), "ws").expect("binds");
    let client = Endpoint::bind(loopback(), b, Secret::from_bytes([4; 32]), "ws").expect("binds");
    let addr = server.local_addr().expect("addr");
    let (accepted, dialled) = tokio::join!(server.accept(), client.connect(addr));
    assert!(matches!(
        accepted.expect("incoming"),
        Err(LinkError::AuthFailed { .. })
    ));
    assert!(dialled.is_err(), "the client must not get a link");
}

#[tokio::test]
async fn a_peer_of_another_mesh_is_refused() {
    let (a, b) = ids();
    let secret = Secret::from_bytes([3; 32]);
    let server = Endpoint::bind(loopback(), a, secret.clone(), "ws").expect("binds");
    let client = Endpoint::bind(loopback(), b, secret, "other-ws").expect("binds");
    let addr = server.local_addr().expect("addr");
    let (accepted, dialled) = tokio::join!(server.accept(), client.connect(addr));
    assert!(matches!(
        accepted.expect("incoming"),
        Err(LinkError::AuthFailed { .. })
    ));
    assert!(dialled.is_err());
}
