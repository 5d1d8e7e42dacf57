//! A window of the `transport-floor` scenario (`window --transport-floor`): the process, the
//! runtime and the links of a real window, without the mesh.
//!
//! It binds statemesh's QUIC endpoint on loopback (the same TLS, ALPN and secret-based
//! authentication as [`statemesh::Mesh`]'s links), dials the addresses the harness gives it,
//! and on `stamp {key}` writes one small frame (the key and its `CLOCK_MONOTONIC` reading) to
//! every link. Each link's reader hands received frames to the window's application task, which
//! prints `{"ev":"seen","key":K,"delay_ns":D,"stamp":S}` as a mesh window does when its change
//! subscription delivers a record. What separates a `propagation` run from this one is then
//! the mesh itself: Automerge, the sync protocol, the node and its driver.
//!
//! With `--floor-documents` a stamp is a record written to an Automerge document and the frame
//! carries the change it made; each receiver's reader applies it to the receiver's document and
//! the application task reads the stamp back from there (see [`crate::floor_document`]): the
//! floor then holds Automerge's own work for a write and its receipt, and what separates
//! `propagation` from it is the mesh's machinery alone.
//!
//! With `--floor-views` it also carries the liveness traffic of the design: every heartbeat
//! interval, a view (the mesh's own encoding, with a beat for itself and each linked peer, as a
//! live mesh of this many windows sends) to every link, sealed beside the link's QUIC
//! connection as the mesh sends it (`statemesh_net::views`: each side offers the other a route
//! on its view socket, on the link's stream, as a frame with an empty key; until the offer
//! arrives a view goes as a QUIC datagram); every view is opened and decoded. What the mesh's
//! heart does with a view (merging it, judging liveness) is not here. With `--floor-aligned`
//! the views leave on the machine's heartbeat grid, as a mesh's do (multiples of the interval
//! of `CLOCK_MONOTONIC`), so that every window's views arrive at once, once per interval.
//!
//! Lines it prints: `joined`, `seen`, `addr` (its endpoint's address, the answer to `addr`),
//! `links` (the answer to `links {n}` once `n` links are up), `views` (views that did not fit
//! a datagram, and views received sealed), `error`. Commands: `addr`, `dial {addrs}`, `links {n}`, `stamp {key}`, `views`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rand_core::SeedableRng;
use serde_json::json;
use statemesh_core::codec::{Message, View, decode_frame, encode_frame};
use statemesh_core::liveness::GossipBeat;
use statemesh_core::vv::Beat;
use statemesh_core::{Config, PeerId};
use statemesh_net::quic::{Endpoint, Link};
use statemesh_net::secret::Secret;
use statemesh_net::views::{self, ViewKey, ViewSender, ViewSocket};
use tokio::sync::mpsc;

use crate::clock::now_ns;
use crate::floor_document::FloorDocument;
use crate::window::{command_of, emit, stdin_lines};

/// The most bytes a frame's key may take (the harness's keys are a few bytes).
const MAX_KEY: usize = 256;

/// The most bytes a frame's body may take (a stamp, or the change of one record).
const MAX_BODY: usize = 1 << 20;

/// What a floor window carries besides its stamps.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Carried {
    /// Views to every link every heartbeat interval (`--floor-views`).
    pub(crate) views: bool,
    /// Stamps written to and read from Automerge documents (`--floor-documents`).
    pub(crate) documents: bool,
    /// Views sent on multiples of the heartbeat interval of the machine's monotonic clock
    /// (`--floor-aligned`), as a mesh's windows send theirs: every window's views then leave
    /// at the same instants.
    pub(crate) aligned: bool,
}

/// The window's document, with `--floor-documents`.
type SharedDocument = Arc<Mutex<FloorDocument>>;

/// `document`, locked by the application task or a link's reader.
fn lock(document: &SharedDocument) -> std::sync::MutexGuard<'_, FloorDocument> {
    // Held only for one of FloorDocument's calls: poisoned only by a panic in Automerge.
    document
        .lock()
        .expect("poisoned only by a panic in Automerge")
}

/// A link views go to (`--floor-views`).
struct ViewLink {
    peer: PeerId,
    connection: quinn::Connection,
    /// The key of this side's views, until the peer's route arrives (then its sender's).
    key: Option<ViewKey>,
    /// Where they go sealed, once it did.
    sealed: Option<Arc<ViewSender>>,
}

/// The links views go to.
type ViewLinks = Arc<Mutex<Vec<ViewLink>>>;

/// A route a peer offered for this window's views: the peer, its view socket's port, the route.
type RouteOffer = (PeerId, u16, u64);

