//! The mesh keyring: one *primary* key that this window proves with, and further *accepted*
//! keys that peers may prove with. It is what makes rotating the mesh secret possible without
//! stopping a window (see `docs/security.md`, "Rotating the mesh secret").
//!
//! # The file
//!
//! The keyring lives where the secret file always lived (`<config dir>/statemesh/secret`), mode
//! 0600, refused if group or others may read it. Two formats are read:
//!
//! - the historical secret file: exactly 32 raw bytes, read as a keyring of one key (primary);
//! - a keyring, text, written whenever a keyring is changed:
//!
//!   ```text
//!   statemesh-keyring v1
//!   primary 6b1f…(64 hex digits)
//!   accept 0c3a…(64 hex digits)
//!   ```
//!
//!   exactly one `primary` line, at most [`MAX_KEYS`] keys in all, no key twice; blank lines and
//!   lines starting with `#` are ignored. Any other line is a corrupt entry and the whole file is
//!   refused, with its line number.
//!
//! Changes are written to a private temporary file, synced and renamed into place, under an
//! advisory lock (`<file>.lock`), so a reader never sees half a keyring and two editors never
//! lose each other's change.
//!
//! # Key ids
//!
//! A key is named by its [`KeyId`]: 16 hex digits of SHA-256 over a label and the key. Logs,
//! metrics, `status` and the `keys` command show ids, never keys; an id reveals nothing usable
//! about a 32-byte random key.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use statemesh_core::MeshTag;
use tokio::sync::watch;

use crate::secret::{SECRET_LEN, Secret, SecretError, create_parent, open_private};

/// The first line of a keyring file.
pub const HEADER: &str = "statemesh-keyring v1";

/// Most keys a keyring holds (a verifier tries each accepted key on every connection).
pub const MAX_KEYS: usize = 16;

/// Largest keyring file read (16 keys take about 1.2 KiB).
const MAX_FILE: u64 = 64 * 1024;

/// The public name of a key: the first 8 bytes of SHA-256("statemesh key id v1\0" ‖ key), shown
/// as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of `secret`.
    pub fn of(secret: &Secret) -> Self {
        let mut h = Sha256::new();
        h.update(b"statemesh key id v1\0");
        h.update(secret.as_bytes());
        let d = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl std::str::FromStr for KeyId {
    type Err = SecretError;

    /// Parses 16 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SecretError::BadKeyId(s.chars().take(40).collect());
        if s.len() != 16 {
            return Err(bad());
        }
        let mut id = [0u8; 8];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Self(id))
    }
}

/// The keys of one mesh: the primary first, then the other accepted keys, in the order they
/// were installed.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring {
    /// Never empty; `keys[0]` is the primary.
    keys: Vec<Secret>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary_id())
            .field("accepted", &self.ids())
            .finish()
    }
}

impl From<Secret> for Keyring {
    fn from(secret: Secret) -> Self {
        Self::single(secret)
    }
}

impl Keyring {
    /// A keyring of one key (what a historical secret file holds).
    pub fn single(secret: Secret) -> Self {
        Self { keys: vec![secret] }
    }

    /// The key this window proves with.
    pub fn primary(&self) -> &Secret {
        &self.keys[0]
    }

    /// The primary key's id.
    pub fn primary_id(&self) -> KeyId {
        KeyId::of(self.primary())
    }

    /// Every accepted key, the primary first.
    pub fn keys(&self) -> &[Secret] {
        &self.keys
    }

