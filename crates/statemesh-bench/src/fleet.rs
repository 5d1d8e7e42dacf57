//! The harness's side of the window processes: spawning them (on this machine, or one per
//! network namespace), sending them commands, and following what they print.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value as Json, json};

use crate::cleanup;
use crate::clock::now_ns;
use crate::lan::Lan;

/// How many windows may exit before joining, in one run, before the run fails.
const MAX_JOIN_FAILURES: u64 = 3;

/// Where the windows run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Net {
    /// Every window on this machine: one runtime directory, QUIC on loopback, no mDNS.
    Local,
    /// One window per network namespace ("machine"), found by mDNS over a bridge.
    Lan,
}

impl Net {
    /// The name used in the JSON output.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Lan => "lan",
        }
    }
}

/// One running window process.
struct Win {
    child: Child,
    stdin: ChildStdin,
    pid: u32,
    /// Its peer id, once it printed `joined`.
    id: Option<String>,
    /// The machine (namespace) it runs on; always 0 in local mode.
    machine: usize,
    /// It was asked to leave: the end of its output is expected.
    leaving: bool,
}

/// A line a window printed.
#[derive(Debug)]
pub(crate) struct Line {
    /// Which window.
    pub(crate) slot: usize,
    /// What it printed.
    pub(crate) json: Json,
}

/// A window's latest leadership line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lead {
    /// The leader it reports.
    pub(crate) leader: Option<String>,
    /// Its term, once known.
    pub(crate) term: Option<u64>,
    /// Whether the window says it leads.
    pub(crate) me: bool,
    /// When the window saw this leadership (its `now_ns`).
    pub(crate) t: u64,
}

/// Leadership agreed by a set of windows.
#[derive(Clone, Debug)]
pub(crate) struct Agreement {
    /// The leader's peer id.
    pub(crate) leader: String,
    /// Its term.
    pub(crate) term: u64,
    /// When the last of the windows came to report it.
    pub(crate) t: u64,
}

/// Counts of leadership reports that break the single-leader promise (see
/// `docs/performance.md`, "dual-leader observations").
#[derive(Debug, Default)]
pub(crate) struct Safety {
    /// Every (term → peers that said they lead under it).
    claims: BTreeMap<u64, BTreeSet<String>>,
    /// The leadership the mesh settled on after the last fault, while no new fault is injected.
    settled: Option<(String, u64)>,
    /// Windows that reported the settled leadership since it settled.
    agreeing: BTreeSet<usize>,
    /// Reports, after settling, of another leader (or the leader under another term) by a
    /// window that had agreed.
    pub(crate) after_settling: u64,
}

impl Safety {
    fn observe(&mut self, slot: usize, id: Option<&str>, lead: &Lead) {
        if let (true, Some(term), Some(id)) = (lead.me, lead.term, id) {
            self.claims.entry(term).or_default().insert(id.to_owned());
        }
        let Some((leader, term)) = &self.settled else {
            return;
        };
        let agrees = lead.leader.as_ref() == Some(leader) && lead.term == Some(*term);
        if agrees {
            self.agreeing.insert(slot);
            return;
        }
        // A report of no leader, or of the settled leader with its term still pending, is
        // not a second leader; a report of another leader, or of another term, is.
        let other = match &lead.leader {
            Some(l) if l != leader => true,
            Some(_) => lead.term.is_some(),
            None => false,
        };
        if self.agreeing.contains(&slot) && other {
            self.after_settling += 1;
            self.agreeing.remove(&slot);
        }
    }

    /// Terms claimed by more than one peer (each extra claimant counts once).
    pub(crate) fn same_term_claims(&self) -> u64 {
        self.claims
            .values()
            .map(|c| c.len().saturating_sub(1) as u64)
            .sum()
    }

    /// Every observation: same-term claims plus reports of another leader after settling.
    pub(crate) fn observations(&self) -> u64 {
        self.same_term_claims() + self.after_settling
    }
}

