//! Local discovery and presence: one Unix socket per peer in a per-user runtime directory.
//!
//! Every peer of a mesh on this machine binds `<runtime dir>/statemesh/<mesh hash>/<peer id>.s`.
//! The directory is created 0700 (so the socket, created inside it and then set to 0600, is
//! never reachable by another user), the mesh name is hashed (socket paths hold 107 bytes on
//! Linux, 103 on macOS), and every connection checks the other end's uid (SO_PEERCRED on Linux,
//! getpeereid on macOS and the BSDs, both through tokio's `peer_cred`) and refuses a foreign one.
//!
//! A newly started peer connects to every socket it finds; existing peers notice it when it
//! connects. A rescan every second covers two peers starting at the same instant, and removes
//! stale socket files (whose process died without cleaning up: connecting is refused). After a
//! secret-based handshake (nonces from both sides, see [`crate::auth`]) each side learns the
//! other's id and QUIC address, and the connection stays open: its EOF is a certain, immediate
//! death signal, since only the kernel closing a dead process's sockets produces it. Two peers
//! that connect to each other at once (both started together, or both rescanning) keep one
//! connection on both sides, the one dialled by the lower id, and close the other after one
//! byte ([`DUPLICATE`]) that tells its other end the close is no death. (Each side used to keep
//! whichever connection finished first: when the two sides kept different ones, each took the
//! other's close of its duplicate for a death, and a live window refuted a false suspicion
//! about a second after starting.)
//!
//! [`LocalDiscovery`] is this presence as a [`Discovery`]: it reports the peers found as
//! [`Discovered`] events, a closed connection as certainly gone.
//!
//! Not supported yet: Windows (named pipes). This module is compiled on Unix only (Linux,
//! macOS, the BSDs); elsewhere a mesh has no local discovery and needs static peers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};
use statemesh_core::PeerId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::auth::{self, Binding, PROOF_LEN, Role};
use crate::discovery::{Announce, Discovered, Discovery, DiscoveryError, Provenance, Running};
use crate::keyring::{KeyId, SharedKeyring};
use crate::quic::AUDIT_TARGET;

/// The longest socket path this platform accepts.
#[cfg(target_os = "linux")]
pub const MAX_SOCKET_PATH: usize = 107;
/// The longest socket path this platform accepts.
#[cfg(not(target_os = "linux"))]
pub const MAX_SOCKET_PATH: usize = 103;

/// How often the directory is rescanned.
pub const RESCAN: Duration = Duration::from_secs(1);

const PREAMBLE: &[u8; 8] = b"SMLOC\x01\x00\x00";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Local presence could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The mesh directory exists but is not private to this user.
    #[error(
        "{path} must be a directory owned by this user with mode 0700 (found uid {uid}, mode {mode:o})"
    )]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its mode.
        mode: u32,
    },
    /// The socket path would be too long for this platform.
    #[error(
        "socket path {path} is {len} bytes, longer than the {MAX_SOCKET_PATH} this platform allows; set a shorter runtime directory"
    )]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

/// The per-user runtime directory: `$XDG_RUNTIME_DIR/statemesh`, or `/tmp/statemesh-<uid>`
/// when it is unset (created 0700 and checked to be ours).
pub fn default_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("statemesh"),
        _ => std::env::temp_dir().join(format!("statemesh-{}", rustix::process::getuid().as_raw())),
    }
}

/// The directory of mesh `mesh` under `runtime_dir`: the name hashed, never written out.
pub fn mesh_dir(runtime_dir: &Path, mesh: &str) -> PathBuf {
    let digest = Sha256::digest(format!("statemesh mesh dir v1\0{mesh}").as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    runtime_dir.join(hex)
}

fn socket_name(peer: PeerId) -> String {
    format!("{}.s", peer.as_uuid().simple())
}

fn ensure_private_dir(path: &Path) -> Result<(), LocalError> {
    let io = |source| LocalError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io)?;
    let meta = std::fs::metadata(path).map_err(io)?;
    let uid = rustix::process::getuid().as_raw();
    let mode = meta.permissions().mode() & 0o777;
    if meta.uid() != uid || mode & 0o077 != 0 {
        return Err(LocalError::NotPrivate {
            path: path.to_owned(),
            uid: meta.uid(),
            mode,
        });
    }
    Ok(())
}

