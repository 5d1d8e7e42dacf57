//! `statemesh sidecar`, for real: the binary spoken to over its stdin and stdout.
//!
//! Protocol tests from Rust: garbage, oversize and malformed messages, unknown methods, every
//! method, acknowledgements, lead guards, exit on stdin EOF, on `shutdown` and on the parent's
//! death. Node.js windows (the `statemesh` package in clients/node and examples/node/window.js)
//! are tested by that package's own suite, `npm test` in clients/node, against this binary
//! (CI's `step_node_package`). The findings of issue 14 are tested in tests/sidecar_issue14.rs.
//!
//! Everything runs in a temporary directory (sockets, state, secret), local mode, loopback only.
//! Nothing waits on a sleep: waits are on messages, with generous timeouts as safety nets.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::WITHIN;
use support::sidecar::{Sidecar, bin, frame, mesh_flags, read_frames};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn malformed_input_gets_errors_and_the_sidecar_carries_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Sidecar::spawn(dir.path(), "proto", &["--max-message", "4096"]);

    // Before initialize: a known method is refused, an unknown one is not found.
    assert_eq!(
        s.err("get", json!({"channel": "c", "key": "k"}))["code"],
        -32002
    );
    assert_eq!(s.err("no_such_method", json!({}))["code"], -32601);
    let init = s.initialize();
    assert_eq!(init["protocol"], 1);
    assert_eq!(init["limits"]["max_message"], 4096);
    assert!(
        init["peer"].as_str().is_some_and(|p| p.len() == 36),
        "{init}"
    );
    assert_eq!(s.err("initialize", json!({}))["code"], -32600);

    // Raw JSON without headers: a framing error (id null), then the stream resyncs.
    s.write_raw(b"{\"jsonrpc\":\"2.0\",\"id\":99,\"method\":\"channels\"}\r\n");
    let e = s.response(&Value::Null);
    assert_eq!(e["error"]["code"], -32020, "{e}");
    assert_eq!(s.ok("channels", json!({})), json!([]));

    // Bad Content-Length, missing Content-Length, a header block too long: each reported
    // once, then everything up to the next Content-Length header is skipped.
    for bad in [
        b"Content-Length: lots\r\n\r\n".to_vec(),
        b"Content-Type: application/json\r\n\r\n{}".to_vec(),
        [vec![b'x'; 20_000], b"\r\n".to_vec()].concat(),
    ] {
        s.write_raw(&bad);
        assert_eq!(s.response(&Value::Null)["error"]["code"], -32020);
        assert_eq!(s.ok("channels", json!({})), json!([]));
    }
    // Other headers are tolerated.
    let body = br#"{"jsonrpc":"2.0","id":"ct","method":"channels"}"#;
    s.write_raw(
        &[
            format!(
                "Content-Type: application/vscode-jsonrpc; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            body.to_vec(),
        ]
        .concat(),
    );
    assert_eq!(s.response(&json!("ct"))["result"], json!([]));

    // Oversize: refused before reading the body, skipped exactly, the next message is fine.
    let big = json!({"jsonrpc": "2.0", "id": 77, "method": "put",
        "params": {"channel": "c", "key": "big", "value": "x".repeat(10_000)}});
    s.send(&big);
    let e = s.response(&Value::Null);
    assert_eq!(e["error"]["code"], -32021, "{e}");
    assert_eq!(e["error"]["data"]["max"], 4096);
    assert_eq!(
        s.ok("get", json!({"channel": "c", "key": "big"})),
        json!({"found": false, "value": null})
    );

    // Malformed JSON, wrong shapes, batches.
    s.write_raw(&frame(b"{\"jsonrpc\": \"2.0\", \"id\": 5, \"method\": "));
    assert_eq!(s.response(&Value::Null)["error"]["code"], -32700);
    s.write_raw(&frame(b"\xff\xfe not utf-8"));
    assert_eq!(s.response(&Value::Null)["error"]["code"], -32700);
    s.write_raw(&frame(
        b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"channels\"}]",
    ));
    assert_eq!(s.response(&Value::Null)["error"]["code"], -32600);
    s.write_raw(&frame(b"{\"id\": 8, \"method\": \"channels\"}"));
    assert_eq!(s.response(&json!(8))["error"]["code"], -32600);
    s.write_raw(&frame(
        b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"channels\",\"params\":[1]}",
    ));
    assert_eq!(s.response(&json!(9))["error"]["code"], -32602);

    // Unknown methods and invalid params.
    let e = s.err("frobnicate", json!({}));
    assert_eq!(e["code"], -32601);
    assert_eq!(e["message"], "method not found: \"frobnicate\"");
    let e = s.err("get", json!({"channel": "c"}));
    assert_eq!(e["code"], -32602);
    assert_eq!(e["message"], "missing field `key`");
    let e = s.err(
        "put",
        json!({"channel": "c", "key": "k", "value": 1, "replicate": 2}),
    );
    assert_eq!(e["code"], -32602);
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field `replicate`")),
        "{e}"
    );
    let e = s.err(
        "put",
        json!({"channel": "c", "key": "k", "value": 1, "durable": true, "replicated": 1}),
    );
    assert_eq!(e["code"], -32602);
    let e = s.err("add", json!({"name": "n", "by": 1.5}));
    assert_eq!(e["code"], -32602);
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let e = s.err("put", json!({"channel": "c", "key": "k", "value": deep}));
    assert_eq!(e["code"], -32602);
    assert_eq!(e["message"], "value: value nested deeper than 32 levels");

    // statemesh's own refusal, its message intact.
    let e = s.err("put", json!({"channel": "", "key": "k", "value": 1}));
    assert_eq!(e["code"], -32005);
    assert_eq!(
        e["message"],
        "invalid name \"\": names are 1 to 256 bytes without control characters"
    );

    // A message split into single bytes still decodes.
    let msg = frame(br#"{"jsonrpc":"2.0","id":"split","method":"counter","params":{"name":"n"}}"#);
    for b in msg {
        s.write_raw(&[b]);
    }
    assert_eq!(s.response(&json!("split"))["result"], 0);

    // After all that, the sidecar still works and leaves cleanly.
    assert_eq!(
        s.ok(
            "put",
            json!({"channel": "c", "key": "k", "value": [1, "two", {"three": 3.5}]})
        )["changed"],
        true
    );
    assert_eq!(
        s.ok("get", json!({"channel": "c", "key": "k"})),
        json!({"found": true, "value": [1, "two", {"three": 3.5}]})
    );
    let stats = s.ok("stats", json!({}));
    assert!(
        stats["sidecar"]["framing_errors"].as_u64() >= Some(5),
        "{stats}"
    );
    assert_eq!(s.ok("shutdown", json!({})), Value::Null);
    assert!(s.exit_status().success());
}

