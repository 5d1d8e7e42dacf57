//! `statemesh sidecar`, for real: the binary spoken to over its stdin and stdout.
//!
//! - protocol tests from Rust: garbage, oversize and malformed messages, unknown methods, every
//!   method, acknowledgements, lead guards, exit on stdin EOF, on `shutdown` and on the
//!   parent's death;
//! - Node.js windows (examples/node/window.js, each spawning its own sidecar through
//!   examples/node/statemesh.js) sharing state and handing leadership over. These need `node`
//!   on PATH (or $NODE) and fail loudly without it: CI installs it.
//!
//! Everything runs in a temporary directory (sockets, state, secret), local mode, loopback only.
//! Nothing waits on a sleep: waits are on messages, with generous timeouts as safety nets.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use statemesh_cli::sidecar::framing::{Decoded, FrameDecoder};

/// Safety net only: every step takes milliseconds.
const WITHIN: Duration = Duration::from_secs(30);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_statemesh")
}

fn mesh_flags(dir: &Path, mesh: &str) -> Vec<String> {
    vec![
        "--mesh".into(),
        mesh.into(),
        "--runtime-dir".into(),
        dir.join("run").display().to_string(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--secret-file".into(),
        dir.join("secret").display().to_string(),
    ]
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Reads framed messages from `r` on a thread; `None` marks the end of the stream.
fn read_frames(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Option<Value>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut decoder = FrameDecoder::new(64 * 1024 * 1024);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => n,
            };
            for d in decoder.feed(&buf[..n]) {
                let v = match d {
                    Decoded::Body(b) => serde_json::from_slice(&b)
                        .unwrap_or_else(|e| panic!("sidecar wrote non-JSON: {e}")),
                    Decoded::Error(e) => panic!("sidecar wrote a bad frame: {e}"),
                };
                if tx.send(Some(v)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// One sidecar process, spoken to directly.
struct Sidecar {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<Option<Value>>,
    /// Messages read while waiting for something else.
    queue: VecDeque<Value>,
    next_id: u64,
    ended: bool,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn spawn(dir: &Path, mesh: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(bin())
            .arg("sidecar")
            .args(mesh_flags(dir, mesh))
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawns the sidecar");
        let stdin = child.stdin.take();
        let rx = read_frames(child.stdout.take().expect("piped"));
        Self {
            child,
            stdin,
            rx,
            queue: VecDeque::new(),
            next_id: 1,
            ended: false,
        }
    }

    fn write_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("writes");
        stdin.flush().expect("flushes");
    }

    fn send(&mut self, message: &Value) {
        self.write_raw(&frame(message.to_string().as_bytes()));
    }

    /// The next message from the sidecar (`None` at the end of its output).
    fn recv(&mut self) -> Option<Value> {
        if let Some(v) = self.queue.pop_front() {
            return Some(v);
        }
        if self.ended {
            return None;
        }
        let v = self
            .rx
            .recv_timeout(WITHIN)
            .expect("the sidecar answers in time");
        self.ended = v.is_none();
        v
    }

    /// Waits for the first message matching `pred`, keeping the others for later.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.queue.iter().position(&pred) {
            return self.queue.remove(i).expect("present");
        }
        let deadline = Instant::now() + WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("waited in vain for {what}; kept {:?}", self.queue))
                .unwrap_or_else(|| panic!("the sidecar ended while waiting for {what}"));
            if pred(&v) {
                return v;
            }
            self.queue.push_back(v);
        }
    }

    /// The response to request `id`.
    fn response(&mut self, id: &Value) -> Value {
        let id = id.clone();
        self.wait_for(&format!("the response to {id}"), move |m| {
            m.get("method").is_none() && m["id"] == id
        })
    }

    /// Sends a request and returns the whole response.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.response(&id)
    }

    /// Sends a request and returns its result, failing on an error.
    fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params);
        assert!(r.get("error").is_none(), "{method} failed: {r}");
        r["result"].clone()
    }

    /// Sends a request and returns its error object, failing on success.
    fn err(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params);
        assert!(r.get("result").is_none(), "{method} should fail: {r}");
        r["error"].clone()
    }

    fn initialize(&mut self) -> Value {
        self.ok(
            "initialize",
            json!({"protocol": 1, "client": {"name": "test"}}),
        )
    }

    fn notification(&mut self, method: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let method = method.to_owned();
        self.wait_for(&format!("a {method} notification"), move |m| {
            m["method"] == method.as_str() && pred(&m["params"])
        })["params"]
            .clone()
    }

    /// Waits until the leadership this sidecar reports satisfies `pred`: checks it with
    /// `leader`, and again after every `leadership` notification.
    fn until_leader(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let l = self.ok("leader", json!({}));
            if pred(&l) {
                return l;
            }
            self.notification("leadership", |_| true);
        }
    }

    /// Waits for the end of the sidecar's output and its exit status.
    fn exit_status(&mut self) -> std::process::ExitStatus {
        while self.recv().is_some() {}
        self.child.wait().expect("exits")
    }
}

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

