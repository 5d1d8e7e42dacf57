//! The driver: one task per mesh that owns the links and carries out the node's outputs.
//!
//! [`start`] binds the QUIC endpoint, starts the discoveries and the store's writer, and spawns
//! the driver's task, [`Run::run`]: a loop that feeds the node its inputs (ticks, frames, link
//! ups and downs, discoveries' reports) and carries out its outputs ([`Run::flush`]: frames to
//! the links, events to the shared state, persistence to the store). It owns every task of the
//! mesh (in its [`JoinSet`]s, or through the running discoveries it holds): they end with it.
//! It is started from plain [`Params`] and shares with the handles only [`Shared`].
//!
//! - `links`: setting links up (accepting, dialling, probing, the hellos), each link's reader,
//!   writer and renewed proofs, and what the driver does with their events ([`LinkEvent`]);
//! - `jobs`: the CRDT library's work, on the mesh's job thread, one job at a time;
//! - `pulse`: heartbeats and views, on a thread of their own so that bulk work never delays
//!   them;
//! - `priority`: the pulse's and the jobs' threads below the data path's CPU priority;
//! - `discovery`: the discoveries' reports, settling, peer exchange, and the "no peer found by
//!   mDNS" diagnostic.

mod discovery;
mod flush;
mod heap;
mod jobs;
mod links;
mod priority;
mod pulse;
mod sealed;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use statemesh_core::{PeerId, SyncJob};
use statemesh_net::discovery::Discovery;
use statemesh_net::keyring::Keyring;
use statemesh_net::quic::{self, Endpoint, LinkError};
use statemesh_net::views::ViewSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use self::discovery::Discoveries;
use self::jobs::{Job, JobThread, Running};
use self::links::{LinkEvent, LinkState, ViewFrame};
pub(crate) use self::priority::DEFAULT_BACKGROUND_NICE;
use self::pulse::PulseLinks;
use crate::dialer::{Dialer, Settle};
use crate::error::JoinError;
use crate::shared::Shared;
use crate::store::{Store, Writer};

