//! The driver: one task per mesh that owns the links and carries out the node's outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::Rng;
use statemesh_core::codec::{self, FrameDecoder, Hello, Message};
use statemesh_core::{Event, LinkDown, PeerId, Persist, WriteId};
use statemesh_net::auth::Role;
use statemesh_net::discovery::{Announce, Discovered, Running};
use statemesh_net::quic::{self, Endpoint, Link, LinkError};
use statemesh_net::secret::Secret;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

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
    /// Setting up a link to `addr` failed.
    DialFailed { addr: SocketAddr },
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
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

/// A known address to keep a link to, with its reconnect backoff.
struct Target {
    peer: Option<PeerId>,
    /// The discoveries that reported it; it is forgotten when they all withdraw it.
    found_by: BTreeSet<usize>,
    /// Reported as an address alone (a static peer): the other side may not know this one's
    /// address, so this side dials whatever the ids.
    by_address: bool,
    backoff: Duration,
    next: tokio::time::Instant,
    dialing: bool,
}

impl Target {
    fn new(peer: Option<PeerId>, found_by: usize) -> Self {
        Self {
            peer,
            found_by: BTreeSet::from([found_by]),
            by_address: peer.is_none(),
            backoff: BACKOFF_MIN,
            next: tokio::time::Instant::now(),
            dialing: false,
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(crate) async fn start(
    builder: MeshBuilder,
    secret: Secret,
    store: Option<Store>,
    shared: Arc<Shared>,
) -> Result<Driver, MeshError> {
    let listen = builder.listen_addr();
    let endpoint = Endpoint::bind(listen, shared.me, secret.clone(), &builder.name)?;
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
        secret,
    };
    let (found_tx, found_rx) = mpsc::unbounded_channel();
    let mut running = Vec::new();
    let mut unsettled = BTreeSet::new();
    let mut all_settle = true;
    for (index, discovery) in builder.discoveries().into_iter().enumerate() {
        let name = discovery.name();
        if discovery.settles() {
            unsettled.insert(index);
        } else {
            all_settle = false;
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
    let run = Run {
        shared,
        endpoint,
        writer,
        links: BTreeMap::new(),
        targets: BTreeMap::new(),
        tasks: JoinSet::new(),
        writers: JoinSet::new(),
        events,
        views,
        next_conn: 0,
        unsettled: (all_settle && !unsettled.is_empty()).then_some(unsettled),
        settling: None,
        running,
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

struct Run {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    writer: Option<Writer>,
    links: BTreeMap<PeerId, LinkState>,
    targets: BTreeMap<SocketAddr, Target>,
    tasks: JoinSet<()>,
    /// The tasks writing to each link: a graceful leave waits for them to drain.
    writers: JoinSet<()>,
    events: mpsc::UnboundedSender<LinkEvent>,
    /// Heartbeat views, handled ahead of `events` (see `statemesh_core::codec::is_view`).
    views: mpsc::UnboundedSender<LinkEvent>,
    next_conn: usize,
    /// Discoveries that settle and have not yet; `None` once all have, or when some never will
    /// (then the node's join grace applies).
    unsettled: Option<BTreeSet<usize>>,
    /// Peers reported before every discovery settled that have no link yet; the node counts
    /// itself as a leader candidate once this empties.
    settling: Option<BTreeSet<PeerId>>,
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
        let shutdown = loop {
            // Under a stream of frames (a large sync exchange) the select below keeps choosing
            // them over the timer: a tick that is due runs first, so heartbeats go out and
            // failure detection runs on time however busy the links are.
            let mut deadline = self.deadline();
            if Instant::now() >= deadline {
                let now = self.shared.now();
                self.shared.node().handle_tick(now);
                self.flush();
                deadline = self.deadline();
            }
            let redial = self
                .targets
                .values()
                .filter(|t| self.should_dial(t))
                .map(|t| t.next)
                .min();
            tokio::select! {
                biased;
                _ = &mut stop => break true,
                Some(ev) = views_rx.recv() => self.on_link_event(ev),
                Some(ev) = events_rx.recv() => self.on_link_event(ev),
                Some((index, ev)) = found_rx.recv() => self.on_discovered(index, ev),
                () = self.shared.wake.notified() => {}
                () = tokio::time::sleep_until(deadline.into()) => {
                    let now = self.shared.now();
                    self.shared.node().handle_tick(now);
                }
                () = async {
                    match redial {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => self.dial_due(),
            }
            self.flush();
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
                let target = self
                    .targets
                    .entry(addr)
                    .or_insert_with(|| Target::new(peer, index));
                target.found_by.insert(index);
                if peer.is_some() {
                    target.peer = peer;
                } else {
                    target.by_address = true;
                }
                if self.should_dial_now(addr) {
                    self.dial(addr);
                }
                if let (Some(s), Some(p)) = (self.settling.as_mut(), peer)
                    && !self.links.contains_key(&p)
                {
                    s.insert(p);
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
                    }
                }
                // Forget the addresses that only this discovery knew for the peer.
                self.targets.retain(|_, t| {
                    if t.peer == Some(peer) {
                        t.found_by.remove(&index);
                    }
                    !t.found_by.is_empty()
                });
                if let Some(s) = self.settling.as_mut() {
                    s.remove(&peer);
                }
            }
            Discovered::Settled => {
                if let Some(unsettled) = self.unsettled.as_mut() {
                    unsettled.remove(&index);
                    if unsettled.is_empty() {
                        self.unsettled = None;
                        let pending: BTreeSet<PeerId> = self
                            .targets
                            .values()
                            .filter_map(|t| t.peer)
                            .filter(|p| !self.links.contains_key(p))
                            .collect();
                        self.settling = Some(pending);
                    }
                }
            }
        }
        self.check_settled();
    }

    fn check_settled(&mut self) {
        if self.settling.as_ref().is_some_and(BTreeSet::is_empty) {
            self.settling = None;
            let now = self.shared.now();
            self.shared.node().handle_settled(now);
        }
    }

    /// Whether this side should (re)dial a target: not already dialling, no link to its peer,
    /// and this side has the lower id (so that both sides rarely dial at once) unless the
    /// target is a static address. Should both dial, the duplicate tie-break keeps one link.
    fn should_dial(&self, t: &Target) -> bool {
        !t.dialing
            && !t.peer.is_some_and(|p| self.links.contains_key(&p))
            && (t.by_address || t.peer.is_none_or(|p| self.shared.me < p))
    }

    /// Whether to dial `addr` right away: it is due, and no other address of the same peer is
    /// being dialled (a peer found both locally and by mDNS is dialled once).
    fn should_dial_now(&self, addr: SocketAddr) -> bool {
        let Some(t) = self.targets.get(&addr) else {
            return false;
        };
        self.should_dial(t)
            && t.next <= tokio::time::Instant::now()
            && !t.peer.is_some_and(|p| {
                self.targets
                    .values()
                    .any(|o| o.dialing && o.peer == Some(p))
            })
    }

    fn dial_due(&mut self) {
        let addrs: Vec<SocketAddr> = self.targets.keys().copied().collect();
        for addr in addrs {
            if self.should_dial_now(addr) {
                self.dial(addr);
            }
        }
    }

    fn dial(&mut self, addr: SocketAddr) {
        let Some(target) = self.targets.get_mut(&addr) else {
            return;
        };
        if target.dialing {
            return;
        }
        target.dialing = true;
        let endpoint = self.endpoint.clone();
        let events = self.events.clone();
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

    fn retry_later(&mut self, addr: SocketAddr) {
        if let Some(t) = self.targets.get_mut(&addr) {
            t.dialing = false;
            let jitter = rand::rng().random_range(0.5..1.5);
            t.next = tokio::time::Instant::now() + t.backoff.mul_f64(jitter);
            t.backoff = (t.backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn on_link_event(&mut self, ev: LinkEvent) {
        let now = self.shared.now();
        match ev {
            LinkEvent::DialFailed { addr } => {
                self.shared.counts().dial_failures += 1;
                self.retry_later(addr);
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
                if let Some(t) = self.targets.get_mut(&remote) {
                    t.dialing = false;
                    t.backoff = BACKOFF_MIN;
                    t.peer = Some(peer);
                }
                if hello.incarnation.peer != peer {
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
                    return;
                }
                let dialer = match link.role {
                    Role::Client => self.shared.me,
                    Role::Server => peer,
                };
                if let Some(existing) = self.links.get(&peer) {
                    // Both dialled: keep the link dialled by the lower id, on both sides alike.
                    let lower = self.shared.me.min(peer);
                    if existing.dialer == lower || dialer != lower {
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
                    ..
                } = link;
                self.writers.spawn(write_loop(send, rx));
                self.links.insert(
                    peer,
                    LinkState {
                        conn,
                        connection,
                        dialer,
                        tx,
                    },
                );
                self.shared.node().handle_link_up(now, &hello);
                self.tasks.spawn(read_loop(
                    recv,
                    buffered,
                    peer,
                    conn,
                    max_frame,
                    self.events.clone(),
                    self.views.clone(),
                ));
                if let Some(s) = self.settling.as_mut() {
                    s.remove(&peer);
                }
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
                let result = self.shared.node().handle_payload(now, peer, &payload);
                if let Err(e) = result {
                    tracing::warn!(peer = %peer.short(), error = %e, "closing link after a bad frame");
                    self.close_link(peer, conn);
                }
            }
            LinkEvent::Closed { peer, conn, error } => {
                if let Some(e) = error {
                    self.shared.counts().framing_errors += 1;
                    tracing::warn!(peer = %peer.short(), error = %e, "closing link after a bad frame");
                }
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
        let addrs: Vec<SocketAddr> = self
            .targets
            .iter()
            .filter(|(_, t)| t.peer == Some(peer))
            .map(|(a, _)| *a)
            .collect();
        for addr in addrs {
            self.retry_later(addr);
        }
    }

    /// Carries out the node's outputs: frames, events, persistence.
    fn flush(&mut self) {
        let mut frames = Vec::new();
        let mut events = Vec::new();
        let mut persists = Vec::new();
        let (info, term, synced, tracked_from) = {
            let mut node = self.shared.node();
            while let Some(t) = node.poll_transmit() {
                frames.push(t);
            }
            while let Some(p) = node.poll_persist() {
                persists.push(p);
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
            )
        };
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
                }
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
            let mut counts = self.shared.counts();
            counts.links = self.links.len();
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

async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        if send.write_all(&frame).await.is_err() {
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
