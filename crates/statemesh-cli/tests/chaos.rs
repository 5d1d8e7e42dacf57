//! Chaos with real window processes: eight `statemesh node` processes on one machine (local
//! mode; a temporary runtime directory and secret file, one state directory per window) under
//! a seeded schedule of faults — SIGKILL of the leader or of another window, restarts of killed
//! windows (a new process on the same directories), the leader frozen with SIGSTOP for 1.1-3 s
//! (past the 1 s suspect timeout: the others close its links, which carried its views sealed)
//! and then woken with SIGCONT — and bursts of concurrent writes from every live window
//! (awaiting durability, replication by K peers, or nothing; some presence-scoped). Every write
//! and acknowledgement is tracked from the windows' JSON lines. Once the schedule is over and
//! things settle:
//!
//! 1. every write acknowledged as replicated is in every live window (unless every window known
//!    to have held it was killed);
//! 2. every write acknowledged as durable is too, unless its writer was killed and its window
//!    never restarted (and nobody else known to hold it lives); presence-scoped records are in
//!    every window while their writer lives, and in none once it is dead;
//! 3. exactly one leader, the lowest live id, under one term, agreed by all;
//! 4. the documents of all live windows are equal, and every acknowledgement a live writer
//!    awaits arrives;
//! 5. no window panicked (each one's stderr goes to a file that is searched), and every window
//!    stopped with SIGTERM at the end exits 0;
//! 6. a frozen leader's leader write, made when it wakes through the guard it held, is refused
//!    (or, had it got out, no window ever shows it), and once the woken window leads again
//!    under a newer term, no window shows a record of an older term; a leader's record reaches
//!    every window under its term.
//!
//! The machine is shared: a window starved of CPU past the suspect timeout is judged dead and
//! refutes, and leadership moves. Leadership checks therefore wait for agreement again when a
//! leadership line shows such a move, and fail when a check fails with no move at all, or when
//! leadership never settles.
//!
//! `CHAOS_SEED` picks the schedule (printed on failure, to replay it), `CHAOS_STEPS` its
//! length; `PROC_DEBUG=1` prints every line the windows print; `CHAOS_KEEP=1` keeps the
//! temporary directory (the windows' logs, with `RUST_LOG` applied, and state files).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};
use support::chaos::{Counts, Expect, Replay, Rng, Step, Wait, Write, env_or, panics};
use support::{Windows, statemesh};

/// Window numbers (one state directory each, reused by restarts).
const WINDOWS: usize = 8;
/// Kills stop at this many live windows.
const MIN_LIVE: usize = 3;
const DEFAULT_SEED: u64 = 20_251_121;
const DEFAULT_STEPS: usize = 40;
/// The windows' suspect timeout (the default); a frozen leader is held longer than this.
const SUSPECT: Duration = Duration::from_secs(1);
/// Rounds of waiting for leadership to settle before a check gives up (see `agreed_term`).
const ATTEMPTS: usize = 20;
/// Where leader records go.
const PROBE: (&str, &str) = ("probe", "result");

struct Chaos {
    w: Windows,
    dir: PathBuf,
    rng: Rng,
    started: Instant,
    writes: Vec<Write>,
    next_id: u64,
    started_processes: usize,
    counts: Counts,
}

impl Chaos {
    fn say(&self, what: impl std::fmt::Display) {
        eprintln!("[{:>6.2} s] {what}", self.started.elapsed().as_secs_f64());
    }

    fn node(&self, n: usize) -> Command {
        let mut cmd = statemesh();
        cmd.args(["node", "--mesh", "chaos", "--announce"])
            .arg("--runtime-dir")
            .arg(self.dir.join("run"))
            .arg("--state-dir")
            .arg(self.dir.join(format!("state-{n}")))
            .arg("--secret-file")
            .arg(self.dir.join("secret"));
        cmd
    }

    /// Starts (or restarts) window `n`, its stderr going to a file of its own.
    fn spawn(&mut self, n: usize) {
        self.started_processes += 1;
        let path = self
            .dir
            .join("logs")
            .join(format!("{:02}-window-{n}.stderr", self.started_processes));
        let file = std::fs::File::create(&path).expect("creates a log file");
        let cmd = self.node(n);
        self.w.spawn_logged(n, cmd, file);
    }

    fn live(&self) -> Vec<usize> {
        (0..WINDOWS).filter(|n| self.w.running(*n)).collect()
    }

