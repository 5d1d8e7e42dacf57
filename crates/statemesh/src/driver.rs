//! The driver: one task per mesh that owns the links and carries out the node's outputs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use statemesh_core::codec::{self, FrameDecoder, Hello, Message, PeerAddress};
use statemesh_core::{DeathCause, Event, LinkDown, PeerId, Persist, PushJob, SyncJob, WriteId};
use statemesh_net::auth::Role;
use statemesh_net::discovery::{Announce, Discovered, Running, check_dialable};
use statemesh_net::keyring::{KeyId, Keyring};
use statemesh_net::quic::{self, Endpoint, Link, LinkError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::dialer::{Dial, Dialer, Settle, Via, new_link_wins};
use crate::mesh::{LeadershipInfo, MeshBuilder, MeshError, Shared};
use crate::store::{Store, StoreError, Writer};

/// Acknowledgements of local writes, for [`crate::Pending`].
#[derive(Debug)]
pub(crate) struct Acks {
    /// The newest local write reported durable: writes become durable in id order (the node
    /// persists them in the order they were made), so every older one is durable too.
    durable_upto: WriteId,
    holders: BTreeMap<WriteId, usize>,
    /// Why no further write will be reported durable: the store failed (it stops there).
    pub(crate) store_failed: Option<String>,
    /// Local writes below this id are no longer watched for replication by the node.
    tracked_from: WriteId,
}

impl Default for Acks {
    fn default() -> Self {
        Self {
            durable_upto: WriteId(0),
            holders: BTreeMap::new(),
            store_failed: None,
            tracked_from: WriteId(0),
        }
    }
}

/// How many replication counts of acknowledged writes are remembered (far more than the node
/// tracks: see `statemesh_core::node::MAX_PENDING_WRITES`).
const ACKS_KEPT: usize = 65_536;

impl Acks {
    pub(crate) fn holders(&self, id: WriteId) -> usize {
        self.holders.get(&id).copied().unwrap_or(0)
    }

    pub(crate) fn is_durable(&self, id: WriteId) -> bool {
        id <= self.durable_upto
    }

    /// Whether the node stopped watching write `id` for replication: no more holders come.
    pub(crate) fn untracked(&self, id: WriteId) -> bool {
        id < self.tracked_from
    }

    fn bound(&mut self) {
        while self.holders.len() > ACKS_KEPT {
            self.holders.pop_first();
        }
    }
}

/// The running driver. Dropping it stops everything at once (no leave announced).
#[derive(Debug)]
pub(crate) struct Driver {
    task: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Driver {
    /// Announces a graceful leave, flushes, and waits for the driver to finish.
    pub(crate) async fn shutdown(mut self) -> Result<(), MeshError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
        Ok(())
    }
}

/// Things that happen to links, reported to the driver by its helper tasks.
enum LinkEvent {
    /// A link passed authentication and sent its hello; `buffered` arrived right behind it.
    Ready {
        link: Link,
        hello: Hello,
        buffered: Vec<u8>,
    },
    /// Setting up a link to `addr`, or probing it, failed.
    DialFailed { addr: SocketAddr },
    /// A probe found `peer` at `addr`, proving the mesh secret.
    Probed { addr: SocketAddr, peer: PeerId },
    /// A connection failed to prove the mesh secret.
    AuthFailed,
    /// The store wrote everything up to a sequence number, or failed.
    Persisted(Result<u64, StoreError>),
    /// A frame payload arrived on connection `conn` from `peer`.
    Frame {
        peer: PeerId,
        conn: usize,
        payload: Vec<u8>,
    },
    /// A renewed proof on connection `conn` to `peer` (see `Endpoint::renew`) ended: the key
    /// the peer proved with, or why it did not. `ours`: this side asked for it.
    Renewed {
        peer: PeerId,
        conn: usize,
        ours: bool,
        result: Result<KeyId, String>,
    },
    /// Connection `conn` to `peer` ended (`error`: it sent something invalid).
    Closed {
        peer: PeerId,
        conn: usize,
        error: Option<String>,
    },
}

struct LinkState {
    conn: usize,
    connection: quinn::Connection,
    dialer: PeerId,
    tx: mpsc::UnboundedSender<bytes::Bytes>,
    /// The peer's address on this link: where it listens (links are dialled from, and
    /// accepted on, each peer's one main endpoint).
    remote: SocketAddr,
    /// Whether the peer may lead (queries and observers may not; their addresses are neither
    /// shared nor remembered).
    eligible: bool,
    /// The incarnation that said hello.
    incarnation: statemesh_core::Incarnation,
    /// This side's role on the connection.
    role: Role,
    /// The key the peer proved with (at setup, or when it last proved again).
    key: KeyId,
}

/// A driver turn this long is logged (debug level): it delays heartbeats and views.
const SLOW_TURN: Duration = Duration::from_millis(50);

/// After this long in LAN mode without a peer found by mDNS, a window says so (see
/// [`Run::check_discovery`]).
pub(crate) const ALONE_WARNING: Duration = Duration::from_secs(10);

pub(crate) async fn start(
    builder: MeshBuilder,
    store: Option<Store>,
    shared: Arc<Shared>,
) -> Result<Driver, MeshError> {
    let listen = builder.listen_addr();
    let endpoint = Endpoint::bind(listen, shared.me, shared.keys.clone(), &builder.name)?;
    let quic_addr = endpoint.local_addr().map_err(|source| {
        MeshError::Link(LinkError::Bind {
            addr: listen,
            source,
        })
    })?;
    let _ = shared.quic_addr.set(quic_addr);
    let announce = Announce {
        me: shared.me,
        quic: quic_addr,
        mesh: builder.name.clone(),
        keys: shared.keys.clone(),
    };
    let (found_tx, found_rx) = mpsc::unbounded_channel();
    let mut running = Vec::new();
    let mut unsettled = BTreeSet::new();
    let mut all_settle = true;
    let lan = builder.lan;
    let seed = rand::random::<u64>();
    let mut dialer = Dialer::new(shared.me, lan, Instant::now(), seed);
    let mut mdns = Vec::new();
    for (index, discovery) in builder.discoveries().into_iter().enumerate() {
        let name = discovery.name();
        if discovery.settles() {
            unsettled.insert(index);
        } else {
            all_settle = false;
        }
        dialer.add_discovery(discovery.provenance());
        if name == "mdns" {
            mdns.push(index);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        running.push(discovery.start(&announce, tx)?);
        let found = found_tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if found.send((index, ev)).is_err() {
                    break;
                }
            }
        });
        tracing::debug!(discovery = name, "discovery started");
    }
    if running.is_empty() {
        // Nothing to wait for.
        shared.node().handle_settled(shared.now());
    }
    let (events, events_rx) = mpsc::unbounded_channel();
    let (views, views_rx) = mpsc::unbounded_channel();
    let writer = match store {
        Some(store) => {
            let tx = events.clone();
            let writer = Writer::spawn(store, move |r| {
                let _ = tx.send(LinkEvent::Persisted(r));
            })
            .map_err(|e| MeshError::Runtime(format!("cannot start the store thread: {e}")))?;
            Some(writer)
        }
        None => None,
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let span = tracing::info_span!("mesh", peer = %shared.me.short());
    let mut tasks = JoinSet::new();
    if let Some(path) = shared.key_file.clone() {
        tasks.spawn(crate::keys::watch_file(path, shared.keys.clone()));
    }
    let mut keys_rx = shared.keys.subscribe();
    let ring = keys_rx.borrow_and_update().clone();
    let run = Run {
        name: builder.name.clone(),
        keys_rx,
        ring,
        shared,
        endpoint,
        writer,
        links: BTreeMap::new(),
        dialer,
        lan,
        mdns,
        started: Instant::now(),
        alone_warned: false,
        tasks,
        writers: JoinSet::new(),
        events,
        views,
        next_conn: 0,
        settle: Settle::new(unsettled, all_settle),
        running,
        new_job: None,
        held: VecDeque::new(),
    };
    let task = tokio::spawn(tracing::Instrument::instrument(
        run.run(events_rx, views_rx, found_rx, stop_rx),
        span,
    ));
    Ok(Driver {
        task: Some(task),
        stop: Some(stop_tx),
    })
}

