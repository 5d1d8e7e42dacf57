//! A session with the client: the dispatcher of its messages, the outbox to stdout, the lead
//! guard held for it, its notifications, and leaving at the end.
//!
//! Requests are handled one at a time, in the order they arrive: a write is applied to the
//! mesh before the next message is read, so a `get` after a `put` sees it. Requests that wait
//! (acknowledgements, leadership, the backlog) are then awaited in their own task and answered
//! when done; the dispatcher goes on with the next message meanwhile. Which method does what
//! is in [`super::methods`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value as Json, json};
use statemesh::{ChangeStream, JoinError, Lead, LeadershipStream, Mesh, Term};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};

use super::answers::{change_json, term_json, to_json};
use super::framing::FrameError;
use super::methods::{self, Serve};
use super::params::{self, InitializeParams, Params};
use super::process::{Out, SidecarArgs, Stop};
use super::rpc::{self, Id, PROTOCOL_VERSION, Request, RpcError, code};

/// How long leaving the mesh may take before the sidecar exits anyway.
const LEAVE_WITHIN: Duration = Duration::from_secs(5);
/// How long pending answers and the last bytes to stdout may take at exit.
const DRAIN_WITHIN: Duration = Duration::from_secs(2);

/// Counters of the sidecar itself (reported by `stats`).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) messages_in: AtomicU64,
    pub(super) framing_errors: AtomicU64,
    pub(super) responses_out: AtomicU64,
    pub(super) errors_out: AtomicU64,
    pub(super) notifications_out: AtomicU64,
}

/// The sending side of stdout.
#[derive(Debug, Clone)]
pub(super) struct Outbox {
    tx: mpsc::Sender<Out>,
    pub(super) counters: Arc<Counters>,
    /// `--max-message`: no answer longer than this is sent.
    max: usize,
}

impl Outbox {
    /// The sending side of `tx`, with new counters; answers longer than `max` are refused.
    pub(super) fn new(tx: mpsc::Sender<Out>, max: usize) -> Self {
        Self {
            tx,
            counters: Arc::default(),
            max,
        }
    }

    async fn send(&self, body: Vec<u8>) {
        // The writer is gone only when stdout is closed; the main loop learns that itself.
        let _ = self.tx.send(Out::Body(body)).await;
    }

    /// Sends the answer to request `id`: its result, or its error.
    pub(super) async fn answer(&self, id: &Id, result: Result<Json, RpcError>) {
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

    /// Sends a notification.
    pub(super) async fn notify(&self, method: &str, params: Json) {
        self.counters
            .notifications_out
            .fetch_add(1, Ordering::Relaxed);
        self.send(rpc::notification(method, params)).await;
    }
}

/// The answer to a request: its result, or its error.
pub(super) type Answer = Result<Json, RpcError>;
/// An answer still to come.
pub(super) type Waiting = std::pin::Pin<Box<dyn Future<Output = Answer> + Send>>;

/// What handling a request produced.
pub(super) enum Action {
    /// The answer, now.
    Reply(Answer),
    /// The answer, once this future resolves.
    Wait(Waiting),
    /// Stop the sidecar.
    Stop(Stop),
}

/// The state of the sidecar's one session.
pub(super) struct Session {
    /// The command's options.
    pub(super) args: SidecarArgs,
    /// Stdout.
    pub(super) out: Outbox,
    /// The mesh, once joined.
    mesh: Option<Mesh>,
    /// Why joining failed (`initialize` answers with it).
    join_error: Option<String>,
    /// Whether `initialize` was answered.
    initialized: bool,
    /// Requests being awaited.
    pub(super) tasks: JoinSet<Answer>,
    /// The id to answer for each awaited request (`None`: a notification).
    waiting: HashMap<tokio::task::Id, Option<Id>>,
    /// The lead guard held for the client.
    pub(super) lead: LeadSlot,
    /// The task sending `change` and `leadership` notifications, once initialized.
    forwarder: Option<AbortHandle>,
}

/// The lead guard the sidecar holds for its client, with the task watching it.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) lead: Arc<Lead>,
    pub(super) watcher: AbortHandle,
}

/// Where the held lead guard is kept (shared with its watcher).
pub(super) type LeadSlot = Arc<Mutex<Option<Held>>>;

