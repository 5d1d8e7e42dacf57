//! The public API a window embeds: [`Mesh`], its writes and reads, the acknowledgements of a
//! write ([`Pending`]) and the guard of a leadership ([`Lead`]). A mesh is built and joined by
//! [`MeshBuilder`](crate::MeshBuilder) (`builder.rs`, which also holds [`Mesh::builder`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autosurgeon::{Hydrate, Reconcile};
use statemesh_core::{Node, PeerId, ReadError, Scope, Term, Value, WriteId, WriteStatus, Written};
use tokio::sync::watch;

use crate::driver::Driver;
use crate::error::{AckError, Closed, NoRuntime, WriteError};
use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::status::{Explanation, Leadership, Member};
use crate::store::LoadSummary;
use crate::subscribe::{ChangeStream, LeadershipStream};

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    driver: Mutex<Option<Driver>>,
    /// The mesh's own runtime, for meshes joined with
    /// [`MeshBuilder::join_blocking`](crate::MeshBuilder::join_blocking). Declared
    /// last: it is dropped after the driver was aborted.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stop the driver (no leave), then let the runtime go without blocking on its threads.
        if let Ok(mut d) = self.driver.lock() {
            d.take();
        }
        // Guards and waiters that outlive the last handle learn that it is over.
        self.shared.close();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A window's handle on the mesh. Cheap to clone; the mesh leaves (gracefully, with a
/// [`shutdown`](Mesh::shutdown), or abruptly when the last handle is dropped: no task, socket
/// file or advertisement stays behind).
#[derive(Debug, Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

impl Mesh {
    /// The handle on a mesh whose driver runs (on `runtime`, if the mesh has its own).
    pub(crate) fn new(
        shared: Arc<Shared>,
        driver: Driver,
        runtime: Option<tokio::runtime::Runtime>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared,
                driver: Mutex::new(Some(driver)),
                runtime,
            }),
        }
    }
}

/// A local write, applied to this window's document. Await [`durable`](Pending::durable) or
/// [`replicated`](Pending::replicated) for stronger guarantees.
#[derive(Debug)]
pub struct Pending {
    shared: Arc<Shared>,
    written: Written,
    timeout: Duration,
}

impl Pending {
    /// The write's id.
    pub fn id(&self) -> WriteId {
        self.written.id
    }

    /// Whether the write changed anything (an equal value is not rewritten).
    pub fn changed(&self) -> bool {
        self.written.changed
    }

    /// How long [`durable`](Self::durable) or [`replicated`](Self::replicated) waits for this
    /// write (default: the mesh's [`ack_timeout`](crate::MeshBuilder::ack_timeout), 10 s).
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Resolves once the write is on this machine's disk (fsynced); a write that changed
    /// nothing at once. Fails, the write still applied, with [`AckError::PersistenceOff`]
    /// when persistence is off (at once), [`AckError::StoreFailed`] once writing to disk
    /// failed, [`AckError::Timeout`] after the [`timeout`](Self::timeout), or
    /// [`AckError::Closed`] if the mesh shuts down first.
    pub async fn durable(self) -> Result<(), AckError> {
        if !self.shared.persist() {
            return Err(AckError::PersistenceOff);
        }
        if !self.written.changed {
            return Ok(());
        }
        self.wait(|status, store_failed| {
            if status.durable {
                Some(Ok(()))
            } else {
                store_failed.map(|e| Err(AckError::StoreFailed(e.to_owned())))
            }
        })
        .await
    }

    /// Resolves once `k` other peers hold the write; a write that changed nothing, or `k` of
    /// zero, at once. Fails, the write still applied, with [`AckError::Untracked`] once the
    /// write is no longer watched for replication (older than 600 s, or 4,096 newer writes),
    /// [`AckError::Timeout`] after the [`timeout`](Self::timeout), or [`AckError::Closed`]
    /// if the mesh shuts down first.
    pub async fn replicated(self, k: usize) -> Result<(), AckError> {
        if !self.written.changed || k == 0 {
            return Ok(());
        }
        self.wait(|status, _| {
            if status.holders >= k {
                Some(Ok(()))
            } else if !status.tracked {
                Some(Err(AckError::Untracked))
            } else {
                None
            }
        })
        .await
    }

