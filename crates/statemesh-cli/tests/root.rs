//! A LAN in network namespaces, for real (needs root; run by CI with `NEXTEST_PROFILE=ci`,
//! skipped by default elsewhere, see `.config/nextest.toml`).
//!
//! Three namespaces, each its own "machine" with one veth into a bridge that lives in a fourth
//! namespace; addresses 10.213.0.0/24 exist only inside them. Each machine runs one window in
//! LAN mode with its own runtime and state directories, so local-socket discovery cannot
//! shortcut mDNS: the windows find each other by mDNS alone and sync over QUIC. The leader's
//! link is taken down (no FIN, no EOF: its packets just stop), the others elect the next
//! leader; the link comes back, and there is one leader again and equal documents, holding what
//! both sides wrote while apart.
//!
//! A second LAN drops multicast at the bridge (mDNS cannot cross it), and one window is given
//! the others' addresses with `--peer`: peer exchange makes the mesh whole, it survives that
//! window restarting without `--peer`, and every window says why mDNS found nobody.
//!
//! A third LAN rotates the mesh secret from key A to key B machine by machine (each machine its
//! own keyring file) while every window writes; then a machine holding only A is refused and
//! one holding only B joins (see `docs/security.md`, *Rotating the mesh secret*).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{WITHIN, Windows, ms};

fn require_root() {
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test needs root (it creates network namespaces); it is meant for CI: run it as \
         root with NEXTEST_PROFILE=ci"
    );
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces of one test run; deleted (with everything in them) on drop.
struct Lan {
    bridge: String,
    machines: Vec<String>,
}