/// Runs the floor window until stdin ends.
pub(crate) async fn run(
    secret_file: Option<&Path>,
    mesh: &str,
    carried: Carried,
) -> anyhow::Result<()> {
    let views = carried.views;
    let started = now_ns();
    let secret = match secret_file {
        Some(path) => Secret::load_or_create(path).context("the secret file")?,
        None => Secret::generate(),
    };
    let mut rng = rand_chacha::ChaCha8Rng::from_os_rng();
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let me = PeerId::generate(unix_ms, &mut rng);
    let endpoint = Endpoint::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), me, secret, mesh)?;
    let addr = endpoint.local_addr()?;
    let document = if carried.documents {
        Some(Arc::new(Mutex::new(FloorDocument::new(me)?)))
    } else {
        None
    };

    // A received key, and its stamp unless it is to be read from the document.
    let (frames_tx, mut frames) = mpsc::unbounded_channel::<(String, Option<i64>)>();
    let (links_tx, mut new_links) = mpsc::unbounded_channel::<Link>();
    let accepting = endpoint.clone();
    let accepted = links_tx.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.incoming().await {
            let (endpoint, accepted) = (accepting.clone(), accepted.clone());
            tokio::spawn(async move {
                match endpoint.authenticate(incoming).await {
                    Ok(link) => {
                        let _ = accepted.send(link);
                    }
                    Err(e) => emit(&json!({"ev": "error", "error": format!("accept: {e}")})),
                }
            });
        }
    });
    emit(&json!({
        "ev": "joined",
        "peer": me.to_string(),
        "pid": std::process::id(),
        "join_us": (now_ns() - started) as f64 / 1e3,
    }));

    let view_links = ViewLinks::default();
    let unsent = Arc::new(AtomicU64::new(0));
    let view_socket = if views {
        tokio::spawn(send_views(
            me,
            view_links.clone(),
            unsent.clone(),
            carried.aligned,
        ));
        let socket = ViewSocket::bind(Ipv4Addr::LOCALHOST.into())?;
        tokio::spawn(read_sealed_views(socket.clone()));
        Some(socket)
    } else {
        None
    };
    let (routes_tx, mut routes) = mpsc::unbounded_channel::<RouteOffer>();
    let mut stdin = stdin_lines();
    let mut senders = Vec::new();
    let mut waiting_for: Option<usize> = None;
    loop {
        tokio::select! {
            frame = frames.recv() => {
                let t = now_ns();
                let Some((key, stamp)) = frame else { break };
                let stamp = stamp.or_else(|| {
                    document.as_ref().and_then(|d| lock(d).stamp(&key))
                });
                match stamp {
                    Some(stamp) => emit(&json!({"ev": "seen", "key": key,
                                                "delay_ns": t as i64 - stamp,
                                                "stamp": stamp})),
                    None => emit(&json!({"ev": "error",
                                         "error": format!("no stamp for {key:?}")})),
                }
            }
            offer = routes.recv() => {
                let (Some((peer, port, route)), Some(socket)) = (offer, &view_socket) else {
                    continue;
                };
                let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                let mut links = view_links.lock().expect("held only to push or copy");
                for l in links.iter_mut().filter(|l| l.peer == peer) {
                    if let Some(key) = l.key.take() {
                        let sender = ViewSender::new(socket.clone(), to, route, key);
                        l.sealed = Some(Arc::new(sender));
                    }
                }
            }
            link = new_links.recv() => {
                let Some(link) = link else { break };
                let mut offer = None;
                if let Some(socket) = &view_socket {
                    tokio::spawn(read_views(link.connection.clone()));
                    let key_in = ViewKey::derive(&link.connection, link.peer, me)?;
                    let route = socket.open_route(link.peer, 0, key_in);
                    let mut body = socket.local_addr()?.port().to_be_bytes().to_vec();
                    body.extend_from_slice(&route.to_be_bytes());
                    offer = Some(encode("", &body));
                    view_links
                        .lock()
                        .expect("held only to push or copy")
                        .push(ViewLink {
                            peer: link.peer,
                            connection: link.connection.clone(),
                            key: Some(ViewKey::derive(&link.connection, me, link.peer)?),
                            sealed: None,
                        });
                }
                let to_app = (frames_tx.clone(), routes_tx.clone());
                let mut send = split(link, to_app, document.clone());
                if let Some(offer) = offer {
                    send.write_all(&offer).await.context("a link's stream")?;
                }
                senders.push(send);
                if waiting_for.is_some_and(|n| senders.len() >= n) {
                    waiting_for = None;
                    emit(&json!({"ev": "links", "links": senders.len()}));
                }
            }
            line = stdin.recv() => {
                let Some(line) = line else { break };
                let Some(cmd) = command_of(&line) else { continue };
                match cmd["op"].as_str().unwrap_or_default() {
                    "stamp" => {
                        let key = cmd["key"].as_str().unwrap_or_default();
                        let stamp = now_ns() as i64;
                        let body = match &document {
                            Some(d) => lock(d).write(key, stamp)?,
                            None => stamp.to_be_bytes().to_vec(),
                        };
                        let frame = encode(key, &body);
                        for send in &mut senders {
                            send.write_all(&frame).await.context("a link's stream")?;
                        }
                    }
                    "dial" => {
                        for a in cmd["addrs"].as_array().into_iter().flatten() {
                            let a: SocketAddr = a.as_str().unwrap_or_default().parse()?;
                            let (endpoint, dialled) = (endpoint.clone(), links_tx.clone());
                            tokio::spawn(async move {
                                match endpoint.connect(a).await {
                                    Ok(link) => {
                                        let _ = dialled.send(link);
                                    }
                                    Err(e) => emit(&json!({"ev": "error",
                                        "error": format!("dial {a}: {e}")})),
                                }
                            });
                        }
                    }
                    "addr" => emit(&json!({"ev": "addr", "addr": addr.to_string()})),
                    "views" => emit(&json!({"ev": "views",
                        "unsent": unsent.load(Ordering::Relaxed),
                        "sealed": view_socket.as_ref().map_or(0, |v| v.counts().received)})),
                    "links" => {
                        let n = cmd["n"].as_u64().unwrap_or(0) as usize;
                        if senders.len() >= n {
                            emit(&json!({"ev": "links", "links": senders.len()}));
                        } else {
                            waiting_for = Some(n);
                        }
                    }
                    op => emit(&json!({"ev": "error", "error": format!("unknown op {op:?}")})),
                }
            }
        }
    }
    endpoint.close();
    let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
    Ok(())
}