#[test]
fn every_method_against_one_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Sidecar::spawn(dir.path(), "methods", &[]);
    let init = s.initialize();
    let me = init["peer"].as_str().expect("peer").to_owned();

    // Alone, this window becomes the leader.
    let l = s.until_leader(|l| l["is_me"] == true && !l["term"].is_null());
    assert_eq!(l["leader"], me.as_str());
    let term = l["term"].as_u64().expect("term");

    // Records: put (durable ack), get, keys, channels, delete, change notifications.
    let r = s.ok(
        "put",
        json!({"channel": "cfg", "key": "theme", "value": {"dark": true}, "durable": true}),
    );
    assert_eq!(r, json!({"changed": true, "durable": true}));
    let c = s.notification("change", |c| c["key"] == "theme");
    assert_eq!(
        c,
        json!({"kind": "record", "channel": "cfg", "key": "theme", "by": me})
    );
    assert_eq!(
        s.ok(
            "put",
            json!({"channel": "cfg", "key": "theme", "value": {"dark": true}})
        )["changed"],
        false
    );
    s.ok(
        "put_presence",
        json!({"channel": "cfg", "key": "here", "value": {"$bytes": "AQID"}}),
    );
    assert_eq!(
        s.ok("get", json!({"channel": "cfg", "key": "here"})),
        json!({"found": true, "value": {"$bytes": "AQID"}})
    );
    assert_eq!(
        s.ok("keys", json!({"channel": "cfg"})),
        json!(["here", "theme"])
    );
    assert_eq!(s.ok("channels", json!({})), json!(["cfg"]));
    assert_eq!(
        s.ok("delete", json!({"channel": "cfg", "key": "here"}))["changed"],
        true
    );
    assert_eq!(s.ok("keys", json!({"channel": "cfg"})), json!(["theme"]));

    // A notification (no id) is carried out and not answered.
    s.send(&json!({"jsonrpc": "2.0", "method": "put", "params": {"channel": "cfg", "key": "quiet", "value": 1}}));
    assert_eq!(
        s.ok("get", json!({"channel": "cfg", "key": "quiet"}))["value"],
        1
    );

    // Counters and transactions.
    assert_eq!(
        s.ok("add", json!({"name": "desired", "by": 2})),
        json!({"changed": true, "value": 2})
    );
    assert_eq!(
        s.ok(
            "add",
            json!({"name": "desired", "by": -5, "scope": "presence"})
        )["value"],
        -3
    );
    assert_eq!(s.ok("counter", json!({"name": "desired"})), -3);
    let r = s.ok(
        "transact",
        json!({"ops": [
            {"op": "put", "channel": "ws", "key": "a", "value": "A"},
            {"op": "put", "channel": "ws", "key": "b", "value": "B", "scope": "presence"},
            {"op": "add", "name": "desired", "by": 3},
            {"op": "delete", "channel": "cfg", "key": "quiet"},
        ], "durable": true}),
    );
    assert_eq!(r, json!({"changed": true, "durable": true}));
    assert_eq!(s.ok("keys", json!({"channel": "ws"})), json!(["a", "b"]));
    assert_eq!(s.ok("counter", json!({"name": "desired"})), 0);
    // One bad op refuses the whole transaction.
    let e = s.err(
        "transact",
        json!({"ops": [{"op": "put", "channel": "ws", "key": "c", "value": 1}, {"op": "delete", "channel": "ws", "key": ""}]}),
    );
    assert_eq!(e["code"], -32005);
    assert_eq!(s.ok("keys", json!({"channel": "ws"})), json!(["a", "b"]));

    // Replication to a peer that does not exist: the ack times out, the write was applied.
    let e = s.err(
        "put",
        json!({"channel": "ws", "key": "r", "value": 1, "replicated": 1, "timeout_ms": 100}),
    );
    assert_eq!(e["code"], -32004);
    assert_eq!(e["data"], json!({"applied": true}));
    assert_eq!(
        s.ok("get", json!({"channel": "ws", "key": "r"}))["found"],
        true
    );

    // Lead guard: writes carry the term; a stale term is refused with statemesh's message.
    assert_eq!(
        s.err(
            "lead_put",
            json!({"channel": "probes", "key": "api", "value": "up"})
        )["code"],
        -32001
    );
    assert_eq!(
        s.ok("lead_acquire", json!({"timeout_ms": 10_000})),
        json!({"term": term, "term_leader": me})
    );
    assert_eq!(
        s.ok(
            "lead_put",
            json!({"channel": "probes", "key": "api", "value": "up", "term": term})
        ),
        json!({"term": term, "term_leader": me})
    );
    assert_eq!(
        s.ok("leader_get", json!({"channel": "probes", "key": "api"})),
        json!({"found": true, "value": "up", "term": term, "term_leader": me})
    );
    assert_eq!(
        s.ok("leader_keys", json!({"channel": "probes"})),
        json!(["api"])
    );
    let e = s.err(
        "lead_put",
        json!({"channel": "probes", "key": "api", "value": "x", "term": term + 7}),
    );
    assert_eq!(e["code"], -32001);
    assert_eq!(
        e["message"],
        format!(
            "not the leader under term {}: leadership was lost or is stale",
            term + 7
        )
    );
    s.ok("lead_delete", json!({"channel": "probes", "key": "api"}));
    assert_eq!(s.ok("leader_keys", json!({"channel": "probes"})), json!([]));
    assert_eq!(s.ok("lead_release", json!({})), json!({"released": true}));
    assert_eq!(s.ok("lead_release", json!({})), json!({"released": false}));

    // Introspection.
    let members = s.ok("members", json!({}));
    assert_eq!(members[0]["peer"], me.as_str());
    assert_eq!(members[0]["live"], true);
    let explain = s.ok("explain", json!({}));
    assert_eq!(explain["leader"], me.as_str());
    assert!(s.ok("stats", json!({}))["mesh"].is_object());

    // Round-trip latency of a read and a write through the sidecar.
    for (what, method, params) in [
        ("get", "get", json!({"channel": "cfg", "key": "theme"})),
        (
            "put",
            "put",
            json!({"channel": "bench", "key": "k", "value": 0}),
        ),
    ] {
        let mut times = Vec::new();
        for i in 0..2000 {
            let mut params = params.clone();
            if method == "put" {
                params["value"] = json!(i);
            }
            let t = Instant::now();
            s.ok(method, params);
            times.push(t.elapsed());
        }
        times.sort();
        eprintln!(
            "{what} through the sidecar (debug build, 2000 sequential calls): median {:?}, p99 {:?}",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
    }

    // Closing stdin makes the sidecar leave and exit 0.
    drop(s.stdin.take());
    let t = Instant::now();
    assert!(s.exit_status().success());
    eprintln!("exit after stdin EOF: {:?}", t.elapsed());
}

