//! The demo runs end to end with real window processes and tells the failover story. (The same
//! story on the simulator, `simulated_demo`, is an example binary, tested with the examples.)

use std::process::Command;

fn demo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_statemesh"))
        .arg("demo")
        .args(args)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn demo_tells_the_failover_story_with_real_windows() {
    let text = demo(&["--windows", "4", "--pace-ms", "0"]);
    for line in [
        "starting 4 window processes",
        "all 4 windows agree: window",
        "window D  sees  api=up  cache=up  db=up",
        "every window shows cache=down",
        "SIGKILL window",
        "all 3 survivors agree: window",
        "failover took",
        "every survivor shows cache=up",
        "The end.",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
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
