//! The pulse: heartbeats and views on a thread of their own.
//!
//! Liveness must not wait for bulk work. The driver's turns may be long (a job's result
//! joining the document, sync messages generated for every peer during a write burst, a local
//! write), and a window whose heartbeats waited for them was taken for frozen by its peers. So
//! the pulse, apart from the driver, does the liveness part of the node's work and
//! nothing else, on the node's [`Heart`] (its liveness, election and views, under a lock of
//! their own): it takes the views the links' readers queue, runs [`Heart::handle_beat`] on its
//! deadlines, and sends the views the heart makes straight to the links. It never takes the
//! node's lock, so nothing the document does delays it; whoever holds the heart holds it for
//! work bounded by the number of peers. Whatever a view or a beat leaves for the node (a sync
//! message owed, a peer judged dead, a new leadership) wakes the driver; a new leadership the
//! pulse also publishes itself (`Shared::publish_leadership`), without waiting for the driver.
//!
//! [`Heart`]: statemesh_core::Heart
//! [`Heart::handle_beat`]: statemesh_core::Heart::handle_beat
//!
//! Views travel as QUIC datagrams (see [`send_view`]), not on the link's stream: a stream is
//! ordered and flow-controlled, so a view queued behind a sync message waited for it on both
//! sides (the sender's writer, and a receiver whose reader stopped at a full frame queue), and
//! a window busy with a backlog was judged silent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use statemesh_core::{DecodedView, PeerId, Pulse, ReceiveError};
use statemesh_net::views::{self, ViewReceiver, ViewSender};
use tokio::sync::{broadcast, mpsc};

use super::links::{LinkEvent, ViewFrame};
use crate::shared::Shared;

/// What the pulse knows of a link: which connection is current, the connection (views leave
/// as its datagrams) and the link's writer (views too large for a datagram).
#[derive(Clone)]
pub(super) struct PulseLink {
    pub(super) conn: usize,
    pub(super) connection: quinn::Connection,
    pub(super) tx: mpsc::UnboundedSender<bytes::Bytes>,
    /// Where views go sealed, once the peer offered a route (see `sealed`).
    pub(super) sealed: Option<Arc<ViewSender>>,
}

