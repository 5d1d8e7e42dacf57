//! Window processes on one machine, for real: `statemesh node` processes found through their
//! local sockets, syncing over QUIC on loopback. They converge on writes made by all of them at
//! once; the leader is SIGKILLed (its presence-scoped record vanishes), then the next one shuts
//! down gracefully; a window restarts and gets the state back. Times are printed (the benchmark
//! harness measures them properly); assertions are about who leads and what every window holds.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::{Windows, ms, statemesh};

fn node(dir: &Path) -> Command {
    let mut cmd = statemesh();
    cmd.args(["node", "--mesh", "proc-test", "--announce"])
        .arg("--runtime-dir")
        .arg(dir.join("run"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--secret-file")
        .arg(dir.join("secret"));
    cmd
}

/// Whether `records` hold a note from every window in `from`, and presence records for exactly
/// the windows `present`.
fn holds(records: &Value, notes: &[usize], present: &[String]) -> bool {
    let all_notes = notes
        .iter()
        .all(|n| records["notes"][format!("from-{n}")] == json!(*n));
    let windows: Vec<&String> = records["windows"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    all_notes && windows.len() == present.len() && present.iter().all(|p| windows.contains(&p))
}

#[test]
fn windows_converge_fail_over_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = Windows::new();
    for n in 0..4 {
        w.spawn(n, node(dir.path()));
    }
    let order = w.by_id();
    w.until_all_see(&[0, 1, 2, 3], &w.id(order[0]));

    // Every window writes at the same moment; all converge on all writes.
    for n in 0..4 {
        w.send(
            n,
            json!({"op": "put", "channel": "notes", "key": format!("from-{n}"), "value": n}),
        );
    }
    let ids: Vec<String> = (0..4).map(|n| w.id(n)).collect();
    w.until_converged(&[0, 1, 2, 3], |r| holds(r, &[0, 1, 2, 3], &ids));

    // SIGKILL the leader: its local sockets close, the survivors elect the next-lowest id, and
    // its presence-scoped record vanishes everywhere.
    let killed = order[0];
    let killed_at = w.kill(killed);
    let survivors: Vec<usize> = order[1..].to_vec();
    let done = w.until_all_see(&survivors, &w.id(order[1]));
    eprintln!(
        "failover after SIGKILL: {:.1} ms (4 processes, one machine)",
        ms(killed_at, done)
    );
    let alive: Vec<String> = survivors.iter().map(|n| w.id(*n)).collect();
    w.until_converged(&survivors, |r| holds(r, &[0, 1, 2, 3], &alive));

    // Graceful shutdown of the new leader (SIGTERM): it announces its leave.
    let (stopped_at, status) = w.terminate(order[1]);
    let rest: Vec<usize> = order[2..].to_vec();
    let done = w.until_all_see(&rest, &w.id(order[2]));
    eprintln!(
        "handover after graceful shutdown: {:.1} ms",
        ms(stopped_at, done)
    );
    assert!(status.success(), "graceful shutdown exits 0");

    // The killed window restarts (a new process, a new id): it reads the state from disk and
    // the peers, and takes part again.
    w.spawn(killed, node(dir.path()));
    let mut back: Vec<usize> = rest.clone();
    back.push(killed);
    let present: Vec<String> = back.iter().map(|n| w.id(*n)).collect();
    w.until_converged(&back, |r| holds(r, &[0, 1, 2, 3], &present));
    let lowest = back.iter().map(|n| w.id(*n)).min().expect("windows left");
    w.until_all_see(&back, &lowest);
}
