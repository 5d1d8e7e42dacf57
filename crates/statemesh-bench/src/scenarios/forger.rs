//! The `forger` scenario (`--net lan` only): a hostile machine floods the LAN with forged mDNS
//! records of the mesh while the windows are linked and agree on a leader.
//!
//! `--peers` windows (default 3) start on machines `0..n` and settle. The forger starts on
//! machine `n + 1` and announces `--records` instances (default 1,000) with the mesh's public
//! tag, ids above the windows' and addresses of hosts that do not exist (or, `--live`, its own
//! address with every port closed). During the flood a new window starts on machine `n`. The
//! run reports false suspicions (incarnations the windows had to move to), leadership changes,
//! links at the end, the highest send queue seen on the windows' link sockets (the socket
//! that carries their heartbeats: `tx_queue` in `/proc/<pid>/net/udp`), how long the new
//! window took to link to every other, the probes the windows made, and how many probes they
//! still made per second once the forger vanished without goodbyes.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value as Json, json};

use crate::clock::now_ns;
use crate::fleet::{Fleet, Net};
use crate::scenarios::{Opts, Out};
use crate::stats::round3;

/// What a window's `info` says, as numbers.
#[derive(Clone, Debug, Default)]
struct Info {
    incarnation: u64,
    leadership_changes: u64,
    links: u64,
    probes: u64,
    probe_failures: u64,
    candidates: u64,
    forgotten: u64,
    quic_port: Option<u16>,
}

fn info(f: &mut Fleet, slot: usize) -> anyhow::Result<Info> {
    let j = f.ask(slot, &json!({"op": "info"}), "info")?;
    let n = |k: &str| j[k].as_u64().unwrap_or(0);
    Ok(Info {
        incarnation: n("incarnation"),
        leadership_changes: n("leadership_changes"),
        links: n("links"),
        probes: n("probes"),
        probe_failures: n("probe_failures"),
        candidates: n("dial_candidates"),
        forgotten: n("candidates_forgotten"),
        quic_port: j["quic_port"].as_u64().and_then(|p| u16::try_from(p).ok()),
    })
}

/// The send queue of the UDP socket bound to `port` in the network namespace of process
/// `pid`, in bytes (`tx_queue` of `/proc/<pid>/net/udp`).
///
/// The kernel does not list that table at one instant: each `read` walks it again from the
/// start to the position reached, so a socket closed ahead of ours between two reads shifts
/// ours out of the listing. The windows open and close a socket for every probe, and during a
/// flood of forged records they probe all the time: read in large reads (a page of the table
/// per read) and look again when the socket is not listed, before calling it gone.
fn tx_queue(pid: u32, port: u16) -> anyhow::Result<u64> {
    const LISTINGS: usize = 10;
    let path = format!("/proc/{pid}/net/udp");
    for _ in 0..LISTINGS {
        let table = read_listing(&path)?;
        if let Some(tx) = listed_tx_queue(&table, port)? {
            return Ok(tx);
        }
    }
    bail!("no UDP socket on port {port} in process {pid}'s namespace ({LISTINGS} listings)")
}

/// A `/proc` listing, read into room for 64 KiB: `read_to_string` into an empty string first
/// asks for 32 bytes, and every further read walks the table again.
fn read_listing(path: &str) -> anyhow::Result<String> {
    let mut table = String::with_capacity(1 << 16);
    std::fs::File::open(path)
        .and_then(|mut file| file.read_to_string(&mut table))
        .with_context(|| format!("reading {path}"))?;
    Ok(table)
}

/// `tx_queue` of the socket bound to `port` in a listing of `/proc/<pid>/net/udp`, if listed.
fn listed_tx_queue(table: &str, port: u16) -> anyhow::Result<Option<u64>> {
    for line in table.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(local), Some(_), Some(_), Some(queues)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let local_port = local
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        if local_port == Some(port) {
            let tx = queues.split(':').next().unwrap_or("0");
            return Ok(Some(u64::from_str_radix(tx, 16)?));
        }
    }
    Ok(None)
}

