//! Peers made by hand (a QUIC endpoint holding the secret, not a window) linked to a real
//! window: what the window does with bad frames and datagrams, and its sealed views as the
//! wire carries them.

mod support;

use statemesh::{Mesh, PeerId, Scope, Secret};
use support::{WITHIN, until};

/// A peer made by hand (an endpoint holding `secret`, not a window): linked to the window at
/// `addr`, its hello sent. The endpoint is returned to be kept alive with the link.
async fn hand_linked(
    secret: &Secret,
    addr: std::net::SocketAddr,
    me: PeerId,
) -> (statemesh_net::quic::Endpoint, statemesh_net::quic::Link) {
    use statemesh_core::codec::{Hello, Message, PROTOCOL_VERSION, encode_frame};
    use statemesh_core::{Incarnation, MeshTag};
    let endpoint =
        statemesh_net::quic::Endpoint::bind(([127, 0, 0, 1], 0).into(), me, secret.clone(), "ws")
            .expect("binds");
    let mut link = endpoint
        .connect(addr)
        .await
        .expect("authenticates: it holds the secret");
    let hello = Hello {
        version: PROTOCOL_VERSION,
        mesh: MeshTag::derive(secret.as_bytes(), "ws"),
        incarnation: Incarnation {
            peer: me,
            number: 0,
        },
        eligible: false,
    };
    link.send
        .write_all(&encode_frame(&Message::Hello(hello), 1 << 20).expect("fits"))
        .await
        .expect("writes");
    (endpoint, link)
}

/// A window without local discovery or persistence, and a peer made by hand (see
/// [`hand_linked`], its id from `seed`) linked to it: the window, the peer's id, its endpoint
/// (kept alive with the link) and the link.
async fn window_with_hand_peer(
    seed: u64,
) -> (
    Mesh,
    PeerId,
    statemesh_net::quic::Endpoint,
    statemesh_net::quic::Link,
) {
    use rand::SeedableRng;
    let secret = Secret::from_bytes([9; 32]);
    let window = Mesh::builder("ws")
        .secret(secret.clone())
        .local_discovery(false)
        .persist(false)
        .join()
        .await
        .expect("joins");
    let me = PeerId::generate(1, &mut rand::rngs::StdRng::seed_from_u64(seed));
    let (endpoint, link) = hand_linked(&secret, window.quic_addr(), me).await;
    (window, me, endpoint, link)
}

/// Whether the window closed `link` within [`WITHIN`]: reading ends (error or end of stream).
async fn closed(link: &mut statemesh_net::quic::Link) -> bool {
    tokio::time::timeout(WITHIN, async {
        let mut buf = [0u8; 4096];
        while let Ok(Some(_)) = link.recv.read(&mut buf).await {}
    })
    .await
    .is_ok()
}

/// An authenticated peer that sends garbage or an oversize frame loses its link; the window
/// keeps running and keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversize_frames_close_only_that_link() {
    use rand::SeedableRng;

    let secret = Secret::from_bytes([9; 32]);
    let a = Mesh::builder("ws")
        .secret(secret.clone())
        .local_discovery(false)
        .persist(false)
        .max_frame(64 * 1024)
        .join()
        .await
        .expect("joins");
    let addr = a.quic_addr();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for bad in [
        vec![0u8, 0, 0, 3, 0xff, 0xff, 0xff],
        u32::MAX.to_be_bytes().to_vec(),
    ] {
        let me = PeerId::generate(1, &mut rng);
        let (_attacker, mut link) = hand_linked(&secret, addr, me).await;
        link.send.write_all(&bad).await.expect("writes");
        assert!(closed(&mut link).await, "link not closed after a bad frame");
    }
    // The window still works and still links with honest peers.
    let b = Mesh::builder("ws")
        .secret(secret)
        .local_discovery(false)
        .persist(false)
        .static_peer(addr)
        .join()
        .await
        .expect("joins");
    a.put("k", "v", &7i64, Scope::Durable).expect("write");
    until(&b, "honest peer syncs", |m| {
        m.get::<i64>("k", "v").ok().flatten() == Some(7)
    })
    .await;
    assert!(a.metrics().decode_errors >= 1);
}