    fn lowest(&self, among: &[usize]) -> usize {
        *among
            .iter()
            .min_by_key(|n| self.w.id(**n))
            .expect("some window")
    }

    fn next_id(&mut self) -> String {
        self.next_id += 1;
        format!("c{}", self.next_id)
    }

    /// Sends `cmd` to window `n` and waits for its answer, a line `event` echoing its id.
    fn ask(&mut self, n: usize, mut cmd: Value, event: &str) -> Value {
        let id = self.next_id();
        cmd["id"] = json!(id);
        let from = self.w.log().len();
        self.w.send(n, cmd);
        let i = self
            .w
            .until_logged(&format!("window {n}'s {event} answer"), from, |l| {
                l.from == n && l.json["event"] == event && l.json["id"] == id.as_str()
            });
        self.w.log()[i].json.clone()
    }

    fn lead_put(&mut self, n: usize, value: &str) -> Value {
        let (channel, key) = PROBE;
        self.ask(
            n,
            json!({"op": "lead_put", "channel": channel, "key": key, "value": value}),
            "lead_put",
        )
    }

    fn leader_get(&mut self, n: usize) -> (Value, Value) {
        let (channel, key) = PROBE;
        let answer = self.ask(
            n,
            json!({"op": "leader_get", "channel": channel, "key": key}),
            "leader_get",
        );
        (answer["value"].clone(), answer["term"].clone())
    }

    /// Waits until every window of `live` sees the lowest of them lead under a term; returns it.
    fn settled_leader(&mut self, live: &[usize]) -> usize {
        let lowest = self.lowest(live);
        let id = self.w.id(lowest);
        self.w.until_all_see(live, &id);
        lowest
    }

    /// Every window of `writers` is sent a few writes at once; returns once each applied them.
    fn burst(&mut self, writers: &[usize]) {
        self.counts.bursts += 1;
        let others = writers.len().saturating_sub(1);
        let from = self.w.log().len();
        let mut sent = Vec::new();
        for &n in writers {
            for _ in 0..1 + self.rng.below(3) {
                let id = self.next_id();
                let mut wait = match self.rng.below(10) {
                    0..=3 => Wait::Durable,
                    4..=7 if others > 0 => Wait::Replicated(1 + self.rng.below(others.min(3))),
                    _ => Wait::Nothing,
                };
                let (channel, key) = match self.rng.below(100) {
                    0..=69 => ("chaos", id.clone()),
                    70..=84 => ("here", id.clone()),
                    r => {
                        wait = Wait::Nothing;
                        ("shared", format!("s{}", r % 3))
                    }
                };
                let value = format!("{id}-from-{n}");
                let mut cmd = json!({
                    "op": "put", "channel": channel, "key": key, "value": value, "id": id,
                    "presence": channel == "here",
                });
                match wait {
                    Wait::Nothing => {}
                    Wait::Durable => cmd["await"] = json!("durable"),
                    Wait::Replicated(k) => cmd["await"] = json!({"replicated": k}),
                }
                self.w.send(n, cmd);
                sent.push((n, id.clone()));
                self.writes.push(Write {
                    id,
                    window: n,
                    process: self.w.process(n),
                    channel,
                    key,
                    value,
                    wait,
                });
            }
        }
        for (n, id) in sent {
            self.w
                .until_logged(&format!("window {n} to apply write {id}"), from, |l| {
                    l.from == n && l.json["event"] == "written" && l.json["id"] == id.as_str()
                });
        }
    }

    /// What the next step may be, with weights: no kill below `MIN_LIVE` live windows, no
    /// restart while all run.
    fn possible(&self) -> Vec<(Step, usize)> {
        let live = self.live().len();
        let mut out = vec![(Step::Burst, 40), (Step::Freeze, 10)];
        if live > MIN_LIVE {
            out.extend([(Step::KillLeader, 10), (Step::KillOther, 15)]);
        }
        if live < WINDOWS {
            out.push((Step::Restart, 20));
        }
        out
    }

    /// SIGKILLs the leader (the lowest live id) or another window.
    fn kill(&mut self, leader: bool) {
        let live = self.live();
        let n = if leader {
            self.lowest(&live)
        } else {
            self.rng.pick(&live)
        };
        let is_leader = n == self.lowest(&live);
        self.say(format_args!(
            "SIGKILL window {n}{}",
            if is_leader { " (the leader)" } else { "" }
        ));
        self.w.kill_drained(n);
        self.counts.kills += 1;
        self.counts.leader_kills += usize::from(is_leader);
    }

