//! `throughput`: every window writes keys as fast as it can for a fixed time; how many key
//! writes per second reach every window. With `--same-key` every window rewrites one key of
//! its own, as automerge-repo's `measure.sh` does, and the mesh has converged once every
//! window holds every window's last value (key writes per second: all writes made, over the
//! time from the first write until then).

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::json;

use super::{Opts, Out};
use crate::stats::round3;

/// The `throughput` scenario.
pub(crate) fn run(opts: &Opts, out: &mut Out) -> anyhow::Result<()> {
    let n = opts.peers;
    let mut f = crate::fleet::Fleet::new(opts.net, n)?;
    eprintln!("starting {n} windows ({})", opts.net.name());
    f.start(n).context("starting the windows")?;
    let slots = f.slots();
    for s in &slots {
        f.send(*s, &json!({"op": "watch", "prefix": "tp"}))?;
    }
    let ms: u64 = if opts.quick { 1000 } else { 5000 };
    eprintln!(
        "every window writes for {ms} ms, {} keys per atomic change{}",
        opts.batch,
        if opts.same_key {
            ", one key of its own"
        } else {
            ""
        }
    );
    for (i, s) in slots.iter().enumerate() {
        f.send(
            *s,
            &json!({"op": "burst", "ms": ms, "batch": opts.batch, "prefix": format!("w{i}"),
                    "same_key": opts.same_key}),
        )?;
    }
    let mut written = 0u64;
    let mut changes = 0u64;
    let mut t_start = u64::MAX;
    let mut t_written = 0u64;
    // With `same_key`: each window's key and the last value it wrote there.
    let mut last_values = serde_json::Map::new();
    for (i, s) in slots.iter().enumerate() {
        let done = f.wait_line("the writers to finish", |l| {
            l.slot == *s && l.json["ev"] == "burst_done"
        })?;
        let n = |k: &str| {
            done.json[k]
                .as_u64()
                .ok_or_else(|| anyhow!("bad burst_done"))
        };
        let by_this = n("written")?;
        if by_this > 0 {
            last_values.insert(format!("w{i}"), json!(by_this - 1));
        }
        written += by_this;
        changes += n("changes")?;
        t_start = t_start.min(n("t0")?);
        t_written = t_written.max(n("t1")?);
    }
    eprintln!("{written} keys written in {changes} changes; waiting for every window to hold them");
    let expect = if opts.same_key {
        json!({"op": "expect_values", "values": last_values})
    } else {
        json!({"op": "expect", "count": written})
    };
    for s in &slots {
        f.send(*s, &expect)?;
    }
    let converge_within = Duration::from_secs(if opts.quick { 20 } else { 120 });
    let deadline = Instant::now() + converge_within;
    let mut t_end = 0u64;
    // Times a window's change stream overran (the window then read every key again).
    let mut overruns = 0u64;
    let mut converged = true;
    for s in &slots {
        f.within = deadline.saturating_duration_since(Instant::now());
        match f.wait_line("every window to hold every key", |l| {
            l.slot == *s && l.json["ev"] == "reached"
        }) {
            Ok(line) => {
                t_end = t_end.max(line.json["t"].as_u64().unwrap_or(0));
                overruns += line.json["lagged"].as_u64().unwrap_or(0);
            }
            Err(e) => {
                eprintln!("  not converged: {e}");
                converged = false;
                break;
            }
        }
    }
    f.within = Duration::from_secs(30);
    // Keys that reached every window: all of them, or (not converged) at most the smallest
    // count any window holds now.
    let (reached, t_end) = if converged {
        (written, t_end)
    } else if opts.same_key {
        // Not converged: no figure of writes that reached every window.
        (0, crate::clock::now_ns())
    } else {
        let mut least = u64::MAX;
        for s in &slots {
            let c = f.ask(*s, &json!({"op": "count"}), "count")?;
            let info = f.ask(*s, &json!({"op": "info"}), "info")?;
            eprintln!("  window {s}: holds {} keys; {info}", c["count"]);
            least = least.min(c["count"].as_u64().unwrap_or(0));
        }
        (least, crate::clock::now_ns())
    };
    // Side effects of the load: windows wrongly judged dead (each refutes with a new
    // incarnation) and restarted sync exchanges.
    let load = super::load_report(&mut f, &slots)?;
    out.extend(load);
    let secs = (t_end.saturating_sub(t_start)) as f64 / 1e9;
    let write_secs = (t_written.saturating_sub(t_start)) as f64 / 1e9;
    out.insert("join_failures".into(), json!(f.join_failures));
    out.insert("updates_per_s".into(), json!(round3(reached as f64 / secs)));
    out.insert("converged".into(), json!(converged));
    out.insert("change_stream_overruns".into(), json!(overruns));
    out.insert("written".into(), json!(written));
    out.insert("changes".into(), json!(changes));
    out.insert("batch".into(), json!(opts.batch));
    out.insert("same_key".into(), json!(opts.same_key));
    out.insert("write_s".into(), json!(round3(write_secs)));
    out.insert("converge_s".into(), json!(round3(secs)));
    out.insert(
        "written_per_s".into(),
        json!(round3(written as f64 / write_secs)),
    );
    Ok(())
}
