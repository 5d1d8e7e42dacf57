//! Tests that need root: here, a second user trying the local socket. Run by CI (as root, with
//! `NEXTEST_PROFILE=ci`); skipped by default elsewhere (see `.config/nextest.toml`).
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use rand::SeedableRng;
use statemesh_core::PeerId;
use statemesh_net::discovery::Discovered;
use statemesh_net::local::{LocalPresence, mesh_dir};
use statemesh_net::secret::Secret;

const NOBODY: u32 = 65534;

fn require_root() {
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test needs root (it runs a process as another user); it is meant for CI: \
         run it as root with NEXTEST_PROFILE=ci"
    );
}

#[tokio::test]
async fn a_foreign_uid_is_refused_on_the_local_socket() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let me = PeerId::generate(1, &mut rng);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let presence = LocalPresence::start(
        &run,
        "ws",
        me,
        ([127, 0, 0, 1], 9).into(),
        Secret::from_bytes([1; 32]),
        tx,
    )
    .expect("starts");
    assert_eq!(rx.recv().await, Some(Discovered::Settled));
    // Open the path to the other user (the directories are private by design) so that only the
    // peer-credential check stands in its way.
    for d in [dir.path(), run.as_path(), mesh_dir(&run, "ws").as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    }
    std::fs::set_permissions(presence.path(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod");
    // As nobody: connect, send a plausible handshake, report how many bytes came back.
    let script = r#"
import socket, sys, os
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
got = b""
try:
    # The window may hang up before the hello is even written: a refusal too.
    s.sendall(b"SMLOC\x01\x00\x00" + os.urandom(16) + os.urandom(32) + bytes([0]))
    s.settimeout(5)
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
except (BrokenPipeError, ConnectionResetError, TimeoutError):
    pass
print(len(got))
"#;
    let path = presence.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&path)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
    })
    .await
    .expect("joins")
    .expect("python3 runs");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "the foreign uid got bytes back"
    );
    // The client has seen the connection close, so the window has already counted it.
    assert_eq!(presence.auth_failures(), 1, "the refusal was counted");
    // And nobody was reported as a peer.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
}
