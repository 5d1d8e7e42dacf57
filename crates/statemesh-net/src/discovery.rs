//! Discovery: how a peer learns where the other peers of its mesh are.
//!
//! A [`Discovery`] announces this peer and reports the peers it finds as [`Discovered`] events,
//! on a channel of its own that the mesh runtime's driver reads. The runtime starts one or more
//! of them and dials what they report; discovery never carries state, and everything it reports
//! is checked again by the QUIC handshake, so a lying discovery can waste dial attempts but never
//! inject a peer.
//!
//! A discovery is not handed the mesh secret: what it announces and accepts is the mesh's
//! [`MeshTags`] (derived from the secret and the mesh name, revealing neither), in
//! [`Announce`]. One that must prove the secret itself (local presence) is given the keyring
//! when it is made.
//!
//! Implementations:
//! - [`crate::local::LocalDiscovery`]: local sockets in a per-user runtime directory (peers of
//!   this machine; see [`crate::local`]); its presence connections also make a crash a
//!   certain, immediate death signal;
//! - [`crate::mdns::MdnsDiscovery`]: mDNS on the LAN (LAN mode only);
//! - [`StaticPeers`]: fixed addresses, for networks where multicast is blocked;
//! - [`MemoryDiscovery`]: an in-process registry, for tests and for several meshes in one
//!   process.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use statemesh_core::{MeshTag, PeerId};
use tokio::sync::{mpsc, watch};

use crate::keyring::Keyring;
#[cfg(unix)]
use crate::local::LocalError;

/// Why an address offered by discovery (or shared by a peer) is never dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unroutable {
    /// `0.0.0.0`, `::` or port 0.
    #[error("unspecified address or port")]
    Unspecified,
    /// A multicast group.
    #[error("multicast address")]
    Multicast,
    /// The limited broadcast address or a broadcast address of one of this machine's subnets.
    #[error("broadcast address")]
    Broadcast,
    /// `0.0.0.0/8` or `240.0.0.0/4`: reserved, never a host.
    #[error("reserved address")]
    Reserved,
}

/// Checks that `addr` can name one peer: not unspecified, multicast, broadcast (the limited
/// broadcast address, or the broadcast address of a subnet of this machine's interfaces) or
/// reserved. Discovery refuses such addresses before they reach the dialler: a record naming a
/// subnet's broadcast address would otherwise make every window send its QUIC Initials to the
/// whole subnet.
pub fn check_dialable(addr: SocketAddr) -> Result<(), Unroutable> {
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(Unroutable::Unspecified);
    }
    match addr.ip() {
        IpAddr::V4(ip) => {
            if ip.is_multicast() {
                return Err(Unroutable::Multicast);
            }
            if ip.is_broadcast() {
                return Err(Unroutable::Broadcast);
            }
            if ip.octets()[0] == 0 || ip.octets()[0] >= 240 {
                return Err(Unroutable::Reserved);
            }
            if is_subnet_broadcast(ip) {
                return Err(Unroutable::Broadcast);
            }
        }
        IpAddr::V6(ip) => {
            if ip.is_multicast() {
                return Err(Unroutable::Multicast);
            }
            if let Some(v4) = ip.to_ipv4_mapped() {
                return check_dialable(SocketAddr::new(IpAddr::V4(v4), addr.port()));
            }
        }
    }
    Ok(())
}

/// Whether `ip` is the broadcast address of a subnet of one of this machine's interfaces
/// (point-to-point /31 and /32 subnets have none).
fn is_subnet_broadcast(ip: Ipv4Addr) -> bool {
    let Ok(interfaces) = if_addrs::get_if_addrs() else {
        return false;
    };
    interfaces.iter().any(|i| match &i.addr {
        if_addrs::IfAddr::V4(v4) if v4.prefixlen < 31 => {
            let mask = u32::from(v4.netmask);
            (u32::from(v4.ip) & mask) | !mask == u32::from(ip)
        }
        _ => false,
    })
}

/// What a discovery reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovered {
    /// A peer can be reached at `addr`. `peer` is `None` when only the address is known (static
    /// peers); the handshake tells who answers.
    Found {
        /// The peer, when known.
        peer: Option<PeerId>,
        /// Its QUIC address.
        addr: SocketAddr,
    },
    /// A peer's announcement ended. `certain`: the peer is dead or left (a local socket's EOF);
    /// otherwise only its announcement is gone (an mDNS goodbye or expiry), and liveness decides.
    Gone {
        /// The peer.
        peer: PeerId,
        /// Whether this proves the peer is gone.
        certain: bool,
    },
    /// The discovery's first look is complete: every peer it could find has been reported.
    Settled,
}

