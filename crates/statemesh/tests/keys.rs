//! The keyring through the library API (issue 11), with windows in one process (local sockets
//! in a private directory, QUIC on loopback): a change of primary key makes links prove again,
//! and removing a key closes the links of a peer that proves no other key (audited, counted),
//! while links to peers holding the new key stay up.

use std::path::Path;
use std::time::{Duration, Instant};

use statemesh::{KeyId, Keyring, KeyringError, Mesh, Secret, SecretError};

const WITHIN: Duration = Duration::from_secs(15);

fn key(b: u8) -> Secret {
    Secret::from_bytes([b; 32])
}

fn ring(primary: u8, others: &[u8]) -> Keyring {
    let mut r = Keyring::single(key(primary));
    for o in others {
        r.install(key(*o)).expect("room");
    }
    r
}

async fn window(dir: &Path, keys: Keyring) -> Mesh {
    Mesh::builder("keys")
        .keyring(keys)
        .runtime_dir(dir.join("run"))
        .persist(false)
        .join()
        .await
        .expect("joins")
}

/// Waits until `check` holds on `mesh`. Link keys and counters change without an event a
/// window can await, so this looks every 20 ms.
async fn until(mesh: &Mesh, what: &str, check: impl Fn(&Mesh) -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !check(mesh) {
        assert!(
            Instant::now() < deadline,
            "{what}: not reached; {:?}",
            mesh.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_key_closes_only_the_links_that_prove_no_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (KeyId::of(&key(1)), KeyId::of(&key(2)));
    let x = window(dir.path(), ring(1, &[2])).await;
    let y = window(dir.path(), ring(1, &[])).await; // only A
    let z = window(dir.path(), ring(1, &[2])).await;
    for m in [&x, &y, &z] {
        until(m, "all linked", |m| m.linked() == 2).await;
    }
    assert!(
        x.keyring()
            .peer_keys()
            .iter()
            .all(|(_, k)| *k == a.to_string())
    );
    let opened = x.metrics().links_opened;

    // X proves with B from now on: Z answers under B; Y cannot, and keeps its link under A,
    // which X still accepts.
    x.keyring().use_key(b).expect("uses B");
    assert_eq!(x.keyring().list().primary, b.to_string());
    until(&x, "Z on B, Y's renewal failed", |m| {
        let keys = m.keyring().peer_keys();
        let on = |p, k: KeyId| keys.iter().any(|(q, kk)| *q == p && *kk == k.to_string());
        on(z.id(), b) && on(y.id(), a) && m.metrics().key_renewal_failures >= 1
    })
    .await;
    assert_eq!(x.linked(), 2);

    // Removing A: the link to Y proves no key X holds and is closed, audited and counted; the
    // link to Z stays up.
    x.keyring().remove(a).expect("removes A");
    until(&x, "Y cut off", |m| {
        m.linked() == 1 && m.metrics().auth_failures >= 1
    })
    .await;
    until(&y, "Y refused when it redials", |m| {
        m.metrics().auth_failures >= 1
    })
    .await;
    let m = x.metrics();
    assert_eq!(
        m.links_opened, opened,
        "the link to Z was never set up again"
    );
    assert_eq!(m.link_keys.get(&z.id().to_string()), Some(&b.to_string()));
    assert_eq!(x.linked(), 1);

    // Refusals, changing nothing.
    assert!(matches!(
        x.keyring().remove(b),
        Err(KeyringError::Keyring(SecretError::LastKey(_)))
    ));
    assert!(matches!(
        x.keyring().use_key(a),
        Err(KeyringError::Keyring(SecretError::NotInstalled(_)))
    ));
    assert!(matches!(
        z.keyring().remove(a),
        Err(KeyringError::Keyring(SecretError::RemovePrimary(_)))
    ));
    assert!(matches!(x.keyring().reload(), Err(KeyringError::NoFile)));
    assert_eq!(x.keyring().list().accepted, vec![b.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_applies_changes_another_process_makes_to_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("secret");
    let mesh = Mesh::builder("keys-file")
        .secret_file(&file)
        .runtime_dir(dir.path().join("run"))
        .persist(false)
        .join()
        .await
        .expect("joins");
    let mut watch = mesh.keyring().watch();
    watch.borrow_and_update();
    let (_, id) = Keyring::edit(&file, |r| r.install(key(5))).expect("edits");
    tokio::time::timeout(WITHIN, watch.changed())
        .await
        .expect("applied in time")
        .expect("mesh running");
    assert!(mesh.keyring().list().accepted.contains(&id.to_string()));

    // A corrupt file is refused; the window keeps its keys.
    std::fs::write(&file, "statemesh-keyring v1\nprimary nothex\n").expect("writes");
    let e = mesh.keyring().reload().expect_err("corrupt");
    assert!(e.to_string().contains("line 2"), "{e}");
    assert!(mesh.keyring().list().accepted.contains(&id.to_string()));
    mesh.shutdown().await;
}