    /// Waits until `done` decides on the write's acknowledgements (as the node knows them, and
    /// why the store failed, if it did), the mesh closes or the timeout runs out.
    async fn wait(
        &self,
        done: impl Fn(WriteStatus, Option<&str>) -> Option<Result<(), AckError>>,
    ) -> Result<(), AckError> {
        self.shared
            .wait_acks(self.written.id, self.timeout, done)
            .await
    }
}

/// Leadership held by this window: writes made through it carry its term, and are refused
/// once the leadership is known or suspected lost.
#[derive(Debug)]
pub struct Lead {
    shared: Arc<Shared>,
    term: u64,
    leadership: watch::Receiver<Leadership>,
}

impl Lead {
    /// The number of this leadership's term. Another window may have led under the same number
    /// (see [`Term`]); the fencing token is [`term_id`](Self::term_id).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The term of this leadership, the fencing token: its number, led by this window. No other
    /// leadership, of any window, ever has it.
    pub fn term_id(&self) -> Term {
        Term::new(self.term, self.shared.me())
    }

    /// Writes leader record `key` of `channel` under this term. Refused with
    /// [`WriteError::NotLeader`] once the leadership is over (including after this process was
    /// frozen), [`WriteError::Closed`] once the mesh is shut down.
    pub fn put<T: Reconcile>(&self, channel: &str, key: &str, value: &T) -> Result<(), WriteError> {
        self.shared.ensure_open()?;
        let now = self.shared.now();
        self.shared
            .node()
            .leader_put(now, self.term, channel, key, Some(value))?;
        self.shared.wake();
        Ok(())
    }

    /// Deletes leader record `key` of `channel` (refused as [`put`](Self::put) is).
    pub fn delete(&self, channel: &str, key: &str) -> Result<(), WriteError> {
        self.shared.ensure_open()?;
        let now = self.shared.now();
        self.shared
            .node()
            .leader_put::<Value>(now, self.term, channel, key, None)?;
        self.shared.wake();
        Ok(())
    }

    /// Whether this leadership still holds.
    pub fn is_valid(&self) -> bool {
        !self.shared.is_closed() && self.shared.node().my_term() == Some(self.term)
    }

