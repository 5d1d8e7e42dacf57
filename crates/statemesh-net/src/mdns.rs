//! mDNS discovery on the LAN (LAN mode only), with mdns-sd.
//!
//! Each peer registers one instance of [`SERVICE`], named by its peer id, whose TXT record
//! carries exactly four short values:
//!
//! | key | value |
//! |---|---|
//! | `v` | protocol version ([`PROTOCOL_VERSION`]) |
//! | `id` | the peer id (a UUID) |
//! | `port` | the QUIC port (also in the SRV record) |
//! | `tag` | 32 hex digits: HMAC-SHA-256 of the mesh name under the primary key, truncated |
//!
//! The mesh name is never announced and the tag cannot be reversed to it, nor computed without
//! the secret. Instances with another tag (other meshes, or ours under another secret), another
//! version, malformed or oversized values are ignored without connecting. Loopback and IPv6 are
//! not used (QUIC listens on IPv4 in LAN mode). Dropping the running discovery withdraws the
//! record (an mDNS goodbye) and stops the daemon thread.
//!
//! With a keyring (see [`crate::keyring`]) a window announces the tag of its primary key, and
//! re-announces when its primary key changes; it accepts announcements under the tag of any key
//! it holds. The discovery sees those tags ([`Announce::tags`]), never the keys. Mid-rotation, windows that already prove with the new key and those that still
//! prove with the old one find each other, since each holds both; once the old key is removed,
//! an announcement under it is ignored like another mesh's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use statemesh_core::{MeshTag, PeerId};
use tokio::sync::mpsc;

use crate::discovery::{
    Announce, Discovered, Discovery, DiscoveryError, DiscoveryReport, Running, check_dialable,
};

/// The DNS-SD service type.
pub const SERVICE: &str = "_statemesh._udp.local.";

/// The version announced in TXT `v`: the core's wire protocol version
/// (`statemesh_core::codec::PROTOCOL_VERSION`), which names the document layout too.
pub const PROTOCOL_VERSION: &str = "4";

/// Longest TXT value accepted from others (ours are at most 36 bytes).
pub const MAX_TXT_VALUE: usize = 64;

/// Most TXT properties accepted on one instance.
pub const MAX_TXT_PROPERTIES: usize = 16;

/// How long shutdown waits for the goodbye to be sent.
const GOODBYE_WAIT: Duration = Duration::from_millis(250);

/// mDNS discovery (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct MdnsDiscovery {
    _private: (),
}

impl MdnsDiscovery {
    /// mDNS discovery on every non-loopback IPv4 interface.
    pub fn new() -> Self {
        Self::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a resolved instance says, once checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Instance {
    /// The peer.
    pub peer: PeerId,
    /// Its QUIC port.
    pub port: u16,
}

/// Why an instance is ignored.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ignored {
    /// Too many properties, or a value too long.
    #[error("TXT record over its bounds")]
    Oversize,
    /// A required value is missing or malformed.
    #[error("TXT `{0}` missing or malformed")]
    Malformed(&'static str),
    /// Another protocol version.
    #[error("protocol version {0:?}")]
    Version(String),
    /// Another mesh (or the same name under another secret).
    #[error("another mesh")]
    OtherMesh,
}

/// Checks an instance's TXT properties (`(key, value)` pairs) against our mesh's `tags` (one
/// per accepted key).
pub fn check_instance<'a>(
    props: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    srv_port: u16,
    tags: &[MeshTag],
) -> Result<Instance, Ignored> {
    let mut found: BTreeMap<&str, &str> = BTreeMap::new();
    for (n, (key, value)) in props.into_iter().enumerate() {
        if n >= MAX_TXT_PROPERTIES || value.len() > MAX_TXT_VALUE {
            return Err(Ignored::Oversize);
        }
        if let Ok(v) = std::str::from_utf8(value) {
            found.insert(key, v);
        }
    }
    let version = found.get("v").ok_or(Ignored::Malformed("v"))?;
    if *version != PROTOCOL_VERSION {
        return Err(Ignored::Version((*version).to_owned()));
    }
    let theirs = found.get("tag").copied().unwrap_or_default();
    if !tags.iter().any(|t| hex(&t.0) == theirs) {
        return Err(Ignored::OtherMesh);
    }
    let peer = found
        .get("id")
        .and_then(|s| statemesh_core::id::Uuid::parse_str(s).ok())
        .and_then(|u| PeerId::from_uuid(u).ok())
        .ok_or(Ignored::Malformed("id"))?;
    let port: u16 = found
        .get("port")
        .and_then(|s| s.parse().ok())
        .filter(|p| *p != 0 && *p == srv_port)
        .ok_or(Ignored::Malformed("port"))?;
    Ok(Instance { peer, port })
}

struct MdnsRunning {
    daemon: ServiceDaemon,
    fullname: String,
    counts: Arc<Counts>,
    /// Re-announces under a new primary key.
    reannounce: Option<tokio::task::JoinHandle<()>>,
}

/// What the browsing thread has seen, for [`Running::report`].
#[derive(Debug, Default)]
struct Counts {
    /// Peers of this mesh seen (each once).
    peers: Mutex<BTreeSet<PeerId>>,
    /// Instances or addresses refused.
    refused: AtomicU64,
}

/// Most distinct peers remembered for the count in [`Running::report`] (a forger can announce
/// any number; the count only needs to tell "none" from "some").
const COUNTED_PEERS: usize = 4096;

impl std::fmt::Debug for MdnsRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdnsRunning")
            .field("fullname", &self.fullname)
            .finish_non_exhaustive()
    }
}

