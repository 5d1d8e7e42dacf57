//! Sealed views: heartbeats sent as UDP datagrams of their own, beside a link's QUIC
//! connection.
//!
//! A view (a heartbeat with the sender's whole liveness view) needs nothing QUIC adds to a
//! datagram: it is idempotent, carries its own order (a vector clock) and is replaced by the
//! next one a heartbeat later. As a QUIC datagram it still costs an acknowledgement, the
//! connection's congestion and loss state and a turn of the connection's driver on both sides;
//! at 64 windows on one machine those were a third of the idle mesh's CPU (docs/under-load.md,
//! twenty-sixth slice). Sealed here, a view costs one AEAD seal and one `sendmsg`.
//!
//! # Keys and format
//!
//! Each direction of each link has its own key, exported from the link's TLS session
//! ([`ViewKey::derive`]: label [`EXPORTER_LABEL`], context the sender's then the receiver's
//! peer id), so a view is authenticated by the same handshake and mesh-secret proof as the
//! link, and its key dies with the connection. The receiver names the link by a random
//! *route* it hands the sender on the link's stream (with the port of its [`ViewSocket`]); a
//! datagram is
//!
//! ```text
//! route (8 bytes, big-endian) | counter (8 bytes, big-endian) | sealed frame | tag (16 bytes)
//! ```
//!
//! sealed with ChaCha20-Poly1305, nonce 4 zero bytes then the counter, the first 16 bytes as
//! associated data. The sender's counter starts at 0 and only grows, so a nonce is never used
//! twice with a key; the receiver drops a datagram whose counter is not above the highest it
//! opened on that route (a replayed or overtaken view: the next one supersedes it anyway).
//! Anything that does not open (unknown route, wrong key, tampered, truncated) is dropped and
//! counted; nobody can be blamed for an unauthenticated UDP datagram, so no link is closed.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use statemesh_core::PeerId;

/// The TLS exporter label of the views' keys.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-statemesh-view-v1";

/// Bytes before the sealed frame: the route and the counter.
pub const HEADER_LEN: usize = 16;

/// Bytes a sealed view adds to its frame: the header and the AEAD tag.
pub const OVERHEAD: usize = HEADER_LEN + 16;

/// The largest sealed view sent: a UDP datagram's largest payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;

/// The size of a buffer that holds any datagram (larger than any UDP payload).
pub const READ_BUFFER: usize = 65_536;

/// The key of one direction of one link. Not `Clone`: a key goes to one [`ViewSender`] (or one
/// route), so that its nonces, a sender's counter, never repeat.
pub struct ViewKey(LessSafeKey);

impl std::fmt::Debug for ViewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ViewKey(..)")
    }
}

/// The TLS session could not export keying material (the connection is not set up).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the link's TLS session exported no keying material for its views")]
pub struct ExportError;

impl ViewKey {
    /// The key of the views `from` sends `to` on `connection`: both ends of the connection
    /// derive the same key for each direction, and different keys for the two.
    pub fn derive(
        connection: &quinn::Connection,
        from: PeerId,
        to: PeerId,
    ) -> Result<Self, ExportError> {
        let mut context = [0u8; 32];
        context[..16].copy_from_slice(&from.to_bytes());
        context[16..].copy_from_slice(&to.to_bytes());
        let mut secret = [0u8; 32];
        connection
            .export_keying_material(&mut secret, EXPORTER_LABEL, &context)
            .map_err(|_| ExportError)?;
        Ok(Self::from_secret(&secret))
    }

    /// A key from 32 secret bytes (tests, and [`derive`](Self::derive)).
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        // 32 bytes is ChaCha20-Poly1305's key length: this cannot fail.
        let key = UnboundKey::new(&aead::CHACHA20_POLY1305, secret)
            .unwrap_or_else(|_| unreachable!("a 32-byte ChaCha20-Poly1305 key"));
        Self(LessSafeKey::new(key))
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals `frame` as the view numbered `counter` on `route`.
fn seal(key: &ViewKey, route: u64, counter: u64, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + OVERHEAD);
    out.extend_from_slice(&route.to_be_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    out.extend_from_slice(frame);
    let (header, body) = out.split_at_mut(HEADER_LEN);
    let tag = key
        .0
        .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), body)
        .unwrap_or_else(|_| unreachable!("a view is far below ChaCha20-Poly1305's limit"));
    out.extend_from_slice(tag.as_ref());
    out
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Shorter than a header and a tag.
    #[error("shorter than a sealed view")]
    Short,
    /// No route of this socket has that number (or it was closed).
    #[error("for no route of this socket")]
    UnknownRoute,
    /// The tag did not verify: another key, or changed on the way.
    #[error("does not open with its route's key")]
    Forged,
    /// Opened, but numbered at or below the highest opened on its route.
    #[error("not newer than the views opened before it")]
    Stale,
}

