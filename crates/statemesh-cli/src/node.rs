//! `statemesh node`: run one peer, printing what it sees as JSON lines.
//!
//! Commands may be given on stdin, one JSON object per line (tests and scripts drive windows
//! this way; a bad line gets an `error` event and nothing else happens):
//! - `{"op":"put","channel":C,"key":K,"value":V}` (`"presence":true` for a presence-scoped
//!   record), `{"op":"delete","channel":C,"key":K}`, `{"op":"add","name":N,"by":I}`: each
//!   answered by `{"event":"written","write":W,...}` once applied locally; with
//!   `"await":"durable"` or `"await":{"replicated":K}` also by `{"event":"acked","write":W,
//!   "ok":true}` once on disk or held by K peers (`"ok":false,"error":...` if the wait failed:
//!   the mesh closed first, 10 s passed, or the acknowledgement can never come — persistence
//!   off, a store failure, the write no longer tracked). An `"id"` given with a command is
//!   echoed in its answers;
//! - `{"op":"state"}`: answered by `{"event":"state","records":{C:{K:V}},"counters":{N:I},
//!   "leader":L,"term":T,"links":N,"mdns_peers_found":M,"discovery_warning":W}` (N: QUIC links
//!   up now; M: peers found by mDNS, null without `--lan`; W: null, or what is wrong with
//!   discovery), plus `"keys":{"primary":ID,"accepted":[ID]}`, `"link_keys":{PEER:ID}` (the key
//!   each linked peer proved with), `"auth_failures":N`, `"key_renewals":N`, `"links_opened":N` (links brought up since
//!   it joined), `"leadership_changes":N`;
//! - `{"op":"lead_put","channel":C,"key":K,"value":V}`: writes a leader record through this
//!   window's lead guard (the latest one it obtained, kept even once its leadership is over, so
//!   that the library's fencing is what refuses a stale write); answered by
//!   `{"event":"lead_put","ok":true,"term":T}`, or `"ok":false,"error":...` if refused (never
//!   led, or the guard's leadership is over);
//! - `{"op":"leader_get","channel":C,"key":K}`: answered by `{"event":"leader_get",
//!   "value":V,"term":T}` (both null unless a live leader of the newest term wrote it).
//!
//! A `{"event":"keys","primary":ID,"accepted":[ID]}` line is printed whenever this window
//! applies a change of its keyring (see `statemesh keys`).
//!
//! The end of stdin is not a signal to stop (a window may run detached from any input).

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Value as Json, json};
use statemesh::{Lead, Mesh, Scope, Value};
use statemesh_cli::args::MeshArgs;
use statemesh_cli::sidecar::values::{from_json, to_json};
use std::io::BufRead;

/// Options of `statemesh node`.
#[derive(clap::Args, Debug)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Where state files live (default: `<state dir>/statemesh`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Do not persist state.
    #[arg(long)]
    no_persist: bool,
    /// Never become the probe leader.
    #[arg(long)]
    not_eligible: bool,
    /// Write a presence-scoped record `windows/<my id>` on start (so others see this window).
    #[arg(long)]
    announce: bool,
}