/// This peer's presence on the local machine. Dropping it stops its tasks and removes its
/// socket file.
#[derive(Debug)]
pub struct LocalPresence {
    path: PathBuf,
    tasks: JoinSet<()>,
    shared: Arc<Shared>,
}

impl Drop for LocalPresence {
    fn drop(&mut self) {
        self.tasks.abort_all();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug)]
struct Shared {
    me: PeerId,
    quic: SocketAddr,
    keys: SharedKeyring,
    mesh: String,
    dir: PathBuf,
    uid: u32,
    /// Peers with a presence connection up (either direction), and which connection.
    connected: Mutex<HashMap<PeerId, Held>>,
    /// Numbers the presence connections.
    serials: AtomicU64,
    /// Connections refused for a foreign uid or a failed proof.
    auth_failures: AtomicU64,
    events: mpsc::UnboundedSender<Discovered>,
}

impl LocalPresence {
    /// Binds this peer's socket in the mesh directory under `runtime_dir` and starts finding
    /// the other local peers of mesh `mesh`, proving with the primary key of `keys` and
    /// accepting any of its keys (read anew at every handshake). It reports on `events`: each
    /// peer authenticated ([`Discovered::Found`], with its QUIC address), each presence
    /// connection closed ([`Discovered::Gone`], certain: the peer is dead or left), and the end
    /// of the first scan ([`Discovered::Settled`], every peer found then contacted).
    pub fn start(
        runtime_dir: &Path,
        mesh: &str,
        me: PeerId,
        quic: SocketAddr,
        keys: impl Into<SharedKeyring>,
        events: mpsc::UnboundedSender<Discovered>,
    ) -> Result<Self, LocalError> {
        ensure_private_dir(runtime_dir)?;
        let dir = mesh_dir(runtime_dir, mesh);
        ensure_private_dir(&dir)?;
        let path = dir.join(socket_name(me));
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(LocalError::PathTooLong { path, len });
        }
        let io = |source| LocalError::Io {
            path: path.clone(),
            source,
        };
        // Bound under a name scans ignore, made private, then renamed into place: a scan never
        // sees a socket file that does not listen yet (it would take it for a stale one).
        let binding = path.with_extension("b");
        let _ = std::fs::remove_file(&binding);
        let listener = UnixListener::bind(&binding).map_err(io)?;
        std::fs::set_permissions(&binding, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&binding, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&binding);
                io(e)
            })?;
        let shared = Arc::new(Shared {
            me,
            quic,
            keys: keys.into(),
            mesh: mesh.to_owned(),
            dir,
            uid: rustix::process::getuid().as_raw(),
            connected: Mutex::new(HashMap::new()),
            serials: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            events,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, shared.clone()));
        tasks.spawn(scan_loop(shared.clone()));
        Ok(Self {
            path,
            tasks,
            shared,
        })
    }

    /// The path of this peer's socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Local connections refused so far: a foreign uid, or a failed proof of the secret.
    pub fn auth_failures(&self) -> u64 {
        self.shared.auth_failures.load(Ordering::Relaxed)
    }
}

impl Running for LocalPresence {
    fn auth_failures(&self) -> u64 {
        Self::auth_failures(self)
    }
}

/// Peers of this machine, through local sockets: a [`LocalPresence`] as a [`Discovery`].
#[derive(Debug, Clone)]
pub struct LocalDiscovery {
    runtime_dir: PathBuf,
    keys: SharedKeyring,
}

impl LocalDiscovery {
    /// Local discovery in `runtime_dir` (see [`default_runtime_dir`]), proving with the primary
    /// key of `keys` and accepting any of its keys.
    pub fn new(runtime_dir: impl Into<PathBuf>, keys: impl Into<SharedKeyring>) -> Self {
        Self {
            runtime_dir: runtime_dir.into(),
            keys: keys.into(),
        }
    }
}

