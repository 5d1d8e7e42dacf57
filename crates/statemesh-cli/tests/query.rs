//! The short-lived query commands against running windows: what they print (`--json`) and
//! their exit codes.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use support::{Windows, statemesh};

fn flags(cmd: &mut Command, dir: &Path) {
    cmd.args(["--mesh", "query-test"])
        .arg("--runtime-dir")
        .arg(dir.join("run"))
        .arg("--secret-file")
        .arg(dir.join("secret"));
}

fn query(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = statemesh();
    cmd.args(args);
    flags(&mut cmd, dir);
    cmd.output().expect("runs")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn queries_read_and_write_a_running_mesh() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nobody running yet: exit 3.
    let out = query(dir.path(), &["status", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(json_of(&out)["error"], "no running window answered");

    let mut w = Windows::new();
    for n in 0..2 {
        let mut cmd = statemesh();
        cmd.arg("node")
            .arg("--state-dir")
            .arg(dir.path().join("state"));
        flags(&mut cmd, dir.path());
        w.spawn(n, cmd);
    }
    let lowest = w.id(w.by_id()[0]);
    w.until_all_see(&[0, 1], &lowest);

    let out = query(
        dir.path(),
        &["set", "notes", "greeting", "{\"hi\": [1, 2]}", "--json"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json_of(&out)["held_by"], 2);
    // Both windows hold it once `set` returned.
    for n in 0..2 {
        assert_eq!(w.state(n)["notes"]["greeting"], json!({"hi": [1, 2]}));
    }

    // Counters (issue 14): `node`'s state lists them, `counter` reads them, and shares of two
    // windows that add up beyond the signed 64-bit range saturate (they wrapped to -2).
    let from = w.log().len();
    for n in 0..2 {
        w.send(
            n,
            json!({"op": "add", "name": "jobs", "by": i64::MAX, "await": {"replicated": 1}}),
        );
    }
    for n in 0..2 {
        let acked = w.until_logged("the counter held by the other window", from, |l| {
            l.from == n && l.json["event"] == "acked"
        });
        assert_eq!(w.log()[acked].json["ok"], true, "{:?}", w.log()[acked].json);
    }
    for n in 0..2 {
        assert_eq!(w.state_answer(n)["counters"], json!({"jobs": i64::MAX}));
    }
    let out = query(dir.path(), &["counter", "jobs", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json_of(&out), json!({"name": "jobs", "value": i64::MAX}));
    let out = query(dir.path(), &["counter", "--all", "--json"]);
    assert_eq!(json_of(&out), json!({"counters": {"jobs": i64::MAX}}));

    let out = query(dir.path(), &["get", "notes", "greeting", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json_of(&out)["record"]["value"], json!({"hi": [1, 2]}));

    let out = query(dir.path(), &["get", "notes", "missing", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");

    let out = query(dir.path(), &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let status = json_of(&out);
    assert_eq!(status["leader"], json!(lowest));
    assert_eq!(status["live_members"], 2);
    assert_eq!(status["channels"]["notes"], 1);

    let out = query(dir.path(), &["leader", "--json"]);
    let leader = json_of(&out);
    assert_eq!(leader["leader"], json!(lowest));
    assert_eq!(
        leader["live_eligible"].as_array().map(Vec::len),
        Some(2),
        "{leader}"
    );
    // The query peers themselves never lead.
    assert!(
        leader["members"]
            .as_array()
            .expect("list")
            .iter()
            .all(|m| m["eligible"] == true || m["peer"] != json!(lowest))
    );
}

#[test]
fn keygen_writes_a_private_secret_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secret");
    let keygen = |force: bool| {
        let mut cmd = statemesh();
        cmd.arg("keygen")
            .arg("--secret-file")
            .arg(&path)
            .arg("--json");
        if force {
            cmd.arg("--force");
        }
        cmd.output().expect("runs")
    };
    let out = keygen(false);
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&path)
        .expect("written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let first = std::fs::read(&path).expect("reads");
    let out = keygen(false);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(std::fs::read(&path).expect("reads"), first, "untouched");
    assert!(keygen(true).status.success());
    assert_ne!(std::fs::read(&path).expect("reads"), first, "replaced");
}