/// Work of the CRDT library that runs on a blocking thread, one at a time (see
/// [`Run::start_job`]).
enum Job {
    /// A received sync message to apply, from `peer` on connection `conn`.
    Receive {
        peer: PeerId,
        conn: usize,
        job: Box<SyncJob>,
    },
    /// Sync messages carrying a burst of local writes to generate.
    Push(PushJob),
}

impl Job {
    fn run(mut self) -> Self {
        match &mut self {
            Self::Receive { job, .. } => job.run(),
            Self::Push(p) => p.run(),
        }
        self
    }
}

struct Run {
    /// The mesh name.
    name: String,
    /// Changes of the keyring.
    keys_rx: watch::Receiver<Arc<Keyring>>,
    /// The keyring as last applied.
    ring: Arc<Keyring>,
    /// A sync job the last frame started (see [`statemesh_core::Node::handle_payload_deferred`]), for the
    /// loop to run; with the connection it came on.
    new_job: Option<(usize, SyncJob)>,
    /// Frames (other than views) that arrived while a sync job ran: handled, in order, once it
    /// is done (they may depend on it).
    held: VecDeque<LinkEvent>,
    shared: Arc<Shared>,
    endpoint: Endpoint,
    writer: Option<Writer>,
    links: BTreeMap<PeerId, LinkState>,
    /// Which addresses to dial, when, and from which endpoint.
    dialer: Dialer,
    /// LAN mode: peer exchange on, the "no peer found by mDNS" diagnostic armed.
    lan: bool,
    /// Indices of the mDNS discoveries among `running`.
    mdns: Vec<usize>,
    started: Instant,
    alone_warned: bool,
    tasks: JoinSet<()>,
    /// The tasks writing to each link: a graceful leave waits for them to drain.
    writers: JoinSet<()>,
    events: mpsc::UnboundedSender<LinkEvent>,
    /// Heartbeat views, handled ahead of `events` (see `statemesh_core::codec::is_view`).
    views: mpsc::UnboundedSender<LinkEvent>,
    next_conn: usize,
    /// When this window may count itself a leader candidate before its join grace is over.
    settle: Settle,
    /// The running discoveries; dropping them withdraws this peer's announcements.
    running: Vec<Box<dyn Running>>,
}

