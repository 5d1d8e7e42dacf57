//! Window processes (`statemesh node`) driven through stdin and watched through their JSON
//! lines, for the process-level tests.

#![allow(dead_code)] // Each test binary uses its own part of this.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub(crate) mod chaos;
pub(crate) mod sidecar;

/// Safety net only: what is awaited takes milliseconds to a few seconds.
pub(crate) const WITHIN: Duration = Duration::from_secs(30);

/// The `statemesh` binary.
pub(crate) fn statemesh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_statemesh"))
}

/// One window process.
pub(crate) struct Window {
    pub(crate) child: Child,
    pub(crate) id: String,
    stdin: ChildStdin,
}

impl Drop for Window {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line some window printed, as kept in [`Windows::log`].
pub(crate) struct Logged {
    /// The window number.
    pub(crate) from: usize,
    /// Which process of that window number printed it (see [`Windows::process`]).
    pub(crate) process: u64,
    /// When the test received it.
    pub(crate) at: Instant,
    pub(crate) json: Value,
}

/// A line some window printed, with the time the test received it.
struct Line {
    from: usize,
    at: Instant,
    json: Value,
}

/// What the test knows of each window, from the lines it printed.
#[derive(Default, Clone)]
struct Seen {
    /// The latest leadership line: leader, and when it arrived.
    leadership: Option<(Option<String>, bool, Instant)>,
    /// The latest state answer.
    state: Option<Value>,
    /// Whether it printed `left`.
    left: bool,
}

/// A set of window processes and what they printed.
pub(crate) struct Windows {
    /// First field: dropped (killed) before the channel closes under their output.
    pub(crate) windows: Vec<Option<Window>>,
    tx: mpsc::Sender<Line>,
    rx: mpsc::Receiver<Line>,
    seen: Vec<Seen>,
    /// `change` lines seen, from any window.
    changes: u64,
    debug: bool,
    /// Every line taken so far, in the order taken. Lines from a window that was killed are
    /// attributed to its next process unless it was killed with [`Windows::kill_drained`].
    log: Vec<Logged>,
    /// Processes started so far; for each window number, the number of its latest process.
    spawned: u64,
    process: Vec<u64>,
}

impl Default for Windows {
    fn default() -> Self {
        Self::new()
    }
}

impl Windows {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            windows: Vec::new(),
            tx,
            rx,
            seen: Vec::new(),
            changes: 0,
            debug: std::env::var_os("PROC_DEBUG").is_some(),
            log: Vec::new(),
            spawned: 0,
            process: Vec::new(),
        }
    }

    /// Starts a window with `cmd` (a `statemesh node` command line) as window number `n`
    /// (a new one when `n` is the count so far, else a replacement), and waits until it joined.
    pub(crate) fn spawn(&mut self, n: usize, cmd: Command) -> &Window {
        self.spawn_with(n, cmd, Stdio::inherit())
    }

    /// Like [`spawn`](Self::spawn), with the window's stderr written to `stderr` (a file, so
    /// that its log can be searched afterwards).
    pub(crate) fn spawn_logged(
        &mut self,
        n: usize,
        cmd: Command,
        stderr: std::fs::File,
    ) -> &Window {
        self.spawn_with(n, cmd, Stdio::from(stderr))
    }

    fn spawn_with(&mut self, n: usize, mut cmd: Command, stderr: Stdio) -> &Window {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawns");
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take().expect("piped");
        let (id_tx, id_rx) = mpsc::channel();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let json: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("window {n} printed non-JSON {line:?}: {e}"));
                if json["event"] == "joined" {
                    let _ = id_tx.send(json["peer"].as_str().unwrap_or_default().to_owned());
                }
                let line = Line {
                    from: n,
                    at: Instant::now(),
                    json,
                };
                if tx.send(line).is_err() {
                    return;
                }
            }
            // Everything it printed was passed on (see `kill_drained`).
            let _ = tx.send(Line {
                from: n,
                at: Instant::now(),
                json: json!({"event": "eof"}),
            });
        });
        let id = id_rx.recv_timeout(WITHIN).expect("window joined");
        if n == self.windows.len() {
            self.windows.push(None);
            self.seen.push(Seen::default());
            self.process.push(0);
        }
        self.spawned += 1;
        self.process[n] = self.spawned;
        self.seen[n] = Seen::default();
        self.windows[n] = Some(Window { child, id, stdin });
        self.windows[n].as_ref().expect("just set")
    }

    pub(crate) fn id(&self, n: usize) -> String {
        self.windows[n].as_ref().expect("running").id.clone()
    }

    /// Window numbers ordered by peer id, lowest first.
    pub(crate) fn by_id(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.windows.len())
            .filter(|n| self.windows[*n].is_some())
            .collect();
        order.sort_by_key(|n| self.id(*n));
        order
    }

    /// Sends one stdin command to window `n`.
    pub(crate) fn send(&mut self, n: usize, cmd: Value) {
        let w = self.windows[n].as_mut().expect("running");
        writeln!(w.stdin, "{cmd}").expect("window reads stdin");
        w.stdin.flush().expect("flushes");
    }

    /// SIGKILLs window `n`; returns when.
    pub(crate) fn kill(&mut self, n: usize) -> Instant {
        let at = Instant::now();
        if let Some(mut w) = self.windows[n].take() {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        at
    }

    /// SIGTERMs window `n` (a graceful leave); returns when, and waits for its exit status.
    pub(crate) fn terminate(&mut self, n: usize) -> (Instant, std::process::ExitStatus) {
        let at = Instant::now();
        let mut w = self.windows[n].take().expect("running");
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&w.child),
            rustix::process::Signal::TERM,
        )
        .expect("signals");
        let status = w.child.wait().expect("exits");
        (at, status)
    }

    fn take_line(&mut self, what: &str, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = self
            .rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
        if self.debug {
            eprintln!("{:?} {} {}", line.at, line.from, line.json);
        }
        let seen = &mut self.seen[line.from];
        match line.json["event"].as_str() {
            Some("leadership") => {
                let leader = line.json["leader"].as_str().map(str::to_owned);
                let termed = !line.json["term"].is_null();
                seen.leadership = Some((leader, termed, line.at));
            }
            Some("state") => seen.state = Some(line.json.clone()),
            Some("left") => seen.left = true,
            Some("change") => self.changes += 1,
            Some("error") => panic!("window {} refused a command: {}", line.from, line.json),
            _ => {}
        }
        self.log.push(Logged {
            from: line.from,
            process: self.process[line.from],
            at: line.at,
            json: line.json,
        });
    }

    /// Every line taken so far, in order.
    pub(crate) fn log(&self) -> &[Logged] {
        &self.log
    }

    /// The number of the process now (or last) running as window `n`: 1 for the first process
    /// started by this `Windows`, counting up; a restarted window gets a new number.
    pub(crate) fn process(&self, n: usize) -> u64 {
        self.process[n]
    }

    /// Whether window `n` has a running process.
    pub(crate) fn running(&self, n: usize) -> bool {
        self.windows.get(n).is_some_and(Option::is_some)
    }

    /// Waits until a line for which `matches` holds was taken, at index `from` of the log or
    /// later; returns its index.
    pub(crate) fn until_logged(
        &mut self,
        what: &str,
        from: usize,
        matches: impl Fn(&Logged) -> bool,
    ) -> usize {
        let deadline = Instant::now() + WITHIN;
        let mut next = from;
        loop {
            if let Some(i) = (next..self.log.len()).find(|i| matches(&self.log[*i])) {
                return i;
            }
            next = self.log.len().max(from);
            self.take_line(what, deadline);
        }
    }

    /// SIGKILLs window `n` and waits until everything it printed was taken (so that no line of
    /// it is attributed to a later process of the same window number); returns when it was
    /// killed.
    pub(crate) fn kill_drained(&mut self, n: usize) -> Instant {
        let from = self.log.len();
        let at = self.kill(n);
        self.until_logged(&format!("window {n}'s output to end"), from, |l| {
            l.from == n && l.json["event"] == "eof"
        });
        at
    }

    fn signal(&self, n: usize, signal: rustix::process::Signal) {
        let w = self.windows[n].as_ref().expect("running");
        rustix::process::kill_process(rustix::process::Pid::from_child(&w.child), signal)
            .expect("signals");
    }

    /// SIGSTOPs window `n` (frozen: it neither runs nor closes anything), and waits until it
    /// is stopped (see [`freeze`]).
    pub(crate) fn stop(&self, n: usize) {
        freeze(&self.windows[n].as_ref().expect("running").child);
    }

    /// SIGCONTs window `n`.
    pub(crate) fn resume(&self, n: usize) {
        self.signal(n, rustix::process::Signal::CONT);
    }

    /// Waits until every window in `who` reports `leader` leading under some term; returns when
    /// the last of them did.
    pub(crate) fn until_all_see(&mut self, who: &[usize], leader: &str) -> Instant {
        let deadline = Instant::now() + WITHIN;
        loop {
            let times: Vec<Option<Instant>> = who
                .iter()
                .map(|n| match &self.seen[*n].leadership {
                    Some((Some(l), true, at)) if l == leader => Some(*at),
                    _ => None,
                })
                .collect();
            if times.iter().all(Option::is_some) {
                return times.into_iter().flatten().max().expect("some");
            }
            self.take_line(&format!("windows {who:?} to see {leader} lead"), deadline);
        }
    }

    /// Asks window `n` for its state and returns the whole answer.
    pub(crate) fn state_answer(&mut self, n: usize) -> Value {
        self.seen[n].state = None;
        self.send(n, json!({"op": "state"}));
        let deadline = Instant::now() + WITHIN;
        while self.seen[n].state.is_none() {
            self.take_line(&format!("window {n}'s state"), deadline);
        }
        self.seen[n].state.take().expect("answered")
    }

    /// Asks window `n` for its state and returns the answer's records.
    pub(crate) fn state(&mut self, n: usize) -> Value {
        self.state_answer(n)["records"].clone()
    }

    /// Asks window `n` for its state until `check` holds on the answer. For conditions no
    /// window prints a line about (links timing out), so this asks every 50 ms.
    pub(crate) fn until_state(&mut self, n: usize, what: &str, check: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + WITHIN;
        loop {
            let answer = self.state_answer(n);
            if check(&answer) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "window {n}: {what}: not reached: {answer}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every window in `who` holds the same records and `check` holds on them;
    /// returns the records.
    pub(crate) fn until_converged(
        &mut self,
        who: &[usize],
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WITHIN;
        loop {
            let changes = self.changes;
            let states: Vec<Value> = who.iter().map(|n| self.state(*n)).collect();
            if states.windows(2).all(|w| w[0] == w[1]) && check(&states[0]) {
                return states[0].clone();
            }
            if Instant::now() > deadline {
                panic!("windows {who:?} did not converge: {states:#?}");
            }
            // Something must change first: wait for a change line (unless one came meanwhile).
            while self.changes == changes {
                self.take_line("a change", deadline);
            }
        }
    }
}

/// Milliseconds between two instants.
pub(crate) fn ms(from: Instant, to: Instant) -> f64 {
    (to - from).as_secs_f64() * 1e3
}

/// SIGSTOPs child process `child` and waits until it is stopped. `kill` returns before the
/// process is: the stop takes its threads one at a time, the first once the kernel runs it,
/// and meanwhile the others go on working. On a loaded machine a sidecar frozen this way went
/// on receiving and acknowledging writes for milliseconds (`sidecar_backpressure`, 3 failures
/// in 80 runs beside two busy loops); the stop of the whole process is what its parent is
/// told (`waitid`, `WSTOPPED`), and that is what is waited for here.
pub(crate) fn freeze(child: &Child) {
    use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, kill_process, waitid};
    let pid = Pid::from_child(child);
    kill_process(pid, Signal::STOP).expect("signals");
    // Not consumed (`NOWAIT`): an exit stays for `Child::wait` to reap.
    let options = WaitIdOptions::STOPPED | WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
    loop {
        match waitid(WaitId::Pid(pid), options) {
            Ok(Some(status)) if status.stopped() => return,
            Ok(Some(status)) => panic!("child {pid:?} ended instead of stopping: {status:?}"),
            Ok(None) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("waiting for child {pid:?} to stop: {e}"),
        }
    }
}