    /// Resolves once this leadership is over.
    pub async fn cancelled(&self) {
        let mut rx = self.leadership.clone();
        loop {
            let l = *rx.borrow_and_update();
            if !(l.is_me && l.term == Some(self.term) && self.is_valid()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Mesh {
    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    fn write(
        &self,
        f: impl FnOnce(&mut Node) -> Result<Written, statemesh_core::WriteError>,
    ) -> Result<Pending, WriteError> {
        let written = self.shared().write(|n| f(n).map_err(WriteError::from))?;
        Ok(Pending {
            shared: self.shared().clone(),
            written,
            timeout: self.shared().ack_timeout(),
        })
    }

    /// This window's peer id.
    pub fn id(&self) -> PeerId {
        self.shared().me()
    }

    /// The address this window's QUIC endpoint listens on (for other machines' static peers).
    pub fn quic_addr(&self) -> SocketAddr {
        self.shared().quic_addr()
    }

    /// Writes record `key` of `channel`, of the given scope: [`Scope::Durable`] stays until
    /// overwritten or deleted, [`Scope::Presence`] is visible only while this window lives.
    pub fn put<T: Reconcile>(
        &self,
        channel: &str,
        key: &str,
        value: &T,
        scope: Scope,
    ) -> Result<Pending, WriteError> {
        self.write(|n| n.put(channel, key, value, scope))
    }

    /// Deletes record `key` of `channel`.
    pub fn delete(&self, channel: &str, key: &str) -> Result<Pending, WriteError> {
        self.write(|n| n.delete(channel, key))
    }

    /// Adds `by` to counter `name` (this window's share of it, of the given scope). Refused
    /// with [`WriteError::CounterOverflow`], nothing written, if this window's share would
    /// leave the signed 64-bit range; the counter's value (several windows' shares) saturates
    /// instead.
    pub fn add(&self, name: &str, by: i64, scope: Scope) -> Result<Pending, WriteError> {
        self.write(|n| n.add(name, by, scope))
    }

    /// Makes several writes as one atomic change: every write of `f` is applied, or (when one
    /// is refused, or `f` returns an error) none. `f` runs once more when it writes to a
    /// channel for the first time (the channel's map is created first), so it should only
    /// write, not act on the world.
    pub fn transact(
        &self,
        mut f: impl FnMut(&mut Tx<'_, '_>) -> Result<(), WriteError>,
    ) -> Result<Pending, WriteError> {
        let mut refused = None;
        let pending = self.write(|n| {
            n.transact(|tx| {
                f(&mut Tx { inner: tx }).map_err(|e| {
                    refused = Some(e);
                    // Only to roll the transaction back; `refused` is what the caller gets.
                    statemesh_core::WriteError::Build("transaction refused".into())
                })
            })
            .map(|((), w)| w)
        });
        match (pending, refused) {
            (Err(_), Some(e)) => Err(e),
            (pending, _) => pending,
        }
    }

    /// Reads record `key` of `channel`.
    pub fn get<T: Hydrate>(&self, channel: &str, key: &str) -> Result<Option<T>, ReadError> {
        self.shared().node().get(channel, key)
    }

    /// The visible keys of `channel`.
    pub fn keys(&self, channel: &str) -> Vec<String> {
        self.shared().node().keys(channel)
    }

    /// Channels holding records.
    pub fn channels(&self) -> Vec<String> {
        self.shared().node().channels()
    }

    /// The value of counter `name`: every writer's share added up (0 for a counter never
    /// written). Beyond the signed 64-bit range, it saturates at `i64::MIN` or `i64::MAX`.
    pub fn counter(&self, name: &str) -> i64 {
        self.shared().node().counter(name)
    }

    /// The names of every counter ever written, sorted (read each with
    /// [`counter`](Self::counter)).
    pub fn counters(&self) -> Vec<String> {
        self.shared().node().counter_names()
    }

    /// Reads leader record `key` of `channel` (with its term: the number and the leader that
    /// wrote it), if a live leader of the newest term wrote it.
    pub fn leader_get<T: Hydrate>(
        &self,
        channel: &str,
        key: &str,
    ) -> Result<Option<(T, Term)>, ReadError> {
        self.shared().node().leader_get(channel, key)
    }

    /// The visible keys of leader channel `channel`.
    pub fn leader_keys(&self, channel: &str) -> Vec<String> {
        self.shared().node().leader_keys(channel)
    }

    /// The changes of the mesh, as a [`Stream`](futures_core::Stream): which channel and key,
    /// written by whom. The first call's stream starts at `join` (so nothing that arrived since
    /// is missed); later calls' start at the call. A subscriber more than 4,096 changes behind
    /// gets [`Lagged`](crate::Lagged) for the missed ones. Ends once the mesh is shut down.
    pub fn changes(&self) -> ChangeStream {
        self.shared().changes()
    }

    /// The leadership as this window sees it, as a [`Stream`](futures_core::Stream) of
    /// snapshots: the current one first, then one at each change;
    /// [`current`](LeadershipStream::current) reads it without waiting. Ends once the mesh is
    /// shut down.
    pub fn leadership(&self) -> LeadershipStream {
        self.shared().leadership()
    }

    /// Waits until this window leads and returns the guard; `None` once the mesh is shut down.
    pub async fn lead(&self) -> Option<Lead> {
        let mut rx = self.shared().leadership_rx();
        loop {
            if self.shared().is_closed() {
                return None;
            }
            let l = *rx.borrow_and_update();
            if let (true, Some(term)) = (l.is_me, l.term)
                && self.shared().node().my_term() == Some(term)
            {
                return Some(Lead {
                    shared: self.shared().clone(),
                    term,
                    leadership: rx,
                });
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Waits until this window has joined (discovery settled, or its join grace is over) and
    /// holds the same document and leader records as every peer it is linked to: what a
    /// short-lived reader (a CLI command) waits for before reading. Resolves at once for a
    /// window alone once it has joined; `Err(Closed)` if the mesh shuts down first.
    pub async fn synced(&self) -> Result<(), Closed> {
        self.shared().synced().await
    }

    /// Whether [`join`](crate::MeshBuilder::join) returned holding what every peer it found
    /// held; `false` if its [`join_timeout`](crate::MeshBuilder::join_timeout) ran out first.
    /// Until [`synced`](Self::synced) resolves (or [`is_synced`](Self::is_synced) is true), a
    /// key that reads as absent may only not have arrived yet.
    pub fn synced_on_join(&self) -> bool {
        self.shared().synced_on_join()
    }

    /// Waits while this window's writer is ahead of its peers: resolves at once unless the
    /// backlog (entries changed by local writes its live linked peers have not all
    /// acknowledged, plus frames
    /// queued to its links) reached the soft bound of
    /// [`MeshBuilder::backpressure`](crate::MeshBuilder::backpressure), and then once it is
    /// back under half of it. Writes are never blocked: they return at once, and are refused
    /// with `WriteError::Backpressure` (nothing written) only at the hard bound. A writer in
    /// a loop awaits this between writes; `Err(Closed)` once the mesh is shut down.
    pub async fn backpressure(&self) -> Result<(), Closed> {
        self.shared().backpressure().await
    }

    /// Whether writes are pushed back now (see [`backpressure`](Self::backpressure)), as a
    /// `watch` a UI loop can read each frame (`*rx.borrow()`) or await (`rx.changed()`).
    pub fn backpressure_watch(&self) -> watch::Receiver<bool> {
        self.shared().pressure()
    }

    /// Whether this window has joined and holds what every peer it is linked to holds, now
    /// (what [`synced`](Self::synced) waits for).
    pub fn is_synced(&self) -> bool {
        self.shared().is_synced()
    }

    /// Peers this window has a link to now.
    pub fn linked(&self) -> usize {
        self.shared().node().linked_peers().len()
    }

    /// Members with their liveness, this window first.
    pub fn members(&self) -> Vec<Member> {
        self.explain().peers
    }

    /// Why this window leads or not: the leadership, the terms seen, and every member's
    /// freshness (a diagnostic: see [`Explanation`]).
    pub fn explain(&self) -> Explanation {
        let now = self.shared().now();
        let node = self.shared().node();
        Explanation::new(node.explain(now), node.my_term())
    }

    /// What this window's mesh did since it joined: leadership changes, sync rounds, bytes,
    /// propagation delays, refused connections and frames.
    pub fn metrics(&self) -> Metrics {
        let stats = self.shared().node().stats();
        let counts = self.shared().counts();
        let sealed = self.shared().view_counts();
        Metrics {
            leadership_changes: stats.leadership_changes,
            sync_in: stats.sync_in,
            sync_out: stats.sync_out,
            sync_resets: stats.sync_resets,
            syncs_owed_by_views: stats.syncs_owed_by_views,
            frames_in: stats.frames_in,
            frames_out: stats.frames_out,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            decode_errors: stats.decode_errors + counts.framing_errors,
            auth_failures: counts.auth_failures_quic + counts.auth_failures_discovery,
            dial_failures: counts.dial_failures,
            probes: counts.probes,
            probe_failures: counts.probe_failures,
            dial_candidates: counts.dial_candidates,
            candidates_forgotten: counts.candidates_forgotten,
            mdns_peers_found: counts.mdns_peers_found,
            discovery_warning: counts.discovery_warning.clone(),
            links: counts.links,
            keys: crate::KeyringInfo::of(&self.shared().keys().current(), self.shared().key_file()),
            link_keys: self
                .keyring()
                .peer_keys()
                .into_iter()
                .map(|(p, k)| (p.to_string(), k))
                .collect(),
            links_opened: counts.links_opened,
            key_renewals: counts.key_renewals,
            key_renewal_failures: counts.key_renewal_failures,
            persist_errors: counts.persist_errors,
            propagation: counts.propagation.summary(),
            freezes: stats.freezes,
            suspicions_refuted: stats.suspicions_refuted,
            tick_late: counts.tick_late.summary(),
            driver_turns: counts.driver_turns.summary(),
            backlog: counts.backlog,
            backlog_peak: counts.backlog_peak,
            writes_refused: counts.writes_refused,
            views_dropped: counts.views_dropped,
            views_sealed_sent: sealed.sent,
            views_sealed_received: sealed.received,
            views_sealed_refused: sealed.refused,
        }
    }

    /// This window's keyring: which key it proves with, which it accepts, which each linked
    /// peer proved with; install, use and remove keys (see [`crate::keys`]).
    pub fn keyring(&self) -> crate::KeyringHandle {
        crate::KeyringHandle {
            shared: self.shared().clone(),
        }
    }

    /// What loading state from disk found at startup.
    pub fn loaded(&self) -> &LoadSummary {
        self.shared().loaded()
    }

    /// Runs `future` to completion from non-async code, on the mesh's own runtime (meshes joined
    /// with [`MeshBuilder::join_blocking`](crate::MeshBuilder::join_blocking)), e.g.
    /// `mesh.block_on(pending.durable())`. Must not be called from inside an async context.
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output, NoRuntime> {
        match &self.inner.runtime {
            Some(rt) => Ok(rt.block_on(future)),
            None => Err(NoRuntime),
        }
    }

    /// Leaves gracefully: announces the leave (the next leader takes over at once), flushes,
    /// and stops every task (waiting at most 3 s for the leave to go out). Handles, guards and
    /// subscriptions learn that the mesh is closed; a second call does nothing.
    pub async fn shutdown(&self) {
        let driver = self
            .inner
            .driver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(d) = driver {
            // A leave cannot fail: what it could not send, peers learn by timeout.
            d.shutdown().await;
        }
    }
}

/// The writes of one atomic change ([`Mesh::transact`]): what is written through it is applied
/// together, or not at all.
pub struct Tx<'t, 'a> {
    inner: &'t mut statemesh_core::Tx<'a>,
}

impl std::fmt::Debug for Tx<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl Tx<'_, '_> {
    /// Writes record `key` of `channel`, of the given scope (as [`Mesh::put`]).
    pub fn put<T: Reconcile>(
        &mut self,
        channel: &str,
        key: &str,
        value: &T,
        scope: Scope,
    ) -> Result<(), WriteError> {
        Ok(self.inner.put(channel, key, value, scope)?)
    }

    /// Deletes record `key` of `channel` (as [`Mesh::delete`]).
    pub fn delete(&mut self, channel: &str, key: &str) -> Result<(), WriteError> {
        Ok(self.inner.delete(channel, key)?)
    }

    /// Adds `by` to counter `name` (as [`Mesh::add`]).
    pub fn add(&mut self, name: &str, by: i64, scope: Scope) -> Result<(), WriteError> {
        Ok(self.inner.add(name, by, scope)?)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::Secret;

    /// A generous safety net; the windows agree within milliseconds.
    const WITHIN: Duration = Duration::from_secs(15);

    async fn window(dir: &Path) -> Mesh {
        Mesh::builder("leadership-from-the-pulse")
            .secret(Secret::from_bytes([6; 32]))
            .runtime_dir(dir.join("run"))
            .state_dir(dir.join("state"))
            .join()
            .await
            .expect("joins")
    }

    /// Waits until `mesh` shows `leader` leading under a term.
    async fn shows(mesh: &Mesh, leader: PeerId) -> Leadership {
        let mut rx = mesh.leadership();
        let wait = async {
            loop {
                let l = rx.current();
                if l.leader == Some(leader) && l.term.is_some() {
                    return l;
                }
                rx.recv().await.expect("open");
            }
        };
        tokio::time::timeout(WITHIN, wait)
            .await
            .unwrap_or_else(|_| panic!("never showed {leader:?}: {:?}", rx.current()))
    }

    /// A window shows a new leadership as soon as its pulse hears of it, even while its
    /// driver is held up (here: the node's lock held, as a long write would), not at the
    /// driver's next turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_leader_shows_while_the_driver_is_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut windows = Vec::new();
        for _ in 0..3 {
            windows.push(window(dir.path()).await);
        }
        windows.sort_by_key(Mesh::id);
        let [first, second, third] = <[Mesh; 3]>::try_from(windows).expect("three");
        for w in [&first, &second, &third] {
            shows(w, first.id()).await;
        }

        // The third window's driver waits for the node from here on (a thread holds it); its
        // pulse does not.
        let (holding, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let shared = Arc::clone(third.shared());
        let holder = std::thread::spawn(move || {
            let _node = shared.node();
            holding.0.send(()).expect("the test waits");
            let _ = release.1.recv();
        });
        holding.1.recv().expect("held");
        first.shutdown().await;
        let seen = shows(&third, second.id()).await;
        release.0.send(()).expect("the holder waits");
        holder.join().expect("released");
        assert!(!seen.is_me);
        assert_eq!(shows(&second, second.id()).await.term, seen.term);
        second.shutdown().await;
        third.shutdown().await;
    }
}