impl Run {
    async fn run(
        mut self,
        mut events_rx: mpsc::UnboundedReceiver<LinkEvent>,
        mut views_rx: mpsc::UnboundedReceiver<LinkEvent>,
        mut found_rx: mpsc::UnboundedReceiver<(usize, Discovered)>,
        mut stop: oneshot::Receiver<()>,
    ) {
        self.spawn_accept_loop();
        self.flush();
        // The job running, if any. One at a time; the node keeps ticking, judging views and
        // taking local writes meanwhile.
        let mut job: Option<JoinHandle<Job>> = None;
        let shutdown = loop {
            // Under a stream of frames (a large sync exchange) the select below keeps choosing
            // them over the timer: a tick that is due runs first, so heartbeats go out and
            // failure detection runs on time however busy the links are.
            let mut deadline = self.deadline();
            if Instant::now() >= deadline {
                let t0 = Instant::now();
                // Views that arrived while the last turn ran are judged before the tick, which
                // would otherwise find their senders silent.
                while let Ok(ev) = views_rx.try_recv() {
                    self.on_link_event(ev);
                }
                self.tick(deadline);
                self.flush();
                self.turn_done(t0, "tick");
                deadline = self.deadline();
            }
            if job.is_none()
                && let Some(ev) = self.held.pop_front()
            {
                // Frames held while the last job ran, one per turn, before newer ones.
                let t0 = Instant::now();
                let what = self.on_link_event(ev);
                self.start_job(&mut job);
                self.flush();
                self.turn_done(t0, what);
                continue;
            }
            let redial = self
                .dialer
                .next_wake(Instant::now())
                .map(tokio::time::Instant::from_std);
            let what = tokio::select! {
                biased;
                _ = &mut stop => break true,
                Some(ev) = views_rx.recv() => (Instant::now(), self.on_link_event(ev)),
                done = async {
                    match job.as_mut() {
                        Some(task) => task.await,
                        None => std::future::pending().await,
                    }
                }, if job.is_some() => {
                    let t0 = Instant::now();
                    job = None;
                    (t0, self.finish_job(done))
                }
                Some(ev) = events_rx.recv() => {
                    let t0 = Instant::now();
                    if job.is_some() && matches!(ev, LinkEvent::Frame { .. }) {
                        self.held.push_back(ev);
                        (t0, "held")
                    } else {
                        (t0, self.on_link_event(ev))
                    }
                }
                Some((index, ev)) = found_rx.recv() => {
                    let t0 = Instant::now();
                    self.on_discovered(index, ev);
                    self.dial_due();
                    (t0, "discovery")
                }
                () = self.shared.wake.notified() => (Instant::now(), "wake"),
                () = tokio::time::sleep_until(deadline.into()) => {
                    let t0 = Instant::now();
                    self.tick(deadline);
                    (t0, "tick")
                }
                Ok(()) = self.keys_rx.changed() => {
                    let t0 = Instant::now();
                    self.on_keys_changed();
                    (t0, "keys")
                }
                () = async {
                    match redial {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.dial_due();
                    (Instant::now(), "redial")
                }
            };
            self.start_job(&mut job);
            self.flush();
            // The flush may have left a push to generate.
            self.start_job(&mut job);
            self.turn_done(what.0, what.1);
        };
        if shutdown {
            self.leave().await;
        }
        // Withdraw the announcements (mDNS goodbye, local socket removed) before reporting the
        // mesh closed.
        self.running.clear();
        self.shared.closed.store(true, Ordering::Release);
        self.shared.acks_changed.notify_waiters();
        self.shared.synced.send_replace(false);
        self.shared
            .leadership
            .send_modify(|l| *l = LeadershipInfo::default());
    }

    /// Starts the next job, if none runs, on a blocking thread: the sync message the last
    /// frame carried, to apply (see [`statemesh_core::Node::handle_payload_deferred`]), or else
    /// the push of a burst of local writes, to generate (see
    /// [`statemesh_core::Node::set_push_jobs`]). The CRDT library's work runs there, without
    /// the node, while this task keeps the node ticking.
    fn start_job(&mut self, job: &mut Option<JoinHandle<Job>>) {
        if job.is_some() {
            return;
        }
        let next = match self.new_job.take() {
            Some((conn, j)) => Job::Receive {
                peer: j.from(),
                conn,
                job: Box::new(j),
            },
            None => match self.shared.node().start_push() {
                Some(p) => Job::Push(p),
                None => return,
            },
        };
        *job = Some(tokio::task::spawn_blocking(move || next.run()));
    }

    /// A job is done: a received message's changes join the node's document, or generated
    /// sync messages leave. Returns what the turn did (for the slow-turn log).
    fn finish_job(&mut self, done: Result<Job, tokio::task::JoinError>) -> &'static str {
        let now = self.shared.now();
        let (peer, conn, result) = match done {
            Ok(Job::Push(p)) => {
                self.shared.node().finish_push(now, p);
                return "push generated";
            }
            Ok(Job::Receive { peer, conn, job }) => {
                let result = self.shared.node().finish_sync(now, *job);
                (peer, conn, result.map_err(|e| e.to_string()))
            }
            Err(e) => {
                // A job panicked outside the CRDT library's guarded calls: nothing of it can
                // be trusted, and the peers it covered stay busy. Unreachable in practice.
                tracing::error!(error = %e, "a sync job failed");
                return "job failed";
            }
        };
        match result {
            // Local writes made meanwhile join the job's copy off the node too.
            Ok(Some(again)) => self.new_job = Some((conn, again)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(peer = %peer.short(), error = %e, "closing link after a bad frame");
                self.close_link(peer, conn);
            }
        }
        "sync applied"
    }

    /// Runs the tick that was due at `due`.
    fn tick(&mut self, due: Instant) {
        let late = Instant::now().saturating_duration_since(due);
        self.shared.counts().tick_late.record(late);
        let now = self.shared.now();
        self.shared.node().handle_tick(now);
        self.check_discovery();
    }

