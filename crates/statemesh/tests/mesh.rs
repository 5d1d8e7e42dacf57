//! Several meshes in one process, for real: local sockets in a private temporary directory,
//! QUIC on loopback, state files on disk.

use std::path::Path;
use std::time::Duration;

use statemesh::discovery::MemoryRegistry;
use statemesh::{AckError, JoinError, Leadership, Mesh, PeerId, Scope, Secret};

mod support;

use support::{WITHIN, until};

async fn window(dir: &Path, name: &str) -> Mesh {
    Mesh::builder(name)
        .secret(Secret::from_bytes([9; 32]))
        .runtime_dir(dir.join("run"))
        .state_dir(dir.join("state"))
        .join()
        .await
        .expect("joins")
}

/// Waits until `mesh` sees `leader` lead under some term.
async fn leader_seen(mesh: &Mesh, leader: PeerId) -> Leadership {
    let mut rx = mesh.leadership();
    let seen = tokio::time::timeout(WITHIN, async {
        loop {
            let l = rx.recv().await.expect("mesh running");
            if l.leader == Some(leader) && l.term.is_some() {
                return l;
            }
        }
    })
    .await;
    seen.unwrap_or_else(|_| {
        panic!(
            "{:?} never saw {leader:?} lead; it sees {:?}",
            mesh.id(),
            mesh.leadership().current()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_share_state_elect_the_lowest_and_fail_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = window(dir.path(), "ws").await;
    let b = window(dir.path(), "ws").await;
    let c = window(dir.path(), "ws").await;
    let mut ids = [a.id(), b.id(), c.id()];
    ids.sort();
    let by_id = |id: PeerId| {
        [&a, &b, &c]
            .into_iter()
            .find(|m| m.id() == id)
            .expect("exists")
            .clone()
    };
    let lowest = ids[0];
    let mut terms = Vec::new();
    for m in [&a, &b, &c] {
        terms.push(leader_seen(m, lowest).await.term);
    }
    assert!(
        terms.windows(2).all(|w| w[0] == w[1]),
        "one term: {terms:?}"
    );

    // Every window writes at once; counters add up, records merge.
    for m in [&a, &b, &c] {
        let durable = m
            .add("ws-1/desired", 1, Scope::Durable)
            .expect("write")
            .durable();
        tokio::time::timeout(WITHIN, durable)
            .await
            .expect("durable in time")
            .expect("durable");
        let pending = m
            .put("windows", &m.id().to_string(), &true, Scope::Durable)
            .expect("write");
        let held = tokio::time::timeout(WITHIN, pending.replicated(2)).await;
        held.expect("replicated in time")
            .expect("held by both others");
    }
    for m in [&a, &b, &c] {
        until(m, "counters add up", |m| {
            m.counter("ws-1/desired") == 3 && m.keys("windows").len() == 3
        })
        .await;
    }

    // The leader writes probe results under its term; everyone reads them.
    let leader = by_id(lowest);
    let lead = tokio::time::timeout(WITHIN, leader.lead())
        .await
        .expect("leads")
        .expect("running");
    lead.put("probes", "api:443", &"up".to_string())
        .expect("leader write");
    for m in [&a, &b, &c] {
        until(m, "probe visible", |m| {
            m.leader_get::<String>("probes", "api:443")
                .ok()
                .flatten()
                .is_some()
        })
        .await;
        let (v, t) = m
            .leader_get::<String>("probes", "api:443")
            .expect("read")
            .expect("present");
        assert_eq!((v.as_str(), Some(t.number)), ("up", terms[0]));
        assert_eq!(t, lead.term_id(), "the record carries its writer's term");
    }

    // Kill the leader abruptly (no leave): its local socket closes, the others take over.
    let survivors: Vec<Mesh> = [&a, &b, &c]
        .into_iter()
        .filter(|m| m.id() != lowest)
        .cloned()
        .collect();
    drop(lead);
    drop(leader);
    drop((a, b, c));
    for m in &survivors {
        let l = leader_seen(m, ids[1]).await;
        assert!(l.term > terms[0], "a new term");
        until(m, "dead leader's probes gone", |m| {
            m.leader_keys("probes").is_empty()
        })
        .await;
        assert_eq!(m.counter("ws-1/desired"), 3, "durable counts stay");
    }

    // Graceful leave of the new leader: the last one takes over.
    let (next, last) = if survivors[0].id() == ids[1] {
        (&survivors[0], &survivors[1])
    } else {
        (&survivors[1], &survivors[0])
    };
    next.shutdown().await;
    leader_seen(last, ids[2]).await;
    assert!(last.members().iter().any(|m| m.peer == ids[1] && !m.live));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_window_gets_its_state_back_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let a = window(dir.path(), "ws").await;
        let w = a
            .put("notes", "n1", &"kept".to_string(), Scope::Durable)
            .expect("write")
            .durable();
        tokio::time::timeout(WITHIN, w)
            .await
            .expect("in time")
            .expect("durable");
        let w = a.add("total", 5, Scope::Durable).expect("write").durable();
        tokio::time::timeout(WITHIN, w)
            .await
            .expect("in time")
            .expect("durable");
        a.shutdown().await;
    }
    let again = window(dir.path(), "ws").await;
    assert_eq!(
        again.get::<String>("notes", "n1").expect("read"),
        Some("kept".into())
    );
    assert_eq!(again.counter("total"), 5);
    assert!(again.loaded().salvaged.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshes_with_other_names_or_secrets_stay_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = window(dir.path(), "ws").await;
    let other = window(dir.path(), "other").await;
    let stranger = Mesh::builder("ws")
        .secret(Secret::from_bytes([1; 32]))
        .runtime_dir(dir.path().join("run"))
        .persist(false)
        .join()
        .await
        .expect("joins");
    a.put("k", "v", &1i64, Scope::Durable).expect("write");
    // Each leads its own world.
    leader_seen(&a, a.id()).await;
    leader_seen(&other, other.id()).await;
    leader_seen(&stranger, stranger.id()).await;
    assert_eq!(other.get::<i64>("k", "v").expect("read"), None);
    assert_eq!(stranger.get::<i64>("k", "v").expect("read"), None);
    assert_eq!(a.members().len(), 1);
}

/// A window that is not async (a plain thread) joins with its own runtime thread.
#[test]
fn a_blocking_window_shares_state_with_an_async_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = Mesh::builder("ws")
        .secret(Secret::from_bytes([9; 32]))
        .runtime_dir(dir.path().join("run"))
        .persist(false)
        .join_blocking()
        .expect("joins");
    plain.block_on(async {}).expect("own runtime");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let other = window(dir.path(), "ws").await;
        let pending = plain
            .add("from-a-thread", 2, Scope::Durable)
            .expect("write");
        tokio::time::timeout(WITHIN, pending.replicated(1))
            .await
            .expect("in time")
            .expect("held");
        until(&other, "sees the blocking window's write", |m| {
            m.counter("from-a-thread") == 2
        })
        .await;
        other.shutdown().await;
    });
    drop(plain);
}