/// A set of window processes of one mesh.
pub(crate) struct Fleet {
    exe: PathBuf,
    root: PathBuf,
    lan: Option<Lan>,
    mesh: String,
    wins: BTreeMap<usize, Win>,
    next_slot: usize,
    tx: mpsc::Sender<Line>,
    rx: mpsc::Receiver<Line>,
    /// Lines read but not yet asked for.
    buffer: VecDeque<Line>,
    /// Each running window's latest leadership line.
    lead: BTreeMap<usize, Lead>,
    /// Leadership safety counts over the whole run.
    pub(crate) safety: Safety,
    /// How long any single wait may take before the run is declared failed.
    pub(crate) within: Duration,
    /// Windows that exited before they joined (slot → machine), not yet replaced.
    failed_joins: BTreeMap<usize, usize>,
    /// How many windows exited before they joined, over the run.
    pub(crate) join_failures: u64,
}

impl Fleet {
    /// An empty fleet for `machines` machines (namespaces are created for `Net::Lan`).
    pub(crate) fn new(net: Net, machines: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let root = tempfile::Builder::new()
            .prefix("statemesh-bench-")
            .tempdir()?
            .keep();
        cleanup::add_dir(root.clone());
        let lan = match net {
            Net::Local => None,
            Net::Lan => {
                eprintln!("creating {machines} network namespaces joined by a bridge");
                Some(Lan::new(machines)?)
            }
        };
        let (tx, rx) = mpsc::channel();
        Ok(Self {
            exe,
            root,
            lan,
            mesh: format!("bench-{}", std::process::id()),
            wins: BTreeMap::new(),
            next_slot: 0,
            tx,
            rx,
            buffer: VecDeque::new(),
            lead: BTreeMap::new(),
            safety: Safety::default(),
            within: Duration::from_secs(30),
            failed_joins: BTreeMap::new(),
            join_failures: 0,
        })
    }

    /// The network namespaces, in LAN mode.
    pub(crate) fn lan(&self) -> Option<&Lan> {
        self.lan.as_ref()
    }

    /// Running windows, in slot order.
    pub(crate) fn slots(&self) -> Vec<usize> {
        self.wins
            .iter()
            .filter(|(_, w)| !w.leaving)
            .map(|(s, _)| *s)
            .collect()
    }

    /// The peer id of window `slot`.
    pub(crate) fn id(&self, slot: usize) -> anyhow::Result<String> {
        self.wins
            .get(&slot)
            .and_then(|w| w.id.clone())
            .ok_or_else(|| anyhow!("window {slot} is not running"))
    }

    /// The window whose peer id is `id`.
    pub(crate) fn slot_of(&self, id: &str) -> anyhow::Result<usize> {
        self.wins
            .iter()
            .find(|(_, w)| w.id.as_deref() == Some(id))
            .map(|(s, _)| *s)
            .ok_or_else(|| anyhow!("no running window is {id}"))
    }

    /// The process id of window `slot`.
    pub(crate) fn pid(&self, slot: usize) -> anyhow::Result<u32> {
        self.wins
            .get(&slot)
            .map(|w| w.pid)
            .ok_or_else(|| anyhow!("window {slot} is not running"))
    }

    /// The machine window `slot` runs on.
    pub(crate) fn machine(&self, slot: usize) -> anyhow::Result<usize> {
        self.wins
            .get(&slot)
            .map(|w| w.machine)
            .ok_or_else(|| anyhow!("window {slot} is not running"))
    }

    /// A directory of machine `m` (created 0700).
    fn machine_dir(&self, m: usize, what: &str) -> anyhow::Result<PathBuf> {
        let dir = self.root.join(format!("machine-{m}")).join(what);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(dir)
    }

