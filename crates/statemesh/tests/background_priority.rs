//! The pulse's and the jobs' threads run below the window's CPU priority (Linux, where a thread
//! has a nice value of its own). Alone in its test binary: it counts the process's threads.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::time::Duration;

use statemesh::{Mesh, Secret};

/// A generous safety net; the windows agree within milliseconds.
const WITHIN: Duration = Duration::from_secs(15);

/// The nice value in a thread's `/proc/.../stat`: the nineteenth field, the seventeenth after
/// the command's closing parenthesis.
fn nice_in(stat: &str) -> i32 {
    let after = &stat[stat.rfind(')').expect("stat") + 1..];
    let nice = after.split_whitespace().nth(16).expect("nice field");
    nice.parse().expect("a number")
}

/// The nice values of this process's threads named `name`, read from `/proc`.
fn nice_of_threads(name: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let dir = task.expect("task").path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        out.push(nice_in(&stat));
    }
    out.sort_unstable();
    out
}

async fn window(dir: &Path, levels: Option<u8>) -> Mesh {
    let builder = Mesh::builder("priority")
        .secret(Secret::from_bytes([5; 32]))
        .runtime_dir(dir.join("run"))
        .state_dir(dir.join("state"));
    let builder = match levels {
        Some(n) => builder.background_nice(n),
        None => builder,
    };
    builder.join().await.expect("joins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pulse_and_the_jobs_run_below_the_window_unless_told_not_to() {
    // The runtime's threads, this one among them, run at the test's priority.
    let base = nice_in(&std::fs::read_to_string("/proc/thread-self/stat").expect("stat"));
    let dir = tempfile::tempdir().expect("tempdir");
    let lowered = window(dir.path(), None).await;
    let level = window(dir.path(), Some(0)).await;
    // Both pulses have run once both windows agree on a leader (views carry the claims).
    let (mut seen_a, mut seen_b) = (lowered.leadership(), level.leadership());
    let agreed = async {
        loop {
            let (a, b) = (seen_a.current(), seen_b.current());
            if a.leader.is_some() && a.leader == b.leader && a.term == b.term {
                return;
            }
            tokio::select! {
                _ = seen_a.recv() => {}
                _ = seen_b.recv() => {}
            }
        }
    };
    tokio::time::timeout(WITHIN, agreed)
        .await
        .expect("the windows agree on a leader");
    let expected = vec![base, (base + 15).min(19)];
    assert_eq!(nice_of_threads("statemesh-pulse"), expected, "pulses");
    assert_eq!(nice_of_threads("statemesh-jobs"), expected, "jobs");
}
