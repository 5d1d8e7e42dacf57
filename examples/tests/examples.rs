//! The example binaries, run for real: several windows of each at once in a temporary directory
//! (their own secret, sockets and state), on loopback only, checked by what they print; and
//! `simulated_demo`, which runs no window, checked by the story it tells.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Safety net only: what is awaited takes milliseconds to a few seconds.
const WITHIN: Duration = Duration::from_secs(30);

/// A window process; killed (no graceful leave) when dropped.
struct Window {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Window {
    /// Starts example `bin` with `args`, its files under `dir`, leaving on its own after 60 s
    /// (unless `args` say otherwise) whatever happens to the test.
    fn start(name: &'static str, bin: &str, dir: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("--dir").arg(dir).args(args);
        if !args.contains(&"--for-secs") {
            cmd.args(["--for-secs", "60"]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawns");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            name,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a printed line matching `pred` (lines already seen included) and returns it.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("{}: {line}", self.name);
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{} did not print {what}; it printed:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The peer id from the `joined as <id>` line.
    fn id(&mut self) -> String {
        let line = self.wait_for("joined as", |l| l.starts_with("joined as "));
        line["joined as ".len()..]
            .split([',', ' '])
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits for the process to exit on its own (its output ends); returns whether it
    /// succeeded.
    fn exits(&mut self) -> bool {
        let deadline = Instant::now() + WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("{}: {line}", self.name);
                    self.seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("{} did not exit", self.name),
            }
        }
        self.child.wait().expect("waits").success()
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn embed_writes_watches_leaves_and_keeps_its_durable_counter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_embed");
    for run in 1..=2 {
        let mut w = Window::start("embed", bin, dir.path(), &["--for-secs", "1"]);
        let me = w.id();
        w.wait_for("its own presence record", |l| {
            l == format!("record windows/{me} = Some(\"hello\")")
        });
        // The durable counter survives the restart: the second run reads 2 from its disk.
        w.wait_for("the durable counter", |l| {
            l == format!("counter embed/joins = {run}")
        });
        assert!(w.exits(), "embed failed");
        // The first run's presence record is gone (its writer is dead), this run's is there.
        w.wait_for("one window", |l| l == "windows here: 1");
        w.wait_for("a graceful leave", |l| l == "left");
    }
}

#[test]
fn orchestration_totals_add_up_and_a_crashed_window_leaves_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_orchestration");
    let bumps = ["--bump", "a", "--bump", "b", "--bump", "c"];
    let start = |name: &'static str, bumps: &[&str]| {
        let mut args = vec!["--workspace", name];
        args.extend_from_slice(bumps);
        let mut window = Window::start(name, bin, dir.path(), &args);
        window.id(); // joined
        window
    };
    // Every window bumps every workspace once as soon as it joined: 3 `+1`s from 3 windows on
    // each desired counter must give 3, not 1 (last write wins would).
    // The windows start one after the other, each once the previous one joined: two windows
    // binding their local sockets at the same instant can each take the other's socket, not
    // yet listening, for a stale one and delete it (statemesh-net, local.rs), failing a join.
    let mut w = [start("a", &bumps), start("b", &bumps), start("c", &bumps)];
    let all = "totals: desired 9 running 9 | a 3/3 b 3/3 c 3/3";
    for window in &mut w {
        window.wait_for(all, |l| l.replace('*', "") == all);
    }

    // c crashes: its running workers leave everyone's totals; the desired counts stay.
    let [mut a, mut b, c] = w;
    drop(c);
    let crashed = "totals: desired 9 running 6 | a 3/3 b 3/3";
    a.wait_for(crashed, |l| l.replace('*', "") == crashed);
    b.wait_for(crashed, |l| l.replace('*', "") == crashed);

    // c restarts without bumping: it finds desired/c = 3 (on disk and from its peers) and
    // starts 3 workers again.
    let mut c = start("c", &[]);
    for window in [&mut a, &mut b, &mut c] {
        window.seen.clear();
        window.wait_for(all, |l| l.replace('*', "") == all);
    }
}

#[test]
fn health_watch_leader_probes_and_the_next_leader_takes_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_health_watch");
    // One endpoint served on loopback, one closed port.
    let open = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binds");
    let up = open.local_addr().expect("addr").to_string();
    let down = {
        let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binds");
        closed.local_addr().expect("addr").to_string()
    };
    std::thread::spawn(move || for _ in open.incoming() {});
    let args = ["--interval-ms", "100", up.as_str(), down.as_str()];

    let mut first = Window::start("first", bin, dir.path(), &args);
    let first_id = first.id();
    let mut second = Window::start("second", bin, dir.path(), &args);
    let second_id = second.id();
    // The longest-running window leads (lowest peer id); which one that is comes from the ids.
    let (mut leader, mut follower, leader_id, follower_id) = if first_id < second_id {
        (first, second, first_id, second_id)
    } else {
        (second, first, second_id, first_id)
    };

    let term = |line: &str| -> u64 {
        line.trim_start_matches("[term ")
            .split(']')
            .next()
            .and_then(|t| t.parse().ok())
            .expect("a term")
    };
    let statuses = |w: &mut Window, term_is: &dyn Fn(u64) -> bool| {
        let u = w.wait_for("the open endpoint up", |l| {
            l.starts_with("[term ") && l.ends_with(&format!("] {up} up (open)")) && term_is(term(l))
        });
        let d = w.wait_for("the closed port down", |l| {
            l.starts_with("[term ") && l.contains(&format!("] {down} down (")) && term_is(term(l))
        });
        (term(&u), term(&d))
    };

    let line = leader.wait_for("leading", |l| l.starts_with("leading under term "));
    let t1: u64 = line["leading under term ".len()..]
        .split(':')
        .next()
        .and_then(|t| t.parse().ok())
        .expect("a term");
    assert_eq!(statuses(&mut leader, &|t| t == t1), (t1, t1));
    // The follower shows the leader's records, under its term, and the leader itself.
    assert_eq!(statuses(&mut follower, &|t| t == t1), (t1, t1));
    follower.wait_for("the leader", |l| {
        l == format!("leader {leader_id} term {t1}")
    });
    assert!(
        !follower.seen.iter().any(|l| l.starts_with("leading")),
        "only the leader probes"
    );

    // The leader crashes: the follower leads under a newer term and probes.
    drop(leader);
    follower.wait_for("its own leadership", |l| {
        l.starts_with(&format!("leader {follower_id} term ")) && l.ends_with("(this window)")
    });
    let (u, d) = statuses(&mut follower, &|t| t > t1);
    assert_eq!(u, d);
}

#[test]
fn simulated_demo_tells_the_failover_story() {
    let out = Command::new(env!("CARGO_BIN_EXE_simulated_demo"))
        .args(["--windows", "5", "--seed", "7"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("all 5 windows agree: window A leads (term 1)"),
        "{text}"
    );
    assert!(text.contains("SIGKILL window A"), "{text}");
    assert!(
        text.contains("all 4 survivors agree: window B leads (term 2)"),
        "{text}"
    );
}
