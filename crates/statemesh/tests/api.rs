//! The public surface on a real mesh: subscriptions as streams (lag reported, the end after a
//! shutdown), and each operation's own error kinds.

use std::time::Duration;

use futures_util::StreamExt;
use statemesh::{
    AckError, Closed, Lagged, Mesh, MeshError, NoRuntime, ReadError, Scope, Secret, WriteError,
};

/// A generous safety net; the events themselves take milliseconds.
const WITHIN: Duration = Duration::from_secs(15);

/// A window alone: no discovery, nothing on disk.
async fn alone(name: &str) -> Mesh {
    Mesh::builder(name)
        .secret(Secret::from_bytes([4; 32]))
        .local_discovery(false)
        .persist(false)
        .join()
        .await
        .expect("joins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_reports_lag_then_goes_on_and_ends_at_shutdown() {
    let mesh = alone("lag").await;
    let mut changes = mesh.changes();
    let mut watcher = mesh.changes();
    // One atomic change of 5,000 keys: 5,000 changes, more than a subscriber may fall behind.
    mesh.transact(|tx| {
        for i in 0..5_000i64 {
            tx.put("bulk", &format!("k{i:04}"), &i, Scope::Durable)?;
        }
        Ok(())
    })
    .expect("writes");
    // Once a reader that keeps up saw the last one, all were published.
    tokio::time::timeout(WITHIN, async {
        while let Some(c) = watcher.next().await {
            if c.is_ok_and(|c| c.key == "k4999") {
                return;
            }
        }
    })
    .await
    .expect("published");
    let first = tokio::time::timeout(WITHIN, changes.next())
        .await
        .expect("in time")
        .expect("open");
    let Err(Lagged { missed }) = first else {
        panic!("a subscriber 5,000 changes behind is told it lagged, got {first:?}");
    };
    assert!(
        missed >= 5_000 - 4_096,
        "at least the changes beyond the buffer: {missed}"
    );
    // What is still buffered comes next, in order, up to the newest.
    let mut buffered = 0;
    loop {
        let c = changes.next().await.expect("open").expect("no second lag");
        buffered += 1;
        if c.key == "k4999" {
            break;
        }
    }
    assert!(buffered <= 4_096, "{buffered}");
    // A write after the lag is seen too.
    let mut fresh = mesh.changes();
    mesh.put("solo", "x", &1i64, Scope::Durable)
        .expect("writes");
    let c = tokio::time::timeout(WITHIN, fresh.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("no lag");
    assert_eq!(c.key, "x");
    // The end: after a shutdown, every subscription ends (once drained).
    mesh.shutdown().await;
    let rest = tokio::time::timeout(WITHIN, changes.count())
        .await
        .expect("the stream ends");
    assert!(rest >= 1, "the write after the lag, then the end: {rest}");
    assert!(
        tokio::time::timeout(WITHIN, fresh.next())
            .await
            .expect("ends")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leadership_stream_shows_this_window_lead_then_ends_at_shutdown() {
    let mesh = alone("leads").await;
    let mut leadership = mesh.leadership();
    let led = tokio::time::timeout(WITHIN, async {
        while let Some(l) = leadership.next().await {
            if l.is_me {
                return l;
            }
        }
        panic!("the stream ended before this window led");
    })
    .await
    .expect("a window alone leads");
    assert_eq!(led.leader, Some(mesh.id()));
    assert!(led.term.is_some());
    assert_eq!(
        leadership.current(),
        led,
        "current() reads the same snapshot"
    );
    assert_eq!(mesh.leadership().current(), led);
    // A new subscription starts with the current snapshot.
    let mut late = mesh.leadership();
    assert_eq!(late.next().await, Some(led));
    mesh.shutdown().await;
    let last = tokio::time::timeout(WITHIN, leadership.next())
        .await
        .expect("in time");
    assert_eq!(
        last.map(|l| l.leader),
        Some(None),
        "nobody leads a closed mesh"
    );
    assert_eq!(leadership.next().await, None, "then the end");
    assert!(mesh.lead().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_fails_with_its_own_kind() {
    let mesh = alone("errors").await;
    // Writes.
    let e = mesh
        .put("", "k", &1i64, Scope::Durable)
        .expect_err("refused");
    assert!(
        matches!(e, WriteError::InvalidName(ref n) if n.is_empty()),
        "{e}"
    );
    mesh.add("n", i64::MAX, Scope::Durable).expect("writes");
    let e = mesh.add("n", 1, Scope::Durable).expect_err("refused");
    assert!(
        matches!(e, WriteError::CounterOverflow { by: 1, .. }),
        "{e}"
    );
    assert_eq!(mesh.counter("n"), i64::MAX, "nothing written");
    // A transaction is refused whole, with the error its closure returned.
    let e = mesh
        .transact(|tx| {
            tx.put("t", "a", &1i64, Scope::Durable)?;
            Err(WriteError::InvalidName("mine".into()))
        })
        .expect_err("refused");
    assert!(
        matches!(e, WriteError::InvalidName(ref n) if n == "mine"),
        "{e}"
    );
    assert_eq!(
        mesh.get::<i64>("t", "a").expect("reads"),
        None,
        "rolled back"
    );
    // Reads.
    mesh.put("r", "k", &"text".to_string(), Scope::Durable)
        .expect("writes");
    let e = mesh.get::<i64>("r", "k").expect_err("not an integer");
    assert!(matches!(e, ReadError::Hydrate(_)), "{e}");
    let e = mesh.get::<i64>("r", "\u{0}").expect_err("invalid");
    assert!(matches!(e, ReadError::InvalidName(_)), "{e}");
    // Blocking use of a mesh on the caller's runtime.
    assert_eq!(mesh.block_on(async {}), Err(NoRuntime));
    // Acknowledgements: persistence is off here.
    let pending = mesh.put("a", "k", &1i64, Scope::Durable).expect("writes");
    assert_eq!(pending.durable().await, Err(AckError::PersistenceOff));
    let waiting = mesh
        .put("a", "k", &2i64, Scope::Durable)
        .expect("writes")
        .timeout(WITHIN)
        .replicated(1);
    let waiting = tokio::spawn(waiting);
    tokio::task::yield_now().await;
    // Everything after a shutdown.
    let lead = tokio::time::timeout(WITHIN, mesh.lead())
        .await
        .expect("in time")
        .expect("alone, it leads");
    mesh.shutdown().await;
    assert_eq!(
        tokio::time::timeout(WITHIN, waiting)
            .await
            .expect("in time")
            .expect("no panic"),
        Err(AckError::Closed),
        "a wait under way ends with the mesh"
    );
    let e = mesh
        .put("c", "k", &1i64, Scope::Durable)
        .expect_err("closed");
    assert!(matches!(e, WriteError::Closed), "{e}");
    let e = lead.put("probes", "x", &1i64).expect_err("closed");
    assert!(matches!(e, WriteError::Closed), "{e}");
    assert_eq!(mesh.synced().await, Err(Closed));
    // The umbrella keeps the kind, for `?`.
    let any: MeshError = mesh.delete("c", "k").expect_err("closed").into();
    assert!(matches!(any, MeshError::Write(WriteError::Closed)), "{any}");
}