/// A window's heartbeats (views) reach a linked peer as QUIC datagrams, apart from the link's
/// stream; a datagram that is not a view closes the link, and the window keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_travel_as_datagrams_and_other_datagrams_close_the_link() {
    use statemesh_core::Incarnation;
    use statemesh_core::codec::{self, Message, decode_frame, encode_frame};

    let (a, me, _peer, mut link) = window_with_hand_peer(4).await;
    // The window's next heartbeat arrives as a datagram, a whole view frame; nothing is read
    // from the stream meanwhile.
    let datagram = tokio::time::timeout(WITHIN, link.connection.read_datagram())
        .await
        .expect("a view in time")
        .expect("the connection is up");
    assert!(codec::is_view(&datagram), "{datagram:?}");
    match decode_frame(&datagram, 1 << 20).expect("a whole frame") {
        Message::View(view) => assert_eq!(view.beats[0].peer, a.id(), "its own beat first"),
        other => panic!("not a view: {other:?}"),
    }
    // A datagram that is not a view (a leave) is a protocol error: the link closes.
    let leave = encode_frame(
        &Message::Leave(Incarnation {
            peer: me,
            number: 0,
        }),
        1 << 20,
    )
    .expect("fits");
    link.connection
        .send_datagram(leave.into())
        .expect("datagrams are on");
    assert!(
        closed(&mut link).await,
        "link not closed after a datagram that is not a view"
    );
    // The window runs on and keeps writing.
    a.put("k", "v", &1i64, Scope::Durable).expect("write");
    assert_eq!(a.get::<i64>("k", "v").expect("read"), Some(1));
}

/// The next message of the kind `wanted` picks that `link`'s window sends on its stream.
async fn next_message<T>(
    link: &mut statemesh_net::quic::Link,
    decoder: &mut statemesh_core::FrameDecoder,
    mut wanted: impl FnMut(statemesh_core::Message) -> Option<T>,
) -> T {
    let mut buf = vec![0u8; 64 * 1024];
    let read = async {
        loop {
            while let Some(frame) = decoder.next_frame().expect("well framed") {
                let message =
                    statemesh_core::codec::decode_frame(&frame, 1 << 20).expect("decodes");
                if let Some(found) = wanted(message) {
                    return found;
                }
            }
            let n = link
                .recv
                .read(&mut buf)
                .await
                .expect("reads")
                .expect("open");
            decoder.extend(&buf[..n]);
        }
    };
    tokio::time::timeout(WITHIN, read).await.expect("in time")
}

/// A view of `me` alone, at beat `counter`, framed.
fn beat_frame(me: PeerId, counter: u64) -> Vec<u8> {
    use statemesh_core::codec::{Message, View, encode_frame};
    use statemesh_core::liveness::GossipBeat;
    use statemesh_core::vv::Beat;
    let view = Message::View(View {
        beats: vec![GossipBeat {
            peer: me,
            beat: Beat {
                incarnation: 0,
                counter,
            },
            eligible: false,
        }],
        tombs: Vec::new(),
        claims: Vec::new(),
        doc: [0; 8],
        leader: [0; 8],
    });
    encode_frame(&view, 1 << 20).expect("fits")
}

/// This hand-made peer's end of its sealed views: the route the window offers on `link`
/// (awaited), a view socket, and a sender sealing to that route under the key this peer
/// derives for its views to `window`.
async fn sealing_to(
    window: &Mesh,
    me: PeerId,
    link: &mut statemesh_net::quic::Link,
    decoder: &mut statemesh_core::FrameDecoder,
) -> (
    statemesh_core::codec::ViewRoute,
    std::sync::Arc<statemesh_net::views::ViewSocket>,
    statemesh_net::views::ViewSender,
) {
    use statemesh_core::codec::Message;
    use statemesh_net::views::{ViewKey, ViewSender, ViewSocket};
    let theirs = next_message(link, decoder, |m| match m {
        Message::ViewRoute(r) => Some(r),
        _ => None,
    })
    .await;
    let socket = ViewSocket::bind([127, 0, 0, 1].into()).expect("binds");
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], theirs.port));
    let key_out = ViewKey::derive(&link.connection, me, window.id()).expect("exports");
    let sender = ViewSender::new(socket.clone(), to, theirs.route, key_out);
    (theirs, socket, sender)
}

/// The route the window says this peer's sealed views arrive on (its next `ViewsHeard`).
async fn heard(
    link: &mut statemesh_net::quic::Link,
    decoder: &mut statemesh_core::FrameDecoder,
) -> u64 {
    next_message(link, decoder, |m| match m {
        statemesh_core::codec::Message::ViewsHeard(r) => Some(r),
        _ => None,
    })
    .await
}