/// The sender's end of one link's sealed views: where they go, under which route and key,
/// and whether the receiver said they arrive.
#[derive(Debug)]
pub struct ViewSender {
    socket: Arc<ViewSocket>,
    to: SocketAddr,
    route: u64,
    key: ViewKey,
    counter: AtomicU64,
    heard: AtomicBool,
}

impl ViewSender {
    /// Views to `to`, on the receiver's `route`, sealed with `key`, from `socket`. One sender
    /// per key: the counter, which is the nonce, starts at 0 with each sender, and two senders
    /// of one key would repeat nonces (which would let an observer forge views under the key).
    pub fn new(socket: Arc<ViewSocket>, to: SocketAddr, route: u64, key: ViewKey) -> Self {
        Self {
            socket,
            to,
            route,
            key,
            counter: AtomicU64::new(0),
            heard: AtomicBool::new(false),
        }
    }

    /// The receiver's route.
    pub fn route(&self) -> u64 {
        self.route
    }

    /// Where the views go.
    pub fn to(&self) -> SocketAddr {
        self.to
    }

    /// Whether the receiver said sealed views reach it (see [`set_heard`](Self::set_heard)).
    pub fn heard(&self) -> bool {
        self.heard.load(Ordering::Relaxed)
    }

    /// The receiver said sealed views reach it.
    pub fn set_heard(&self) {
        self.heard.store(true, Ordering::Relaxed);
    }

    /// Seals `frame` and sends it, without waiting: a full socket buffer drops it, as a lost
    /// datagram (the next view replaces it).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        let datagram = seal(&self.key, self.route, counter, frame);
        // Counted before it leaves, taken back if it did not: whoever receives it and then
        // reads the count finds it there.
        let counts = &self.socket.counts;
        counts.sent.fetch_add(1, Ordering::Relaxed);
        let sent = self.socket.send.send_to(&datagram, self.to);
        match sent {
            Ok(_) => Ok(()),
            Err(e) => {
                counts.sent.fetch_sub(1, Ordering::Relaxed);
                counts.send_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

/// A view opened by a [`ViewSocket`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The peer the route was opened for.
    pub peer: PeerId,
    /// The link (the caller's number) the route was opened for.
    pub link: usize,
    /// The route.
    pub route: u64,
    /// The frame, as the sender sealed it.
    pub frame: Vec<u8>,
    /// Whether it is the first view opened on this route.
    pub first: bool,
}

struct Route {
    peer: PeerId,
    link: usize,
    key: ViewKey,
    /// The highest counter opened, if any.
    newest: Option<u64>,
}

#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    send_errors: AtomicU64,
    received: AtomicU64,
    refused: AtomicU64,
}

/// What a [`ViewSocket`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewCounts {
    /// Views sealed and handed to the socket.
    pub sent: u64,
    /// Views the socket would not take (a full buffer, an unreachable address).
    pub send_errors: u64,
    /// Views opened.
    pub received: u64,
    /// Datagrams dropped: short, for no route, forged or stale.
    pub refused: u64,
}

/// A window's UDP socket for sealed views, in and out, and the routes it receives on. It
/// sends from any thread (non-blocking, no runtime needed); it receives through a
/// [`ViewReceiver`], on the runtime that reads it.
pub struct ViewSocket {
    send: std::net::UdpSocket,
    routes: parking_lot::Mutex<HashMap<u64, Route>>,
    counts: Counts,
}

