//! A hostile LAN, for real (needs root; run by CI with `NEXTEST_PROFILE=ci`, skipped by default
//! elsewhere, see `.config/nextest.toml`): the `forger` scenario of `statemesh-bench` floods a
//! LAN of network namespaces with 1,000 forged mDNS records of the mesh — the tag copied from a
//! real announcement, no secret — naming hosts that do not exist, then a live host with every
//! port closed. The windows must not notice: no false suspicion, no leadership change, every
//! link up, nothing queued on the sockets that carry the links, and a window started during
//! the flood links to every other.

use std::process::Command;

use serde_json::Value;

fn forger(extra: &[&str]) -> Value {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (it creates network namespaces); it is meant for CI: run it as \
         root with NEXTEST_PROFILE=ci"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_statemesh-bench"))
        .args([
            "forger",
            "--net",
            "lan",
            "--quick",
            "--json",
            "--records",
            "1000",
        ])
        .args(extra)
        .output()
        .expect("statemesh-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "forger {extra:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    eprintln!("{line}");
    line
}

fn check(line: &Value) {
    assert_eq!(line["false_suspicions"], 0, "{line}");
    assert_eq!(line["leadership_changes"], 0, "{line}");
    assert_eq!(line["dual_leader_observations"], 0, "{line}");
    assert_eq!(line["links_intact"], true, "{line}");
    // Nothing piles up on the socket that carries the links: a packet or two in flight at a
    // sample, never the buffer-filling backlog (208 KiB here) that stopped heartbeats before.
    let queued = line["max_link_socket_tx_queue_b"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(queued < 16 * 1024, "{queued} B queued: {line}");
    // The flood was seen and probed, within the bounds.
    assert!(line["probes"].as_u64().unwrap_or(0) > 0, "{line}");
    assert!(
        line["max_candidates"].as_u64().unwrap_or(u64::MAX) <= 260,
        "{line}"
    );
    // Linked at all (the 2 s target is reported by the benchmark, not asserted here).
    assert!(line["late_window_linked_ms"].is_number(), "{line}");
}

/// Both variants in one test, one after the other: two fleets of windows and forgers at once
/// on a two-core machine would measure the machine, not the mesh.
#[test]
fn forged_records_of_absent_or_live_hosts_do_not_disturb_the_mesh() {
    check(&forger(&[]));
    check(&forger(&["--live"]));
}
