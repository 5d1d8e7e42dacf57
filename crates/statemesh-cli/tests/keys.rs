//! Rotating the mesh secret with real window processes on one machine (issue 11): three
//! `statemesh node` windows sharing one keyring file, written to all the time, are rotated from
//! key A to key B with `statemesh keys install | use | remove`. No link is dropped (no window
//! brings a link up again), no write is lost (every write is acknowledged as held by both other
//! windows, and the counter adds up), the leader and its term stay, and no window refuses
//! another. Afterwards a window holding only A is refused (audited, counted in
//! `auth_failures`) and one holding only B joins.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::{Windows, statemesh};

const MESH: &str = "keys-test";

fn node(dir: &Path, secret: &Path) -> Command {
    let mut cmd = statemesh();
    cmd.args(["node", "--mesh", MESH, "--no-persist"])
        .arg("--runtime-dir")
        .arg(dir.join("run"))
        .arg("--secret-file")
        .arg(secret)
        .env("RUST_LOG", "warn,statemesh::audit=info");
    cmd
}

/// Runs `statemesh keys <args> --json` on `file`; returns its answer (panics on failure).
fn keys(file: &Path, args: &[&str]) -> Value {
    let out = keys_raw(file, args);
    assert!(
        out.status.success(),
        "keys {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("keys prints JSON")
}

fn keys_raw(file: &Path, args: &[&str]) -> std::process::Output {
    statemesh()
        .arg("keys")
        .args(args)
        .arg("--secret-file")
        .arg(file)
        .arg("--json")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("runs")
}

/// The writes of one burst: every window adds 1 to the counter and records its round, each
/// awaiting acknowledgement by both other windows.
struct Writer {
    sent: u64,
}

impl Writer {
    fn burst(&mut self, w: &mut Windows, who: &[usize], round: u64) {
        for n in who {
            w.send(
                *n,
                json!({"op": "add", "name": "writes", "by": 1, "await": {"replicated": 2}, "id": self.sent}),
            );
            self.sent += 1;
            w.send(
                *n,
                json!({"op": "put", "channel": "rounds", "key": format!("w{n}"), "value": round, "await": {"replicated": 2}, "id": self.sent}),
            );
            self.sent += 1;
        }
    }
}

/// Waits until every window in `who` printed a `keys` line with primary `primary` and exactly
/// the keys `accepted`, at log index `from` or later.
fn until_keys(w: &mut Windows, who: &[usize], from: usize, primary: &str, accepted: &[&str]) {
    for n in who {
        w.until_logged(&format!("window {n} to apply the keyring"), from, |l| {
            l.from == *n
                && l.json["event"] == "keys"
                && l.json["primary"] == primary
                && l.json["accepted"] == json!(accepted)
        });
    }
}

fn spawn_logged(w: &mut Windows, n: usize, dir: &Path, secret: &Path) -> PathBuf {
    let log = dir.join(format!("window-{n}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    w.spawn_logged(n, node(dir, secret), file);
    log
}

#[test]
fn three_windows_rotate_from_a_to_b_without_a_dropped_link_or_a_lost_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = dir.path().join("secret");
    let a = keys(&ring, &["list"])["primary"]
        .as_str()
        .expect("id")
        .to_owned();
    // The historical format: a window holding only key A, for later.
    let a_only = dir.path().join("a-only");
    std::fs::copy(&ring, &a_only).expect("copies");

    let mut w = Windows::new();
    let mut logs = Vec::new();
    for n in 0..3 {
        logs.push(spawn_logged(&mut w, n, dir.path(), &ring));
    }
    let all = [0, 1, 2];
    let leader = w.id(w.by_id()[0]);
    w.until_all_see(&all, &leader);
    for n in all {
        w.until_state(n, "two links", |s| s["links"] == 2);
    }
    let before: Vec<Value> = all.iter().map(|n| w.state_answer(*n)).collect();
    for s in &before {
        assert_eq!(s["keys"]["primary"], a.as_str());
        assert_eq!(s["auth_failures"], 0);
    }
    let term = before[0]["term"].clone();

    let mut writer = Writer { sent: 0 };
    let mut round = 0;
    let mut step = |w: &mut Windows, args: &[&str]| -> Value {
        round += 1;
        writer.burst(w, &all, round);
        let out = keys(&ring, args);
        round += 1;
        writer.burst(w, &all, round);
        out
    };

    // 1. Install B everywhere (here: one file for the three windows).
    let from = w.log().len();
    let b_file = dir.path().join("b.key");
    let b_path = b_file.to_str().expect("utf-8");
    let out = step(&mut w, &["install", "--generate", "--export", b_path]);
    let b = out["installed"].as_str().expect("id").to_owned();
    assert_eq!(
        out["primary"],
        a.as_str(),
        "installing does not change the primary"
    );
    until_keys(&mut w, &all, from, &a, &[&a, &b]);

    // Refusals, changing nothing: using a key not installed, removing the primary.
    let refused = keys_raw(&ring, &["use", "00000000000000ff"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is not installed"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let refused = keys_raw(&ring, &["remove", &a]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is the primary key"));

    // 2. Use B: every window proves with B, and every link proves again under B.
    let from = w.log().len();
    step(&mut w, &["use", &b]);
    until_keys(&mut w, &all, from, &b, &[&b, &a]);
    for n in all {
        w.until_state(n, "every link on key B", |s| {
            s["link_keys"]
                .as_object()
                .is_some_and(|m| m.len() == 2 && m.values().all(|k| *k == b.as_str()))
        });
    }

    // 3. Remove A.
    let from = w.log().len();
    step(&mut w, &["remove", &a]);
    until_keys(&mut w, &all, from, &b, &[&b]);
    let out = keys_raw(&ring, &["remove", &b]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("last key"));
    round += 1;
    writer.burst(&mut w, &all, round);

    // Every write acknowledged as held by both other windows, and the counter adds up.
    let sent = writer.sent;
    let acked = |w: &Windows| {
        w.log()
            .iter()
            .filter(|l| l.json["event"] == "acked")
            .map(|l| {
                assert_eq!(l.json["ok"], true, "a write was not replicated: {}", l.json);
            })
            .count() as u64
    };
    while acked(&w) < sent {
        let len = w.log().len();
        w.until_logged("acknowledgements", len, |l| l.json["event"] == "acked");
    }
    let writes = (sent / 2) as i64;
    let records = w.until_converged(&all, |r| {
        all.iter()
            .all(|n| r["rounds"][format!("w{n}")] == json!(round))
    });
    assert!(records["rounds"].is_object());
    for n in all {
        w.until_state(n, "every write counted", |s| {
            s["counters"]["writes"] == writes
        });
    }

    // Nothing dropped, refused or re-elected mid-rotation.
    for (n, old) in all.iter().zip(&before) {
        let s = w.state_answer(*n);
        assert_eq!(s["links"], 2, "window {n}: {s}");
        assert_eq!(
            s["links_opened"], old["links_opened"],
            "window {n} set a link up again: {s}"
        );
        assert_eq!(s["auth_failures"], 0, "window {n} refused a peer: {s}");
        assert_eq!(s["leader"], leader.as_str());
        assert_eq!(s["term"], term);
        assert_eq!(s["leadership_changes"], old["leadership_changes"]);
        assert!(s["key_renewals"].as_u64() > Some(0), "{s}");
    }

    // A window holding only A is refused, audited and counted.
    logs.push(spawn_logged(&mut w, 3, dir.path(), &a_only));
    let outsider = w.state_answer(3);
    assert_eq!(outsider["links"], 0, "{outsider}");
    assert!(
        outsider["records"]["rounds"].is_null(),
        "it read state: {outsider}"
    );
    for n in all {
        w.until_state(n, "the A-only window refused", |s| {
            s["auth_failures"].as_u64() >= Some(1) && s["links"] == 2
        });
    }
    w.until_state(3, "refused by the others", |s| {
        s["auth_failures"].as_u64() >= Some(1) && s["links"] == 0
    });
    let audited = logs[..3].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .contains("local peer failed authentication")
    });
    assert!(audited, "no audit line for the refused window");
    w.kill(3);

    // A window holding only B joins and gets the state.
    spawn_logged(&mut w, 4, dir.path(), &b_file);
    let four = [0, 1, 2, 4];
    w.until_all_see(&four, &leader);
    w.until_state(4, "linked to all three", |s| {
        s["links"] == 3 && s["counters"]["writes"] == writes
    });
    let s = w.state_answer(4);
    assert_eq!(s["auth_failures"], 0, "{s}");
    assert_eq!(s["term"], term, "the newcomer took no leadership: {s}");
}
