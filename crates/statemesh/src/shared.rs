//! What a mesh's handles and its driver share ([`Shared`]), and the only ways to touch it.
//!
//! Each piece of state has one writer. The handles ([`Mesh`](crate::Mesh), its guards and
//! acknowledgements) write to the node and wake the driver; the driver publishes what came of
//! it: leadership, changes, acknowledgements, whether the window is in sync, its counters and
//! the keys its links proved with. Whoever ends the mesh ([`Shared::close`], from the driver's
//! last turn or from the last handle's drop) tells every waiter at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use statemesh_core::{EntryChange, Node, PeerId, Time, WriteId, WriteStatus, Written};
use statemesh_net::keyring::{KeyId, SharedKeyring};
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, broadcast, watch};

use crate::error::{AckError, Closed, WriteError};
use crate::metrics::DriverCounts;
use crate::status::Leadership;
use crate::store::LoadSummary;
use crate::subscribe::{ChangeStream, LeadershipStream, Published};

/// What is fixed when a mesh starts, besides its node.
#[derive(Debug)]
pub(crate) struct Fixed {
    /// The start of the node's clock.
    pub(crate) epoch: Instant,
    /// What loading state from disk found.
    pub(crate) loaded: LoadSummary,
    /// Whether state is persisted (else no write is ever durable).
    pub(crate) persist: bool,
    /// The default wait of acknowledgements.
    pub(crate) ack_timeout: Duration,
    /// The keyring every handshake reads.
    pub(crate) keys: SharedKeyring,
    /// The keyring file, watched, if the mesh has one.
    pub(crate) key_file: Option<PathBuf>,
    /// The backlog's bounds (see [`Shared::write`] and [`Shared::backpressure`]).
    pub(crate) backlog: BacklogLimits,
}

/// The bounds of a window's backlog: the entries changed by its local writes that its live
/// linked peers have not all acknowledged (`Node::backlog`) plus the frames queued to its
/// links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BacklogLimits {
    /// From this backlog on, [`Mesh::backpressure`](crate::Mesh::backpressure) is pending,
    /// until the backlog falls under half of it.
    pub(crate) soft: usize,
    /// From this backlog on, writes are refused with [`WriteError::Backpressure`].
    pub(crate) hard: usize,
}

/// State shared by the handles and the driver task (see the module docs).
#[derive(Debug)]
pub(crate) struct Shared {
    /// The node. A `parking_lot` mutex: writers hand it over fairly to a waiting driver (see
    /// [`Shared::write`]); `std`'s lets a thread that writes in a loop take it back at once, and
    /// the driver (heartbeats, views) waited behind whole bursts.
    node: parking_lot::Mutex<Node>,
    /// This window's peer id.
    me: PeerId,
    fixed: Fixed,
    /// Wakes the driver: the node has outputs to carry out.
    wake: Notify,
    leadership: watch::Sender<Leadership>,
    /// The version of the leadership last published (see [`Shared::publish_leadership`]);
    /// `u64::MAX` once the mesh closed.
    leadership_version: Mutex<u64>,
    changes: broadcast::Sender<Published>,
    /// Subscribed before the mesh started: the first [`Shared::changes`] call gets it, so that
    /// no change made between `join` and that call is missed.
    first_changes: Mutex<Option<broadcast::Receiver<Published>>>,
    /// The node's [`Node::ack_progress`] as last published: acknowledgements themselves are
    /// the node's alone ([`Node::write_status`]); this side only wakes their waiters.
    ack_progress: AtomicU64,
    acks_changed: Notify,
    /// Why no further write will be reported durable: the store failed (it stops at its first
    /// failure). The runtime's own news, not the node's.
    store_failed: OnceLock<String>,
    /// Whether the node has joined and holds what every linked peer holds.
    synced: watch::Sender<bool>,
    /// Whether `join` returned synced (see [`Mesh::synced_on_join`](crate::Mesh::synced_on_join)).
    synced_on_join: AtomicBool,
    closed: AtomicBool,
    /// `closed`, for subscriptions (they end once it is true).
    closed_watch: watch::Sender<bool>,
    quic_addr: OnceLock<SocketAddr>,
    /// The socket of sealed views, if one could be bound (see `driver::sealed`).
    view_socket: OnceLock<Arc<statemesh_net::views::ViewSocket>>,
    counts: Mutex<DriverCounts>,
    /// The key each linked peer proved with.
    link_keys: Mutex<BTreeMap<PeerId, KeyId>>,
    /// Frames handed to the links' writer tasks and not yet taken by QUIC (part of the
    /// backlog): counted up by the driver, down by the writers.
    queued: Arc<AtomicUsize>,
    /// Whether the backlog is over the soft bound (and not yet back under half of it).
    pressed: watch::Sender<bool>,
}

