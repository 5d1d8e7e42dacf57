//! The hidden `forge` subcommand: a hostile machine on the LAN that floods it with forged mDNS
//! announcements of the mesh, as anyone on the LAN can without the secret.
//!
//! It browses until a real window's announcement shows the mesh's tag (the tag is public: every
//! announcement carries it), then registers `--records` instances of the statemesh service with
//! that tag, fresh peer ids that sort above every real window's (so the real windows are the
//! ones to dial them), and addresses from `--ip`/`--hosts` (hosts that do not exist, or a live
//! host with closed ports), each with a port of its own. It prints
//! `{"ev":"forging","records":N,"tag":T}` once every record is registered, and runs until its
//! stdin ends; then it exits at once, without goodbyes, so that the records stay in every
//! window's cache until they expire, as with a forger that vanished. Only ever run inside a
//! network namespace of the harness.

use std::io::{BufRead, Write};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use rand_core::{RngCore, SeedableRng};
use serde_json::json;
use statemesh::PeerId;
use statemesh_net::mdns::{PROTOCOL_VERSION, SERVICE};

/// Options of the hidden `forge` subcommand.
#[derive(clap::Args, Debug)]
pub(crate) struct ForgeArgs {
    /// How many instances to announce.
    #[arg(long, default_value_t = 1000)]
    records: u32,
    /// The first address the records name.
    #[arg(long)]
    ip: Ipv4Addr,
    /// How many consecutive addresses from `--ip` the records cycle through.
    #[arg(long, default_value_t = 1)]
    hosts: u32,
    /// How long to wait for a real announcement to copy the tag from, in seconds.
    #[arg(long, default_value_t = 30)]
    wait_s: u64,
}

/// Runs the forger until stdin ends.
pub(crate) fn run(args: ForgeArgs) -> anyhow::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let daemon = ServiceDaemon::new().context("mDNS daemon")?;
    daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6, IfKind::IPv6])?;
    let tag = copy_tag(&daemon, Duration::from_secs(args.wait_s))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(u64::from(std::process::id()));
    // An hour ahead of this machine's clock: every forged id sorts above the real windows'.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64
        + 3_600_000;
    let base = u32::from(args.ip);
    for i in 0..args.records {
        let peer = PeerId::generate(later + u64::from(i), &mut rng);
        let instance = peer.as_uuid().simple().to_string();
        let ip = Ipv4Addr::from(base + i % args.hosts.max(1));
        let port = 20_000 + (i % 40_000) as u16 + (rng.next_u32() % 7) as u16;
        let props = [
            ("v", PROTOCOL_VERSION.to_owned()),
            ("id", peer.to_string()),
            ("port", port.to_string()),
            ("tag", tag.clone()),
        ];
        let mut info = ServiceInfo::new(
            SERVICE,
            &instance,
            &format!("forged-{i}.local."),
            std::net::IpAddr::V4(ip),
            port,
            &props[..],
        )?;
        info.set_requires_probe(false);
        // The daemon's command queue is bounded: wait for it to drain when it is full.
        loop {
            match daemon.register(info.clone()) {
                Err(mdns_sd::Error::Again) => std::thread::sleep(Duration::from_millis(5)),
                other => break other?,
            }
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        json!({"ev": "forging", "records": args.records, "tag": tag})
    )?;
    out.flush()?;
    drop(out);
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    // No goodbyes: the records stay cached where they were seen.
    std::process::exit(0);
}

/// Browses until an announcement of the service shows a tag.
fn copy_tag(daemon: &ServiceDaemon, wait: Duration) -> anyhow::Result<String> {
    let browse = daemon.browse(SERVICE)?;
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match browse.recv_timeout(left) {
            Ok(ServiceEvent::ServiceResolved(svc)) => {
                if let Some(tag) = svc.get_property_val_str("tag") {
                    let tag = tag.to_owned();
                    let _ = daemon.stop_browse(SERVICE);
                    return Ok(tag);
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    bail!("no announcement of {SERVICE} seen within {wait:?}")
}
