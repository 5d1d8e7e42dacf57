//! The `state_load` target: loading a persisted state file.

use super::common::{Snapshot, T0, assert_usable, new_node, peer_ids};
use super::escaping;
use super::hostile::hostile_changes;
use crate::Config;

/// Loading a persisted state file (what `Node::load` does with each file the runtime's store
/// finds at startup) from arbitrary bytes, into a fresh node as at startup. The input is read
/// twice: as the file's bytes, and as a program of hostile changes (see `hostile_sync`) whose
/// chunks make the file, so that well-formed changes with hostile contents are loaded too.
///
/// Never a panic; either a load report or a typed refusal that leaves the document untouched; a
/// report says whether anything changed, and loading the same bytes again changes nothing
/// (merging is idempotent). Then the node is usable: every read works, a write succeeds and
/// persists, the saved document reloads whole, and a new leadership term is above every term
/// stored in what was loaded.
pub fn state_load(data: &[u8]) {
    escaping(|| state_load_inner(data));
}

fn state_load_inner(data: &[u8]) {
    load_checked(data);
    // The second reading: a file of hostile changes (see `hostile_sync`), as a file written
    // with what a peer once sent would hold.
    let [_, me, ..] = peer_ids();
    let base = new_node(me, Config::default(), 1).replica().doc().clone();
    if let Some((chunks, _)) = hostile_changes(&base, data) {
        load_checked(&chunks.concat());
    }
}

/// Loads `file` into a fresh node, as at startup, and checks the outcome (see [`state_load`]).
fn load_checked(file: &[u8]) {
    let [_, me, ..] = peer_ids();
    let mut node = new_node(me, Config::default(), 1);
    let before = Snapshot::of(&mut node, T0);
    match node.load(file) {
        Ok(report) => {
            let heads = node.heads();
            assert_eq!(
                report.changed,
                heads != before.heads,
                "the report says changed = {} but the heads say otherwise",
                report.changed
            );
            let again = node.load(file).unwrap_or_else(|e| {
                panic!("bytes that loaded once are refused the next time: {e}")
            });
            assert!(!again.changed, "loading the same bytes twice changed more");
            assert_eq!(
                again.complete, report.complete,
                "the same bytes, judged twice"
            );
            assert_eq!(
                node.heads(),
                heads,
                "loading the same bytes twice changed more"
            );
        }
        Err(e) => {
            let after = Snapshot::of(&mut node, T0);
            before.assert_same(&after, &format_args!("refused file ({e})"));
        }
    }
    Snapshot::of(&mut node, T0);
    let stored = node.replica().max_stored_term();
    assert_usable(&mut node);
    node.handle_settled(T0);
    let term = node
        .my_term()
        .unwrap_or_else(|| panic!("alone and settled, the node does not lead"));
    assert!(
        term > stored,
        "new term {term} is not above the stored term {stored}"
    );
}
