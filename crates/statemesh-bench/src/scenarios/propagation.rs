//! `propagation`: one window writes a record; how long until every other window's change
//! subscription sees it.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::{Value as Json, json};
use statemesh_core::Config;

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
    /// Per write: when it was written (the writer's `CLOCK_MONOTONIC` reading, in ns) and
    /// `to_all`'s sample.
    pub(crate) written: Vec<(u64, f64)>,
}

/// Writes of `scale` and of its floor (`transport-floor` beyond 8 windows), 100 ms apart on
/// average ([`Pace::Spread`]): their p99 is the third largest (with 100 writes it was the
/// second largest, and moved by tens of milliseconds from run to run).
pub(crate) const SCALE_SAMPLES: usize = 300;

/// Bins of a heartbeat interval that [`by_heartbeat_phase`] splits the writes into.
const PHASE_BINS: u32 = 4;

/// `to_all` of the writes made in each quarter of the heartbeat interval, on the grid a mesh's
/// windows align their heartbeats to (multiples of the default interval on the machine's
/// monotonic clock: every window sends its views at those instants): which writes met the
/// views' burst. Quarters without writes are left out.
pub(crate) fn by_heartbeat_phase(written: &[(u64, f64)]) -> Json {
    let interval = Config::default().heartbeat_interval.as_nanos().max(1) as u64;
    let bin_ns = interval / u64::from(PHASE_BINS);
    let mut bins = vec![Vec::new(); PHASE_BINS as usize];
    for (at, us) in written {
        let bin = ((at % interval) / bin_ns.max(1)).min(u64::from(PHASE_BINS) - 1);
        bins[bin as usize].push(*us);
    }
    let bins: Vec<Json> = bins
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.is_empty())
        .map(|(i, b)| {
            let s = summarize(b);
            json!({
                "from_ms": round3(i as f64 * bin_ns as f64 / 1e6),
                "to_ms": round3((i + 1) as f64 * bin_ns as f64 / 1e6),
                "samples": s.n,
                "p50_us": round3(s.p50),
                "p99_us": round3(s.p99),
                "max_us": round3(s.max),
            })
        })
        .collect();
    Json::Array(bins)
}

/// The offset of write `i` paced by [`Pace::Spread`] with mean spacing `every`: the
/// fractional parts of `i` times the golden ratio's inverse, scaled to `every`, which fall
/// evenly over `[0, every)` however many are taken. With writes `every` apart and a heartbeat
/// interval twice that (the defaults: 100 and 200 ms), the writes' instants then fall evenly
/// over the whole heartbeat interval.
pub(crate) fn spread_offset(i: usize, every: Duration) -> Duration {
    const INV_PHI: f64 = 0.618_033_988_749_894_9;
    every.mul_f64((i as f64 * INV_PHI).fract())
}

/// How the writes of [`measure`] are paced.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Pace {
    /// One every this long.
    Every(Duration),
    /// One every this long on average, each moved by a part of it that walks over the whole
    /// heartbeat interval (see [`spread_offset`]): at 64 windows a write that meets the
    /// windows' aligned views waits for them, so writes on a fixed grid measured either
    /// the writes that do or those that do not, by the luck of the run's start.
    Spread(Duration),
}

