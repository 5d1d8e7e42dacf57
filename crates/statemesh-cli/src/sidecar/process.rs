//! The sidecar process: its options, the stdin and stdout threads, termination signals and the
//! parent's death, the main loop, and the exit status.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::framing::{DEFAULT_MAX_BODY, Decoded, FrameDecoder};
use super::rpc::Id;
use super::session::{Outbox, Session};

/// Options of `statemesh sidecar`.
#[derive(clap::Args, Debug, Clone)]
pub struct SidecarArgs {
    /// Which mesh, and how (shared with the other commands).
    #[command(flatten)]
    pub mesh: crate::args::MeshArgs,
    /// Where state files live (default: statemesh/ in the user's state directory).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Do not persist state.
    #[arg(long)]
    pub no_persist: bool,
    /// Never become the probe leader.
    #[arg(long)]
    pub not_eligible: bool,
    /// The longest message body accepted, in bytes (longer ones are skipped and answered with
    /// an error).
    #[arg(long, default_value_t = DEFAULT_MAX_BODY)]
    pub max_message: usize,
    /// How long a write waits for a `durable` or `replicated` acknowledgement by default, in
    /// milliseconds (a request's `timeout_ms` overrides it).
    #[arg(long, default_value_t = 10_000)]
    pub ack_timeout_ms: u64,
    /// The backlog's bounds, `SOFT,HARD` (default 256,512): from SOFT on,
    /// `backpressure_wait` waits until the backlog is back under SOFT / 2; at HARD, writes are
    /// refused (busy).
    #[arg(long, value_name = "SOFT,HARD", value_parser = parse_bounds)]
    pub backpressure: Option<(usize, usize)>,
}

/// `--backpressure SOFT,HARD`: two counts (the mesh checks that `0 < SOFT <= HARD`).
fn parse_bounds(s: &str) -> Result<(usize, usize), String> {
    let (soft, hard) = s
        .split_once(',')
        .ok_or_else(|| format!("expected SOFT,HARD (two counts), got {s:?}"))?;
    let count = |c: &str| {
        c.trim()
            .parse::<usize>()
            .map_err(|e| format!("{c:?} in {s:?}: {e}"))
    };
    Ok((count(soft)?, count(hard)?))
}

impl SidecarArgs {
    /// A builder with these options applied.
    fn builder(&self) -> statemesh::MeshBuilder {
        let mut b = self
            .mesh
            .builder()
            .eligible(!self.not_eligible)
            .persist(!self.no_persist)
            .ack_timeout(Duration::from_millis(self.ack_timeout_ms));
        if let Some(d) = &self.state_dir {
            b = b.state_dir(d);
        }
        if let Some((soft, hard)) = self.backpressure {
            b = b.backpressure(soft, hard);
        }
        b
    }
}

/// Exit status: the mesh could not be joined.
const EXIT_JOIN_FAILED: i32 = 3;
/// Exit status: stdin could not be read, or the runtime failed.
const EXIT_FAILURE: i32 = 1;
/// How often the parent process id is checked (the parent-death signal is the fast path).
const PARENT_CHECK: Duration = Duration::from_secs(1);

/// Runs the sidecar until its parent goes away or asks it to stop; returns the process exit
/// status (0: left gracefully; 1: stdin failed; 3: the mesh could not be joined).
pub fn run(args: SidecarArgs) -> anyhow::Result<i32> {
    // Before any other thread exists: the parent-death signal is a per-thread attribute, and
    // the signal is delivered to the process when the parent dies.
    let parent = arm_parent_death();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("statemesh-sidecar")
        .enable_all()
        .build()?;
    let status = runtime.block_on(serve(args, parent));
    // The stdin thread may be blocked in a read: do not wait for it.
    runtime.shutdown_background();
    Ok(status)
}

/// Asks the kernel for SIGTERM when the parent dies (Linux), and returns the parent's pid for
/// the periodic check.
fn arm_parent_death() -> Option<rustix::process::Pid> {
    let parent = rustix::process::getppid();
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
    {
        tracing::warn!(error = %e, "could not set the parent-death signal; relying on the parent pid check");
    }
    parent
}

/// Resolves once the parent process is gone (our parent pid changed: we were re-parented).
async fn parent_gone(parent: Option<rustix::process::Pid>) {
    let Some(parent) = parent else {
        return std::future::pending().await;
    };
    let mut every = tokio::time::interval(PARENT_CHECK);
    loop {
        every.tick().await;
        if rustix::process::getppid() != Some(parent) {
            return;
        }
    }
}

/// Why the sidecar stops.
#[derive(Debug)]
pub(super) enum Stop {
    /// Stdin reached its end.
    Eof,
    /// The client sent `shutdown` (answered once the mesh is left).
    Shutdown(Option<Id>),
    /// A termination signal (SIGTERM, also sent when the parent dies; SIGINT; SIGHUP).
    Signal(&'static str),
    /// The parent process id changed.
    ParentGone,
    /// Stdout could not be written.
    StdoutClosed,
    /// Stdin could not be read.
    ReadError(String),
    /// The mesh could not be joined (and `initialize` was answered so).
    JoinFailed,
}

impl Stop {
    /// Why, in words (logged).
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Eof => "stdin closed".into(),
            Self::Shutdown(_) => "shutdown requested".into(),
            Self::Signal(name) => format!("{name} received"),
            Self::ParentGone => "parent process gone".into(),
            Self::StdoutClosed => "stdout closed".into(),
            Self::ReadError(e) => format!("stdin read error: {e}"),
            Self::JoinFailed => "could not join the mesh".into(),
        }
    }

    /// The exit status.
    pub(super) fn status(&self, join_failed: bool) -> i32 {
        match self {
            _ if join_failed => EXIT_JOIN_FAILED,
            Self::JoinFailed => EXIT_JOIN_FAILED,
            Self::ReadError(_) => EXIT_FAILURE,
            _ => 0,
        }
    }
}