    /// Records how long a turn of the driver (started at `t0`, handling `what`) took.
    fn turn_done(&self, t0: Instant, what: &'static str) {
        let took = t0.elapsed();
        self.shared.counts().driver_turns.record(took);
        if took >= SLOW_TURN {
            tracing::debug!(what, took_ms = took.as_secs_f64() * 1e3, "slow driver turn");
        }
    }

    /// When the node next needs a tick.
    fn deadline(&self) -> Instant {
        self.shared.epoch + Duration::from_micros(self.shared.node().poll_timeout().as_micros())
    }

    fn spawn_accept_loop(&mut self) {
        let endpoint = self.endpoint.clone();
        let events = self.events.clone();
        let hello = self.shared.node().hello();
        let max_frame = self.shared.node().config().max_frame;
        self.tasks.spawn(async move {
            let mut setups = JoinSet::new();
            loop {
                // Only the cancel-safe wait for a connection attempt races with reaping: the
                // handshake and authentication of each run in a task of their own, so one that
                // finishes never cancels another half-way (which dropped that connection), and a
                // slow client never holds up the next.
                tokio::select! {
                    incoming = endpoint.incoming() => match incoming {
                        None => break,
                        Some(incoming) => {
                            let (endpoint, hello, events) = (endpoint.clone(), hello.clone(), events.clone());
                            setups.spawn(async move {
                                match endpoint.authenticate(incoming).await {
                                    Ok(link) => exchange_hellos(link, hello, max_frame, events, None).await,
                                    Err(e) => {
                                        if matches!(e, LinkError::AuthFailed { .. }) {
                                            let _ = events.send(LinkEvent::AuthFailed);
                                        }
                                        tracing::debug!(error = %e, "incoming link refused");
                                    }
                                }
                            });
                        }
                    },
                    Some(_) = setups.join_next(), if !setups.is_empty() => {}
                }
            }
        });
    }

    fn on_discovered(&mut self, index: usize, ev: Discovered) {
        let now = self.shared.now();
        match ev {
            Discovered::Found { peer, addr } => {
                self.dialer.found(Instant::now(), index, peer, addr);
                if let Some(p) = peer
                    && !self.links.contains_key(&p)
                {
                    self.settle.found(p);
                }
            }
            Discovered::Gone { peer, certain } => {
                if certain {
                    self.shared
                        .node()
                        .handle_link_down(now, peer, LinkDown::Certain);
                    if let Some(link) = self.links.remove(&peer) {
                        link.connection
                            .close(quinn::VarInt::from_u32(quic::CLOSE_PROTOCOL), b"peer gone");
                        self.dialer.unlinked(Instant::now(), peer);
                    }
                }
                self.dialer.gone(index, peer);
                self.settle.done_with(peer);
            }
            Discovered::Settled => {
                let unlinked: Vec<PeerId> = self
                    .dialer
                    .known_peers()
                    .filter(|p| !self.links.contains_key(p))
                    .collect();
                self.settle.settled(index, unlinked.into_iter());
            }
        }
        self.check_settled();
    }

    fn check_settled(&mut self) {
        if self.settle.take_ready() {
            let now = self.shared.now();
            self.shared.node().handle_settled(now);
        }
    }

    /// Starts the dials the dialler says are due.
    fn dial_due(&mut self) {
        for d in self.dialer.poll(Instant::now()) {
            self.dial(d);
        }
    }

