//! Sealed views: each link's views as UDP datagrams of their own, beside its QUIC connection
//! (the format and keys: `statemesh_net::views`).
//!
//! As a QUIC datagram a view costs an acknowledgement, the connection's loss and congestion
//! state and a turn of the connection's driver on both sides; at 64 windows on one machine,
//! aligned to one heartbeat grid, that was a third of the idle mesh's CPU and what made the
//! writes meeting a heartbeat wait (docs/under-load.md). A sealed view costs a seal and a
//! `sendmsg`.
//!
//! At link up each side opens a route on its [`ViewSocket`] for the views the peer sends,
//! under the key of that direction exported from the link's TLS session, and offers it on the
//! link ([`Message::ViewRoute`]). A side offered a route seals its views to it, and sends them
//! as QUIC datagrams as well until the peer says the sealed ones arrive
//! ([`Message::ViewsHeard`], sent when the first one opens): where the view socket's datagrams
//! are dropped (a firewall opened for the QUIC port alone), views stay on QUIC and nobody is
//! taken for silent. Should sealed views stop arriving later, the peer is judged dead as if
//! silent and, unlike a link whose views still came on QUIC (left to QUIC's idle timeout, the
//! peer may refute over it), its link is closed at once (see `Run::on_peer_down`): the peer
//! redials and the new link starts on QUIC again. Views to a peer whose address changed under
//! the connection (QUIC follows it; the route does not) go as QUIC datagrams.
//!
//! [`ViewSocket`]: statemesh_net::views::ViewSocket
//! [`Message::ViewRoute`]: statemesh_core::codec::Message::ViewRoute
//! [`Message::ViewsHeard`]: statemesh_core::codec::Message::ViewsHeard

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use statemesh_core::PeerId;
use statemesh_core::codec::{self, ViewRoute};
use statemesh_net::views::{self, ViewKey, ViewReceiver, ViewSender};
use tokio::sync::mpsc;

use super::Run;
use super::links::{LinkEvent, ViewFrame};

/// A link's sealed views, as the driver holds them.
#[derive(Default)]
pub(super) struct LinkViews {
    /// The key this side seals with, until the peer offers a route (then its sender's).
    key_out: Option<ViewKey>,
    /// Where this side's views go sealed, once the peer offered a route.
    pub(super) sender: Option<Arc<ViewSender>>,
    /// Whether this side told the peer its sealed views arrive (`ViewsHeard`): from then on
    /// the peer sends them no other way, so should they stop arriving while the connection
    /// lives (the view port blocked later), only a new link would bring its views back.
    pub(super) told_heard: bool,
}

/// Whether a view of `len` bytes goes sealed to `to` (and not on the stream): on loopback up
/// to a UDP datagram's size; across a network no larger than a QUIC datagram of the link
/// (`max_datagram`, asked only then: QUIC's estimate of the path's MTU less its own overhead,
/// larger than a sealed view's), so that no view is cut in IP fragments.
pub(super) fn fits(
    len: usize,
    to: SocketAddr,
    max_datagram: impl FnOnce() -> Option<usize>,
) -> bool {
    let max = if to.ip().is_loopback() {
        Some(views::MAX_DATAGRAM)
    } else {
        max_datagram()
    };
    max.is_some_and(|max| len + views::OVERHEAD <= max)
}

impl Run {
    /// A link to `peer` came up: opens the route the peer's views are to take and offers it.
    pub(super) fn open_view_route(&mut self, peer: PeerId) {
        let (Some(socket), Some(link)) = (self.shared.view_socket(), self.links.get_mut(&peer))
        else {
            return;
        };
        let me = self.shared.me();
        let keys = ViewKey::derive(&link.connection, peer, me)
            .and_then(|key_in| Ok((key_in, ViewKey::derive(&link.connection, me, peer)?)));
        let (key_in, key_out) = match keys {
            Ok(keys) => keys,
            // Its views stay on QUIC.
            Err(e) => return tracing::warn!(%peer, error = %e, "no sealed views on this link"),
        };
        let Ok(port) = socket.local_addr().map(|a| a.port()) else {
            return;
        };
        let route = socket.open_route(peer, link.conn, key_in);
        link.views.key_out = Some(key_out);
        self.shared
            .node_off_worker()
            .offer_view_route(peer, ViewRoute { port, route });
    }

