//! `statemesh status | members | leader | get | counter | set | watch | keygen`: each (but keygen) joins
//! the mesh as a short-lived peer that is never eligible to lead and persists nothing, waits
//! until it holds what the running windows hold, then reads, writes or watches.
//!
//! Exit codes: 0 done; 1 error; 2 bad usage; 3 no running window answered (for `set`: nobody
//! would hold the write); 4 the key asked for does not exist. `--json` output is documented in
//! `docs/cli.md` and stable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value as Json, json};
use statemesh::{Change, EntryKind, Member, Mesh, Scope, Secret, Value};
use statemesh_cli::args::MeshArgs;
use statemesh_cli::sidecar::values::{from_json, to_json};

/// No running window answered.
pub(crate) const EXIT_NO_WINDOWS: u8 = 3;
/// The key asked for does not exist.
pub(crate) const EXIT_NOT_FOUND: u8 = 4;

/// The longest a command waits for the running windows' state.
const SYNC_WAIT: Duration = Duration::from_secs(5);

/// Options shared by the reading commands.
#[derive(clap::Args, Debug)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    pub(crate) mesh: MeshArgs,
    /// Print JSON (stable; see docs/cli.md) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The query commands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum Query {
    /// The leader, members and channels of a mesh.
    Status(QueryArgs),
    /// Every member with its liveness.
    Members(QueryArgs),
    /// Who leads, and why: the live set, each peer's freshness, the term.
    Leader(QueryArgs),
    /// Reads a record, or every record of a channel (leader records included).
    Get {
        #[command(flatten)]
        args: QueryArgs,
        /// The channel.
        channel: String,
        /// The key (default: every key of the channel).
        key: Option<String>,
    },
    /// Reads a counter (0 if never written), or every counter with `--all`.
    Counter {
        #[command(flatten)]
        args: QueryArgs,
        /// The counter's name.
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        /// Every counter, by name.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// Writes a record (the value is JSON; a bare word is taken as a string) and waits until
    /// every running window it reached holds it.
    Set {
        #[command(flatten)]
        args: QueryArgs,
        /// The channel.
        channel: String,
        /// The key.
        key: String,
        /// The value, as JSON.
        value: String,
    },
    /// Streams changes and leadership changes until interrupted.
    Watch(QueryArgs),
}

impl Query {
    fn args(&self) -> &QueryArgs {
        match self {
            Self::Status(a) | Self::Members(a) | Self::Leader(a) | Self::Watch(a) => a,
            Self::Get { args, .. } | Self::Set { args, .. } | Self::Counter { args, .. } => args,
        }
    }
}

