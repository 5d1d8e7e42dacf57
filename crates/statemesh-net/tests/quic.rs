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

#[tokio::test]
async fn keyrings_accept_any_key_name_it_and_prove_again_under_a_new_primary() {
    use statemesh_net::auth::Role;
    use statemesh_net::keyring::{KeyId, Keyring, SharedKeyring};
    let (a, b) = ids();
    let (ka, kb) = (Secret::from_bytes([3; 32]), Secret::from_bytes([4; 32]));
    let mut both = Keyring::single(ka.clone());
    both.install(kb.clone()).expect("installs");
    let server_keys = SharedKeyring::new(both);
    let server = Endpoint::bind(loopback(), a, server_keys.clone(), "ws").expect("binds");
    // The client holds only B: the server accepts it, and answers under B.
    let client_keys = SharedKeyring::new(Keyring::single(kb.clone()));
    let client = Endpoint::bind(loopback(), b, client_keys.clone(), "ws").expect("binds");
    let addr = server.local_addr().expect("addr");
    let (accepted, dialled) = tokio::join!(server.accept(), client.connect(addr));
    let accepted = accepted.expect("incoming").expect("server authenticates");
    let dialled = dialled.expect("client authenticates");
    assert_eq!(accepted.key, KeyId::of(&kb));
    assert_eq!(dialled.key, KeyId::of(&kb));

    // The server proves again under B (its new primary): the client answers under B.
    let mut ring = (*server_keys.current()).clone();
    ring.use_key(KeyId::of(&kb)).expect("uses");
    server_keys.set(ring);
    let answer = async {
        let (send, recv) = dialled.connection.accept_bi().await.expect("stream");
        client
            .answer_renewal(&dialled.connection, Role::Client, a, send, recv)
            .await
    };
    let (renewed, answered) =
        tokio::join!(server.renew(&accepted.connection, Role::Server, b), answer);
    assert_eq!(renewed.expect("renewed"), KeyId::of(&kb));
    assert_eq!(answered.expect("answered"), KeyId::of(&kb));

    // Proving under A, which the client does not hold, is refused on both sides.
    let mut ring = (*server_keys.current()).clone();
    ring.use_key(KeyId::of(&ka)).expect("uses");
    server_keys.set(ring);
    let answer = async {
        let (send, recv) = dialled.connection.accept_bi().await.expect("stream");
        client
            .answer_renewal(&dialled.connection, Role::Client, a, send, recv)
            .await
    };
    let (renewed, answered) =
        tokio::join!(server.renew(&accepted.connection, Role::Server, b), answer);
    assert!(
        matches!(renewed, Err(LinkError::AuthFailed { .. })),
        "{renewed:?}"
    );
    assert!(
        matches!(answered, Err(LinkError::AuthFailed { .. })),
        "{answered:?}"
    );
    // The link itself is untouched: closing it is the caller's decision.
    assert!(dialled.connection.close_reason().is_none());
}
