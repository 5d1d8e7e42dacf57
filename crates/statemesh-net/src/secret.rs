//! The mesh secret: 32 random bytes in a 0600 file, created on first use.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

/// Length of a secret in bytes.
pub const SECRET_LEN: usize = 32;

/// The shared secret that authenticates peers of a mesh. Copy the file to other machines to let
/// them join.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; SECRET_LEN]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A secret file that could not be read or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// No per-user config directory could be found (no `$HOME`).
    #[error("no per-user config directory (is $HOME set?)")]
    NoConfigDir,
    /// Reading or writing the file failed.
    #[error("secret file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file does not hold exactly 32 bytes.
    #[error("secret file {path} holds {len} bytes, expected 32")]
    BadLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The file is readable by other users.
    #[error(
        "secret file {path} has mode {mode:o}: it must not be readable by group or others (chmod 600)"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The file exists and overwriting was not asked for.
    #[error("secret file {0} already exists")]
    Exists(PathBuf),
    /// A keyring file with an entry that cannot be read (see [`crate::keyring`]).
    #[error("keyring file {path}{}: {reason}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line, when one is to blame.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// Removing the only key of a keyring.
    #[error(
        "key {0} is the last key of the keyring: install and use another key before removing it"
    )]
    LastKey(crate::keyring::KeyId),
    /// Removing the primary key.
    #[error("key {0} is the primary key: `use` another installed key first, then remove it")]
    RemovePrimary(crate::keyring::KeyId),
    /// Using or removing a key that is not installed.
    #[error("key {0} is not installed (see `statemesh keys list`)")]
    NotInstalled(crate::keyring::KeyId),
    /// Installing a key beyond [`crate::keyring::MAX_KEYS`].
    #[error(
        "the keyring holds {} keys already: remove one first",
        crate::keyring::MAX_KEYS
    )]
    TooManyKeys,
    /// A key id that is not 16 hex digits.
    #[error("{0:?} is not a key id (16 hex digits, as `statemesh keys list` shows)")]
    BadKeyId(String),
    /// A key given as text that is not 64 hex digits (nor a 32-byte secret file).
    #[error("{0}: not a key (64 hex digits, or a 32-byte secret file)")]
    BadKey(String),
    /// The keyring is held in memory only (the mesh was built with a secret, not a file), or
    /// the change could not be applied to this window.
    #[error("keyring: {0}")]
    Unavailable(&'static str),
}

impl Secret {
    /// A secret from raw bytes (tests, or a secret kept elsewhere).
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh random secret from the OS.
    pub fn generate() -> Self {
        let mut b = [0u8; SECRET_LEN];
        rand::rng().fill_bytes(&mut b);
        Self(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// The default location: `<config dir>/statemesh/secret` (`$XDG_CONFIG_HOME` or
    /// `~/.config` on Linux, `~/Library/Application Support` on macOS).
    pub fn default_path() -> Result<PathBuf, SecretError> {
        Ok(dirs::config_dir()
            .ok_or(SecretError::NoConfigDir)?
            .join("statemesh")
            .join("secret"))
    }

    /// Reads the secret at `path`, creating it (and its directory, 0700) on first use.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        match Self::load(path) {
            Err(SecretError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                match Self::create(path, false) {
                    // Another process created it first: use theirs.
                    Err(SecretError::Exists(_)) => Self::load(path),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Reads the secret at `path`, refusing a file readable by others.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let io_err = |source| SecretError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = open_private(path)?;
        let mut buf = Vec::with_capacity(SECRET_LEN + 1);
        Read::by_ref(&mut file)
            .take(SECRET_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(io_err)?;
        let bytes: [u8; SECRET_LEN] =
            buf.as_slice()
                .try_into()
                .map_err(|_| SecretError::BadLength {
                    path: path.to_owned(),
                    len: buf.len(),
                })?;
        Ok(Self(bytes))
    }

    /// Writes a fresh secret to `path` with mode 0600 (set at creation, so there is no moment
    /// when another user could read it). Refuses to overwrite unless `force`.
    pub fn create(path: &Path, force: bool) -> Result<Self, SecretError> {
        let secret = Self::generate();
        secret.write(path, force)?;
        Ok(secret)
    }

    /// Writes this secret to `path` with mode 0600 (set at creation), as 32 raw bytes: what
    /// [`create`](Self::create) does with a fresh one. Refuses to overwrite unless `force`.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), SecretError> {
        let io_err = |source| SecretError::Io {
            path: path.to_owned(),
            source,
        };
        create_parent(path, path)?;
        let secret = self;
        // Write to a private temporary file, then move it into place: readers never see a
        // partial secret.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err)?;
        file.write_all(&secret.0)
            .and_then(|()| file.sync_all())
            .map_err(io_err)?;
        let placed = if force {
            fs::rename(&tmp, path)
        } else {
            // hard_link fails if the target exists: no overwrite, no race.
            fs::hard_link(&tmp, path).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    io::Error::new(io::ErrorKind::AlreadyExists, "exists")
                } else {
                    e
                }
            })
        };
        let _ = fs::remove_file(&tmp);
        match placed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(SecretError::Exists(path.to_owned()))
            }
            Err(e) => Err(io_err(e)),
        }
    }
}

/// Opens the secret or keyring file at `path` for reading, refusing it if group or others may
/// read or write it.
pub(crate) fn open_private(path: &Path) -> Result<fs::File, SecretError> {
    let io_err = |source| SecretError::Io {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(io_err)?;
    let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(file)
}

/// Creates the directory that will hold `path` (mode 0700) if it is missing; an error names
/// `blame`.
pub(crate) fn create_parent(path: &Path, blame: &Path) -> Result<(), SecretError> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| SecretError::Io {
                path: blame.to_owned(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cfg/statemesh/secret");
        let a = Secret::load_or_create(&path).expect("creates");
        let b = Secret::load_or_create(&path).expect("reads");
        assert_eq!(a, b);
        let mode = fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().expect("dir"))
            .expect("exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert!(matches!(
            Secret::create(&path, false),
            Err(SecretError::Exists(_))
        ));
        let c = Secret::create(&path, true).expect("forced");
        assert_ne!(a, c);
    }

    #[test]
    fn bad_files_are_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = dir.path().join("short");
        fs::write(&short, b"abc").expect("write");
        fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(
            Secret::load(&short),
            Err(SecretError::BadLength { len: 3, .. })
        ));
        let open = dir.path().join("open");
        fs::write(&open, [0u8; 32]).expect("write");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Secret::load(&open).expect_err("too open");
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
