//! Window processes on one machine, for real: `statemesh node` processes found through their
//! local sockets, syncing over QUIC on loopback; the leader SIGKILLed, then one shut down
//! gracefully. Times are printed (the benchmark harness measures them properly); assertions
//! are about who leads.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Safety net only: failover takes milliseconds here.
const WITHIN: Duration = Duration::from_secs(20);

struct Window {
    child: Child,
    id: String,
}

impl Drop for Window {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line from some window, with the time the test received it.
struct Line {
    from: usize,
    at: Instant,
    json: Value,
}

fn spawn(dir: &Path, n: usize, tx: &mpsc::Sender<Line>) -> Window {
    let mut child = Command::new(env!("CARGO_BIN_EXE_statemesh"))
        .args(["node", "--mesh", "proc-test", "--announce"])
        .arg("--runtime-dir")
        .arg(dir.join("run"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--secret-file")
        .arg(dir.join("secret"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawns");
    let stdout = child.stdout.take().expect("piped");
    let (id_tx, id_rx) = mpsc::channel();
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let json: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("window {n} printed non-JSON {line:?}: {e}"));
            if json["event"] == "joined" {
                let _ = id_tx.send(json["peer"].as_str().unwrap_or_default().to_owned());
            }
            if tx
                .send(Line {
                    from: n,
                    at: Instant::now(),
                    json,
                })
                .is_err()
            {
                break;
            }
        }
    });
    let id = id_rx.recv_timeout(WITHIN).expect("window joined");
    Window { child, id }
}

/// Waits until each window in `who` reports `leader` leading; returns when the last one did.
fn until_all_see(rx: &mpsc::Receiver<Line>, who: &[usize], leader: &str) -> Instant {
    let mut seen = vec![None; who.len()];
    let deadline = Instant::now() + WITHIN;
    while seen.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("windows {who:?} did not all see {leader} lead"));
        if std::env::var("PROC_DEBUG").is_ok() {
            eprintln!("{:?} {} {}", line.at, line.from, line.json);
        }
        if let Some(i) = who.iter().position(|w| *w == line.from)
            && line.json["event"] == "leadership"
        {
            let leads = line.json["leader"] == leader && !line.json["term"].is_null();
            seen[i] = leads.then_some(line.at);
        }
    }
    seen.into_iter().flatten().max().expect("all seen")
}

#[test]
fn sigkill_and_graceful_failover_between_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = mpsc::channel();
    let mut windows: Vec<Window> = (0..4).map(|n| spawn(dir.path(), n, &tx)).collect();
    let mut order: Vec<usize> = (0..4).collect();
    order.sort_by(|a, b| windows[*a].id.cmp(&windows[*b].id));
    until_all_see(&rx, &[0, 1, 2, 3], &windows[order[0]].id.clone());

    // SIGKILL the leader: its local sockets close, the survivors elect the next-lowest id.
    let killed_at = Instant::now();
    let _ = windows[order[0]].child.kill();
    let survivors: Vec<usize> = order[1..].to_vec();
    let next = windows[order[1]].id.clone();
    let done = until_all_see(&rx, &survivors, &next);
    eprintln!(
        "failover after SIGKILL: {:.1} ms (4 processes, one machine)",
        (done - killed_at).as_secs_f64() * 1e3
    );

    // Graceful shutdown of the new leader (SIGTERM): it announces its leave.
    let stopped_at = Instant::now();
    let pid = windows[order[1]].child.id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    let last = windows[order[2]].id.clone();
    let done = until_all_see(&rx, &order[2..], &last);
    eprintln!(
        "handover after graceful shutdown: {:.1} ms",
        (done - stopped_at).as_secs_f64() * 1e3
    );
    let status = windows[order[1]].child.wait().expect("exits");
    assert!(status.success(), "graceful shutdown exits 0");
    windows.clear();
}