    /// Restarts a killed window: a new process (new peer id) on the same directories.
    fn restart(&mut self) {
        let dead: Vec<usize> = (0..WINDOWS).filter(|n| !self.w.running(*n)).collect();
        let n = self.rng.pick(&dead);
        self.say(format_args!("restart window {n}"));
        self.spawn(n);
        self.counts.restarts += 1;
    }

    /// Freezes the leader (SIGSTOP) past the suspect timeout while the others elect the next
    /// one, write, and lead; has it attempt a leader write through its old guard; wakes it
    /// (SIGCONT); checks the fencing; and waits until it leads again (it is still the lowest
    /// id) under a newer term.
    fn freeze(&mut self) {
        self.counts.freezes += 1;
        let f = self.counts.freezes;
        let live = self.live();
        let (leader, old_term) = self.lead_write(&live, &format!("before-{f}"), false);

        // Longer than the suspect timeout: judged dead, its links (their views sealed) are
        // closed by the others, so that the woken window must also reconnect.
        let hold = SUSPECT + Duration::from_millis(100 + self.rng.below(1900) as u64);
        self.say(format_args!(
            "SIGSTOP window {leader} (the leader, term {old_term}) for {} ms",
            hold.as_millis()
        ));
        let stopped = Instant::now();
        self.w.stop(leader);
        let others: Vec<usize> = live.iter().copied().filter(|n| *n != leader).collect();
        let next = self.settled_leader(&others);
        self.say(format_args!(
            "window {next} leads after {} ms",
            stopped.elapsed().as_millis()
        ));
        self.burst(&others);
        let (next, mid_term) = self.lead_write(&others, &format!("next-{f}"), false);
        assert!(mid_term > old_term, "a new leadership has a newer term");

        // The frozen leader is asked for a leader write; the line waits in its stdin until it
        // wakes, and then goes through the guard it held (of the old term).
        let stale_value = format!("stale-{f}");
        let stale_id = self.next_id();
        let (channel, key) = PROBE;
        let from = self.w.log().len();
        self.w.send(
            leader,
            json!({"op": "lead_put", "channel": channel, "key": key, "value": stale_value,
                   "id": stale_id}),
        );
        // The fault itself: the window stays frozen for `hold` in all.
        std::thread::sleep(hold.saturating_sub(stopped.elapsed()));
        let held = stopped.elapsed();
        self.w.resume(leader);
        let i = self.w.until_logged("the woken leader's answer", from, |l| {
            l.from == leader && l.json["id"] == stale_id.as_str()
        });
        let stale = self.w.log()[i].json.clone();
        self.say(format_args!(
            "SIGCONT window {leader} after {} ms; its write under term {old_term}: {stale}",
            held.as_millis()
        ));
        assert_eq!(stale["event"], "lead_put", "{stale}");
        if stale["ok"] == true {
            self.counts.stale_got_out += 1;
        } else {
            self.counts.stale_refused += 1;
        }

        // No window shows the stale write; the others show the next leader's record or none
        // (none once the woken window leads again: that record is of an older term then).
        for &n in &live {
            let (value, term) = self.leader_get(n);
            assert_ne!(
                value, stale_value,
                "window {n} shows a write of a leader that was frozen (term {term})"
            );
            if n != leader {
                assert!(
                    value.is_null() || (value == format!("next-{f}") && term == mid_term),
                    "window {n} shows {value} (term {term}) while window {next}'s term \
                     {mid_term} or a newer one holds"
                );
            }
        }

        // Woken, it is still the lowest id: it leads again, under a newer term, and no window
        // shows a leader record of an older term (its own before the freeze, its successor's).
        let term = self.agreed_term(&live, mid_term);
        assert_eq!(self.lowest(&live), leader);
        for &n in &live {
            let (value, found) = self.leader_get(n);
            assert!(
                value.is_null() || found.as_u64() >= Some(term),
                "window {n} shows leader record {value} of term {found} under term {term}"
            );
        }
        self.lead_write(&live, &format!("after-{f}"), true);
    }

    /// Whether some window printed a leadership line since log index `from`.
    fn leadership_moved(&self, from: usize) -> bool {
        self.w.log()[from..]
            .iter()
            .any(|l| l.json["event"] == "leadership")
    }

