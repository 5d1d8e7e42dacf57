//! A LAN of network namespaces: each "machine" is a namespace with one veth (`eth0`) into a
//! bridge that lives in a namespace of its own. Addresses (10.214.0.0/24) exist only inside
//! these namespaces, so nothing the windows send — mDNS included — reaches a real interface.
//! Every namespace is deleted on drop (and on Ctrl-C, see [`crate::cleanup`]).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cleanup;

/// The namespaces of one run.
pub(crate) struct Lan {
    bridge: String,
    machines: Vec<String>,
}

/// Runs `ip` with `args`; an error carries its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process may create network namespaces (root).
pub(crate) fn check_root() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "`--net lan` needs root: it creates network namespaces (a bridge and one namespace \
             per machine) so that mDNS and QUIC stay off the real interfaces; run it as root \
             (e.g. `sudo -E target/release/statemesh-bench <scenario> --net lan`)"
        );
    }
    Ok(())
}

impl Lan {
    /// Creates `machines` namespaces joined by a bridge and waits until every veth is up.
    pub(crate) fn new(machines: usize) -> anyhow::Result<Self> {
        if machines > 250 {
            bail!("at most 250 machines on the namespace LAN");
        }
        check_root()?;
        remove_orphans();
        let tag = std::process::id();
        let mut lan = Self {
            bridge: format!("smb{tag}br"),
            machines: Vec::new(),
        };
        cleanup::add_namespace(&lan.bridge);
        ip(&["netns", "add", &lan.bridge])?;
        ip(&[
            "-n",
            &lan.bridge,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &lan.bridge, "link", "set", "br0", "up"])?;
        for i in 0..machines {
            let ns = format!("smb{tag}m{i}");
            cleanup::add_namespace(&ns);
            // Pushed before it exists: drop deletes it even if a step below fails.
            lan.machines.push(ns.clone());
            ip(&["netns", "add", &ns])?;
            let port = format!("p{i}");
            ip(&[
                "-n",
                &lan.bridge,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ])?;
            ip(&["-n", &lan.bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &lan.bridge, "link", "set", &port, "up"])?;
            let addr = format!("10.214.0.{}/24", i + 1);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        for i in 0..machines {
            lan.wait_up(i)?;
        }
        Ok(lan)
    }

    /// The namespace of machine `i`.
    pub(crate) fn namespace(&self, i: usize) -> &str {
        &self.machines[i]
    }

    /// Waits until machine `i`'s veth reports `state UP` (mdns-sd ignores interfaces that are
    /// not up yet).
    fn wait_up(&self, i: usize) -> anyhow::Result<()> {
        let ns = &self.machines[i];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("ip")
                .args(["-n", ns, "-o", "link", "show", "eth0"])
                .output()
                .context("cannot run `ip`")?;
            if String::from_utf8_lossy(&out.stdout).contains("state UP") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{ns}'s veth never came up");
            }
            // The kernel offers no event to wait on from here (short of a netlink monitor);
            // poll the state briefly.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes machine `i`'s veth down (its packets just stop: no FIN, no EOF) or up again.
    pub(crate) fn link(&self, i: usize, up: bool) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.machines[i],
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ])?;
        if up {
            self.wait_up(i)?;
        }
        Ok(())
    }
}

/// Deletes namespaces left by a run of this harness that was SIGKILLed (no handler runs then):
/// names `smb<pid>br` and `smb<pid>m<n>` whose process is gone.
fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("smb") else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let suffix = &rest[digits.len()..];
        let ours = suffix == "br"
            || suffix
                .strip_prefix('m')
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if !digits.is_empty() && ours && !Path::new(&format!("/proc/{digits}")).exists() {
            eprintln!("deleting namespace {name}, left by an earlier run that was killed");
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.machines.iter().chain([&self.bridge]) {
            if cleanup::take_namespace(ns) {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}