/// What this peer announces.
#[derive(Clone, Debug)]
pub struct Announce {
    /// This peer.
    pub me: PeerId,
    /// Where its QUIC endpoint listens (may be an unspecified address such as `0.0.0.0:p`).
    pub quic: SocketAddr,
    /// The mesh name.
    pub mesh: String,
    /// The mesh's tags now, and their changes (the mesh's keys changed): what to announce and
    /// which announcements are of this mesh. Never the secret itself.
    pub tags: watch::Receiver<MeshTags>,
}

/// The tags of a mesh under its keys (see [`MeshTag`]): a peer announces the primary one and
/// accepts announcements under any. They tell this mesh's announcements from others' without
/// revealing its name or secret, and cannot prove anything (the handshake does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshTags {
    /// The tag under the key this peer proves with: the one to announce.
    pub primary: MeshTag,
    /// The tags under every key this peer accepts, the primary's first.
    pub accepted: Vec<MeshTag>,
}

impl MeshTags {
    /// The tags of mesh `mesh` under `ring`.
    pub fn of(ring: &Keyring, mesh: &str) -> Self {
        Self {
            primary: ring.primary_tag(mesh),
            accepted: ring.accepted_tags(mesh),
        }
    }
}

/// What a running discovery can tell about itself, for diagnostics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryReport {
    /// Other peers of this mesh it has found so far (each counted once).
    pub peers_found: u64,
    /// Announcements it refused (another mesh's, malformed, or naming unroutable addresses).
    pub refused: u64,
}

impl Announce {
    /// The QUIC address as seen from this machine: an unspecified address becomes loopback.
    pub fn quic_on_this_machine(&self) -> SocketAddr {
        let ip = match self.quic.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.quic.port())
    }
}

/// A discovery could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// Local-socket discovery failed.
    #[cfg(unix)]
    #[error(transparent)]
    Local(#[from] LocalError),
    /// mDNS failed.
    #[error("mDNS: {0}")]
    Mdns(String),
}

/// A running discovery. Dropping it withdraws this peer's announcement and stops reporting.
pub trait Running: Send + fmt::Debug {
    /// Connections this discovery refused for failing authentication.
    fn auth_failures(&self) -> u64 {
        0
    }

    /// What it has found so far, for discoveries that can tell (mDNS); `None` otherwise.
    fn report(&self) -> Option<DiscoveryReport> {
        None
    }
}

/// How far a discovery's reports can be trusted, which decides how the runtime dials them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provenance {
    /// Its peers proved the mesh secret before being reported (local sockets) or live in this
    /// process (the in-memory registry): dialled at once.
    Proven,
    /// Anyone may announce anything (mDNS): in LAN mode every address is probed from a socket
    /// that carries no link before a link is dialled, within bounds, and forgotten if it never
    /// answers.
    Unproven,
    /// Addresses the user gave: dialled by either side whatever the ids, for ever (probed first
    /// in LAN mode).
    Static,
}

/// A way to find peers.
pub trait Discovery: Send + fmt::Debug {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// How far its reports are trusted ([`Provenance::Unproven`] unless it knows better).
    fn provenance(&self) -> Provenance {
        Provenance::Unproven
    }

    /// Whether this discovery reports [`Discovered::Settled`]. A mesh whose discoveries all
    /// settle may lead as soon as they have; otherwise it waits its join grace first.
    fn settles(&self) -> bool;

    /// Announces `me` and starts reporting peers on `events`, a channel of this discovery's own
    /// (events need not say where they come from); tasks and threads it starts must end when
    /// the returned [`Running`] is dropped. Must be called inside a tokio runtime.
    fn start(
        self: Box<Self>,
        me: &Announce,
        events: mpsc::UnboundedSender<Discovered>,
    ) -> Result<Box<dyn Running>, DiscoveryError>;
}

/// Fixed peer addresses (`--peer host:port`), for networks where multicast is blocked. They are
/// dialled until they answer, and again whenever the link drops.
#[derive(Debug, Clone, Default)]
pub struct StaticPeers {
    addrs: Vec<SocketAddr>,
}

impl StaticPeers {
    /// Static peers at `addrs`.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            addrs: addrs.into_iter().collect(),
        }
    }
}

#[derive(Debug)]
struct Nothing;

impl Running for Nothing {}

impl Discovery for StaticPeers {
    fn name(&self) -> &'static str {
        "static"
    }

    fn provenance(&self) -> Provenance {
        Provenance::Static
    }

    /// Static peers may be down: a window does not wait for them, but it does wait its join
    /// grace, so that a lower peer that answers quickly is not overtaken.
    fn settles(&self) -> bool {
        false
    }

    fn start(
        self: Box<Self>,
        _me: &Announce,
        events: mpsc::UnboundedSender<Discovered>,
    ) -> Result<Box<dyn Running>, DiscoveryError> {
        for addr in self.addrs {
            if let Err(why) = check_dialable(addr) {
                tracing::warn!(%addr, %why, "static peer ignored");
                continue;
            }
            let _ = events.send(Discovered::Found { peer: None, addr });
        }
        Ok(Box::new(Nothing))
    }
}