/// How many changes a subscriber may fall behind before it is told it lagged.
const CHANGES_KEPT: usize = 4096;

impl Shared {
    pub(crate) fn new(node: Node, fixed: Fixed) -> Self {
        let (changes, first_changes) = broadcast::channel(CHANGES_KEPT);
        Self {
            me: node.me().peer,
            node: parking_lot::Mutex::new(node),
            fixed,
            wake: Notify::new(),
            leadership: watch::Sender::new(Leadership::default()),
            leadership_version: Mutex::new(0),
            changes,
            first_changes: Mutex::new(Some(first_changes)),
            ack_progress: AtomicU64::new(0),
            acks_changed: Notify::new(),
            store_failed: OnceLock::new(),
            synced: watch::Sender::new(false),
            synced_on_join: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            closed_watch: watch::Sender::new(false),
            quic_addr: OnceLock::new(),
            view_socket: OnceLock::new(),
            counts: Mutex::new(DriverCounts::default()),
            link_keys: Mutex::new(BTreeMap::new()),
            queued: Arc::new(AtomicUsize::new(0)),
            pressed: watch::Sender::new(false),
        }
    }

    // What is fixed at start.

    /// This window's peer id.
    pub(crate) fn me(&self) -> PeerId {
        self.me
    }

    /// The node's clock now.
    pub(crate) fn now(&self) -> Time {
        Time::from_duration(self.fixed.epoch.elapsed())
    }

    /// The instant the node's clock reads `t`.
    pub(crate) fn instant(&self, t: Time) -> Instant {
        self.fixed.epoch + Duration::from_micros(t.as_micros())
    }

    pub(crate) fn loaded(&self) -> &LoadSummary {
        &self.fixed.loaded
    }

    pub(crate) fn persist(&self) -> bool {
        self.fixed.persist
    }

    pub(crate) fn ack_timeout(&self) -> Duration {
        self.fixed.ack_timeout
    }

    pub(crate) fn keys(&self) -> &SharedKeyring {
        &self.fixed.keys
    }

    pub(crate) fn key_file(&self) -> Option<&Path> {
        self.fixed.key_file.as_deref()
    }

    // The node.

