//! The links: setting them up (accepting, dialling, probing, the exchange of hellos), each
//! link's reader and writer tasks and its renewed proofs, and what the driver does with what
//! happens to them ([`LinkEvent`]). Exactly one link per pair of peers (the one dialled by the
//! lower id wins); a link is closed on a bad frame, on a failed proof, or when its peer is
//! certainly gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use statemesh_core::codec::{self, FrameDecoder, Hello, Message};
use statemesh_core::{DeathCause, Incarnation, LinkDown, PeerId, Time};
use statemesh_net::auth::Role;
use statemesh_net::discovery::MeshTags;
use statemesh_net::keyring::KeyId;
use statemesh_net::quic::{self, Endpoint, Link, LinkError};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

use super::Run;
use super::sealed::LinkViews;
use crate::dialer::{Dial, Via, new_link_wins};
use crate::store::StoreError;

/// Things that happen to links, reported to the driver by its helper tasks (and the store's
/// progress, reported by its thread).
pub(super) enum LinkEvent {
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
    /// A frame (whole, header included, as cut by the core's `FrameDecoder`) arrived on
    /// connection `conn` from `peer`.
    Frame {
        peer: PeerId,
        conn: usize,
        frame: bytes::Bytes,
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
    /// The first view `peer` sealed on connection `conn`'s route opened (see `sealed`).
    SealedViewsArrive {
        peer: PeerId,
        conn: usize,
        route: u64,
    },
}

/// A view (heartbeat) that arrived on connection `conn` from `peer`: it travels on a queue of
/// its own, ahead of other frames (see `Run::views`).
#[derive(Clone)]
pub(super) struct ViewFrame {
    peer: PeerId,
    conn: usize,
    frame: bytes::Bytes,
}

impl ViewFrame {
    pub(super) fn new(peer: PeerId, conn: usize, frame: bytes::Bytes) -> Self {
        Self { peer, conn, frame }
    }