    /// `from` takes this link's views sealed on `route`. Only the first offer on a link is
    /// taken: the key goes with it, and its sender's counter (the nonce) never starts again
    /// under the same key.
    pub(super) fn on_view_route(&mut self, from: PeerId, route: ViewRoute) {
        let (Some(socket), Some(link)) = (self.shared.view_socket(), self.links.get_mut(&from))
        else {
            return;
        };
        let Some(key) = link.views.key_out.take() else {
            tracing::debug!(peer = %from, "a second view route on one link: ignored");
            return;
        };
        let to = SocketAddr::new(link.connection.remote_address().ip(), route.port);
        tracing::debug!(peer = %from, %to, "views go sealed");
        link.views.sender = Some(Arc::new(ViewSender::new(
            socket.clone(),
            to,
            route.route,
            key,
        )));
        self.links_changed = true;
    }

    /// `from` hears this link's sealed views on `route`: they go no other way from now on.
    pub(super) fn on_views_heard(&mut self, from: PeerId, route: u64) {
        if let Some(sender) = self
            .links
            .get(&from)
            .and_then(|l| l.views.sender.as_ref())
            .filter(|s| s.route() == route)
        {
            sender.set_heard();
        }
    }

    /// The first view sealed on `route` by `peer` opened: it is told, if the link is current.
    pub(super) fn on_sealed_views_arrive(&mut self, peer: PeerId, conn: usize, route: u64) {
        if let Some(link) = self.links.get_mut(&peer).filter(|l| l.conn == conn) {
            link.views.told_heard = true;
            self.shared.node_off_worker().views_heard(peer, route);
        }
    }

    /// Closes the routes of links that are gone or replaced.
    pub(super) fn close_stale_view_routes(&self) {
        if let Some(socket) = self.shared.view_socket() {
            socket
                .retain_routes(|peer, link| self.links.get(&peer).is_some_and(|l| l.conn == link));
        }
    }
}

/// At most this many datagrams are read from the view socket per turn of the pulse, so that a
/// flood of them (forged ones are dropped, but each is read) does not hold its beat up.
const READ_PER_TURN: usize = 256;

/// Takes the sealed views on the view socket into `batch` (up to [`READ_PER_TURN`] datagrams),
/// as views that came as QUIC datagrams; the first on a route is reported to the driver. An
/// authenticated peer that seals anything but a view loses its link. An error only if the
/// socket fails.
pub(super) fn take(
    receiver: &ViewReceiver,
    buf: &mut [u8],
    max_frame: usize,
    events: &mpsc::UnboundedSender<LinkEvent>,
    batch: &mut Vec<ViewFrame>,
) -> io::Result<()> {
    for _ in 0..READ_PER_TURN {
        let opened = match receiver.try_recv(buf)? {
            Some(Ok(opened)) => opened,
            // Dropped and counted: nobody to blame for an unauthenticated datagram.
            Some(Err(_)) => continue,
            None => return Ok(()),
        };
        let (peer, conn) = (opened.peer, opened.link);
        if opened.frame.len() > max_frame || !codec::is_view(&opened.frame) {
            let error = format!(
                "a sealed datagram that is not a view ({} bytes)",
                opened.frame.len()
            );
            let _ = events.send(LinkEvent::Closed {
                peer,
                conn,
                error: Some(error),
            });
            continue;
        }
        if opened.first {
            let route = opened.route;
            let _ = events.send(LinkEvent::SealedViewsArrive { peer, conn, route });
        }
        batch.push(ViewFrame::new(peer, conn, bytes::Bytes::from(opened.frame)));
    }
    Ok(())
}
