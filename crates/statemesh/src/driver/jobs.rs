//! The CRDT library's work, run off the node on the mesh's job thread, one job at a time:
//! applying a received sync message ([`SyncJob`]), generating the sync messages of a burst of
//! local writes ([`PushJob`]). The node keeps ticking, judging views and taking local writes
//! meanwhile (see `docs/architecture.md`, "The runtime").

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::Duration;

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
    /// `super::priority`), giving free memory back once quiet if `give_back` (see [`serve`]).
    /// It ends once this handle is dropped and its last job is done.
    pub(super) fn start(nice: u8, give_back: bool) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel::<(Job, oneshot::Sender<Job>)>();
        let (lowered, started) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("statemesh-jobs".into())
            .spawn(move || {
                super::priority::lower_this_thread(nice, "jobs");
                let _ = lowered.send(());
                serve(
                    &jobs,
                    give_back.then_some(super::heap::QUIET),
                    super::heap::give_back,
                    |(job, done)| {
                        // A job that panics outside the CRDT library's guarded calls drops `done`,
                        // which the driver reads as a failed job; the thread goes on with the next.
                        if let Ok(job) = std::panic::catch_unwind(AssertUnwindSafe(|| job.run())) {
                            let _ = done.send(job);
                        }
                    },
                );
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

/// The job thread's loop: runs each job as it comes, and once no job has come for `quiet`
/// after one ran, gives the allocator's free memory back (`give_back`), then waits without a
/// deadline (without `quiet`, never). Ends when the queue's sender is gone.
///
/// A job's transient memory (a received message's changes rebuilt and decoded, a copy of the
/// records it touched) is freed into the allocator, which keeps it: in a window of the
/// `memory` benchmark 300-400 kB of the 3.5-4 MB resident, spread over the arenas of the
/// threads that worked. Once the bulk work is over it goes back to the kernel: once per quiet
/// spell, never while the mesh is busy (the give-back takes each arena's lock in turn) and
/// never again while it stays idle.
fn serve<J>(
    jobs: &mpsc::Receiver<J>,
    quiet: Option<Duration>,
    mut give_back: impl FnMut(),
    mut run: impl FnMut(J),
) {
    // Whether a job ran since memory was last given back.
    let mut worked = false;
    loop {
        let next = if let Some(quiet) = quiet.filter(|_| worked) {
            jobs.recv_timeout(quiet)
        } else {
            jobs.recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        };
        match next {
            Ok(job) => {
                run(job);
                worked = true;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                give_back();
                worked = false;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory goes back once after the jobs of a busy spell, never before a job, and not again
    /// while the thread stays idle.
    #[test]
    fn memory_is_given_back_once_per_quiet_spell_after_work() {
        const QUIET: Duration = Duration::from_millis(5);
        let (queue, jobs) = mpsc::channel::<u32>();
        let (gave, given) = mpsc::channel::<()>();
        let (ran_tx, ran) = mpsc::channel::<u32>();
        let thread = std::thread::spawn(move || {
            let mut gave_back = 0;
            serve(
                &jobs,
                Some(QUIET),
                || {
                    gave_back += 1;
                    let _ = gave.send(());
                },
                |job| {
                    let _ = ran_tx.send(job);
                },
            );
            gave_back
        });
        // Idle from the start: nothing to give back. (An absence: it can only be waited out.)
        std::thread::sleep(QUIET * 10);
        assert!(
            given.try_recv().is_err(),
            "memory given back before any job ran"
        );
        // One job at a time, so that no quiet spell can fall between jobs sent together.
        // Bounded waits, so that a loop that never gives back fails rather than hangs.
        let wait = Duration::from_secs(30);
        queue.send(0).expect("the thread runs");
        assert_eq!(ran.recv_timeout(wait).ok(), Some(0));
        given
            .recv_timeout(wait)
            .expect("memory given back after the job");
        // Idle again for ten quiet spells: once was enough.
        std::thread::sleep(QUIET * 10);
        assert!(
            given.try_recv().is_err(),
            "memory given back again while idle"
        );
        queue.send(1).expect("the thread runs");
        assert_eq!(ran.recv_timeout(wait).ok(), Some(1));
        given
            .recv_timeout(wait)
            .expect("memory given back after the next job");
        drop(queue);
        assert_eq!(thread.join().expect("no panic"), 2);
    }

    /// Turned off (`MeshBuilder::give_back_memory(false)`), the loop never gives back.
    #[test]
    fn turned_off_memory_is_never_given_back() {
        let (queue, jobs) = mpsc::channel::<u32>();
        let (ran_tx, ran) = mpsc::channel::<u32>();
        let thread = std::thread::spawn(move || {
            let mut gave_back = 0;
            serve(
                &jobs,
                None,
                || gave_back += 1,
                |job| {
                    let _ = ran_tx.send(job);
                },
            );
            gave_back
        });
        queue.send(0).expect("the thread runs");
        assert_eq!(ran.recv_timeout(Duration::from_secs(30)).ok(), Some(0));
        // Idle after a job: with the 1 s deadline this would give back. (An absence: it can
        // only be waited out.)
        std::thread::sleep(super::super::heap::QUIET + Duration::from_millis(200));
        drop(queue);
        assert_eq!(thread.join().expect("no panic"), 0);
    }
}
