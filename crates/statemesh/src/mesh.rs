//! The public API a window embeds: [`Mesh`], its writes and reads, the acknowledgements of a
//! write ([`Pending`]) and the guard of a leadership ([`Lead`]). A mesh is built and joined by
//! [`MeshBuilder`](crate::MeshBuilder) (`builder.rs`, which also holds [`Mesh::builder`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};
use statemesh_core::{
    EntryChange, Explanation, Node, PeerId, Scope, Stats, Term, Value, WriteError, WriteId, Written,
};
use tokio::sync::{broadcast, watch};

use crate::driver::Driver;
use crate::error::{AckError, MeshError};
use crate::metrics::Metrics;
use crate::shared::{Acks, LeadershipInfo, Shared};
use crate::store::LoadSummary;

/// One member of the mesh, as this window sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub peer: PeerId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Whether it is live.
    pub live: bool,
    /// Whether it may lead.
    pub eligible: bool,
    /// Time since fresh news of it, on this machine's clock.
    pub silent_for: Duration,
}

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
    /// failed, [`MeshError::Timeout`] after the [`timeout`](Self::timeout), or
    /// [`MeshError::Closed`] if the mesh shuts down first.
    pub async fn durable(self) -> Result<(), MeshError> {
        if !self.shared.persist() {
            return Err(AckError::PersistenceOff.into());
        }
        if !self.written.changed {
            return Ok(());
        }
        let id = self.written.id;
        self.wait("the write to be durable", |acks| {
            if acks.is_durable(id) {
                Some(Ok(()))
            } else {
                acks.store_failed()
                    .map(|e| Err(AckError::StoreFailed(e.to_owned()).into()))
            }
        })
        .await
    }

    /// Resolves once `k` other peers hold the write; a write that changed nothing, or `k` of
    /// zero, at once. Fails, the write still applied, with [`AckError::Untracked`] once the
    /// write is no longer watched for replication (older than 600 s, or 4,096 newer writes),
    /// [`MeshError::Timeout`] after the [`timeout`](Self::timeout), or [`MeshError::Closed`]
    /// if the mesh shuts down first.
    pub async fn replicated(self, k: usize) -> Result<(), MeshError> {
        if !self.written.changed || k == 0 {
            return Ok(());
        }
        let id = self.written.id;
        self.wait("the write to be replicated", |acks| {
            if acks.holders(id) >= k {
                Some(Ok(()))
            } else if acks.untracked(id) {
                Some(Err(AckError::Untracked.into()))
            } else {
                None
            }
        })
        .await
    }

    /// Waits until `done` decides, the mesh closes or the timeout runs out.
    async fn wait(
        &self,
        what: &'static str,
        done: impl Fn(&Acks) -> Option<Result<(), MeshError>>,
    ) -> Result<(), MeshError> {
        self.shared.wait_acks(self.timeout, what, done).await
    }
}

/// Leadership held by this window: writes made through it carry its term, and are refused
/// once the leadership is known or suspected lost.
#[derive(Debug)]
pub struct Lead {
    shared: Arc<Shared>,
    term: u64,
    leadership: watch::Receiver<LeadershipInfo>,
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

    /// Writes leader record `key` of `channel` under this term. Refused once the leadership is
    /// over (including after this process was frozen).
    pub fn put<T: Reconcile>(&self, channel: &str, key: &str, value: &T) -> Result<(), MeshError> {
        self.shared.ensure_open()?;
        let now = self.shared.now();
        self.shared
            .node()
            .leader_put(now, self.term, channel, key, Some(value))?;
        self.shared.wake();
        Ok(())
    }

    /// Deletes leader record `key` of `channel`.
    pub fn delete(&self, channel: &str, key: &str) -> Result<(), MeshError> {
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
        f: impl FnOnce(&mut Node) -> Result<Written, WriteError>,
    ) -> Result<Pending, MeshError> {
        let written = self.shared().write(f)?;
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
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.shared().quic_addr()
    }

    /// Writes record `key` of `channel`.
    pub fn put<T: Reconcile>(
        &self,
        channel: &str,
        key: &str,
        value: &T,
    ) -> Result<Pending, MeshError> {
        self.write(|n| n.put(channel, key, value, Scope::Durable))
    }

    /// Writes record `key` of `channel`, visible only while this window lives.
    pub fn put_presence<T: Reconcile>(
        &self,
        channel: &str,
        key: &str,
        value: &T,
    ) -> Result<Pending, MeshError> {
        self.write(|n| n.put(channel, key, value, Scope::Presence))
    }

