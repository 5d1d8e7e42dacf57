//! The CRDT library's work, run off the node on a blocking thread, one job at a time: applying
//! a received sync message ([`SyncJob`]), generating the sync messages of a burst of local
//! writes ([`PushJob`]). The node keeps ticking, judging views and taking local writes
//! meanwhile (see `docs/architecture.md`, "The runtime").

use statemesh_core::{PeerId, PushJob, SyncJob};
use tokio::task::JoinHandle;

use super::Run;
use super::links::LinkEvent;

/// Work of the CRDT library that runs on a blocking thread, one at a time (see
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

/// Runs a job on a blocking thread.
fn spawn(job: Job) -> JoinHandle<Job> {
    tokio::task::spawn_blocking(move || job.run())
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
    /// Starts the next job, if none runs, on a blocking thread: the retry of a failed job's
    /// messages (see [`statemesh_core::Node::retry_job`]), the sync messages the last frames
    /// carried, to apply (see [`statemesh_core::Node::handle_frame_deferred`]), or else the
    /// push of a burst of local writes, to generate (see
    /// [`statemesh_core::Node::set_push_jobs`]). The CRDT library's work runs there, without
    /// the node, while this task keeps the node ticking.
    ///
    /// A sync job waits while the next frame held can join it (see
    /// [`statemesh_core::Node::join_frame`]): the frames several peers sent while the last job
    /// ran make one job, one apply. A lone frame's job starts at once.
    pub(super) fn start_job(&mut self, job: &mut Option<JoinHandle<Job>>) {
        if job.is_some() {
            return;
        }
        if let Some(j) = self.shared.node_off_worker().retry_job() {
            let conn = self.links.get(&j.from()).map_or(usize::MAX, |l| l.conn);
            *job = Some(spawn(Job::Receive {
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
        *job = Some(spawn(next));
    }

    /// Whether the next frame held may join the sync job `job`, which waits to start: one of
    /// a peer the job does not hold a message of, or a sync message.
    fn can_join(&self, job: &SyncJob) -> bool {
        job.accepts()
            && matches!(self.held.front(), Some(LinkEvent::Frame { peer, frame, .. })
                if !job.includes(*peer) || statemesh_core::codec::is_sync(frame))
    }

    /// A job is done: a received message's changes join the node's document, or generated
    /// sync messages leave. Returns what the turn did (for the slow-turn log).
    pub(super) fn finish_job(&mut self, done: Result<Job, tokio::task::JoinError>) -> &'static str {
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
            Err(e) => {
                // A job panicked outside the CRDT library's guarded calls: nothing of it can
                // be trusted, and the peers it covered stay busy. Unreachable in practice.
                tracing::error!(error = %e, "a sync job failed");
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
