//! Persistence: each peer appends its document's incremental saves to its own file and replaces
//! it with a compacted snapshot now and then; startup merges every file of the mesh.
//!
//! Files live in `<state dir>/<mesh hash>/<peer id>.am` (mode 0600, directory 0700). Appends
//! holding this window's own writes are written and `fdatasync`ed before the node is told they
//! are durable (appends of received changes alone are written, not synced: see
//! [`Persist::Append`]); snapshots are written to
//! a temporary file, synced, renamed over the old file, and the directory synced. Merging is
//! idempotent, so no lock is needed between windows. A damaged file is salvaged (every readable
//! change kept), moved aside as `<name>.corrupt-<n>`, and reported; the rest comes back from
//! peers.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use statemesh_core::{Node, PeerId, Persist};

/// A file of the mesh directory that was damaged and moved aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Salvaged {
    /// Where the damaged file now is.
    pub moved_to: PathBuf,
    /// Whether anything could be read from it.
    pub partly_read: bool,
}

/// What loading the mesh directory found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadSummary {
    /// Files merged whole.
    pub loaded: usize,
    /// Damaged files, moved aside.
    pub salvaged: Vec<Salvaged>,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The persistent store of one peer.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    file: PathBuf,
    append: Option<File>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Store {
    /// Opens (creating, 0700) the mesh directory `dir` for peer `me`.
    pub fn open(dir: &Path, me: PeerId) -> Result<Self, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        Ok(Self {
            dir: dir.to_owned(),
            file: dir.join(format!("{}.am", me.as_uuid().simple())),
            append: None,
        })
    }

    /// Merges every `.am` file of the directory into `node`.
    pub fn load_all(&self, node: &mut Node) -> Result<LoadSummary, StoreError> {
        let mut summary = LoadSummary::default();
        let entries = fs::read_dir(&self.dir).map_err(io(&self.dir))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "am"))
            .collect();
        paths.sort();
        for path in paths {
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read a state file; skipped");
                    continue;
                }
            };
            if bytes.is_empty() {
                continue;
            }
            match node.load(&bytes) {
                Ok(report) if report.complete => summary.loaded += 1,
                outcome => {
                    let partly_read = outcome.is_ok();
                    let moved_to = self.move_aside(&path)?;
                    tracing::warn!(
                        path = %path.display(),
                        moved_to = %moved_to.display(),
                        partly_read,
                        "damaged state file: kept what could be read, moved it aside; peers will supply the rest"
                    );
                    summary.salvaged.push(Salvaged {
                        moved_to,
                        partly_read,
                    });
                }
            }
        }
        Ok(summary)
    }

    fn move_aside(&self, path: &Path) -> Result<PathBuf, StoreError> {
        for n in 0.. {
            let target = path.with_extension(format!("am.corrupt-{n}"));
            if !target.exists() {
                fs::rename(path, &target).map_err(io(path))?;
                return Ok(target);
            }
        }
        unreachable!("some suffix is free")
    }

    /// Writes persist outputs in order; appends are synced once, at the end, if any of them
    /// asks to be (see [`Persist::Append`]'s `sync`: this window's own writes). Returns
    /// whether it synced.
    pub fn write_batch(&mut self, batch: &[Persist]) -> Result<bool, StoreError> {
        let mut unsynced = false;
        for p in batch {
            self.write_one(p)?;
            match p {
                Persist::Append { sync, .. } => unsynced |= *sync,
                // Synced, and it replaced the file the appends before it went to.
                Persist::Snapshot { .. } => unsynced = false,
            }
        }
        if unsynced && let Some(f) = self.append.as_mut() {
            f.sync_data().map_err(io(&self.file))?;
        }
        Ok(unsynced)
    }

    /// Writes one persist output (synced as [`write_batch`](Self::write_batch) says).
    pub fn write(&mut self, persist: &Persist) -> Result<bool, StoreError> {
        self.write_batch(std::slice::from_ref(persist))
    }

    /// Writes one output: an append unsynced, a snapshot synced.
    fn write_one(&mut self, persist: &Persist) -> Result<(), StoreError> {
        match persist {
            Persist::Append { bytes, .. } => {
                if self.append.is_none() {
                    let f = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o600)
                        .open(&self.file)
                        .map_err(io(&self.file))?;
                    self.append = Some(f);
                }
                if let Some(f) = self.append.as_mut() {
                    f.write_all(bytes).map_err(io(&self.file))?;
                }
                Ok(())
            }
            Persist::Snapshot { bytes, .. } => {
                let tmp = self.file.with_extension("am.tmp");
                let mut f = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io(&tmp))?;
                // Encoded here, on the store's thread: a full save of a large document takes
                // long, and the node is not held meanwhile (see `Snapshot`).
                f.write_all(bytes.bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io(&tmp))?;
                fs::rename(&tmp, &self.file).map_err(io(&self.file))?;
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io(&self.dir))?;
                self.append = None;
                Ok(())
            }
        }
    }

    /// This peer's file.
    pub fn path(&self) -> &Path {
        &self.file
    }
}