impl Lan {
    fn new(machines: usize) -> Self {
        let tag = std::process::id();
        let lan = Self {
            bridge: format!("smbr{tag}"),
            machines: (0..machines).map(|i| format!("smm{tag}n{i}")).collect(),
        };
        ip(&["netns", "add", &lan.bridge]);
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
        ]);
        ip(&["-n", &lan.bridge, "link", "set", "br0", "up"]);
        for (i, ns) in lan.machines.iter().enumerate() {
            ip(&["netns", "add", ns]);
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
                ns,
            ]);
            ip(&["-n", &lan.bridge, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &lan.bridge, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.213.0.{}/24", i + 1),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        for ns in &lan.machines {
            lan.wait_up(ns);
        }
        lan
    }

    /// Waits until `ns`'s veth reports `up` (mdns-sd ignores interfaces that are not up yet).
    fn wait_up(&self, ns: &str) {
        let deadline = Instant::now() + WITHIN;
        loop {
            let out = Command::new("ip")
                .args(["-n", ns, "-o", "link", "show", "eth0"])
                .output()
                .expect("ip runs");
            if String::from_utf8_lossy(&out.stdout).contains("state UP") {
                return;
            }
            assert!(Instant::now() < deadline, "{ns}'s veth never came up");
            // The kernel gives no event to wait on from here; poll the state briefly.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn link(&self, machine: usize, up: bool) {
        ip(&[
            "-n",
            &self.machines[machine],
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]);
        if up {
            self.wait_up(&self.machines[machine]);
        }
    }

    /// Stops the bridge from forwarding multicast to any machine: mDNS cannot cross this LAN
    /// (as on networks that filter multicast), while unicast flows.
    fn block_multicast(&self) {
        for i in 0..self.machines.len() {
            ip(&[
                "-n",
                &self.bridge,
                "link",
                "set",
                "dev",
                &format!("p{i}"),
                "type",
                "bridge_slave",
                "mcast_flood",
                "off",
            ]);
        }
    }

    /// `statemesh node --lan` inside machine `i`, with that machine's own directories.
    fn node(&self, i: usize, dir: &Path) -> Command {
        let machine = dir.join(format!("machine-{i}"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.machines[i]])
            .arg(env!("CARGO_BIN_EXE_statemesh"))
            .args(["node", "--lan", "--mesh", "lan-test", "--announce"])
            .arg("--runtime-dir")
            .arg(machine.join("run"))
            .arg("--state-dir")
            .arg(machine.join("state"))
            // The same secret file, as if copied to every machine.
            .arg("--secret-file")
            .arg(dir.join("secret"));
        cmd
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.machines.iter().chain([&self.bridge]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn notes(records: &Value, keys: &[&str]) -> bool {
    keys.iter().all(|k| !records["notes"][*k].is_null())
}

#[test]
fn a_lan_of_namespaces_finds_itself_by_mdns_and_survives_a_cut_link() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let lan = Lan::new(3);
    let mut w = Windows::new();
    for i in 0..3 {
        w.spawn(i, lan.node(i, dir.path()));
    }
    let order = w.by_id();
    w.until_all_see(&[0, 1, 2], &w.id(order[0]));
    for i in 0..3 {
        w.send(
            i,
            json!({"op": "put", "channel": "notes", "key": format!("hello-{i}"), "value": i}),
        );
    }
    w.until_converged(&[0, 1, 2], |r| notes(r, &["hello-0", "hello-1", "hello-2"]));

    // Cut the leader's link: no FIN, no EOF, its packets stop. The others elect the next.
    let leader = order[0];
    let cut_at = Instant::now();
    lan.link(leader, false);
    let others: Vec<usize> = order[1..].to_vec();
    let done = w.until_all_see(&others, &w.id(order[1]));
    eprintln!(
        "failover after the leader's link was cut: {:.1} ms (LAN of namespaces)",
        ms(cut_at, done)
    );

    // Both sides write while apart.
    w.send(
        others[0],
        json!({"op": "put", "channel": "notes", "key": "while-cut-majority", "value": true}),
    );
    w.send(
        leader,
        json!({"op": "put", "channel": "notes", "key": "while-cut-isolated", "value": true}),
    );
    w.until_converged(&others, |r| notes(r, &["while-cut-majority"]));
    // Stay apart until each side judged the other dead, which closes the links (their views
    // came sealed), so that healing needs new links (redial with backoff), not just packets
    // flowing again.
    w.until_state(leader, "the isolated leader's links time out", |s| {
        s["links"] == 0
    });
    for n in &others {
        w.until_state(*n, "the cut leader's link times out", |s| s["links"] == 1);
    }

    // Heal: one leader again (the lowest id, back), equal documents with both sides' writes.
    let healed_at = Instant::now();
    lan.link(leader, true);
    let done = w.until_all_see(&[0, 1, 2], &w.id(leader));
    eprintln!(
        "one leader again {:.1} ms after the link came back",
        ms(healed_at, done)
    );
    w.until_converged(&[0, 1, 2], |r| {
        notes(
            r,
            &[
                "hello-0",
                "hello-1",
                "hello-2",
                "while-cut-majority",
                "while-cut-isolated",
            ],
        )
    });
}

/// The address machine `i` listens at in [`multicast_blocked_one_peer_flag_makes_a_full_mesh_that_survives_its_restart`].
fn fixed(i: usize) -> String {
    format!("10.213.0.{}:7100", i + 1)
}

#[test]
fn multicast_blocked_one_peer_flag_makes_a_full_mesh_that_survives_its_restart() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let lan = Lan::new(3);
    lan.block_multicast();
    let mut w = Windows::new();
    let log =
        |i: usize| std::fs::File::create(dir.path().join(format!("stderr-{i}"))).expect("log file");
    for i in 0..2 {
        let mut cmd = lan.node(i, dir.path());
        cmd.args(["--listen", &fixed(i)]);
        w.spawn_logged(i, cmd, log(i));
    }
    // Only the third window knows where the others are.
    let hub = |lan: &Lan, with_peers: bool| {
        let mut cmd = lan.node(2, dir.path());
        cmd.args(["--listen", &fixed(2)]);
        if with_peers {
            cmd.args(["--peer", &fixed(0), "--peer", &fixed(1)]);
        }
        cmd
    };
    w.spawn_logged(2, hub(&lan, true), log(2));
    // A full mesh: the first two learned each other from the hub.
    for i in 0..3 {
        w.until_state(i, "a link to each other window", |s| s["links"] == 2);
    }
    let order = w.by_id();
    w.until_all_see(&[0, 1, 2], &w.id(order[0]));

    // The hub dies and comes back without --peer: the others redial the address they learned.
    w.kill(2);
    for i in 0..2 {
        w.until_state(i, "the hub's link is gone", |s| s["links"] == 1);
    }
    w.spawn_logged(2, hub(&lan, false), log(2));
    for i in 0..3 {
        w.until_state(i, "a link to each other window again", |s| s["links"] == 2);
    }
    let order = w.by_id();
    w.until_all_see(&[0, 1, 2], &w.id(order[0]));

    // mDNS found nobody: every window says so, in its state and on stderr.
    for i in 0..3 {
        w.until_state(i, "a discovery warning", |s| {
            s["mdns_peers_found"] == 0 && s["discovery_warning"].is_string()
        });
    }
    let stderr = std::fs::read_to_string(dir.path().join("stderr-0")).expect("stderr");
    assert!(
        stderr.contains("found no peer by mDNS") && stderr.contains("--peer"),
        "no warning on stderr: {stderr}"
    );
}

/// `statemesh keys <args> --json` on `file` (which the command edits from outside the
/// namespaces, as a user would on each machine); its answer.
fn keys(file: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_statemesh"))
        .arg("keys")
        .args(args)
        .arg("--secret-file")
        .arg(file)
        .arg("--json")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Window `i`'s command: LAN mode, a fixed address, the keyring file `secret`.
fn keyed(lan: &Lan, i: usize, dir: &Path, secret: &Path) -> Command {
    let machine = dir.join(format!("machine-{i}"));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lan.machines[i]])
        .arg(env!("CARGO_BIN_EXE_statemesh"))
        .args(["node", "--lan", "--mesh", "lan-keys", "--no-persist"])
        .args(["--listen", &fixed(i)])
        .arg("--runtime-dir")
        .arg(machine.join("run"))
        .arg("--secret-file")
        .arg(secret)
        .env("RUST_LOG", "warn,statemesh::audit=info");
    cmd
}

