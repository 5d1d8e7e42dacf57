//! `propagation`: one window writes a record; how long until every other window's change
//! subscription sees it.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::json;

use super::{Opts, Out};
use crate::fleet::Fleet;
use crate::stats::{Summary, round3, summarize};

/// What a propagation run measured, in microseconds.
pub(crate) struct Propagation {
    /// Per write: until the last of the other windows saw it.
    pub(crate) to_all: Summary,
    /// Per write and receiving window.
    pub(crate) one_way: Summary,
    /// Median of `to_all` over the first and the last tenth of the writes (history grows by
    /// one change per write).
    pub(crate) first_tenth_p50: f64,
    /// See `first_tenth_p50`.
    pub(crate) last_tenth_p50: f64,
}

/// Writes `samples` records, one every `every`, from each window in turn; each write carries
/// its writer's `CLOCK_MONOTONIC` reading, and each receiver reports its own reading minus
/// that one when its change subscription delivers the record.
pub(crate) fn measure(
    f: &mut Fleet,
    samples: usize,
    every: Duration,
) -> anyhow::Result<Propagation> {
    let slots = f.slots();
    let receivers = slots.len() - 1;
    let mut to_all = Vec::with_capacity(samples);
    let mut one_way = Vec::with_capacity(samples * receivers);
    let start = Instant::now();
    for i in 0..samples {
        // Pace the writes (a window writing at UI rates), so that each one is measured on its
        // own rather than behind the previous one's sync round.
        if let Some(wait) = (start + every * i as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let writer = slots[i % slots.len()];
        let key = format!("s{i}");
        f.send(writer, &json!({"op": "stamp", "key": key}))?;
        let mut worst = 0.0f64;
        for _ in 0..receivers {
            let line = f.wait_line("a write to propagate", |l| {
                l.json["ev"] == "seen" && l.json["key"] == key.as_str()
            })?;
            let us = line.json["delay_ns"]
                .as_f64()
                .ok_or_else(|| anyhow!("`seen` without a delay"))?
                / 1e3;
            one_way.push(us);
            worst = worst.max(us);
        }
        to_all.push(worst);
        if (i + 1) % (samples / 4).max(1) == 0 {
            eprintln!("  {}/{samples} writes", i + 1);
        }
    }
    let tenth = (samples / 10).max(1);
    Ok(Propagation {
        to_all: summarize(&to_all),
        one_way: summarize(&one_way),
        first_tenth_p50: summarize(&to_all[..tenth.min(to_all.len())]).p50,
        last_tenth_p50: summarize(&to_all[to_all.len().saturating_sub(tenth)..]).p50,
    })
}

/// The `propagation` scenario.
pub(crate) fn run(opts: &Opts, out: &mut Out) -> anyhow::Result<()> {
    let n = opts.peers;
    anyhow::ensure!(n >= 2, "propagation needs at least 2 peers");
    let mut f = Fleet::new(opts.net, n)?;
    eprintln!("starting {n} windows ({})", opts.net.name());
    f.start(n).context("starting the windows")?;
    let samples = if opts.quick { 100 } else { 1000 };
    eprintln!("{samples} writes, one every 5 ms, from each window in turn");
    let p = measure(&mut f, samples, Duration::from_millis(5))?;
    report(&p, out);
    out.insert("join_failures".into(), json!(f.join_failures));
    Ok(())
}

/// The `transport-floor` scenario: `propagation` (up to 8 windows) or `scale`'s propagation
/// (more), paced and counted as they are, over windows that only link (see
/// [`crate::floor_window`]).
pub(crate) fn run_floor(opts: &Opts, out: &mut Out) -> anyhow::Result<()> {
    let n = opts.peers;
    anyhow::ensure!(n >= 2, "transport-floor needs at least 2 peers");
    let mut f = Fleet::new(opts.net, n)?;
    f.within = Duration::from_secs(120);
    eprintln!("starting {n} floor windows, linked one by one");
    // The first window creates the secret file; the others read it.
    let floor: &[&str] = if opts.views {
        &["--transport-floor", "--floor-views"]
    } else {
        &["--transport-floor"]
    };
    let first = f.spawn_with(0, floor)?;
    f.wait_joined(&[first])?;
    let mut slots = vec![first];
    for _ in 1..n {
        slots.push(f.spawn_with(0, floor)?);
    }
    f.wait_joined(&slots)?;
    let mut addrs = Vec::with_capacity(n);
    for s in &slots {
        addrs.push(f.ask(*s, &json!({"op": "addr"}), "addr")?["addr"].clone());
    }
    for (i, s) in slots.iter().enumerate().skip(1) {
        f.send(*s, &json!({"op": "dial", "addrs": addrs[..i]}))?;
        f.wait_links(&[*s], i)?;
    }
    f.wait_links(&slots, n - 1)?;
    let (samples, every) = match (n > 8, opts.quick) {
        (false, false) => (1000, 5),
        (false, true) => (100, 5),
        (true, false) => (100, 100),
        (true, true) => (20, 100),
    };
    eprintln!("{samples} writes, one every {every} ms, from each window in turn");
    let p = measure(&mut f, samples, Duration::from_millis(every))?;
    report(&p, out);
    out.insert("views".into(), json!(opts.views));
    if opts.views {
        let mut unsent = 0;
        for s in &slots {
            unsent += f.ask(*s, &json!({"op": "views"}), "views")?["unsent"]
                .as_u64()
                .unwrap_or(0);
        }
        // Views larger than the path's datagrams then (a mesh sends those on the stream).
        out.insert("views_not_datagrams".into(), json!(unsent));
    }
    Ok(())
}

/// The figures of a propagation run.
fn report(p: &Propagation, out: &mut Out) {
    out.insert("p50_us".into(), json!(round3(p.to_all.p50)));
    out.insert("p99_us".into(), json!(round3(p.to_all.p99)));
    out.insert("max_us".into(), json!(round3(p.to_all.max)));
    out.insert("samples".into(), json!(p.to_all.n));
    out.insert("one_way_p50_us".into(), json!(round3(p.one_way.p50)));
    out.insert("one_way_p99_us".into(), json!(round3(p.one_way.p99)));
    out.insert(
        "first_tenth_p50_us".into(),
        json!(round3(p.first_tenth_p50)),
    );
    out.insert("last_tenth_p50_us".into(), json!(round3(p.last_tenth_p50)));
}
