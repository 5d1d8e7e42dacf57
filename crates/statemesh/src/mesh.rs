//! The public API a window embeds.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autosurgeon::{Hydrate, Reconcile};
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use statemesh_core::{
    Config, EntryChange, Explanation, Node, PeerId, ReadError, Scope, Stats, Term, Time,
    WriteError, WriteId, Written,
};
use statemesh_net::discovery::Discovery;
use statemesh_net::keyring::{KeyId, Keyring, SharedKeyring};
use statemesh_net::secret::{Secret, SecretError};
use tokio::sync::{Notify, broadcast, watch};

use crate::driver::{self, Acks};
use crate::metrics::{DriverCounts, Metrics};
use crate::store::{LoadSummary, Store, StoreError};

/// Who leads, as this window sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LeadershipInfo {
    /// The leader, if any.
    pub leader: Option<PeerId>,
    /// The number of its term, once known. A term is the pair (number, leader): two leaders
    /// may have held the same number (they claimed at the same moment, or on two sides of a
    /// partition), never the same term. See [`Term`].
    pub term: Option<u64>,
    /// Whether this window leads.
    pub is_me: bool,
}

impl LeadershipInfo {
    /// The leader's term, once known.
    pub fn term_id(&self) -> Option<Term> {
        Some(Term::new(self.term?, self.leader?))
    }
}

/// One member of the mesh, as this window sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub peer: PeerId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Whether it is live.
    pub live: bool,
    /// Whether it may lead.
    pub eligible: bool,
    /// Time since fresh news of it, on this machine's clock.
    pub silent_for: Duration,
}

/// Something a mesh operation could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The secret (keyring) file could not be read or created, or a keyring change was
    /// refused.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Persistence failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A QUIC endpoint could not be set up.
    #[error(transparent)]
    Link(#[from] statemesh_net::quic::LinkError),
    /// A discovery (local sockets, mDNS) could not start.
    #[error(transparent)]
    Discovery(#[from] statemesh_net::discovery::DiscoveryError),
    /// A write was refused.
    #[error(transparent)]
    Write(Box<WriteError>),
    /// A read failed.
    #[error(transparent)]
    Read(Box<ReadError>),
    /// No directory for state could be found (no `$HOME`).
    #[error("no per-user state directory (is $HOME set?)")]
    NoStateDir,
    /// The mesh was shut down.
    #[error("the mesh is shut down")]
    Closed,
    /// The mesh's own runtime could not be started (blocking use).
    #[error("runtime: {0}")]
    Runtime(String),
    /// A wait ended before it was satisfied.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// An acknowledgement that will never come (the write itself was applied).
    #[error(transparent)]
    Ack(#[from] AckError),
    /// A tunable is out of range (a zero or day-long timer, a suspect timeout not longer than
    /// the heartbeat interval, a frame limit under 4 KiB).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// Why a write's acknowledgement ([`Pending::durable`], [`Pending::replicated`]) will never
/// come. The write itself was applied to this window's document and still spreads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// Persistence is off ([`MeshBuilder::persist`]`(false)`): no write is ever on disk.
    #[error("persistence is off: no write is ever durable")]
    PersistenceOff,
    /// Writing state to disk failed: this write is not on disk, and no later one will be
    /// reported durable (the store stops at its first failure; see `Metrics::persist_errors`).
    #[error("the store failed, so the write is not durable: {0}")]
    StoreFailed(String),
    /// The write is no longer watched for replication: it is older than 600 s, or 4,096 newer
    /// writes are watched (`statemesh_core::node::PENDING_TTL`, `MAX_PENDING_WRITES`).
    #[error(
        "the write is no longer watched for replication (older than 600 s, or 4,096 newer writes)"
    )]
    Untracked,
}

impl From<WriteError> for MeshError {
    fn from(e: WriteError) -> Self {
        Self::Write(Box::new(e))
    }
}

impl From<ReadError> for MeshError {
    fn from(e: ReadError) -> Self {
        Self::Read(Box::new(e))
    }
}

