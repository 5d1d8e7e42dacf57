//! Building a mesh: [`MeshBuilder`], its knobs and their checks, and joining (which loads the
//! keyring and state, makes the node and starts the driver).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand_core::SeedableRng;
use statemesh_core::{Config, Node, PeerId, Time};
use statemesh_net::discovery::Discovery;
use statemesh_net::keyring::{Keyring, SharedKeyring};
use statemesh_net::secret::Secret;

use crate::driver::{self, Driver};
use crate::error::JoinError;
use crate::mesh::Mesh;
use crate::shared::{BacklogLimits, Fixed, Shared};
use crate::store::{LoadSummary, Store};

impl Mesh {
    /// Starts building a mesh named `name` (a workspace path, or any name).
    pub fn builder(name: &str) -> MeshBuilder {
        MeshBuilder::new(name)
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
/// | [`backpressure`](Self::backpressure) | soft 256, hard 512 |
/// | [`background_nice`](Self::background_nice) | 15 nice levels below the runtime's threads (Linux) |
/// | [`give_back_memory`](Self::give_back_memory) | yes (glibc) |
#[derive(Debug, Clone)]
pub struct MeshBuilder {
    name: String,
    config: Config,
    /// Whether `hint_timeout` was set (else it follows `heartbeat_interval`).
    hint_set: bool,
    join_timeout: Duration,
    ack_timeout: Duration,
    backlog: BacklogLimits,
    keyring: Option<Keyring>,
    secret_path: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    persist: bool,
    local_discovery: bool,
    lan: bool,
    listen: Option<SocketAddr>,
    static_peers: Vec<SocketAddr>,
    extra_discovery: Vec<MakeDiscovery>,
    background_nice: u8,
    give_back_memory: bool,
}

/// Makes a discovery for each join (a builder can be cloned and joined more than once).
#[derive(Clone)]
struct MakeDiscovery(Arc<dyn Fn() -> Box<dyn Discovery> + Send + Sync>);

impl std::fmt::Debug for MakeDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str((self.0)().name())
    }
}