    pub(crate) fn node(&self) -> parking_lot::MutexGuard<'_, Node> {
        // No poisoning: a panic while holding the lock can only come from a bug in statemesh
        // itself; the node's state is still consistent between inputs, so keep going.
        self.node.lock()
    }

    /// The node, for the mesh's own tasks (the driver): taken at once when free; when another
    /// holds it (the application: a read scanning a large channel, a long transaction), waited
    /// for off the runtime's worker (see [`off_worker`]), so the links' readers and QUIC keep
    /// carrying heartbeats meanwhile. Measured with a build timing every wait, `throughput
    /// --peers 8 --batch 100`: in the one run of four with false suspicions (11), the driver
    /// waited 0.85-1.33 s for the node on the worker (the deadline it reads between turns)
    /// while the window's application listed its 120,000-key channel; at most 156 ms in the
    /// three clean runs.
    ///
    /// [`off_worker`]: crate::driver::off_worker
    pub(crate) fn node_off_worker(&self) -> parking_lot::MutexGuard<'_, Node> {
        match self.node.try_lock() {
            Some(node) => node,
            None => crate::driver::off_worker(|| self.node.lock()),
        }
    }

    /// Runs local write `f` on the node at the write's own time (not the last tick's), hands
    /// the node back fairly, and wakes the driver; refused once the mesh is closed, and,
    /// nothing written, while the backlog is at its hard bound.
    pub(crate) fn write(
        &self,
        f: impl FnOnce(&mut Node) -> Result<Written, WriteError>,
    ) -> Result<Written, WriteError> {
        self.ensure_open()?;
        let mut node = self.node();
        let limits = self.fixed.backlog;
        let backlog = node.backlog() + self.queued.load(Ordering::Relaxed);
        if backlog >= limits.hard {
            // Pressed while the node is held, as the driver judges it (`judge_backlog`): a
            // count taken before this write cannot undo it.
            self.press();
            parking_lot::MutexGuard::unlock_fair(node);
            self.counts().writes_refused += 1;
            return Err(WriteError::Backpressure {
                backlog,
                limit: limits.hard,
            });
        }
        // The write's own time, taken once the node is ours.
        node.handle_time(self.now());
        let written = f(&mut node);
        if written
            .as_ref()
            .is_ok_and(|w| w.changed && backlog + w.entries >= limits.soft)
        {
            self.press();
        }
        // Handed over fairly: a driver waiting for the node (a heartbeat due, views to judge)
        // gets it before this thread's next write, however fast the application writes.
        parking_lot::MutexGuard::unlock_fair(node);
        let written = written?;
        self.wake();
        Ok(written)
    }

    // Backpressure.

    /// The counter of frames queued to the links' writers, for the driver and the writers.
    pub(crate) fn queued_frames(&self) -> &Arc<AtomicUsize> {
        &self.queued
    }

    /// The driver's count of the backlog after a turn, taken from `node` and judged while the
    /// driver still holds it, as the writers judge theirs: a count published after the node
    /// was let go could be older than a write that pressed meanwhile, and lift the pressure it
    /// set. Backpressure starts at the soft bound and ends under half of it. The count is
    /// published first: a waiter woken by the change reads it in
    /// [`Mesh::metrics`](crate::Mesh::metrics), not the turn's before.
    pub(crate) fn judge_backlog(&self, node: &Node) {
        // Not judged while the pulse holds the heart: another turn judges it, at once if
        // writes are held back (none may come to make one).
        let Some(backlog) = node.try_backlog() else {
            if *self.pressed.borrow() {
                self.wake();
            }
            return;
        };
        let backlog = backlog + self.queued.load(Ordering::Relaxed);
        {
            let mut counts = self.counts();
            counts.backlog = backlog;
            counts.backlog_peak = counts.backlog_peak.max(backlog);
        }
        let soft = self.fixed.backlog.soft;
        self.pressed.send_if_modified(|p| {
            let pressed = if *p {
                backlog >= soft / 2
            } else {
                backlog >= soft
            };
            pressed != std::mem::replace(p, pressed)
        });
    }

    /// Writes are pushed back from now on (a writer's judgement, under the node lock).
    fn press(&self) {
        self.pressed
            .send_if_modified(|p| !std::mem::replace(p, true));
    }

    /// Whether writes are pushed back (see [`Shared::judge_backlog`]), and its changes.
    pub(crate) fn pressure(&self) -> watch::Receiver<bool> {
        self.pressed.subscribe()
    }

    /// Resolves once the backlog is under half the soft bound (at once if it was never over
    /// it); `Err(Closed)` once the mesh is closed.
    pub(crate) async fn backpressure(&self) -> Result<(), Closed> {
        let mut rx = self.pressed.subscribe();
        let _ = rx.wait_for(|p| !*p || self.is_closed()).await;
        self.ensure_open()
    }

    /// Tells the driver that the node has outputs to carry out.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves once [`wake`](Self::wake) was called (for the driver).
    pub(crate) fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    // Open or closed.

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// `Err(Closed)` once the mesh is closed.
    pub(crate) fn ensure_open(&self) -> Result<(), Closed> {
        if self.is_closed() {
            return Err(Closed);
        }
        Ok(())
    }

    /// Marks the mesh closed and tells every waiter: acknowledgements fail with `Closed`,
    /// leadership reads "nobody", the window is no longer in sync, subscriptions end (after
    /// what was published before).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.acks_changed.notify_waiters();
        self.synced.send_replace(false);
        {
            let mut version = lock(&self.leadership_version);
            *version = u64::MAX;
            self.leadership.send_replace(Leadership::default());
        }
        self.closed_watch.send_replace(true);
        // Whoever waits for the backlog to clear learns that the mesh is closed.
        self.pressed.send_replace(false);
    }

    // What the driver publishes.

    /// The current leadership, and its changes.
    pub(crate) fn leadership_rx(&self) -> watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    /// The current leadership, then its changes, until the mesh closes.
    pub(crate) fn leadership(&self) -> LeadershipStream {
        LeadershipStream::new(self.leadership.subscribe(), self.closed_watch.subscribe())
    }

    /// Publishes the leadership as the heart gave it ([`Heart::leadership`]: its version, the
    /// leadership, this window's own term), unless that version or a newer one was published
    /// already (a version names one leadership, so the same version again changes nothing). Both
    /// the driver and the pulse publish it: the pulse as soon as a view or a beat changed it
    /// (a claim heard, a death judged), without waiting for the driver's turn, which at 64
    /// windows on 2 cores came up to 20 ms later; the driver after every turn of its own.
    ///
    /// [`Heart::leadership`]: statemesh_core::Heart::leadership
    pub(crate) fn publish_leadership(
        &self,
        (version, current, mine): (u64, statemesh_core::Leadership, Option<u64>),
    ) {
        let new = Leadership {
            leader: current.leader,
            term: current.term,
            is_me: current.leader == Some(self.me) && mine.is_some() && mine == current.term,
        };
        let mut published = lock(&self.leadership_version);
        if version <= *published {
            return;
        }
        *published = version;
        self.leadership.send_if_modified(|l| {
            let changed = *l != new;
            *l = new;
            changed
        });
    }

    /// A stream of changes: the first call's starts when the mesh started, later ones now.
    pub(crate) fn changes(&self) -> ChangeStream {
        let first = lock(&self.first_changes).take();
        let rx = first.unwrap_or_else(|| self.changes.subscribe());
        ChangeStream::new(rx, self.closed_watch.subscribe())
    }

    pub(crate) fn publish_change(&self, change: EntryChange) {
        let _ = self.changes.send(Arc::new(change));
    }

    pub(crate) fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub(crate) fn set_synced(&self, synced: bool) {
        self.synced.send_if_modified(|s| {
            let changed = *s != synced;
            *s = synced;
            changed
        });
    }

    /// Waits until the node has joined and holds what every linked peer holds; `Err(Closed)`
    /// if the mesh closes first.
    pub(crate) async fn synced(&self) -> Result<(), Closed> {
        let mut rx = self.synced.subscribe();
        loop {
            self.ensure_open()?;
            if *rx.borrow_and_update() {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(Closed);
            }
        }
    }

    pub(crate) fn synced_on_join(&self) -> bool {
        self.synced_on_join.load(Ordering::Acquire)
    }

    pub(crate) fn set_synced_on_join(&self, synced: bool) {
        self.synced_on_join.store(synced, Ordering::Release);
    }

    /// The QUIC endpoint's address (set by the driver's start, before any handle exists).
    pub(crate) fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
            .get()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub(crate) fn set_quic_addr(&self, addr: SocketAddr) {
        let _ = self.quic_addr.set(addr);
    }

    /// Set by the driver's start, if the socket could be bound.
    pub(crate) fn set_view_socket(&self, socket: Arc<statemesh_net::views::ViewSocket>) {
        let _ = self.view_socket.set(socket);
    }

    /// The socket of sealed views (see `driver::sealed`), if one could be bound.
    pub(crate) fn view_socket(&self) -> Option<&Arc<statemesh_net::views::ViewSocket>> {
        self.view_socket.get()
    }

    /// What the socket of sealed views counted (zeros without one).
    pub(crate) fn view_counts(&self) -> statemesh_net::views::ViewCounts {
        self.view_socket().map(|s| s.counts()).unwrap_or_default()
    }

    /// What the driver counts.
    pub(crate) fn counts(&self) -> MutexGuard<'_, DriverCounts> {
        lock(&self.counts)
    }

    /// The key each linked peer proved with.
    pub(crate) fn link_keys(&self) -> BTreeMap<PeerId, KeyId> {
        lock(&self.link_keys).clone()
    }

    /// Records the key each linked peer proved with (the driver calls it when its links
    /// changed).
    pub(crate) fn set_link_keys<'a>(&self, links: impl Iterator<Item = (&'a PeerId, KeyId)>) {
        *lock(&self.link_keys) = links.map(|(p, k)| (*p, k)).collect();
    }

    // Acknowledgements.

    /// The driver's news after a turn: the node's [`Node::ack_progress`]. Wakes whoever waits
    /// for acknowledgements if it moved.
    pub(crate) fn set_ack_progress(&self, progress: u64) {
        if self.ack_progress.swap(progress, Ordering::AcqRel) != progress {
            self.acks_changed.notify_waiters();
        }
    }

    /// The store failed: no further write will be reported durable (the first failure stays).
    /// Wakes whoever waits for durability.
    pub(crate) fn fail_store(&self, error: String) {
        let _ = self.store_failed.set(error);
        self.acks_changed.notify_waiters();
    }

    /// Waits until `done` decides on write `id`'s acknowledgements — what the node knows of
    /// them ([`Node::write_status`]) and why the store failed, if it did — the mesh closes
    /// (`Err(Closed)`) or `within` runs out (`Err(Timeout)`). The node is asked again each
    /// time its acknowledgements progress, under its lock for the lookup alone.
    pub(crate) async fn wait_acks(
        &self,
        id: WriteId,
        within: Duration,
        done: impl Fn(WriteStatus, Option<&str>) -> Option<Result<(), AckError>>,
    ) -> Result<(), AckError> {
        let wait = async {
            loop {
                let notified = self.acks_changed.notified();
                let status = self.node().write_status(id);
                if let Some(r) = done(status, self.store_failed.get().map(String::as_str)) {
                    return r;
                }
                self.ensure_open()?;
                notified.await;
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or(Err(AckError::Timeout { waited: within }))
    }
}

/// Locks `m`; a poisoned lock (a panic elsewhere while holding it) still holds plain data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use rand_core::SeedableRng;
    use statemesh_core::node::PENDING_TTL;
    use statemesh_core::{Config, MeshTag, Scope};
    use statemesh_net::secret::Secret;

    use super::*;

    fn node(seed: u64) -> Node {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let me = PeerId::generate(1_750_000_000_000 + seed, &mut rng);
        let tag = MeshTag::derive(&[1; 32], "acks");
        Node::new(Config::default(), tag, me, &mut rng, Time::ZERO)
    }

    fn shared() -> Shared {
        Shared::new(
            node(1),
            Fixed {
                epoch: Instant::now(),
                loaded: LoadSummary::default(),
                persist: true,
                ack_timeout: Duration::from_secs(60),
                keys: SharedKeyring::from(Secret::generate()),
                key_file: None,
                backlog: BacklogLimits {
                    soft: 1024,
                    hard: 2048,
                },
            },
        )
    }

    /// The leadership is published from two threads (the driver, the pulse): an older version
    /// never replaces a newer one, and nothing shows once the mesh closed.
    #[test]
    fn an_older_leadership_never_replaces_a_newer_one() {
        let shared = shared();
        let (me, other) = (shared.me(), node(2).me().peer);
        let lead = |leader, term| statemesh_core::Leadership {
            leader: Some(leader),
            term,
        };
        let shown = || *shared.leadership_rx().borrow();
        shared.publish_leadership((2, lead(me, Some(3)), Some(3)));
        assert_eq!(
            (shown().leader, shown().term, shown().is_me),
            (Some(me), Some(3), true)
        );
        shared.publish_leadership((1, lead(other, None), None));
        assert_eq!(shown().leader, Some(me), "an older version is dropped");
        shared.publish_leadership((3, lead(other, Some(4)), None));
        assert_eq!((shown().leader, shown().is_me), (Some(other), false));
        // Leading under a term this window no longer holds is not leading.
        shared.publish_leadership((4, lead(me, Some(5)), None));
        assert!(!shown().is_me);
        shared.close();
        shared.publish_leadership((5, lead(me, Some(6)), Some(6)));
        assert_eq!(shown(), Leadership::default());
    }

    /// Moves frames between the shared node and `b` until both are quiet.
    fn pump(shared: &Shared, b: &mut Node) {
        for _ in 0..50 {
            let mut moved = false;
            let a_id = shared.me();
            while let Some(t) = shared.node().poll_transmit() {
                b.handle_frame(Time::ZERO, a_id, &t.frame).expect("taken");
                moved = true;
            }
            while let Some(t) = b.poll_transmit() {
                let from = b.me().peer;
                shared
                    .node()
                    .handle_frame(Time::ZERO, from, &t.frame)
                    .expect("taken");
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the nodes kept talking");
    }

    fn durable(s: WriteStatus, failed: Option<&str>) -> Option<Result<(), AckError>> {
        if s.durable {
            Some(Ok(()))
        } else {
            failed.map(|e| Err(AckError::StoreFailed(e.to_owned())))
        }
    }

    fn replicated(k: usize) -> impl Fn(WriteStatus, Option<&str>) -> Option<Result<(), AckError>> {
        move |s, _| {
            if s.holders >= k {
                Some(Ok(()))
            } else if !s.tracked {
                Some(Err(AckError::Untracked))
            } else {
                None
            }
        }
    }

    /// Issue 13: the node is the one store of acknowledgements. A wait asks the node, and asks
    /// again only when the driver publishes that the node's acknowledgements progressed: the
    /// runtime keeps no copy (only the store's failure, its own news).
    #[tokio::test]
    async fn waits_resolve_from_the_node_when_its_progress_is_published() {
        let shared = shared();
        let mut b = node(2);
        let write = |key: &str| {
            shared
                .write(|n| Ok(n.put("c", key, &1i64, Scope::Durable)?))
                .expect("written")
                .id
        };
        let w = write("k");
        let within = Duration::from_secs(60);
        let mut durable_wait = std::pin::pin!(shared.wait_acks(w, within, durable));
        let mut replicated_wait = std::pin::pin!(shared.wait_acks(w, within, replicated(1)));
        assert!(durable_wait.as_mut().now_or_never().is_none());
        assert!(replicated_wait.as_mut().now_or_never().is_none());
        // Durable in the node: the wait learns it once the progress is published.
        {
            let mut node = shared.node();
            let persist = node.poll_persist().expect("bytes to store");
            node.persisted(persist.seq());
            assert!(node.write_status(w).durable);
        }
        assert!(
            durable_wait.as_mut().now_or_never().is_none(),
            "woken before the progress was published"
        );
        shared.set_ack_progress(shared.node().ack_progress());
        assert!(matches!(durable_wait.now_or_never(), Some(Ok(()))));
        // Held by `b` once the link's exchange says so.
        let (ha, hb) = (shared.node().hello(), b.hello());
        shared.node().handle_link_up(Time::ZERO, &hb);
        b.handle_link_up(Time::ZERO, &ha);
        pump(&shared, &mut b);
        assert_eq!(shared.node().write_status(w).holders, 1);
        shared.set_ack_progress(shared.node().ack_progress());
        assert!(matches!(replicated_wait.now_or_never(), Some(Ok(()))));
        // A wait for more holders than there are ends when the node stops watching the write;
        // the count it reached still answers a wait for one.
        let mut two = std::pin::pin!(shared.wait_acks(w, within, replicated(2)));
        assert!(two.as_mut().now_or_never().is_none());
        let later_than_the_write = shared.now() + PENDING_TTL;
        shared.node().handle_tick(later_than_the_write);
        shared.set_ack_progress(shared.node().ack_progress());
        assert!(matches!(two.now_or_never(), Some(Err(AckError::Untracked))));
        assert!(matches!(
            shared.wait_acks(w, within, replicated(1)).now_or_never(),
            Some(Ok(()))
        ));
        // A store failure ends durability waits at once.
        let later = write("later");
        let mut failed = std::pin::pin!(shared.wait_acks(later, within, durable));
        assert!(failed.as_mut().now_or_never().is_none());
        shared.fail_store("disk full".into());
        assert!(matches!(
            failed.now_or_never(),
            Some(Err(AckError::StoreFailed(e))) if e == "disk full"
        ));
    }
}