// ---- Node.js windows ----

fn node() -> PathBuf {
    let node = std::env::var_os("NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    match Command::new(&node).arg("--version").output() {
        Ok(o) if o.status.success() => node,
        other => panic!(
            "these tests need Node.js: `{}` is not runnable ({other:?}). Install it (apt-get install nodejs; CI does) or set $NODE",
            node.display()
        ),
    }
}

fn examples_node() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/node")
}

struct NodeWindow {
    child: Child,
    name: String,
    peer: String,
}

impl Drop for NodeWindow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Line {
    from: usize,
    json: Value,
}

fn spawn_window(node: &Path, dir: &Path, n: usize, tx: &mpsc::Sender<Line>) -> NodeWindow {
    let name = format!("w{n}");
    let mut child = Command::new(node)
        .arg(examples_node().join("window.js"))
        .args(["--name", &name, "--bin", bin()])
        .args(mesh_flags(dir, "node-windows"))
        .stdout(Stdio::piped())
        // Piped through this process, so that a sidecar still leaving after the test ended
        // does not hold the test harness's own stderr.
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("w{n} stderr: {line}");
        }
    });
    let stdout = child.stdout.take().expect("piped");
    let (ready_tx, ready_rx) = mpsc::channel();
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let json: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("window {n} printed non-JSON {line:?}: {e}"));
            if std::env::var_os("SIDECAR_DEBUG").is_some() {
                eprintln!("w{n}: {json}");
            }
            if json["event"] == "ready" {
                let _ = ready_tx.send(json["peer"].as_str().unwrap_or_default().to_owned());
            }
            if json["event"] == "fatal" {
                panic!("window {n} failed: {json}");
            }
            if tx.send(Line { from: n, json }).is_err() {
                break;
            }
        }
    });
    let peer = ready_rx.recv_timeout(WITHIN).expect("the window is ready");
    NodeWindow { child, name, peer }
}

/// The latest line of each kind each window printed.
struct Board {
    rx: mpsc::Receiver<Line>,
    latest: std::collections::HashMap<(usize, String), Value>,
}

impl Board {
    /// Waits until the latest `event` line of each window in `who` satisfies `check`.
    fn until_all(
        &mut self,
        who: &[usize],
        event: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) {
        let deadline = Instant::now() + WITHIN;
        loop {
            let seen: Vec<bool> = who
                .iter()
                .map(|w| self.latest.get(&(*w, event.to_owned())).is_some_and(&check))
                .collect();
            if seen.iter().all(|s| *s) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!("windows {who:?} did not all see {what} (seen: {seen:?})")
            });
            let event = line.json["event"].as_str().unwrap_or_default().to_owned();
            self.latest.insert((line.from, event), line.json);
        }
    }
}

