//! `overload`: every window writes as fast as the API returns for 30 s (`--quick`: 5 s), one
//! key per write by default, then the mesh converges. What a writer faster than the mesh costs:
//! writes/s, convergence time, liveness under load (refutations, false suspicions, leadership
//! changes, tick lateness) and memory (peak RSS and anonymous memory per window, sampled every
//! second).

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::json;

use super::{Opts, Out};
use crate::fleet::{Fleet, peak_rss_kb, rss_kinds_kb};
use crate::stats::round3;

/// Memory of every window: the largest `VmHWM` and `RssAnon` seen so far, per slot.
#[derive(Default)]
struct Memory {
    hwm: Vec<u64>,
    anon: Vec<u64>,
}

impl Memory {
    fn sample(&mut self, f: &Fleet, slots: &[usize]) {
        self.hwm.resize(slots.len(), 0);
        self.anon.resize(slots.len(), 0);
        for (i, s) in slots.iter().enumerate() {
            let Ok(pid) = f.pid(*s) else { continue };
            if let Ok(h) = peak_rss_kb(pid) {
                self.hwm[i] = self.hwm[i].max(h);
            }
            if let Ok((anon, _, _)) = rss_kinds_kb(pid) {
                self.anon[i] = self.anon[i].max(anon);
            }
        }
    }
}

/// Waits for a line matching `want`, sampling memory every second meanwhile.
fn wait_sampling(
    f: &mut Fleet,
    mem: &mut Memory,
    slots: &[usize],
    what: &str,
    within: Duration,
    want: impl Fn(&crate::fleet::Line) -> bool,
) -> anyhow::Result<crate::fleet::Line> {
    let deadline = Instant::now() + within;
    loop {
        mem.sample(f, slots);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!("timed out waiting for {what}");
        }
        f.within = left.min(Duration::from_secs(1));
        match f.wait_line(what, &want) {
            Ok(line) => return Ok(line),
            Err(e) if e.to_string().starts_with("timed out") => {}
            Err(e) => return Err(e),
        }
    }
}

/// The `overload` scenario.
pub(crate) fn run(opts: &Opts, out: &mut Out) -> anyhow::Result<()> {
    let n = opts.peers;
    let mut f = Fleet::new(opts.net, n)?;
    eprintln!("starting {n} windows ({})", opts.net.name());
    f.start(n).context("starting the windows")?;
    let slots = f.slots();
    for s in &slots {
        f.send(*s, &json!({"op": "watch", "prefix": "tp"}))?;
    }
    let mut mem = Memory::default();
    mem.sample(&f, &slots);
    let ms: u64 = if opts.quick { 5_000 } else { 30_000 };
    eprintln!(
        "every window writes as fast as it can for {ms} ms, {} key(s) per write",
        opts.batch
    );
    for (i, s) in slots.iter().enumerate() {
        f.send(
            *s,
            &json!({"op": "burst", "ms": ms, "batch": opts.batch, "prefix": format!("w{i}")}),
        )?;
    }
    let (mut written, mut changes, mut t_start, mut t_written) = (0u64, 0u64, u64::MAX, 0u64);
    let mut refused = 0u64;
    for s in &slots {
        let done = wait_sampling(
            &mut f,
            &mut mem,
            &slots,
            "the writers to finish",
            Duration::from_millis(ms) + Duration::from_secs(60),
            |l| l.slot == *s && (l.json["ev"] == "burst_done" || l.json["op"] == "burst"),
        )
        .map_err(|e| {
            // What the window still writing says of itself: its backlog, its links.
            f.within = Duration::from_secs(5);
            let info = f.ask(*s, &json!({"op": "info"}), "info");
            match info {
                Ok(info) => anyhow!("window {s}: {e}; it says {info}"),
                Err(_) => e,
            }
        })?;
        if done.json["ev"] == "error" {
            return Err(anyhow!("window {s}: {}", done.json["error"]));
        }
        let num = |k: &str| {
            done.json[k]
                .as_u64()
                .ok_or_else(|| anyhow!("bad burst_done"))
        };
        written += num("written")?;
        changes += num("changes")?;
        refused += done.json["refused"].as_u64().unwrap_or(0);
        t_start = t_start.min(num("t0")?);
        t_written = t_written.max(num("t1")?);
    }
    eprintln!("{written} keys written in {changes} writes; waiting for every window to hold them");
    for s in &slots {
        f.send(*s, &json!({"op": "expect", "count": written}))?;
    }
    let converge_within = Duration::from_secs(if opts.quick { 60 } else { 300 });
    let deadline = Instant::now() + converge_within;
    let mut t_end = 0u64;
    let mut converged = true;
    for s in &slots {
        let left = deadline.saturating_duration_since(Instant::now());
        match wait_sampling(
            &mut f,
            &mut mem,
            &slots,
            "every window to hold every key",
            left,
            |l| l.slot == *s && l.json["ev"] == "reached",
        ) {
            Ok(line) => t_end = t_end.max(line.json["t"].as_u64().unwrap_or(0)),
            Err(e) => {
                eprintln!("  not converged: {e}");
                converged = false;
                break;
            }
        }
    }
    f.within = Duration::from_secs(30);
    mem.sample(&f, &slots);
    let mut least = written;
    if !converged {
        for s in &slots {
            let c = f.ask(*s, &json!({"op": "count"}), "count")?;
            least = least.min(c["count"].as_u64().unwrap_or(0));
        }
        t_end = crate::clock::now_ns();
    }
    let load = super::load_report(&mut f, &slots)?;
    out.extend(load);
    let write_secs = t_written.saturating_sub(t_start) as f64 / 1e9;
    let converge_secs = t_end.saturating_sub(t_written) as f64 / 1e9;
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    out.insert("join_failures".into(), json!(f.join_failures));
    out.insert("batch".into(), json!(opts.batch));
    out.insert("written".into(), json!(written));
    out.insert("writes".into(), json!(changes));
    // Writes refused for backpressure (each writer then waited for its backlog to clear).
    out.insert("writes_refused".into(), json!(refused));
    out.insert("write_s".into(), json!(round3(write_secs)));
    out.insert(
        "writes_per_s".into(),
        json!(round3(changes as f64 / write_secs)),
    );
    out.insert(
        "written_per_s".into(),
        json!(round3(written as f64 / write_secs)),
    );
    out.insert("converged".into(), json!(converged));
    out.insert("held_everywhere".into(), json!(least));
    out.insert(
        "converge_after_writes_s".into(),
        json!(round3(converge_secs)),
    );
    out.insert(
        "rss_kb_peak".into(),
        json!(mem.hwm.iter().max().copied().unwrap_or(0)),
    );
    out.insert("rss_kb_peak_mean".into(), json!(round3(mean(&mem.hwm))));
    out.insert(
        "rss_anon_kb_peak".into(),
        json!(mem.anon.iter().max().copied().unwrap_or(0)),
    );
    out.insert(
        "rss_anon_kb_peak_mean".into(),
        json!(round3(mean(&mem.anon))),
    );
    Ok(())
}