    fn dial(&mut self, Dial { addr, via }: Dial) {
        let events = self.events.clone();
        let endpoint = self.endpoint.clone();
        if via == Via::Probe {
            self.tasks.spawn(async move {
                let ev = match endpoint.probe(addr).await {
                    Ok(peer) => LinkEvent::Probed { addr, peer },
                    Err(e) => {
                        tracing::trace!(%addr, error = %e, "probe failed");
                        if matches!(e, LinkError::AuthFailed { .. }) {
                            let _ = events.send(LinkEvent::AuthFailed);
                        }
                        LinkEvent::DialFailed { addr }
                    }
                };
                let _ = events.send(ev);
            });
            return;
        }
        let hello = self.shared.node().hello();
        let max_frame = self.shared.node().config().max_frame;
        self.tasks.spawn(async move {
            match endpoint.connect(addr).await {
                Ok(link) => exchange_hellos(link, hello, max_frame, events, Some(addr)).await,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "dial failed");
                    if matches!(e, LinkError::AuthFailed { .. }) {
                        let _ = events.send(LinkEvent::AuthFailed);
                    }
                    let _ = events.send(LinkEvent::DialFailed { addr });
                }
            }
        });
    }

    /// Peer exchange (LAN mode): tells the new link's peer where this window's other peers
    /// are, and the others where the new one is. Only eligible peers are shared: queries and
    /// observers dial the mesh themselves and do not come back at their address.
    fn share_addresses(&mut self, new: PeerId) {
        let Some(link) = self.links.get(&new) else {
            return;
        };
        if !self.lan || !link.eligible {
            return;
        }
        let theirs = PeerAddress {
            peer: new,
            addr: link.remote,
        };
        let others: Vec<(PeerId, PeerAddress)> = self
            .links
            .iter()
            .filter(|(p, l)| **p != new && l.eligible)
            .map(|(p, l)| {
                (
                    *p,
                    PeerAddress {
                        peer: *p,
                        addr: l.remote,
                    },
                )
            })
            .collect();
        let mut node = self.shared.node();
        if !others.is_empty() {
            let list: Vec<PeerAddress> = others.iter().map(|(_, a)| *a).collect();
            node.share_peers(new, &list);
        }
        for (p, _) in others {
            node.share_peers(p, &[theirs]);
        }
    }

    /// Peer exchange (LAN mode): `from` says where `peers` are. A loopback address is where
    /// `from` reaches a peer of its own machine: from here, that machine is `from`'s address.
    fn on_peer_addresses(&mut self, from: PeerId, peers: Vec<PeerAddress>) {
        let Some(sharer) = self.links.get(&from).map(|l| l.remote) else {
            return;
        };
        if !self.lan {
            return;
        }
        let now = Instant::now();
        for PeerAddress { peer, mut addr } in peers {
            if peer == self.shared.me {
                continue;
            }
            if addr.ip().is_loopback() {
                if sharer.ip().is_loopback() {
                    // Both on this machine: local sockets find it.
                    continue;
                }
                addr.set_ip(sharer.ip());
            }
            if let Err(why) = check_dialable(addr) {
                tracing::debug!(%addr, %why, "shared address ignored");
                continue;
            }
            self.dialer.learned(now, peer, addr);
        }
    }

    /// The "no peer found by mDNS" diagnostic (LAN mode): after [`ALONE_WARNING`], says once at
    /// warning level what is likely wrong and what to do, and keeps it in the metrics.
    fn check_discovery(&mut self) {
        if self.mdns.is_empty() {
            return;
        }
        let found: u64 = self
            .mdns
            .iter()
            .filter_map(|i| self.running.get(*i))
            .filter_map(|r| r.report())
            .map(|r| r.peers_found)
            .sum();
        let warning = (found == 0 && self.started.elapsed() >= ALONE_WARNING).then(|| {
            let linked = if self.links.is_empty() {
                "and no link: this window is alone, and leads alone"
            } else {
                "(links to peers found otherwise are up)"
            };
            format!(
                "LAN mode found no peer by mDNS in {} s {linked}. If other machines run this \
                 mesh, multicast is likely blocked between them (a firewall dropping UDP port \
                 5353, a network that filters multicast, or peers on another subnet); give the \
                 address of one peer with --peer host:port (a fixed --listen port on each), and \
                 the windows share the rest",
                self.started.elapsed().as_secs()
            )
        });
        if let Some(w) = &warning
            && !self.alone_warned
        {
            self.alone_warned = true;
            tracing::warn!("{w}");
        }
        let mut counts = self.shared.counts();
        counts.mdns_peers_found = Some(found);
        counts.discovery_warning = warning;
    }

    /// Handles one link event; returns what it was (for the slow-turn log).
    fn on_link_event(&mut self, ev: LinkEvent) -> &'static str {
        let what = match &ev {
            LinkEvent::Frame { payload, .. } if codec::is_view(payload) => "view",
            LinkEvent::Frame { .. } => "frame",
            LinkEvent::Ready { .. } => "link up",
            LinkEvent::Closed { .. } => "link closed",
            LinkEvent::Persisted(_) => "persisted",
            _ => "dial",
        };
        self.handle_link_event(ev);
        what
    }

    fn handle_link_event(&mut self, ev: LinkEvent) {
        let now = self.shared.now();
        match ev {
            LinkEvent::DialFailed { addr } => {
                if self.dialer.failed(Instant::now(), addr) != Some(Via::Probe) {
                    self.shared.counts().dial_failures += 1;
                }
                self.dial_due();
            }
            LinkEvent::Probed { addr, peer } => {
                self.dialer.probed(Instant::now(), addr, peer);
                self.dial_due();
            }
            LinkEvent::AuthFailed => self.shared.counts().auth_failures_quic += 1,
            LinkEvent::Persisted(Ok(seq)) => {
                self.shared.node().persisted(seq);
            }
            LinkEvent::Persisted(Err(e)) => {
                self.shared.counts().persist_errors += 1;
                tracing::error!(error = %e, "could not persist state; from now on writes are not durable");
                // The store thread stopped: whoever waits for durability learns it now.
                self.shared.acks().store_failed.get_or_insert(e.to_string());
                self.shared.acks_changed.notify_waiters();
            }
            LinkEvent::Ready {
                link,
                hello,
                buffered,
            } => {
                let peer = link.peer;
                let remote = link.remote;
                let dialled = link.role == Role::Client;
                if hello.incarnation.peer != peer {
                    if dialled {
                        self.dialer.failed(Instant::now(), remote);
                    }
                    tracing::warn!(target: quic::AUDIT_TARGET, %remote, "hello names another peer than the one authenticated");
                    link.connection.close(
                        quinn::VarInt::from_u32(quic::CLOSE_PROTOCOL),
                        b"hello mismatch",
                    );
                    return;
                }
                if let Err(e) = self.shared.node().check_hello(&hello) {
                    tracing::warn!(%remote, error = %e, "hello refused");
                    link.connection.close(
                        quinn::VarInt::from_u32(quic::CLOSE_PROTOCOL),
                        b"hello refused",
                    );
                    if dialled {
                        self.dialer.failed(Instant::now(), remote);
                    }
                    return;
                }
                // A window in LAN mode remembers where its eligible peers listen, and redials
                // there should they go away (see the dialler's rules for learned addresses).
                if self.lan && hello.eligible && !remote.ip().is_loopback() {
                    self.dialer.learned(Instant::now(), peer, remote);
                }
                self.dialer.linked(peer, remote);
                let dialer = match link.role {
                    Role::Client => self.shared.me,
                    Role::Server => peer,
                };
                if let Some(existing) = self.links.get(&peer) {
                    // Both dialled: keep the link dialled by the lower id, on both sides alike.
                    if !new_link_wins(self.shared.me, peer, existing.dialer, dialer) {
                        link.connection.close(
                            quinn::VarInt::from_u32(quic::CLOSE_DUPLICATE),
                            b"duplicate link",
                        );
                        return;
                    }
                    existing.connection.close(
                        quinn::VarInt::from_u32(quic::CLOSE_DUPLICATE),
                        b"duplicate link",
                    );
                }
                self.next_conn += 1;
                let conn = self.next_conn;
                let (tx, rx) = mpsc::unbounded_channel();
                let max_frame = self.shared.node().config().max_frame;
                let Link {
                    connection,
                    send,
                    recv,
                    key,
                    role,
                    ..
                } = link;
                self.tasks.spawn(serve_renewals(
                    self.endpoint.clone(),
                    connection.clone(),
                    role,
                    peer,
                    conn,
                    self.events.clone(),
                ));
                self.writers.spawn(write_loop(send, rx));
                self.links.insert(
                    peer,
                    LinkState {
                        conn,
                        connection,
                        dialer,
                        tx,
                        remote,
                        eligible: hello.eligible,
                        incarnation: hello.incarnation,
                        role,
                        key,
                    },
                );
                self.shared.counts().links_opened += 1;
                self.shared.node().handle_link_up(now, &hello);
                self.share_addresses(peer);
                self.tasks.spawn(read_loop(
                    recv,
                    buffered,
                    peer,
                    conn,
                    max_frame,
                    self.events.clone(),
                    self.views.clone(),
                ));
                self.settle.done_with(peer);
                self.check_settled();
            }
            LinkEvent::Frame {
                peer,
                conn,
                payload,
            } => {
                if self.links.get(&peer).is_none_or(|l| l.conn != conn) {
                    return;
                }
                let result = self
                    .shared
                    .node()
                    .handle_payload_deferred(now, peer, &payload);
                match result {
                    Ok(Some(job)) => self.new_job = Some((conn, job)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(peer = %peer.short(), error = %e, "closing link after a bad frame");
                        self.close_link(peer, conn);
                    }
                }
            }
            LinkEvent::Renewed {
                peer,
                conn,
                ours,
                result,
            } => self.on_renewed(peer, conn, ours, result),
            LinkEvent::Closed { peer, conn, error } => {
                if let Some(e) = error {
                    self.shared.counts().framing_errors += 1;
                    tracing::warn!(peer = %peer.short(), error = %e, "closing link after a bad frame");
                }
                self.close_link(peer, conn);
            }
        }
    }

    /// The keyring changed: hellos carry the new primary's tag and accept every key's, and
    /// every link proves again if this window's primary key changed or the key the link was
    /// proven with is no longer accepted (see `docs/security.md`, "Rotating the mesh secret").
    fn on_keys_changed(&mut self) {
        let ring = self.keys_rx.borrow_and_update().clone();
        let primary_changed = ring.primary_id() != self.ring.primary_id();
        let removed: Vec<KeyId> = self
            .ring
            .ids()
            .into_iter()
            .filter(|k| !ring.contains(*k))
            .collect();
        tracing::info!(
            target: quic::AUDIT_TARGET,
            primary = %ring.primary_id(),
            accepted = ?ring.ids().iter().map(ToString::to_string).collect::<Vec<_>>(),
            removed = ?removed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "keyring applied"
        );
        self.shared.node().set_mesh_tags(
            ring.primary_tag(&self.name),
            &ring.accepted_tags(&self.name),
        );
        for (peer, link) in &self.links {
            if primary_changed || !ring.contains(link.key) {
                let (endpoint, connection, role, peer, conn, events) = (
                    self.endpoint.clone(),
                    link.connection.clone(),
                    link.role,
                    *peer,
                    link.conn,
                    self.events.clone(),
                );
                self.tasks.spawn(async move {
                    let result = endpoint
                        .renew(&connection, role, peer)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = events.send(LinkEvent::Renewed {
                        peer,
                        conn,
                        ours: true,
                        result,
                    });
                });
            }
        }
        self.ring = ring;
    }

    /// A renewed proof ended. A link whose key this window no longer accepts and that failed to
    /// prove another is closed as failing authentication.
    fn on_renewed(&mut self, peer: PeerId, conn: usize, ours: bool, result: Result<KeyId, String>) {
        let Some(link) = self.links.get_mut(&peer).filter(|l| l.conn == conn) else {
            return;
        };
        match result {
            Ok(key) => {
                self.shared.counts().key_renewals += 1;
                if key != link.key {
                    tracing::info!(target: quic::AUDIT_TARGET, peer = %peer.short(), %key, was = %link.key, ours, "link proved again under another key");
                }
                link.key = key;
            }
            Err(e) => {
                self.shared.counts().key_renewal_failures += 1;
                if self.shared.keys.current().contains(link.key) {
                    tracing::info!(target: quic::AUDIT_TARGET, peer = %peer.short(), key = %link.key, ours, error = %e, "renewed proof failed; the link keeps its key, still accepted");
                    return;
                }
                tracing::warn!(target: quic::AUDIT_TARGET, peer = %peer.short(), remote = %link.remote, key = %link.key, error = %e, "peer refused: its key was removed and it proved no other; link closed");
                self.shared.counts().auth_failures_quic += 1;
                link.connection.close(
                    quinn::VarInt::from_u32(quic::CLOSE_AUTH_FAILED),
                    b"key removed",
                );
                self.close_link(peer, conn);
            }
        }
    }

    fn close_link(&mut self, peer: PeerId, conn: usize) {
        let Some(link) = self.links.get(&peer) else {
            return;
        };
        if link.conn != conn {
            return;
        }
        if let Some(link) = self.links.remove(&peer) {
            link.connection.close(
                quinn::VarInt::from_u32(quic::CLOSE_PROTOCOL),
                b"link closed",
            );
        }
        let now = self.shared.now();
        self.shared
            .node()
            .handle_link_down(now, peer, LinkDown::Hint);
        // Keep trying while the peer is known at some address.
        self.dialer.unlinked(Instant::now(), peer);
        self.dial_due();
    }

    /// A peer's incarnation was judged dead. A link still open to it is closed at once when
    /// the death is certain (it left, or its local socket closed); a peer that may lead keeps
    /// its learned addresses (it may come back there), a query or observer is forgotten.
    fn on_peer_down(&mut self, incarnation: statemesh_core::Incarnation, cause: DeathCause) {
        let peer = incarnation.peer;
        let link = self
            .links
            .get(&peer)
            .filter(|l| l.incarnation.number <= incarnation.number)
            .map(|l| (l.conn, l.eligible));
        if let Some((conn, eligible)) = link {
            if !eligible {
                self.dialer.forget_peer(peer);
            }
            if cause != DeathCause::Timeout {
                self.close_link(peer, conn);
                // What closing the link made the node say goes out on the next turn.
                self.shared.wake.notify_one();
            }
        }
    }

    /// Carries out the node's outputs: frames, events, persistence.
    fn flush(&mut self) {
        let mut frames = Vec::new();
        let mut events = Vec::new();
        let mut persists = Vec::new();
        let (info, term, synced, tracked_from, live) = {
            let t0 = Instant::now();
            let mut node = self.shared.node();
            let t_lock = t0.elapsed();
            while let Some(t) = node.poll_transmit() {
                frames.push(t);
            }
            let t_tx = t0.elapsed();
            while let Some(p) = node.poll_persist() {
                persists.push(p);
            }
            let t_persist = t0.elapsed();
            if t_persist >= SLOW_TURN {
                tracing::debug!(
                    lock_ms = t_lock.as_secs_f64() * 1e3,
                    transmit_ms = (t_tx - t_lock).as_secs_f64() * 1e3,
                    persist_ms = (t_persist - t_tx).as_secs_f64() * 1e3,
                    "slow flush"
                );
            }
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
            let now = self.shared.now();
            (
                node.leadership(),
                node.my_term(),
                node.joined(now) && node.in_sync(),
                node.replication_tracked_from(),
                // Links to peers judged dead are not counted while their connection winds
                // down (those this turn closes are to dead peers too).
                self.links.keys().filter(|p| node.is_live(p)).count(),
            )
        };
        {
            let mut keys = self
                .shared
                .link_keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if keys.len() != self.links.len()
                || self.links.iter().any(|(p, l)| keys.get(p) != Some(&l.key))
            {
                *keys = self.links.iter().map(|(p, l)| (*p, l.key)).collect();
            }
        }
        for t in frames {
            if let Some(link) = self.links.get(&t.to) {
                let _ = link.tx.send(t.frame);
            }
        }
        let mut unstored = None;
        for p in persists {
            match &self.writer {
                Some(w) => w.write(p),
                // Persistence is off: nothing more will make these writes durable.
                None => {
                    unstored = Some(match p {
                        Persist::Append { seq, .. } | Persist::Snapshot { seq, .. } => seq,
                    })
                }
            }
        }
        if let Some(seq) = unstored {
            let mut node = self.shared.node();
            node.persisted(seq);
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
        }
        let mut acks_changed = false;
        for e in events {
            match e {
                Event::Changed(c) => {
                    let _ = self.shared.changes.send(c);
                }
                Event::Replicated { write, after, .. } => {
                    self.shared.counts().propagation.record(after);
                    let mut acks = self.shared.acks();
                    *acks.holders.entry(write).or_default() += 1;
                    acks.bound();
                    acks_changed = true;
                }
                Event::Durable { write } => {
                    let mut acks = self.shared.acks();
                    acks.durable_upto = acks.durable_upto.max(write);
                    acks_changed = true;
                }
                Event::PeerDown { incarnation, cause } => {
                    tracing::info!(peer = %incarnation, ?cause, "peer down");
                    self.on_peer_down(incarnation, cause);
                }
                Event::PeerAddresses { from, peers } => self.on_peer_addresses(from, peers),
                Event::PeerUp(inc) => tracing::debug!(peer = %inc, "peer up"),
                Event::Leadership(l) => {
                    tracing::info!(leader = ?l.leader, term = ?l.term, "leadership")
                }
                Event::Elected { .. } | Event::Deposed { .. } | Event::Refuted(_) => {}
            }
        }
        {
            // After the events: a write's last holders are counted before it is untracked.
            let mut acks = self.shared.acks();
            if acks.tracked_from != tracked_from {
                acks.tracked_from = tracked_from;
                acks_changed = true;
            }
        }
        if acks_changed {
            self.shared.acks_changed.notify_waiters();
        }
        {
            let dialer = self.dialer.counts();
            let candidates = self.dialer.len();
            let mut counts = self.shared.counts();
            counts.links = live;
            counts.probes = dialer.probes;
            counts.probe_failures = dialer.probe_failures;
            counts.candidates_forgotten = dialer.forgotten;
            counts.dial_candidates = candidates;
            counts.auth_failures_discovery = self.running.iter().map(|r| r.auth_failures()).sum();
        }
        let me = self.shared.me;
        let new = LeadershipInfo {
            leader: info.leader,
            term: info.term,
            is_me: info.leader == Some(me) && term.is_some() && term == info.term,
        };
        self.shared.leadership.send_if_modified(|l| {
            let changed = *l != new;
            *l = new;
            changed
        });
        // Last: whoever waits for `synced` then finds every change already broadcast.
        self.shared.synced.send_if_modified(|s| {
            let changed = *s != synced;
            *s = synced;
            changed
        });
    }

    /// Graceful leave: tell every peer, let the frames drain, close.
    async fn leave(&mut self) {
        let now = self.shared.now();
        self.shared.node().leave(now);
        self.flush();
        let links = std::mem::take(&mut self.links);
        // Dropping the senders ends each writer after it wrote what was queued.
        let connections: Vec<quinn::Connection> =
            links.into_values().map(|l| l.connection).collect();
        let drain = async { while self.writers.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
        for c in connections {
            c.close(quinn::VarInt::from_u32(quic::CLOSE_LEAVING), b"leaving");
        }
        self.endpoint.close();
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
        // Everything written so far reaches the disk before shutdown returns.
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.finish()).await;
        }
    }
}