/// The running driver. Dropping it stops everything at once (no leave announced).
#[derive(Debug)]
pub(crate) struct Driver {
    task: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// How long a graceful shutdown waits for the driver to leave before stopping it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

impl Driver {
    /// Announces a graceful leave, flushes, and waits for the driver to finish (stopping it if
    /// it takes longer than [`SHUTDOWN_WAIT`]).
    pub(crate) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_WAIT, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

/// What the driver is started with.
pub(crate) struct Params {
    /// The mesh name.
    pub(crate) name: String,
    /// Where the QUIC endpoint listens.
    pub(crate) listen: SocketAddr,
    /// LAN mode: peer exchange on, the "no peer found by mDNS" diagnostic armed.
    pub(crate) lan: bool,
    /// The discoveries to start, in order.
    pub(crate) discoveries: Vec<Box<dyn Discovery>>,
    /// Where to persist the node's outputs, if anywhere.
    pub(crate) store: Option<Store>,
    /// How many nice levels below the runtime's threads (which start them) the pulse's and
    /// the jobs' threads run (see `priority`).
    pub(crate) background_nice: u8,
    /// Whether the job thread gives free memory back once quiet (see `heap`).
    pub(crate) give_back_memory: bool,
}

/// A driver turn this long is logged (debug level), and so is the pulse waiting this long for
/// the node's heart.
const SLOW_TURN: Duration = Duration::from_millis(50);

/// How often the driver ticks at the least: the "no peer found by mDNS" diagnostic, and the
/// counters only a flush publishes (the discoveries' refused peers) stay this fresh.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Frames (other than views) the links' readers may queue to the driver, all links together.
/// A reader that finds the queue full waits, and stops reading its QUIC stream: QUIC's flow
/// control then slows the sender, whose backlog rises and pushes back on its writer. Far more
/// than a mesh queues in practice: sync is one message per round trip per peer.
const FRAMES_QUEUED: usize = 256;

/// Frames held while a job runs (see `Run::held`), at most: beyond, the driver stops taking
/// frames from the readers' queue until the job is done.
const HELD_MAX: usize = 256;

/// Views the links' readers may queue to the driver: a full queue drops the oldest (a newer
/// view of a peer supersedes an older one).
const VIEWS_QUEUED: usize = 64;

/// How long the driver must have been idle before it brings the replica's standby up to date
/// (see [`statemesh_core::Node::catch_up_standby`]): the copy's apply then runs between
/// bursts, not on a receiver's turn, where it held the node while the application waited to
/// read what the turn had just notified (`propagation`, 4 windows: 170 µs from notification
/// to read at the median, docs/under-load.md, nineteenth slice).
const STANDBY_IDLE: Duration = Duration::from_millis(1);

/// How long the driver must have been idle before it brings up to date a standby owed fewer
/// than [`statemesh_core::node::STANDBY_BATCH`] changes: they wait for the next ones, to be
/// applied in one batch (a change then costs a fraction of its own apply), unless the mesh
/// stays quiet this long. Longer than the pauses between a mesh's writes: at 50 ms, `scale`
/// (64 windows, a write every 100 ms) brought every receiver's standby up to date after
/// almost every write, 42 turns per write and the copy of each document each time.
const STANDBY_IDLE_FEW: Duration = Duration::from_secs(1);

/// A driver turn this long ends the mesh's quiet (see `Run::on_worker`). Wall time: on 2
/// cores shared by 4 windows a turn of a lone small message is now and then preempted past a
/// millisecond, and took 1-2.6 ms a few times per window in a `propagation` run.
const QUIET_TURN: Duration = Duration::from_millis(5);

/// How long after a turn of [`QUIET_TURN`] or longer every turn runs off the runtime's worker.
const QUIET_SPAN: Duration = Duration::from_secs(1);

/// Binds the QUIC endpoint, starts the discoveries and the store's writer, and spawns the
/// driver's task.
pub(crate) async fn start(params: Params, shared: Arc<Shared>) -> Result<Driver, JoinError> {
    let Params {
        name,
        listen,
        lan,
        discoveries,
        store,
        background_nice,
        give_back_memory,
    } = params;
    let me = shared.me();
    let endpoint = Endpoint::bind(listen, me, shared.keys().clone(), &name)?;
    let quic_addr = endpoint.local_addr().map_err(|source| {
        JoinError::Link(LinkError::Bind {
            addr: listen,
            source,
        })
    })?;
    shared.set_quic_addr(quic_addr);
    // Sealed views (see `sealed`): without the socket, views travel on QUIC.
    match ViewSocket::bind(quic_addr.ip()) {
        Ok(socket) => shared.set_view_socket(socket),
        Err(e) => tracing::warn!(error = %e, "no view socket: views travel on QUIC"),
    }
    let mut keys_rx = shared.keys().subscribe();
    let ring = keys_rx.borrow_and_update().clone();
    let seed = rand::random::<u64>();
    let mut dialer = Dialer::new(me, lan, Instant::now(), seed);
    let (discoveries, settle) =
        Discoveries::start(discoveries, &name, me, quic_addr, &ring, &mut dialer)?;
    if discoveries.is_empty() {
        // Nothing to wait for.
        shared.node().handle_settled(shared.now());
    }
    // Events of the helper tasks and the store: bounded by construction (one per link set up,
    // dial, probe, renewed proof or store write, each started by the driver itself).
    let (events, events_rx) = mpsc::unbounded_channel();
    let (frames, frames_rx) = mpsc::channel(FRAMES_QUEUED);
    let (views, views_rx) = broadcast::channel(VIEWS_QUEUED);
    let writer = match store {
        Some(store) => {
            let tx = events.clone();
            let writer = Writer::spawn(store, move |r| {
                let _ = tx.send(LinkEvent::Persisted(r));
            })
            .map_err(|source| JoinError::Runtime {
                what: "store thread",
                source,
            })?;
            Some(writer)
        }
        None => None,
    };
    let jobs = JobThread::start(background_nice, give_back_memory).map_err(|source| {
        JoinError::Runtime {
            what: "job thread",
            source,
        }
    })?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let span = tracing::info_span!("mesh", peer = %me.short());
    let mut tasks = JoinSet::new();
    if let Some(path) = shared.key_file() {
        tasks.spawn(crate::keys::watch_file(
            path.to_owned(),
            shared.keys().clone(),
        ));
    }
    let run = Run {
        name,
        keys_rx,
        ring,
        shared,
        endpoint,
        writer,
        links: BTreeMap::new(),
        dialer,
        lan,
        tasks,
        writers: JoinSet::new(),
        events,
        frames,
        views,
        next_conn: 0,
        settle,
        next_housekeeping: Instant::now() + HOUSEKEEPING,
        discoveries,
        jobs,
        new_job: None,
        held: VecDeque::new(),
        pushed_last: false,
        pulse_links: PulseLinks::default(),
        background_nice,
        links_changed: false,
        standby_at: None,
        unquiet_at: None,
        joined: false,
    };
    let task = tokio::spawn(tracing::Instrument::instrument(
        run.run(events_rx, frames_rx, views_rx, stop_rx),
        span,
    ));
    Ok(Driver {
        task: Some(task),
        stop: Some(stop_tx),
    })
}

/// What a turn of the driver's loop has to do after its `select!`.
enum Turn {
    /// Handled already (what it was, for the slow-turn log).
    Done(&'static str),
    /// A job finished.
    Finish(Result<Job, oneshot::error::RecvError>),
    /// A frame (other than a view) arrived, or another link event (a link up or closed, a
    /// write persisted).
    Link(LinkEvent),
    /// Local writes (or a handle, or the pulse) woke the driver.
    Wake,
    /// The node's data deadline passed (see [`Run::deadline`]).
    Tick,
    /// The driver has been idle for [`STANDBY_IDLE`] (or [`STANDBY_IDLE_FEW`]) and the
    /// standby lacks changes.
    Standby,
}

/// Runs `f`, work on the node that may take long, so that the runtime's other tasks (the
/// links' readers, which queue views, and their writers, and QUIC itself) keep running
/// meanwhile: on a multi-thread runtime (the one `join_blocking` makes has one worker)
/// `block_in_place` hands this worker's other tasks to another thread for the time of `f`;
/// on a current-thread runtime `f` just runs. Without it a window whose driver spent a second
/// on bulk work read no view meanwhile, and its next tick judged its peers silent.
pub(crate) fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The driver's task: what it holds, and its loop.
struct Run {
    /// The mesh name.
    name: String,
    /// Changes of the keyring.
    keys_rx: watch::Receiver<Arc<Keyring>>,
    /// The keyring as last applied.
    ring: Arc<Keyring>,
    /// The thread the CRDT library's work runs on, one job at a time.
    jobs: JobThread,
    /// A sync job the last frame started (see
    /// [`statemesh_core::Node::handle_frame_deferred`]), for the loop to run; with the
    /// connection it came on.
    new_job: Option<(usize, SyncJob)>,
    /// Frames (other than views) that arrived while a sync job ran: handled, in order, once it
    /// is done (they may depend on it).
    held: VecDeque<LinkEvent>,
    /// Whether the last job was a push: the next waits for the frames held meanwhile (see
    /// [`Run::start_job`]).
    pushed_last: bool,
    shared: Arc<Shared>,
    endpoint: Endpoint,
    writer: Option<Writer>,
    links: BTreeMap<PeerId, LinkState>,
    /// Which addresses to dial, when, and from which endpoint.
    dialer: Dialer,
    /// LAN mode: peer exchange on, the "no peer found by mDNS" diagnostic armed.
    lan: bool,
    /// The running discoveries and their reports.
    discoveries: Discoveries,
    /// Helper tasks: accepting, setting links up, probing, reading links, renewed proofs, the
    /// keyring file's watch.
    tasks: JoinSet<()>,
    /// The tasks writing to each link: a graceful leave waits for them to drain.
    writers: JoinSet<()>,
    events: mpsc::UnboundedSender<LinkEvent>,
    /// The links' frames (other than views) and their ends, bounded ([`FRAMES_QUEUED`]).
    frames: mpsc::Sender<LinkEvent>,
    /// Heartbeat views, handled ahead of everything else (see
    /// `statemesh_core::codec::is_view`); bounded, dropping the oldest ([`VIEWS_QUEUED`]).
    views: broadcast::Sender<ViewFrame>,
    next_conn: usize,
    /// When this window may count itself a leader candidate before its join grace is over.
    settle: Settle,
    /// When the driver ticks next at the latest (see [`HOUSEKEEPING`]).
    next_housekeeping: Instant,
    /// The links as the pulse sees them (kept in step by [`Run::flush`]).
    pulse_links: PulseLinks,
    /// How many nice levels below the runtime's threads the pulse's thread runs.
    background_nice: u8,
    /// `links` changed (a link came up or went, or was proved again under another key) since
    /// [`Run::flush`] last published them to the pulse and to [`Shared`].
    links_changed: bool,
    /// When to bring the standby up to date, if it lacks changes: [`STANDBY_IDLE`] (or
    /// [`STANDBY_IDLE_FEW`]) after the last turn (each turn puts it off).
    standby_at: Option<Instant>,
    /// Whether the node was past joining at the last look at its heart (see
    /// `Node::try_glance`).
    joined: bool,
    /// When the mesh last stopped being quiet (see [`Run::on_worker`]): a turn took
    /// [`QUIET_TURN`] or longer, or a link came up (its first exchange may carry the whole
    /// document, a reply generated in a frame's turn).
    unquiet_at: Option<Instant>,
}

impl Run {
    async fn run(
        mut self,
        mut events_rx: mpsc::UnboundedReceiver<LinkEvent>,
        mut frames_rx: mpsc::Receiver<LinkEvent>,
        views_rx: broadcast::Receiver<ViewFrame>,
        mut stop: oneshot::Receiver<()>,
    ) {
        self.spawn_accept_loop();
        // Heartbeats and views, sealed ones read there too: a thread of their own (see
        // `pulse`).
        pulse::spawn(
            &mut self.tasks,
            self.shared.clone(),
            self.pulse_links.clone(),
            views_rx,
            self.events.clone(),
            self.background_nice,
        );
        self.flush();
        // The job running, if any. One at a time; the node keeps ticking, judging views and
        // taking local writes meanwhile.
        let mut job: Option<Running> = None;
        let shutdown = loop {
            // Under a stream of frames (a large sync exchange) the select below keeps choosing
            // them over the timer: a tick that is due runs first, so pushes that wait and stall
            // checks run on time however busy the links are. (Heartbeats run apart, in `pulse`.)
            let mut deadline = self.deadline();
            if Instant::now() >= deadline {
                let t0 = Instant::now();
                off_worker(|| {
                    self.tick();
                    self.flush();
                });
                // The tick may have left a push to generate.
                self.start_job(&mut job);
                self.turn_done(t0, "tick");
                deadline = self.deadline();
            }
            if job.is_none()
                && let Some(ev) = self.held.pop_front()
            {
                // Frames held while the last job ran, one per turn, before newer ones.
                let t0 = Instant::now();
                let what = off_worker(|| {
                    let what = self.on_link_event(ev);
                    self.end_turn(&mut job);
                    what
                });
                self.turn_done(t0, what);
                continue;
            }
            let redial = self
                .dialer
                .next_wake(Instant::now())
                .map(tokio::time::Instant::from_std);
            let standby_at = self.standby_at.map(tokio::time::Instant::from_std);
            let what = tokio::select! {
                biased;
                _ = &mut stop => break true,
                done = async {
                    match job.as_mut() {
                        Some(task) => task.await,
                        None => std::future::pending().await,
                    }
                }, if job.is_some() => {
                    job = None;
                    (Instant::now(), Turn::Finish(done))
                }
                Some(ev) = events_rx.recv() => (Instant::now(), Turn::Link(ev)),
                // While a job runs, frames are held (up to `HELD_MAX`, then left in the
                // readers' queue, which then stops the readers). Holding one changes nothing
                // on the node: no flush follows.
                Some(ev) = frames_rx.recv(), if self.held.len() < HELD_MAX => {
                    let t0 = Instant::now();
                    if job.is_some() && matches!(ev, LinkEvent::Frame { .. }) {
                        self.held.push_back(ev);
                        self.turn_done(t0, "held");
                        continue;
                    }
                    (t0, Turn::Link(ev))
                }
                (index, ev) = self.discoveries.next() => {
                    let t0 = Instant::now();
                    self.on_discovered(index, ev);
                    self.dial_due();
                    (t0, Turn::Done("discovery"))
                }
                () = self.shared.woken() => (Instant::now(), Turn::Wake),
                () = tokio::time::sleep_until(deadline.into()) => (Instant::now(), Turn::Tick),
                Ok(()) = self.keys_rx.changed() => {
                    let t0 = Instant::now();
                    self.on_keys_changed();
                    (t0, Turn::Done("keys"))
                }
                () = sleep_until_some(standby_at) => {
                    self.standby_at = None;
                    (Instant::now(), Turn::Standby)
                }
                () = sleep_until_some(redial) => {
                    self.dial_due();
                    (Instant::now(), Turn::Done("redial"))
                }
            };
            let (t0, turn) = what;
            let mut rest = |this: &mut Self, turn: Turn| {
                let what = match turn {
                    Turn::Done(what) => what,
                    Turn::Finish(done) => this.finish_job(done),
                    Turn::Link(ev) => this.on_link_event(ev),
                    Turn::Wake => "wake",
                    Turn::Tick => {
                        this.tick();
                        "tick"
                    }
                    Turn::Standby => {
                        this.shared.node_off_worker().catch_up_standby();
                        "standby"
                    }
                };
                this.end_turn(&mut job);
                what
            };
            // Work on the node that may take long (a job's result joining the document, a
            // received frame or link event, local writes to push, and the flush after any
            // turn) runs off the runtime's worker, so that the links' readers keep queueing
            // views meanwhile (see `off_worker`). (Flushes after persisted writes ran on the
            // worker, up to 140 ms each in `throughput --peers 8 --batch 100`.) While the mesh
            // is quiet, a frame, local writes or a persisted write are handled on the worker
            // (see `Run::on_worker`).
            let what = if self.on_worker(&turn) {
                rest(&mut self, turn)
            } else {
                off_worker(|| rest(&mut self, turn))
            };
            self.turn_done(t0, what);
        };
        if shutdown {
            self.leave().await;
        }
        // Withdraw the announcements (mDNS goodbye, local socket removed) before reporting the
        // mesh closed.
        self.discoveries.withdraw();
        self.shared.close();
    }

