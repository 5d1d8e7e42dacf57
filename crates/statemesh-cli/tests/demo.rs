//! The demo runs end to end and tells the failover story.

use std::process::Command;

#[test]
fn demo_tells_the_failover_story() {
    let out = Command::new(env!("CARGO_BIN_EXE_statemesh"))
        .args(["demo", "--windows", "5", "--seed", "7"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("all 5 windows agree: window A leads (term 1)"),
        "{text}"
    );
    assert!(text.contains("SIGKILL window A"), "{text}");
    assert!(
        text.contains("all 4 survivors agree: window B leads (term 2)"),
        "{text}"
    );
    assert!(text.contains("desired 5, running 4"), "{text}");
    assert!(text.contains("window C leads (term 3)"), "{text}");
}

#[test]
fn demo_refuses_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_statemesh"))
        .args(["demo", "--windows", "1"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--windows"));
}