/// An in-process registry of peers: every [`MemoryDiscovery`] made from one registry finds
/// the others. Dropping a running one reports it gone (certainly), like a local socket's EOF.
#[derive(Debug, Clone, Default)]
pub struct MemoryRegistry {
    inner: Arc<Mutex<BTreeMap<PeerId, Entry>>>,
}

#[derive(Debug)]
struct Entry {
    addr: SocketAddr,
    tag: MeshTag,
    events: mpsc::UnboundedSender<Discovered>,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A discovery through this registry.
    pub fn discovery(&self) -> MemoryDiscovery {
        MemoryDiscovery {
            registry: self.clone(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<PeerId, Entry>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Discovery through a [`MemoryRegistry`].
#[derive(Debug, Clone)]
pub struct MemoryDiscovery {
    registry: MemoryRegistry,
}

#[derive(Debug)]
struct MemoryRunning {
    registry: MemoryRegistry,
    me: PeerId,
}

impl Running for MemoryRunning {}

impl Drop for MemoryRunning {
    fn drop(&mut self) {
        let mut entries = self.registry.entries();
        if let Some(mine) = entries.remove(&self.me) {
            for other in entries.values().filter(|e| e.tag == mine.tag) {
                let _ = other.events.send(Discovered::Gone {
                    peer: self.me,
                    certain: true,
                });
            }
        }
    }
}

impl Discovery for MemoryDiscovery {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn provenance(&self) -> Provenance {
        Provenance::Proven
    }

    fn settles(&self) -> bool {
        true
    }

    fn start(
        self: Box<Self>,
        me: &Announce,
        events: mpsc::UnboundedSender<Discovered>,
    ) -> Result<Box<dyn Running>, DiscoveryError> {
        // Meshes are kept apart by name and secret, as mDNS does with its tag.
        let tag = me.tags.borrow().primary;
        let addr = me.quic_on_this_machine();
        let mut entries = self.registry.entries();
        for (peer, other) in entries.iter().filter(|(_, e)| e.tag == tag) {
            let _ = events.send(Discovered::Found {
                peer: Some(*peer),
                addr: other.addr,
            });
            let _ = other.events.send(Discovered::Found {
                peer: Some(me.me),
                addr,
            });
        }
        let _ = events.send(Discovered::Settled);
        entries.insert(me.me, Entry { addr, tag, events });
        drop(entries);
        Ok(Box::new(MemoryRunning {
            registry: self.registry,
            me: me.me,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> Result<(), Unroutable> {
        check_dialable(s.parse().expect("an address"))
    }

    #[test]
    fn refuses_addresses_that_name_no_single_host() {
        assert_eq!(check("0.0.0.0:4000"), Err(Unroutable::Unspecified));
        assert_eq!(check("10.0.0.1:0"), Err(Unroutable::Unspecified));
        assert_eq!(check("[::]:4000"), Err(Unroutable::Unspecified));
        assert_eq!(check("224.0.0.251:5353"), Err(Unroutable::Multicast));
        assert_eq!(check("[ff02::fb]:5353"), Err(Unroutable::Multicast));
        assert_eq!(check("255.255.255.255:4000"), Err(Unroutable::Broadcast));
        assert_eq!(
            check("[::ffff:255.255.255.255]:4000"),
            Err(Unroutable::Broadcast)
        );
        assert_eq!(check("0.1.2.3:4000"), Err(Unroutable::Reserved));
        assert_eq!(check("240.0.0.1:4000"), Err(Unroutable::Reserved));
        assert_eq!(check("127.0.0.1:4000"), Ok(()));
        assert_eq!(check("192.0.2.7:4000"), Ok(()));
    }

    #[test]
    fn refuses_the_broadcast_address_of_this_machines_subnets() {
        let interfaces = if_addrs::get_if_addrs().expect("interfaces");
        let mut checked = 0;
        for i in interfaces {
            if let if_addrs::IfAddr::V4(v4) = i.addr
                && v4.prefixlen < 31
            {
                let mask = u32::from(v4.netmask);
                let broadcast = Ipv4Addr::from((u32::from(v4.ip) & mask) | !mask);
                let addr = SocketAddr::from((broadcast, 4000));
                assert_eq!(check_dialable(addr), Err(Unroutable::Broadcast), "{addr}");
                assert_eq!(check_dialable(SocketAddr::from((v4.ip, 4000))), Ok(()));
                checked += 1;
            }
        }
        // Loopback (127.0.0.0/8) is on every machine.
        assert!(checked > 0, "no IPv4 subnet found to check");
    }
}