    /// The command line of a window process on machine `machine`.
    fn command(&self, machine: usize, extra: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = match &self.lan {
            Some(lan) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", lan.namespace(machine)])
                    .arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        cmd.arg("window")
            .args(["--mesh", &self.mesh])
            .arg("--secret-file")
            .arg(self.root.join("secret"))
            .arg("--runtime-dir")
            .arg(self.machine_dir(machine, "run")?)
            .arg("--state-dir")
            .arg(self.machine_dir(machine, "state")?)
            .args(["--parent", &std::process::id().to_string()])
            .args(extra);
        if self.lan.is_some() {
            cmd.arg("--lan");
        }
        Ok(cmd)
    }

    /// Starts a window process on `machine` (extra `window` arguments in `extra`); returns its
    /// slot. Does not wait for it to join.
    pub(crate) fn spawn_with(&mut self, machine: usize, extra: &[&str]) -> anyhow::Result<usize> {
        let mut cmd = self.command(machine, extra)?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a window process")?;
        let pid = child.id();
        cleanup::add_pid(pid);
        let slot = self.next_slot;
        self.next_slot += 1;
        let stdout = child.stdout.take().context("piped stdout")?;
        let stdin = child.stdin.take().context("piped stdin")?;
        let tx = self.tx.clone();
        std::thread::Builder::new()
            .name(format!("window-{slot}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let json = serde_json::from_str(&line)
                        .unwrap_or_else(|_| json!({"ev": "bad", "raw": line}));
                    if tx.send(Line { slot, json }).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Line {
                    slot,
                    json: json!({"ev": "eof"}),
                });
            })?;
        self.wins.insert(
            slot,
            Win {
                child,
                stdin,
                pid,
                id: None,
                machine,
                leaving: false,
            },
        );
        Ok(slot)
    }

    /// Starts the hidden `forge` subcommand on `machine` (LAN mode only) with `args`, and waits
    /// until it announces all its records. Ending its stdin (dropping the handle, or killing it)
    /// makes it vanish without goodbyes.
    pub(crate) fn spawn_forger(
        &mut self,
        machine: usize,
        args: &[String],
    ) -> anyhow::Result<Child> {
        let lan = self
            .lan
            .as_ref()
            .context("the forger runs on the namespace LAN only")?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", lan.namespace(machine)])
            .arg(&self.exe)
            .arg("forge")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the forger")?;
        cleanup::add_pid(child.id());
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        let line: Json =
            serde_json::from_str(&first).with_context(|| format!("the forger said {first:?}"))?;
        if line["ev"] != "forging" {
            bail!("the forger said {first:?}");
        }
        Ok(child)
    }

    /// Starts a window on `machine` and waits until it joined; returns its slot.
    pub(crate) fn spawn(&mut self, machine: usize) -> anyhow::Result<usize> {
        let slot = self.spawn_with(machine, &[])?;
        let joined = self.join_all(vec![slot])?;
        joined
            .first()
            .copied()
            .ok_or_else(|| anyhow!("no window joined"))
    }

    /// Waits until every window in `slots` printed `joined`.
    pub(crate) fn wait_joined(&mut self, slots: &[usize]) -> anyhow::Result<()> {
        self.join_all(slots.to_vec()).map(|_| ())
    }

    /// Waits until every window in `slots` joined. A window that exits before joining (it
    /// says why on stderr) is counted in `join_failures` and replaced by a new one on the same
    /// machine, at most [`MAX_JOIN_FAILURES`] times in a run. Returns the slots that joined.
    fn join_all(&mut self, mut slots: Vec<usize>) -> anyhow::Result<Vec<usize>> {
        loop {
            self.until("windows to join", |f| {
                slots
                    .iter()
                    .all(|s| {
                        f.failed_joins.contains_key(s)
                            || f.wins.get(s).is_some_and(|w| w.id.is_some())
                    })
                    .then_some(())
            })?;
            let failed: Vec<(usize, usize)> = slots
                .iter()
                .filter_map(|s| self.failed_joins.remove_entry(s))
                .collect();
            if failed.is_empty() {
                return Ok(slots);
            }
            for (slot, machine) in failed {
                if self.join_failures > MAX_JOIN_FAILURES {
                    bail!("{} windows exited before joining", self.join_failures);
                }
                eprintln!("  window {slot} exited before joining; starting another");
                let new = self.spawn_with(machine, &[])?;
                for s in &mut slots {
                    if *s == slot {
                        *s = new;
                    }
                }
            }
        }
    }