    /// The ids of every accepted key, the primary first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(KeyId::of).collect()
    }

    /// The key with id `id`, if installed.
    pub fn get(&self, id: KeyId) -> Option<&Secret> {
        self.keys.iter().find(|k| KeyId::of(k) == id)
    }

    /// Whether key `id` is accepted.
    pub fn contains(&self, id: KeyId) -> bool {
        self.get(id).is_some()
    }

    /// The mDNS and hello tag of mesh `mesh` under the primary key.
    pub fn primary_tag(&self, mesh: &str) -> MeshTag {
        MeshTag::derive(self.primary().as_bytes(), mesh)
    }

    /// The tags of mesh `mesh` under every accepted key, the primary's first.
    pub fn accepted_tags(&self, mesh: &str) -> Vec<MeshTag> {
        self.keys
            .iter()
            .map(|k| MeshTag::derive(k.as_bytes(), mesh))
            .collect()
    }

    /// Adds `secret` as an accepted key (not primary). Installing a key already there changes
    /// nothing. Refused beyond [`MAX_KEYS`].
    pub fn install(&mut self, secret: Secret) -> Result<KeyId, SecretError> {
        let id = KeyId::of(&secret);
        if self.contains(id) {
            return Ok(id);
        }
        if self.keys.len() >= MAX_KEYS {
            return Err(SecretError::TooManyKeys);
        }
        self.keys.push(secret);
        Ok(id)
    }

    /// Makes installed key `id` the primary; the former primary stays accepted.
    pub fn use_key(&mut self, id: KeyId) -> Result<(), SecretError> {
        let at = self
            .keys
            .iter()
            .position(|k| KeyId::of(k) == id)
            .ok_or(SecretError::NotInstalled(id))?;
        let key = self.keys.remove(at);
        self.keys.insert(0, key);
        Ok(())
    }

    /// Removes accepted key `id`. Refuses the last key, and the primary (make another key
    /// primary first), and a key that is not installed.
    pub fn remove(&mut self, id: KeyId) -> Result<(), SecretError> {
        let at = self
            .keys
            .iter()
            .position(|k| KeyId::of(k) == id)
            .ok_or(SecretError::NotInstalled(id))?;
        if self.keys.len() == 1 {
            return Err(SecretError::LastKey(id));
        }
        if at == 0 {
            return Err(SecretError::RemovePrimary(id));
        }
        self.keys.remove(at);
        Ok(())
    }

    /// Parses a file's contents (either format; see the module docs).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, SecretError> {
        if !bytes.starts_with(HEADER.as_bytes()) {
            let key: [u8; SECRET_LEN] = bytes.try_into().map_err(|_| SecretError::BadLength {
                path: path.to_owned(),
                len: bytes.len(),
            })?;
            return Ok(Self::single(Secret::from_bytes(key)));
        }
        let corrupt = |line: usize, reason: &str| SecretError::Corrupt {
            path: path.to_owned(),
            line: (line > 0).then_some(line),
            reason: reason.to_owned(),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt(1, "not UTF-8 text"))?;
        let mut primary = None;
        let mut others = Vec::new();
        for (n, line) in text.lines().enumerate().skip(1) {
            let line_no = n + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (kind, hex) = line
                .split_once(' ')
                .ok_or_else(|| corrupt(line_no, "expected `primary <key>` or `accept <key>`"))?;
            let key =
                parse_key(hex.trim()).ok_or_else(|| corrupt(line_no, "a key is 64 hex digits"))?;
            match kind {
                "primary" if primary.is_some() => {
                    return Err(corrupt(line_no, "a second primary key"));
                }
                "primary" => primary = Some(key),
                "accept" => others.push(key),
                _ => {
                    return Err(corrupt(
                        line_no,
                        "expected `primary <key>` or `accept <key>`",
                    ));
                }
            }
        }
        let primary = primary.ok_or_else(|| corrupt(1, "no primary key"))?;
        let mut keys = vec![primary];
        for k in others {
            if keys.contains(&k) {
                return Err(corrupt(0, &format!("key {} appears twice", KeyId::of(&k))));
            }
            keys.push(k);
        }
        if keys.len() > MAX_KEYS {
            return Err(corrupt(0, &format!("more than {MAX_KEYS} keys")));
        }
        Ok(Self { keys })
    }

    /// The file contents of this keyring (the text format).
    pub fn to_file(&self) -> String {
        let mut out = format!(
            "{HEADER}\n# the primary key proves; every key here is accepted. Ids: `statemesh keys list`.\n"
        );
        for (i, k) in self.keys.iter().enumerate() {
            let kind = if i == 0 { "primary" } else { "accept" };
            let hex: String = k.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
            out.push_str(&format!("{kind} {hex}\n"));
        }
        out
    }

    /// Reads the keyring at `path`, refusing a file readable by others, of the wrong length
    /// (historical format) or with a corrupt entry.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let io_err = |source| SecretError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = open_private(path)?;
        let mut buf = Vec::new();
        Read::by_ref(&mut file)
            .take(MAX_FILE + 1)
            .read_to_end(&mut buf)
            .map_err(io_err)?;
        if buf.len() as u64 > MAX_FILE {
            return Err(SecretError::Corrupt {
                path: path.to_owned(),
                line: None,
                reason: format!("larger than {MAX_FILE} bytes"),
            });
        }
        Self::parse(path, &buf)
    }

    /// Reads the keyring at `path`, creating a keyring of one fresh key (in the historical
    /// format, which every version reads) on first use.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        match Self::load(path) {
            Err(SecretError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                match Secret::create(path, false) {
                    Err(SecretError::Exists(_)) => Self::load(path),
                    Ok(_) => Self::load(path),
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }

    /// Writes this keyring to `path` (mode 0600, atomically).
    pub fn store(&self, path: &Path) -> Result<(), SecretError> {
        let io_err = |source| SecretError::Io {
            path: path.to_owned(),
            source,
        };
        create_parent(path, path)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(self.to_file().as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(io_err)
    }

    /// Changes the keyring file at `path` with `change`, under the file's lock: reads it
    /// (creating it if absent), applies `change`, writes it back if it changed. Returns the
    /// keyring as written and what `change` returned.
    pub fn edit<T>(
        path: &Path,
        change: impl FnOnce(&mut Self) -> Result<T, SecretError>,
    ) -> Result<(Self, T), SecretError> {
        let _lock = FileLock::take(path)?;
        let mut ring = Self::load_or_create(path)?;
        let before = ring.clone();
        let out = change(&mut ring)?;
        if ring != before {
            ring.store(path)?;
        }
        Ok((ring, out))
    }
}

fn parse_key(hex: &str) -> Option<Secret> {
    if hex.len() != 2 * SECRET_LEN || !hex.is_ascii() {
        return None;
    }
    let mut key = [0u8; SECRET_LEN];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(Secret::from_bytes(key))
}

/// Reads one key from a file: the primary key of a keyring file, a 32-byte secret file, or 64
/// hex digits; refused, as the secret file is, if group or others may read it.
pub fn read_key_file(path: &Path) -> Result<Secret, SecretError> {
    match Keyring::load(path) {
        Ok(ring) => Ok(ring.primary().clone()),
        Err(e @ SecretError::BadLength { .. }) => {
            let text = fs::read_to_string(path).unwrap_or_default();
            parse_key(text.trim()).ok_or(e)
        }
        Err(e) => Err(e),
    }
}

/// An advisory lock on `<file>.lock`, held until dropped.
struct FileLock(fs::File);

impl FileLock {
    fn take(path: &Path) -> Result<Self, SecretError> {
        let lock = lock_path(path);
        let io_err = |source| SecretError::Io {
            path: lock.clone(),
            source,
        };
        create_parent(path, &lock)?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock)
            .map_err(io_err)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(e.into()))?;
        Ok(Self(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    path.with_file_name(name)
}

/// A keyring shared by everything of one window that authenticates (the QUIC endpoint, local
/// presence, mDNS): they read the current keyring at every handshake, and may watch it change.
#[derive(Clone, Debug)]
pub struct SharedKeyring(Arc<watch::Sender<Arc<Keyring>>>);

impl SharedKeyring {
    /// A shared keyring holding `ring`.
    pub fn new(ring: Keyring) -> Self {
        Self(Arc::new(watch::Sender::new(Arc::new(ring))))
    }

    /// The keyring now.
    pub fn current(&self) -> Arc<Keyring> {
        self.0.borrow().clone()
    }

    /// Replaces the keyring (if different); watchers are told.
    pub fn set(&self, ring: Keyring) -> bool {
        self.0.send_if_modified(|r| {
            if **r == ring {
                return false;
            }
            *r = Arc::new(ring);
            true
        })
    }

    /// A receiver told of every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Keyring>> {
        self.0.subscribe()
    }
}

impl From<Secret> for SharedKeyring {
    fn from(secret: Secret) -> Self {
        Self::new(Keyring::single(secret))
    }
}

impl From<Keyring> for SharedKeyring {
    fn from(ring: Keyring) -> Self {
        Self::new(ring)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn key(b: u8) -> Secret {
        Secret::from_bytes([b; 32])
    }

    #[test]
    fn install_use_remove_and_their_refusals() {
        let mut r = Keyring::single(key(1));
        let (a, b) = (KeyId::of(&key(1)), KeyId::of(&key(2)));
        assert!(matches!(r.remove(a), Err(SecretError::LastKey(_))));
        assert!(matches!(r.use_key(b), Err(SecretError::NotInstalled(_))));
        assert_eq!(r.install(key(2)).expect("installs"), b);
        assert_eq!(r.install(key(2)).expect("again"), b);
        assert_eq!(r.ids(), vec![a, b]);
        assert!(matches!(r.remove(a), Err(SecretError::RemovePrimary(_))));
        r.use_key(b).expect("uses");
        assert_eq!(r.primary_id(), b);
        r.remove(a).expect("removes");
        assert_eq!(r.ids(), vec![b]);
        assert!(matches!(r.remove(a), Err(SecretError::NotInstalled(_))));
        for i in 3..=17 {
            r.install(key(i)).expect("room");
        }
        assert!(matches!(r.install(key(18)), Err(SecretError::TooManyKeys)));
        let e = SecretError::LastKey(b).to_string();
        assert!(e.contains("last key"), "{e}");
    }

    #[test]
    fn files_round_trip_and_legacy_files_are_a_keyring_of_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("statemesh/secret");
        let legacy = Secret::create(&path, false).expect("creates");
        let r = Keyring::load(&path).expect("legacy");
        assert_eq!(r.keys(), std::slice::from_ref(&legacy));
        let (r, id) = Keyring::edit(&path, |r| r.install(key(9))).expect("edits");
        assert_eq!(r.ids()[1], id);
        let back = Keyring::load(&path).expect("reads");
        assert_eq!(back, r);
        let mode = fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A window started from this file proves with the same key as before.
        assert_eq!(back.primary(), &legacy);
        assert_eq!(
            "0102030405060708".parse::<KeyId>().expect("parses").0,
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert!("01020304".parse::<KeyId>().is_err());
        assert!("zz02030405060708".parse::<KeyId>().is_err());
        assert!("é102030405060708".parse::<KeyId>().is_err());
    }

    #[test]
    fn corrupt_and_open_files_are_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ring");
        let good = Keyring::single(key(1)).to_file();
        let cases = [
            (format!("{good}accept 12\n"), "line 4"),
            (
                format!("{good}primary {}\n", "ab".repeat(32)),
                "second primary",
            ),
            (format!("{good}bogus {}\n", "ab".repeat(32)), "line 4"),
            (format!("{good}accept {}\n", "01".repeat(32)), "twice"),
            (
                format!("{HEADER}\naccept {}\n", "ab".repeat(32)),
                "no primary",
            ),
            (format!("{HEADER}\n\u{0}\u{ff}"), "line 2"),
        ];
        for (text, want) in cases {
            fs::write(&path, text.as_bytes()).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
            let e = Keyring::load(&path).expect_err("corrupt").to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
        let mut bytes = HEADER.as_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        fs::write(&path, &bytes).expect("write");
        assert!(Keyring::load(&path).is_err());
        fs::write(&path, good.as_bytes()).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = Keyring::load(&path).expect_err("too open").to_string();
        assert!(e.contains("chmod 600"), "{e}");
        // An edit of a refused file changes nothing.
        assert!(Keyring::edit(&path, |r| r.install(key(5))).is_err());
        assert_eq!(fs::read(&path).expect("read"), good.as_bytes());
    }
}