/// Builds a [`Mesh`]. Every knob has a default: local to this machine, secret from the
/// per-user config directory, state in the per-user state directory.
///
/// | knob | default |
/// |---|---|
/// | [`secret_file`](Self::secret_file) | `<config dir>/statemesh/secret`, created 0600 on first use (a keyring file, watched for changes) |
/// | [`runtime_dir`](Self::runtime_dir) | `$XDG_RUNTIME_DIR/statemesh`, else `/tmp/statemesh-<uid>` |
/// | [`state_dir`](Self::state_dir) | `<state dir>/statemesh` (e.g. `~/.local/state/statemesh`) |
/// | [`persist`](Self::persist) | on |
/// | [`local_discovery`](Self::local_discovery) | on |
/// | [`lan`](Self::lan) | off: QUIC on loopback, nothing announced |
/// | [`listen`](Self::listen) | `127.0.0.1:0`, or `0.0.0.0:0` in LAN mode |
/// | [`static_peer`](Self::static_peer) | none |
/// | [`eligible`](Self::eligible) | yes |
/// | [`heartbeat_interval`](Self::heartbeat_interval) | 200 ms |
/// | [`suspect_timeout`](Self::suspect_timeout) | 1 s |
/// | [`max_frame`](Self::max_frame) | 16 MiB |
/// | [`config`](Self::config) | [`Config::default`] (all the timers and limits at once) |
/// | [`join_timeout`](Self::join_timeout) | 5 s |
/// | [`ack_timeout`](Self::ack_timeout) | 10 s |
#[derive(Debug, Clone)]
pub struct MeshBuilder {
    pub(crate) name: String,
    pub(crate) config: Config,
    /// Whether `hint_timeout` was set (else it follows `heartbeat_interval`).
    pub(crate) hint_set: bool,
    pub(crate) join_timeout: Duration,
    pub(crate) ack_timeout: Duration,
    pub(crate) keyring: Option<Keyring>,
    pub(crate) secret_path: Option<PathBuf>,
    pub(crate) runtime_dir: Option<PathBuf>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) persist: bool,
    pub(crate) local_discovery: bool,
    pub(crate) lan: bool,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) static_peers: Vec<SocketAddr>,
    pub(crate) extra_discovery: Vec<MakeDiscovery>,
}

/// Makes a discovery for each join (a builder can be cloned and joined more than once).
#[derive(Clone)]
pub(crate) struct MakeDiscovery(Arc<dyn Fn() -> Box<dyn Discovery> + Send + Sync>);

impl std::fmt::Debug for MakeDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str((self.0)().name())
    }
}

