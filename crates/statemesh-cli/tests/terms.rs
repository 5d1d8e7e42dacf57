//! One leadership per term, with real processes: three `statemesh sidecar` windows started
//! together in a fresh mesh, each asking for the lead guard right after `initialize` and
//! writing a leader record under it once granted — the way a client written from
//! `docs/sidecar.md` does. Repeated `TERMS_TRIALS` times (default 30).
//!
//! Checked over every trial: no two windows ever hold a guard for the same term (a term is what
//! `lead_acquire` answers: its number, and the window leading under it); the term a window is
//! granted is its own; once the windows agree, every one of them reads the leader's record
//! under the leader's term. A leadership that moves while they read it back (a window that
//! claimed before hearing the others is deposed, a guard is lost) voids the agreement, and the
//! trial waits for the next one, under the new term.
//!
//! Before terms carried their leader, two windows were granted the same term number in a few
//! trials out of 30 (one claimed before hearing the other, then stepped down): both guards
//! accepted writes under one fencing token. Nothing here waits on a sleep: waits are on the
//! sidecars' messages, with a 30 s safety net.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use serde_json::{Value, json};
use support::WITHIN;
use support::sidecar::{bin, forward_frames, frame, mesh_flags};

/// What one window's sidecar wrote, or the end of its output.
type Msg = (usize, Option<Value>);

struct Window {
    child: Child,
    stdin: Option<ChildStdin>,
    next_id: u64,
    /// Method of each request awaiting its response, by id.
    asked: BTreeMap<u64, &'static str>,
    peer: Option<String>,
    /// The leadership this window last reported (`leader` answers): leader and term number.
    leadership: Option<(Option<String>, Option<u64>)>,
    /// The term of the guard it holds, as `lead_acquire` answered.
    held: Option<(u64, Option<String>)>,
    ended: bool,
}