impl Discovery for LocalDiscovery {
    fn name(&self) -> &'static str {
        "local"
    }

    /// A local peer proves the mesh secret on its socket before it is reported.
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
        let presence = LocalPresence::start(
            &self.runtime_dir,
            &me.mesh,
            me.me,
            me.quic_on_this_machine(),
            self.keys,
            events,
        )?;
        Ok(Box::new(presence))
    }
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    conns.spawn(async move {
                        if let Some(presence) = establish(stream, Role::Server, None, shared.clone()).await {
                            hold(presence, shared).await;
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "local socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn scan_loop(shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    let mut first = true;
    loop {
        let mut handshakes = JoinSet::new();
        for (peer, path) in scan(&shared.dir) {
            if peer == shared.me
                || shared
                    .connected
                    .lock()
                    .map(|c| c.contains_key(&peer))
                    .unwrap_or(true)
            {
                continue;
            }
            match UnixStream::connect(&path).await {
                Ok(stream) => {
                    handshakes.spawn(establish(stream, Role::Client, Some(peer), shared.clone()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    // Nobody listens: the process died without removing its socket.
                    tracing::debug!(path = %path.display(), "removing stale socket");
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot reach local peer")
                }
            }
        }
        // The first scan settles once every handshake it started is done.
        while let Some(done) = handshakes.join_next().await {
            if let Ok(Some(presence)) = done {
                conns.spawn(hold(presence, shared.clone()));
            }
        }
        if first {
            first = false;
            let _ = shared.events.send(Discovered::Settled);
        }
        let sleep = tokio::time::sleep(RESCAN);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }
}

fn scan(dir: &Path) -> Vec<(PeerId, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".s")?;
            let peer = statemesh_core::id::Uuid::parse_str(id)
                .ok()
                .and_then(|u| PeerId::from_uuid(u).ok())?;
            Some((peer, e.path()))
        })
        .collect()
}

/// Checks the other end's uid, runs the handshake, and reports the peer found.
async fn establish(
    mut stream: UnixStream,
    role: Role,
    expected: Option<PeerId>,
    shared: Arc<Shared>,
) -> Option<Presence> {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == shared.uid => {}
        Ok(cred) => {
            shared.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: AUDIT_TARGET, uid = cred.uid(), pid = ?cred.pid(), "local connection from a foreign uid refused");
            return None;
        }
        Err(e) => {
            shared.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: AUDIT_TARGET, error = %e, "local connection without peer credentials refused");
            return None;
        }
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut stream, role, &shared)).await {
        Ok(Ok((peer, quic, key))) if expected.is_none_or(|e| e == peer) => {
            let by_lower = match role {
                Role::Client => shared.me < peer,
                Role::Server => peer < shared.me,
            };
            let serial = shared.serials.fetch_add(1, Ordering::Relaxed);
            let (close, closed) = oneshot::channel();
            let held = Held {
                serial,
                by_lower,
                close,
            };
            let kept = shared
                .connected
                .lock()
                .ok()
                .map(|mut c| match c.get(&peer) {
                    None => {
                        c.insert(peer, held);
                        Kept::First
                    }
                    // Both sides dialled each other: keep the connection dialled by the lower
                    // id, as the other side does; the one it replaces is closed by its holder.
                    Some(old) if by_lower && !old.by_lower => {
                        if let Some(old) = c.insert(peer, held) {
                            let _ = old.close.send(());
                        }
                        Kept::Replacing
                    }
                    Some(_) => Kept::Duplicate,
                });
            match kept {
                Some(Kept::First) => {
                    tracing::debug!(target: AUDIT_TARGET, peer = %peer.short(), %key, "local peer authenticated");
                    let _ = shared.events.send(Discovered::Found {
                        peer: Some(peer),
                        addr: quic,
                    });
                }
                // Found already.
                Some(Kept::Replacing) => {}
                Some(Kept::Duplicate) | None => {
                    let _ = stream.write_all(&[DUPLICATE]).await;
                    return None;
                }
            }
            Some(Presence {
                stream,
                peer,
                serial,
                closed,
            })
        }
        Ok(Ok(_)) => {
            shared.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: AUDIT_TARGET, "local peer answered with another id than its socket name");
            None
        }
        Ok(Err(e)) => {
            shared.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: AUDIT_TARGET, error = %e, "local peer failed authentication");
            None
        }
        Err(_) => {
            tracing::debug!("local handshake timed out");
            None
        }
    }
}

/// A presence connection kept (see [`establish`]).
struct Presence {
    stream: UnixStream,
    peer: PeerId,
    serial: u64,
    /// Fires when a connection dialled by the lower id replaced this one.
    closed: oneshot::Receiver<()>,
}