#[test]
fn two_sidecars_share_state_and_acknowledge_replication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Sidecar::spawn(dir.path(), "pair", &[]);
    let ida = a.initialize()["peer"].as_str().expect("peer").to_owned();
    let mut b = Sidecar::spawn(dir.path(), "pair", &[]);
    let idb = b.initialize()["peer"].as_str().expect("peer").to_owned();
    let (low, _) = if ida < idb {
        (&ida, &idb)
    } else {
        (&idb, &ida)
    };
    for s in [&mut a, &mut b] {
        s.until_leader(|l| l["leader"] == low.as_str() && !l["term"].is_null());
    }
    // Held by the other window before the answer comes.
    let r = a.ok(
        "put",
        json!({"channel": "shared", "key": "from-a", "value": 1, "replicated": 1}),
    );
    assert_eq!(r, json!({"changed": true, "replicated": 1}));
    assert_eq!(
        b.notification("change", |c| c["key"] == "from-a")["by"],
        ida.as_str()
    );
    assert_eq!(
        b.ok("get", json!({"channel": "shared", "key": "from-a"}))["value"],
        1
    );
    b.ok("add", json!({"name": "n", "by": 5, "replicated": 1}));
    a.notification("change", |c| c["kind"] == "counter" && c["key"] == "n");
    assert_eq!(a.ok("counter", json!({"name": "n"})), 5);
    assert_eq!(a.ok("members", json!({})).as_array().map(Vec::len), Some(2));

    // The leader leaves through `shutdown`: the other one leads.
    let (leader, other, other_id) = if ida == *low {
        (&mut a, &mut b, idb.clone())
    } else {
        (&mut b, &mut a, ida.clone())
    };
    let t = Instant::now();
    let bye = json!("bye");
    leader.send(&json!({"jsonrpc": "2.0", "id": bye, "method": "shutdown"}));
    other.until_leader(|l| {
        l["leader"] == other_id.as_str() && l["is_me"] == true && !l["term"].is_null()
    });
    eprintln!(
        "handover after shutdown, seen through the other sidecar: {:?}",
        t.elapsed()
    );
    // Answered once the mesh is left; then the sidecar exits 0.
    assert_eq!(leader.response(&bye)["result"], Value::Null);
    assert!(leader.exit_status().success());
}

