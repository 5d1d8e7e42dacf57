//! `statemesh demo`: the health-watch story with real window processes on this machine.
//!
//! The demo serves a few TCP endpoints on loopback, starts N window processes (this binary's
//! hidden `demo-window` command) in a fresh temporary mesh — local mode, nothing leaves the
//! machine — and narrates: the lowest id leads and probes the endpoints, every window shows the
//! same statuses; an endpoint goes down; the leader is SIGKILLed and the measured failover
//! printed; the new leader probes on. Then it stops the windows and removes its files.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use statemesh::{EntryKind, Mesh, Secret};

/// How often the leader probes.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(150);
/// Safety net for each step of the story.
const STEP: Duration = Duration::from_secs(15);

/// Options of the hidden `demo-window` command.
#[derive(clap::Args, Debug)]
pub(crate) struct WindowArgs {
    /// The demo's temporary directory.
    #[arg(long)]
    dir: PathBuf,
    /// This window's number.
    #[arg(long)]
    n: usize,
    /// Endpoints to probe, `name=addr`.
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
}

/// One demo window: joins, probes while it leads, prints what it sees as JSON lines.
pub(crate) async fn window(args: WindowArgs) -> anyhow::Result<()> {
    let mesh = Mesh::builder("statemesh-demo")
        .secret_file(args.dir.join("secret"))
        .runtime_dir(args.dir.join("run"))
        .state_dir(args.dir.join(format!("state-{}", args.n)))
        .join()
        .await?;
    let endpoints: Vec<(String, SocketAddr)> = args
        .endpoints
        .iter()
        .filter_map(|e| {
            let (name, addr) = e.split_once('=')?;
            Some((name.to_owned(), addr.parse().ok()?))
        })
        .collect();
    let say = |v: Json| println!("{v}");
    say(json!({"event": "joined", "peer": mesh.id().to_string()}));
    let prober = {
        let mesh = mesh.clone();
        tokio::spawn(async move {
            while let Some(lead) = mesh.lead().await {
                while lead.is_valid() {
                    for (name, addr) in &endpoints {
                        let addr = *addr;
                        let up = tokio::task::spawn_blocking(move || {
                            TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok()
                        })
                        .await
                        .unwrap_or(false);
                        let _ = lead.put("probes", name, &(if up { "up" } else { "down" }));
                    }
                    tokio::select! {
                        () = tokio::time::sleep(PROBE_EVERY) => {}
                        () = lead.cancelled() => {}
                    }
                }
            }
        })
    };
    // The current leadership first (it may have settled while joining), then its changes.
    let mut leadership = mesh.leadership();
    let mut changes = mesh.changes();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            l = leadership.recv() => {
                let Some(l) = l else { break };
                say(json!({"event": "leadership", "leader": l.leader.map(|p| p.to_string()), "term": l.term}));
                // Records are shown once their writer's term is known to be the newest.
                say(statuses(&mesh));
            }
            c = changes.recv() => match c {
                Some(Ok(c)) if c.kind == EntryKind::Leader && c.channel == "probes" => say(statuses(&mesh)),
                // After a lag, show everything again.
                Some(Err(_)) => say(statuses(&mesh)),
                Some(Ok(_)) => {}
                None => break,
            },
            _ = terminate.recv() => break,
        }
    }
    prober.abort();
    mesh.shutdown().await;
    Ok(())
}

/// The probe statuses this window can read now (records of the current leader's term).
fn statuses(mesh: &Mesh) -> Json {
    let statuses: BTreeMap<String, Json> = mesh
        .leader_keys("probes")
        .into_iter()
        .filter_map(|k| {
            let (v, term) = mesh.leader_get::<String>("probes", &k).ok()??;
            Some((
                k,
                json!({"status": v, "term": term.number, "term_leader": term.leader.to_string()}),
            ))
        })
        .collect();
    json!({"event": "statuses", "statuses": statuses})
}

/// A TCP endpoint on loopback that accepts while it is up.
struct Endpoint {
    name: &'static str,
    addr: SocketAddr,
    up: Arc<AtomicBool>,
}

impl Endpoint {
    fn start(name: &'static str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        Self::serve(listener, up.clone());
        Ok(Self { name, addr, up })
    }