    /// What follows every turn that handled an input: the next job if one is due, the node's
    /// outputs carried out, a push the flush left to generate, and the standby's upkeep put
    /// off until the driver has been idle for [`STANDBY_IDLE`] (for [`STANDBY_IDLE_FEW`] while
    /// fewer than a batch of changes are owed).
    fn end_turn(&mut self, job: &mut Option<Running>) {
        self.start_job(job);
        self.flush();
        self.start_job(job);
        let node = self.shared.node_off_worker();
        if self.standby_at.is_some() || node.standby_owed() {
            let idle = if node.standby_batch_owed() {
                STANDBY_IDLE
            } else {
                STANDBY_IDLE_FEW
            };
            drop(node);
            self.standby_at = Some(Instant::now() + idle);
        }
    }

    /// Runs the node's tick: pushes that waited, stalled exchanges, and (harmlessly, the pulse
    /// usually ran it already) the liveness part.
    fn tick(&mut self) {
        self.next_housekeeping = Instant::now() + HOUSEKEEPING;
        let now = self.shared.now();
        self.shared.node_off_worker().handle_tick(now);
        self.check_discovery();
    }

    /// Records how long a turn of the driver (started at `t0`, handling `what`) took.
    fn turn_done(&mut self, t0: Instant, what: &'static str) {
        let took = t0.elapsed();
        if took >= QUIET_TURN {
            self.unquiet_at = Some(Instant::now());
        }
        self.shared.counts().driver_turns.record(took);
        if took >= SLOW_TURN {
            tracing::debug!(what, took_ms = took.as_secs_f64() * 1e3, "slow driver turn");
        }
    }