    /// Starts `n` windows — on machines 0..n in LAN mode — and waits until they agree on a
    /// leader and every pair is linked.
    pub(crate) fn start(&mut self, n: usize) -> anyhow::Result<Agreement> {
        let lan = self.lan.is_some();
        let machine = |i: usize| if lan { i } else { 0 };
        // The first window creates the secret file; the others start together.
        let first = self.spawn_with(machine(0), &[])?;
        self.join_all(vec![first])?;
        let mut rest = Vec::new();
        for i in 1..n {
            rest.push(self.spawn_with(machine(i), &[])?);
        }
        self.join_all(rest)?;
        self.ready()
    }

    /// Starts `n` windows one after the other, as a user opens windows: each starts once the
    /// windows before it agree on the leader and are all linked.
    pub(crate) fn start_one_by_one(&mut self, n: usize) -> anyhow::Result<Agreement> {
        let lan = self.lan.is_some();
        let mut agreed = None;
        for i in 0..n {
            self.spawn(if lan { i } else { 0 })?;
            agreed = Some(self.ready()?);
            if (i + 1) % 8 == 0 {
                eprintln!("  {} windows linked", i + 1);
            }
        }
        agreed.ok_or_else(|| anyhow!("no windows"))
    }

    /// Waits until every running window agrees on the leader, has a link to every other and
    /// may claim leadership (so that a trial never depends on how recently a window joined).
    pub(crate) fn ready(&mut self) -> anyhow::Result<Agreement> {
        let all = self.slots();
        let agreed = self.agree(&all)?;
        self.wait_links(&all, all.len() - 1)?;
        self.settle(&agreed, &all);
        Ok(agreed)
    }

    /// Waits until each window in `slots` has `n` links up and is past its join grace.
    pub(crate) fn wait_links(&mut self, slots: &[usize], n: usize) -> anyhow::Result<()> {
        for s in slots {
            self.send(*s, &json!({"op": "links", "n": n}))?;
        }
        for s in slots {
            let line = self.wait_line("links", |l| l.slot == *s && l.json["ev"] == "links")?;
            let links = line.json["links"].as_u64().unwrap_or(0) as usize;
            if links < n {
                bail!("window {s} has {links} links, not {n}");
            }
            if line.json["candidate"] == false {
                bail!("window {s} never became a leader candidate");
            }
        }
        Ok(())
    }

    /// Sends a command to window `slot`.
    pub(crate) fn send(&mut self, slot: usize, cmd: &Json) -> anyhow::Result<()> {
        let w = self
            .wins
            .get_mut(&slot)
            .ok_or_else(|| anyhow!("window {slot} is not running"))?;
        writeln!(w.stdin, "{cmd}")
            .and_then(|()| w.stdin.flush())
            .with_context(|| format!("window {slot} does not read its input"))
    }