    /// The peer, the connection and the frame, header included.
    pub(super) fn into_parts(self) -> (PeerId, usize, bytes::Bytes) {
        (self.peer, self.conn, self.frame)
    }
}

impl From<ViewFrame> for LinkEvent {
    fn from(v: ViewFrame) -> Self {
        Self::Frame {
            peer: v.peer,
            conn: v.conn,
            frame: v.frame,
        }
    }
}

/// A link up, as the driver holds it.
pub(super) struct LinkState {
    /// The connection's number (a new link to the same peer gets another).
    pub(super) conn: usize,
    pub(super) connection: quinn::Connection,
    /// Which side dialled it.
    dialer: PeerId,
    /// Frames to the link's writer task.
    pub(super) tx: mpsc::UnboundedSender<bytes::Bytes>,
    /// The peer's address on this link: where it listens (links are dialled from, and
    /// accepted on, each peer's one main endpoint).
    pub(super) remote: SocketAddr,
    /// Whether the peer may lead (queries and observers may not; their addresses are neither
    /// shared nor remembered).
    pub(super) eligible: bool,
    /// The incarnation that said hello.
    incarnation: Incarnation,
    /// This side's role on the connection.
    role: Role,
    /// The key the peer proved with (at setup, or when it last proved again).
    pub(super) key: KeyId,
    /// This link's sealed views.
    pub(super) views: LinkViews,
}

impl Run {
    /// Accepts incoming links until the endpoint closes.
    pub(super) fn spawn_accept_loop(&mut self) {
        let endpoint = self.endpoint.clone();
        let events = self.events.clone();
        let hello = self.shared.node_off_worker().hello();
        let max_frame = self.shared.node_off_worker().config().max_frame;
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

    /// Starts the dials the dialler says are due.
    pub(super) fn dial_due(&mut self) {
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
        let hello = self.shared.node_off_worker().hello();
        let max_frame = self.shared.node_off_worker().config().max_frame;
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

    /// Handles one link event; returns what it was (for the slow-turn log).
    pub(super) fn on_link_event(&mut self, ev: LinkEvent) -> &'static str {
        let what = match &ev {
            LinkEvent::Frame { frame, .. } if codec::is_view(frame) => "view",
            LinkEvent::Frame { .. } => "frame",
            LinkEvent::Ready { .. } => "link up",
            LinkEvent::Closed { .. } => "link closed",
            LinkEvent::Persisted(_) => "persisted",
            LinkEvent::SealedViewsArrive { .. } => "sealed views",
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
            LinkEvent::SealedViewsArrive { peer, conn, route } => {
                self.on_sealed_views_arrive(peer, conn, route);
            }
            LinkEvent::Persisted(Ok(seq)) => {
                self.shared.node_off_worker().persisted(seq);
            }
            LinkEvent::Persisted(Err(e)) => {
                self.shared.counts().persist_errors += 1;
                tracing::error!(error = %e, "could not persist state; from now on writes are not durable");
                // The store thread stopped: whoever waits for durability learns it now.
                self.shared.fail_store(e.to_string());
            }
            LinkEvent::Ready {
                link,
                hello,
                buffered,
            } => {
                // Its first exchange may carry the whole document: the turns that follow run
                // off the worker (see `Run::on_worker`).
                self.unquiet_at = Some(Instant::now());
                self.on_link_ready(now, link, hello, buffered);
            }
            LinkEvent::Frame { peer, conn, frame } => {
                if self.links.get(&peer).is_none_or(|l| l.conn != conn) {
                    return;
                }
                // A job that waits to start (frames held are being handled) takes the
                // frame's sync message if it may (see `Run::start_job`).
                let result = match &mut self.new_job {
                    Some((_, job)) => self
                        .shared
                        .node_off_worker()
                        .join_frame(now, job, peer, &frame)
                        .map(|()| None),
                    None => self
                        .shared
                        .node_off_worker()
                        .handle_frame_deferred(now, peer, &frame),
                };
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

    /// A link passed authentication and said hello: checked, kept (or not, if both sides
    /// dialled), its reader and writer started, and the node told.
    fn on_link_ready(&mut self, now: Time, link: Link, hello: Hello, buffered: Vec<u8>) {
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
        if let Err(e) = self.shared.node_off_worker().check_hello(&hello) {
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
            Role::Client => self.shared.me(),
            Role::Server => peer,
        };
        if let Some(existing) = self.links.get(&peer) {
            // Both dialled: keep the link dialled by the lower id, on both sides alike.
            if !new_link_wins(self.shared.me(), peer, existing.dialer, dialer) {
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
        let max_frame = self.shared.node_off_worker().config().max_frame;
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
        self.writers
            .spawn(write_loop(send, rx, self.shared.queued_frames().clone()));
        self.links_changed = true;
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
                views: LinkViews::default(),
            },
        );
        self.shared.counts().links_opened += 1;
        self.shared.node_off_worker().handle_link_up(now, &hello);
        self.share_addresses(peer);
        self.open_view_route(peer);
        self.tasks.spawn(read_datagrams(
            self.links[&peer].connection.clone(),
            peer,
            conn,
            max_frame,
            self.events.clone(),
            self.views.clone(),
        ));
        self.tasks.spawn(read_loop(
            recv,
            buffered,
            peer,
            conn,
            max_frame,
            self.frames.clone(),
            self.views.clone(),
        ));
        self.settle.done_with(peer);
        self.check_settled();
    }

    /// The keyring changed: hellos carry the new primary's tag and accept every key's, and
    /// every link proves again if this window's primary key changed or the key the link was
    /// proven with is no longer accepted (see `docs/security.md`, "Rotating the mesh secret").
    pub(super) fn on_keys_changed(&mut self) {
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
        let tags = MeshTags::of(&ring, &self.name);
        self.shared
            .node_off_worker()
            .set_mesh_tags(tags.primary, &tags.accepted);
        // Discoveries announce and accept the new tags too (mDNS re-announces).
        self.discoveries.retag(tags);
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
                self.links_changed = true;
            }
            Err(e) => {
                self.shared.counts().key_renewal_failures += 1;
                if self.shared.keys().current().contains(link.key) {
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

    pub(super) fn close_link(&mut self, peer: PeerId, conn: usize) {
        let Some(link) = self.links.get(&peer) else {
            return;
        };
        if link.conn != conn {
            return;
        }
        if let Some(link) = self.links.remove(&peer) {
            self.links_changed = true;
            link.connection.close(
                quinn::VarInt::from_u32(quic::CLOSE_PROTOCOL),
                b"link closed",
            );
        }
        let now = self.shared.now();
        self.shared
            .node_off_worker()
            .handle_link_down(now, peer, LinkDown::Hint);
        // Keep trying while the peer is known at some address.
        self.dialer.unlinked(Instant::now(), peer);
        self.dial_due();
    }

    /// A peer's incarnation was judged dead. A link still open to it is closed at once when
    /// the death is certain (it left, or its local socket closed), or when the peer was told
    /// its sealed views arrive (it sends them no other way: if the view socket's datagrams
    /// stopped coming while the connection lives, a refutation would never be heard on that
    /// link); else it is left to QUIC's idle timeout, and the peer may refute over it. A peer
    /// that may lead keeps its learned addresses (it may come back there), a query or observer
    /// is forgotten.
    pub(super) fn on_peer_down(&mut self, incarnation: Incarnation, cause: DeathCause) {
        let peer = incarnation.peer;
        let link = self
            .links
            .get(&peer)
            .filter(|l| l.incarnation.number <= incarnation.number)
            .map(|l| (l.conn, l.eligible, l.views.told_heard));
        if let Some((conn, eligible, told_heard)) = link {
            if !eligible {
                self.dialer.forget_peer(peer);
            }
            if cause != DeathCause::Timeout || told_heard {
                self.close_link(peer, conn);
                // What closing the link made the node say goes out on the next turn.
                self.shared.wake();
            }
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
            if let Some(message) = decoder.next_message().map_err(|e| e.to_string())? {
                return match message {
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

/// Writes the frames queued to a link, counting each down from `queued` (the backlog's frames)
/// once QUIC took it.
async fn write_loop(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<bytes::Bytes>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(frame) = rx.recv().await {
        let result = send.write_chunk(frame).await;
        queued.fetch_sub(1, Ordering::Relaxed);
        if result.is_err() {
            // What is still queued will never be sent: no longer part of the backlog.
            rx.close();
            while rx.try_recv().is_ok() {
                queued.fetch_sub(1, Ordering::Relaxed);
            }
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

/// Reads the link's datagrams: views (see `pulse::send_view`), queued like those read from
/// the stream. Anything else is a protocol error that closes the link, like a bad frame.
async fn read_datagrams(
    connection: quinn::Connection,
    peer: PeerId,
    conn: usize,
    max_frame: usize,
    events: mpsc::UnboundedSender<LinkEvent>,
    views: broadcast::Sender<ViewFrame>,
) {
    // Ends with the connection (its stream's reader reports the link closed).
    while let Ok(frame) = connection.read_datagram().await {
        if frame.len() > max_frame || !codec::is_view(&frame) {
            let error = format!(
                "a datagram that is not a view ({} bytes): only views travel as datagrams",
                frame.len()
            );
            let _ = events.send(LinkEvent::Closed {
                peer,
                conn,
                error: Some(error),
            });
            return;
        }
        if views.send(ViewFrame { peer, conn, frame }).is_err() {
            // The driver is gone.
            return;
        }
    }
}

async fn read_loop(
    mut recv: quinn::RecvStream,
    buffered: Vec<u8>,
    peer: PeerId,
    conn: usize,
    max_frame: usize,
    frames: mpsc::Sender<LinkEvent>,
    views: broadcast::Sender<ViewFrame>,
) {
    let mut decoder = FrameDecoder::new(max_frame);
    decoder.extend(&buffered);
    let mut chunks: [bytes::Bytes; 32] = Default::default();
    let error = loop {
        // Cut by the core's splitter, the one place that knows the header; the node checks
        // each frame's header again and decodes it.
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                // Views overtake queued frames (and never wait: a full queue drops its oldest);
                // everything else keeps the link's order, and waits for room in its queue.
                let sent = if codec::is_view(&frame) {
                    // Fails only when the driver is gone.
                    views.send(ViewFrame { peer, conn, frame }).is_ok()
                } else {
                    frames
                        .send(LinkEvent::Frame { peer, conn, frame })
                        .await
                        .is_ok()
                };
                if !sent {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break Some(e.to_string()),
        }
        // QUIC's own buffers, read in place: no buffer of the link's own to keep resident.
        match recv.read_chunks(&mut chunks).await {
            // Taken, not kept: a chunk holds its datagram's buffer.
            Ok(Some(n)) => chunks[..n]
                .iter_mut()
                .for_each(|c| decoder.extend(&std::mem::take(c))),
            Ok(None) | Err(_) => break None,
        }
    };
    // On the frames' queue: after this link's last frames (a leave among them).
    let _ = frames.send(LinkEvent::Closed { peer, conn, error }).await;
}