impl Drop for Window {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Window {
    fn spawn(dir: &Path, w: usize, tx: mpsc::Sender<Msg>) -> Self {
        let mut child = Command::new(bin())
            .arg("sidecar")
            .args(mesh_flags(dir, "terms"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawns the sidecar");
        let stdin = child.stdin.take();
        forward_frames(child.stdout.take().expect("piped"), tx, move |m| (w, m));
        Self {
            child,
            stdin,
            next_id: 1,
            asked: BTreeMap::new(),
            peer: None,
            leadership: None,
            held: None,
            ended: false,
        }
    }

    fn ask(&mut self, method: &'static str, params: Value) {
        let id = self.next_id;
        self.next_id += 1;
        self.asked.insert(id, method);
        let m = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if let Some(stdin) = self.stdin.as_mut() {
            // A window that already exited is seen as the end of its output.
            let _ = stdin
                .write_all(&frame(m.to_string().as_bytes()))
                .and_then(|()| stdin.flush());
        }
    }
}

/// A guard granted to a window: the term as `lead_acquire` answered it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    term: u64,
    /// `term_leader`, if the answer carries it (the window leading under the term).
    leader: Option<String>,
}

/// What one trial saw.
#[derive(Default)]
struct Trial {
    /// Every guard granted: (window, term).
    grants: Vec<(usize, Grant)>,
    /// Leader writes accepted: (window, term number).
    accepted: Vec<(usize, u64)>,
    /// Windows that, agreeing on the leader and its term, showed another window's record.
    stale_reads: Vec<String>,
    /// Agreements voided by a leadership that moved while the windows read the record back.
    voided: usize,
}

/// The term a `lead_acquire` or `lead_put` answer names.
fn grant_of(result: &Value) -> Grant {
    Grant {
        term: result["term"]
            .as_u64()
            .unwrap_or_else(|| panic!("a term without a number: {result}")),
        leader: result["term_leader"].as_str().map(str::to_owned),
    }
}

/// Whether every window reports the same leader under a known term, and the leader's own
/// guard is of that term with its write accepted.
fn agreed(ws: &[Window], trial: &Trial) -> Option<(String, u64)> {
    let first = ws.first()?.leadership.clone()?;
    let (Some(leader), Some(term)) = first.clone() else {
        return None;
    };
    if ws
        .iter()
        .any(|w| w.leadership.as_ref() != Some(&first) || w.ended)
    {
        return None;
    }
    let lw = ws
        .iter()
        .position(|w| w.peer.as_deref() == Some(leader.as_str()))?;
    let holds = ws[lw].held.as_ref().is_some_and(|(t, _)| *t == term);
    let wrote = trial.accepted.contains(&(lw, term));
    (holds && wrote).then_some((leader, term))
}

/// What every window says of itself (`explain`, `stats`, `leader_keys`), for a failure's
/// message: waits at most 5 s for the answers.
fn diagnose(ws: &mut [Window], rx: &mpsc::Receiver<Msg>) -> String {
    for w in ws.iter_mut() {
        w.ask("explain", json!({}));
        w.ask("stats", json!({}));
        w.ask("leader_keys", json!({"channel": "probes"}));
    }
    let mut said: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let until = Instant::now() + std::time::Duration::from_secs(5);
    while ws.iter().any(|w| !w.asked.is_empty() && !w.ended) {
        let left = until.saturating_duration_since(Instant::now());
        let Ok((w, Some(m))) = rx.recv_timeout(left) else {
            break;
        };
        let Some(method) = m["id"].as_u64().and_then(|id| ws[w].asked.remove(&id)) else {
            continue;
        };
        said.entry(w)
            .or_default()
            .push(format!("{method}: {}", m.get("result").unwrap_or(&m)));
    }
    said.iter()
        .map(|(w, lines)| format!("window {w}:\n  {}", lines.join("\n  ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs one trial: three sidecars started together, each asking for the guard at once.
fn trial(n: usize) -> Trial {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut ws: Vec<Window> = (0..3)
        .map(|w| Window::spawn(dir.path(), w, tx.clone()))
        .collect();
    drop(tx);
    for w in &mut ws {
        w.ask(
            "initialize",
            json!({"protocol": 1, "client": {"name": "terms"}}),
        );
        w.ask("lead_acquire", json!({}));
    }
    let mut t = Trial::default();
    let deadline = Instant::now() + WITHIN;
    let mut closing = false;
    let mut read_back = BTreeMap::new();
    loop {
        if ws.iter().all(|w| w.ended) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let (w, m) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("trial {n}: no agreement within {WITHIN:?}"));
        let Some(m) = m else {
            ws[w].ended = true;
            assert!(closing, "trial {n}: window {w} ended before the trial did");
            continue;
        };
        if m.get("method").is_some() {
            // A notification: leadership moved, or a guard was lost.
            match m["method"].as_str() {
                Some("leadership") if !closing => ws[w].ask("leader", json!({})),
                Some("lead_lost") => {
                    ws[w].held = None;
                    if !closing {
                        ws[w].ask("lead_acquire", json!({}));
                    }
                }
                _ => {}
            }
            continue;
        }
        let id = m["id"].as_u64().unwrap_or_else(|| panic!("no id: {m}"));
        let method = ws[w].asked.remove(&id).unwrap_or("?");
        let result = &m["result"];
        match method {
            "initialize" => {
                assert!(m.get("error").is_none(), "trial {n}: {m}");
                ws[w].peer = result["peer"].as_str().map(str::to_owned);
                ws[w].ask("leader", json!({}));
            }
            "leader" if m.get("error").is_none() => {
                ws[w].leadership = Some((
                    result["leader"].as_str().map(str::to_owned),
                    result["term"].as_u64(),
                ));
            }
            "lead_acquire" if m.get("error").is_none() => {
                let g = grant_of(result);
                if let Some(l) = &g.leader {
                    assert_eq!(
                        Some(l),
                        ws[w].peer.as_ref(),
                        "trial {n}: window {w} was granted a term led by another"
                    );
                }
                t.grants.push((w, g.clone()));
                ws[w].held = Some((g.term, g.leader));
                let me = ws[w].peer.clone();
                ws[w].ask(
                    "lead_put",
                    json!({"channel": "probes", "key": "who", "value": me, "term": g.term}),
                );
            }
            "lead_put" if m.get("error").is_none() => {
                t.accepted.push((w, grant_of(result).term));
                // Its write is in: see whether everyone agrees now.
                for w in &mut ws {
                    w.ask("leader", json!({}));
                }
            }
            _ => {}
        }
        if closing {
            continue;
        }
        if let Some((leader, term)) = agreed(&ws, &t) {
            // Everyone agrees: every window must read the leader's record under its term.
            for w in &mut ws {
                w.ask("leader_get", json!({"channel": "probes", "key": "who"}));
            }
            // Keep the windows running until each has read it (a window that has not received
            // the record yet reads again after its next change notification); then end them
            // (stdin EOF) and read everything they still say.
            let until = Instant::now() + WITHIN;
            let mut waiting = BTreeSet::new();
            // Windows that sent a change notification since they were last asked: their
            // answer may have been computed before the change, and sent after it.
            let mut changed = BTreeSet::new();
            // A window whose leadership moves meanwhile (a window that claimed while the
            // others were still starting is deposed; a guard is lost) voids the agreement: the
            // trial goes back to waiting for one, and the leader writes under its new term.
            let mut void = false;
            while read_back.len() < ws.len() {
                let left = until.saturating_duration_since(Instant::now());
                let Ok((w, m)) = rx.recv_timeout(left) else {
                    let states = diagnose(&mut ws, &rx);
                    panic!(
                        "trial {n}: the leader's record ({leader}, term {term}) never reached \
                         windows {waiting:?}; grants {:?}, writes {:?}; the windows say:\n{states}",
                        t.grants, t.accepted
                    )
                };
                let m = m.unwrap_or_else(|| panic!("trial {n}: window {w} ended"));
                if m.get("method").is_some() {
                    match m["method"].as_str() {
                        Some("change") => {
                            if waiting.remove(&w) {
                                ws[w].ask("leader_get", json!({"channel": "probes", "key": "who"}));
                            } else {
                                changed.insert(w);
                            }
                        }
                        Some("leadership") => {
                            // Unknown until the window answers again.
                            ws[w].leadership = None;
                            ws[w].ask("leader", json!({}));
                            void = true;
                        }
                        Some("lead_lost") => {
                            ws[w].held = None;
                            ws[w].ask("lead_acquire", json!({}));
                            void = true;
                        }
                        _ => {}
                    }
                    if void {
                        break;
                    }
                    continue;
                }
                let id = m["id"].as_u64().unwrap_or(0);
                match ws[w].asked.remove(&id) {
                    Some("leader_get") => {
                        let r = &m["result"];
                        if r["found"] != true {
                            if changed.remove(&w) {
                                ws[w].ask("leader_get", json!({"channel": "probes", "key": "who"}));
                            } else {
                                waiting.insert(w);
                            }
                            continue;
                        }
                        // It knows the leader's term: any record it shows is of that term.
                        let writer = r["term_leader"].as_str().unwrap_or(leader.as_str());
                        if r["value"] != leader.as_str() || r["term"] != term || writer != leader {
                            t.stale_reads.push(format!(
                                "trial {n}: window {w}, agreeing that {leader} leads under term \
                                 {term}, read {r}"
                            ));
                        }
                        read_back.insert(w, m);
                    }
                    // A late answer (a grant or a write): kept for the checks.
                    Some("lead_acquire") if m.get("error").is_none() => {
                        t.grants.push((w, grant_of(&m["result"])));
                    }
                    Some("lead_put") if m.get("error").is_none() => {
                        t.accepted.push((w, grant_of(&m["result"]).term));
                    }
                    _ => {}
                }
            }
            if void {
                t.voided += 1;
                read_back.clear();
                continue;
            }
            closing = true;
            for w in &mut ws {
                w.stdin = None;
            }
        }
    }
    t
}

#[test]
fn no_two_windows_ever_hold_a_guard_for_the_same_term() {
    let trials: usize = std::env::var("TERMS_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut shared = Vec::new();
    let mut stale = Vec::new();
    let mut same_number = 0;
    let mut guards = 0;
    let mut voided = 0;
    for n in 0..trials {
        let t = trial(n);
        guards += t.grants.len();
        voided += t.voided;
        stale.extend(t.stale_reads.iter().cloned());
        // Every window that held a guard, by the term it was granted.
        let mut by_term: BTreeMap<Grant, BTreeSet<usize>> = BTreeMap::new();
        let mut by_number: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
        for (w, g) in &t.grants {
            by_term.entry(g.clone()).or_default().insert(*w);
            by_number.entry(g.term).or_default().insert(*w);
        }
        if by_number.values().any(|ws| ws.len() > 1) {
            same_number += 1;
        }
        for (g, ws) in by_term {
            if ws.len() > 1 {
                let writers: BTreeSet<usize> = t
                    .accepted
                    .iter()
                    .filter(|(w, term)| *term == g.term && ws.contains(w))
                    .map(|(w, _)| *w)
                    .collect();
                shared.push(format!(
                    "trial {n}: windows {ws:?} all held a guard for term {g:?}; windows \
                     {writers:?} wrote under it"
                ));
            }
        }
    }
    eprintln!(
        "terms: {trials} trials of 3 windows started together, {guards} guards granted; \
         {same_number} trials granted one term number to two windows (distinct terms if they \
         name different leaders); {} trials granted one term to two windows; {} stale reads; \
         {voided} agreements voided by a leadership that moved while the record was read back",
        shared.len(),
        stale.len()
    );
    assert!(shared.is_empty(), "{}", shared.join("\n"));
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}
