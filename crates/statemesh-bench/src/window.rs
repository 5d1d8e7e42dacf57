//! The hidden `window` subcommand: one window process of a benchmark. It joins a
//! [`statemesh::Mesh`] the way an application window does and is driven by the harness over
//! stdin and stdout, one JSON object per line.
//!
//! Lines it prints (`t` is always [`now_ns`] when the thing happened, on the clock every
//! window of this machine shares):
//! - `{"ev":"joined","peer":ID,"pid":P,"join_us":F}` once (`peer` is null for a baseline);
//! - `{"ev":"lead","leader":ID|null,"term":T|null,"me":B,"t":NS}` at every leadership change
//!   (and once at start);
//! - `{"ev":"seen","key":K,"delay_ns":D,"stamp":S}` when a record of channel `prop` written
//!   by another window arrives: `S` is the writer's timestamp stored in the value, `D` the
//!   arrival time minus `S`;
//! - answers to commands: `links`, `info`, `burst_done`, `reached`, `count`, `leaving`,
//!   `left`, and `{"ev":"error","error":E}` for a command that failed.
//!
//! Commands (`{"op":...}`): `stamp {key}` (write `prop/key` = now), `put {channel,key,value}`,
//! `watch {prefix}` (start tracking the keys of channels starting with `prefix`), `expect
//! {count}` (answer `reached` once that many tracked keys are held), `expect_values {values}`
//! (answer `reached` once every key `k` of channel `tp` holds at least `values[k]`), `count`,
//! `burst {ms, batch, prefix, same_key}` (write keys `tp/<prefix>-<n>` = n, or with `same_key`
//! rewrite `tp/<prefix>` = n, as fast as possible for `ms`, `batch` writes per atomic change),
//! `links {n}` (answer once `n` links are up and this window may claim
//! leadership: past its join grace; `linked_t` says when the links were up), `info`, `shutdown`
//! (graceful leave, then exit). The end of stdin ends the process without a leave.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value as Json, json};
use statemesh::{Mesh, Scope};
use tokio::sync::mpsc;

use crate::clock::now_ns;

/// Options of the hidden `window` subcommand.
#[derive(clap::Args, Debug)]
pub(crate) struct WindowArgs {
    /// The mesh to join.
    #[arg(long, default_value = "bench")]
    mesh: String,
    /// The secret file shared by every window of the run.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// This machine's runtime directory (local sockets).
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    /// This machine's state directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// LAN mode (QUIC on every interface, mDNS); only ever used inside a network namespace.
    #[arg(long)]
    lan: bool,
    /// The harness's pid: the window exits if its parent is already gone.
    #[arg(long)]
    parent: Option<u32>,
    /// Start like a window but never join: the memory baseline of this binary.
    #[arg(long)]
    idle_baseline: bool,
    /// Run the `transport-floor` window instead: the links without the mesh (local only).
    #[arg(long)]
    transport_floor: bool,
    /// With `--transport-floor`: exchange views too (see `floor_window`).
    #[arg(long)]
    floor_views: bool,
    /// With `--transport-floor`: stamps are records of Automerge documents (see
    /// `floor_window`).
    #[arg(long)]
    floor_documents: bool,
    /// With `--floor-views`: views on the machine's heartbeat grid (see `floor_window`).
    #[arg(long)]
    floor_aligned: bool,
}

/// Runs one window until stdin ends or a `shutdown` command.
pub(crate) fn run(args: WindowArgs) -> anyhow::Result<()> {
    // Die with the harness, even if it is SIGKILLed: an orphaned window would keep its mesh
    // (and a namespace) busy.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if let Some(parent) = args.parent
        && rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent)
    {
        return Ok(());
    }
    // `RUST_LOG=statemesh=debug` shows what the library does, on each window's stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    // The shape of `MeshBuilder::join_blocking`: the mesh runs on one runtime worker thread;
    // this process's main thread is the "UI thread" that reads commands and prints events.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("statemesh")
        .enable_all()
        .build()?;
    if args.idle_baseline {
        return rt.block_on(baseline());
    }
    if args.transport_floor {
        return rt.block_on(crate::floor_window::run(
            args.secret_file.as_deref(),
            &args.mesh,
            crate::floor_window::Carried {
                views: args.floor_views,
                documents: args.floor_documents,
                aligned: args.floor_aligned,
            },
        ));
    }
    rt.block_on(window(args))
}

/// Prints one JSON line; exits if nobody reads stdout any more (the harness is gone).
pub(crate) fn emit(line: &Json) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// The command a line of stdin holds; `None`, said on stdout, if it is not JSON.
pub(crate) fn command_of(line: &str) -> Option<Json> {
    serde_json::from_str(line)
        .inspect_err(|e| emit(&json!({"ev": "error", "error": format!("not JSON: {e}")})))
        .ok()
}