pub(crate) async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut b = args
        .mesh
        .builder()
        .eligible(!args.not_eligible)
        .persist(!args.no_persist);
    if let Some(d) = &args.state_dir {
        b = b.state_dir(d);
    }
    let mesh = b.join().await?;
    let ms = || started.elapsed().as_secs_f64() * 1e3;
    let mut out = Out::default();
    out.emit(&json!({
        "event": "joined",
        "peer": mesh.id().to_string(),
        "synced": mesh.synced_on_join(),
        "t_ms": ms(),
    }));
    if args.announce {
        mesh.put("windows", &mesh.id().to_string(), &true, Scope::Presence)?;
    }
    // The leadership may have settled while joining: print it as it is now, then its changes.
    let mut leadership = mesh.leadership();
    let mut lead = None;
    let mut changes = mesh.changes();
    let mut keys = mesh.keyring().watch();
    keys.borrow_and_update();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stdin = stdin_lines();
    let (later, mut acks) = tokio::sync::mpsc::unbounded_channel();
    while !out.closed {
        tokio::select! {
            Some(line) = stdin.recv() => {
                if !line.trim().is_empty() {
                    out.emit(&command(&mesh, &mut lead, &line, &later));
                }
            }
            Some(ack) = acks.recv() => out.emit(&ack),
            Ok(()) = keys.changed() => {
                let ring = keys.borrow_and_update().clone();
                out.emit(&json!({
                    "event": "keys",
                    "primary": ring.primary_id().to_string(),
                    "accepted": ring.ids().iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "t_ms": ms(),
                }));
            }
            l = leadership.recv() => {
                let Some(l) = l else { break };
                out.emit(&json!({
                    "event": "leadership",
                    "leader": l.leader.map(|p| p.to_string()),
                    "term": l.term,
                    "is_me": l.is_me,
                    "t_ms": ms(),
                }));
            }
            change = changes.recv() => match change {
                Some(Ok(c)) => out.emit(&json!({
                    "event": "change",
                    "kind": format!("{:?}", c.kind).to_lowercase(),
                    "channel": c.channel,
                    "key": c.key,
                    "by": c.by.map(|p| p.to_string()),
                    "t_ms": ms(),
                })),
                Some(Err(lagged)) => {
                    out.emit(&json!({"event": "lagged", "missed": lagged.missed}));
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    mesh.shutdown().await;
    out.emit(&json!({"event": "left", "t_ms": ms()}));
    Ok(())
}

/// Standard output, one JSON object per line. Once nobody reads it any more (a closed pipe),
/// the window leaves gracefully instead of dying of the write error.
#[derive(Default)]
struct Out {
    closed: bool,
}

impl Out {
    fn emit(&mut self, line: &Json) {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        if !self.closed
            && writeln!(stdout, "{line}")
                .and_then(|()| stdout.flush())
                .is_err()
        {
            self.closed = true;
        }
    }
}

/// Lines of stdin, read on a thread of their own: a read blocked on an idle terminal or pipe
/// must not hold up the runtime's shutdown (tokio's own stdin would).
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    rx
}

/// Where answers that come later (acknowledgements) are sent, to be printed by the main loop.
type Later = tokio::sync::mpsc::UnboundedSender<Json>;

/// For a write command with `"await": "durable"` or `"await": {"replicated": K}`: waits in the
/// background and sends an `acked` line (`"ok": false` with the error if the wait failed).
fn await_ack(pending: statemesh::Pending, cmd: &Json, later: &Later) -> Result<(), String> {
    let wait = &cmd["await"];
    let replicated = match (wait.as_str(), wait["replicated"].as_u64()) {
        (None, None) if wait.is_null() => return Ok(()),
        (Some("durable"), _) => None,
        (None, Some(k)) => Some(usize::try_from(k).map_err(|_| "`replicated` too large")?),
        _ => return Err("`await` must be \"durable\" or {\"replicated\": K}".into()),
    };
    let (id, write, later) = (cmd["id"].clone(), pending.id().0, later.clone());
    let wait = wait.clone();
    tokio::spawn(async move {
        let result = match replicated {
            None => pending.durable().await,
            Some(k) => pending.replicated(k).await,
        };
        let _ = later.send(json!({
            "event": "acked",
            "id": id,
            "write": write,
            "await": wait,
            "ok": result.is_ok(),
            "error": result.err().map(|e| e.to_string()),
        }));
    });
    Ok(())
}

/// One stdin command (see the module docs); the JSON line to print in answer.
fn command(mesh: &Mesh, lead: &mut Option<Lead>, line: &str, later: &Later) -> Json {
    match try_command(mesh, lead, line, later) {
        Ok(answer) => answer,
        Err(e) => json!({"event": "error", "error": e}),
    }
}

/// The lead guard to write through: a new one if this window leads under a term newer than
/// the held guard's, else the held one (possibly stale: its writes are then refused).
fn lead_guard<'a>(mesh: &Mesh, held: &'a mut Option<Lead>) -> Option<&'a Lead> {
    let now = mesh.leadership().current();
    if now.is_me && now.term.is_some() && held.as_ref().map(Lead::term) != now.term {
        // `lead` answers at once while this window leads; never wait for it here.
        let mut wait = std::pin::pin!(mesh.lead());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(Some(guard)) = wait.as_mut().poll(&mut cx) {
            *held = Some(guard);
        }
    }
    held.as_ref()
}