    /// Waits until every window of `live` names the lowest of them as leader, under one term
    /// newer than `after`, in its leadership lines and in its state answer; returns the term.
    ///
    /// Leadership may still move meanwhile, legitimately: a window starved of CPU for longer
    /// than the suspect timeout (the machine is shared) is judged dead and refutes, and a
    /// woken window that claimed before it heard its successor's term moves to a newer one.
    /// Every such move is printed as a leadership line; after an answer that does not agree,
    /// the next one is awaited before asking again. What never settles fails.
    fn agreed_term(&mut self, live: &[usize], after: u64) -> u64 {
        let leader = self.lowest(live);
        let id = self.w.id(leader);
        for _ in 0..ATTEMPTS {
            self.w.until_all_see(live, &id);
            let from = self.w.log().len();
            let answers: BTreeMap<usize, Value> =
                live.iter().map(|n| (*n, self.w.state_answer(*n))).collect();
            let terms: BTreeSet<Option<u64>> =
                answers.values().map(|a| a["term"].as_u64()).collect();
            let agreed = answers.values().all(|a| a["leader"] == id.as_str())
                && terms.len() == 1
                && terms.iter().all(|t| t.is_some_and(|t| t > after));
            if agreed {
                return terms.into_iter().flatten().next().expect("one term");
            }
            let summary: Vec<String> = answers
                .iter()
                .map(|(n, a)| format!("{n}: {} term {}", a["leader"], a["term"]))
                .collect();
            self.say(format_args!(
                "no agreement on window {leader} under a term newer than {after} yet: {}",
                summary.join(", ")
            ));
            self.w.until_logged(
                &format!("leadership to move (windows said {summary:?})"),
                from,
                |l| l.json["event"] == "leadership" && live.contains(&l.from),
            );
        }
        panic!("leadership never settled on window {leader} in {ATTEMPTS} rounds");
    }

    /// The leader of `live` (the lowest of them) writes leader record `value`; returns it and
    /// the term. With `everywhere`, also waits until every window of `live` got the record and
    /// checks that each one reads it under that term. Should leadership move meanwhile (see
    /// [`agreed_term`](Self::agreed_term)), the write is made again.
    fn lead_write(&mut self, live: &[usize], value: &str, everywhere: bool) -> (usize, u64) {
        let leader = self.lowest(live);
        let id = self.w.id(leader);
        let (channel, key) = PROBE;
        for _ in 0..ATTEMPTS {
            self.agreed_term(live, 0);
            let from = self.w.log().len();
            let put = self.lead_put(leader, value);
            if put["ok"] != true {
                assert!(
                    self.leadership_moved(from),
                    "the leader's write was refused, with no change of leadership: {put}"
                );
                continue;
            }
            let term = put["term"].as_u64().expect("a term");
            if !everywhere {
                return (leader, term);
            }
            for &n in live.iter().filter(|n| **n != leader) {
                self.w
                    .until_logged(&format!("window {n} to get the leader record"), from, |l| {
                        (l.from == n
                            && l.json["event"] == "change"
                            && l.json["kind"] == "leader"
                            && l.json["channel"] == channel
                            && l.json["key"] == key
                            && l.json["by"] == id.as_str())
                            || l.json["event"] == "leadership"
                    });
            }
            let reads: Vec<(usize, Value, Value)> = live
                .iter()
                .map(|n| {
                    let (got, found) = self.leader_get(*n);
                    (*n, got, found)
                })
                .collect();
            let wrong: Vec<String> = reads
                .iter()
                .filter(|(_, got, found)| !(*got == value && *found == term))
                .map(|(n, got, found)| format!("window {n} reads {got} (term {found})"))
                .collect();
            if wrong.is_empty() {
                return (leader, term);
            }
            assert!(
                self.leadership_moved(from),
                "window {leader} wrote {value} under term {term}, with no change of \
                 leadership since, yet {}",
                wrong.join(", ")
            );
        }
        panic!("leadership kept moving: window {leader} never got its record to everyone");
    }