#[test]
fn node_windows_share_state_and_hand_leadership_over() {
    let node = node();
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = mpsc::channel();
    let mut windows: Vec<NodeWindow> = (0..3)
        .map(|n| spawn_window(&node, dir.path(), n, &tx))
        .collect();
    let mut board = Board {
        rx,
        latest: std::collections::HashMap::new(),
    };
    let mut order: Vec<usize> = (0..3).collect();
    order.sort_by(|a, b| windows[*a].peer.cmp(&windows[*b].peer));
    let all = [0, 1, 2];

    // Every window's write is seen by every window; the counter adds up.
    let names: Vec<String> = windows.iter().map(|w| w.name.clone()).collect();
    board.until_all(&all, "windows", "every window's record", |l| {
        l["names"] == json!(names)
    });
    board.until_all(&all, "counter", "the counter at 3", |l| l["value"] == 3);

    // One leader, the lowest id, probing through its lead guard; everyone sees its probe.
    let first = order[0];
    let leader = windows[first].peer.clone();
    board.until_all(&all, "leadership", "the first leader", |l| {
        l["leader"] == leader.as_str() && !l["term"].is_null()
    });
    let probe = format!("probed by {}", windows[first].name);
    board.until_all(&all, "probe", "the first probe", |l| {
        l["value"] == probe.as_str()
    });

    // SIGKILL the leader window: its sidecar loses its parent and leaves; the others elect the
    // next lowest id, which probes.
    let killed_at = Instant::now();
    windows[first].child.kill().expect("kills");
    let _ = windows[first].child.wait();
    let survivors = [order[1], order[2]];
    let next = windows[order[1]].peer.clone();
    board.until_all(&survivors, "leadership", "the second leader", |l| {
        l["leader"] == next.as_str() && !l["term"].is_null()
    });
    eprintln!(
        "node windows: leader window killed -> survivors agree on the next leader in {:?}",
        killed_at.elapsed()
    );
    let probe = format!("probed by {}", windows[order[1]].name);
    board.until_all(&survivors, "probe", "the second probe", |l| {
        l["value"] == probe.as_str()
    });
    let left: Vec<String> = survivors
        .iter()
        .map(|i| windows[*i].name.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    board.until_all(
        &survivors,
        "windows",
        "the dead window's record gone",
        |l| l["names"] == json!(left),
    );
    board.until_all(&survivors, "counter", "the counter at 2", |l| {
        l["value"] == 2
    });

    // SIGTERM the new leader window: it shuts its sidecar down gracefully; the last one leads.
    let stopped_at = Instant::now();
    let pid = windows[order[1]].child.id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    let last = windows[order[2]].peer.clone();
    board.until_all(&[order[2]], "leadership", "the last leader", |l| {
        l["leader"] == last.as_str() && l["is_me"] == true && !l["term"].is_null()
    });
    eprintln!(
        "node windows: graceful shutdown of the leader window -> handover in {:?}",
        stopped_at.elapsed()
    );
    let status = windows[order[1]].child.wait().expect("exits");
    assert!(status.success(), "the window closed cleanly: {status}");

    // The last window closes the same way (its sidecar has left when it exits).
    Command::new("kill")
        .args(["-TERM", &windows[order[2]].child.id().to_string()])
        .status()
        .expect("kill runs");
    let status = windows[order[2]].child.wait().expect("exits");
    assert!(status.success(), "the window closed cleanly: {status}");
    windows.clear();
}

#[test]
fn node_client_sees_errors_intact() {
    let node = node();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = r#"
const { Sidecar, codes } = require(process.argv[1]);
(async () => {
  const out = {};
  const mesh = await Sidecar.spawn({ bin: process.argv[2], extraArgs: process.argv.slice(3), maxMessage: 2048 });
  out.peer = mesh.peer;
  try { await mesh.put('', 'k', 1); } catch (e) { out.invalid = { code: e.code, message: e.message, name: e.name }; }
  try { await mesh.request('nope', {}); } catch (e) { out.unknown = { code: e.code, message: e.message }; }
  try { await mesh.put('c', 'k', 'x'.repeat(5000)); } catch (e) { out.too_large = e.code === codes.TOO_LARGE; }
  await mesh.put('c', 'k', { n: 1 }, { durable: true });
  out.value = await mesh.get('c', 'k');
  const code = await mesh.shutdown();
  out.exit = code;
  try { await mesh.get('c', 'k'); } catch (e) { out.after = e.code; }
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { process.stdout.write(JSON.stringify({ fatal: e.message })); process.exit(1); });
"#;
    let output = Command::new(node)
        .arg("-e")
        .arg(script)
        .arg(examples_node().join("statemesh.js"))
        .arg(bin())
        .args(mesh_flags(dir.path(), "node-errors"))
        .stderr(Stdio::inherit())
        .output()
        .expect("node runs");
    let out: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "node printed {:?}: {e}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert!(output.status.success(), "{out}");
    assert_eq!(
        out["invalid"],
        json!({"code": -32005, "message": "invalid name \"\": names are 1 to 256 bytes without control characters", "name": "StatemeshError"})
    );
    assert_eq!(
        out["unknown"],
        json!({"code": -32601, "message": "method not found: \"nope\""})
    );
    assert_eq!(out["too_large"], true);
    assert_eq!(out["value"], json!({"found": true, "value": {"n": 1}}));
    assert_eq!(out["exit"], json!({"code": 0, "signal": null}));
    assert_eq!(out["after"], "SIDECAR_EXITED");
}