#[test]
fn the_sidecar_leaves_when_its_parent_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A shell is the sidecar's parent; the test keeps the sidecar's stdin and stdout open, so
    // only the parent's death can stop it.
    let mut args = vec!["sidecar".to_owned()];
    args.extend(mesh_flags(dir.path(), "orphan"));
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 3<&0; "$@" 0<&3 3<&- & wait"#)
        .arg("sh")
        .arg(bin())
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sh runs");
    let mut stdin = shell.stdin.take().expect("piped");
    let rx = read_frames(shell.stdout.take().expect("piped"));
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}});
    stdin
        .write_all(&frame(init.to_string().as_bytes()))
        .expect("writes");
    stdin.flush().expect("flushes");
    let answer = rx
        .recv_timeout(WITHIN)
        .expect("answers")
        .expect("not ended");
    assert_eq!(answer["id"], 1, "{answer}");

    let t = Instant::now();
    shell.kill().expect("kills the shell");
    let _ = shell.wait();
    // Its output ends when it exits (notifications may come first).
    let deadline = Instant::now() + WITHIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => panic!("the sidecar outlived its parent"),
        }
    }
    eprintln!(
        "sidecar exit after its parent was killed: {:?}",
        t.elapsed()
    );
    drop(stdin);
}

#[test]
fn a_mesh_that_cannot_be_joined_is_reported_and_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The secret file is a directory: it cannot be read.
    std::fs::create_dir(dir.path().join("secret")).expect("creates");
    let mut s = Sidecar::spawn(dir.path(), "unjoinable", &[]);
    assert_eq!(s.err("leader", json!({}))["code"], -32002);
    let e = s.err("initialize", json!({}));
    assert_eq!(e["code"], -32007);
    let message = e["message"].as_str().expect("message");
    assert!(
        message.starts_with("could not join the mesh: ") && message.contains("secret"),
        "{message}"
    );
    assert_eq!(s.exit_status().code(), Some(3));
}

