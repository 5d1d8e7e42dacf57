//! Where peers are: the discoveries' reports (each on a channel of its own, read by the
//! driver's loop), settling (when a new window may count itself a leader candidate), peer
//! exchange (LAN mode), and the "no peer found by mDNS" diagnostic.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::{Duration, Instant};

use statemesh_core::codec::PeerAddress;
use statemesh_core::{LinkDown, PeerId};
use statemesh_net::discovery::{
    Announce, Discovered, Discovery, MeshTags, Running, check_dialable,
};
use statemesh_net::keyring::Keyring;
use statemesh_net::quic;
use tokio::sync::{mpsc, watch};

use super::Run;
use crate::dialer::{Dialer, Settle};
use crate::error::JoinError;

/// After this long in LAN mode without a peer found by mDNS, a window says so (see
/// [`Run::check_discovery`]).
const ALONE_WARNING: Duration = Duration::from_secs(10);

/// The running discoveries, and the receiving end of each one's reports.
pub(super) struct Discoveries {
    /// Dropping them withdraws this peer's announcements and stops their tasks.
    running: Vec<Box<dyn Running>>,
    /// What each reports, by index; `None` once it can report no more.
    reports: Vec<Option<mpsc::UnboundedReceiver<Discovered>>>,
    /// Where [`next`](Self::next) starts looking, so that no discovery's reports starve
    /// another's.
    first: usize,
    /// The mesh's tags, as the discoveries see them (see [`Announce::tags`]).
    tags: watch::Sender<MeshTags>,
    /// Indices of the mDNS discoveries.
    mdns: Vec<usize>,
    /// When they started.
    started: Instant,
    /// Whether the "no peer found by mDNS" warning was logged.
    alone_warned: bool,
}

impl Discoveries {
    /// Starts `list`, announcing peer `me` of mesh `mesh`, listening at `quic`, under the tags
    /// of `ring`; tells the dialler how far each is trusted. Returns them with what settling
    /// waits for.
    pub(super) fn start(
        list: Vec<Box<dyn Discovery>>,
        mesh: &str,
        me: PeerId,
        quic: SocketAddr,
        ring: &Keyring,
        dialer: &mut Dialer,
    ) -> Result<(Self, Settle), JoinError> {
        let (tags, tags_rx) = watch::channel(MeshTags::of(ring, mesh));
        let announce = Announce {
            me,
            quic,
            mesh: mesh.to_owned(),
            tags: tags_rx,
        };
        let mut running = Vec::new();
        let mut reports = Vec::new();
        let mut unsettled = BTreeSet::new();
        let mut all_settle = true;
        let mut mdns = Vec::new();
        for (index, discovery) in list.into_iter().enumerate() {
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
            let (tx, rx) = mpsc::unbounded_channel();
            running.push(discovery.start(&announce, tx)?);
            reports.push(Some(rx));
            tracing::debug!(discovery = name, "discovery started");
        }
        let discoveries = Self {
            running,
            reports,
            first: 0,
            tags,
            mdns,
            started: Instant::now(),
            alone_warned: false,
        };
        Ok((discoveries, Settle::new(unsettled, all_settle)))
    }

    /// Whether there is no discovery at all.
    pub(super) fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// The next report of any discovery, with the discovery's index. Cancel-safe; never
    /// resolves once none can report.
    pub(super) fn next(&mut self) -> impl Future<Output = (usize, Discovered)> + '_ {
        std::future::poll_fn(move |cx| {
            let n = self.reports.len();
            for i in (0..n).map(|k| (self.first + k) % n) {
                let Some(rx) = &mut self.reports[i] else {
                    continue;
                };
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(ev)) => {
                        self.first = (i + 1) % n;
                        return Poll::Ready((i, ev));
                    }
                    Poll::Ready(None) => self.reports[i] = None,
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
    }

    /// The mesh's keys changed: the discoveries announce and accept `tags` from now on.
    pub(super) fn retag(&self, tags: MeshTags) {
        self.tags.send_if_modified(|t| {
            let changed = *t != tags;
            *t = tags;
            changed
        });
    }

    /// Connections the discoveries refused for failing authentication.
    pub(super) fn auth_failures(&self) -> u64 {
        self.running.iter().map(|r| r.auth_failures()).sum()
    }

    /// Stops every discovery: withdraws this peer's announcements (an mDNS goodbye, the local
    /// socket removed).
    pub(super) fn withdraw(&mut self) {
        self.running.clear();
        self.reports.clear();
    }
}

impl Run {
    pub(super) fn on_discovered(&mut self, index: usize, ev: Discovered) {
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
                        .node_off_worker()
                        .handle_link_down(now, peer, LinkDown::Certain);
                    if let Some(link) = self.links.remove(&peer) {
                        self.links_changed = true;
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

    /// Tells the node, once, that this window may count itself a leader candidate.
    pub(super) fn check_settled(&mut self) {
        if self.settle.take_ready() {
            let now = self.shared.now();
            self.shared.node_off_worker().handle_settled(now);
        }
    }

    /// Peer exchange (LAN mode): tells the new link's peer where this window's other peers
    /// are, and the others where the new one is. Only eligible peers are shared: queries and
    /// observers dial the mesh themselves and do not come back at their address.
    pub(super) fn share_addresses(&mut self, new: PeerId) {
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
        let mut node = self.shared.node_off_worker();
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
    pub(super) fn on_peer_addresses(&mut self, from: PeerId, peers: Vec<PeerAddress>) {
        let Some(sharer) = self.links.get(&from).map(|l| l.remote) else {
            return;
        };
        if !self.lan {
            return;
        }
        let now = Instant::now();
        for PeerAddress { peer, mut addr } in peers {
            if peer == self.shared.me() {
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
    pub(super) fn check_discovery(&mut self) {
        let d = &mut self.discoveries;
        if d.mdns.is_empty() {
            return;
        }
        let found: u64 = d
            .mdns
            .iter()
            .filter_map(|i| d.running.get(*i))
            .filter_map(|r| r.report())
            .map(|r| r.peers_found)
            .sum();
        let elapsed = d.started.elapsed();
        let warning = (found == 0 && elapsed >= ALONE_WARNING).then(|| {
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
                elapsed.as_secs()
            )
        });
        if let Some(w) = &warning
            && !d.alone_warned
        {
            d.alone_warned = true;
            tracing::warn!("{w}");
        }
        let mut counts = self.shared.counts();
        counts.mdns_peers_found = Some(found);
        counts.discovery_warning = warning;
    }
}