/// Sends our hello, reads theirs (the first frame), and hands the link to the driver with
/// whatever arrived behind the hello.
async fn exchange_hellos(
    mut link: Link,
    hello: Hello,
    max_frame: usize,
    events: mpsc::UnboundedSender<LinkEvent>,
    addr: Option<SocketAddr>,
) {
    let result = async {
        let frame =
            codec::encode_frame(&Message::Hello(hello), max_frame).map_err(|e| e.to_string())?;
        link.send
            .write_all(&frame)
            .await
            .map_err(|e| e.to_string())?;
        let mut decoder = FrameDecoder::new(max_frame);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(payload) = decoder.next_payload().map_err(|e| e.to_string())? {
                return match codec::decode_message(&payload).map_err(|e| e.to_string())? {
                    Message::Hello(theirs) => Ok((theirs, decoder.into_buffered())),
                    _ => Err("first frame is not a hello".to_owned()),
                };
            }
            match link.recv.read(&mut buf).await.map_err(|e| e.to_string())? {
                Some(n) => decoder.extend(&buf[..n]),
                None => return Err("closed before its hello".to_owned()),
            }
        }
    };
    let reason = match tokio::time::timeout(quic::AUTH_TIMEOUT, result).await {
        Ok(Ok((theirs, buffered))) => {
            let _ = events.send(LinkEvent::Ready {
                link,
                hello: theirs,
                buffered,
            });
            return;
        }
        Ok(Err(e)) => e,
        Err(_) => "hello timed out".to_owned(),
    };
    tracing::debug!(remote = %link.remote, %reason, "link setup failed");
    link.connection
        .close(quinn::VarInt::from_u32(quic::CLOSE_PROTOCOL), b"bad hello");
    if let Some(addr) = addr {
        let _ = events.send(LinkEvent::DialFailed { addr });
    }
}

