//! The CRDT library's work, run off the node on the mesh's job thread, one job at a time:
//! applying a received sync message ([`SyncJob`]), generating the sync messages of a burst of
//! local writes ([`PushJob`]). The node keeps ticking, judging views and taking local writes
//! meanwhile (see `docs/architecture.md`, "The runtime").

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use statemesh_core::{PeerId, PushJob, SyncJob};
use tokio::sync::oneshot;

use super::Run;
use super::links::LinkEvent;

/// Work of the CRDT library that runs on the job thread, one at a time (see
/// [`Run::start_job`]).
pub(super) enum Job {
    /// A received sync message to apply, from `peer` on connection `conn`.
    Receive {
        peer: PeerId,
        conn: usize,
        job: Box<SyncJob>,
    },
    /// Sync messages carrying a burst of local writes to generate.
    Push(PushJob),
}

/// A job handed to the job thread: resolves to the job, done, or to an error if it panicked.
pub(super) type Running = oneshot::Receiver<Job>;

/// The mesh's job thread: runs the jobs the driver hands it, one at a time.
///
/// One thread for the mesh's life rather than the runtime's blocking pool, whose threads come
/// and go and each allocate from an arena of the C allocator of their own: a job's copy of the
/// document grows by what it applies, then becomes the document, so with the pool the
/// document's memory was spread over as many arenas as threads had run jobs, each keeping
/// what was freed in it. `throughput --peers 8 --batch 100`: 16 % less anonymous memory per
/// window (docs/under-load.md, eighteenth slice).
pub(super) struct JobThread {
    queue: mpsc::Sender<(Job, oneshot::Sender<Job>)>,
}

impl JobThread {
    /// Starts the thread, `nice` levels below the caller's CPU priority (see
    /// `super::priority`). It ends once this handle is dropped and its last job is done.
    pub(super) fn start(nice: u8) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel::<(Job, oneshot::Sender<Job>)>();
        let (lowered, started) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("statemesh-jobs".into())
            .spawn(move || {
                super::priority::lower_this_thread(nice, "jobs");
                let _ = lowered.send(());
                while let Ok((job, done)) = jobs.recv() {
                    // A job that panics outside the CRDT library's guarded calls drops `done`,
                    // which the driver reads as a failed job; the thread goes on with the next.
                    if let Ok(job) = std::panic::catch_unwind(AssertUnwindSafe(|| job.run())) {
                        let _ = done.send(job);
                    }
                }
            })?;
        // The thread runs at its own priority before the window is up (a test read the
        // thread's nice value before the thread had run its first line).
        let _ = started.recv();
        Ok(Self { queue })
    }

    /// Hands `job` to the thread.
    fn spawn(&self, job: Job) -> Running {
        let (done, running) = oneshot::channel();
        // The thread ends only once this handle is gone; were it gone anyway, `running`
        // resolves to an error and the driver counts the job failed.
        let _ = self.queue.send((job, done));
        running
    }
}

impl Job {
    fn run(mut self) -> Self {
        match &mut self {
            Self::Receive { job, .. } => job.run(),
            Self::Push(p) => p.run(),
        }
        self
    }
}

impl Run {
    /// Starts the next job, if none runs, on the job thread: the retry of a failed job's
    /// messages (see [`statemesh_core::Node::retry_job`]), the sync messages the last frames
    /// carried, to apply (see [`statemesh_core::Node::handle_frame_deferred`]), or else the
    /// push of a burst of local writes, to generate (see
    /// [`statemesh_core::Node::set_push_jobs`]). The CRDT library's work runs there, without
    /// the node, while this task keeps the node ticking.
    ///
    /// A sync job waits while the next frame held can join it (see
    /// [`statemesh_core::Node::join_frame`]): the frames several peers sent while the last job
    /// ran make one job, one apply. A lone frame's job starts at once.
    pub(super) fn start_job(&mut self, job: &mut Option<Running>) {
        if job.is_some() {
            return;
        }
        if let Some(j) = self.shared.node_off_worker().retry_job() {
            let conn = self.links.get(&j.from()).map_or(usize::MAX, |l| l.conn);
            *job = Some(self.jobs.spawn(Job::Receive {
                peer: j.from(),
                conn,
                job: Box::new(j),
            }));
            self.pushed_last = false;
            return;
        }
        let next = match self.new_job.take() {
            Some((conn, j)) if self.can_join(&j) => {
                self.new_job = Some((conn, j));
                return;
            }
            Some((conn, j)) => Job::Receive {
                peer: j.from(),
                conn,
                job: Box::new(j),
            },
            // Receives and pushes take turns: after a push, the frames held while it ran are
            // handled first. Pushes back to back (every peer's answer overdue, so every peer
            // due a push again) left the held frames, those answers among them, unread: with
            // 8 windows writing flat out every window only pushed, and nothing converged.
            None if self.pushed_last && !self.held.is_empty() => return,
            None => match self.shared.node_off_worker().start_push() {
                Some(p) => Job::Push(p),
                None => return,
            },
        };
        self.pushed_last = matches!(next, Job::Push(_));
        *job = Some(self.jobs.spawn(next));
    }

    /// Whether the next frame held may join the sync job `job`, which waits to start (see
    /// [`SyncJob::takes`]).
    fn can_join(&self, job: &SyncJob) -> bool {
        matches!(self.held.front(), Some(LinkEvent::Frame { peer, frame, .. })
            if job.takes(*peer, frame))
    }

    /// A job is done: a received message's changes join the node's document, or generated
    /// sync messages leave. Returns what the turn did (for the slow-turn log).
    pub(super) fn finish_job(
        &mut self,
        done: Result<Job, oneshot::error::RecvError>,
    ) -> &'static str {
        let now = self.shared.now();
        let (peer, conn, result) = match done {
            Ok(Job::Push(p)) => {
                self.shared.node_off_worker().finish_push(now, p);
                return "push generated";
            }
            Ok(Job::Receive { peer, conn, job }) => {
                let result = self.shared.node_off_worker().finish_sync(now, *job);
                (peer, conn, result.map_err(|e| e.to_string()))
            }
            Err(_) => {
                // A job panicked outside the CRDT library's guarded calls: nothing of it can
                // be trusted, and the peers it covered stay busy. Unreachable in practice.
                tracing::error!("a sync job failed (it panicked)");
                return "job failed";
            }
        };
        match result {
            // Local writes made meanwhile join the job's copy off the node too.
            Ok(Some(again)) => self.new_job = Some((conn, again)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(peer = %peer.short(), error = %e, "closing link after a bad frame");
                self.close_link(peer, conn);
            }
        }
        "sync applied"
    }
}