/// Lines of stdin, read on a thread of their own; the channel closes at the end of stdin.
pub(crate) fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
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

async fn baseline() -> anyhow::Result<()> {
    let mut stdin = stdin_lines();
    emit(&json!({"ev": "joined", "peer": null, "pid": std::process::id(), "join_us": 0.0}));
    while stdin.recv().await.is_some() {}
    Ok(())
}

/// Keys of channels starting with a prefix, as seen in the change stream.
struct Tracked {
    prefix: String,
    /// The keys seen, by channel (looked up without allocating: a rescan after an overrun
    /// notes every key of the channel again).
    keys: HashMap<String, HashSet<String>>,
    /// How many keys `keys` holds.
    count: usize,
    /// When the last new key arrived.
    last_new: u64,
    /// Answer `reached` once this many keys are held.
    target: Option<usize>,
    /// Change-stream overruns (each followed by a full rescan).
    lagged: u64,
    /// Keys of channel `tp` and the least value each must hold before `reached`.
    want: HashMap<String, i64>,
}

impl Tracked {
    fn note(&mut self, channel: &str, key: &str, at: u64) {
        if !channel.starts_with(&self.prefix) {
            return;
        }
        let new = match self.keys.get_mut(channel) {
            Some(keys) => !keys.contains(key) && keys.insert(key.to_owned()),
            None => {
                let keys = HashSet::from([key.to_owned()]);
                self.keys.insert(channel.to_owned(), keys);
                true
            }
        };
        if new {
            self.count += 1;
            self.last_new = at;
        }
    }

    /// After the change stream overran: every tracked channel's keys, read from the document.
    fn rescan(&mut self, mesh: &Mesh) {
        let at = now_ns();
        for channel in mesh.channels() {
            if channel.starts_with(&self.prefix) {
                for key in mesh.keys(&channel) {
                    self.note(&channel, &key, at);
                }
            }
        }
    }

    /// Notes a write to `tp/key` seen at `at`: the `reached` line once every wanted value is
    /// held.
    fn note_value(&mut self, mesh: &Mesh, channel: &str, key: &str, at: u64) -> Option<Json> {
        if channel != "tp" || self.want.is_empty() {
            return None;
        }
        let least = *self.want.get(key)?;
        if !matches!(mesh.get::<i64>(channel, key), Ok(Some(v)) if v >= least) {
            return None;
        }
        self.want.remove(key);
        self.last_new = at;
        self.want
            .is_empty()
            .then(|| json!({"ev": "reached", "t": at, "count": self.count, "lagged": self.lagged}))
    }

    /// Every wanted value checked again (after `expect_values`, or a change-stream overrun).
    fn check_values(&mut self, mesh: &Mesh) -> Option<Json> {
        let at = now_ns();
        let keys: Vec<String> = self.want.keys().cloned().collect();
        keys.iter().find_map(|k| self.note_value(mesh, "tp", k, at))
    }

    /// The `reached` line, once the target is met (then forgets the target).
    fn check(&mut self) -> Option<Json> {
        let target = self.target?;
        (self.count >= target).then(|| {
            self.target = None;
            json!({"ev": "reached", "t": self.last_new, "count": self.count,
                   "lagged": self.lagged})
        })
    }
}

