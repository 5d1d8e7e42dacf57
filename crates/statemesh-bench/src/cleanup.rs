//! What the harness must undo however it ends: window processes, network namespaces and
//! temporary directories, registered here as they are made, so that Ctrl-C (or SIGTERM) still
//! removes them. Normal exits undo them through `Drop` and unregister them first.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct Registry {
    pids: BTreeSet<u32>,
    namespaces: BTreeSet<String>,
    dirs: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pids: BTreeSet::new(),
    namespaces: BTreeSet::new(),
    dirs: BTreeSet::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A window process to SIGKILL on an interrupted exit.
pub(crate) fn add_pid(pid: u32) {
    registry().pids.insert(pid);
}

/// The process is gone (or being killed by its owner).
pub(crate) fn remove_pid(pid: u32) {
    registry().pids.remove(&pid);
}

/// The JSON line to print if a signal interrupts the run, and whether the line was printed.
static LAST_LINE: Mutex<(Option<String>, bool)> = Mutex::new((None, false));

fn last_line() -> MutexGuard<'static, (Option<String>, bool)> {
    LAST_LINE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What to print on stdout if a signal interrupts the run.
pub(crate) fn set_interrupted_line(line: String) {
    last_line().0 = Some(line);
}

/// Prints the run's one JSON line, unless a signal handler printed one already.
pub(crate) fn print_line(line: &str) {
    let mut l = last_line();
    if !l.1 {
        println!("{line}");
        l.1 = true;
    }
}

/// A network namespace to delete on an interrupted exit. Registered *before* it is created, so
/// that an interruption in between still deletes it.
pub(crate) fn add_namespace(name: &str) {
    registry().namespaces.insert(name.to_owned());
}

/// The owner is about to delete the namespace: whether it is still registered (if not, a
/// signal handler deleted it already).
pub(crate) fn take_namespace(name: &str) -> bool {
    registry().namespaces.remove(name)
}

/// A temporary directory to remove on an interrupted exit.
pub(crate) fn add_dir(dir: PathBuf) {
    registry().dirs.insert(dir);
}

/// The directory was removed by its owner.
pub(crate) fn remove_dir(dir: &std::path::Path) {
    registry().dirs.remove(dir);
}

/// Kills, deletes and removes everything still registered.
fn undo_all() {
    let r = std::mem::take(&mut *registry());
    for pid in r.pids {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    for ns in r.namespaces {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
    for dir in r.dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Undoes everything registered when SIGINT, SIGTERM or SIGHUP arrives, then exits with 130.
pub(crate) fn on_signals() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    // Register the handlers now, on this thread, so that no signal is missed once this returns.
    let (mut int, mut term, mut hup) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let name = rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                }
            });
            // Held until exit: the main thread can no longer print its own line.
            let mut line = last_line();
            eprintln!("statemesh-bench: {name}: stopping windows, deleting namespaces");
            undo_all();
            if let (Some(l), false) = (&line.0, line.1) {
                println!("{l}");
                line.1 = true;
            }
            std::process::exit(130);
        })?;
    Ok(())
}