/// What the stdin thread sends.
#[derive(Debug)]
enum Inbound {
    Decoded(Decoded),
    /// End of input; `clean` is false when it cut a message.
    Eof {
        clean: bool,
    },
    ReadError(std::io::Error),
}

/// What the stdout thread receives.
#[derive(Debug)]
pub(super) enum Out {
    /// A message body, framed by the thread.
    Body(Vec<u8>),
    /// Flush, answer, and stop.
    Close(oneshot::Sender<()>),
}

fn read_stdin(tx: &mpsc::Sender<Inbound>, max: usize) {
    let mut decoder = FrameDecoder::new(max);
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => {
                let _ = tx.blocking_send(Inbound::Eof {
                    clean: decoder.is_idle(),
                });
                return;
            }
            Ok(n) => {
                for d in decoder.feed(&buf[..n]) {
                    if tx.blocking_send(Inbound::Decoded(d)).is_err() {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Inbound::ReadError(e));
                return;
            }
        }
    }
}

fn write_stdout(mut rx: mpsc::Receiver<Out>, broken: &tokio::sync::Notify) {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    while let Some(out) = rx.blocking_recv() {
        match out {
            Out::Body(body) => {
                let written = write!(w, "Content-Length: {}\r\n\r\n", body.len())
                    .and_then(|()| w.write_all(&body))
                    .and_then(|()| if rx.is_empty() { w.flush() } else { Ok(()) });
                if let Err(e) = written {
                    tracing::info!(error = %e, "stdout closed");
                    broken.notify_one();
                    return;
                }
            }
            Out::Close(done) => {
                let _ = w.flush();
                let _ = done.send(());
                return;
            }
        }
    }
}

async fn serve(args: SidecarArgs, parent: Option<rustix::process::Pid>) -> i32 {
    let (out_tx, out_rx) = mpsc::channel::<Out>(256);
    let broken = Arc::new(tokio::sync::Notify::new());
    let writer_broken = broken.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("sidecar-stdout".into())
        .spawn(move || write_stdout(out_rx, &writer_broken))
    {
        tracing::error!(error = %e, "could not start the stdout thread");
        return EXIT_FAILURE;
    }
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(64);
    let max = args.max_message;
    if let Err(e) = std::thread::Builder::new()
        .name("sidecar-stdin".into())
        .spawn(move || read_stdin(&in_tx, max))
    {
        tracing::error!(error = %e, "could not start the stdin thread");
        return EXIT_FAILURE;
    }
    let out = Outbox::new(out_tx, args.max_message);
    let joining = args.builder().join();
    let mut session = Session::new(args, out);
    tokio::pin!(joining);
    let mut joined = false;
    let signal = termination_signal();
    tokio::pin!(signal);
    let parent = parent_gone(parent);
    tokio::pin!(parent);

    let stop = loop {
        tokio::select! {
            biased;
            name = &mut signal => break Stop::Signal(name),
            () = &mut parent => break Stop::ParentGone,
            () = broken.notified() => break Stop::StdoutClosed,
            result = &mut joining, if !joined => {
                joined = true;
                session.joined(result);
            }
            Some(done) = session.tasks.join_next_with_id(), if !session.tasks.is_empty() => {
                session.finished(done).await;
            }
            // Messages wait until the join is resolved, so `initialize` can answer.
            inbound = in_rx.recv(), if joined => match inbound {
                None => break Stop::Eof,
                Some(Inbound::Eof { clean }) => {
                    if !clean {
                        tracing::warn!("stdin ended inside a message");
                    }
                    break Stop::Eof;
                }
                Some(Inbound::ReadError(e)) => break Stop::ReadError(e.to_string()),
                Some(Inbound::Decoded(Decoded::Error(e))) => session.framing_error(&e).await,
                Some(Inbound::Decoded(Decoded::Body(body))) => {
                    if let Some(stop) = session.message(&body).await {
                        break stop;
                    }
                }
            },
        }
    };
    session.finish(stop).await
}

/// Resolves with the name of the first termination signal received.
async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut streams = Vec::new();
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::hangup(), "SIGHUP"),
    ] {
        match signal(kind) {
            Ok(s) => streams.push((s, name)),
            Err(e) => tracing::warn!(error = %e, signal = name, "cannot handle signal"),
        }
    }
    if streams.is_empty() {
        return std::future::pending().await;
    }
    let (tx, mut rx) = mpsc::channel(1);
    let mut waiters = JoinSet::new();
    for (mut s, name) in streams {
        let tx = tx.clone();
        waiters.spawn(async move {
            if s.recv().await.is_some() {
                let _ = tx.send(name).await;
            }
        });
    }
    drop(tx);
    let name = rx.recv().await;
    waiters.abort_all();
    match name {
        Some(n) => n,
        None => std::future::pending().await,
    }
}