/// Writes persist outputs on a thread of its own, so that `fdatasync` never stalls the mesh's
/// runtime. Outputs are written in order; whatever queued up while the disk was busy is written
/// as one batch with one sync (group commit). After a failure nothing more is written or
/// reported durable (the failure is reported once). Dropping the writer lets the thread finish what
/// was queued, then end.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Option<std::sync::mpsc::Sender<(Persist, bool)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread. `done` is called after each batch with the last sequence number
    /// written, if an output of the batch was queued to be reported, or with the error that
    /// stopped it.
    pub(crate) fn spawn(
        mut store: Store,
        done: impl Fn(Result<u64, StoreError>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<(Persist, bool)>();
        let thread = std::thread::Builder::new()
            .name("statemesh-store".into())
            .spawn(move || {
                let mut batch = Vec::new();
                while let Ok(first) = rx.recv() {
                    batch.clear();
                    let mut report = false;
                    for (persist, r) in std::iter::once(first).chain(rx.try_iter()) {
                        report |= r;
                        batch.push(persist);
                    }
                    let last = batch.last().map_or(0, Persist::seq);
                    let result = store.write_batch(&batch);
                    let failed = result.is_err();
                    if report || failed {
                        done(result.map(|_synced| last));
                    }
                    if failed {
                        // The file may now miss bytes that later appends depend on: stop, so
                        // that no later write is ever reported durable.
                        break;
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues one output; `report`: whether its batch's `done` is owed (local writes wait for
    /// it; see [`statemesh_core::Node::awaits_persist`]).
    pub(crate) fn write(&self, persist: Persist, report: bool) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((persist, report));
        }
    }

    /// Waits until everything queued is written (blocking).
    pub(crate) fn finish(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(seq: u64, bytes: &[u8], sync: bool) -> Persist {
        Persist::Append {
            seq,
            bytes: bytes.to_vec(),
            sync,
        }
    }

    /// A batch is synced if any append of it asks to be, and only then; every byte is written
    /// either way, in order.
    #[test]
    fn a_batch_is_synced_only_for_appends_that_ask() {
        let dir = tempfile::tempdir().expect("a directory");
        let me = PeerId::generate(1, &mut rand::rng());
        let mut store = Store::open(dir.path(), me).expect("opens");
        assert!(
            !store
                .write_batch(&[append(1, b"ab", false)])
                .expect("writes")
        );
        assert!(
            store
                .write_batch(&[append(2, b"cd", true), append(3, b"ef", false)])
                .expect("writes")
        );
        assert!(
            store
                .write_batch(&[append(4, b"gh", false), append(5, b"ij", true)])
                .expect("writes")
        );
        assert!(!store.write(&append(6, b"kl", false)).expect("writes"));
        assert_eq!(
            fs::read(store.path()).expect("reads"),
            b"abcdefghijkl".to_vec()
        );
    }
}