/// The presence connection held for a peer.
#[derive(Debug)]
struct Held {
    serial: u64,
    /// Whether the lower id of the two dialled it.
    by_lower: bool,
    /// Tells its holder to close it as a duplicate.
    close: oneshot::Sender<()>,
}

/// What [`establish`] made of a new connection to a peer.
enum Kept {
    /// The first to it.
    First,
    /// Dialled by the lower id, it replaced the one held (told to close as a duplicate).
    Replacing,
    /// Another is held and stays: this one is closed as a duplicate.
    Duplicate,
}

/// The one byte ever sent on a presence connection after the handshake: the sender closes it
/// as a duplicate (another connection to the same peer is kept), not because it is gone.
const DUPLICATE: u8 = 0xd1;

/// Holds a presence connection until EOF, then reports the peer gone, unless the connection
/// was closed as a duplicate (by this side, or by the other, which says so with [`DUPLICATE`]
/// first) or is no longer the one held for the peer. Nothing else is ever sent on it, so any
/// other end of the stream means the peer's process is gone.
async fn hold(presence: Presence, shared: Arc<Shared>) {
    let Presence {
        mut stream,
        peer,
        serial,
        mut closed,
    } = presence;
    let mut buf = [0u8; 64];
    let gone = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break true,
                Ok(n) if buf[..n].contains(&DUPLICATE) => break false,
                Ok(_) => {}
            },
            _ = &mut closed => {
                // Replaced by the connection dialled by the lower id: no longer held. (Its
                // sender only ever goes without sending when the presence shuts down.)
                let _ = stream.write_all(&[DUPLICATE]).await;
                return;
            }
        }
    };
    let held = shared.connected.lock().is_ok_and(|mut c| {
        let held = c.get(&peer).is_some_and(|h| h.serial == serial);
        if held {
            c.remove(&peer);
        }
        held
    });
    if held && gone {
        let _ = shared.events.send(Discovered::Gone {
            peer,
            certain: true,
        });
    }
}

async fn handshake(
    stream: &mut UnixStream,
    role: Role,
    shared: &Shared,
) -> Result<(PeerId, SocketAddr, KeyId), String> {
    let mut nonce = [0u8; 32];
    rand::rng().fill_bytes(&mut nonce);
    let quic = shared.quic.to_string();
    // Both sides send: preamble, id, nonce, QUIC address (length-prefixed).
    let mut out = PREAMBLE.to_vec();
    out.extend_from_slice(&shared.me.to_bytes());
    out.extend_from_slice(&nonce);
    out.push(u8::try_from(quic.len()).map_err(|_| "address too long")?);
    out.extend_from_slice(quic.as_bytes());
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut head = [0u8; 8 + 16 + 32 + 1];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| e.to_string())?;
    if &head[..8] != PREAMBLE {
        return Err("not a statemesh local socket".into());
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&head[8..24]);
    let peer =
        PeerId::from_uuid(statemesh_core::id::Uuid::from_bytes(id)).map_err(|e| e.to_string())?;
    let their_nonce = &head[24..56];
    let mut addr = vec![0u8; usize::from(head[56])];
    stream
        .read_exact(&mut addr)
        .await
        .map_err(|e| e.to_string())?;
    let their_quic: SocketAddr = std::str::from_utf8(&addr)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("malformed QUIC address")?;
    let (client, server, nonces) = match role {
        Role::Client => (shared.me, peer, [nonce.as_slice(), their_nonce].concat()),
        Role::Server => (peer, shared.me, [their_nonce, nonce.as_slice()].concat()),
    };
    let binding = Binding {
        channel: &nonces,
        client,
        server,
        mesh: &shared.mesh,
    };
    let ring = shared.keys.current();
    stream
        .write_all(&auth::prove(ring.primary(), role, &binding))
        .await
        .map_err(|e| e.to_string())?;
    let mut proof = [0u8; PROOF_LEN];
    stream
        .read_exact(&mut proof)
        .await
        .map_err(|e| e.to_string())?;
    let their_role = match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    };
    let Some((key, _)) = auth::verify_any(&ring, their_role, &binding, &proof) else {
        return Err("wrong mesh secret or mesh".into());
    };
    Ok((peer, their_quic, key))
}