    /// Whether `turn` may run on the runtime's worker rather than off it (see [`off_worker`]):
    /// a received frame, local writes, a persisted write or the standby's upkeep, while the
    /// mesh is quiet (no turn of [`QUIET_TURN`] or longer, and no link up, for [`QUIET_SPAN`]).
    /// Handing the worker over costs a thread switch each way, on every turn: a lone write's
    /// path crossed three (the writer's turn, each receiver's), 100 µs at the median and
    /// 400 µs at the 99th percentile of `propagation` (docs/under-load.md, nineteenth slice).
    /// A turn on the worker waits for the node off it still, and in a quiet mesh its work is
    /// bounded by its input: a frame applied in place (at most `INLINE_BYTES`; a larger
    /// message makes a job), a push of a few local changes (more make a job). A link that comes up ends the quiet (a new peer's first
    /// exchange may carry the whole document, and the answer is generated in a frame's turn);
    /// the first long turn otherwise (a large transaction's push, the answer to a peer whose
    /// sync state was reset) runs on the worker once, then every turn goes off it until the
    /// mesh is quiet again (the standby's upkeep is as small as the turns before it,
    /// at most 64 changes); job results, ticks and links set up always run off it.
    fn on_worker(&self, turn: &Turn) -> bool {
        on_worker(turn, self.unquiet_at, Instant::now())
    }

