//! The mesh keyring as a window sees it: [`Mesh::keyring`](crate::Mesh::keyring).
//!
//! A window proves with the keyring's primary key and accepts peers proving with any of its
//! keys. The operations here are the ones `statemesh keys` and the sidecar's `keys.*` methods
//! use: on a mesh built from a keyring file they change the file (under its lock, atomically) and
//! this window at once; every other window of this machine using that file picks the change up
//! within [`KEYRING_POLL`] (it watches the file). Windows on other machines use their own copy of
//! the file: run the same command there (see `docs/security.md`, "Rotating the mesh secret").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use statemesh_core::PeerId;
use statemesh_net::keyring::{KeyId, Keyring, SharedKeyring};
use statemesh_net::secret::{Secret, SecretError};
use tokio::sync::watch;

use crate::error::KeyringError;
use crate::shared::Shared;

/// How often a window looks at its keyring file for changes made by another process.
pub const KEYRING_POLL: Duration = Duration::from_millis(250);

/// The keyring of a window, by key ids (never the keys).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeyringInfo {
    /// The id of the key this window proves with.
    pub primary: String,
    /// The ids of every accepted key, the primary first.
    pub accepted: Vec<String>,
    /// The keyring file, if the mesh has one (none when built with
    /// [`MeshBuilder::secret`](crate::MeshBuilder::secret) or
    /// [`MeshBuilder::keyring`](crate::MeshBuilder::keyring)).
    pub file: Option<PathBuf>,
}

impl KeyringInfo {
    pub(crate) fn of(ring: &Keyring, file: Option<&Path>) -> Self {
        Self {
            primary: ring.primary_id().to_string(),
            accepted: ring.ids().iter().map(ToString::to_string).collect(),
            file: file.map(Path::to_owned),
        }
    }
}

/// A window's keyring: list, install, use, remove (see the module docs).
#[derive(Clone, Debug)]
pub struct KeyringHandle {
    pub(crate) shared: Arc<Shared>,
}

impl KeyringHandle {
    fn keys(&self) -> &SharedKeyring {
        self.shared.keys()
    }

    /// The keyring now, by key ids.
    pub fn list(&self) -> KeyringInfo {
        KeyringInfo::of(&self.keys().current(), self.shared.key_file())
    }

    /// Installs `key` as an accepted key (not primary; installing it again changes nothing).
    /// Returns its id. Refused beyond [`MAX_KEYS`](statemesh_net::keyring::MAX_KEYS) keys.
    pub fn install(&self, key: Secret) -> Result<KeyId, KeyringError> {
        self.edit(|r| r.install(key))
    }

    /// Makes installed key `id` the one this window proves with (the former primary stays
    /// accepted). Refused, changing nothing, if `id` is not installed.
    pub fn use_key(&self, id: KeyId) -> Result<(), KeyringError> {
        self.edit(|r| r.use_key(id))
    }

    /// Removes accepted key `id`: peers proving with it are refused from now on, and links
    /// they set up with it are closed unless they prove another key this window holds. Refused,
    /// changing nothing, for the last key, the primary key (use another first) or a key not
    /// installed.
    pub fn remove(&self, id: KeyId) -> Result<(), KeyringError> {
        self.edit(|r| r.remove(id))
    }

    /// Reads the keyring file again now (a window also does every [`KEYRING_POLL`]). A file
    /// that cannot be read (bad permissions, a corrupt entry) is refused with its error and
    /// the window keeps its keyring.
    pub fn reload(&self) -> Result<KeyringInfo, KeyringError> {
        let path = self.shared.key_file().ok_or(KeyringError::NoFile)?;
        let ring = Keyring::load(path)?;
        self.keys().set(ring);
        Ok(self.list())
    }

    /// The key each linked peer proved with, by id (at link setup, or when the link last
    /// proved again after a change of keys).
    pub fn peer_keys(&self) -> Vec<(PeerId, String)> {
        self.shared
            .link_keys()
            .into_iter()
            .map(|(p, k)| (p, k.to_string()))
            .collect()
    }

    /// The keyring now and its changes (this window's own, and those read from the file).
    pub fn watch(&self) -> watch::Receiver<Arc<Keyring>> {
        self.keys().subscribe()
    }

    fn edit<T>(
        &self,
        change: impl FnOnce(&mut Keyring) -> Result<T, SecretError>,
    ) -> Result<T, KeyringError> {
        let (ring, out) = match self.shared.key_file() {
            Some(path) => Keyring::edit(path, change)?,
            None => {
                let mut ring = (*self.keys().current()).clone();
                let out = change(&mut ring)?;
                (ring, out)
            }
        };
        self.keys().set(ring);
        Ok(out)
    }
}

/// What identifies a version of the keyring file without reading it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    changed: i64,
}

impl FileStamp {
    pub(crate) fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: m.modified().ok(),
            len: m.len(),
            inode: m.ino(),
            changed: m.ctime_nsec() ^ (m.ctime() << 30),
        })
    }
}

/// Watches the keyring file at `path`, applying each readable new version to `keys` (until the
/// task is aborted). A version that cannot be read is refused (logged once per version) and the
/// window keeps its keyring.
pub(crate) async fn watch_file(path: PathBuf, keys: SharedKeyring) {
    // Not read yet: the first look applies whatever changed since the window loaded it.
    let mut seen = None;
    let mut interval = tokio::time::interval(KEYRING_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let stamp = FileStamp::of(&path);
        if stamp == seen {
            continue;
        }
        seen = stamp;
        match Keyring::load(&path) {
            Ok(ring) => {
                let primary = ring.primary_id();
                if keys.set(ring) {
                    tracing::info!(target: statemesh_net::quic::AUDIT_TARGET, file = %path.display(), %primary, "keyring changed");
                }
            }
            Err(e) => {
                tracing::error!(target: statemesh_net::quic::AUDIT_TARGET, error = %e, "keyring file refused; keeping the keys in use");
            }
        }
    }
}