#[test]
fn sigterm_makes_it_leave_and_exit_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Sidecar::spawn(dir.path(), "sigterm", &[]);
    s.initialize();
    let pid = s.child.id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(s.exit_status().success());
}

#[test]
fn keyring_methods_change_the_file_and_refuse_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Sidecar::spawn(dir.path(), "keyring", &[]);
    s.initialize();
    let list = s.ok("keyring_list", json!({}));
    let a = list["primary"].as_str().expect("id").to_owned();
    assert_eq!(list["accepted"], json!([a]));
    assert_eq!(
        list["file"],
        dir.path().join("secret").display().to_string()
    );

    // Refusals change nothing.
    let e = s.err("keyring_remove", json!({"id": a}));
    assert_eq!(e["code"], -32010, "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("last key")),
        "{e}"
    );
    let e = s.err("keyring_use", json!({"id": "00000000000000ff"}));
    assert_eq!(e["code"], -32010);
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("not installed")),
        "{e}"
    );
    assert_eq!(s.err("keyring_use", json!({"id": "nope"}))["code"], -32602);
    assert_eq!(s.err("keyring_install", json!({}))["code"], -32602);
    assert_eq!(
        s.err(
            "keyring_install",
            json!({"generate": true, "key_file": "x"})
        )["code"],
        -32602
    );
    let open = dir.path().join("open.key");
    std::fs::write(&open, [7u8; 32]).expect("writes");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let e = s.err("keyring_install", json!({"key_file": open}));
    assert_eq!(e["code"], -32010);
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("chmod 600")),
        "{e}"
    );

    // Install, use, remove: the file follows.
    let b_file = dir.path().join("b.key");
    std::fs::write(&b_file, "ab".repeat(32)).expect("writes");
    std::fs::set_permissions(&b_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let out = s.ok("keyring_install", json!({"key_file": b_file}));
    let b = out["installed"].as_str().expect("id").to_owned();
    assert_eq!(out["primary"], a.as_str());
    assert_eq!(out["accepted"], json!([a, b]));
    assert_eq!(s.ok("keyring_use", json!({"id": b}))["primary"], b.as_str());
    let e = s.err("keyring_remove", json!({"id": b}));
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("primary key")),
        "{e}"
    );
    let out = s.ok("keyring_remove", json!({"id": a}));
    assert_eq!(out["accepted"], json!([b]));
    let file = std::fs::read_to_string(dir.path().join("secret")).expect("reads");
    assert!(file.starts_with("statemesh-keyring v1"), "{file}");
    assert!(
        file.contains(&format!("primary {}", "ab".repeat(32))),
        "{file}"
    );
    let stats = s.ok("stats", json!({}));
    assert_eq!(stats["mesh"]["keys"]["primary"], b.as_str(), "{stats}");
}
