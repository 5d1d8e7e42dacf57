//! Backpressure, for real: two windows linked by QUIC on loopback (found through an
//! in-process registry). A writer far ahead of its peer is refused at the hard bound, nothing
//! written, and `backpressure()` resolves once the peer has caught up.

use std::time::Duration;

use statemesh::discovery::MemoryRegistry;
use statemesh::{JoinError, Mesh, Scope, Secret, WriteError};

/// A generous safety net; the events themselves take milliseconds.
const WITHIN: Duration = Duration::from_secs(15);

async fn window(registry: &MemoryRegistry, soft: usize, hard: usize) -> Mesh {
    Mesh::builder("pressure")
        .secret(Secret::from_bytes([3; 32]))
        .local_discovery(false)
        .persist(false)
        .discovery(registry.discovery())
        .backpressure(soft, hard)
        .join()
        .await
        .expect("joins")
}

/// Two windows with these bounds, linked both ways: the second holds a write of the first.
async fn linked(soft: usize, hard: usize) -> (Mesh, Mesh) {
    let registry = MemoryRegistry::new();
    let a = window(&registry, soft, hard).await;
    let b = window(&registry, soft, hard).await;
    tokio::time::timeout(WITHIN, async {
        a.put("w", "warm", &0, Scope::Durable)
            .expect("writes")
            .replicated(1)
            .await
    })
    .await
    .expect("linked")
    .expect("replicated");
    (a, b)
}

// A current-thread runtime: while the test writes without awaiting, no driver runs, so the
// peer acknowledges nothing and the backlog only grows (deterministically).
#[tokio::test]
async fn a_writer_ahead_of_its_peer_is_refused_then_released() {
    let (a, b) = linked(4, 8).await;
    let pressure = a.backpressure_watch();
    assert!(!*pressure.borrow(), "nothing written yet");
    for i in 0..8 {
        a.put("c", &format!("k{i}"), &i, Scope::Durable)
            .expect("under the hard bound");
    }
    assert!(*pressure.borrow(), "past the soft bound");
    match a.put("c", "refused", &8, Scope::Durable) {
        Err(WriteError::Backpressure { backlog, limit }) => {
            assert_eq!(limit, 8);
            assert!(backlog >= 8, "{backlog}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(a.keys("c").len(), 8, "the refused write wrote nothing");
    tokio::time::timeout(WITHIN, a.backpressure())
        .await
        .expect("the peer caught up")
        .expect("mesh open");
    assert!(!*pressure.borrow());
    let m = a.metrics();
    assert!(m.backlog < 2, "under half the soft bound: {m:?}");
    assert_eq!(m.writes_refused, 1, "{m:?}");
    assert!(b.keys("c").len() >= 7, "the peer holds all but at most one");
    a.put("c", "after", &9, Scope::Durable)
        .expect("accepted again");
    a.shutdown().await;
    assert!(
        a.backpressure().await.is_err(),
        "waiting on a closed mesh ends"
    );
}

/// A transaction weighs the records it wrote: one of five presses at once past a soft bound
/// of 4 (the writer's own judgement, before any driver turn), and a second takes the backlog
/// past the hard bound of 8, after which a write is refused until the peer has caught up.
#[tokio::test]
async fn a_transaction_weighs_the_records_it_wrote() {
    let (a, _b) = linked(4, 8).await;
    let pressure = a.backpressure_watch();
    let five = |prefix: &str| {
        a.transact(|tx| {
            for i in 0..5 {
                tx.put("c", &format!("{prefix}{i}"), &i, Scope::Durable)?;
            }
            Ok(())
        })
    };
    five("x").expect("under the hard bound");
    assert!(*pressure.borrow(), "five records: past the soft bound");
    five("y").expect("5 is under the hard bound");
    match a.put("c", "refused", &8, Scope::Durable) {
        Err(WriteError::Backpressure { backlog, limit }) => {
            assert_eq!(limit, 8);
            assert!(backlog >= 10, "{backlog}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    tokio::time::timeout(WITHIN, a.backpressure())
        .await
        .expect("the peer caught up")
        .expect("mesh open");
    a.put("c", "after", &9, Scope::Durable)
        .expect("accepted again");
}

#[tokio::test]
async fn backpressure_bounds_are_checked() {
    let registry = MemoryRegistry::new();
    for (soft, hard) in [(0, 8), (9, 8), (8, 1 << 20)] {
        let joined = Mesh::builder("pressure-bounds")
            .secret(Secret::from_bytes([4; 32]))
            .local_discovery(false)
            .persist(false)
            .discovery(registry.discovery())
            .backpressure(soft, hard)
            .join()
            .await;
        assert!(
            matches!(joined, Err(JoinError::InvalidConfig(_))),
            "{soft} / {hard}"
        );
    }
}