/// A window offers each linked peer a route for the peer's views sealed beside QUIC, and seals
/// its own to the route the peer offers: as QUIC datagrams too until the peer says the sealed
/// ones arrive, then alone. It takes the peer's sealed views, refuses forged ones, and says
/// when the first arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_go_sealed_beside_quic_once_heard() {
    use statemesh_core::codec::{self, Message, ViewRoute, encode_frame};
    use statemesh_net::views::{ViewKey, ViewSender};

    let (a, me, _peer, mut link) = window_with_hand_peer(5).await;
    let mut decoder = statemesh_core::FrameDecoder::new(1 << 20);

    // This peer's views (its beats, numbered), sealed to the window's route: a forged one
    // first, then its own.
    let (theirs, socket, sender) = sealing_to(&a, me, &mut link, &mut decoder).await;
    let receiver = socket.receiver().expect("a runtime");
    let mut buf = vec![0u8; statemesh_net::views::READ_BUFFER];
    let forger = ViewSender::new(
        socket.clone(),
        sender.to(),
        theirs.route,
        ViewKey::from_secret(&[1; 32]),
    );
    let beat = |counter| beat_frame(me, counter);
    forger.send(&beat(1)).expect("sent");
    sender.send(&beat(1)).expect("sent");
    let said = heard(&mut link, &mut decoder).await;
    assert_eq!(
        said, theirs.route,
        "the window hears this peer's sealed views"
    );
    let m = a.metrics();
    assert!(m.views_sealed_received >= 1, "{m:?}");
    assert!(m.views_sealed_refused >= 1, "the forged one: {m:?}");

    // This peer's route for the window's views.
    let key_in = ViewKey::derive(&link.connection, a.id(), me).expect("exports");
    let route = socket.open_route(a.id(), 0, key_in);
    let port = socket.local_addr().expect("an address").port();
    let offer = encode_frame(&Message::ViewRoute(ViewRoute { port, route }), 1 << 20);
    link.send
        .write_all(&offer.expect("fits"))
        .await
        .expect("writes");
    let opened = tokio::time::timeout(WITHIN, receiver.recv(&mut buf))
        .await
        .expect("a sealed view in time")
        .expect("opens");
    assert!(opened.first);
    match codec::decode_frame(&opened.frame, 1 << 20).expect("a frame") {
        Message::View(view) => assert_eq!(view.beats[0].peer, a.id(), "its own beat first"),
        other => panic!("not a view: {other:?}"),
    }
    let datagram = tokio::time::timeout(WITHIN, link.connection.read_datagram())
        .await
        .expect("in time")
        .expect("the connection is up");
    assert!(codec::is_view(&datagram), "not heard yet: on QUIC too");

    // Heard: then five sealed views in a row with no QUIC datagram between them (this peer
    // beating meanwhile, so that it is not judged silent).
    let heard = encode_frame(&Message::ViewsHeard(route), 1 << 20).expect("fits");
    link.send.write_all(&heard).await.expect("writes");
    let alone = async {
        let (mut streak, mut counter) = (0, 1);
        while streak < 5 {
            tokio::select! {
                v = receiver.recv(&mut buf) => {
                    v.expect("opens");
                    streak += 1;
                    counter += 1;
                    sender.send(&beat(counter)).expect("sent");
                }
                d = link.connection.read_datagram() => {
                    d.expect("the connection is up");
                    streak = 0;
                }
            }
        }
    };
    tokio::time::timeout(WITHIN, alone)
        .await
        .expect("views sealed alone once heard");
    assert!(a.metrics().views_sealed_sent >= 6);

    // A second offer on the link is ignored: the window's sender keeps its route and its
    // counter (a new sender under the link's one key would repeat nonces).
    let key_again = ViewKey::derive(&link.connection, a.id(), me).expect("exports");
    let second = socket.open_route(a.id(), 1, key_again);
    let offer = encode_frame(
        &Message::ViewRoute(ViewRoute {
            port,
            route: second,
        }),
        1 << 20,
    );
    link.send
        .write_all(&offer.expect("fits"))
        .await
        .expect("writes");
    for _ in 0..3 {
        let opened = tokio::time::timeout(WITHIN, receiver.recv(&mut buf))
            .await
            .expect("a sealed view in time")
            .expect("opens");
        assert_eq!(
            (opened.route, opened.first),
            (route, false),
            "still the first route"
        );
    }
}

/// A peer told that its sealed views arrive sends them no other way. Should they stop coming
/// while its QUIC connection lives (the view port blocked later on), the window judges it
/// silent and closes the link at once, so that the peer's next link starts on QUIC again; a
/// link left to QUIC's idle timeout would live on its keep-alives, and a refutation sealed to
/// it would never be heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_heard_sealed_views_stop_loses_its_link() {
    let (a, me, _peer, mut link) = window_with_hand_peer(6).await;
    let mut decoder = statemesh_core::FrameDecoder::new(1 << 20);
    let (theirs, _socket, sender) = sealing_to(&a, me, &mut link, &mut decoder).await;
    sender.send(&beat_frame(me, 1)).expect("sent");
    let said = heard(&mut link, &mut decoder).await;
    assert_eq!(said, theirs.route, "told: its sealed views arrive");

    // Its views stop; its QUIC connection answers on (quinn's keep-alives). The window
    // judges it silent after the suspect timeout and closes the link.
    assert!(
        closed(&mut link).await,
        "the link of a peer whose heard sealed views stopped is closed"
    );
    assert!(
        !a.members().iter().any(|m| m.peer == me && m.live),
        "judged dead"
    );
}