    /// When the node next needs a tick from the driver: its data deadline (the pulse runs the
    /// liveness part), and [`HOUSEKEEPING`] after the last tick at the latest.
    fn deadline(&self) -> Instant {
        match self.shared.node_off_worker().poll_data_timeout() {
            Some(due) => self.shared.instant(due).min(self.next_housekeeping),
            None => self.next_housekeeping,
        }
    }

    /// Graceful leave: tell every peer, let the frames drain, close.
    async fn leave(&mut self) {
        let now = self.shared.now();
        self.shared.node_off_worker().leave(now);
        self.flush();
        let links = std::mem::take(&mut self.links);
        // Dropping the senders ends each writer after it wrote what was queued.
        let connections: Vec<quinn::Connection> =
            links.into_values().map(|l| l.connection).collect();
        let drain = async { while self.writers.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
        for c in connections {
            c.close(quinn::VarInt::from_u32(quic::CLOSE_LEAVING), b"leaving");
        }
        self.endpoint.close();
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
        // Everything written so far reaches the disk before shutdown returns.
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.finish()).await;
        }
    }
}

/// Sleeps until `at`, or forever without it (a `select!` branch with no deadline).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// See [`Run::on_worker`]: whether `turn` may run on the worker at `now`, the mesh having last
/// stopped being quiet at `unquiet_at`.
fn on_worker(turn: &Turn, unquiet_at: Option<Instant>, now: Instant) -> bool {
    let quiet = unquiet_at.is_none_or(|t| now.saturating_duration_since(t) >= QUIET_SPAN);
    quiet
        && matches!(
            turn,
            Turn::Wake
                | Turn::Standby
                | Turn::Link(LinkEvent::Frame { .. })
                | Turn::Link(LinkEvent::Persisted(_))
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small turns run on the worker only while the mesh is quiet; work that may be long
    /// always runs off it.
    #[test]
    fn only_a_quiet_mesh_handles_small_turns_on_the_worker() {
        let now = Instant::now();
        let frame = || {
            Turn::Link(LinkEvent::Frame {
                peer: PeerId::generate(1, &mut rand::rng()),
                conn: 0,
                frame: bytes::Bytes::from_static(b"frame"),
            })
        };
        let small = [
            frame(),
            Turn::Wake,
            Turn::Standby,
            Turn::Link(LinkEvent::Persisted(Ok(1))),
        ];
        let heavy = [
            Turn::Tick,
            Turn::Done("discovery"),
            Turn::Finish(Err(oneshot_error())),
        ];
        for quiet in [None, Some(now - QUIET_SPAN)] {
            assert!(small.iter().all(|t| on_worker(t, quiet, now)));
            assert!(!heavy.iter().any(|t| on_worker(t, quiet, now)));
        }
        let busy = Some(now - QUIET_SPAN / 2);
        assert!(!small.iter().any(|t| on_worker(t, busy, now)));
    }

    /// The error of a job whose thread dropped it.
    fn oneshot_error() -> oneshot::error::RecvError {
        let (tx, rx) = oneshot::channel::<Job>();
        drop(tx);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(rx)
            .map(|_| ())
            .expect_err("dropped")
    }
}
