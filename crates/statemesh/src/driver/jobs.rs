//! The CRDT library's work, run off the node on a blocking thread, one job at a time: applying
//! a received sync message ([`SyncJob`]), generating the sync messages of a burst of local
//! writes ([`PushJob`]). The node keeps ticking, judging views and taking local writes
//! meanwhile (see `docs/architecture.md`, "The runtime").

use statemesh_core::{PeerId, PushJob, SyncJob};
use tokio::task::JoinHandle;

use super::Run;

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
    /// Starts the next job, if none runs, on a blocking thread: the sync message the last
    /// frame carried, to apply (see [`statemesh_core::Node::handle_frame_deferred`]), or else
    /// the push of a burst of local writes, to generate (see
    /// [`statemesh_core::Node::set_push_jobs`]). The CRDT library's work runs there, without
    /// the node, while this task keeps the node ticking.
    pub(super) fn start_job(&mut self, job: &mut Option<JoinHandle<Job>>) {
        if job.is_some() {
            return;
        }
        let next = match self.new_job.take() {
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
        *job = Some(tokio::task::spawn_blocking(move || next.run()));
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
