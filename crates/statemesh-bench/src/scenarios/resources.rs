//! `memory` (peak RSS per window) and `idle` (CPU per idle window).

use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use super::{Opts, Out};
use crate::clock::now_ns;
use crate::fleet::{Fleet, cpu_seconds, peak_rss_kb, pss_uss_kb, rss_kinds_kb};
use crate::stats::{round3, summarize};

/// Channels the memory scenario fills.
const CHANNELS: usize = 100;

/// The `memory` scenario: `CHANNELS` channels of one record each (written by the windows in
/// turn), every window holding all of them, then a few heartbeats; peak RSS (`VmHWM`) of each
/// window and of a process of the same binary that never joins.
pub(crate) fn run_memory(opts: &Opts, out: &mut Out) -> anyhow::Result<()> {
    let n = opts.peers;
    let mut f = Fleet::new(opts.net, n)?;
    eprintln!("starting {n} windows ({})", opts.net.name());
    f.start(n).context("starting the windows")?;
    let slots = f.slots();
    for s in &slots {
        f.send(*s, &json!({"op": "watch", "prefix": "mem-"}))?;
    }
    let value = "x".repeat(100);
    for c in 0..CHANNELS {
        let s = slots[c % slots.len()];
        f.send(
            s,
            &json!({"op": "put", "channel": format!("mem-{c}"), "key": "record", "value": value}),
        )?;
    }
    for s in &slots {
        f.send(*s, &json!({"op": "expect", "count": CHANNELS}))?;
    }
    for s in &slots {
        f.wait_line("every window to hold every channel", |l| {
            l.slot == *s && l.json["ev"] == "reached"
        })?;
    }
    // Let the mesh run as it would (heartbeats, views, compaction of the state file).
    f.observe_for(Duration::from_millis(if opts.quick { 500 } else { 3000 }))?;
    let mut peaks = Vec::new();
    let (mut anon, mut file, mut pss, mut uss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in &slots {
        let pid = f.pid(*s)?;
        peaks.push(peak_rss_kb(pid)? as f64);
        let (a, fi, _) = rss_kinds_kb(pid)?;
        anon.push(a as f64);
        file.push(fi as f64);
        let (p, u) = pss_uss_kb(pid)?;
        pss.push(p as f64);
        uss.push(u as f64);
    }
    let baseline = f.spawn_with(0, &["--idle-baseline"])?;
    f.wait_joined(&[baseline])?;
    let baseline_pid = f.pid(baseline)?;
    let baseline_kb = peak_rss_kb(baseline_pid)?;
    let (baseline_anon, baseline_file, _) = rss_kinds_kb(baseline_pid)?;
    f.kill(baseline)?;
    // Where the resident memory is now: anonymous (heap, stacks) or file-backed (the binary's
    // pages and shared libraries).
    out.insert(
        "rss_anon_kb_mean".into(),
        json!(round3(summarize(&anon).mean)),
    );
    out.insert(
        "rss_file_kb_mean".into(),
        json!(round3(summarize(&file).mean)),
    );
    out.insert("pss_kb_mean".into(), json!(round3(summarize(&pss).mean)));
    out.insert("uss_kb_mean".into(), json!(round3(summarize(&uss).mean)));
    out.insert("rss_anon_kb_baseline".into(), json!(baseline_anon));
    out.insert("rss_file_kb_baseline".into(), json!(baseline_file));
    let s = summarize(&peaks);
    eprintln!(
        "peak RSS per window: max {} KiB, mean {:.0} KiB; baseline {baseline_kb} KiB",
        s.max, s.mean
    );
    out.insert("join_failures".into(), json!(f.join_failures));
    out.insert("rss_kb_peak".into(), json!(s.max as u64));
    out.insert("rss_kb_baseline".into(), json!(baseline_kb));
    out.insert("rss_kb_mean".into(), json!(round3(s.mean)));
    out.insert("channels".into(), json!(CHANNELS));
    Ok(())
}

/// Above this many windows `idle` starts them one by one.
const ONE_BY_ONE_ABOVE: usize = 16;

/// The `idle` scenario: idle windows (heartbeats only); CPU time (`utime + stime`) each used
/// over the measured period, as a percentage of one core.
pub(crate) fn run_idle(opts: &Opts, out: &mut Out) -> anyhow::Result<()> {
    let n = opts.peers;
    let mut f = Fleet::new(opts.net, n)?;
    eprintln!("starting {n} windows ({})", opts.net.name());
    if n > ONE_BY_ONE_ABOVE {
        super::start_many(&mut f, n)?;
    } else {
        f.start(n).context("starting the windows")?;
    }
    // Joining costs CPU (handshakes, first sync rounds): leave it out of the measurement.
    f.observe_for(Duration::from_secs(1))?;
    let slots = f.slots();
    let secs = if opts.quick { 3 } else { 30 };
    eprintln!("measuring CPU over {secs} s");
    let before: Vec<f64> = slots
        .iter()
        .map(|s| f.pid(*s).and_then(cpu_seconds))
        .collect::<anyhow::Result<_>>()?;
    let t0 = now_ns();
    f.observe_for(Duration::from_secs(secs))?;
    let after: Vec<f64> = slots
        .iter()
        .map(|s| f.pid(*s).and_then(cpu_seconds))
        .collect::<anyhow::Result<_>>()?;
    let elapsed = (now_ns() - t0) as f64 / 1e9;
    let percents: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) / elapsed * 100.0)
        .collect();
    let s = summarize(&percents);
    eprintln!(
        "CPU per idle window: mean {:.3} %, max {:.3} %",
        s.mean, s.max
    );
    out.insert("join_failures".into(), json!(f.join_failures));
    out.insert("idle_cpu_percent".into(), json!(round3(s.mean)));
    out.insert("idle_cpu_percent_max".into(), json!(round3(s.max)));
    out.insert("measured_s".into(), json!(round3(elapsed)));
    out.insert(
        "cpu_tick_ms".into(),
        json!(1000.0 / rustix::param::clock_ticks_per_second() as f64),
    );
    Ok(())
}