impl MeshBuilder {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            config: Config::default(),
            hint_set: false,
            join_timeout: DEFAULT_JOIN_TIMEOUT,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            keyring: None,
            secret_path: None,
            runtime_dir: None,
            state_dir: None,
            persist: true,
            local_discovery: true,
            lan: false,
            listen: None,
            static_peers: Vec::new(),
            extra_discovery: Vec::new(),
        }
    }

    /// The QUIC listen address: the one set, else loopback (or every interface in LAN mode)
    /// on an ephemeral port.
    pub(crate) fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or(if self.lan {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::LOCALHOST, 0).into()
        })
    }

    /// The discoveries to start, in order.
    pub(crate) fn discoveries(&self) -> Vec<Box<dyn Discovery>> {
        let mut out: Vec<Box<dyn Discovery>> = Vec::new();
        #[cfg(unix)]
        if self.local_discovery {
            let dir = self
                .runtime_dir
                .clone()
                .unwrap_or_else(statemesh_net::local::default_runtime_dir);
            out.push(Box::new(statemesh_net::discovery::LocalDiscovery::new(dir)));
        }
        if self.lan {
            out.push(Box::new(statemesh_net::mdns::MdnsDiscovery::new()));
        }
        if !self.static_peers.is_empty() {
            out.push(Box::new(statemesh_net::discovery::StaticPeers::new(
                self.static_peers.iter().copied(),
            )));
        }
        out.extend(self.extra_discovery.iter().map(|m| (m.0)()));
        out
    }

    /// The secret itself (instead of the secret file): a keyring of that one key, held in
    /// memory ([`Mesh::keyring`] changes it for this window only).
    pub fn secret(mut self, secret: Secret) -> Self {
        self.keyring = Some(Keyring::single(secret));
        self
    }

    /// A keyring held in memory (instead of the secret file).
    pub fn keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// The secret file (default: `<config dir>/statemesh/secret`, created on first use): a
    /// 32-byte secret or a keyring (see `statemesh_net::keyring`). The window watches it and
    /// applies every readable change (see [`Mesh::keyring`]).
    pub fn secret_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.secret_path = Some(path.into());
        self
    }

    /// Where local sockets live (default: `$XDG_RUNTIME_DIR/statemesh`, or
    /// `/tmp/statemesh-<uid>`).
    pub fn runtime_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime_dir = Some(dir.into());
        self
    }

    /// Where state files live (default: `<state dir>/statemesh`).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Whether to persist state (default: yes).
    pub fn persist(mut self, on: bool) -> Self {
        self.persist = on;
        self
    }

    /// Whether to find peers of this machine through local sockets (default: yes).
    pub fn local_discovery(mut self, on: bool) -> Self {
        self.local_discovery = on;
        self
    }

    /// LAN mode (default: off). On: QUIC listens on every interface (unless
    /// [`listen`](Self::listen) says otherwise) and peers are found and announced by mDNS
    /// (`_statemesh._udp.local.`). Off, nothing leaves this machine.
    pub fn lan(mut self, on: bool) -> Self {
        self.lan = on;
        self
    }

    /// The QUIC listen address (default `127.0.0.1:0`, or `0.0.0.0:0` in LAN mode; a fixed
    /// port helps firewalls and static peers).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Another way to find peers, besides the built-in ones (e.g. a
    /// [`MemoryRegistry`](statemesh_net::discovery::MemoryRegistry) for several meshes in one
    /// process).
    pub fn discovery<D: Discovery + Clone + Sync + 'static>(mut self, discovery: D) -> Self {
        self.extra_discovery
            .push(MakeDiscovery(Arc::new(move || Box::new(discovery.clone()))));
        self
    }

    /// A peer to dial at a known address (for networks without multicast).
    pub fn static_peer(mut self, addr: SocketAddr) -> Self {
        self.static_peers.push(addr);
        self
    }

    /// Whether this window may become the probe leader (default: yes).
    pub fn eligible(mut self, eligible: bool) -> Self {
        self.config.eligible = eligible;
        self
    }

    /// Heartbeat interval (default 200 ms). The timers derived from it follow, unless set on
    /// their own through [`config`](Self::config): the hint timeout (after a closed QUIC link,
    /// how long without news before the peer is judged dead) is 2 × the interval + 50 ms.
    /// Checked at join: more than zero, below the suspect timeout.
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.config.heartbeat_interval = d;
        if !self.hint_set {
            self.config.hint_timeout = derived_hint_timeout(d);
        }
        self
    }

    /// Every node tunable at once (default [`Config::default`]), for the knobs without a
    /// method of their own (`hint_timeout`, `join_grace`, `sync_stall_timeout`,
    /// `compact_every`, `tombstone_gossip`). The methods called after it change its fields.
    /// A `hint_timeout` other than the one derived from its `heartbeat_interval` is kept when
    /// [`heartbeat_interval`](Self::heartbeat_interval) is called later. Checked at join
    /// ([`MeshError::InvalidConfig`]).
    pub fn config(mut self, config: Config) -> Self {
        self.hint_set = config.hint_timeout != derived_hint_timeout(config.heartbeat_interval);
        self.config = config;
        self
    }

    /// How long [`join`](Self::join) waits, at most, until this window holds what the peers it
    /// found hold (default 5 s; zero: return at once). Whether it got there is
    /// [`Mesh::synced_on_join`]; [`Mesh::synced`] waits for it later.
    pub fn join_timeout(mut self, d: Duration) -> Self {
        self.join_timeout = d;
        self
    }

    /// How long [`Pending::durable`] and [`Pending::replicated`] wait before they fail with
    /// [`MeshError::Timeout`] (default 10 s; [`Pending::timeout`] sets it for one write).
    pub fn ack_timeout(mut self, d: Duration) -> Self {
        self.ack_timeout = d;
        self
    }

    /// Suspect timeout (default 1 s).
    pub fn suspect_timeout(mut self, d: Duration) -> Self {
        self.config.suspect_timeout = d;
        self
    }

    /// Hard limit on one frame (default 16 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.config.max_frame = bytes;
        self
    }

    async fn start(self) -> Result<(Arc<Shared>, driver::Driver), MeshError> {
        check_config(&self.config)?;
        let (ring, key_file) = match (&self.keyring, &self.secret_path) {
            (Some(r), _) => (r.clone(), None),
            (None, Some(p)) => (Keyring::load_or_create(p)?, Some(p.clone())),
            (None, None) => {
                let p = Secret::default_path()?;
                (Keyring::load_or_create(&p)?, Some(p))
            }
        };
        let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let me = PeerId::generate(unix_ms, &mut rng);
        let tag = ring.primary_tag(&self.name);
        let epoch = Instant::now();
        let mut node = Node::new(self.config.clone(), tag, me, &mut rng, Time::ZERO);
        node.set_mesh_tags(tag, &ring.accepted_tags(&self.name));
        node.align_heartbeats(heartbeat_phase(self.config.heartbeat_interval));
        // Bursts of local writes leave through push jobs, generated off the node (driver).
        node.set_push_jobs(true);
        let (store, loaded) = if self.persist {
            let base = match &self.state_dir {
                Some(d) => d.clone(),
                None => dirs::state_dir()
                    .or_else(dirs::data_local_dir)
                    .ok_or(MeshError::NoStateDir)?
                    .join("statemesh"),
            };
            let dir = statemesh_net::local::mesh_dir(&base, &self.name);
            let store = Store::open(&dir, me)?;
            let loaded = store.load_all(&mut node)?;
            (Some(store), loaded)
        } else {
            (None, LoadSummary::default())
        };
        let (leadership, _) = watch::channel(LeadershipInfo::default());
        let (changes, first_changes) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            node: parking_lot::Mutex::new(node),
            wake: Notify::new(),
            leadership,
            changes,
            acks: Mutex::new(Acks::default()),
            acks_changed: Notify::new(),
            epoch,
            me,
            loaded,
            closed: std::sync::atomic::AtomicBool::new(false),
            quic_addr: std::sync::OnceLock::new(),
            counts: Mutex::new(DriverCounts::default()),
            synced: watch::channel(false).0,
            first_changes: Mutex::new(Some(first_changes)),
            persist: self.persist,
            ack_timeout: self.ack_timeout,
            synced_on_join: std::sync::atomic::AtomicBool::new(false),
            keys: SharedKeyring::new(ring),
            key_file,
            link_keys: Mutex::new(std::collections::BTreeMap::new()),
        });
        let join_timeout = self.join_timeout;
        let driver = driver::start(self, store, shared.clone()).await?;
        // Reads right after `join` must not take "not synced yet" for "absent": wait (bounded)
        // until this window holds what the peers it found hold.
        let synced = wait_synced(&shared, join_timeout).await;
        shared
            .synced_on_join
            .store(synced, std::sync::atomic::Ordering::Release);
        Ok((shared, driver))
    }

    /// Joins the mesh: binds, loads state, starts discovery, and waits (at most the
    /// [`join_timeout`](Self::join_timeout), 5 s by default) until this window has joined and
    /// holds what every peer it found holds, so that a read right after `join` does not miss
    /// the mesh's state. [`Mesh::synced_on_join`] says whether it got there. Must be called
    /// inside a tokio runtime.
    pub async fn join(self) -> Result<Mesh, MeshError> {
        let (shared, driver) = self.start().await?;
        Ok(Mesh {
            inner: Arc::new(Inner {
                shared,
                driver: Mutex::new(Some(driver)),
                runtime: None,
            }),
        })
    }

    /// Joins the mesh from code that is not async (an egui window, a plain thread): the mesh
    /// runs on its own runtime thread, kept alive as long as the returned handle (or a clone).
    /// Use [`Mesh::block_on`] to wait for acknowledgements or leadership.
    pub fn join_blocking(self) -> Result<Mesh, MeshError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("statemesh")
            .enable_all()
            .build()
            .map_err(|e| MeshError::Runtime(e.to_string()))?;
        let (shared, driver) = runtime.block_on(self.start())?;
        Ok(Mesh {
            inner: Arc::new(Inner {
                shared,
                driver: Mutex::new(Some(driver)),
                runtime: Some(runtime),
            }),
        })
    }
}