impl std::fmt::Debug for ViewSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewSocket")
            .field("addr", &self.send.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl ViewSocket {
    /// Binds a socket on `ip`, on a port the system picks.
    pub fn bind(ip: IpAddr) -> io::Result<Arc<Self>> {
        let send = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        send.set_nonblocking(true)?;
        Ok(Arc::new(Self {
            send,
            routes: parking_lot::Mutex::default(),
            counts: Counts::default(),
        }))
    }

    /// The socket's receiving end, on the Tokio runtime this is called in (outside of one, an
    /// error): whoever judges the views reads them where it runs, and no other thread is woken
    /// for them.
    pub fn receiver(self: &Arc<Self>) -> io::Result<ViewReceiver> {
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let io = tokio::net::UdpSocket::from_std(self.send.try_clone()?)?;
        Ok(ViewReceiver {
            socket: Arc::clone(self),
            io,
        })
    }

    /// The socket's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.send.local_addr()
    }

    /// Opens a route for the views `peer` seals with `key` on link `link`: its number, to
    /// hand the peer.
    pub fn open_route(&self, peer: PeerId, link: usize, key: ViewKey) -> u64 {
        let mut routes = self.routes.lock();
        loop {
            let route = rand::random::<u64>();
            if let std::collections::hash_map::Entry::Vacant(v) = routes.entry(route) {
                v.insert(Route {
                    peer,
                    link,
                    key,
                    newest: None,
                });
                return route;
            }
        }
    }

    /// Closes `route`: views on it are refused from now on.
    pub fn close_route(&self, route: u64) {
        self.routes.lock().remove(&route);
    }

    /// Keeps the routes whose peer and link `keep` approves, closes the others.
    pub fn retain_routes(&self, mut keep: impl FnMut(PeerId, usize) -> bool) {
        self.routes.lock().retain(|_, r| keep(r.peer, r.link));
    }

    /// The routes open.
    pub fn routes(&self) -> usize {
        self.routes.lock().len()
    }

    /// What the socket counted.
    pub fn counts(&self) -> ViewCounts {
        let c = &self.counts;
        ViewCounts {
            sent: c.sent.load(Ordering::Relaxed),
            send_errors: c.send_errors.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
        }
    }

    /// Opens one datagram in place (`datagram` is left holding garbage).
    pub fn open(&self, datagram: &mut [u8]) -> Result<Opened, Refused> {
        let opened = self.open_inner(datagram);
        let count = match opened {
            Ok(_) => &self.counts.received,
            Err(_) => &self.counts.refused,
        };
        count.fetch_add(1, Ordering::Relaxed);
        opened
    }

    fn open_inner(&self, datagram: &mut [u8]) -> Result<Opened, Refused> {
        if datagram.len() < OVERHEAD {
            return Err(Refused::Short);
        }
        let (header, body) = datagram.split_at_mut(HEADER_LEN);
        let route = u64::from_be_bytes(header[..8].try_into().unwrap_or_default());
        let counter = u64::from_be_bytes(header[8..].try_into().unwrap_or_default());
        let mut routes = self.routes.lock();
        let r = routes.get_mut(&route).ok_or(Refused::UnknownRoute)?;
        if r.newest.is_some_and(|n| counter <= n) {
            return Err(Refused::Stale);
        }
        let frame = r
            .key
            .0
            .open_in_place(nonce(counter), Aad::from(&*header), body)
            .map_err(|_| Refused::Forged)?;
        let first = r.newest.is_none();
        r.newest = Some(counter);
        Ok(Opened {
            peer: r.peer,
            link: r.link,
            route,
            frame: frame.to_vec(),
            first,
        })
    }
}

/// The receiving end of a [`ViewSocket`], registered with one Tokio runtime (see
/// [`ViewSocket::receiver`]).
#[derive(Debug)]
pub struct ViewReceiver {
    socket: Arc<ViewSocket>,
    io: tokio::net::UdpSocket,
}

