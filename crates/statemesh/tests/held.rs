//! A window whose node is held for long by the application goes on hearing its peers and
//! being heard. Two windows for real (local sockets in a private temporary directory, QUIC on
//! loopback), each on its own runtime as `join_blocking` makes it (one worker thread, as an
//! egui or Tauri window would run it).

use std::path::Path;
use std::time::Duration;

use statemesh::{Leadership, Mesh, PeerId, Scope, Secret};

/// A generous safety net; the events themselves take milliseconds.
const WITHIN: Duration = Duration::from_secs(15);

/// The default suspect timeout (see `MeshBuilder`).
const SUSPECT_TIMEOUT: Duration = Duration::from_secs(1);

fn window(dir: &Path) -> Mesh {
    Mesh::builder("held")
        .secret(Secret::from_bytes([5; 32]))
        .runtime_dir(dir.join("run"))
        .state_dir(dir.join("state"))
        .suspect_timeout(SUSPECT_TIMEOUT)
        .join_blocking()
        .expect("joins")
}

/// Waits until `mesh` sees `leader` lead under some term.
fn leader_seen(mesh: &Mesh, leader: PeerId) -> Leadership {
    let mut rx = mesh.leadership();
    let wait = async {
        loop {
            let l = rx.recv().await.expect("mesh running");
            if l.leader == Some(leader) && l.term.is_some() {
                return l;
            }
        }
    };
    mesh.block_on(async { tokio::time::timeout(WITHIN, wait).await })
        .expect("the mesh's runtime")
        .unwrap_or_else(|_| panic!("{:?} never saw {leader:?} lead", mesh.id()))
}

/// The incarnation `mesh` knows `peer` by, and whether it holds it live.
fn seen(mesh: &Mesh, peer: PeerId) -> (u64, bool) {
    let m = mesh
        .members()
        .into_iter()
        .find(|m| m.peer == peer)
        .expect("a member");
    (m.incarnation, m.live)
}

/// The node held by the application nearly all the time for four suspect timeouts (here by
/// transactions computing inside their closures; a read listing a channel of 100,000 records
/// held it for a good part of a second): heartbeats go on both ways (the pulse has a thread of
/// its own and never takes the node; the driver waits for the node off the runtime's worker,
/// so the links' readers and QUIC keep running). Neither window suspects the other (a
/// suspicion would show as a new incarnation or a dead member), and the leadership does not
/// move.
#[test]
fn a_window_whose_node_is_held_is_not_taken_for_frozen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (window(dir.path()), window(dir.path()));
    let lowest = a.id().min(b.id());
    let term = leader_seen(&a, lowest).term;
    assert_eq!(leader_seen(&b, lowest).term, term);
    a.put("c", "k", &0u64, Scope::Durable).expect("write");
    let before = (seen(&a, b.id()), seen(&b, a.id()));
    let changes_before = (
        a.metrics().leadership_changes,
        b.metrics().leadership_changes,
    );

    // For four suspect timeouts, two threads of `a`'s application take turns holding the node
    // in transactions longer than the suspect timeout (one always waits for the other, so the
    // driver, woken by each, waits for the node between its turns), while `b` writes: `b`'s
    // sync messages reach `a`'s driver too.
    let (holding, hold_started) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let holders: Vec<_> = (0..2u64)
            .map(|t| {
                let holding = holding.clone();
                let a = &a;
                s.spawn(move || {
                    let start = std::time::Instant::now();
                    let mut n = 0u64;
                    while start.elapsed() < 4 * SUSPECT_TIMEOUT {
                        n += 1;
                        a.transact(|tx| {
                            let _ = holding.send(());
                            std::thread::sleep(SUSPECT_TIMEOUT + SUSPECT_TIMEOUT / 5);
                            tx.put("c", &format!("t{t}"), &n, Scope::Durable)
                        })
                        .expect("write");
                    }
                    n
                })
            })
            .collect();
        hold_started.recv().expect("the hold started");
        b.put("c", "b", &1u64, Scope::Durable).expect("write");
        for h in holders {
            assert!(h.join().expect("no panic") >= 1);
        }
        a.put("c", "k", &1u64, Scope::Durable).expect("write");
    });

    // Each window's write reaches the other.
    for (m, key) in [(&b, "k"), (&a, "b")] {
        let mut changes = m.changes();
        let reached = m.block_on(async {
            tokio::time::timeout(WITHIN, async {
                while m.get::<u64>("c", key).expect("read") != Some(1) {
                    let _ = changes.recv().await;
                }
            })
            .await
        });
        reached
            .expect("the mesh's runtime")
            .expect("the write reached the other window");
    }

    assert_eq!(
        (seen(&a, b.id()), seen(&b, a.id())),
        before,
        "a window was suspected while the other's node was held"
    );
    assert_eq!(
        (
            a.metrics().leadership_changes,
            b.metrics().leadership_changes
        ),
        changes_before,
        "the leadership moved"
    );
    assert_eq!(a.leadership().current().term, term);
    assert_eq!(
        (a.metrics().suspicions_refuted, a.metrics().freezes),
        (0, 0)
    );
    assert_eq!(b.metrics().suspicions_refuted, 0);
}
