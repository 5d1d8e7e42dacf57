//! `backpressure_wait` for real: two sidecars linked by QUIC on loopback, the writer's backlog
//! bounded small (`--backpressure 4,8`). The peer is frozen with SIGSTOP, so it acknowledges
//! nothing and the writer's backlog only grows; it stays live meanwhile (a suspect timeout of a
//! minute, a freeze of milliseconds, well under the 6 s QUIC idle timeout). Woken with SIGCONT,
//! it catches up, and the wait ends. `backpressure` notifications say when writes begin and
//! cease to be pushed back.
//!
//! Nothing waits on a sleep: every wait is on a message, with a timeout as a safety net.

mod support;

use rustix::process::Signal;
use serde_json::{Value, json};
use support::sidecar::Sidecar;

/// Soft and hard bounds of the writer's backlog.
const SOFT: u64 = 4;
const HARD: u64 = 8;

/// Flags of both windows: a frozen peer is not judged dead for a minute; no state on disk.
const WINDOW: [&str; 3] = ["--suspect-ms", "60000", "--no-persist"];

/// Two linked windows: `a`, the writer with small bounds, and `b`, its only peer. `a` has
/// `b` acknowledge a write first, so they are linked both ways.
fn pair(dir: &std::path::Path, mesh: &str) -> (Sidecar, Sidecar) {
    let bounds = format!("{SOFT},{HARD}");
    let mut flags = WINDOW.to_vec();
    flags.extend(["--backpressure", bounds.as_str()]);
    let mut a = Sidecar::spawn(dir, mesh, &flags);
    a.initialize();
    let mut b = Sidecar::spawn(dir, mesh, &WINDOW);
    b.initialize();
    a.ok(
        "put",
        json!({"channel": "w", "key": "warm", "value": 0, "replicated": 1}),
    );
    (a, b)
}

/// Writes to channel `c` from `a` until a write is refused busy; returns the keys written and
/// the refusal.
fn fill(a: &mut Sidecar, b: &Sidecar, prefix: &str) -> (Vec<String>, Value) {
    let mut written = Vec::new();
    loop {
        let key = format!("{prefix}{}", written.len());
        let r = a.call("put", json!({"channel": "c", "key": key, "value": 1}));
        if let Some(e) = r.get("error") {
            return (written, e.clone());
        }
        written.push(key);
        if written.len() as u64 > HARD {
            let stats = a.ok("stats", json!({}));
            let explain = a.ok("explain", json!({}));
            let peer = b.proc_state();
            panic!(
                "more writes than the hard bound were accepted: {r}\nstats: {stats}\nexplain: {explain}\npeer: {peer}"
            );
        }
    }
}

/// Sends a request without waiting for its answer; returns its id.
fn send(s: &mut Sidecar, id: &str, method: &str, params: Value) -> Value {
    let id = json!(id);
    s.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
    id
}

#[test]
fn a_busy_writer_waits_until_its_frozen_peer_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b) = pair(dir.path(), "pressure");

    // Not pushed back: answered at once, in order, before the request sent behind it.
    let idle = send(&mut a, "idle", "backpressure_wait", json!({}));
    let behind = send(&mut a, "behind", "channels", json!({}));
    let r = a.response(&behind);
    assert!(a.answered(&idle), "answered before `channels`: {r}");
    let backlog = a.response(&idle)["result"]["backlog"].as_u64();
    assert!(backlog.is_some_and(|n| n < SOFT), "{backlog:?}");

    // The peer frozen, the writer runs into the hard bound: refused busy, nothing written,
    // and told what to call before retrying.
    b.freeze();
    let (written, e) = fill(&mut a, &b, "k");
    assert_eq!(e["code"], -32011, "{e}");
    assert_eq!(e["data"]["limit"], HARD, "{e}");
    assert!(e["data"]["backlog"].as_u64() >= Some(HARD), "{e}");
    assert_eq!(e["data"]["retry"], "backpressure_wait", "{e}");
    // The client was told when its writes began to be pushed back.
    let on = a.notification("backpressure", |p| p["pressed"] == true);
    assert!(on["backlog"].is_u64(), "{on}");
    let refused = format!("k{}", written.len());
    assert_eq!(
        a.ok("get", json!({"channel": "c", "key": refused}))["found"],
        false
    );

    // The wait does not end while the peer is frozen, and does not hold up the requests
    // behind it: they are answered first (a timed wait ends with its timeout).
    let wait = send(&mut a, "wait", "backpressure_wait", json!({}));
    let timed = a.err("backpressure_wait", json!({"timeout_ms": 50}));
    assert_eq!(timed["code"], -32004, "{timed}");
    let still = a.err("put", json!({"channel": "c", "key": "still", "value": 1}));
    assert_eq!(still["code"], -32011, "still refused: {still}");
    assert_eq!(
        a.ok("keys", json!({"channel": "c"})),
        json!(sorted(&written)),
        "the refused writes wrote nothing"
    );
    assert!(
        !a.answered(&wait),
        "the wait ended while the peer was frozen"
    );

    // The peer woken, it catches up: the wait ends with the backlog under half the soft
    // bound, and writes are accepted again.
    b.signal(Signal::CONT);
    let r = a.response(&wait);
    let backlog = r["result"]["backlog"].as_u64();
    assert!(backlog.is_some_and(|n| n < SOFT / 2), "{r}");
    // And told when that ended, with the backlog then (nothing was written since).
    let off = a.notification("backpressure", |p| p["pressed"] == false);
    assert!(
        off["backlog"].as_u64().is_some_and(|n| n < SOFT / 2),
        "{off}"
    );
    let held = b.ok("keys", json!({"channel": "c"}));
    let held = held.as_array().map_or(0, Vec::len);
    assert!(
        held + 1 >= written.len(),
        "the peer holds all but at most one of {written:?}: {held}"
    );
    let r = a.ok("put", json!({"channel": "c", "key": "after", "value": 1}));
    assert_eq!(r, json!({"changed": true}));
}

#[test]
fn a_wait_pending_at_shutdown_is_answered_mesh_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, b) = pair(dir.path(), "pressure-closed");
    b.freeze();
    let (_, e) = fill(&mut a, &b, "k");
    assert_eq!(e["code"], -32011, "{e}");
    let wait = send(&mut a, "wait", "backpressure_wait", json!({}));
    let bye = send(&mut a, "bye", "shutdown", json!({}));
    // Answered before the sidecar leaves, and before the `shutdown` answer.
    let r = a.response(&wait);
    assert_eq!(r["error"]["code"], -32003, "{r}");
    assert!(!a.answered(&bye), "the wait is answered first");
    assert_eq!(a.response(&bye)["result"], Value::Null);
    assert!(a.exit_status().success());
    b.signal(Signal::CONT);
}

#[test]
fn backpressure_bounds_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The mesh refuses bounds out of order: `initialize` reports it, the sidecar exits 3.
    let mut s = Sidecar::spawn(dir.path(), "bounds", &["--backpressure", "9,8"]);
    let e = s.err("initialize", json!({"protocol": 1}));
    assert_eq!(e["code"], -32007, "{e}");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("9 / 8")),
        "{e}"
    );
    assert_eq!(s.exit_status().code(), Some(3));
    // A malformed flag is a usage error (status 2), before anything starts.
    let status = std::process::Command::new(support::sidecar::bin())
        .args(["sidecar", "--backpressure", "8"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("runs");
    assert_eq!(status.code(), Some(2));
}

fn sorted(keys: &[String]) -> Vec<String> {
    let mut k = keys.to_vec();
    k.sort();
    k
}