    fn serve(listener: TcpListener, up: Arc<AtomicBool>) {
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if !up.load(Ordering::Acquire) {
                    // Going down: stop listening (the socket closes with this thread).
                    break;
                }
                drop(conn);
            }
        });
    }

    fn down(&self) {
        self.up.store(false, Ordering::Release);
        // Wake the accept loop so it sees the flag and closes the listener.
        let _ = TcpStream::connect_timeout(&self.addr, PROBE_TIMEOUT);
    }

    fn back_up(&self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.addr)?;
        self.up.store(true, Ordering::Release);
        Self::serve(listener, self.up.clone());
        Ok(())
    }
}

struct DemoWindow {
    child: Option<Child>,
    id: String,
    leader: Option<String>,
    term: Option<u64>,
    statuses: BTreeMap<String, (String, u64)>,
}

struct Story {
    started: Instant,
    pace: Duration,
    windows: Vec<DemoWindow>,
    rx: mpsc::Receiver<(usize, Json)>,
}

impl Drop for Story {
    fn drop(&mut self) {
        for w in &mut self.windows {
            if let Some(c) = w.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn letter(n: usize) -> char {
    char::from(b'A' + u8::try_from(n % 26).unwrap_or(0))
}

impl Story {
    /// A pause between acts, so that a person can follow (the windows keep running).
    fn pause(&self) {
        std::thread::sleep(self.pace);
    }

    fn say(&self, what: impl std::fmt::Display) {
        println!("[{:>7.3} s] {what}", self.started.elapsed().as_secs_f64());
    }

    fn name(&self, id: Option<&str>) -> String {
        id.and_then(|id| self.windows.iter().position(|w| w.id == id))
            .map_or_else(|| "nobody".to_owned(), |n| format!("window {}", letter(n)))
    }

    fn live(&self) -> Vec<usize> {
        (0..self.windows.len())
            .filter(|n| self.windows[*n].child.is_some())
            .collect()
    }

    /// Reads window lines until `done` holds; returns when it first did.
    fn until(&mut self, what: &str, done: impl Fn(&Self) -> bool) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + STEP;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (n, line) = self
                .rx
                .recv_timeout(left)
                .map_err(|_| anyhow::anyhow!("the demo got stuck waiting for {what}"))?;
            let w = &mut self.windows[n];
            match line["event"].as_str() {
                Some("leadership") => {
                    w.term = line["term"].as_u64();
                    w.leader = w.term.and(line["leader"].as_str().map(str::to_owned));
                }
                Some("statuses") => {
                    if let Some(m) = line["statuses"].as_object() {
                        w.statuses = m
                            .iter()
                            .map(|(k, v)| {
                                let s = v["status"].as_str().unwrap_or("?").to_owned();
                                (k.clone(), (s, v["term"].as_u64().unwrap_or(0)))
                            })
                            .collect();
                    }
                }
                _ => {}
            }
        }
        Ok(Instant::now())
    }

    fn all_see_leader(&self, who: &[usize]) -> Option<String> {
        let first = self.windows[*who.first()?].leader.clone()?;
        who.iter()
            .all(|n| self.windows[*n].leader.as_deref() == Some(first.as_str()))
            .then_some(first)
    }

    fn all_see_status(&self, who: &[usize], name: &str, status: &str, term: Option<u64>) -> bool {
        who.iter().all(|n| {
            self.windows[*n]
                .statuses
                .get(name)
                .is_some_and(|(s, t)| s == status && term.is_none_or(|term| *t == term))
        })
    }

    fn table(&self) {
        for n in self.live() {
            let w = &self.windows[n];
            let statuses: Vec<String> = w
                .statuses
                .iter()
                .map(|(k, (s, _))| format!("{k}={s}"))
                .collect();
            println!(
                "            window {}  sees  {}   (leader: {})",
                letter(n),
                statuses.join("  "),
                self.name(w.leader.as_deref())
            );
        }
    }
}

/// Runs the story with `windows` window processes.
pub(crate) fn run(windows: usize, pace: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    Secret::create(&dir.path().join("secret"), false)?;
    let endpoints = [
        Endpoint::start("api")?,
        Endpoint::start("db")?,
        Endpoint::start("cache")?,
    ];
    let exe = std::env::current_exe()?;
    let (tx, rx) = mpsc::channel();
    let mut story = Story {
        started: Instant::now(),
        pace,
        windows: Vec::new(),
        rx,
    };
    story.say(format!(
        "starting {windows} window processes in a fresh mesh on this machine (local mode: nothing leaves it)"
    ));
    for n in 0..windows {
        let mut cmd = Command::new(&exe);
        cmd.arg("demo-window")
            .arg("--dir")
            .arg(dir.path())
            .args(["--n", &n.to_string()]);
        for e in &endpoints {
            cmd.arg("--endpoint").arg(format!("{}={}", e.name, e.addr));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let tx = tx.clone();
        let (id_tx, id_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(json) = serde_json::from_str::<Json>(&line) else {
                    continue;
                };
                if json["event"] == "joined" {
                    let _ = id_tx.send(json["peer"].as_str().unwrap_or_default().to_owned());
                }
                if tx.send((n, json)).is_err() {
                    break;
                }
            }
        });
        let id = id_rx
            .recv_timeout(STEP)
            .map_err(|_| anyhow::anyhow!("window {} did not start", letter(n)))?;
        story.windows.push(DemoWindow {
            child: Some(child),
            id,
            leader: None,
            term: None,
            statuses: BTreeMap::new(),
        });
    }
    let all = story.live();
    story.until("every window to agree on a leader", |s| {
        s.all_see_leader(&all).is_some()
    })?;
    let leader = story.all_see_leader(&all).unwrap_or_default();
    let leader_n = story.windows.iter().position(|w| w.id == leader);
    story.say(format!(
        "all {windows} windows agree: {} leads (the lowest peer id) and probes api, db and cache",
        story.name(Some(&leader))
    ));
    story.until("every window to show every endpoint up", |s| {
        endpoints
            .iter()
            .all(|e| s.all_see_status(&all, e.name, "up", None))
    })?;
    story.say("every window shows the same statuses, written by the leader under its term:");
    story.table();
    story.pause();