/// State shared by the handles and the driver task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The node. A `parking_lot` mutex: writers hand it over fairly to a waiting driver (see
    /// [`Mesh::write`]); `std`'s lets a thread that writes in a loop take it back at once, and
    /// the driver (heartbeats, views) waited behind whole bursts.
    pub(crate) node: parking_lot::Mutex<Node>,
    pub(crate) wake: Notify,
    pub(crate) leadership: watch::Sender<LeadershipInfo>,
    pub(crate) changes: broadcast::Sender<EntryChange>,
    pub(crate) acks: Mutex<Acks>,
    pub(crate) acks_changed: Notify,
    pub(crate) epoch: Instant,
    pub(crate) me: PeerId,
    pub(crate) loaded: LoadSummary,
    pub(crate) closed: std::sync::atomic::AtomicBool,
    pub(crate) quic_addr: std::sync::OnceLock<SocketAddr>,
    pub(crate) counts: Mutex<DriverCounts>,
    /// Whether the node has joined and holds what every linked peer holds.
    pub(crate) synced: watch::Sender<bool>,
    /// Subscribed before the mesh started: the first [`Mesh::changes`] call gets it, so that
    /// no change made between `join` and that call is missed.
    pub(crate) first_changes: Mutex<Option<broadcast::Receiver<EntryChange>>>,
    /// Whether state is persisted (else no write is ever durable).
    pub(crate) persist: bool,
    /// The default wait of acknowledgements.
    pub(crate) ack_timeout: Duration,
    /// Whether `join` returned synced (see [`Mesh::synced_on_join`]).
    pub(crate) synced_on_join: std::sync::atomic::AtomicBool,
    /// The keyring every handshake reads.
    pub(crate) keys: SharedKeyring,
    /// The keyring file, watched, if the mesh has one.
    pub(crate) key_file: Option<PathBuf>,
    /// The key each linked peer proved with.
    pub(crate) link_keys: Mutex<std::collections::BTreeMap<PeerId, KeyId>>,
}

impl Shared {
    pub(crate) fn now(&self) -> Time {
        Time::from_duration(self.epoch.elapsed())
    }