/// Answers the renewed proofs the peer of link `conn` asks for (see `Endpoint::renew`), one at
/// a time, until the connection ends.
async fn serve_renewals(
    endpoint: Endpoint,
    connection: quinn::Connection,
    role: Role,
    peer: PeerId,
    conn: usize,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    while let Ok((send, recv)) = connection.accept_bi().await {
        let result = endpoint
            .answer_renewal(&connection, role, peer, send, recv)
            .await
            .map_err(|e| e.to_string());
        if events
            .send(LinkEvent::Renewed {
                peer,
                conn,
                ours: false,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<bytes::Bytes>) {
    while let Some(frame) = rx.recv().await {
        if send.write_chunk(frame).await.is_err() {
            return;
        }
    }
    // The senders are gone: the mesh is leaving or the link was dropped. Finish the stream and
    // wait until the peer has read it to the end, so that closing the connection right after
    // (a graceful leave) does not discard the last frames, the leave among them.
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}

async fn read_loop(
    mut recv: quinn::RecvStream,
    buffered: Vec<u8>,
    peer: PeerId,
    conn: usize,
    max_frame: usize,
    events: mpsc::UnboundedSender<LinkEvent>,
    views: mpsc::UnboundedSender<LinkEvent>,
) {
    let mut decoder = FrameDecoder::new(max_frame);
    decoder.extend(&buffered);
    let mut buf = vec![0u8; 64 * 1024];
    let error = loop {
        match decoder.next_payload() {
            Ok(Some(payload)) => {
                // Views overtake queued frames; everything else keeps the link's order.
                let queue = if codec::is_view(&payload) {
                    &views
                } else {
                    &events
                };
                if queue
                    .send(LinkEvent::Frame {
                        peer,
                        conn,
                        payload,
                    })
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break Some(e.to_string()),
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => decoder.extend(&buf[..n]),
            Ok(None) | Err(_) => break None,
        }
    };
    let _ = events.send(LinkEvent::Closed { peer, conn, error });
}
