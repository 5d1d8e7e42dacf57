//! Real local sockets in a private directory: discovery, presence, authentication, cleanup.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use rand::SeedableRng;
use statemesh_core::PeerId;
use statemesh_net::discovery::Discovered;
use statemesh_net::keyring::SharedKeyring;
use statemesh_net::local::{LocalPresence, mesh_dir};
use statemesh_net::secret::Secret;
use tokio::sync::mpsc::{self, UnboundedReceiver};

/// A generous bound for events that normally take milliseconds.
const WITHIN: Duration = Duration::from_secs(10);

fn ids(n: usize) -> Vec<PeerId> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    (0..n)
        .map(|i| PeerId::generate(100 + i as u64, &mut rng))
        .collect()
}

fn quic(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// Starts the presence of `me` in mesh `mesh`, with the receiver of what it reports.
fn start(
    run: &std::path::Path,
    mesh: &str,
    me: PeerId,
    quic: SocketAddr,
    keys: impl Into<SharedKeyring>,
) -> (LocalPresence, UnboundedReceiver<Discovered>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let presence = LocalPresence::start(run, mesh, me, quic, keys, tx).expect("starts");
    (presence, rx)
}

async fn next(rx: &mut UnboundedReceiver<Discovered>) -> Discovered {
    tokio::time::timeout(WITHIN, rx.recv())
        .await
        .expect("an event in time")
        .expect("channel open")
}

/// The next event: a peer found (`Ok`, with its QUIC address), or anything else (`Err`).
async fn next_found(
    rx: &mut UnboundedReceiver<Discovered>,
) -> Result<(PeerId, SocketAddr), Discovered> {
    match next(rx).await {
        Discovered::Found {
            peer: Some(peer),
            addr,
        } => Ok((peer, addr)),
        other => Err(other),
    }
}

async fn found_until_settled(
    rx: &mut UnboundedReceiver<Discovered>,
) -> BTreeMap<PeerId, SocketAddr> {
    let mut found = BTreeMap::new();
    loop {
        match next_found(rx).await {
            Ok((peer, addr)) => {
                found.insert(peer, addr);
            }
            Err(Discovered::Settled) => return found,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn peers_find_each_other_and_see_a_death_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let secret = Secret::from_bytes([1; 32]);
    let p = ids(3);
    let (a, mut a_rx) = start(&run, "ws", p[0], quic(1000), secret.clone());
    assert!(found_until_settled(&mut a_rx).await.is_empty());
    let (b, mut b_rx) = start(&run, "ws", p[1], quic(1001), secret.clone());
    let (c, mut c_rx) = start(&run, "ws", p[2], quic(1002), secret.clone());

    // The newcomers find the existing peers by scanning; the existing ones notice them connect.
    let b_found = found_until_settled(&mut b_rx).await;
    assert_eq!(b_found.get(&p[0]), Some(&quic(1000)));
    let mut c_found = found_until_settled(&mut c_rx).await;
    while c_found.len() < 2 {
        if let Discovered::Found {
            peer: Some(peer),
            addr,
        } = next(&mut c_rx).await
        {
            c_found.insert(peer, addr);
        }
    }
    assert_eq!(c_found.get(&p[1]), Some(&quic(1001)));
    let mut a_found = BTreeMap::new();
    while a_found.len() < 2 {
        if let Discovered::Found {
            peer: Some(peer),
            addr,
        } = next(&mut a_rx).await
        {
            a_found.insert(peer, addr);
        }
    }
    assert_eq!(a_found.get(&p[2]), Some(&quic(1002)));

    // Private files: the directory 0700, the socket 0600.
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&mesh_dir(&run, "ws")), 0o700);
    assert_eq!(mode(a.path()), 0o600);

    // A peer that goes away is reported gone by the others, and its socket file is removed.
    let path = b.path().to_owned();
    drop(b);
    assert!(!path.exists());
    let gone = Discovered::Gone {
        peer: p[1],
        certain: true,
    };
    assert_eq!(next(&mut a_rx).await, gone);
    loop {
        if next(&mut c_rx).await == gone {
            break;
        }
    }
    drop(c);
}

#[tokio::test]
async fn other_meshes_and_wrong_secrets_are_never_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let p = ids(3);
    let (_a, mut a_rx) = start(&run, "ws", p[0], quic(1), Secret::from_bytes([1; 32]));
    assert!(found_until_settled(&mut a_rx).await.is_empty());
    assert_ne!(mesh_dir(&run, "ws"), mesh_dir(&run, "other"));
    let (_b, mut b_rx) = start(&run, "other", p[1], quic(2), Secret::from_bytes([1; 32]));
    assert!(
        found_until_settled(&mut b_rx).await.is_empty(),
        "another mesh lives in another directory"
    );
    let (_c, mut c_rx) = start(&run, "ws", p[2], quic(3), Secret::from_bytes([2; 32]));
    assert!(
        found_until_settled(&mut c_rx).await.is_empty(),
        "a wrong secret finds nobody"
    );
    // Nor does the legitimate peer report the impostor.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a_rx.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn stale_socket_files_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let p = ids(2);
    let (_a, mut a_rx) = start(&run, "ws", p[0], quic(1), Secret::from_bytes([1; 32]));
    assert!(found_until_settled(&mut a_rx).await.is_empty());
    // A process that died without cleaning up leaves its socket file behind.
    let stale = mesh_dir(&run, "ws").join(format!("{}.s", p[1].as_uuid().simple()));
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("binds"));
    assert!(stale.exists());
    let deadline = tokio::time::Instant::now() + WITHIN;
    while stale.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stale socket not removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_keyring_accepts_peers_proving_any_of_its_keys() {
    use statemesh_net::keyring::Keyring;
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let p = ids(3);
    let (ka, kb) = (Secret::from_bytes([1; 32]), Secret::from_bytes([2; 32]));
    // Mid-rotation: the first proves with A and accepts B, the second proves with B and
    // accepts A: they find each other. A third holding only B finds the second, and refuses
    // the first (whose proof is under A), as the first refuses it.
    let mut a_ring = Keyring::single(ka.clone());
    a_ring.install(kb.clone()).expect("installs");
    let (a, mut a_rx) = start(&run, "ws", p[0], quic(1), a_ring);
    assert!(found_until_settled(&mut a_rx).await.is_empty());
    let mut b_ring = Keyring::single(kb.clone());
    b_ring.install(ka.clone()).expect("installs");
    let (_b, mut b_rx) = start(&run, "ws", p[1], quic(2), b_ring);
    let found = found_until_settled(&mut b_rx).await;
    assert_eq!(found.keys().copied().collect::<Vec<_>>(), vec![p[0]]);
    assert!(matches!(next(&mut a_rx).await, Discovered::Found { peer, .. } if peer == Some(p[1])));
    // Holding only B: A proves with A, which it does not hold: refused both ways.
    let (c, mut c_rx) = start(&run, "ws", p[2], quic(3), Keyring::single(kb));
    let found = found_until_settled(&mut c_rx).await;
    assert_eq!(
        found.keys().copied().collect::<Vec<_>>(),
        vec![p[1]],
        "found the peer proving with B only"
    );
    assert_eq!(c.auth_failures(), 1, "the first peer refused, counted");
    drop(a);
}