    /// Takes in one line: updates what is known of the windows. Returns the line if it is
    /// data for a caller (not a leadership or join line, not from a window already gone).
    fn absorb(&mut self, line: Line) -> anyhow::Result<Option<Line>> {
        let Some(w) = self.wins.get_mut(&line.slot) else {
            return Ok(None);
        };
        match line.json["ev"].as_str() {
            Some("joined") => {
                // A baseline process (no mesh) has no peer id.
                w.id = Some(
                    line.json["peer"]
                        .as_str()
                        .map_or_else(|| format!("baseline-{}", line.slot), str::to_owned),
                );
                if let Some(pid) = line.json["pid"].as_u64() {
                    // Through `ip netns exec` the window is still this very process (exec,
                    // no fork), but take what it says.
                    w.pid = pid as u32;
                }
                Ok(None)
            }
            Some("lead") => {
                if w.leaving {
                    return Ok(None);
                }
                let lead = Lead {
                    leader: line.json["leader"].as_str().map(str::to_owned),
                    term: line.json["term"].as_u64(),
                    me: line.json["me"].as_bool().unwrap_or(false),
                    t: line.json["t"].as_u64().unwrap_or(0),
                };
                let id = w.id.clone();
                self.safety.observe(line.slot, id.as_deref(), &lead);
                self.lead.insert(line.slot, lead);
                Ok(None)
            }
            Some("eof") if w.leaving => Ok(None),
            Some("eof") if w.id.is_none() => {
                let (slot, machine) = (line.slot, w.machine);
                if let Some(mut w) = self.wins.remove(&slot) {
                    let _ = w.child.wait();
                    cleanup::remove_pid(w.pid);
                }
                self.failed_joins.insert(slot, machine);
                self.join_failures += 1;
                Ok(None)
            }
            Some("eof") => {
                let status = w.child.try_wait().ok().flatten();
                bail!("window {} exited unexpectedly ({status:?})", line.slot)
            }
            Some("error") => bail!("window {} reported an error: {}", line.slot, line.json),
            Some("bad") => bail!(
                "window {} printed a line that is not JSON: {}",
                line.slot,
                line.json["raw"]
            ),
            _ => Ok(Some(line)),
        }
    }

    /// Receives and absorbs one line; returns it if it is data.
    fn recv(&mut self, what: &str, deadline: Instant) -> anyhow::Result<Option<Line>> {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = self
            .rx
            .recv_timeout(left)
            .map_err(|_| anyhow!("timed out waiting for {what}"))?;
        self.absorb(line)
    }

    /// Waits for a data line matching `want` (lines read meanwhile are kept for later).
    pub(crate) fn wait_line(
        &mut self,
        what: &str,
        want: impl Fn(&Line) -> bool,
    ) -> anyhow::Result<Line> {
        if let Some(i) = self.buffer.iter().position(&want)
            && let Some(line) = self.buffer.remove(i)
        {
            return Ok(line);
        }
        let deadline = Instant::now() + self.within;
        loop {
            if let Some(line) = self.recv(what, deadline)? {
                if want(&line) {
                    return Ok(line);
                }
                self.buffer.push_back(line);
            }
        }
    }

    /// Waits until `check` holds on what is known of the windows.
    pub(crate) fn until<T>(
        &mut self,
        what: &str,
        mut check: impl FnMut(&Self) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + self.within;
        loop {
            if let Some(t) = check(self) {
                return Ok(t);
            }
            if let Some(line) = self.recv(what, deadline)? {
                self.buffer.push_back(line);
            }
        }
    }