    /// What the records must hold now, from everything the windows printed.
    fn expectations(&self) -> Expect {
        let alive: BTreeSet<(usize, u64)> = self
            .live()
            .into_iter()
            .map(|n| (n, self.w.process(n)))
            .collect();
        let mut written = BTreeSet::new();
        let mut acked: BTreeMap<String, bool> = BTreeMap::new();
        let mut holders: BTreeMap<(String, String), BTreeSet<(usize, u64)>> = BTreeMap::new();
        for l in self.w.log() {
            let text = |f: &str| l.json[f].as_str().unwrap_or_default().to_owned();
            match l.json["event"].as_str() {
                Some("written") => {
                    written.insert(text("id"));
                }
                Some("acked") => {
                    acked.insert(text("id"), l.json["ok"] == true);
                }
                Some("change") => {
                    holders
                        .entry((text("channel"), text("key")))
                        .or_default()
                        .insert((l.from, l.process));
                }
                _ => {}
            }
        }
        let mut expect = Expect {
            windows: self.live().into_iter().map(|n| self.w.id(n)).collect(),
            ..Expect::default()
        };
        for w in self.writes.iter().filter(|w| w.channel != "shared") {
            assert!(written.contains(&w.id), "write {} was applied", w.id);
            let ok = acked.get(&w.id) == Some(&true);
            let writer_lives = alive.contains(&(w.window, w.process));
            if w.presence() {
                let at = (w.channel, w.key.clone(), w.value.clone());
                if writer_lives {
                    expect.present.push((at, "its writer lives"));
                } else {
                    expect.absent.push(at);
                }
                continue;
            }
            let holder_lives = holders
                .get(&(w.channel.to_owned(), w.key.clone()))
                .is_some_and(|h| h.iter().any(|p| alive.contains(p)));
            let why = if writer_lives {
                Some("its writer lives")
            } else if ok && w.wait == Wait::Durable && self.w.running(w.window) {
                Some("acknowledged durable, and its window restarted from its disk")
            } else if holder_lives {
                Some("a window that held it lives")
            } else {
                None
            };
            match (why, ok, w.wait) {
                (Some(why), ..) => {
                    expect
                        .present
                        .push(((w.channel, w.key.clone(), w.value.clone()), why));
                    if ok && w.wait == Wait::Durable {
                        expect.durable_checked += 1;
                    }
                    if ok && matches!(w.wait, Wait::Replicated(_)) {
                        expect.replicated_checked += 1;
                    }
                }
                (None, true, Wait::Durable | Wait::Replicated(_)) => {
                    let held: Vec<(usize, u64)> = holders
                        .get(&(w.channel.to_owned(), w.key.clone()))
                        .map(|h| h.iter().copied().collect())
                        .unwrap_or_default();
                    expect.unheld.push((
                        (w.channel, w.key.clone(), w.value.clone()),
                        format!(
                            "{} by window {} (process {}, {:?}), held by (window, process) {held:?}",
                            w.id, w.window, w.process, w.wait
                        ),
                    ));
                }
                (None, ..) => {}
            }
        }
        expect
    }

    /// Every write by a window that lives now, awaiting something it can still get, was
    /// acknowledged; returns how many.
    fn check_acks(&mut self, live: &[usize]) -> usize {
        let alive: BTreeSet<(usize, u64)> = live.iter().map(|n| (*n, self.w.process(*n))).collect();
        let waiting: Vec<(usize, String, Wait)> = self
            .writes
            .iter()
            .filter(|w| alive.contains(&(w.window, w.process)))
            .filter(|w| match w.wait {
                Wait::Nothing => false,
                Wait::Durable => true,
                Wait::Replicated(k) => k < live.len(),
            })
            .map(|w| (w.window, w.id.clone(), w.wait))
            .collect();
        for (n, id, wait) in &waiting {
            let what = format!(
                "the acknowledgement of write {id} by window {n} ({wait:?}; {} live)",
                live.len()
            );
            let i = self.w.until_logged(&what, 0, |l| {
                l.from == *n && l.json["event"] == "acked" && l.json["id"] == id.as_str()
            });
            let ack = &self.w.log()[i].json;
            assert_eq!(
                ack["ok"], true,
                "window {n} failed an acknowledgement: {ack}"
            );
        }
        waiting.len()
    }
}