impl Running for MdnsRunning {
    fn report(&self) -> Option<DiscoveryReport> {
        let peers = self
            .counts
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len() as u64;
        Some(DiscoveryReport {
            peers_found: peers,
            refused: self.counts.refused.load(Ordering::Relaxed),
        })
    }
}

impl Drop for MdnsRunning {
    fn drop(&mut self) {
        if let Some(t) = self.reannounce.take() {
            t.abort();
        }
        let _ = self.daemon.stop_browse(SERVICE);
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            // The daemon sends the goodbye before answering; wait briefly so that a process
            // exiting right after does not cut it off.
            let _ = done.recv_timeout(GOODBYE_WAIT);
        }
        let _ = self.daemon.shutdown();
    }
}

impl Discovery for MdnsDiscovery {
    fn name(&self) -> &'static str {
        "mdns"
    }

    /// mDNS answers arrive over a few hundred milliseconds and their end cannot be known: a
    /// window waits its join grace.
    fn settles(&self) -> bool {
        false
    }

    fn start(
        self: Box<Self>,
        me: &Announce,
        events: mpsc::UnboundedSender<Discovered>,
    ) -> Result<Box<dyn Running>, DiscoveryError> {
        let err = |e: mdns_sd::Error| DiscoveryError::Mdns(e.to_string());
        let instance = me.me.as_uuid().simple().to_string();
        let port = me.quic.port();
        let my_id = me.me.to_string();
        let info_for = move |tag: MeshTag| -> Result<ServiceInfo, mdns_sd::Error> {
            let props = [
                ("v", PROTOCOL_VERSION.to_owned()),
                ("id", my_id.clone()),
                ("port", port.to_string()),
                ("tag", hex(&tag.0)),
            ];
            let mut info = ServiceInfo::new(
                SERVICE,
                &instance,
                &format!("{instance}.local."),
                (),
                port,
                &props[..],
            )?
            .enable_addr_auto();
            // Instance names are unique peer ids: no need to probe for conflicts first.
            info.set_requires_probe(false);
            Ok(info)
        };
        let mut tags_rx = me.tags.clone();
        let mut announced = tags_rx.borrow_and_update().primary;
        let info = info_for(announced).map_err(err)?;
        let fullname = info.get_fullname().to_owned();
        let daemon = ServiceDaemon::new().map_err(err)?;
        let counts = Arc::new(Counts::default());
        let re_daemon = daemon.clone();
        // Owned by the running discovery, aborted when it is dropped.
        let reannounce = tokio::spawn(async move {
            while tags_rx.changed().await.is_ok() {
                let primary = tags_rx.borrow_and_update().primary;
                if primary == announced {
                    continue;
                }
                announced = primary;
                match info_for(primary).map(|i| re_daemon.register(i)) {
                    Ok(Ok(())) => {
                        tracing::info!(tag = ?announced, "mDNS: announcing under the new primary key")
                    }
                    Ok(Err(e)) | Err(e) => {
                        tracing::warn!(error = %e, "mDNS: could not re-announce under the new primary key")
                    }
                }
            }
        });
        let running = MdnsRunning {
            daemon: daemon.clone(),
            fullname,
            counts: counts.clone(),
            reannounce: Some(reannounce),
        };
        daemon
            .disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6, IfKind::IPv6])
            .map_err(err)?;
        daemon.register(info).map_err(err)?;
        let tags = me.tags.clone();
        let browse = daemon.browse(SERVICE).map_err(err)?;
        let myself = me.me;
        // mdns-sd has its own thread; this one turns its events into ours and ends when the
        // daemon shuts down.
        std::thread::Builder::new()
            .name("statemesh-mdns".into())
            .spawn(move || {
                let mut names: BTreeMap<String, PeerId> = BTreeMap::new();
                while let Ok(event) = browse.recv() {
                    match event {
                        ServiceEvent::ServiceResolved(svc) => {
                            let props = svc
                                .get_properties()
                                .iter()
                                .map(|p| (p.key(), p.val().unwrap_or_default()));
                            let accepted = tags.borrow().accepted.clone();
                            match check_instance(props, svc.get_port(), &accepted) {
                                Ok(inst) if inst.peer == myself => {}
                                Ok(inst) => {
                                    names.insert(svc.get_fullname().to_owned(), inst.peer);
                                    let mut any = false;
                                    for ip in svc.get_addresses_v4() {
                                        let addr = SocketAddr::from((ip, inst.port));
                                        // Peers of this machine are found through local
                                        // sockets; a record naming loopback, a broadcast or
                                        // multicast address names no peer to dial.
                                        let refused = if ip.is_loopback() {
                                            Some("loopback address".to_owned())
                                        } else {
                                            check_dialable(addr).err().map(|e| e.to_string())
                                        };
                                        if let Some(why) = refused {
                                            counts.refused.fetch_add(1, Ordering::Relaxed);
                                            tracing::debug!(%addr, %why, "mDNS address ignored");
                                            continue;
                                        }
                                        any = true;
                                        let _ = events.send(Discovered::Found {
                                            peer: Some(inst.peer),
                                            addr,
                                        });
                                    }
                                    if any {
                                        let mut peers = counts
                                            .peers
                                            .lock()
                                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                                        if peers.len() < COUNTED_PEERS {
                                            peers.insert(inst.peer);
                                        }
                                    }
                                }
                                Err(why) => {
                                    counts.refused.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(
                                        instance = svc.get_fullname(),
                                        %why,
                                        "mDNS instance ignored"
                                    )
                                }
                            }
                        }
                        ServiceEvent::ServiceRemoved(_, fullname) => {
                            if let Some(peer) = names.remove(&fullname) {
                                let _ = events.send(Discovered::Gone {
                                    peer,
                                    certain: false,
                                });
                            }
                        }
                        _ => {}
                    }
                }
            })
            .map_err(|e| DiscoveryError::Mdns(e.to_string()))?;
        Ok(Box::new(running))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announced_version_is_the_wire_protocols() {
        assert_eq!(
            PROTOCOL_VERSION,
            statemesh_core::codec::PROTOCOL_VERSION.to_string()
        );
    }

    fn tag() -> MeshTag {
        MeshTag::derive(&[7; 32], "mesh")
    }

    fn props(id: &str, port: &str, t: &str) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("v", PROTOCOL_VERSION.as_bytes().to_vec()),
            ("id", id.as_bytes().to_vec()),
            ("port", port.as_bytes().to_vec()),
            ("tag", t.as_bytes().to_vec()),
        ]
    }

    fn check(p: &[(&'static str, Vec<u8>)], srv: u16) -> Result<Instance, Ignored> {
        check_instance(p.iter().map(|(k, v)| (*k, v.as_slice())), srv, &[tag()])
    }

    const ID: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

    #[test]
    fn accepts_our_mesh_only() {
        let good = props(ID, "4000", &hex(&tag().0));
        let inst = check(&good, 4000).expect("accepted");
        assert_eq!(inst.port, 4000);
        assert_eq!(inst.peer.to_string(), ID);
        let other = hex(&MeshTag::derive(&[8; 32], "mesh").0);
        assert_eq!(
            check(&props(ID, "4000", &other), 4000),
            Err(Ignored::OtherMesh)
        );
        // Any accepted key's tag is ours.
        let p = props(ID, "4000", &other);
        let tags = [tag(), MeshTag::derive(&[8; 32], "mesh")];
        assert!(check_instance(p.iter().map(|(k, v)| (*k, v.as_slice())), 4000, &tags).is_ok());
    }

    #[test]
    fn refuses_malformed_and_oversize() {
        let t = hex(&tag().0);
        assert_eq!(
            check(&props("nope", "4000", &t), 4000),
            Err(Ignored::Malformed("id"))
        );
        assert_eq!(
            check(&props(ID, "4001", &t), 4000),
            Err(Ignored::Malformed("port"))
        );
        assert_eq!(
            check(&props(ID, "0", &t), 0),
            Err(Ignored::Malformed("port"))
        );
        let mut long = props(ID, "4000", &t);
        long.push(("x", vec![b'a'; MAX_TXT_VALUE + 1]));
        assert_eq!(check(&long, 4000), Err(Ignored::Oversize));
        let many: Vec<(&'static str, Vec<u8>)> = (0..=MAX_TXT_PROPERTIES)
            .map(|_| ("k", b"v".to_vec()))
            .collect();
        assert_eq!(check(&many, 4000), Err(Ignored::Oversize));
        let mut v2 = props(ID, "4000", &t);
        v2[0].1 = b"1".to_vec();
        assert_eq!(check(&v2, 4000), Err(Ignored::Version("1".into())));
    }
}