/// A lead guard and a pending acknowledgement that outlive their mesh learn that it is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_outliving_their_mesh_are_cancelled() {
    let mesh = Mesh::builder("alone")
        .secret(Secret::from_bytes([5; 32]))
        .local_discovery(false)
        .persist(false)
        .join()
        .await
        .expect("joins");
    let lead = tokio::time::timeout(WITHIN, mesh.lead())
        .await
        .expect("leads alone")
        .expect("running");
    assert!(lead.is_valid());
    let pending = mesh.put("k", "v", &1i64, Scope::Durable).expect("write");
    drop(mesh);
    tokio::time::timeout(WITHIN, lead.cancelled())
        .await
        .expect("cancelled once the mesh is gone");
    assert!(!lead.is_valid());
    assert!(
        lead.put("probes", "x", &1i64).is_err(),
        "a guard of a dropped mesh writes nothing"
    );
    let r = tokio::time::timeout(WITHIN, pending.replicated(1))
        .await
        .expect("resolves");
    assert!(r.is_err(), "no peer will ever hold it");
}

/// A window found through an in-process registry only (no local sockets, nothing on disk).
async fn memory_window(registry: &MemoryRegistry, secret: u8) -> Mesh {
    Mesh::builder("mem")
        .secret(Secret::from_bytes([secret; 32]))
        .local_discovery(false)
        .persist(false)
        .discovery(registry.discovery())
        .join()
        .await
        .expect("joins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_discovery_static_peers_and_metrics() {
    let registry = MemoryRegistry::new();
    let a = memory_window(&registry, 1).await;
    let b = memory_window(&registry, 1).await;
    let lowest = a.id().min(b.id());
    leader_seen(&a, lowest).await;
    leader_seen(&b, lowest).await;

    // A write is acknowledged by the other window, and the delay is measured on one clock.
    a.put("c", "k", &"v".to_string(), Scope::Durable)
        .expect("writes")
        .replicated(1)
        .await
        .expect("replicated");
    until(&b, "b holds a's write", |m| {
        m.get::<String>("c", "k").ok().flatten().as_deref() == Some("v")
    })
    .await;
    let m = a.metrics();
    assert_eq!(m.links, 1, "{m:?}");
    assert!(m.propagation.samples >= 1, "{m:?}");
    assert!(m.propagation.max_us >= m.propagation.p50_us, "{m:?}");
    assert!(m.sync_out >= 1 && m.bytes_out > 0, "{m:?}");
    assert_eq!((m.auth_failures, m.decode_errors), (0, 0), "{m:?}");

    // A window with another secret, dialling a's address statically, is refused by a and
    // learns nothing; both sides count the failure.
    let quic = a.quic_addr();
    let intruder = Mesh::builder("mem")
        .secret(Secret::from_bytes([2; 32]))
        .local_discovery(false)
        .persist(false)
        .static_peer(quic)
        .join()
        .await
        .expect("joins");
    let refused = async {
        while a.metrics().auth_failures == 0 || intruder.metrics().auth_failures == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WITHIN, refused)
        .await
        .expect("refusals counted on both sides");
    assert!(intruder.channels().is_empty());
    assert_eq!(intruder.metrics().links, 0);

    // A window leaving the registry is certainly gone: the other leads at once.
    let (gone, stays) = if a.id() == lowest { (a, b) } else { (b, a) };
    drop(gone);
    leader_seen(&stays, stays.id()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_change_stream_starts_at_join() {
    let registry = MemoryRegistry::new();
    let a = memory_window(&registry, 3).await;
    a.put("c", "early", &1i64, Scope::Durable).expect("writes");
    let b = memory_window(&registry, 3).await;
    tokio::time::timeout(WITHIN, b.synced())
        .await
        .expect("syncs in time")
        .expect("running");
    assert_eq!(b.get::<i64>("c", "early").expect("reads"), Some(1));
    // Subscribing only now still shows the change that arrived after join.
    let mut changes = b.changes();
    let got: Vec<_> = std::iter::from_fn(|| changes.try_recv().and_then(Result::ok)).collect();
    let seen = got.iter().any(|c| c.key == "early");
    assert!(
        seen,
        "the change made before subscribing was delivered: {got:?}"
    );
    // Later subscriptions start at the call.
    assert!(b.changes().try_recv().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_reaches_peers_linked_only_by_quic() {
    // Static peers only: no local socket whose EOF would tell the others anyway.
    let first = Mesh::builder("leave")
        .secret(Secret::from_bytes([5; 32]))
        .local_discovery(false)
        .persist(false)
        .join()
        .await
        .expect("joins");
    let second = Mesh::builder("leave")
        .secret(Secret::from_bytes([5; 32]))
        .local_discovery(false)
        .persist(false)
        .static_peer(first.quic_addr())
        .join()
        .await
        .expect("joins");
    let lowest = first.id().min(second.id());
    leader_seen(&first, lowest).await;
    leader_seen(&second, lowest).await;
    let (leaving, staying) = if first.id() == lowest {
        (first, second)
    } else {
        (second, first)
    };
    let gone = leaving.id();
    leaving.shutdown().await;
    leader_seen(&staying, staying.id()).await;
    let cause = staying
        .explain()
        .peers
        .into_iter()
        .find(|p| p.peer == gone)
        .and_then(|p| p.death);
    assert_eq!(
        cause,
        Some(statemesh_core::liveness::DeathCause::Left),
        "the leave message arrived before the connection closed"
    );
}

/// Issue 14, item 2: a window that read right after `join` missed the mesh's state (8-10 of 10
/// tries, through the sidecar). `join` now returns once it holds what the peers it found hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_returns_holding_what_the_peers_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = window(dir.path(), "joins").await;
    a.transact(|tx| {
        for i in 0..200i64 {
            tx.put("big", &format!("k{i:03}"), &i, Scope::Durable)?;
        }
        Ok(())
    })
    .expect("writes");
    a.add("jobs", 7, Scope::Durable).expect("adds");
    for trial in 0..3 {
        // In memory: it can only get the state from `a`.
        let b = Mesh::builder("joins")
            .secret(Secret::from_bytes([9; 32]))
            .runtime_dir(dir.path().join("run"))
            .persist(false)
            .join()
            .await
            .expect("joins");
        assert!(b.synced_on_join(), "trial {trial}");
        assert_eq!(b.keys("big").len(), 200, "trial {trial}");
        assert_eq!(b.get::<i64>("big", "k199").expect("reads"), Some(199));
        assert_eq!(b.counter("jobs"), 7);
        b.shutdown().await;
    }
    // Not waiting is allowed, and said. (With no time to wait, `join` says whether the window
    // happened to hold the state already: its driver runs on another thread and may have
    // linked and synced before `join` looked, so either answer is right; it must not claim
    // a sync it did not have. Asserting `false` failed once in a full test run.)
    let c = Mesh::builder("joins")
        .secret(Secret::from_bytes([9; 32]))
        .runtime_dir(dir.path().join("run"))
        .persist(false)
        .join_timeout(Duration::ZERO)
        .join()
        .await
        .expect("joins");
    assert!(!c.synced_on_join() || c.is_synced());
    tokio::time::timeout(WITHIN, c.synced())
        .await
        .expect("in time")
        .expect("synced");
    assert!(c.is_synced());
    assert_eq!(c.keys("big").len(), 200);
}

/// Issue 14, item 5: `durable()` resolved Ok with persistence off, and waits had no timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_fail_with_a_reason_or_time_out() {
    let m = Mesh::builder("acks")
        .secret(Secret::from_bytes([9; 32]))
        .local_discovery(false)
        .persist(false)
        .ack_timeout(Duration::from_millis(50))
        .join()
        .await
        .expect("joins");
    let e = m
        .put("c", "k", &1i64, Scope::Durable)
        .expect("writes")
        .durable()
        .await;
    assert!(matches!(e, Err(AckError::PersistenceOff)), "{e:?}");
    // No peer: the builder's timeout ends the wait; a write's own timeout overrides it.
    let e = m
        .put("c", "k", &2i64, Scope::Durable)
        .expect("writes")
        .replicated(1)
        .await;
    assert!(matches!(e, Err(AckError::Timeout { .. })), "{e:?}");
    let started = std::time::Instant::now();
    let e = m
        .put("c", "k", &3i64, Scope::Durable)
        .expect("writes")
        .timeout(Duration::from_millis(300))
        .replicated(1)
        .await;
    assert!(matches!(e, Err(AckError::Timeout { .. })), "{e:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(m.get::<i64>("c", "k").expect("reads"), Some(3), "applied");
}

/// Issue 14, item 8: timers are checked at join, and `Config` is taken whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_are_checked_and_config_is_taken_whole() {
    let base = || {
        Mesh::builder("timers")
            .secret(Secret::from_bytes([9; 32]))
            .local_discovery(false)
            .persist(false)
    };
    for bad in [
        base().heartbeat_interval(Duration::ZERO),
        base().suspect_timeout(Duration::from_millis(100)),
        base().max_frame(10),
    ] {
        let e = bad.join().await.expect_err("refused");
        assert!(matches!(e, JoinError::InvalidConfig(_)), "{e}");
    }
    let mut config = statemesh::Config::default();
    config.heartbeat_interval = Duration::from_millis(100);
    config.suspect_timeout = Duration::from_millis(50);
    let e = base().config(config).join().await.expect_err("refused");
    assert!(e.to_string().contains("suspect_timeout"), "{e}");
    let mut config = statemesh::Config::default();
    config.join_grace = Duration::from_millis(10);
    let m = base().config(config).join().await.expect("joins");
    assert!(m.synced_on_join());
}