async fn window(args: WindowArgs) -> anyhow::Result<()> {
    let started = now_ns();
    let mut b = Mesh::builder(&args.mesh).lan(args.lan);
    if let Some(f) = &args.secret_file {
        b = b.secret_file(f);
    }
    if let Some(d) = &args.runtime_dir {
        b = b.runtime_dir(d);
    }
    if let Some(d) = &args.state_dir {
        b = b.state_dir(d);
    }
    let mesh = b.join().await?;
    let me = mesh.id();
    emit(&json!({
        "ev": "joined",
        "peer": me.to_string(),
        "pid": std::process::id(),
        "join_us": (now_ns() - started) as f64 / 1e3,
    }));
    let mut leadership = mesh.leadership();
    let mut changes = mesh.changes();
    let mut stdin = stdin_lines();
    let (later, mut answers) = mpsc::unbounded_channel::<Json>();
    let mut tracked: Option<Tracked> = None;
    let lead_line = |l: statemesh::Leadership, t: u64| {
        json!({"ev": "lead", "leader": l.leader.map(|p| p.to_string()), "term": l.term,
               "me": l.is_me, "t": t})
    };
    // The stream starts with the snapshot printed here.
    let mut shown = leadership.current();
    emit(&lead_line(shown, now_ns()));
    loop {
        tokio::select! {
            l = leadership.recv() => {
                let t = now_ns();
                let Some(l) = l else { break };
                if l != shown {
                    shown = l;
                    emit(&lead_line(l, t));
                }
            }
            change = changes.recv() => {
                let t = now_ns();
                match change {
                    Some(Ok(c)) => {
                        if c.channel == "prop"
                            && c.by != Some(me)
                            && let Ok(Some(stamp)) = mesh.get::<i64>("prop", &c.key)
                        {
                            emit(&json!({"ev": "seen", "key": c.key,
                                         "delay_ns": t as i64 - stamp, "stamp": stamp}));
                        }
                        if let Some(tr) = &mut tracked {
                            tr.note(&c.channel, &c.key, t);
                            if let Some(line) = tr.check() {
                                emit(&line);
                            }
                            if let Some(line) = tr.note_value(&mesh, &c.channel, &c.key, t) {
                                emit(&line);
                            }
                        }
                    }
                    Some(Err(_lagged)) => {
                        if let Some(tr) = &mut tracked {
                            tr.lagged += 1;
                            tr.rescan(&mesh);
                            if let Some(line) = tr.check() {
                                emit(&line);
                            }
                            if let Some(line) = tr.check_values(&mesh) {
                                emit(&line);
                            }
                        }
                    }
                    None => break,
                }
            }
            Some(answer) = answers.recv() => emit(&answer),
            line = stdin.recv() => {
                let Some(line) = line else { break };
                let Some(cmd) = command_of(&line) else { continue };
                if cmd["op"] == "shutdown" {
                    emit(&json!({"ev": "leaving", "t": now_ns()}));
                    mesh.shutdown().await;
                    emit(&json!({"ev": "left", "t": now_ns()}));
                    return Ok(());
                }
                match command(&mesh, &cmd, &later, &mut tracked) {
                    Ok(Some(answer)) => emit(&answer),
                    Ok(None) => {}
                    Err(e) => emit(&json!({"ev": "error", "op": cmd["op"], "error": e})),
                }
            }
        }
    }
    Ok(())
}

