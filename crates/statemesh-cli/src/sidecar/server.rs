//! The sidecar process: stdin and stdout threads, the mesh, and the request dispatcher.
//!
//! Requests are handled one at a time, in the order they arrive: a write is applied to the
//! mesh before the next message is read, so a `get` after a `put` sees it. Requests that wait
//! (acknowledgements, leadership) are then awaited in their own task and answered when done;
//! the dispatcher goes on with the next message meanwhile.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json, json};
use statemesh::{
    AckError, Change, DeathCause, EntryKind, Lead, LeadershipInfo, Mesh, MeshError, Pending, Scope,
    Term, Value, WriteError,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};

use super::framing::{DEFAULT_MAX_BODY, Decoded, FrameDecoder, FrameError};
use super::rpc::{self, Id, PROTOCOL_VERSION, Request, RpcError, code};
use super::values;

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
}

/// Exit status: the mesh could not be joined.
const EXIT_JOIN_FAILED: i32 = 3;
/// Exit status: stdin could not be read, or the runtime failed.
const EXIT_FAILURE: i32 = 1;

/// How long leaving the mesh may take before the sidecar exits anyway.
const LEAVE_WITHIN: Duration = Duration::from_secs(5);
/// How long pending answers and the last bytes to stdout may take at exit.
const DRAIN_WITHIN: Duration = Duration::from_secs(2);
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
enum Stop {
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
    fn describe(&self) -> String {
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

    fn status(&self, join_failed: bool) -> i32 {
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
enum Out {
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

/// Counters of the sidecar itself (reported by `stats`).
#[derive(Debug, Default)]
struct Counters {
    messages_in: AtomicU64,
    framing_errors: AtomicU64,
    responses_out: AtomicU64,
    errors_out: AtomicU64,
    notifications_out: AtomicU64,
}

/// The sending side of stdout.
#[derive(Debug, Clone)]
struct Outbox {
    tx: mpsc::Sender<Out>,
    counters: Arc<Counters>,
    /// `--max-message`: no answer longer than this is sent.
    max: usize,
}

impl Outbox {
    async fn send(&self, body: Vec<u8>) {
        // The writer is gone only when stdout is closed; the main loop learns that itself.
        let _ = self.tx.send(Out::Body(body)).await;
    }

    async fn answer(&self, id: &Id, result: Result<Json, RpcError>) {
        let result = result.map(|r| rpc::response(id, r)).and_then(|body| {
            // The limit holds in both directions: a result too long is refused like a request
            // too long, so that a client may size its buffers by it.
            if body.len() > self.max {
                Err(RpcError::new(
                    code::MESSAGE_TOO_LARGE,
                    format!(
                        "the answer of {} bytes exceeds --max-message ({} bytes); ask for less (e.g. one key at a time)",
                        body.len(),
                        self.max
                    ),
                )
                .with_data(json!({"length": body.len(), "max": self.max})))
            } else {
                Ok(body)
            }
        });
        match result {
            Ok(body) => {
                self.counters.responses_out.fetch_add(1, Ordering::Relaxed);
                self.send(body).await;
            }
            Err(e) => {
                self.counters.errors_out.fetch_add(1, Ordering::Relaxed);
                self.send(rpc::error_response(id, &e)).await;
            }
        }
    }

    async fn notify(&self, method: &str, params: Json) {
        self.counters
            .notifications_out
            .fetch_add(1, Ordering::Relaxed);
        self.send(rpc::notification(method, params)).await;
    }
}

/// The lead guard the sidecar holds for its client, with the task watching it.
#[derive(Debug)]
struct Held {
    lead: Arc<Lead>,
    watcher: AbortHandle,
}

type LeadSlot = Arc<Mutex<Option<Held>>>;

fn slot(s: &LeadSlot) -> MutexGuard<'_, Option<Held>> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Answer = Result<Json, RpcError>;
type Waiting = std::pin::Pin<Box<dyn Future<Output = Answer> + Send>>;

/// What handling a request produced.
enum Action {
    /// The answer, now.
    Reply(Answer),
    /// The answer, once this future resolves.
    Wait(Waiting),
    /// Stop the sidecar.
    Stop(Stop),
}

struct Session {
    args: SidecarArgs,
    out: Outbox,
    mesh: Option<Mesh>,
    join_error: Option<String>,
    initialized: bool,
    tasks: JoinSet<Answer>,
    waiting: HashMap<tokio::task::Id, Option<Id>>,
    lead: LeadSlot,
    forwarder: Option<AbortHandle>,
}

async fn serve(args: SidecarArgs, parent: Option<rustix::process::Pid>) -> i32 {
    let counters = Arc::new(Counters::default());
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
    let mut session = Session {
        out: Outbox {
            tx: out_tx,
            counters,
            max: args.max_message,
        },
        mesh: None,
        join_error: None,
        initialized: false,
        tasks: JoinSet::new(),
        waiting: HashMap::new(),
        lead: Arc::new(Mutex::new(None)),
        forwarder: None,
        args,
    };
    let joining = session.builder().join();
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
                match result {
                    Ok(mesh) => {
                        tracing::info!(peer = %mesh.id(), mesh = %session.args.mesh.mesh, "joined");
                        session.mesh = Some(mesh);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, mesh = %session.args.mesh.mesh, "could not join the mesh");
                        session.join_error = Some(e.to_string());
                    }
                }
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

// ---- params ----

#[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ScopeParam {
    #[default]
    Durable,
    Presence,
}

impl From<ScopeParam> for Scope {
    fn from(s: ScopeParam) -> Self {
        match s {
            ScopeParam::Durable => Self::Durable,
            ScopeParam::Presence => Self::Presence,
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct InitializeParams {
    #[serde(default)]
    protocol: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    client: Option<Json>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ChannelKey {
    channel: String,
    key: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ChannelOnly {
    channel: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct NameOnly {
    name: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct KeyIdParam {
    id: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct KeyInstallParams {
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    generate: bool,
}

fn keyring_json(mesh: &Mesh) -> Json {
    let info = mesh.keyring().list();
    let links: Map<String, Json> = mesh
        .keyring()
        .peer_keys()
        .into_iter()
        .map(|(p, k)| (p.to_string(), json!(k)))
        .collect();
    json!({
        "primary": info.primary,
        "accepted": info.accepted,
        "file": info.file,
        "link_keys": links,
    })
}

fn keyring_error(e: &MeshError) -> RpcError {
    match e {
        MeshError::Secret(s) => RpcError::new(code::KEYRING_REFUSED, s.to_string()),
        other => mesh_error(other),
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PutParams {
    channel: String,
    key: String,
    value: Json,
    #[serde(default)]
    scope: Option<ScopeParam>,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    replicated: Option<usize>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    channel: String,
    key: String,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    replicated: Option<usize>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AddParams {
    name: String,
    by: i64,
    #[serde(default)]
    scope: ScopeParam,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    replicated: Option<usize>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize, Debug)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Op {
    Put {
        channel: String,
        key: String,
        value: Json,
        #[serde(default)]
        scope: ScopeParam,
    },
    Delete {
        channel: String,
        key: String,
    },
    Add {
        name: String,
        by: i64,
        #[serde(default)]
        scope: ScopeParam,
    },
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TransactParams {
    ops: Vec<Op>,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    replicated: Option<usize>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LeadAcquireParams {
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LeadPutParams {
    channel: String,
    key: String,
    value: Json,
    #[serde(default)]
    term: Option<u64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LeadDeleteParams {
    channel: String,
    key: String,
    #[serde(default)]
    term: Option<u64>,
}

use params as parse_params;

fn params<T: DeserializeOwned>(p: Map<String, Json>) -> Result<T, RpcError> {
    serde_json::from_value(Json::Object(p)).map_err(|e| RpcError::invalid_params(e.to_string()))
}

fn value_param(v: &Json) -> Result<Value, RpcError> {
    values::from_json(v).map_err(|e| RpcError::invalid_params(format!("value: {e}")))
}

/// What a write waits for before it is answered.
#[derive(Debug, Clone, Copy)]
enum Ack {
    Applied,
    Durable(Duration),
    Replicated(usize, Duration),
}

fn ack(
    durable: bool,
    replicated: Option<usize>,
    timeout_ms: Option<u64>,
    default: Duration,
) -> Result<Ack, RpcError> {
    let within = timeout_ms.map_or(default, Duration::from_millis);
    match (durable, replicated) {
        (true, Some(_)) => Err(RpcError::invalid_params(
            "durable and replicated cannot be combined: choose one",
        )),
        (true, None) => Ok(Ack::Durable(within)),
        (false, Some(k)) => Ok(Ack::Replicated(k, within)),
        (false, None) => Ok(Ack::Applied),
    }
}

/// The JSON-RPC error for a mesh error; the message is statemesh's own.
fn mesh_error(e: &MeshError) -> RpcError {
    let code = match e {
        MeshError::Write(w) if matches!(**w, WriteError::NotLeader { .. }) => code::NOT_LEADER,
        MeshError::Write(_) => code::WRITE_REFUSED,
        MeshError::Read(_) => code::READ_FAILED,
        MeshError::Closed => code::MESH_CLOSED,
        MeshError::Timeout(_) => code::TIMEOUT,
        _ => code::INTERNAL_ERROR,
    };
    RpcError::new(code, e.to_string())
}

fn leadership_json(l: &LeadershipInfo) -> Json {
    json!({
        "leader": l.leader.map(|p| p.to_string()),
        "term": l.term,
        "is_me": l.is_me,
    })
}

fn change_json(c: &Change) -> Json {
    let kind = match c.kind {
        EntryKind::Record => "record",
        EntryKind::Counter => "counter",
        EntryKind::Leader => "leader",
    };
    json!({
        "kind": kind,
        "channel": c.channel,
        "key": c.key,
        "by": c.by.map(|p| p.to_string()),
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Forwards the mesh's changes and leadership to the client as notifications.
async fn forward(
    mut changes: broadcast::Receiver<Change>,
    mut leadership: watch::Receiver<LeadershipInfo>,
    out: Outbox,
) {
    let mut leadership_open = true;
    loop {
        tokio::select! {
            changed = leadership.changed(), if leadership_open => {
                if changed.is_err() {
                    leadership_open = false;
                    continue;
                }
                let l = *leadership.borrow_and_update();
                out.notify("leadership", leadership_json(&l)).await;
            }
            change = changes.recv() => match change {
                Ok(c) => out.notify("change", change_json(&c)).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    out.notify("lagged", json!({"missed": n})).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// A term as the sidecar shows it: `term` (its number) and `term_leader` (the window leading
/// under it; with the number, the fencing token).
fn term_json(term: Term) -> Json {
    json!({"term": term.number, "term_leader": term.leader.to_string()})
}

/// Keeps `lead` as the held guard (unless one of the same term is held already) and watches
/// it: once it is lost, the client gets `lead_lost`. Returns the term.
fn hold(slot_: &LeadSlot, lead: Lead, out: &Outbox) -> Term {
    let term = lead.term_id();
    let mut held = slot(slot_);
    if let Some(h) = held.as_ref()
        && h.lead.term_id() == term
        && h.lead.is_valid()
    {
        return term;
    }
    if let Some(old) = held.take() {
        old.watcher.abort();
    }
    let lead = Arc::new(lead);
    let watcher = tokio::spawn({
        let lead = lead.clone();
        let slot_ = slot_.clone();
        let out = out.clone();
        async move {
            lead.cancelled().await;
            let was_held = {
                let mut held = slot(&slot_);
                if held.as_ref().is_some_and(|h| Arc::ptr_eq(&h.lead, &lead)) {
                    held.take();
                    true
                } else {
                    false
                }
            };
            if was_held {
                tracing::info!(%term, "lead lost");
                out.notify("lead_lost", term_json(term)).await;
            }
        }
    })
    .abort_handle();
    *held = Some(Held { lead, watcher });
    term
}

const METHODS: &[&str] = &[
    "initialize",
    "shutdown",
    "get",
    "keys",
    "channels",
    "put",
    "put_presence",
    "delete",
    "transact",
    "add",
    "counter",
    "leader_get",
    "leader_keys",
    "members",
    "leader",
    "lead_acquire",
    "lead_put",
    "lead_delete",
    "lead_release",
    "stats",
    "explain",
    "keyring_list",
    "keyring_install",
    "keyring_use",
    "keyring_remove",
];

impl Session {
    fn builder(&self) -> statemesh::MeshBuilder {
        let a = &self.args;
        let mut b = a
            .mesh
            .builder()
            .eligible(!a.not_eligible)
            .persist(!a.no_persist)
            .ack_timeout(Duration::from_millis(a.ack_timeout_ms));
        if let Some(d) = &a.state_dir {
            b = b.state_dir(d);
        }
        b
    }

    async fn framing_error(&mut self, e: &FrameError) {
        tracing::warn!(error = %e, "framing error");
        self.out
            .counters
            .framing_errors
            .fetch_add(1, Ordering::Relaxed);
        let err = match e {
            FrameError::TooLarge { length, max } => {
                RpcError::new(code::MESSAGE_TOO_LARGE, e.to_string())
                    .with_data(json!({"length": length, "max": max}))
            }
            _ => RpcError::new(code::FRAMING_ERROR, e.to_string()),
        };
        self.out.answer(&Json::Null, Err(err)).await;
    }

    /// Handles one message body; `Some` to stop.
    async fn message(&mut self, body: &[u8]) -> Option<Stop> {
        self.out
            .counters
            .messages_in
            .fetch_add(1, Ordering::Relaxed);
        let req = match rpc::parse_request(body) {
            Ok(r) => r,
            Err(rejected) => {
                tracing::debug!(error = %rejected.error.message, "rejected message");
                if !rejected.notification {
                    self.out.answer(&rejected.id, Err(rejected.error)).await;
                }
                return None;
            }
        };
        let Request { id, method, params } = req;
        if !METHODS.contains(&method.as_str()) {
            if let Some(id) = &id {
                let e = RpcError::new(
                    code::METHOD_NOT_FOUND,
                    format!("method not found: {method:?}"),
                );
                self.out.answer(id, Err(e)).await;
            }
            return None;
        }
        if method == "initialize" {
            return self.initialize(id, params).await;
        }
        let action = if method == "shutdown" && !self.initialized {
            // Leaving needs no session: a client that gives up before `initialize` must not
            // leave the sidecar running.
            match parse_params::<NoParams>(params) {
                Ok(NoParams {}) => Action::Stop(Stop::Shutdown(None)),
                Err(e) => Action::Reply(Err(e)),
            }
        } else if !self.initialized {
            Action::Reply(Err(RpcError::new(
                code::NOT_INITIALIZED,
                "not initialized: send `initialize` first",
            )))
        } else {
            // A panic here would be a bug in statemesh: answer it instead of dying.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.handle(&method, params)
            }))
            .unwrap_or_else(|_| {
                Action::Reply(Err(RpcError::new(
                    code::INTERNAL_ERROR,
                    format!("internal error: {method} panicked (see stderr)"),
                )))
            })
        };
        match action {
            Action::Reply(answer) => {
                if let Some(id) = &id {
                    self.out.answer(id, answer).await;
                } else if let Err(e) = answer {
                    tracing::info!(method, error = %e.message, "notification failed");
                }
                None
            }
            Action::Wait(fut) => {
                let handle = self.tasks.spawn(fut);
                self.waiting.insert(handle.id(), id);
                None
            }
            Action::Stop(Stop::Shutdown(_)) => Some(Stop::Shutdown(id)),
            Action::Stop(stop) => Some(stop),
        }
    }

    /// Answers a request whose task ended.
    async fn finished(&mut self, done: Result<(tokio::task::Id, Answer), tokio::task::JoinError>) {
        let (task, answer) = match done {
            Ok((task, answer)) => (task, answer),
            Err(e) => {
                let answer = Err(RpcError::new(
                    code::INTERNAL_ERROR,
                    if e.is_panic() {
                        "internal error: the request's task panicked (see stderr)"
                    } else {
                        "the request was cancelled"
                    },
                ));
                (e.id(), answer)
            }
        };
        match self.waiting.remove(&task) {
            Some(Some(id)) => self.out.answer(&id, answer).await,
            Some(None) => {
                if let Err(e) = answer {
                    tracing::info!(error = %e.message, "notification failed");
                }
            }
            None => {}
        }
    }

    async fn initialize(&mut self, id: Option<Id>, p: Map<String, Json>) -> Option<Stop> {
        let id = id.unwrap_or(Json::Null);
        if self.initialized {
            let e = RpcError::new(code::INVALID_REQUEST, "already initialized");
            self.out.answer(&id, Err(e)).await;
            return None;
        }
        let p: InitializeParams = match params(p) {
            Ok(p) => p,
            Err(e) => {
                self.out.answer(&id, Err(e)).await;
                return None;
            }
        };
        if let Some(v) = p.protocol
            && v != PROTOCOL_VERSION
        {
            let e = RpcError::new(
                code::UNSUPPORTED_PROTOCOL,
                format!(
                    "protocol version {v} is not supported; this sidecar speaks {PROTOCOL_VERSION}"
                ),
            )
            .with_data(json!({"supported": [PROTOCOL_VERSION]}));
            self.out.answer(&id, Err(e)).await;
            return None;
        }
        let Some(mesh) = self.mesh.clone() else {
            let message = self
                .join_error
                .clone()
                .unwrap_or_else(|| "the mesh is not joined".into());
            let e = RpcError::new(
                code::JOIN_FAILED,
                format!("could not join the mesh: {message}"),
            );
            self.out.answer(&id, Err(e)).await;
            return Some(Stop::JoinFailed);
        };
        // Subscribe before answering: every change after the answer is notified.
        let changes = mesh.changes();
        let mut leadership = mesh.leadership();
        let now = *leadership.borrow_and_update();
        let result = json!({
            "protocol": PROTOCOL_VERSION,
            "server": {"name": "statemesh", "version": env!("CARGO_PKG_VERSION")},
            "peer": mesh.id().to_string(),
            "mesh": self.args.mesh.mesh,
            "leadership": leadership_json(&now),
            "synced": mesh.synced_on_join(),
            "limits": {
                "max_message": self.args.max_message,
                "max_name": statemesh::MAX_NAME_LEN,
                "max_depth": statemesh::MAX_VALUE_DEPTH,
            },
        });
        self.initialized = true;
        self.out.answer(&id, Ok(result)).await;
        let out = self.out.clone();
        self.forwarder = Some(tokio::spawn(forward(changes, leadership, out)).abort_handle());
        None
    }

    fn mesh(&self) -> Result<&Mesh, RpcError> {
        self.mesh
            .as_ref()
            .ok_or_else(|| RpcError::new(code::MESH_CLOSED, "the mesh is shut down"))
    }

    fn handle(&mut self, method: &str, p: Map<String, Json>) -> Action {
        match self.try_handle(method, p) {
            Ok(a) => a,
            Err(e) => Action::Reply(Err(e)),
        }
    }

    fn try_handle(&mut self, method: &str, p: Map<String, Json>) -> Result<Action, RpcError> {
        let reply = |r: Json| Ok(Action::Reply(Ok(r)));
        let default_ack = Duration::from_millis(self.args.ack_timeout_ms);
        match method {
            "shutdown" => {
                let NoParams {} = params(p)?;
                // The id is filled in by the caller; see `message`.
                Ok(Action::Stop(Stop::Shutdown(None)))
            }
            "get" => {
                let ChannelKey { channel, key } = params(p)?;
                let v = self
                    .mesh()?
                    .get::<Value>(&channel, &key)
                    .map_err(|e| mesh_error(&e))?;
                reply(json!({
                    "found": v.is_some(),
                    "value": v.as_ref().map_or(Json::Null, values::to_json),
                }))
            }
            "keys" => {
                let ChannelOnly { channel } = params(p)?;
                reply(json!(self.mesh()?.keys(&channel)))
            }
            "channels" => {
                let NoParams {} = params(p)?;
                reply(json!(self.mesh()?.channels()))
            }
            "put" | "put_presence" => {
                let PutParams {
                    channel,
                    key,
                    value,
                    scope,
                    durable,
                    replicated,
                    timeout_ms,
                } = params(p)?;
                let scope = match (method, scope) {
                    ("put_presence", Some(ScopeParam::Durable)) => {
                        return Err(RpcError::invalid_params(
                            "put_presence writes presence-scoped records: leave out `scope`",
                        ));
                    }
                    ("put_presence", _) => ScopeParam::Presence,
                    (_, s) => s.unwrap_or_default(),
                };
                let ack = ack(durable, replicated, timeout_ms, default_ack)?;
                let value = value_param(&value)?;
                let mesh = self.mesh()?;
                let pending = match scope {
                    ScopeParam::Durable => mesh.put(&channel, &key, &value),
                    ScopeParam::Presence => mesh.put_presence(&channel, &key, &value),
                };
                Ok(written(pending, ack, Map::new()))
            }
            "delete" => {
                let DeleteParams {
                    channel,
                    key,
                    durable,
                    replicated,
                    timeout_ms,
                } = params(p)?;
                let ack = ack(durable, replicated, timeout_ms, default_ack)?;
                let pending = self.mesh()?.delete(&channel, &key);
                Ok(written(pending, ack, Map::new()))
            }
            "add" => {
                let AddParams {
                    name,
                    by,
                    scope,
                    durable,
                    replicated,
                    timeout_ms,
                } = params(p)?;
                let ack = ack(durable, replicated, timeout_ms, default_ack)?;
                let mesh = self.mesh()?;
                let pending = mesh.add(&name, by, scope.into());
                let mut extra = Map::new();
                extra.insert("value".into(), json!(mesh.counter(&name)));
                Ok(written(pending, ack, extra))
            }
            "transact" => {
                let TransactParams {
                    ops,
                    durable,
                    replicated,
                    timeout_ms,
                } = params(p)?;
                let ack = ack(durable, replicated, timeout_ms, default_ack)?;
                // Convert every value first: a bad one refuses the whole transaction.
                let mut converted = Vec::with_capacity(ops.len());
                for (i, op) in ops.iter().enumerate() {
                    converted.push(match op {
                        Op::Put { value, .. } => Some(values::from_json(value).map_err(|e| {
                            RpcError::invalid_params(format!("ops[{i}].value: {e}"))
                        })?),
                        _ => None,
                    });
                }
                let pending = self.mesh()?.transact(|tx| {
                    for (op, value) in ops.iter().zip(&converted) {
                        match (op, value) {
                            (
                                Op::Put {
                                    channel,
                                    key,
                                    scope,
                                    ..
                                },
                                Some(v),
                            ) => tx.put(channel, key, v, (*scope).into())?,
                            (Op::Delete { channel, key }, _) => tx.delete(channel, key)?,
                            (Op::Add { name, by, scope }, _) => {
                                tx.add(name, *by, (*scope).into())?
                            }
                            (Op::Put { .. }, None) => {}
                        }
                    }
                    Ok(())
                });
                Ok(written(pending, ack, Map::new()))
            }
            "counter" => {
                let NameOnly { name } = params(p)?;
                reply(json!(self.mesh()?.counter(&name)))
            }
            "leader_get" => {
                let ChannelKey { channel, key } = params(p)?;
                let v = self
                    .mesh()?
                    .leader_get::<Value>(&channel, &key)
                    .map_err(|e| mesh_error(&e))?;
                reply(match v {
                    Some((v, term)) => json!({
                        "found": true,
                        "value": values::to_json(&v),
                        "term": term.number,
                        "term_leader": term.leader.to_string(),
                    }),
                    None => {
                        json!({"found": false, "value": null, "term": null, "term_leader": null})
                    }
                })
            }
            "leader_keys" => {
                let ChannelOnly { channel } = params(p)?;
                reply(json!(self.mesh()?.leader_keys(&channel)))
            }
            "members" => {
                let NoParams {} = params(p)?;
                let members: Vec<Json> = self
                    .mesh()?
                    .members()
                    .iter()
                    .map(|m| {
                        json!({
                            "peer": m.peer.to_string(),
                            "incarnation": m.incarnation,
                            "live": m.live,
                            "eligible": m.eligible,
                            "silent_for_ms": millis(m.silent_for),
                        })
                    })
                    .collect();
                reply(Json::Array(members))
            }
            "leader" => {
                let NoParams {} = params(p)?;
                let l = *self.mesh()?.leadership().borrow();
                reply(leadership_json(&l))
            }
            "lead_acquire" => {
                let LeadAcquireParams { timeout_ms } = params(p)?;
                let mesh = self.mesh()?.clone();
                let slot_ = self.lead.clone();
                let out = self.out.clone();
                Ok(Action::Wait(Box::pin(async move {
                    let lead = match timeout_ms {
                        Some(ms) => tokio::time::timeout(Duration::from_millis(ms), mesh.lead())
                            .await
                            .map_err(|_| {
                                RpcError::new(
                                    code::TIMEOUT,
                                    format!("timed out waiting for leadership ({ms} ms)"),
                                )
                            })?,
                        None => mesh.lead().await,
                    };
                    let lead = lead.ok_or_else(|| mesh_error(&MeshError::Closed))?;
                    let term = hold(&slot_, lead, &out);
                    Ok(term_json(term))
                })))
            }
            "lead_put" | "lead_delete" => {
                let (channel, key, value, term) = if method == "lead_put" {
                    let LeadPutParams {
                        channel,
                        key,
                        value,
                        term,
                    } = params(p)?;
                    (channel, key, Some(value_param(&value)?), term)
                } else {
                    let LeadDeleteParams { channel, key, term } = params(p)?;
                    (channel, key, None, term)
                };
                let held = slot(&self.lead);
                let Some(h) = held.as_ref() else {
                    return Err(RpcError::new(
                        code::NOT_LEADER,
                        "no lead guard is held: call lead_acquire first",
                    ));
                };
                let mine = h.lead.term();
                if let Some(t) = term
                    && t != mine
                {
                    let e = MeshError::from(WriteError::NotLeader { term: t });
                    return Err(mesh_error(&e).with_data(json!({"held_term": mine})));
                }
                match &value {
                    Some(v) => h.lead.put(&channel, &key, v),
                    None => h.lead.delete(&channel, &key),
                }
                .map_err(|e| mesh_error(&e))?;
                reply(term_json(h.lead.term_id()))
            }
            "lead_release" => {
                let NoParams {} = params(p)?;
                let held = slot(&self.lead).take();
                let released = held.is_some();
                if let Some(h) = held {
                    h.watcher.abort();
                }
                reply(json!({"released": released}))
            }
            "keyring_list" => {
                let NoParams {} = params(p)?;
                reply(keyring_json(self.mesh()?))
            }
            "keyring_install" => {
                let KeyInstallParams { key_file, generate } = params(p)?;
                let key = match (key_file, generate) {
                    (Some(f), false) => statemesh::read_key_file(&f)
                        .map_err(|e| RpcError::new(code::KEYRING_REFUSED, e.to_string()))?,
                    (None, true) => statemesh::Secret::generate(),
                    _ => {
                        return Err(RpcError::invalid_params(
                            "give exactly one of `key_file` and `generate: true`",
                        ));
                    }
                };
                let mesh = self.mesh()?;
                let id = mesh.keyring().install(key).map_err(|e| keyring_error(&e))?;
                let mut out = keyring_json(mesh);
                out["installed"] = json!(id.to_string());
                reply(out)
            }
            "keyring_use" | "keyring_remove" => {
                let KeyIdParam { id } = params(p)?;
                let id: statemesh::KeyId = id
                    .parse()
                    .map_err(|e: statemesh::SecretError| RpcError::invalid_params(e.to_string()))?;
                let mesh = self.mesh()?;
                if method == "keyring_use" {
                    mesh.keyring().use_key(id)
                } else {
                    mesh.keyring().remove(id)
                }
                .map_err(|e| keyring_error(&e))?;
                reply(keyring_json(mesh))
            }
            "stats" => {
                let NoParams {} = params(p)?;
                let mesh = self.mesh()?;
                let c = &self.out.counters;
                let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let metrics = mesh.metrics();
                reply(json!({
                    "mesh": mesh.stats(),
                    "discovery": {
                        "links": metrics.links,
                        "mdns_peers_found": metrics.mdns_peers_found,
                        "warning": metrics.discovery_warning,
                        "probes": metrics.probes,
                        "probe_failures": metrics.probe_failures,
                        "dial_candidates": metrics.dial_candidates,
                        "auth_failures": metrics.auth_failures,
                    },
                    "keys": {
                        "primary": metrics.keys.primary,
                        "accepted": metrics.keys.accepted,
                        "link_keys": metrics.link_keys,
                        "renewals": metrics.key_renewals,
                        "renewal_failures": metrics.key_renewal_failures,
                    },
                    "sidecar": {
                        "messages_in": load(&c.messages_in),
                        "framing_errors": load(&c.framing_errors),
                        "responses_out": load(&c.responses_out),
                        "errors_out": load(&c.errors_out),
                        "notifications_out": load(&c.notifications_out),
                    },
                }))
            }
            "explain" => {
                let NoParams {} = params(p)?;
                let x = self.mesh()?.explain();
                let peers: Vec<Json> = x
                    .peers
                    .iter()
                    .map(|s| {
                        json!({
                            "peer": s.peer.to_string(),
                            "incarnation": s.incarnation,
                            "counter": s.counter,
                            "live": s.live,
                            "eligible": s.eligible,
                            "silent_for_ms": millis(s.silent_for),
                            "death": s.death.map(|d| match d {
                                DeathCause::Timeout => "timeout",
                                DeathCause::LinkClosed => "link_closed",
                                DeathCause::Left => "left",
                            }),
                        })
                    })
                    .collect();
                reply(json!({
                    "me": {"peer": x.me.peer.to_string(), "incarnation": x.me.number},
                    "leader": x.leadership.leader.map(|p| p.to_string()),
                    "term": x.leadership.term,
                    "max_term": x.max_term,
                    "max_term_leader": x.max_term_leader().map(|p| p.to_string()),
                    "me_candidate": x.me_candidate,
                    "peers": peers,
                }))
            }
            other => Err(RpcError::new(
                code::METHOD_NOT_FOUND,
                format!("method not found: {other:?}"),
            )),
        }
    }

    /// Leaves the mesh and exits: answers what can still be answered, flushes stdout.
    async fn finish(mut self, stop: Stop) -> i32 {
        tracing::info!(reason = %stop.describe(), "stopping");
        let status = stop.status(self.join_error.is_some());
        let mut left = Ok(());
        if let Some(mesh) = &self.mesh {
            left = match tokio::time::timeout(LEAVE_WITHIN, mesh.shutdown()).await {
                Ok(r) => r.map_err(|e| mesh_error(&e)),
                Err(_) => Err(RpcError::new(code::TIMEOUT, "timed out leaving the mesh")),
            };
            if let Err(e) = &left {
                tracing::warn!(error = %e.message, "leaving the mesh");
            }
        }
        // Waiting requests end promptly once the mesh is closed; answer them.
        let drain = async {
            while let Some(done) = self.tasks.join_next_with_id().await {
                self.finished(done).await;
            }
        };
        let _ = tokio::time::timeout(DRAIN_WITHIN, drain).await;
        self.tasks.abort_all();
        if let Some(f) = self.forwarder.take() {
            f.abort();
        }
        if let Some(h) = slot(&self.lead).take() {
            h.watcher.abort();
        }
        if let Stop::Shutdown(Some(id)) = &stop {
            self.out.answer(id, left.map(|()| Json::Null)).await;
        }
        let (done, flushed) = oneshot::channel();
        let close = async {
            if self.out.tx.send(Out::Close(done)).await.is_ok() {
                let _ = flushed.await;
            }
        };
        let _ = tokio::time::timeout(DRAIN_WITHIN, close).await;
        tracing::info!(status, "exiting");
        status
    }
}

/// The action for a write: answered now, or once acknowledged.
fn written(pending: Result<Pending, MeshError>, ack: Ack, extra: Map<String, Json>) -> Action {
    let pending = match pending {
        Ok(p) => p,
        Err(e) => return Action::Reply(Err(mesh_error(&e))),
    };
    let mut result = extra;
    result.insert("changed".into(), json!(pending.changed()));
    let (wait, within, what) = match ack {
        Ack::Applied => return Action::Reply(Ok(Json::Object(result))),
        Ack::Durable(within) => {
            result.insert("durable".into(), json!(true));
            (
                Box::pin(pending.timeout(within).durable())
                    as std::pin::Pin<Box<dyn Future<Output = Result<(), MeshError>> + Send>>,
                within,
                "durable".to_owned(),
            )
        }
        Ack::Replicated(k, within) => {
            result.insert("replicated".into(), json!(k));
            (
                Box::pin(pending.timeout(within).replicated(k)) as _,
                within,
                format!("replicated to {k} peers"),
            )
        }
    };
    Action::Wait(Box::pin(async move {
        match wait.await {
            Ok(()) => Ok(Json::Object(result)),
            Err(MeshError::Timeout(_)) => Err(RpcError::new(
                code::TIMEOUT,
                format!(
                    "timed out after {} ms waiting for the write to be {what}; it was applied locally",
                    millis(within)
                ),
            )
            .with_data(json!({"applied": true}))),
            Err(MeshError::Ack(a)) => {
                let reason = match a {
                    AckError::PersistenceOff => "persistence_off",
                    AckError::StoreFailed(_) => "store_failed",
                    AckError::Untracked => "untracked",
                    _ => "other",
                };
                Err(RpcError::new(
                    code::NOT_ACKNOWLEDGED,
                    format!("{a}; the write was applied locally"),
                )
                .with_data(json!({"applied": true, "reason": reason})))
            }
            Err(e) => Err(mesh_error(&e).with_data(json!({"applied": true}))),
        }
    }))
}