/// Writes `samples` records, paced by `pace`, from each window in turn; each write carries
/// its writer's `CLOCK_MONOTONIC` reading, and each receiver reports its own reading minus
/// that one when its change subscription delivers the record.
pub(crate) fn measure(f: &mut Fleet, samples: usize, pace: Pace) -> anyhow::Result<Propagation> {
    let slots = f.slots();
    let receivers = slots.len() - 1;
    let mut to_all = Vec::with_capacity(samples);
    let mut one_way = Vec::with_capacity(samples * receivers);
    let mut written = Vec::with_capacity(samples);
    let start = Instant::now();
    for i in 0..samples {
        // Pace the writes (a window writing at UI rates), so that each one is measured on its
        // own rather than behind the previous one's sync round.
        let at = match pace {
            Pace::Every(every) => start + every * i as u32,
            Pace::Spread(every) => start + every * i as u32 + spread_offset(i, every),
        };
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let writer = slots[i % slots.len()];
        let key = format!("s{i}");
        f.send(writer, &json!({"op": "stamp", "key": key}))?;
        let mut worst = 0.0f64;
        let mut stamp = None;
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
            stamp = stamp.or(line.json["stamp"].as_u64());
        }
        to_all.push(worst);
        written.push((
            stamp.ok_or_else(|| anyhow!("`seen` without the write's stamp"))?,
            worst,
        ));
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
        written,
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
    let p = measure(&mut f, samples, Pace::Every(Duration::from_millis(5)))?;
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
    let mut floor = vec!["--transport-floor"];
    if opts.carried.views {
        floor.push("--floor-views");
    }
    if opts.carried.documents {
        floor.push("--floor-documents");
    }
    if opts.carried.aligned {
        floor.push("--floor-aligned");
    }
    let first = f.spawn_with(0, &floor)?;
    f.wait_joined(&[first])?;
    let mut slots = vec![first];
    for _ in 1..n {
        slots.push(f.spawn_with(0, &floor)?);
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
        (true, false) => (SCALE_SAMPLES, 100),
        (true, true) => (20, 100),
    };
    eprintln!("{samples} writes, one every {every} ms on average, from each window in turn");
    let every = Duration::from_millis(every);
    // As `scale` paces them, at its size.
    let pace = if n > 8 {
        Pace::Spread(every)
    } else {
        Pace::Every(every)
    };
    let p = measure(&mut f, samples, pace)?;
    report(&p, out);
    out.insert("views".into(), json!(opts.carried.views));
    out.insert("documents".into(), json!(opts.carried.documents));
    out.insert("aligned".into(), json!(opts.carried.aligned));
    if opts.carried.views {
        let (mut unsent, mut sealed) = (0, 0);
        for s in &slots {
            let views = f.ask(*s, &json!({"op": "views"}), "views")?;
            unsent += views["unsent"].as_u64().unwrap_or(0);
            sealed += views["sealed"].as_u64().unwrap_or(0);
        }
        // Views that went neither sealed nor as datagrams (a mesh sends those on the stream),
        // and views received sealed.
        out.insert("views_not_datagrams".into(), json!(unsent));
        out.insert("views_sealed_received".into(), json!(sealed));
    }
    Ok(())
}

/// The figures of a propagation run.
pub(crate) fn report(p: &Propagation, out: &mut Out) {
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
    out.insert("by_heartbeat_phase".into(), by_heartbeat_phase(&p.written));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scale`'s writes: 100 ms apart on average, each quarter of the 200 ms heartbeat
    /// interval gets its share (on a fixed 100 ms grid they fell in two instants of it).
    #[test]
    fn spread_writes_fall_evenly_over_the_heartbeat_interval() {
        let every = Duration::from_millis(100);
        let interval = Config::default().heartbeat_interval;
        assert_eq!(interval, every * 2, "the defaults this pacing is made for");
        let quarter = interval / PHASE_BINS;
        let mut bins = [0usize; PHASE_BINS as usize];
        let mut last = Duration::ZERO;
        for i in 0..SCALE_SAMPLES {
            let offset = spread_offset(i, every);
            assert!(offset < every);
            let at = every * i as u32 + offset;
            assert!(i == 0 || at > last, "in order");
            last = at;
            let phase = at.as_nanos() % interval.as_nanos();
            bins[(phase / quarter.as_nanos()) as usize] += 1;
        }
        let share = SCALE_SAMPLES / PHASE_BINS as usize;
        for (b, n) in bins.iter().enumerate() {
            assert!(
                n.abs_diff(share) <= share / 10,
                "quarter {b}: {n} writes of {SCALE_SAMPLES} ({bins:?})"
            );
        }
    }

    #[test]
    fn writes_are_binned_by_where_they_fall_in_the_heartbeat_interval() {
        let interval = Config::default().heartbeat_interval.as_nanos() as u64;
        let quarter = interval / u64::from(PHASE_BINS);
        // Ten intervals in: writes a tenth into the first quarter, and into the last.
        let base = 10 * interval;
        let written: Vec<(u64, f64)> = (0..4)
            .flat_map(|k| {
                let start = base + k * interval;
                [
                    (start + quarter / 10, 30.0 + k as f64),
                    (start + 3 * quarter + quarter / 10, 80.0 + k as f64),
                ]
            })
            .collect();
        let bins = by_heartbeat_phase(&written);
        let bins = bins.as_array().expect("an array");
        assert_eq!(bins.len(), 2, "{bins:?}");
        let quarter_ms = quarter as f64 / 1e6;
        assert_eq!(bins[0]["from_ms"], json!(0.0));
        assert_eq!(bins[0]["samples"], json!(4));
        assert_eq!(bins[0]["max_us"], json!(33.0));
        assert_eq!(bins[1]["from_ms"], json!(3.0 * quarter_ms));
        assert_eq!(bins[1]["to_ms"], json!(4.0 * quarter_ms));
        assert_eq!(bins[1]["p50_us"], json!(81.0));
        assert_eq!(bins[1]["max_us"], json!(83.0));
    }
}