    let down_at = Instant::now();
    endpoints[2].down();
    story.say("the cache endpoint goes down");
    let seen = story.until("every window to see cache down", |s| {
        s.all_see_status(&all, "cache", "down", None)
    })?;
    story.say(format!(
        "every window shows cache=down {:.0} ms later (the next probe, then one sync round)",
        (seen - down_at).as_secs_f64() * 1e3
    ));

    story.table();
    story.pause();

    let Some(leader_n) = leader_n else {
        anyhow::bail!("the leader is not one of the demo's windows");
    };
    story.say(format!(
        "SIGKILL {} (the leader)",
        story.name(Some(&leader))
    ));
    let killed_at = Instant::now();
    if let Some(mut c) = story.windows[leader_n].child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let survivors = story.live();
    let agreed = story.until("the survivors to agree on a new leader", |s| {
        s.all_see_leader(&survivors).is_some_and(|l| l != leader)
    })?;
    let new_leader = story.all_see_leader(&survivors).unwrap_or_default();
    story.say(format!(
        "all {} survivors agree: {} leads — failover took {:.1} ms",
        survivors.len(),
        story.name(Some(&new_leader)),
        (agreed - killed_at).as_secs_f64() * 1e3
    ));

    story.pause();
    endpoints[2].back_up()?;
    let up_at = Instant::now();
    story.say("the cache endpoint comes back");
    let old_term = story.windows[leader_n].term.unwrap_or(0);
    let seen = story.until("every survivor to see cache up from the new leader", |s| {
        survivors.iter().all(|n| {
            s.windows[*n]
                .statuses
                .get("cache")
                .is_some_and(|(st, t)| st == "up" && *t > old_term)
        })
    })?;
    story.say(format!(
        "the new leader probes under its new term: every survivor shows cache=up {:.0} ms later",
        (seen - up_at).as_secs_f64() * 1e3
    ));
    story.table();
    story.pause();

    for n in story.live() {
        if let Some(c) = story.windows[n].child.as_ref() {
            let pid = rustix::process::Pid::from_child(c);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    for n in story.live() {
        if let Some(mut c) = story.windows[n].child.take() {
            let _ = c.wait();
        }
    }
    story.say("windows closed gracefully; temporary mesh removed. The end.");
    Ok(())
}