/// One command; an immediate answer, if any (others come later through `later`).
fn command(
    mesh: &Mesh,
    cmd: &Json,
    later: &mpsc::UnboundedSender<Json>,
    tracked: &mut Option<Tracked>,
) -> Result<Option<Json>, String> {
    let text = |f: &str| {
        cmd[f]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("`{f}` must be a string"))
    };
    let number = |f: &str| {
        cmd[f]
            .as_u64()
            .ok_or_else(|| format!("`{f}` must be a non-negative integer"))
    };
    match cmd["op"].as_str().unwrap_or_default() {
        "stamp" => {
            let key = text("key")?;
            let t = now_ns() as i64;
            mesh.put("prop", &key, &t, Scope::Durable)
                .map_err(|e| e.to_string())?;
            Ok(None)
        }
        "put" => {
            let value = text("value")?;
            mesh.put(&text("channel")?, &text("key")?, &value, Scope::Durable)
                .map_err(|e| e.to_string())?;
            Ok(None)
        }
        "watch" => {
            let mut tr = Tracked {
                prefix: text("prefix")?,
                keys: HashMap::new(),
                count: 0,
                last_new: now_ns(),
                target: None,
                lagged: 0,
                want: HashMap::new(),
            };
            tr.rescan(mesh);
            *tracked = Some(tr);
            Ok(None)
        }
        "expect" => {
            let tr = tracked.as_mut().ok_or("`expect` before `watch`")?;
            tr.target = Some(number("count")? as usize);
            Ok(tr.check())
        }
        "expect_values" => {
            let tr = tracked.as_mut().ok_or("`expect_values` before `watch`")?;
            let values = cmd["values"]
                .as_object()
                .ok_or("`values` must be an object")?;
            tr.want = values
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.as_i64().ok_or("values must be integers")?)))
                .collect::<Result<_, String>>()?;
            Ok(tr.check_values(mesh))
        }
        "count" => {
            let tr = tracked.as_ref().ok_or("`count` before `watch`")?;
            Ok(Some(json!({"ev": "count", "count": tr.count})))
        }
        "burst" => {
            let (ms, batch, prefix) = (number("ms")?, number("batch")?.max(1), text("prefix")?);
            let same_key = cmd["same_key"].as_bool().unwrap_or(false);
            let (mesh, later) = (mesh.clone(), later.clone());
            let rt = tokio::runtime::Handle::current();
            std::thread::Builder::new()
                .name("writer".into())
                .spawn(move || {
                    let _ = later.send(burst(&mesh, &rt, ms, batch, &prefix, same_key));
                })
                .map_err(|e| e.to_string())?;
            Ok(None)
        }
        "links" => {
            let want = number("n")? as usize;
            let (mesh, later) = (mesh.clone(), later.clone());
            tokio::spawn(async move {
                // The API has no event for "a link came up" or "past the join grace"; look
                // every 5 ms (a few dozen times per run). A window is ready once it has its
                // links and may claim leadership (its join grace is over, or discovery settled:
                // in LAN mode mDNS never says it settled, so that is the whole grace).
                let deadline = now_ns() + 60_000_000_000;
                let mut linked_at = None;
                loop {
                    let links = mesh.metrics().links;
                    let candidate = mesh.explain().me_candidate;
                    if links >= want {
                        linked_at.get_or_insert_with(now_ns);
                    }
                    if (links >= want && candidate) || now_ns() > deadline {
                        let _ = later.send(json!({"ev": "links", "links": links,
                            "candidate": candidate, "linked_t": linked_at}));
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            Ok(None)
        }
        "info" => {
            let explain = mesh.explain();
            let metrics = mesh.metrics();
            Ok(Some(json!({
                "ev": "info",
                "incarnation": explain.incarnation,
                "live": explain.peers.iter().filter(|p| p.live).count(),
                "links": metrics.links,
                "leadership_changes": metrics.leadership_changes,
                "sync_in": metrics.sync_in,
                "sync_out": metrics.sync_out,
                "sync_resets": metrics.sync_resets,
                "syncs_owed_by_views": metrics.syncs_owed_by_views,
                "bytes_in": metrics.bytes_in,
                "freezes": metrics.freezes,
                "suspicions_refuted": metrics.suspicions_refuted,
                "tick_late_p99_us": metrics.tick_late.p99_us,
                "tick_late_max_us": metrics.tick_late.max_us,
                "driver_turns": metrics.driver_turns.samples,
                "driver_turn_p99_us": metrics.driver_turns.p99_us,
                "driver_turn_max_us": metrics.driver_turns.max_us,
                "backlog": metrics.backlog,
                "backlog_peak": metrics.backlog_peak,
                "writes_refused": metrics.writes_refused,
                "views_dropped": metrics.views_dropped,
                "views_sealed_received": metrics.views_sealed_received,
                "views_sealed_refused": metrics.views_sealed_refused,
                "frames_in": metrics.frames_in,
                "frames_out": metrics.frames_out,
                "probes": metrics.probes,
                "probe_failures": metrics.probe_failures,
                "dial_failures": metrics.dial_failures,
                "dial_candidates": metrics.dial_candidates,
                "candidates_forgotten": metrics.candidates_forgotten,
                "mdns_peers_found": metrics.mdns_peers_found,
                "quic_port": mesh.quic_addr().port(),
            })))
        }
        other => Err(format!("unknown op {other:?}")),
    }
}

/// Writes keys `tp/<prefix>-<n>` = n (with `same_key`: `tp/<prefix>` = n, rewritten) for
/// `ms` milliseconds, `batch` per atomic change, as fast
/// as the API allows: a write refused for backpressure waits for the backlog to clear (on the
/// mesh's runtime `rt`), then the loop goes on.
fn burst(
    mesh: &Mesh,
    rt: &tokio::runtime::Handle,
    ms: u64,
    batch: u64,
    prefix: &str,
    same_key: bool,
) -> Json {
    let t0 = now_ns();
    let end = t0 + ms * 1_000_000;
    let mut written = 0u64;
    let mut changes = 0u64;
    let mut refused = 0u64;
    while now_ns() < end {
        let first = written;
        let result = mesh.transact(|tx| {
            for n in first..first + batch {
                let key = if same_key {
                    prefix.to_owned()
                } else {
                    format!("{prefix}-{n}")
                };
                tx.put("tp", &key, &(n as i64), Scope::Durable)?;
            }
            Ok(())
        });
        match result {
            Ok(_) => {}
            Err(statemesh::WriteError::Backpressure { .. }) => {
                refused += 1;
                if let Err(e) = rt.block_on(mesh.backpressure()) {
                    return json!({"ev": "error", "op": "burst", "error": e.to_string()});
                }
                continue;
            }
            Err(e) => return json!({"ev": "error", "op": "burst", "error": e.to_string()}),
        }
        written += batch;
        changes += 1;
    }
    json!({"ev": "burst_done", "written": written, "changes": changes, "refused": refused,
           "t0": t0, "t1": now_ns()})
}