/// The held lead guard, if any.
pub(super) fn slot(s: &LeadSlot) -> MutexGuard<'_, Option<Held>> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keeps `lead` as the held guard (unless one of the same term is held already) and watches
/// it: once it is lost, the client gets `lead_lost`. Returns the term.
pub(super) fn hold(slot_: &LeadSlot, lead: Lead, out: &Outbox) -> Term {
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

/// Forwards the mesh's changes, leadership and backpressure to the client as notifications;
/// the client was last told of leadership `told` (in the answer to `initialize`), and that
/// writes were not pushed back.
async fn forward(
    mut changes: ChangeStream,
    mut leadership: LeadershipStream,
    mut told: statemesh::Leadership,
    mesh: Mesh,
    out: Outbox,
) {
    let mut leadership_open = true;
    let mut pressure = mesh.backpressure_watch();
    let mut pressed = false;
    let mut pressure_open = true;
    loop {
        tokio::select! {
            r = pressure.changed(), if pressure_open => {
                if r.is_err() {
                    pressure_open = false;
                    continue;
                }
                // Quick successive changes merge: only a change from what was told is sent.
                let now = *pressure.borrow_and_update();
                if now != pressed {
                    pressed = now;
                    let backlog = mesh.metrics().backlog;
                    out.notify("backpressure", json!({"pressed": now, "backlog": backlog})).await;
                }
            }
            l = leadership.recv(), if leadership_open => {
                let Some(l) = l else {
                    leadership_open = false;
                    continue;
                };
                // The stream starts with the snapshot the client already has.
                if l != told {
                    told = l;
                    out.notify("leadership", to_json(&l)).await;
                }
            }
            change = changes.recv() => match change {
                Some(Ok(c)) => out.notify("change", change_json(&c)).await,
                Some(Err(lagged)) => {
                    out.notify("lagged", json!({"missed": lagged.missed})).await;
                }
                None => return,
            },
        }
    }
}

impl Session {
    /// A session writing to `out`, before the mesh is joined.
    pub(super) fn new(args: SidecarArgs, out: Outbox) -> Self {
        Self {
            args,
            out,
            mesh: None,
            join_error: None,
            initialized: false,
            tasks: JoinSet::new(),
            waiting: HashMap::new(),
            lead: Arc::new(Mutex::new(None)),
            forwarder: None,
        }
    }

    /// Takes the outcome of joining the mesh (`initialize` answers with it).
    pub(super) fn joined(&mut self, result: Result<Mesh, JoinError>) {
        match result {
            Ok(mesh) => {
                tracing::info!(peer = %mesh.id(), mesh = %self.args.mesh.mesh, "joined");
                self.mesh = Some(mesh);
            }
            Err(e) => {
                tracing::error!(error = %e, mesh = %self.args.mesh.mesh, "could not join the mesh");
                self.join_error = Some(e.to_string());
            }
        }
    }

    /// Answers a message stdin's framing refused.
    pub(super) async fn framing_error(&mut self, e: &FrameError) {
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
    pub(super) async fn message(&mut self, body: &[u8]) -> Option<Stop> {
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
        let Some(serve) = methods::find(&method) else {
            if let Some(id) = &id {
                let e = RpcError::new(
                    code::METHOD_NOT_FOUND,
                    format!("method not found: {method:?}"),
                );
                self.out.answer(id, Err(e)).await;
            }
            return None;
        };
        let action = match serve {
            Serve::Handshake => return self.initialize(id, params).await,
            Serve::Initialized(_) if !self.initialized => Action::Reply(Err(RpcError::new(
                code::NOT_INITIALIZED,
                "not initialized: send `initialize` first",
            ))),
            Serve::Always(call) | Serve::Initialized(call) => self.call(*call, &method, params),
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

    /// Runs a method's handler; an error is its answer.
    fn call(&self, call: methods::Call, method: &str, p: Params) -> Action {
        // A panic here would be a bug in statemesh: answer it instead of dying.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            call(self, p).unwrap_or_else(|e| Action::Reply(Err(e)))
        }))
        .unwrap_or_else(|_| {
            Action::Reply(Err(RpcError::new(
                code::INTERNAL_ERROR,
                format!("internal error: {method} panicked (see stderr)"),
            )))
        })
    }

    /// Answers a request whose task ended.
    pub(super) async fn finished(
        &mut self,
        done: Result<(tokio::task::Id, Answer), tokio::task::JoinError>,
    ) {
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

    /// The handshake: checks the protocol version, answers with who this peer is, then starts
    /// the notifications. `Some` to stop (the mesh could not be joined).
    async fn initialize(&mut self, id: Option<Id>, p: Params) -> Option<Stop> {
        let id = id.unwrap_or(Json::Null);
        if self.initialized {
            let e = RpcError::new(code::INVALID_REQUEST, "already initialized");
            self.out.answer(&id, Err(e)).await;
            return None;
        }
        let p: InitializeParams = match params::parse(p) {
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
        let leadership = mesh.leadership();
        let now = leadership.current();
        let result = json!({
            "protocol": PROTOCOL_VERSION,
            "server": {"name": "statemesh", "version": env!("CARGO_PKG_VERSION")},
            "peer": mesh.id().to_string(),
            "mesh": self.args.mesh.mesh,
            "leadership": to_json(&now),
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
        let forwarding = forward(changes, leadership, now, mesh.clone(), out);
        self.forwarder = Some(tokio::spawn(forwarding).abort_handle());
        None
    }

    /// The mesh, unless it is shut down.
    pub(super) fn mesh(&self) -> Result<&Mesh, RpcError> {
        self.mesh
            .as_ref()
            .ok_or_else(|| RpcError::new(code::MESH_CLOSED, "the mesh is shut down"))
    }

    /// Leaves the mesh and exits: answers what can still be answered, flushes stdout.
    pub(super) async fn finish(mut self, stop: Stop) -> i32 {
        tracing::info!(reason = %stop.describe(), "stopping");
        let status = stop.status(self.join_error.is_some());
        let mut left = Ok(());
        if let Some(mesh) = &self.mesh {
            left = tokio::time::timeout(LEAVE_WITHIN, mesh.shutdown())
                .await
                .map_err(|_| RpcError::new(code::TIMEOUT, "timed out leaving the mesh"));
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