fn try_command(
    mesh: &Mesh,
    lead: &mut Option<Lead>,
    line: &str,
    later: &Later,
) -> Result<Json, String> {
    let cmd: Json = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let text = |field: &str| {
        cmd[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("`{field}` must be a string"))
    };
    let op = text("op")?;
    let written = |pending: statemesh::Pending| {
        let answer = json!({
            "event": "written",
            "op": op,
            "id": cmd["id"],
            "write": pending.id().0,
            "changed": pending.changed(),
        });
        await_ack(pending, &cmd, later).map(|()| answer)
    };
    match op.as_str() {
        "put" => {
            let (channel, key) = (text("channel")?, text("key")?);
            let value = from_json(&cmd["value"])?;
            let scope = if cmd["presence"].as_bool().unwrap_or(false) {
                Scope::Presence
            } else {
                Scope::Durable
            };
            let pending = mesh
                .put(&channel, &key, &value, scope)
                .map_err(|e| e.to_string())?;
            written(pending)
        }
        "delete" => {
            let pending = mesh
                .delete(&text("channel")?, &text("key")?)
                .map_err(|e| e.to_string())?;
            written(pending)
        }
        "add" => {
            let by = cmd["by"].as_i64().ok_or("`by` must be an integer")?;
            let pending = mesh
                .add(&text("name")?, by, Scope::Durable)
                .map_err(|e| e.to_string())?;
            written(pending)
        }
        "state" => {
            let mut records = serde_json::Map::new();
            for channel in mesh.channels() {
                let mut entries = serde_json::Map::new();
                for key in mesh.keys(&channel) {
                    if let Ok(Some(v)) = mesh.get::<Value>(&channel, &key) {
                        entries.insert(key, to_json(&v));
                    }
                }
                records.insert(channel, Json::Object(entries));
            }
            let counters: serde_json::Map<String, Json> = mesh
                .counters()
                .into_iter()
                .map(|name| {
                    let v = mesh.counter(&name);
                    (name, json!(v))
                })
                .collect();
            let l = mesh.leadership().current();
            let metrics = mesh.metrics();
            Ok(json!({
                "event": "state",
                "records": records,
                "counters": counters,
                "leader": l.leader.map(|p| p.to_string()),
                "term": l.term,
                "links": metrics.links,
                "mdns_peers_found": metrics.mdns_peers_found,
                "discovery_warning": metrics.discovery_warning,
                "keys": {"primary": metrics.keys.primary, "accepted": metrics.keys.accepted},
                "link_keys": metrics.link_keys,
                "auth_failures": metrics.auth_failures,
                "key_renewals": metrics.key_renewals,
                "links_opened": metrics.links_opened,
                "leadership_changes": metrics.leadership_changes,
            }))
        }
        "lead_put" => {
            let (channel, key) = (text("channel")?, text("key")?);
            let value = from_json(&cmd["value"])?;
            let (term, result) = match lead_guard(mesh, lead) {
                Some(guard) => (
                    Some(guard.term_id()),
                    guard.put(&channel, &key, &value).map_err(|e| e.to_string()),
                ),
                None => (None, Err("this window never led".to_owned())),
            };
            Ok(json!({
                "event": "lead_put",
                "id": cmd["id"],
                "ok": result.is_ok(),
                "term": term.map(|t| t.number),
                "term_leader": term.map(|t| t.leader.to_string()),
                "error": result.err(),
            }))
        }
        "leader_get" => {
            let found = mesh
                .leader_get::<Value>(&text("channel")?, &text("key")?)
                .map_err(|e| e.to_string())?;
            Ok(json!({
                "event": "leader_get",
                "id": cmd["id"],
                "value": found.as_ref().map(|(v, _)| to_json(v)),
                "term": found.as_ref().map(|(_, t)| t.number),
                "term_leader": found.map(|(_, t)| t.leader.to_string()),
            }))
        }
        other => Err(format!("unknown op {other:?}")),
    }
}