impl ViewReceiver {
    /// Waits until a datagram may be there to read (then [`Self::try_recv`]).
    pub async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }

    /// The next datagram already there, read through `buf` (of [`READ_BUFFER`] bytes: a
    /// shorter one truncates large datagrams, which then do not open): the view it opens to,
    /// or why it was dropped (and counted); `None` once none is left. One datagram per call,
    /// so that a caller bounds its work under a flood of forged ones. An error only if the
    /// socket fails.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<Result<Opened, Refused>>> {
        match self.io.try_recv_from(buf) {
            Ok((n, from)) => Ok(Some(self.open_logged(&mut buf[..n], from))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The next view that opens, read through `buf` (as [`Self::try_recv`]), waiting for it;
    /// datagrams that do not open are dropped (and counted). An error only if the socket fails.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Opened> {
        loop {
            let (n, from) = self.io.recv_from(buf).await?;
            if let Ok(opened) = self.open_logged(&mut buf[..n], from) {
                return Ok(opened);
            }
        }
    }

    fn open_logged(&self, datagram: &mut [u8], from: SocketAddr) -> Result<Opened, Refused> {
        let bytes = datagram.len();
        self.socket
            .open(datagram)
            .inspect_err(|why| tracing::debug!(%from, bytes, %why, "a sealed view dropped"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn peer(n: u64) -> PeerId {
        PeerId::generate(1, &mut rand::rngs::StdRng::seed_from_u64(n))
    }

    fn socket() -> Arc<ViewSocket> {
        ViewSocket::bind([127, 0, 0, 1].into()).expect("binds")
    }

    #[tokio::test]
    async fn a_view_sealed_on_a_route_opens_there_once_and_in_order() {
        let (a, b) = (socket(), socket());
        let route = b.open_route(peer(1), 7, ViewKey::from_secret(&[1; 32]));
        let to = b.local_addr().expect("addr");
        let sender = ViewSender::new(a.clone(), to, route, ViewKey::from_secret(&[1; 32]));
        for frame in [b"one".as_slice(), b"two"] {
            sender.send(frame).expect("sends");
        }
        let rx = b.receiver().expect("a runtime");
        let first = rx.recv(&mut [0; READ_BUFFER]).await.expect("opens");
        assert_eq!(
            (
                first.peer,
                first.link,
                first.route,
                &first.frame[..],
                first.first
            ),
            (peer(1), 7, route, b"one".as_slice(), true)
        );
        // Read without waiting, as a window's pulse does: one datagram a call, `None` until
        // it is there; a forged one is told apart (refused), not read past.
        let forged = seal(&ViewKey::from_secret(&[2; 32]), route, 9, b"forged");
        a.send.send_to(&forged, to).expect("sent");
        sender.send(b"three").expect("sends");
        let mut buf = [0; READ_BUFFER];
        let mut read = Vec::new();
        while read.len() < 3 {
            match rx.try_recv(&mut buf).expect("reads") {
                Some(r) => read.push(r.map(|o| (o.frame, o.first))),
                None => rx.readable().await.expect("readable"),
            }
        }
        assert_eq!(
            read,
            [
                Ok((b"two".to_vec(), false)),
                Err(Refused::Forged),
                Ok((b"three".to_vec(), false)),
            ]
        );
        assert_eq!(rx.try_recv(&mut buf).expect("reads"), None, "nothing left");
        assert_eq!(a.counts().sent, 3);
        assert_eq!((b.counts().received, b.counts().refused), (3, 1));
    }

    #[test]
    fn a_receiver_outside_a_runtime_is_an_error() {
        let socket = ViewSocket::bind([127, 0, 0, 1].into()).expect("binds without a runtime");
        assert!(socket.receiver().is_err());
    }

    #[tokio::test]
    async fn datagrams_that_do_not_open_are_refused_and_counted() {
        let b = socket();
        let route = b.open_route(peer(1), 0, ViewKey::from_secret(&[1; 32]));
        // The sender's end of the same key.
        let key = ViewKey::from_secret(&[1; 32]);
        let good = seal(&key, route, 5, b"view");
        // Short, unknown route, another key, a flipped bit in the frame and in the header.
        assert_eq!(
            b.open(&mut good[..OVERHEAD - 1].to_vec()),
            Err(Refused::Short)
        );
        let other_route = seal(&key, route ^ 1, 5, b"view");
        assert_eq!(b.open(&mut other_route.clone()), Err(Refused::UnknownRoute));
        let other_key = seal(&ViewKey::from_secret(&[2; 32]), route, 5, b"view");
        assert_eq!(b.open(&mut other_key.clone()), Err(Refused::Forged));
        for bit in [HEADER_LEN * 8 + 3, 8 * 8 + 1, good.len() * 8 - 1] {
            let mut flipped = good.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(b.open(&mut flipped).is_err(), "bit {bit} flipped");
        }
        assert_eq!(b.counts().refused, 6);
        // The genuine one still opens; then neither it again nor an older one does.
        assert_eq!(b.open(&mut good.clone()).expect("opens").frame, b"view");
        assert_eq!(b.open(&mut good.clone()), Err(Refused::Stale));
        let older = seal(&key, route, 4, b"view");
        assert_eq!(b.open(&mut older.clone()), Err(Refused::Stale));
        // A closed route takes nothing.
        b.close_route(route);
        let newer = seal(&key, route, 6, b"view");
        assert_eq!(b.open(&mut newer.clone()), Err(Refused::UnknownRoute));
        assert_eq!(b.routes(), 0);
    }

    #[test]
    fn the_format_is_route_counter_sealed_frame_tag() {
        let key = ViewKey::from_secret(&[3; 32]);
        let sealed = seal(&key, 0x0102_0304_0506_0708, 9, b"abc");
        assert_eq!(sealed.len(), 3 + OVERHEAD);
        assert_eq!(&sealed[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&sealed[8..16], &9u64.to_be_bytes());
        assert_ne!(&sealed[16..19], b"abc", "the frame is encrypted");
    }
}