#[test]
fn lan_windows_rotate_keys_without_a_dropped_link() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let lan = Lan::new(4);
    // Each machine its own copy of the secret file (key A).
    let ring = |i: usize| dir.path().join(format!("machine-{i}")).join("secret");
    let a = keys(&ring(0), &["list"])["primary"]
        .as_str()
        .expect("id")
        .to_owned();
    for i in 1..3 {
        std::fs::create_dir_all(dir.path().join(format!("machine-{i}"))).expect("mkdir");
        std::fs::copy(ring(0), ring(i)).expect("copies");
    }
    let a_only = dir.path().join("a-only");
    std::fs::copy(ring(0), &a_only).expect("copies");

    let mut w = Windows::new();
    let log = |i: usize| dir.path().join(format!("stderr-{i}"));
    for i in 0..3 {
        let file = std::fs::File::create(log(i)).expect("log file");
        w.spawn_logged(i, keyed(&lan, i, dir.path(), &ring(i)), file);
    }
    let all = [0, 1, 2];
    for i in all {
        w.until_state(i, "a link to each other window", |s| s["links"] == 2);
    }
    let leader = w.id(w.by_id()[0]);
    w.until_all_see(&all, &leader);
    let before: Vec<Value> = all.iter().map(|i| w.state_answer(*i)).collect();
    let term = before[0]["term"].clone();

    let mut sent = 0u64;
    let mut round = 0u64;
    let mut burst = |w: &mut Windows| {
        round += 1;
        for i in all {
            w.send(
                i,
                json!({"op": "add", "name": "writes", "by": 1, "await": {"replicated": 2}}),
            );
            w.send(
                i,
                json!({"op": "put", "channel": "rounds", "key": format!("m{i}"), "value": round, "await": {"replicated": 2}}),
            );
            sent += 1;
        }
    };
    // Applies `args` on machine `i` between two bursts of writes, and waits until its window
    // shows the keyring the command answered (primary first).
    let mut step = |w: &mut Windows, i: usize, args: &[&str]| -> Value {
        burst(w);
        let from = w.log().len();
        let out = keys(&ring(i), args);
        burst(w);
        w.until_logged(&format!("window {i} to apply {args:?}"), from, |l| {
            l.from == i
                && l.json["event"] == "keys"
                && l.json["primary"] == out["primary"]
                && l.json["accepted"] == out["accepted"]
        });
        out
    };

    // 1. Install B on every machine (generated on the first, carried to the others as a file).
    let b_file = dir.path().join("b.key");
    let out = step(
        &mut w,
        0,
        &[
            "install",
            "--generate",
            "--export",
            b_file.to_str().expect("utf-8"),
        ],
    );
    let b = out["installed"].as_str().expect("id").to_owned();
    let ab = [a.as_str(), b.as_str()];
    let ba = [b.as_str(), a.as_str()];
    assert_eq!(out["accepted"], json!(ab));
    for i in 1..3 {
        let out = step(&mut w, i, &["install", b_file.to_str().expect("utf-8")]);
        assert_eq!(out["accepted"], json!(ab));
    }
    // 2. Use B, machine by machine: meanwhile some windows prove with A, others with B.
    for i in 0..3 {
        let out = step(&mut w, i, &["use", &b]);
        assert_eq!(out["accepted"], json!(ba));
    }
    for i in all {
        w.until_state(i, "every link on key B", |s| {
            s["link_keys"]
                .as_object()
                .is_some_and(|m| m.len() == 2 && m.values().all(|k| *k == b.as_str()))
        });
    }
    // 3. Remove A, machine by machine.
    for i in 0..3 {
        let out = step(&mut w, i, &["remove", &a]);
        assert_eq!(out["accepted"], json!([b]));
    }
    burst(&mut w);

    // Every write replicated to both other windows, the counter adds up, and nothing was
    // dropped, refused or re-elected.
    let acked = |w: &Windows| {
        w.log()
            .iter()
            .filter(|l| l.json["event"] == "acked")
            .inspect(|l| assert_eq!(l.json["ok"], true, "not replicated: {}", l.json))
            .count() as u64
    };
    while acked(&w) < 2 * sent {
        let len = w.log().len();
        w.until_logged("acknowledgements", len, |l| l.json["event"] == "acked");
    }
    for i in all {
        w.until_state(i, "every write counted", |s| {
            s["counters"]["writes"] == sent && s["records"]["rounds"]["m0"] == round
        });
    }
    for (i, old) in all.iter().zip(&before) {
        let s = w.state_answer(*i);
        assert_eq!(s["links"], 2, "machine {i}: {s}");
        assert_eq!(
            s["links_opened"], old["links_opened"],
            "machine {i} set a link up again: {s}"
        );
        assert_eq!(s["auth_failures"], 0, "machine {i} refused a peer: {s}");
        assert_eq!(s["leader"], leader.as_str());
        assert_eq!(s["term"], term);
        assert_eq!(s["leadership_changes"], old["leadership_changes"]);
        assert_eq!(s["keys"]["accepted"], json!([b]));
    }

    // A fourth machine holding only A, dialling the first by address (its mDNS announcements
    // are under A's tag, which nobody accepts any more): refused, audited, counted.
    let outsider = {
        let mut cmd = keyed(&lan, 3, dir.path(), &a_only);
        cmd.args(["--peer", &fixed(0)]);
        cmd
    };
    w.spawn_logged(3, outsider, std::fs::File::create(log(3)).expect("log"));
    w.until_state(0, "the A-only window refused", |s| {
        s["auth_failures"].as_u64() >= Some(1) && s["links"] == 2
    });
    let s = w.state_answer(3);
    assert_eq!(s["links"], 0, "{s}");
    assert!(s["records"]["rounds"].is_null(), "it read state: {s}");
    let audit = std::fs::read_to_string(log(0)).expect("stderr");
    assert!(
        audit.contains("peer refused: failed to prove the mesh secret"),
        "no audit line: {audit}"
    );
    w.kill(3);

    // A window holding only B on the fourth machine finds all three by mDNS (they announce
    // under B's tag now) and joins.
    // (Machine 3 again, a new process: window number 4 for the test.)
    w.spawn_logged(
        4,
        keyed(&lan, 3, dir.path(), &b_file),
        std::fs::File::create(log(4)).expect("log"),
    );
    w.until_state(4, "linked to all three, holding the state", |s| {
        s["links"] == 3 && s["counters"]["writes"] == sent && s["mdns_peers_found"] == 3
    });
    w.until_all_see(&[0, 1, 2, 4], &leader);
    let s = w.state_answer(4);
    assert_eq!(s["auth_failures"], 0, "{s}");
    assert_eq!(s["term"], term, "the newcomer took no leadership: {s}");
}