    pub(crate) fn node(&self) -> parking_lot::MutexGuard<'_, Node> {
        // No poisoning: a panic while holding the lock can only come from a bug in statemesh
        // itself; the node's state is still consistent between inputs, so keep going.
        self.node.lock()
    }

    pub(crate) fn counts(&self) -> MutexGuard<'_, DriverCounts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn acks(&self) -> MutexGuard<'_, Acks> {
        self.acks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    driver: Mutex<Option<driver::Driver>>,
    /// The mesh's own runtime, for meshes joined with [`MeshBuilder::join_blocking`]. Declared
    /// last: it is dropped after the driver was aborted.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stop the driver (no leave), then let the runtime go without blocking on its threads.
        if let Ok(mut d) = self.driver.lock() {
            d.take();
        }
        // Guards and waiters that outlive the last handle learn that it is over.
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared
            .leadership
            .send_replace(LeadershipInfo::default());
        self.shared.acks_changed.notify_waiters();
        self.shared.synced.send_replace(false);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A window's handle on the mesh. Cheap to clone; the mesh leaves (gracefully, with a
/// [`shutdown`](Mesh::shutdown), or abruptly when the last handle is dropped: no task, socket
/// file or advertisement stays behind).
#[derive(Debug, Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

/// A local write, applied to this window's document. Await [`durable`](Pending::durable) or
/// [`replicated`](Pending::replicated) for stronger guarantees.
#[derive(Debug)]
pub struct Pending {
    shared: Arc<Shared>,
    written: Written,
    timeout: Duration,
}

impl Pending {
    /// The write's id.
    pub fn id(&self) -> WriteId {
        self.written.id
    }

    /// Whether the write changed anything (an equal value is not rewritten).
    pub fn changed(&self) -> bool {
        self.written.changed
    }

    /// How long [`durable`](Self::durable) or [`replicated`](Self::replicated) waits for this
    /// write (default: the mesh's [`ack_timeout`](MeshBuilder::ack_timeout), 10 s).
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Resolves once the write is on this machine's disk (fsynced); a write that changed
    /// nothing at once. Fails, the write still applied, with [`AckError::PersistenceOff`]
    /// when persistence is off (at once), [`AckError::StoreFailed`] once writing to disk
    /// failed, [`MeshError::Timeout`] after the [`timeout`](Self::timeout), or
    /// [`MeshError::Closed`] if the mesh shuts down first.
    pub async fn durable(self) -> Result<(), MeshError> {
        if !self.shared.persist {
            return Err(AckError::PersistenceOff.into());
        }
        if !self.written.changed {
            return Ok(());
        }
        let id = self.written.id;
        self.wait("the write to be durable", |acks| {
            if acks.is_durable(id) {
                Some(Ok(()))
            } else {
                acks.store_failed
                    .as_ref()
                    .map(|e| Err(AckError::StoreFailed(e.clone()).into()))
            }
        })
        .await
    }

    /// Resolves once `k` other peers hold the write; a write that changed nothing, or `k` of
    /// zero, at once. Fails, the write still applied, with [`AckError::Untracked`] once the
    /// write is no longer watched for replication (older than 600 s, or 4,096 newer writes),
    /// [`MeshError::Timeout`] after the [`timeout`](Self::timeout), or [`MeshError::Closed`]
    /// if the mesh shuts down first.
    pub async fn replicated(self, k: usize) -> Result<(), MeshError> {
        if !self.written.changed || k == 0 {
            return Ok(());
        }
        let id = self.written.id;
        self.wait("the write to be replicated", |acks| {
            if acks.holders(id) >= k {
                Some(Ok(()))
            } else if acks.untracked(id) {
                Some(Err(AckError::Untracked.into()))
            } else {
                None
            }
        })
        .await
    }

    /// Waits until `done` decides, the mesh closes or the timeout runs out.
    async fn wait(
        &self,
        what: &'static str,
        done: impl Fn(&Acks) -> Option<Result<(), MeshError>>,
    ) -> Result<(), MeshError> {
        let wait = async {
            loop {
                let notified = self.shared.acks_changed.notified();
                if let Some(r) = done(&self.shared.acks()) {
                    return r;
                }
                if self
                    .shared
                    .closed
                    .load(std::sync::atomic::Ordering::Acquire)
                {
                    return Err(MeshError::Closed);
                }
                notified.await;
            }
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .unwrap_or(Err(MeshError::Timeout(what)))
    }
}

/// Leadership held by this window: writes made through it carry its term, and are refused
/// once the leadership is known or suspected lost.
#[derive(Debug)]
pub struct Lead {
    shared: Arc<Shared>,
    term: u64,
    leadership: watch::Receiver<LeadershipInfo>,
}

impl Lead {
    /// The number of this leadership's term. Another window may have led under the same number
    /// (see [`Term`]); the fencing token is [`term_id`](Self::term_id).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The term of this leadership, the fencing token: its number, led by this window. No other
    /// leadership, of any window, ever has it.
    pub fn term_id(&self) -> Term {
        Term::new(self.term, self.shared.me)
    }

    /// Writes leader record `key` of `channel` under this term. Refused once the leadership is
    /// over (including after this process was frozen).
    pub fn put<T: Reconcile>(&self, channel: &str, key: &str, value: &T) -> Result<(), MeshError> {
        if self
            .shared
            .closed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(MeshError::Closed);
        }
        let now = self.shared.now();
        self.shared
            .node()
            .leader_put(now, self.term, channel, key, Some(value))?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Deletes leader record `key` of `channel`.
    pub fn delete(&self, channel: &str, key: &str) -> Result<(), MeshError> {
        if self
            .shared
            .closed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(MeshError::Closed);
        }
        let now = self.shared.now();
        self.shared
            .node()
            .leader_put::<Value>(now, self.term, channel, key, None)?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Whether this leadership still holds.
    pub fn is_valid(&self) -> bool {
        !self
            .shared
            .closed
            .load(std::sync::atomic::Ordering::Acquire)
            && self.shared.node().my_term() == Some(self.term)
    }

    /// Resolves once this leadership is over.
    pub async fn cancelled(&self) {
        let mut rx = self.leadership.clone();
        loop {
            let l = *rx.borrow_and_update();
            if !(l.is_me && l.term == Some(self.term) && self.is_valid()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

use statemesh_core::Value;

impl Mesh {
    /// Starts building a mesh named `name` (a workspace path, or any name).
    pub fn builder(name: &str) -> MeshBuilder {
        MeshBuilder::new(name)
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    fn write(
        &self,
        f: impl FnOnce(&mut Node) -> Result<Written, WriteError>,
    ) -> Result<Pending, MeshError> {
        if self
            .shared()
            .closed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(MeshError::Closed);
        }
        let mut node = self.shared().node();
        // The write's own time (taken once the node is ours), not the last tick's.
        node.handle_time(self.shared().now());
        let written = f(&mut node);
        // Handed over fairly: a driver waiting for the node (a heartbeat due, views to judge)
        // gets it before this thread's next write, however fast the application writes.
        parking_lot::MutexGuard::unlock_fair(node);
        let written = written?;
        self.shared().wake.notify_one();
        Ok(Pending {
            shared: self.shared().clone(),
            written,
            timeout: self.shared().ack_timeout,
        })
    }

    /// This window's peer id.
    pub fn id(&self) -> PeerId {
        self.shared().me
    }

    /// The address this window's QUIC endpoint listens on (for other machines' static peers).
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.shared().quic_addr.get().copied()
    }

    /// Writes record `key` of `channel`.
    pub fn put<T: Reconcile>(
        &self,
        channel: &str,
        key: &str,
        value: &T,
    ) -> Result<Pending, MeshError> {
        self.write(|n| n.put(channel, key, value, Scope::Durable))
    }

    /// Writes record `key` of `channel`, visible only while this window lives.
    pub fn put_presence<T: Reconcile>(
        &self,
        channel: &str,
        key: &str,
        value: &T,
    ) -> Result<Pending, MeshError> {
        self.write(|n| n.put(channel, key, value, Scope::Presence))
    }

    /// Deletes record `key` of `channel`.
    pub fn delete(&self, channel: &str, key: &str) -> Result<Pending, MeshError> {
        self.write(|n| n.delete(channel, key))
    }

    /// Adds `by` to counter `name` (this window's share of it, of the given scope). Refused
    /// with [`WriteError::CounterOverflow`], nothing written, if this window's share would
    /// leave the signed 64-bit range; the counter's value (several windows' shares) saturates
    /// instead.
    pub fn add(&self, name: &str, by: i64, scope: Scope) -> Result<Pending, MeshError> {
        self.write(|n| n.add(name, by, scope))
    }

    /// Makes several writes as one atomic change.
    pub fn transact(
        &self,
        f: impl FnOnce(&mut statemesh_core::Tx<'_>) -> Result<(), WriteError>,
    ) -> Result<Pending, MeshError> {
        self.write(|n| n.transact(f).map(|((), w)| w))
    }

    /// Reads record `key` of `channel`.
    pub fn get<T: Hydrate>(&self, channel: &str, key: &str) -> Result<Option<T>, MeshError> {
        Ok(self.shared().node().get(channel, key)?)
    }

    /// The visible keys of `channel`.
    pub fn keys(&self, channel: &str) -> Vec<String> {
        self.shared().node().keys(channel)
    }

    /// Channels holding records.
    pub fn channels(&self) -> Vec<String> {
        self.shared().node().channels()
    }

    /// The value of counter `name`: every writer's share added up (0 for a counter never
    /// written). Beyond the signed 64-bit range, it saturates at `i64::MIN` or `i64::MAX`.
    pub fn counter(&self, name: &str) -> i64 {
        self.shared().node().counter(name)
    }

    /// The names of every counter ever written, sorted (read each with
    /// [`counter`](Self::counter)).
    pub fn counters(&self) -> Vec<String> {
        self.shared().node().counter_names()
    }

    /// Reads leader record `key` of `channel` (with its term: the number and the leader that
    /// wrote it), if a live leader of the newest term wrote it.
    pub fn leader_get<T: Hydrate>(
        &self,
        channel: &str,
        key: &str,
    ) -> Result<Option<(T, Term)>, MeshError> {
        Ok(self.shared().node().leader_get(channel, key)?)
    }

    /// The visible keys of leader channel `channel`.
    pub fn leader_keys(&self, channel: &str) -> Vec<String> {
        self.shared().node().leader_keys(channel)
    }

    /// A stream of changes: which channel and key, written by whom. The first call returns a
    /// stream that starts at `join` (so nothing that arrived since is missed, up to 4,096
    /// changes — older ones are reported as `Lagged`); later calls start at the call.
    pub fn changes(&self) -> broadcast::Receiver<EntryChange> {
        let first = self
            .shared()
            .first_changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        first.unwrap_or_else(|| self.shared().changes.subscribe())
    }

    /// The current leadership, and its changes.
    pub fn leadership(&self) -> watch::Receiver<LeadershipInfo> {
        self.shared().leadership.subscribe()
    }

    /// Waits until this window leads and returns the guard; `None` once the mesh is shut down.
    pub async fn lead(&self) -> Option<Lead> {
        let mut rx = self.leadership();
        loop {
            if self
                .shared()
                .closed
                .load(std::sync::atomic::Ordering::Acquire)
            {
                return None;
            }
            let l = *rx.borrow_and_update();
            if let (true, Some(term)) = (l.is_me, l.term)
                && self.shared().node().my_term() == Some(term)
            {
                return Some(Lead {
                    shared: self.shared().clone(),
                    term,
                    leadership: rx,
                });
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Waits until this window has joined (discovery settled, or its join grace is over) and
    /// holds the same document and leader records as every peer it is linked to: what a
    /// short-lived reader (a CLI command) waits for before reading. Resolves at once for a
    /// window alone once it has joined; `Err(Closed)` if the mesh shuts down first.
    pub async fn synced(&self) -> Result<(), MeshError> {
        let mut rx = self.shared().synced.subscribe();
        loop {
            if self
                .shared()
                .closed
                .load(std::sync::atomic::Ordering::Acquire)
            {
                return Err(MeshError::Closed);
            }
            if *rx.borrow_and_update() {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(MeshError::Closed);
            }
        }
    }

    /// Whether [`join`](MeshBuilder::join) returned holding what every peer it found held;
    /// `false` if its [`join_timeout`](MeshBuilder::join_timeout) ran out first. Until
    /// [`synced`](Self::synced) resolves (or [`is_synced`](Self::is_synced) is true), a key
    /// that reads as absent may only not have arrived yet.
    pub fn synced_on_join(&self) -> bool {
        self.shared()
            .synced_on_join
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this window has joined and holds what every peer it is linked to holds, now
    /// (what [`synced`](Self::synced) waits for).
    pub fn is_synced(&self) -> bool {
        *self.shared().synced.borrow()
    }

    /// Peers this window has a link to now.
    pub fn linked(&self) -> usize {
        self.shared().node().linked_peers().len()
    }

    /// Members with their liveness, this window first.
    pub fn members(&self) -> Vec<Member> {
        let now = self.shared().now();
        self.shared()
            .node()
            .explain(now)
            .peers
            .into_iter()
            .map(|p| Member {
                peer: p.peer,
                incarnation: p.incarnation,
                live: p.live,
                eligible: p.eligible,
                silent_for: p.silent_for,
            })
            .collect()
    }

    /// Why this window leads or not: the live set and each peer's freshness.
    pub fn explain(&self) -> Explanation {
        let now = self.shared().now();
        self.shared().node().explain(now)
    }

    /// Counters of what this window's node did.
    pub fn stats(&self) -> Stats {
        self.shared().node().stats()
    }

    /// What this window's mesh did since it joined: leadership changes, sync rounds, bytes,
    /// propagation delays, refused connections and frames.
    pub fn metrics(&self) -> Metrics {
        let stats = self.stats();
        let counts = self.shared().counts();
        Metrics {
            leadership_changes: stats.leadership_changes,
            sync_in: stats.sync_in,
            sync_out: stats.sync_out,
            sync_resets: stats.sync_resets,
            frames_in: stats.frames_in,
            frames_out: stats.frames_out,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            decode_errors: stats.decode_errors + counts.framing_errors,
            auth_failures: counts.auth_failures_quic + counts.auth_failures_discovery,
            dial_failures: counts.dial_failures,
            probes: counts.probes,
            probe_failures: counts.probe_failures,
            dial_candidates: counts.dial_candidates,
            candidates_forgotten: counts.candidates_forgotten,
            mdns_peers_found: counts.mdns_peers_found,
            discovery_warning: counts.discovery_warning.clone(),
            links: counts.links,
            keys: crate::KeyringInfo::of(
                &self.shared().keys.current(),
                self.shared().key_file.as_deref(),
            ),
            link_keys: self
                .keyring()
                .peer_keys()
                .into_iter()
                .map(|(p, k)| (p.to_string(), k))
                .collect(),
            links_opened: counts.links_opened,
            key_renewals: counts.key_renewals,
            key_renewal_failures: counts.key_renewal_failures,
            persist_errors: counts.persist_errors,
            propagation: counts.propagation.summary(),
            freezes: stats.freezes,
            suspicions_refuted: stats.suspicions_refuted,
            tick_late: counts.tick_late.summary(),
            driver_turns: counts.driver_turns.summary(),
        }
    }

    /// This window's keyring: which key it proves with, which it accepts, which each linked
    /// peer proved with; install, use and remove keys (see [`crate::keys`]).
    pub fn keyring(&self) -> crate::KeyringHandle {
        crate::KeyringHandle {
            shared: self.shared().clone(),
        }
    }

    /// What loading state from disk found at startup.
    pub fn loaded(&self) -> &LoadSummary {
        &self.shared().loaded
    }

    /// Runs `future` to completion from non-async code, on the mesh's own runtime (meshes joined
    /// with [`MeshBuilder::join_blocking`]), e.g. `mesh.block_on(pending.durable())`. Must not be
    /// called from inside an async context.
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output, MeshError> {
        match &self.inner.runtime {
            Some(rt) => Ok(rt.block_on(future)),
            None => Err(MeshError::Runtime(
                "this mesh runs on the caller's runtime; await instead".into(),
            )),
        }
    }

    /// Leaves gracefully: announces the leave (the next leader takes over at once), flushes,
    /// and stops every task.
    pub async fn shutdown(&self) -> Result<(), MeshError> {
        let driver = self
            .inner
            .driver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match driver {
            Some(d) => d.shutdown().await,
            None => Ok(()),
        }
    }
}

/// How long `join` waits for this window to hold what its peers hold, by default.
const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long acknowledgements wait, by default (as the sidecar's `--ack-timeout-ms`).
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The hint timeout that follows a heartbeat interval (see `Config::hint_timeout`).
fn derived_hint_timeout(heartbeat_interval: Duration) -> Duration {
    heartbeat_interval.saturating_mul(2) + Duration::from_millis(50)
}

/// The longest any timer may be: longer ones are surely a mistake (a unit mix-up).
const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

/// The smallest frame limit: hellos, views and sync messages must fit.
const MIN_FRAME: usize = 4096;

/// Checks the node's tunables before joining.
fn check_config(c: &Config) -> Result<(), MeshError> {
    let invalid = |m: String| Err(MeshError::InvalidConfig(m));
    for (name, d) in [
        ("heartbeat_interval", c.heartbeat_interval),
        ("suspect_timeout", c.suspect_timeout),
        ("hint_timeout", c.hint_timeout),
        ("sync_stall_timeout", c.sync_stall_timeout),
        ("tombstone_gossip", c.tombstone_gossip),
    ] {
        if d.is_zero() || d > MAX_TIMER {
            return invalid(format!(
                "{name} is {d:?}: it must be more than zero and at most a day"
            ));
        }
    }
    if c.join_grace > MAX_TIMER {
        return invalid(format!(
            "join_grace is {:?}: it must be at most a day",
            c.join_grace
        ));
    }
    if c.suspect_timeout <= c.heartbeat_interval {
        return invalid(format!(
            "suspect_timeout ({:?}) must be longer than heartbeat_interval ({:?}), or every peer is judged dead between two heartbeats",
            c.suspect_timeout, c.heartbeat_interval
        ));
    }
    if c.max_frame < MIN_FRAME {
        return invalid(format!(
            "max_frame is {} bytes: it must be at least {MIN_FRAME}",
            c.max_frame
        ));
    }
    if c.compact_every == 0 {
        return invalid("compact_every must be at least 1".into());
    }
    Ok(())
}

/// Waits, at most `within`, until the node has joined and holds what its linked peers hold;
/// whether it did.
async fn wait_synced(shared: &Shared, within: Duration) -> bool {
    let mut rx = shared.synced.subscribe();
    let wait = async {
        loop {
            if *rx.borrow_and_update() {
                return true;
            }
            if shared.closed.load(std::sync::atomic::Ordering::Acquire)
                || rx.changed().await.is_err()
            {
                return false;
            }
        }
    };
    tokio::time::timeout(within, wait).await.unwrap_or(false)
}

/// The phase that puts a node's heartbeats (its clock starting now) on multiples of `interval`
/// of the machine's monotonic clock, which every process of the machine reads alike: windows
/// of one machine then beat together (see `Node::align_heartbeats`). Only an optimisation:
/// elsewhere, or should the clocks differ, heartbeats are as frequent, merely not aligned.
fn heartbeat_phase(interval: Duration) -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let abs = u128::from(now.tv_sec.unsigned_abs()) * 1_000_000
        + u128::from(now.tv_nsec.unsigned_abs()) / 1_000;
    let i = interval.as_micros().max(1);
    Duration::from_micros(u64::try_from((i - abs % i) % i).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14, item 8: the hint timeout stayed at 450 ms whatever the heartbeat interval.
    #[test]
    fn the_hint_timeout_follows_the_heartbeat_interval_unless_set() {
        let b = Mesh::builder("m").heartbeat_interval(Duration::from_secs(1));
        assert_eq!(b.config.hint_timeout, Duration::from_millis(2_050));
        let mut c = Config::default();
        c.hint_timeout = Duration::from_millis(300);
        let b = Mesh::builder("m")
            .config(c)
            .heartbeat_interval(Duration::from_millis(100));
        assert_eq!(b.config.hint_timeout, Duration::from_millis(300), "kept");
        let b = Mesh::builder("m")
            .config(Config::default())
            .heartbeat_interval(Duration::from_millis(100));
        assert_eq!(b.config.hint_timeout, Duration::from_millis(250), "derived");
        assert!(check_config(&Config::default()).is_ok());
    }
}