/// Sends every link a view every heartbeat interval, as the pulse of a mesh window does: one
/// frame per interval, a beat in it for this window and for each linked peer (all live). With
/// `aligned`, on multiples of the interval of `CLOCK_MONOTONIC`.
async fn send_views(me: PeerId, links: ViewLinks, unsent: Arc<AtomicU64>, aligned: bool) {
    let config = Config::default();
    let interval = config.heartbeat_interval;
    let first = if aligned {
        let every = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        // `Instant` reads `CLOCK_MONOTONIC` too.
        tokio::time::Instant::now() + Duration::from_nanos(until_grid(now_ns(), every))
    } else {
        tokio::time::Instant::now()
    };
    let mut tick = tokio::time::interval_at(first, interval);
    // Aligned, a late tick leaves the grid where it is (as the mesh's pulse does).
    tick.set_missed_tick_behavior(if aligned {
        tokio::time::MissedTickBehavior::Skip
    } else {
        tokio::time::MissedTickBehavior::Delay
    });
    for counter in 1u64.. {
        tick.tick().await;
        let links: Vec<_> = links
            .lock()
            .expect("held only to push or copy")
            .iter()
            .map(|l| (l.peer, l.connection.clone(), l.sealed.clone()))
            .collect();
        let beat = |peer| GossipBeat {
            peer,
            beat: Beat {
                incarnation: 1,
                counter,
            },
            eligible: true,
        };
        let beats = std::iter::once(me)
            .chain(links.iter().map(|(peer, ..)| *peer))
            .map(beat)
            .collect();
        let view = Message::View(View {
            beats,
            tombs: Vec::new(),
            claims: vec![(me, 1)],
            doc: [0; 8],
            leader: [0; 8],
        });
        let frame = match encode_frame(&view, config.max_frame) {
            Ok(frame) => bytes::Bytes::from(frame),
            Err(e) => {
                emit(&json!({"ev": "error", "error": format!("a view: {e}")}));
                return;
            }
        };
        for (_, connection, sealed) in &links {
            if let Some(sealed) = sealed {
                // As the mesh does once its peer heard its sealed views.
                if sealed.send(&frame).is_err() {
                    unsent.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            if connection.send_datagram(frame.clone()).is_err() {
                // Larger than the path's datagrams (before QUIC's path MTU discovery raised
                // them): the mesh sends it on the link's stream; the floor counts it.
                unsent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Nanoseconds from `now` to the next multiple of `every` after it (a whole `every` from a
/// multiple itself).
fn until_grid(now: u64, every: u64) -> u64 {
    let every = every.max(1);
    every - now % every
}

/// Opens and decodes the views sealed to this window until its socket fails.
async fn read_sealed_views(socket: Arc<ViewSocket>) {
    let max_frame = Config::default().max_frame;
    let mut buf = vec![0u8; views::READ_BUFFER];
    let Ok(receiver) = socket.receiver() else {
        emit(&json!({"ev": "error", "error": "no view receiver"}));
        return;
    };
    while let Ok(opened) = receiver.recv(&mut buf).await {
        if !matches!(decode_frame(&opened.frame, max_frame), Ok(Message::View(_))) {
            emit(&json!({"ev": "error", "error": "a sealed view that is not a view"}));
            return;
        }
    }
}

/// Reads and decodes a link's views until it closes.
async fn read_views(connection: quinn::Connection) {
    let max_frame = Config::default().max_frame;
    while let Ok(datagram) = connection.read_datagram().await {
        if !matches!(decode_frame(&datagram, max_frame), Ok(Message::View(_))) {
            emit(&json!({"ev": "error", "error": "a datagram that is not a view"}));
            return;
        }
    }
}

/// A frame: the key's length (one byte), the key, the body's length (4 bytes, big-endian),
/// the body (the stamp, 8 bytes big-endian, or the change that wrote it).
fn encode(key: &str, body: &[u8]) -> Vec<u8> {
    let key = &key.as_bytes()[..key.len().min(MAX_KEY - 1)];
    let mut frame = Vec::with_capacity(1 + key.len() + 4 + body.len());
    frame.push(key.len() as u8);
    frame.extend_from_slice(key);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// Reads frames from `link` until it ends, handing each to the application task (with
/// `document`, once the frame's change is applied to it), and a route offered for this
/// window's views (a frame with an empty key: the port and the route) to its other queue;
/// takes the link's send stream for the application task's writes.
fn split(
    link: Link,
    (to_app, to_routes): (
        mpsc::UnboundedSender<(String, Option<i64>)>,
        mpsc::UnboundedSender<RouteOffer>,
    ),
    document: Option<SharedDocument>,
) -> quinn::SendStream {
    let peer = link.peer;
    let mut recv = link.recv;
    tokio::spawn(async move {
        let mut key = [0u8; MAX_KEY];
        let mut body = Vec::new();
        loop {
            let mut len = [0u8; 4];
            if recv.read_exact(&mut len[..1]).await.is_err() {
                return;
            }
            let key_len = usize::from(len[0]);
            if recv.read_exact(&mut key[..key_len]).await.is_err()
                || recv.read_exact(&mut len).await.is_err()
            {
                return;
            }
            let body_len = u32::from_be_bytes(len) as usize;
            if body_len > MAX_BODY {
                emit(&json!({"ev": "error", "error": format!("a frame of {body_len} bytes")}));
                return;
            }
            body.resize(body_len, 0);
            if recv.read_exact(&mut body).await.is_err() {
                return;
            }
            if key_len == 0 {
                let (Ok(port), Ok(route)) = (
                    body[..body.len().min(2)].try_into().map(u16::from_be_bytes),
                    body[body.len().min(2)..].try_into().map(u64::from_be_bytes),
                ) else {
                    emit(&json!({"ev": "error", "error": "a route offer of the wrong size"}));
                    return;
                };
                let _ = to_routes.send((peer, port, route));
                continue;
            }
            let key = String::from_utf8_lossy(&key[..key_len]).into_owned();
            let stamp = match &document {
                Some(d) => {
                    if let Err(e) = lock(d).apply(&body) {
                        emit(&json!({"ev": "error", "error": format!("{e:#}")}));
                        return;
                    }
                    None
                }
                None => match <[u8; 8]>::try_from(body.as_slice()) {
                    Ok(stamp) => Some(i64::from_be_bytes(stamp)),
                    Err(_) => {
                        emit(&json!({"ev": "error", "error": "a stamp that is not 8 bytes"}));
                        return;
                    }
                },
            };
            if to_app.send((key, stamp)).is_err() {
                return;
            }
        }
    });
    link.send
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Aligned views leave on multiples of the interval, whatever the instant asked from.
    #[test]
    fn the_grid_is_the_next_multiple_of_the_interval() {
        let every = 200_000_000;
        assert_eq!(until_grid(250_000_000, every), 150_000_000);
        assert_eq!(
            until_grid(400_000_000, every),
            every,
            "from a multiple, the next one"
        );
        assert_eq!(until_grid(399_999_999, every), 1);
        for now in [0, 1, 7, 123_456_789_012, u64::MAX - 5] {
            let until = until_grid(now, every);
            assert!((1..=every).contains(&until));
            assert_eq!((u128::from(now) + u128::from(until)) % u128::from(every), 0);
        }
        assert_eq!(
            until_grid(5, 0),
            1,
            "an interval of zero does not divide by zero"
        );
    }
}