/// Writes a new secret file.
#[derive(clap::Args, Debug)]
pub(crate) struct KeygenArgs {
    /// Where (default: `<config dir>/statemesh/secret`).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Replace an existing secret (windows using the old one can no longer join).
    #[arg(long)]
    force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let path = match &args.secret_file {
        Some(p) => p.clone(),
        None => Secret::default_path()?,
    };
    Secret::create(&path, args.force)?;
    if args.json {
        println!("{}", json!({"path": path, "created": true}));
    } else {
        println!("wrote a new secret to {} (mode 0600)", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run(query: Query) -> anyhow::Result<ExitCode> {
    let args = query.args();
    let mesh = args
        .mesh
        .builder()
        .eligible(false)
        .persist(false)
        .join()
        .await?;
    let synced = tokio::time::timeout(SYNC_WAIT, mesh.synced()).await;
    if !matches!(synced, Ok(Ok(()))) || mesh.linked() == 0 {
        // In LAN mode, finding nobody by mDNS is the likely cause: say so, with the remedy.
        let hint = (mesh.metrics().mdns_peers_found == Some(0)).then_some(
            "LAN mode found no peer by mDNS: if windows run on other machines, multicast is \
             likely blocked between them (UDP port 5353 dropped, or a network filtering \
             multicast); give one window's address with --peer host:port",
        );
        mesh.shutdown().await;
        if args.json {
            println!(
                "{}",
                json!({"error": "no running window answered", "mesh": args.mesh.mesh,
                       "discovery_warning": hint})
            );
        } else {
            eprintln!(
                "no running window of mesh {:?} answered (same mesh name, secret file and runtime directory?)",
                args.mesh.mesh
            );
            if let Some(hint) = hint {
                eprintln!("{hint}");
            }
        }
        return Ok(ExitCode::from(EXIT_NO_WINDOWS));
    }
    let json_out = args.json;
    let code = match &query {
        Query::Status(_) => print(json_out, status(&mesh)),
        Query::Members(_) => print(json_out, to_value(&members(&mesh))),
        Query::Leader(_) => print(json_out, leader(&mesh)),
        Query::Get { channel, key, .. } => get(&mesh, json_out, channel, key.as_deref()),
        Query::Counter { name, .. } => print(json_out, counter(&mesh, name.as_deref())),
        Query::Set {
            channel,
            key,
            value,
            ..
        } => set(&mesh, json_out, channel, key, value).await?,
        Query::Watch(_) => watch(&mesh, json_out).await,
    };
    mesh.shutdown().await;
    Ok(code)
}

/// Prints `value` as JSON, or as indented `key: value` text.
fn print(as_json: bool, value: Json) -> ExitCode {
    if as_json {
        println!("{value}");
    } else {
        print_text(&value, 0);
    }
    ExitCode::SUCCESS
}

fn print_text(value: &Json, depth: usize) {
    let pad = "  ".repeat(depth);
    match value {
        Json::Object(map) => {
            for (k, v) in map {
                if v.is_object() || v.is_array() {
                    println!("{pad}{k}:");
                    print_text(v, depth + 1);
                } else {
                    println!("{pad}{k}: {v}");
                }
            }
        }
        Json::Array(items) => {
            for item in items {
                if item.is_object() {
                    println!("{pad}-");
                    print_text(item, depth + 1);
                } else {
                    println!("{pad}- {item}");
                }
            }
        }
        other => println!("{pad}{other}"),
    }
}

/// The members as the asking peer sees them, itself excluded (`Member`'s own JSON).
fn members(mesh: &Mesh) -> Vec<Member> {
    let me = mesh.id();
    mesh.members()
        .into_iter()
        .filter(|m| m.peer != me)
        .collect()
}

/// A value of one of statemesh's public types as JSON (their own `serde` rendering).
fn to_value<T: serde::Serialize>(value: &T) -> Json {
    // These types hold no map with non-string keys, so this cannot fail.
    serde_json::to_value(value).unwrap_or(Json::Null)
}

/// The leadership's fields (`leader`, `term`, `is_me`), the live members, the channels with
/// their number of keys, and the asking peer's metrics.
fn status(mesh: &Mesh) -> Json {
    let channels: serde_json::Map<String, Json> = mesh
        .channels()
        .into_iter()
        .map(|c| {
            let n = mesh.keys(&c).len();
            (c, json!(n))
        })
        .collect();
    let live = members(mesh).iter().filter(|m| m.live).count();
    let mut out = to_value(&mesh.leadership().current());
    out["live_members"] = json!(live);
    out["channels"] = Json::Object(channels);
    out["metrics"] = to_value(&mesh.metrics());
    out
}

/// The explanation (`Explanation`'s JSON) with the rule, the live eligible peers, and the
/// members other than the asking peer in place of `peers`.
fn leader(mesh: &Mesh) -> Json {
    let why = mesh.explain();
    let me = mesh.id();
    let candidates: Vec<String> = why
        .peers
        .iter()
        .filter(|p| p.live && p.eligible && p.peer != me)
        .map(|p| p.peer.to_string())
        .collect();
    let members: Vec<Member> = why.peers.iter().filter(|p| p.peer != me).cloned().collect();
    let mut out = to_value(&why);
    if let Some(o) = out.as_object_mut() {
        o.remove("peers");
    }
    out["rule"] = json!("the lowest live eligible peer id leads");
    out["live_eligible"] = json!(candidates);
    out["members"] = to_value(&members);
    out
}

fn get(mesh: &Mesh, as_json: bool, channel: &str, key: Option<&str>) -> ExitCode {
    let read = |k: &str| -> Option<Json> {
        if let Ok(Some(v)) = mesh.get::<Value>(channel, k) {
            return Some(json!({"value": to_json(&v)}));
        }
        match mesh.leader_get::<Value>(channel, k) {
            Ok(Some((v, term))) => Some(json!({
                "value": to_json(&v),
                "term": term.number,
                "term_leader": term.leader.to_string(),
            })),
            _ => None,
        }
    };
    let found = match key {
        Some(k) => read(k).map(|v| json!({"channel": channel, "key": k, "record": v})),
        None => {
            let mut keys = mesh.keys(channel);
            keys.extend(mesh.leader_keys(channel));
            keys.sort();
            keys.dedup();
            let records: serde_json::Map<String, Json> = keys
                .into_iter()
                .filter_map(|k| read(&k).map(|v| (k, v)))
                .collect();
            (!records.is_empty()).then(|| json!({"channel": channel, "records": records}))
        }
    };
    match found {
        Some(v) => print(as_json, v),
        None => {
            if as_json {
                println!(
                    "{}",
                    json!({"error": "not found", "channel": channel, "key": key})
                );
            } else {
                eprintln!("not found: {channel}/{}", key.unwrap_or("*"));
            }
            ExitCode::from(EXIT_NOT_FOUND)
        }
    }
}

/// One counter (`{"name", "value"}`), or every counter (`{"counters": {NAME: VALUE}}`).
fn counter(mesh: &Mesh, name: Option<&str>) -> Json {
    match name {
        Some(n) => json!({"name": n, "value": mesh.counter(n)}),
        None => {
            let all: serde_json::Map<String, Json> = mesh
                .counters()
                .into_iter()
                .map(|n| {
                    let v = mesh.counter(&n);
                    (n, json!(v))
                })
                .collect();
            json!({"counters": all})
        }
    }
}

async fn set(
    mesh: &Mesh,
    as_json: bool,
    channel: &str,
    key: &str,
    value: &str,
) -> anyhow::Result<ExitCode> {
    let parsed: Json = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
    let value = from_json(&parsed).map_err(|e| anyhow::anyhow!(e))?;
    let holders = mesh.linked();
    let pending = mesh.put(channel, key, &value, Scope::Durable)?;
    tokio::time::timeout(SYNC_WAIT, pending.replicated(holders))
        .await
        .map_err(|_| anyhow::anyhow!("the running windows did not acknowledge the write"))??;
    print(
        as_json,
        json!({"channel": channel, "key": key, "value": parsed, "held_by": holders}),
    );
    Ok(ExitCode::SUCCESS)
}

async fn watch(mesh: &Mesh, as_json: bool) -> ExitCode {
    let mut changes = mesh.changes();
    let mut leadership = mesh.leadership();
    let emit = |v: Json| {
        if as_json {
            println!("{v}");
        } else {
            let fields: Vec<String> = v
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            println!("{}", fields.join(" "));
        }
    };
    loop {
        tokio::select! {
            c = changes.recv() => match c {
                Some(Ok(c)) => emit(change_json(mesh, &c)),
                Some(Err(lagged)) => {
                    emit(json!({"event": "lagged", "missed": lagged.missed}));
                }
                None => return ExitCode::SUCCESS,
            },
            l = leadership.recv() => {
                let Some(l) = l else { return ExitCode::SUCCESS };
                let mut event = json!({"event": "leadership"});
                if let (Some(e), Json::Object(l)) = (event.as_object_mut(), to_value(&l)) {
                    e.extend(l);
                }
                emit(event);
            }
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

fn change_json(mesh: &Mesh, c: &Change) -> Json {
    let value = match c.kind {
        EntryKind::Record => mesh
            .get::<Value>(&c.channel, &c.key)
            .ok()
            .flatten()
            .map(|v| to_json(&v)),
        EntryKind::Counter => Some(json!(mesh.counter(&c.key))),
        EntryKind::Leader => mesh
            .leader_get::<Value>(&c.channel, &c.key)
            .ok()
            .flatten()
            .map(|(v, _)| to_json(&v)),
    };
    json!({
        "event": "change",
        "kind": format!("{:?}", c.kind).to_lowercase(),
        "channel": c.channel,
        "key": c.key,
        "by": c.by.map(|p| p.to_string()),
        "value": value,
    })
}