/// The `forger` scenario (see the module docs).
pub(crate) fn run(opts: &Opts, out: &mut Out, records: u32, live: bool) -> anyhow::Result<()> {
    if opts.net != Net::Lan {
        bail!("forger needs --net lan (the forger floods a namespace LAN with mDNS)");
    }
    let n = opts.peers;
    anyhow::ensure!(n >= 2, "forger needs at least 2 peers");
    let late_machine = n;
    let forger_machine = n + 1;
    let mut f = Fleet::new(opts.net, n + 2)?;
    eprintln!("starting {n} windows (lan)");
    f.start(n).context("starting the windows")?;
    let originals = f.slots();
    let before: Vec<Info> = originals
        .iter()
        .map(|s| info(&mut f, *s))
        .collect::<anyhow::Result<_>>()?;
    // The namespace LAN numbers machine i as 10.214.0.(i + 1); .100 to .249 belong to nobody.
    let (ip, hosts) = if live {
        (format!("10.214.0.{}", forger_machine + 1), 1)
    } else {
        ("10.214.0.100".to_owned(), 150)
    };
    eprintln!(
        "forging {records} records naming {} ({ip}, {hosts} hosts)",
        if live { "a live host" } else { "absent hosts" }
    );
    let forge_args: Vec<String> = vec![
        "--records".into(),
        records.to_string(),
        "--ip".into(),
        ip,
        "--hosts".into(),
        hosts.to_string(),
    ];
    let flood_started = Instant::now();
    let mut forger = f.spawn_forger(forger_machine, &forge_args)?;
    eprintln!(
        "  announced in {:.1} s",
        flood_started.elapsed().as_secs_f64()
    );
    let mut max_tx = 0u64;
    let mut sample = |f: &mut Fleet, d: Duration| -> anyhow::Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            f.observe_for(Duration::from_millis(100))?;
            for (slot, i) in originals.iter().zip(&before) {
                if let Some(port) = i.quic_port {
                    max_tx = max_tx.max(tx_queue(f.pid(*slot)?, port)?);
                }
            }
        }
        Ok(())
    };
    let flood = if opts.quick { 3 } else { 10 };
    sample(&mut f, Duration::from_secs(flood))?;
    eprintln!("starting a window during the flood");
    let started = now_ns();
    let late = f.spawn_with(late_machine, &[])?;
    f.wait_joined(&[late])?;
    f.send(late, &json!({"op": "links", "n": n}))?;
    // A window that never links is a result (null), not a failed run.
    let linked_ms = match f.wait_line("links", |l| l.slot == late && l.json["ev"] == "links") {
        Ok(line) => line.json["linked_t"]
            .as_u64()
            .map(|t| t.saturating_sub(started) as f64 / 1e6),
        Err(e) => {
            eprintln!("  {e:#}");
            None
        }
    };
    eprintln!("  linked to all {n} after {linked_ms:?} ms");
    sample(&mut f, Duration::from_secs(if opts.quick { 3 } else { 20 }))?;
    let all = f.slots();
    let during: Vec<Info> = all
        .iter()
        .map(|s| info(&mut f, *s))
        .collect::<anyhow::Result<_>>()?;
    // The forger vanishes without goodbyes: its records stay cached.
    let _ = forger.kill();
    let _ = forger.wait();
    let quiet = Duration::from_secs(5);
    let probes_at_kill: u64 = during.iter().map(|i| i.probes).sum();
    f.observe_for(quiet)?;
    let after: Vec<Info> = all
        .iter()
        .map(|s| info(&mut f, *s))
        .collect::<anyhow::Result<_>>()?;
    let probes_after: u64 = after.iter().map(|i| i.probes).sum::<u64>() - probes_at_kill;

    let originals_during = &during[..originals.len()];
    let suspicions: u64 = originals_during
        .iter()
        .zip(&before)
        .map(|(d, b)| d.incarnation.saturating_sub(b.incarnation))
        .sum::<u64>()
        + during[originals.len()..]
            .iter()
            .map(|d| d.incarnation)
            .sum::<u64>();
    let changes: u64 = originals_during
        .iter()
        .zip(&before)
        .map(|(d, b)| d.leadership_changes.saturating_sub(b.leadership_changes))
        .sum();
    let links_intact = during.iter().all(|i| i.links as usize == n);
    eprintln!(
        "  {suspicions} false suspicions, {changes} leadership changes, links intact: \
         {links_intact}, highest link-socket send queue {max_tx} B"
    );
    out.insert("records".into(), json!(records));
    out.insert(
        "forged_hosts".into(),
        json!(if live { "live" } else { "absent" }),
    );
    out.insert("false_suspicions".into(), json!(suspicions));
    out.insert("leadership_changes".into(), json!(changes));
    out.insert("links_intact".into(), json!(links_intact));
    out.insert(
        "links".into(),
        Json::Array(during.iter().map(|i| json!(i.links)).collect()),
    );
    out.insert("max_link_socket_tx_queue_b".into(), json!(max_tx));
    out.insert("late_window_linked_ms".into(), json!(linked_ms.map(round3)));
    out.insert(
        "probes".into(),
        json!(during.iter().map(|i| i.probes).sum::<u64>()),
    );
    out.insert(
        "probe_failures".into(),
        json!(during.iter().map(|i| i.probe_failures).sum::<u64>()),
    );
    out.insert(
        "max_candidates".into(),
        json!(during.iter().map(|i| i.candidates).max().unwrap_or(0)),
    );
    out.insert(
        "candidates_forgotten".into(),
        json!(during.iter().map(|i| i.forgotten).sum::<u64>()),
    );
    out.insert(
        "probes_per_s_after_forger_left".into(),
        json!(round3(probes_after as f64 / quiet.as_secs_f64())),
    );
    out.insert(
        "dual_leader_observations".into(),
        json!(f.safety.observations()),
    );
    out.insert("join_failures".into(), json!(f.join_failures));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::tx_queue;

    /// Sockets opened and closed beside ours (a window's probes) never hide it: one in twenty
    /// listings read the way `read_to_string` reads missed it on this machine.
    #[test]
    fn a_socket_is_found_while_others_open_and_close() {
        let kept: Vec<UdpSocket> = (0..8)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("a loopback socket"))
            .collect();
        let port = kept[7].local_addr().expect("its address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let probes: Vec<UdpSocket> = (0..4)
                        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("a loopback socket"))
                        .collect();
                    drop(probes);
                }
            })
        };
        let found = (0..2_000).try_for_each(|_| tx_queue(std::process::id(), port).map(drop));
        stop.store(true, Ordering::Relaxed);
        churn.join().expect("the churn thread");
        found.expect("the socket is listed every time");
    }
}