    /// Deletes record `key` of `channel`.
    pub fn delete(&self, channel: &str, key: &str) -> Result<Pending, MeshError> {
        self.write(|n| n.delete(channel, key))
    }

    /// Adds `by` to counter `name` (this window's share of it, of the given scope). Refused
    /// with [`WriteError::CounterOverflow`], nothing written, if this window's share would
    /// leave the signed 64-bit range; the counter's value (several windows' shares) saturates
    /// instead.
    pub fn add(&self, name: &str, by: i64, scope: Scope) -> Result<Pending, MeshError> {
        self.write(|n| n.add(name, by, scope))
    }

    /// Makes several writes as one atomic change. `f` runs once more when it writes to a
    /// channel for the first time (see `statemesh_core::Replica::transact`).
    pub fn transact(
        &self,
        f: impl FnMut(&mut statemesh_core::Tx<'_>) -> Result<(), WriteError>,
    ) -> Result<Pending, MeshError> {
        self.write(|n| n.transact(f).map(|((), w)| w))
    }

    /// Reads record `key` of `channel`.
    pub fn get<T: Hydrate>(&self, channel: &str, key: &str) -> Result<Option<T>, MeshError> {
        Ok(self.shared().node().get(channel, key)?)
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
    ) -> Result<Option<(T, Term)>, MeshError> {
        Ok(self.shared().node().leader_get(channel, key)?)
    }

    /// The visible keys of leader channel `channel`.
    pub fn leader_keys(&self, channel: &str) -> Vec<String> {
        self.shared().node().leader_keys(channel)
    }

    /// A stream of changes: which channel and key, written by whom. The first call returns a
    /// stream that starts at `join` (so nothing that arrived since is missed, up to 4,096
    /// changes — older ones are reported as `Lagged`); later calls start at the call.
    pub fn changes(&self) -> broadcast::Receiver<EntryChange> {
        self.shared().changes()
    }

    /// The current leadership, and its changes.
    pub fn leadership(&self) -> watch::Receiver<LeadershipInfo> {
        self.shared().leadership()
    }

    /// Waits until this window leads and returns the guard; `None` once the mesh is shut down.
    pub async fn lead(&self) -> Option<Lead> {
        let mut rx = self.leadership();
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
    pub async fn synced(&self) -> Result<(), MeshError> {
        self.shared().synced().await
    }

    /// Whether [`join`](crate::MeshBuilder::join) returned holding what every peer it found
    /// held; `false` if its [`join_timeout`](crate::MeshBuilder::join_timeout) ran out first.
    /// Until [`synced`](Self::synced) resolves (or [`is_synced`](Self::is_synced) is true), a
    /// key that reads as absent may only not have arrived yet.
    pub fn synced_on_join(&self) -> bool {
        self.shared().synced_on_join()
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
        let now = self.shared().now();
        self.shared()
            .node()
            .explain(now)
            .peers
            .into_iter()
            .map(|p| Member {
                peer: p.peer,
                incarnation: p.incarnation,
                live: p.live,
                eligible: p.eligible,
                silent_for: p.silent_for,
            })
            .collect()
    }

    /// Why this window leads or not: the live set and each peer's freshness.
    pub fn explain(&self) -> Explanation {
        let now = self.shared().now();
        self.shared().node().explain(now)
    }

    /// Counters of what this window's node did.
    pub fn stats(&self) -> Stats {
        self.shared().node().stats()
    }

    /// What this window's mesh did since it joined: leadership changes, sync rounds, bytes,
    /// propagation delays, refused connections and frames.
    pub fn metrics(&self) -> Metrics {
        let stats = self.stats();
        let counts = self.shared().counts();
        Metrics {
            leadership_changes: stats.leadership_changes,
            sync_in: stats.sync_in,
            sync_out: stats.sync_out,
            sync_resets: stats.sync_resets,
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
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output, MeshError> {
        match &self.inner.runtime {
            Some(rt) => Ok(rt.block_on(future)),
            None => Err(MeshError::Runtime(
                "this mesh runs on the caller's runtime; await instead".into(),
            )),
        }
    }

    /// Leaves gracefully: announces the leave (the next leader takes over at once), flushes,
    /// and stops every task.
    pub async fn shutdown(&self) -> Result<(), MeshError> {
        let driver = self
            .inner
            .driver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match driver {
            Some(d) => d.shutdown().await,
            None => Ok(()),
        }
    }
}