/// Sends a view: sealed beside the connection when the peer offered a route and it fits (see
/// `sealed`), and once the peer said those arrive, nothing else; as a QUIC datagram when it
/// fits one, else on the link's stream (through its writer `tx`, counted in `queued`). A
/// datagram is neither ordered nor flow-controlled nor retransmitted, which suits a heartbeat:
/// it never waits behind sync messages, and a lost one is replaced by the next. Views are
/// idempotent and carry their own order (the vector clock), so one arriving late or twice
/// changes nothing.
pub(super) fn send_view(
    connection: &quinn::Connection,
    sealed: Option<&ViewSender>,
    tx: &mpsc::UnboundedSender<bytes::Bytes>,
    queued: &AtomicUsize,
    frame: bytes::Bytes,
) {
    // Asked only where the answer matters (not for a sealed view on loopback): QUIC works it
    // out under the connection's lock, with the packet's crypto overhead, and at 64 windows
    // the question was 4 % of the pulse's time (`idle --peers 64`, thirty-fifth slice).
    let max_datagram = std::cell::OnceCell::new();
    let max_datagram = || *max_datagram.get_or_init(|| connection.max_datagram_size());
    let sealed = sealed.filter(|s| {
        super::sealed::fits(frame.len(), s.to(), max_datagram)
            // Not to an address the peer left (QUIC followed it; the route did not).
            && s.to().ip() == connection.remote_address().ip()
    });
    if let Some(sealed) = sealed {
        match sealed.send(&frame) {
            Ok(()) if sealed.heard() => return,
            Ok(()) => {}
            // Not sent (a full socket buffer): as a QUIC datagram instead.
            Err(e) => tracing::debug!(error = %e, "a sealed view not sent"),
        }
    }
    let fits = max_datagram().is_some_and(|max| frame.len() <= max);
    if fits {
        match connection.send_datagram(frame.clone()) {
            // A closing connection: its link goes down on its own.
            Ok(()) | Err(quinn::SendDatagramError::ConnectionLost(_)) => return,
            // The path's datagram size shrank meanwhile, or the peer takes none: the stream.
            Err(e) => tracing::debug!(error = %e, "a view goes on the stream, not as a datagram"),
        }
    }
    // Counted before it is sent: the writer counts it down once QUIC took it.
    queued.fetch_add(1, Ordering::Relaxed);
    if tx.send(frame).is_err() {
        queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The links as the pulse sees them, kept by the driver as links come up and go: a snapshot
/// the driver replaces whole, so that a turn of the pulse takes it with one reference count
/// (it used to copy the map, every link's handles with it: at 64 windows, five views a second
/// from each of 63 peers, that copy and its drop were nearly half of the pulse's time).
pub(super) type PulseLinks = Arc<parking_lot::Mutex<Arc<BTreeMap<PeerId, PulseLink>>>>;

/// Starts the pulse on a thread of its own, with a runtime of its own (timers, and the view
/// socket's reads), so that its beats wait for no task of the mesh's runtime: with the pulse a
/// task among the links' readers, QUIC's drivers and the driver on that runtime's one worker,
/// `throughput --peers 8 --batch 100` ran beats 16-35 ms late at the 99th percentile (4.5-9.6
/// ms on this thread) while a process sleeping 10 ms at a time on the same machine woke at most
/// 13 ms late. The thread ends with [`run`]: when the views' queue closes (the driver and every
/// link's reader gone). The thread runs `nice` levels below the caller's CPU priority (see
/// `super::priority`). If no thread can be made, the pulse runs as a task of `tasks`, as it
/// did before.
pub(super) fn spawn(
    tasks: &mut tokio::task::JoinSet<()>,
    shared: Arc<Shared>,
    links: PulseLinks,
    views: broadcast::Receiver<ViewFrame>,
    events: mpsc::UnboundedSender<LinkEvent>,
    nice: u8,
) {
    let fallback = (
        shared.clone(),
        links.clone(),
        views.resubscribe(),
        events.clone(),
    );
    let (lowered, running) = std::sync::mpsc::sync_channel(1);
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()
        .and_then(|runtime| {
            std::thread::Builder::new()
                .name("statemesh-pulse".into())
                .spawn(move || {
                    super::priority::lower_this_thread(nice, "pulse");
                    let _ = lowered.send(());
                    runtime.block_on(run(shared, links, views, events))
                })
        });
    if started.is_ok() {
        // The pulse runs at its own priority before the window is up.
        let _ = running.recv();
    }
    if let Err(e) = started {
        tracing::warn!(error = %e, "no thread for the pulse: it runs on the mesh's runtime");
        let (shared, links, views, events) = fallback;
        tasks.spawn(run(shared, links, views, events));
    }
}

/// The pulse's loop; it ends when the views' queue closes (the driver and every reader gone).
///
/// The pulse reads the view socket itself, on its own runtime: a sealed view wakes this thread
/// alone, where it used to wake a worker of the mesh's runtime (the reader), which queued it and
/// woke the pulse; at 64 windows a heartbeat instant brought 63 views to every window at once,
/// and the worker that would take a write's sync message took them first.
pub(super) async fn run(
    shared: Arc<Shared>,
    links: PulseLinks,
    mut views: broadcast::Receiver<ViewFrame>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    // Taken once: from here on the pulse locks the heart alone, never the node.
    let (pulse, max_frame) = {
        let node = shared.node();
        (node.pulse(), node.config().max_frame)
    };
    let mut sealed = shared.view_socket().and_then(|socket| {
        socket
            .receiver()
            .inspect_err(|e| tracing::warn!(error = %e, "no view receiver: views travel on QUIC"))
            .ok()
    });
    let mut buf = vec![0u8; views::READ_BUFFER];
    let mut batch = Vec::new();
    loop {
        // The next beat, or the moment views' notes should wake the driver; now if views wait
        // (the driver leaves those it queued when it finds the heart held: see
        // `Node::poll_transmit`).
        let due = {
            let heart = pulse.lock();
            if heart.has_views() {
                Instant::now()
            } else {
                let beat = heart.poll_beat_timeout();
                shared.instant(
                    heart
                        .poll_wake_timeout()
                        .map_or(beat, |wake| wake.min(beat)),
                )
            }
        };
        tokio::select! {
            biased;
            v = views.recv() => match v {
                Ok(v) => batch.push(v),
                Err(broadcast::error::RecvError::Lagged(n)) => views_dropped(&shared, n),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            r = readable(sealed.as_ref()) => if let Err(e) = r {
                sealed_failed(&mut sealed, &e);
            },
            () = tokio::time::sleep_until(due.into()) => {}
        }
        // Every view queued meanwhile is judged with the beat: a beat that ran first would
        // find their senders silent.
        loop {
            match views.try_recv() {
                Ok(v) => batch.push(v),
                Err(broadcast::error::TryRecvError::Lagged(n)) => views_dropped(&shared, n),
                Err(_) => break,
            }
        }
        if let Some(receiver) = &sealed
            && let Err(e) = super::sealed::take(receiver, &mut buf, max_frame, &events, &mut batch)
        {
            sealed_failed(&mut sealed, &e);
        }
        beat(&shared, &pulse, &links, &events, &mut batch, max_frame);
    }
}

/// Until a datagram may be on the view socket; never without one.
async fn readable(receiver: Option<&ViewReceiver>) -> std::io::Result<()> {
    match receiver {
        Some(receiver) => receiver.readable().await,
        None => std::future::pending().await,
    }
}

/// The view socket failed: views are no longer read from it. Peers not yet told their sealed
/// views arrive go on sending them on QUIC too; those told so are judged silent here, their
/// links closed (see `Run::on_peer_down`), and on the new links, whose sealed views never
/// open here now, their views stay on QUIC.
fn sealed_failed(sealed: &mut Option<ViewReceiver>, e: &std::io::Error) {
    tracing::warn!(error = %e, "the view socket failed: views travel on QUIC");
    *sealed = None;
}

/// One turn of the pulse: the views in `batch`, then the beat if it is due, then the views the
/// heart made leave, and the leadership (published if its version is new).
fn beat(
    shared: &Shared,
    pulse: &Pulse,
    links: &PulseLinks,
    events: &mpsc::UnboundedSender<LinkEvent>,
    batch: &mut Vec<ViewFrame>,
    max_frame: usize,
) {
    let current = Arc::clone(&links.lock());
    // Decoded before the heart is taken: the node waits for whoever holds it.
    let decoded: Vec<_> = batch
        .drain(..)
        .filter_map(|v| {
            let (peer, conn, frame) = v.into_parts();
            let current = current.get(&peer).is_some_and(|l| l.conn == conn);
            current.then(|| (peer, conn, DecodedView::decode(&frame, max_frame)))
        })
        .collect();
    let t0 = Instant::now();
    let mut heart = pulse.lock();
    let waited = t0.elapsed();
    let now = shared.now();
    for (peer, conn, view) in decoded {
        match heart.handle_decoded_view(now, peer, view) {
            // The link went down between the driver's last flush and now: nothing to close.
            Ok(()) | Err(ReceiveError::NoLink(_)) => {}
            Err(e) => {
                // The driver closes the link, as it does after any bad frame.
                let _ = events.send(LinkEvent::Closed {
                    peer,
                    conn,
                    error: Some(e.to_string()),
                });
            }
        }
    }
    let due = heart.poll_beat_timeout();
    let mut late = None;
    if now >= due {
        late = Some(now.saturating_since(due));
        heart.handle_beat(now);
    }
    let mut views = Vec::new();
    while let Some(t) = heart.poll_view() {
        views.push(t);
    }
    let more = heart.take_wake(now);
    let leadership = heart.leadership();
    drop(heart);
    // A claim heard or a death judged here shows at once, not at the driver's next turn.
    shared.publish_leadership(leadership);
    let queued = shared.queued_frames();
    for t in views {
        if let Some(link) = current.get(&t.to) {
            send_view(
                &link.connection,
                link.sealed.as_deref(),
                &link.tx,
                queued,
                t.frame,
            );
        }
    }
    if let Some(late) = late {
        shared.counts().tick_late.record(late);
    }
    if waited >= super::SLOW_TURN {
        tracing::debug!(
            waited_ms = waited.as_secs_f64() * 1e3,
            "the pulse waited for the heart"
        );
    }
    if more {
        shared.wake();
    }
}

/// `n` views were dropped unread: newer ones filled their queue.
pub(super) fn views_dropped(shared: &Shared, n: u64) {
    shared.counts().views_dropped += n;
    tracing::debug!(n, "views dropped: newer ones filled the queue");
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use rand_core::SeedableRng;
    use statemesh_net::quic::{Endpoint, Link};
    use statemesh_net::secret::Secret;
    use statemesh_net::views::{ViewKey, ViewSocket};

    use super::*;

    /// Two endpoints of peers `a` (serving) and `b` (dialling), linked: the accepted and the
    /// dialled link.
    async fn linked(a: PeerId, b: PeerId) -> (Endpoint, Endpoint, Link, Link) {
        let secret = Secret::from_bytes([9; 32]);
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let server = Endpoint::bind(any, a, secret.clone(), "pulse").expect("binds");
        let client = Endpoint::bind(any, b, secret, "pulse").expect("binds");
        let addr = server.local_addr().expect("an address");
        let (accepted, dialled) = tokio::join!(server.accept(), client.connect(addr));
        let accepted = accepted.expect("incoming").expect("authenticates");
        let dialled = dialled.expect("authenticates");
        (server, client, accepted, dialled)
    }

    fn peers() -> (PeerId, PeerId) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        (
            PeerId::generate(10, &mut rng),
            PeerId::generate(11, &mut rng),
        )
    }

    #[tokio::test]
    async fn a_view_goes_as_a_datagram_when_it_fits_and_on_the_stream_when_not() {
        let (a, b) = peers();
        let (_server, _client, accepted, dialled) = linked(a, b).await;
        let (tx, mut stream) = mpsc::unbounded_channel();
        let queued = AtomicUsize::new(0);

        let small = bytes::Bytes::from(vec![1u8; 64]);
        send_view(&dialled.connection, None, &tx, &queued, small.clone());
        let got = accepted
            .connection
            .read_datagram()
            .await
            .expect("a datagram");
        assert_eq!(got, small);
        assert!(stream.try_recv().is_err(), "nothing on the stream");
        assert_eq!(queued.load(Ordering::Relaxed), 0);

        // Larger than any UDP datagram (the path's datagram size grows as QUIC probes it).
        let large = bytes::Bytes::from(vec![2u8; 70_000]);
        send_view(&dialled.connection, None, &tx, &queued, large.clone());
        let sent = stream.try_recv().expect("on the stream");
        assert!(sent == large, "the view as it was");
        assert_eq!(queued.load(Ordering::Relaxed), 1, "counted until written");
    }

    #[tokio::test]
    async fn a_view_goes_sealed_and_as_a_datagram_until_heard_then_sealed_alone() {
        let (a, b) = peers();
        let (_server, _client, accepted, dialled) = linked(a, b).await;
        // `a` opens a route for `b`'s views, under the key it derives for them; `b` seals with
        // the key it derives on its end of the connection.
        let socket_a = ViewSocket::bind(Ipv4Addr::LOCALHOST.into()).expect("binds");
        let socket_b = ViewSocket::bind(Ipv4Addr::LOCALHOST.into()).expect("binds");
        let rx_a = socket_a.receiver().expect("a runtime");
        let key_in = ViewKey::derive(&accepted.connection, b, a).expect("exports");
        let route = socket_a.open_route(b, 3, key_in);
        let key_out = ViewKey::derive(&dialled.connection, b, a).expect("exports");
        let to = socket_a.local_addr().expect("an address");
        let sender = ViewSender::new(socket_b.clone(), to, route, key_out);
        let (tx, mut stream) = mpsc::unbounded_channel();
        let queued = AtomicUsize::new(0);
        let mut buf = vec![0u8; views::READ_BUFFER];

        let one = bytes::Bytes::from(vec![1u8; 64]);
        send_view(
            &dialled.connection,
            Some(&sender),
            &tx,
            &queued,
            one.clone(),
        );
        let opened = rx_a
            .recv(&mut buf)
            .await
            .expect("opens: both ends derive one key");
        assert_eq!((opened.peer, opened.link, opened.first), (b, 3, true));
        assert_eq!(opened.frame, one);
        let datagram = accepted
            .connection
            .read_datagram()
            .await
            .expect("a datagram");
        assert_eq!(datagram, one, "not heard yet: as a QUIC datagram too");

        sender.set_heard();
        let two = bytes::Bytes::from(vec![2u8; 64]);
        send_view(
            &dialled.connection,
            Some(&sender),
            &tx,
            &queued,
            two.clone(),
        );
        assert_eq!(rx_a.recv(&mut buf).await.expect("opens").frame, two);
        // The next QUIC datagram is one sent after `two` (datagrams of one connection leave
        // in order, and loopback loses none): `two` went sealed alone.
        let marker = bytes::Bytes::from_static(b"marker");
        dialled
            .connection
            .send_datagram(marker.clone())
            .expect("sent");
        let datagram = accepted
            .connection
            .read_datagram()
            .await
            .expect("a datagram");
        assert_eq!(datagram, marker);
        assert!(stream.try_recv().is_err(), "nothing on the stream");
        assert_eq!(socket_b.counts().sent, 2);

        // The other direction's key opens nothing of this one: refused, and the next view
        // (sent after it on the same path) opens.
        let wrong = ViewKey::derive(&accepted.connection, a, b).expect("exports");
        let wrong_route = socket_a.open_route(b, 4, wrong);
        let key_out = ViewKey::derive(&dialled.connection, b, a).expect("exports");
        ViewSender::new(socket_b.clone(), to, wrong_route, key_out)
            .send(&one)
            .expect("sent");
        let three = bytes::Bytes::from(vec![3u8; 64]);
        send_view(
            &dialled.connection,
            Some(&sender),
            &tx,
            &queued,
            three.clone(),
        );
        assert_eq!(rx_a.recv(&mut buf).await.expect("opens").frame, three);
        assert_eq!(socket_a.counts().refused, 1);

        // A route at an address the connection no longer has (the peer moved, QUIC followed
        // it): the view goes as a QUIC datagram, not sealed.
        let moved = SocketAddr::from(([127, 0, 0, 2], to.port()));
        let elsewhere = ViewSender::new(
            socket_b.clone(),
            moved,
            route,
            ViewKey::from_secret(&[5; 32]),
        );
        elsewhere.set_heard();
        let sent = socket_b.counts().sent;
        let four = bytes::Bytes::from(vec![4u8; 64]);
        send_view(
            &dialled.connection,
            Some(&elsewhere),
            &tx,
            &queued,
            four.clone(),
        );
        // A safety net: a view sealed instead never comes as a datagram.
        let within = std::time::Duration::from_secs(15);
        let datagram = tokio::time::timeout(within, accepted.connection.read_datagram())
            .await
            .expect("a datagram in time, not a sealed view")
            .expect("the connection is up");
        assert_eq!(datagram, four);
        assert_eq!(socket_b.counts().sent, sent, "nothing sealed");
    }
}
