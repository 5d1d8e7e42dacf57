//! The chaos test's vocabulary (tests/chaos.rs): its seeded source of randomness, the steps
//! of its schedule, the writes it sends and what they await, its counters, the replay hint it
//! prints on failure, what the records of every live window must hold, and the search of the
//! windows' stderr files for panics.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use serde_json::Value;

/// The schedule's source of randomness, seeded by `CHAOS_SEED`.
pub(crate) struct Rng(pub(crate) ChaCha8Rng);

impl Rng {
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }

    pub(crate) fn pick(&mut self, from: &[usize]) -> usize {
        from[self.below(from.len())]
    }
}

pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

/// What a step of the schedule does.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    /// A few writes from every live window at once.
    Burst,
    KillLeader,
    KillOther,
    Restart,
    Freeze,
}

/// What a write awaits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    Nothing,
    Durable,
    Replicated(usize),
}

/// One write sent to a window.
#[derive(Debug)]
pub(crate) struct Write {
    pub(crate) id: String,
    pub(crate) window: usize,
    pub(crate) process: u64,
    /// `chaos`: durable records, one key per write; `here`: presence-scoped, one key per write;
    /// `shared`: a few keys every window overwrites (only convergence is checked).
    pub(crate) channel: &'static str,
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) wait: Wait,
}

impl Write {
    pub(crate) fn presence(&self) -> bool {
        self.channel == "here"
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) bursts: usize,
    pub(crate) kills: usize,
    pub(crate) leader_kills: usize,
    pub(crate) restarts: usize,
    pub(crate) freezes: usize,
    pub(crate) stale_refused: usize,
    pub(crate) stale_got_out: usize,
}

/// Prints how to replay the run if the test fails.
pub(crate) struct Replay {
    pub(crate) seed: u64,
    pub(crate) steps: usize,
}

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\nchaos run failed: replay with\n  CHAOS_SEED={} CHAOS_STEPS={} cargo nextest run -p statemesh-cli --test chaos --no-capture\n",
                self.seed, self.steps
            );
        }
    }
}

/// What the records of every live window must hold.
#[derive(Default)]
pub(crate) struct Expect {
    /// (channel, key, value), and why it must be there.
    pub(crate) present: Vec<((&'static str, String, String), &'static str)>,
    /// Presence-scoped records of dead writers.
    pub(crate) absent: Vec<(&'static str, String, String)>,
    /// The windows' own presence records: exactly the live ones.
    pub(crate) windows: BTreeSet<String>,
    pub(crate) durable_checked: usize,
    pub(crate) replicated_checked: usize,
    /// Acknowledged, but every window known to have held them (its writer, and those that
    /// printed a `change` line for them) was killed, and the writer's window did not restart
    /// from a disk known to have them: they may be gone, and are not checked (their count,
    /// and how many are there anyway, is printed).
    pub(crate) unheld: Vec<((&'static str, String, String), String)>,
}

impl Expect {
    pub(crate) fn problems(&self, records: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for ((channel, key, value), why) in &self.present {
            if records[channel][key] != value.as_str() {
                out.push(format!(
                    "{channel}/{key} = {} instead of {value:?} ({why})",
                    records[channel][key]
                ));
            }
        }
        for (channel, key, value) in &self.absent {
            if !records[channel][key].is_null() {
                out.push(format!(
                    "{channel}/{key} = {value:?} is shown, but its writer is dead"
                ));
            }
        }
        let windows: BTreeSet<String> = records["windows"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        if windows != self.windows {
            out.push(format!(
                "windows present: {windows:?}, live: {:?}",
                self.windows
            ));
        }
        out
    }
}

/// Every stderr file that mentions a panic, with its text.
pub(crate) fn panics(logs: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(logs)
        .expect("reads the log directory")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("reads a log");
        if text.contains("panicked") {
            out.push(format!("{}:\n{text}", path.display()));
        }
    }
    out
}