    /// Reads (and absorbs) every line that arrives within `d` — an observation period.
    pub(crate) fn observe_for(&mut self, d: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + d;
        loop {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    if let Some(line) = self.absorb(line)? {
                        self.buffer.push_back(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return Ok(()),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("no window output"),
            }
        }
    }

    /// Waits until every window in `slots` reports the same leader under the same term, that
    /// leader being the lowest peer id among them.
    pub(crate) fn agree(&mut self, slots: &[usize]) -> anyhow::Result<Agreement> {
        let expected = slots
            .iter()
            .map(|s| self.id(*s))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .min()
            .ok_or_else(|| anyhow!("no windows"))?;
        let what = format!("{} windows to agree that {expected} leads", slots.len());
        self.until(&what, |f| {
            let mut term = None;
            let mut t = 0;
            for s in slots {
                let l = f.lead.get(s)?;
                if l.leader.as_deref() != Some(expected.as_str()) || l.term.is_none() {
                    return None;
                }
                if term.is_some() && term != l.term {
                    return None;
                }
                term = l.term;
                t = t.max(l.t);
            }
            Some(Agreement {
                leader: expected.clone(),
                term: term?,
                t,
            })
        })
    }

    /// From now on (until [`unsettle`](Self::unsettle)), count reports of another leader by
    /// any of `slots`, and by windows that join and agree later.
    pub(crate) fn settle(&mut self, agreed: &Agreement, slots: &[usize]) {
        self.safety.settled = Some((agreed.leader.clone(), agreed.term));
        self.safety.agreeing = slots.iter().copied().collect();
    }

    /// A fault is about to be injected: leadership may legitimately change.
    pub(crate) fn unsettle(&mut self) {
        self.safety.settled = None;
        self.safety.agreeing.clear();
    }

    /// SIGKILLs window `slot`; returns when (just before the signal).
    pub(crate) fn kill(&mut self, slot: usize) -> anyhow::Result<u64> {
        let mut w = self
            .wins
            .remove(&slot)
            .ok_or_else(|| anyhow!("window {slot} is not running"))?;
        self.lead.remove(&slot);
        let t = now_ns();
        let _ = w.child.kill();
        let _ = w.child.wait();
        cleanup::remove_pid(w.pid);
        Ok(t)
    }

    /// Asks window `slot` to leave gracefully; returns when it called `shutdown()` (its own
    /// clock reading). The process is reaped by [`reap`](Self::reap).
    pub(crate) fn leave(&mut self, slot: usize) -> anyhow::Result<u64> {
        self.send(slot, &json!({"op": "shutdown"}))?;
        if let Some(w) = self.wins.get_mut(&slot) {
            w.leaving = true;
        }
        self.lead.remove(&slot);
        let line = self.wait_line("a graceful leave", |l| {
            l.slot == slot && l.json["ev"] == "leaving"
        })?;
        line.json["t"]
            .as_u64()
            .ok_or_else(|| anyhow!("`leaving` without a time"))
    }

    /// Waits for a leaving window's process to end.
    pub(crate) fn reap(&mut self, slot: usize) -> anyhow::Result<()> {
        if let Some(mut w) = self.wins.remove(&slot) {
            let status = w.child.wait()?;
            cleanup::remove_pid(w.pid);
            if !status.success() {
                bail!("window {slot} ended with {status}");
            }
        }
        Ok(())
    }

    /// Sends `cmd` to window `slot` and waits for its answer line `ev`.
    pub(crate) fn ask(&mut self, slot: usize, cmd: &Json, ev: &str) -> anyhow::Result<Json> {
        self.send(slot, cmd)?;
        let line = self.wait_line(ev, |l| l.slot == slot && l.json["ev"] == ev)?;
        Ok(line.json)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, mut w) in std::mem::take(&mut self.wins) {
            let _ = w.child.kill();
            let _ = w.child.wait();
            cleanup::remove_pid(w.pid);
        }
        // The namespaces go before the directories their windows used.
        self.lan = None;
        let _ = std::fs::remove_dir_all(&self.root);
        cleanup::remove_dir(&self.root);
    }
}

/// Peak resident set size of process `pid` (`VmHWM` of `/proc/<pid>/status`), in KiB.
pub(crate) fn peak_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM for process {pid}"))
}

/// The value of the `<name> <n> kB` line of a `/proc` file, in KiB (0 if absent).
fn kb_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Current resident memory of process `pid` by kind (`RssAnon`, `RssFile`, `RssShmem` of
/// `/proc/<pid>/status`), in KiB.
pub(crate) fn rss_kinds_kb(pid: u32) -> anyhow::Result<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| kb_field(&status, name);
    Ok((field("RssAnon:"), field("RssFile:"), field("RssShmem:")))
}

/// Proportional and unique set sizes of process `pid` (`Pss`, and `Private_Clean +
/// Private_Dirty`, of `/proc/<pid>/smaps_rollup`), in KiB: pages shared with other processes
/// (the binary's code, mapped by every window) count in proportion, or not at all.
pub(crate) fn pss_uss_kb(pid: u32) -> anyhow::Result<(u64, u64)> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| kb_field(&rollup, name);
    Ok((
        field("Pss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    ))
}

/// CPU time used so far by process `pid` (all threads: `utime + stime` of
/// `/proc/<pid>/stat`), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; after the name, field k is at k - 3.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))
    };
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok((ticks(11)? + ticks(12)?) as f64 / hz)
}
