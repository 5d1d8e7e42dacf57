//! Replays every committed fuzz input through the function its fuzz target calls
//! (`statemesh_core::fuzzing`, and `statemesh_cli::fuzzing` for the sidecar's target): the
//! crashes found so far (`fuzz/crashers/<target>/`) and the seed corpus
//! (`fuzz/corpus/<target>/`). A fixed crash stays fixed under the ordinary test runner.
//!
//! The seed inputs are generated (the `seeds` functions of the same modules); a test checks
//! that the committed ones are current. After a change that alters them, rewrite them with
//!
//! ```sh
//! STATEMESH_WRITE_SEEDS=1 cargo test -p statemesh-tests --test crashers
//! ```

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use statemesh_cli::fuzzing as cli;
use statemesh_core::fuzzing;

/// Every fuzz target: the core's, then the command-line tool's.
fn targets() -> impl Iterator<Item = &'static str> {
    fuzzing::TARGETS.into_iter().chain(cli::TARGETS)
}

/// The function behind fuzz target `name`.
fn target(name: &str) -> Option<fn(&[u8])> {
    fuzzing::target(name).or_else(|| cli::target(name))
}

/// The generated seeds of fuzz target `name`.
fn seeds(name: &str) -> Vec<(String, Vec<u8>)> {
    let mut seeds = fuzzing::seeds(name);
    seeds.extend(cli::seeds(name));
    seeds
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The input files of `fuzz/<kind>/<target>/`, sorted (READMEs left out).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && !is_readme(p))
        .collect();
    files.sort();
    files
}

fn is_readme(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("README"))
}

/// Runs every crasher and corpus input of `target`; fails naming each input that panics.
fn replay(target: &str) {
    let run = self::target(target).expect("a known target");
    let mut ran = 0;
    let mut failed = Vec::new();
    for kind in ["crashers", "corpus"] {
        for path in inputs(kind, target) {
            let data = fs::read(&path).expect("readable input");
            ran += 1;
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(ran > 0, "no committed inputs for {target}");
    assert!(
        failed.is_empty(),
        "{} of {ran} inputs of {target} fail (the panic messages are above):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn frame_decode() {
    replay("frame_decode");
}

#[test]
fn sync_receive() {
    replay("sync_receive");
}

#[test]
fn state_load() {
    replay("state_load");
}

#[test]
fn liveness() {
    replay("liveness");
}

#[test]
fn sidecar_rpc() {
    replay("sidecar_rpc");
}

/// Every target has its source file, a seed corpus and a crashers folder with its README, and
/// no folder belongs to an unknown target.
#[test]
fn every_target_has_its_folders() {
    let dir = fuzz_dir();
    for target in targets() {
        assert!(
            dir.join("fuzz_targets")
                .join(format!("{target}.rs"))
                .is_file(),
            "no fuzz/fuzz_targets/{target}.rs"
        );
        assert!(
            !inputs("corpus", target).is_empty(),
            "no seeds in fuzz/corpus/{target}"
        );
        assert!(
            dir.join("crashers")
                .join(target)
                .join("README.md")
                .is_file(),
            "no fuzz/crashers/{target}/README.md"
        );
    }
    for kind in ["corpus", "crashers"] {
        for entry in fs::read_dir(dir.join(kind)).expect("the folder exists") {
            let name = entry.expect("readable").file_name();
            let name = name.to_string_lossy();
            assert!(
                target(&name).is_some(),
                "fuzz/{kind}/{name} belongs to no target"
            );
        }
    }
}

/// The generated seeds are committed as they are generated today (so they match the fixtures
/// the targets build); `STATEMESH_WRITE_SEEDS=1` rewrites them.
#[test]
fn generated_seeds_are_current() {
    let write = std::env::var_os("STATEMESH_WRITE_SEEDS").is_some();
    let mut stale = Vec::new();
    for target in targets() {
        let dir = fuzz_dir().join("corpus").join(target);
        for (name, bytes) in seeds(target) {
            let path = dir.join(&name);
            if fs::read(&path).ok().as_deref() == Some(bytes.as_slice()) {
                continue;
            }
            if write {
                fs::create_dir_all(&dir).expect("creates the corpus folder");
                fs::write(&path, &bytes).expect("writes the seed");
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "generated seeds missing or out of date (rewrite them with \
         STATEMESH_WRITE_SEEDS=1 cargo test -p statemesh-tests --test crashers):\n{}",
        stale.join("\n")
    );
}