/// Two peers started at the same instant dial each other (each scan finds the other's socket,
/// bound before either scans): both keep the connection dialled by the lower id and close the
/// other as a duplicate, and neither takes that close for a death. Before, each kept whichever
/// connection finished its handshake first; when they kept different ones, each reported the
/// other certainly gone about a second after starting, though both were alive.
#[tokio::test]
async fn peers_dialling_each_other_at_once_keep_one_connection_and_no_false_death() {
    for round in 0..8u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let secret = Secret::from_bytes([4; 32]);
        let p = ids(3);
        // Bound back to back on this one-thread runtime: neither scan has run yet.
        let (a, mut a_rx) = start(&run, "ws", p[0], quic(1000), secret.clone());
        let (b, mut b_rx) = start(&run, "ws", p[1], quic(1001), secret.clone());
        let mut a_found = found_until_settled(&mut a_rx).await;
        let mut b_found = found_until_settled(&mut b_rx).await;
        // Each may learn of the other by its own scan or by the other's connection.
        for (rx, found, other) in [
            (&mut a_rx, &mut a_found, p[1]),
            (&mut b_rx, &mut b_found, p[0]),
        ] {
            while !found.contains_key(&other) {
                let (peer, addr) = next_found(rx)
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: unexpected {e:?}"));
                found.insert(peer, addr);
            }
        }
        // A third peer joins; by the time both have found it, the duplicate connection's
        // close (made right after its handshake, before the first scans settled) has long
        // reached its other end: nothing but the newcomer was reported.
        let (c, mut c_rx) = start(&run, "ws", p[2], quic(1002), secret.clone());
        let c_found = found_until_settled(&mut c_rx).await;
        assert_eq!(c_found.len(), 2, "round {round}");
        for rx in [&mut a_rx, &mut b_rx] {
            match next_found(rx).await {
                Ok((peer, _)) => assert_eq!(peer, p[2], "round {round}"),
                Err(e) => panic!("round {round}: unexpected {e:?}"),
            }
        }
        assert!(a_rx.try_recv().is_err(), "round {round}: more events");
        assert!(b_rx.try_recv().is_err(), "round {round}: more events");
        // The connection kept is a live presence: a death is still seen at once.
        drop(b);
        let gone = Discovered::Gone {
            peer: p[1],
            certain: true,
        };
        assert_eq!(next(&mut a_rx).await, gone, "round {round}");
        drop((a, c));
    }
}
