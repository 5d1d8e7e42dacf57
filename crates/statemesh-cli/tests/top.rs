//! `statemesh top` through a pseudo-terminal (CI has no terminal): it draws the mesh and quits
//! cleanly on `q`; without a terminal it says so and exits 5.

mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};
use support::{WITHIN, Windows, statemesh};

fn flags(cmd: &mut Command, dir: &Path) {
    cmd.args(["--mesh", "top-test"])
        .arg("--runtime-dir")
        .arg(dir.join("run"))
        .arg("--secret-file")
        .arg(dir.join("secret"));
}

/// A pseudo-terminal: the master side, and the path of the side a child gets.
fn pty() -> (OwnedFd, File) {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    tcsetwinsize(
        &master,
        Winsize {
            ws_row: 30,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .expect("window size");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().expect("utf-8 path"))
        .expect("opens the slave side");
    (master, slave)
}

#[test]
fn top_draws_the_mesh_and_quits_on_q() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = Windows::new();
    for n in 0..2 {
        let mut cmd = statemesh();
        cmd.arg("node").arg("--no-persist");
        flags(&mut cmd, dir.path());
        w.spawn(n, cmd);
    }
    let leader = w.id(w.by_id()[0]);
    w.until_all_see(&[0, 1], &leader);

    let (master, slave) = pty();
    let mut cmd = statemesh();
    cmd.arg("top");
    flags(&mut cmd, dir.path());
    let mut child = cmd
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("spawns");
    let mut reader = File::from(master.as_fd().try_clone_to_owned().expect("dup"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // The screen shows the mesh, its leader, both members live ("2/2"). Only changed cells are
    // redrawn and blank ones are skipped by cursor moves, so look for pieces of text with
    // escape sequences and spaces removed.
    let mut screen = String::new();
    let deadline = Instant::now() + WITHIN;
    let shows = |screen: &str, what: &str| {
        let want: String = what.split_whitespace().collect();
        text_of(screen).contains(&want)
    };
    while !(shows(&screen, "statemesh top") && shows(&screen, &leader) && shows(&screen, "2/2")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("top never showed the mesh; it showed:\n{screen}"));
        screen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let mut writer = File::from(master);
    writer.write_all(b"q").expect("types q");
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = done_rx.recv_timeout(WITHIN).unwrap_or_else(|_| {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        panic!("top did not quit on q")
    });
    assert!(status.expect("waits").success());
}

/// The printable text of terminal output: escape sequences and whitespace removed.
fn text_of(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte; other escapes: ESC and one character.
            if chars.next_if_eq(&'[').is_some() {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if !c.is_whitespace() && !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[test]
fn top_without_a_terminal_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = statemesh();
    cmd.arg("top");
    flags(&mut cmd, dir.path());
    let out = cmd.stdin(Stdio::null()).output().expect("runs");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a terminal"));
}