impl MeshBuilder {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            config: Config::default(),
            hint_set: false,
            join_timeout: DEFAULT_JOIN_TIMEOUT,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            backlog: DEFAULT_BACKLOG,
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
            background_nice: driver::DEFAULT_BACKGROUND_NICE,
            give_back_memory: true,
        }
    }

    /// The QUIC listen address: the one set, else loopback (or every interface in LAN mode)
    /// on an ephemeral port.
    fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or(if self.lan {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::LOCALHOST, 0).into()
        })
    }

    /// The discoveries to start, in order. Local presence proves the mesh secret with `keys`
    /// (no discovery is handed the secret: see `statemesh_net::discovery::Announce`).
    fn discoveries(&self, keys: &SharedKeyring) -> Vec<Box<dyn Discovery>> {
        let mut out: Vec<Box<dyn Discovery>> = Vec::new();
        #[cfg(unix)]
        if self.local_discovery {
            let dir = self
                .runtime_dir
                .clone()
                .unwrap_or_else(statemesh_net::local::default_runtime_dir);
            out.push(Box::new(statemesh_net::local::LocalDiscovery::new(
                dir,
                keys.clone(),
            )));
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
    /// `compact_every`, `compact_min_bytes`, `tombstone_gossip`). The methods called after it
    /// change its fields.
    /// A `hint_timeout` other than the one derived from its `heartbeat_interval` is kept when
    /// [`heartbeat_interval`](Self::heartbeat_interval) is called later. Checked at join
    /// ([`JoinError::InvalidConfig`]).
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

    /// How long [`Pending::durable`](crate::Pending::durable) and
    /// [`Pending::replicated`](crate::Pending::replicated) wait before they fail with
    /// [`AckError::Timeout`](crate::AckError::Timeout) (default 10 s; [`Pending::timeout`](crate::Pending::timeout) sets
    /// it for one write).
    pub fn ack_timeout(mut self, d: Duration) -> Self {
        self.ack_timeout = d;
        self
    }

    /// The bounds of this window's backlog: the entries changed by its local writes that its
    /// live linked peers have not all acknowledged (each write weighs the records and counter
    /// entries it changed, at least 1), plus the frames queued to its links. From `soft` on,
    /// [`Mesh::backpressure`](crate::Mesh::backpressure) waits until the backlog is back under
    /// `soft / 2`; from `hard` on, writes are refused with
    /// [`WriteError::Backpressure`](crate::WriteError::Backpressure), nothing written.
    /// Defaults 256 and 512; `0 < soft <= hard <= MAX_PENDING_WRITES / 2` (the writes
    /// counted, no more than the entries they weigh, are those watched for replication,
    /// `statemesh_core::node::MAX_PENDING_WRITES`, and a write not yet acknowledged must never
    /// be pushed out of that watch), else `join` fails with [`JoinError::InvalidConfig`].
    pub fn backpressure(mut self, soft: usize, hard: usize) -> Self {
        self.backlog = BacklogLimits { soft, hard };
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

    /// How many nice levels below the threads of the runtime that runs the mesh (they start
    /// them) its two background threads run, on Linux (default 15; 0 keeps them level; the
    /// nice value stops at 19): the pulse's (heartbeats and views) and the jobs' (the CRDT
    /// library's bulk work: long receives, pushes of many writes). The runtime's threads, which
    /// take a change in, answer it and publish it, keep their priority, so when the cores are
    /// short a change's receipt (wanted within milliseconds) goes before views (wanted within
    /// the suspect timeout), and the views still share the cores evenly with bulk work.
    /// Measured at 64 windows on 2 cores: a write that met the heartbeat instant's views
    /// waited for them (`scale` p99 60-80 ms level, 46-58 ms with 10, in one sitting; 40-56 ms
    /// with 15 against 44-65 with 10 in another). Other
    /// systems have no per-thread nice value; nothing is changed there.
    pub fn background_nice(mut self, levels: u8) -> Self {
        self.background_nice = levels;
        self
    }

    /// Whether the mesh gives the C allocator's free memory back to the kernel once its bulk
    /// work goes quiet (default yes). After the mesh's job thread has run a job and then had
    /// none for a second, it calls glibc's `malloc_trim`, once per quiet spell: the arenas of
    /// every thread of the process keep what was freed in them, and a window that took a burst
    /// would otherwise stay resident at its peak (in the `memory` benchmark, 350 kB of each
    /// window's 3.5-4 MB). The call takes each arena's lock in turn: 0.2-0.4 ms for a window of
    /// a few MB, 3-37 ms for a fragmented heap of 100-600 MB, during which a thread that
    /// allocates from the arena being trimmed waits. Turn it off if your application manages
    /// the allocator itself. Off glibc it does nothing either way.
    pub fn give_back_memory(mut self, on: bool) -> Self {
        self.give_back_memory = on;
        self
    }
    async fn start(self) -> Result<(Arc<Shared>, Driver), JoinError> {
        check_config(&self.config)?;
        let BacklogLimits { soft, hard } = self.backlog;
        if soft == 0 || soft > hard || hard > statemesh_core::node::MAX_PENDING_WRITES / 2 {
            return Err(JoinError::InvalidConfig(format!(
                "backpressure bounds {soft} / {hard}: 0 < soft <= hard <= {}",
                statemesh_core::node::MAX_PENDING_WRITES / 2
            )));
        }
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
                    .ok_or(JoinError::NoStateDir)?
                    .join("statemesh"),
            };
            let dir = statemesh_net::local::mesh_dir(&base, &self.name);
            let store = Store::open(&dir, me)?;
            let loaded = store.load_all(&mut node)?;
            (Some(store), loaded)
        } else {
            (None, LoadSummary::default())
        };
        let keys = SharedKeyring::new(ring);
        let shared = Arc::new(Shared::new(
            node,
            Fixed {
                epoch,
                loaded,
                persist: self.persist,
                ack_timeout: self.ack_timeout,
                keys: keys.clone(),
                key_file,
                backlog: self.backlog,
            },
        ));
        let params = driver::Params {
            name: self.name.clone(),
            listen: self.listen_addr(),
            lan: self.lan,
            discoveries: self.discoveries(&keys),
            store,
            background_nice: self.background_nice,
            give_back_memory: self.give_back_memory,
        };
        let driver = driver::start(params, shared.clone()).await?;
        // Reads right after `join` must not take "not synced yet" for "absent": wait (bounded)
        // until this window holds what the peers it found hold.
        let synced = tokio::time::timeout(self.join_timeout, shared.synced()).await;
        shared.set_synced_on_join(matches!(synced, Ok(Ok(()))));
        Ok((shared, driver))
    }

    /// Joins the mesh: binds, loads state, starts discovery, and waits (at most the
    /// [`join_timeout`](Self::join_timeout), 5 s by default) until this window has joined and
    /// holds what every peer it found holds, so that a read right after `join` does not miss
    /// the mesh's state. [`Mesh::synced_on_join`] says whether it got there. Must be called
    /// inside a tokio runtime.
    pub async fn join(self) -> Result<Mesh, JoinError> {
        let (shared, driver) = self.start().await?;
        Ok(Mesh::new(shared, driver, None))
    }

    /// Joins the mesh from code that is not async (an egui window, a plain thread): the mesh
    /// runs on its own runtime thread, kept alive as long as the returned handle (or a clone).
    /// Use [`Mesh::block_on`] to wait for acknowledgements or leadership.
    pub fn join_blocking(self) -> Result<Mesh, JoinError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("statemesh")
            .enable_all()
            .build()
            .map_err(|source| JoinError::Runtime {
                what: "runtime",
                source,
            })?;
        let (shared, driver) = runtime.block_on(self.start())?;
        Ok(Mesh::new(shared, driver, Some(runtime)))
    }
}

/// How long `join` waits for this window to hold what its peers hold, by default.
const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long acknowledgements wait, by default (as the sidecar's `--ack-timeout-ms`).
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// The default backlog bounds (see [`MeshBuilder::backpressure`]). Every sync message walks
/// what its peer has not acknowledged (Automerge's `generate_sync_message`), so the bound is
/// also the cost of a message under load: with 1,024 / 2,048, 8 windows on 2 cores writing
/// flat out took 490 writes/s (each message walking 10,000-16,000 changes), with 256 / 512
/// 1,050 (`overload --peers 8`; `docs/under-load.md`, ninth slice).
const DEFAULT_BACKLOG: BacklogLimits = BacklogLimits {
    soft: 256,
    hard: 512,
};

/// The hint timeout that follows a heartbeat interval (see `Config::hint_timeout`).
fn derived_hint_timeout(heartbeat_interval: Duration) -> Duration {
    heartbeat_interval.saturating_mul(2) + Duration::from_millis(50)
}

/// The longest any timer may be: longer ones are surely a mistake (a unit mix-up).
const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

/// The smallest frame limit: hellos, views and sync messages must fit.
const MIN_FRAME: usize = 4096;

/// Checks the node's tunables before joining.
fn check_config(c: &Config) -> Result<(), JoinError> {
    let invalid = |m: String| Err(JoinError::InvalidConfig(m));
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
