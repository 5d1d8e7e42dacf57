//! `statemesh sidecar` processes spoken to directly over their stdin and stdout, for the
//! sidecar's tests: framing both ways, requests matched to their answers by id,
//! notifications kept until asked for.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use serde_json::{Value, json};

use super::WITHIN;
use statemesh_cli::sidecar::framing::{Decoded, FrameDecoder};

/// The `statemesh` binary under test.
pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_statemesh")
}

/// The flags of mesh `mesh` with its runtime directory, state and secret under `dir`.
pub(crate) fn mesh_flags(dir: &Path, mesh: &str) -> Vec<String> {
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

/// `body` framed as on the wire.
pub(crate) fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Reads framed messages from `r` on a thread; `None` marks the end of the stream.
pub(crate) fn read_frames(r: impl Read + Send + 'static) -> mpsc::Receiver<Option<Value>> {
    let (tx, rx) = mpsc::channel();
    forward_frames(r, tx, |m| m);
    rx
}

/// Reads framed messages from `r` on a thread and sends each to `tx` as `tag(Some(message))`;
/// `tag(None)` marks the end of the stream. Several streams may share one channel, each with a
/// tag of its own (the terms test's windows).
pub(crate) fn forward_frames<T: Send + 'static>(
    mut r: impl Read + Send + 'static,
    tx: mpsc::Sender<T>,
    tag: impl Fn(Option<Value>) -> T + Send + 'static,
) {
    std::thread::spawn(move || {
        let mut decoder = FrameDecoder::new(64 * 1024 * 1024);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(tag(None));
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
                if tx.send(tag(Some(v))).is_err() {
                    return;
                }
            }
        }
    });
}

/// One sidecar process, spoken to directly.
pub(crate) struct Sidecar {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
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
    pub(crate) fn spawn(dir: &Path, mesh: &str, extra: &[&str]) -> Self {
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

    /// Sends `signal` to the process (SIGSTOP freezes it: it neither runs nor closes
    /// anything; SIGCONT wakes it).
    /// SIGSTOPs the sidecar and waits until it is stopped (see [`super::freeze`]).
    pub(crate) fn freeze(&self) {
        super::freeze(&self.child);
    }

    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).expect("signals");
    }

    /// The process's state and its threads' (`/proc`), for a failing test's message.
    pub(crate) fn proc_state(&self) -> String {
        let pid = self.child.id();
        let read = |p: String| std::fs::read_to_string(p).unwrap_or_default();
        let state = |status: String| {
            status
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or("State: ?")
                .to_owned()
        };
        let mut out = format!("pid {pid} {}", state(read(format!("/proc/{pid}/status"))));
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let name = read(format!("{}/comm", t.path().display()));
                let st = state(read(format!("{}/status", t.path().display())));
                out.push_str(&format!(
                    "; {} {} {}",
                    t.file_name().to_string_lossy(),
                    name.trim(),
                    st
                ));
            }
        }
        out
    }

    pub(crate) fn write_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("writes");
        stdin.flush().expect("flushes");
    }

    pub(crate) fn send(&mut self, message: &Value) {
        self.write_raw(&frame(message.to_string().as_bytes()));
    }

    /// The next message from the sidecar (`None` at the end of its output).
    pub(crate) fn recv(&mut self) -> Option<Value> {
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
    pub(crate) fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
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

    /// Whether the response to request `id` was read already (kept while waiting for a later
    /// message: the sidecar writes its messages in order, so an answer read after it proves
    /// that `id` was not answered before that answer).
    pub(crate) fn answered(&self, id: &Value) -> bool {
        self.queue
            .iter()
            .any(|m| m.get("method").is_none() && m["id"] == *id)
    }

    /// The response to request `id`.
    pub(crate) fn response(&mut self, id: &Value) -> Value {
        let id = id.clone();
        self.wait_for(&format!("the response to {id}"), move |m| {
            m.get("method").is_none() && m["id"] == id
        })
    }

    /// Sends a request and returns the whole response.
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.response(&id)
    }

    /// Sends a request and returns its result, failing on an error.
    pub(crate) fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params);
        assert!(r.get("error").is_none(), "{method} failed: {r}");
        r["result"].clone()
    }

    /// Sends a request and returns its error object, failing on success.
    pub(crate) fn err(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params);
        assert!(r.get("result").is_none(), "{method} should fail: {r}");
        r["error"].clone()
    }

    pub(crate) fn initialize(&mut self) -> Value {
        self.ok(
            "initialize",
            json!({"protocol": 1, "client": {"name": "test"}}),
        )
    }

    pub(crate) fn notification(&mut self, method: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let method = method.to_owned();
        self.wait_for(&format!("a {method} notification"), move |m| {
            m["method"] == method.as_str() && pred(&m["params"])
        })["params"]
            .clone()
    }

    /// Waits until the leadership this sidecar reports satisfies `pred`: checks it with
    /// `leader`, and again after every `leadership` notification.
    pub(crate) fn until_leader(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let l = self.ok("leader", json!({}));
            if pred(&l) {
                return l;
            }
            self.notification("leadership", |_| true);
        }
    }

    /// Waits for the end of the sidecar's output and its exit status.
    pub(crate) fn exit_status(&mut self) -> std::process::ExitStatus {
        while self.recv().is_some() {}
        self.child.wait().expect("exits")
    }
}