#[test]
fn chaos_with_window_processes() {
    let seed = env_or("CHAOS_SEED", DEFAULT_SEED);
    let steps = env_or("CHAOS_STEPS", DEFAULT_STEPS);
    let _replay = Replay { seed, steps };
    eprintln!("chaos: CHAOS_SEED={seed} CHAOS_STEPS={steps}, {WINDOWS} windows");
    let mut dir = tempfile::tempdir().expect("tempdir");
    if std::env::var_os("CHAOS_KEEP").is_some() {
        // For a post-mortem: the windows' logs (RUST_LOG applies) and state files stay.
        eprintln!("chaos: keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    std::fs::create_dir(dir.path().join("logs")).expect("creates the log directory");
    let mut c = Chaos {
        w: Windows::new(),
        dir: dir.path().to_owned(),
        rng: Rng(ChaCha8Rng::seed_from_u64(seed)),
        started: Instant::now(),
        writes: Vec::new(),
        next_id: 0,
        started_processes: 0,
        counts: Counts::default(),
    };
    for n in 0..WINDOWS {
        c.spawn(n);
    }
    let all: Vec<usize> = (0..WINDOWS).collect();
    c.settled_leader(&all);
    c.say("all windows see the same leader");

    for step in 0..steps {
        let choices = c.possible();
        let mut roll = c.rng.below(choices.iter().map(|(_, w)| w).sum());
        let (kind, _) = *choices
            .iter()
            .find(|(_, w)| {
                let here = roll < *w;
                roll = roll.saturating_sub(*w);
                here
            })
            .expect("a choice");
        c.say(format_args!("step {step}: {kind:?}"));
        match kind {
            Step::Burst => {
                let live = c.live();
                c.burst(&live);
            }
            Step::KillLeader => c.kill(true),
            Step::KillOther => c.kill(false),
            Step::Restart => c.restart(),
            Step::Freeze => c.freeze(),
        }
    }
    // Every run freezes a leader and kills one.
    if c.counts.freezes == 0 {
        c.freeze();
    }
    if c.counts.leader_kills == 0 {
        if c.live().len() <= MIN_LIVE {
            c.restart();
        }
        c.kill(true);
    }
    let live = c.live();
    c.burst(&live);
    c.say(format_args!(
        "schedule done; settling with windows {live:?} live"
    ));

    // 3. One leader, the lowest live id, under one term, agreed by all.
    let term = c.agreed_term(&live, 0);
    c.say(format_args!(
        "window {} leads under term {term}, for all",
        c.lowest(&live)
    ));

    // 4, 1, 2. Equal documents, holding every write they must (and no presence record of a
    // dead writer).
    let expect = c.expectations();
    let records =
        c.w.until_converged(&live, |r| expect.problems(r).is_empty());
    let expect = c.expectations();
    let problems = expect.problems(&records);
    assert!(
        problems.is_empty(),
        "the converged records are wrong:\n{}",
        problems.join("\n")
    );
    let acked = c.check_acks(&live);
    c.say("documents converged");

    // 6 (again, calm). The leader's record reaches everyone under its term.
    c.lead_write(&live, "final", true);
    // 5. A graceful leave exits 0; nobody panicked.
    for n in live.iter().copied() {
        let (_, status) = c.w.terminate(n);
        assert!(status.success(), "window {n} exited with {status}");
    }
    let panicked = panics(&dir.path().join("logs"));
    assert!(
        panicked.is_empty(),
        "windows panicked:\n{}",
        panicked.join("\n")
    );

    let Counts {
        bursts,
        kills,
        leader_kills,
        restarts,
        freezes,
        stale_refused,
        stale_got_out,
    } = c.counts;
    c.say(format_args!(
        "seed {seed}: {steps} steps, {} processes, {} writes in {bursts} bursts, \
         {kills} SIGKILLs ({leader_kills} of the leader), {restarts} restarts, {freezes} frozen \
         leaders (stale leader write refused {stale_refused}, got out {stale_got_out}); \
         checked {} records present, {} absent, {} durable and {} replicated acknowledgements; \
         {} acknowledged writes outlived every window known to hold them ({} of them there \
         anyway); {acked} acknowledgements awaited{}",
        c.started_processes,
        c.writes.len(),
        expect.present.len(),
        expect.absent.len(),
        expect.durable_checked,
        expect.replicated_checked,
        expect.unheld.len(),
        expect
            .unheld
            .iter()
            .filter(|((channel, key, value), _)| records[channel][key] == value.as_str())
            .count(),
        expect
            .unheld
            .iter()
            .filter(|((channel, key, value), _)| records[channel][key] != value.as_str())
            .map(|(_, about)| format!("\n  gone: {about}"))
            .collect::<String>(),
    ));
}
