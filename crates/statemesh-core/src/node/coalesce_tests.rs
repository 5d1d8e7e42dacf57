//! Local writes made between two sends leave as one change (the open change of
//! [`Node::transact`]), and a lone write leaves at once.

use super::tests::{deliver, linked, node, pump};
use super::*;
use crate::replica::{Scope, WriteError};

/// Two linked nodes that both hold channel `c` (its map is a change of its own, the same on
/// every peer), made by a first write of `a`.
fn linked_with_channel() -> (Node, Node) {
    let (mut a, mut b) = linked();
    a.put("c", "k0", &0i64, Scope::Durable).expect("write");
    pump(&mut a, &mut b, Time::ZERO);
    (a, b)
}

/// The changes `n` holds that are not among `heads`' ancestors.
fn changes_since(n: &Node, heads: &[ChangeHash]) -> usize {
    n.replica().doc().get_changes_meta(heads).len()
}

#[test]
fn writes_made_before_a_send_leave_as_one_change() {
    let (mut a, mut b) = linked_with_channel();
    let before = b.heads();
    for i in 1..=10i64 {
        let w = a
            .put("c", &format!("k{i}"), &i, Scope::Durable)
            .expect("write");
        assert!(w.changed);
        // Read at once, before any send.
        assert_eq!(a.get::<i64>("c", &format!("k{i}")).expect("read"), Some(i));
    }
    pump(&mut a, &mut b, Time::ZERO);
    assert_eq!(b.keys("c").len(), 11, "every write reached the peer");
    assert_eq!(changes_since(&b, &before), 1, "as one change");
}

#[test]
fn a_lone_write_leaves_with_the_first_send() {
    let (mut a, mut b) = linked_with_channel();
    a.put("c", "lone", &2i64, Scope::Durable).expect("write");
    // One poll of the writer's frames, before the peer answers anything.
    assert!(
        deliver(&mut a, &mut b, Time::ZERO),
        "the write leaves at once"
    );
    assert_eq!(b.get::<i64>("c", "lone").expect("read"), Some(2));
}

#[test]
fn a_failed_write_leaves_the_open_writes_before_it() {
    let (mut a, mut b) = linked_with_channel();
    a.put("c", "kept", &1i64, Scope::Durable).expect("write");
    let failed = a.transact(|tx| {
        tx.put("c", "undone", &2i64, Scope::Durable)?;
        tx.put("c", "", &3i64, Scope::Durable)
    });
    assert!(matches!(failed, Err(WriteError::InvalidName(_))));
    assert_eq!(a.get::<i64>("c", "undone").expect("read"), None);
    assert_eq!(a.get::<i64>("c", "kept").expect("read"), Some(1));
    let after = a.put("c", "after", &4i64, Scope::Durable).expect("write");
    pump(&mut a, &mut b, Time::ZERO);
    assert_eq!(b.get::<i64>("c", "kept").expect("read"), Some(1));
    assert_eq!(b.get::<i64>("c", "after").expect("read"), Some(4));
    assert_eq!(b.get::<i64>("c", "undone").expect("read"), None);
    assert_eq!(a.write_status(after.id).holders, 1);
}

#[test]
fn a_write_to_a_new_channel_commits_the_writes_before_it() {
    let (mut a, mut b) = linked();
    let first = a.put("c", "k", &1i64, Scope::Durable).expect("write").id;
    let second = a.put("d", "k", &2i64, Scope::Durable).expect("write").id;
    assert!(a.write_status(first).tracked && a.write_status(second).tracked);
    pump(&mut a, &mut b, Time::ZERO);
    assert_eq!(b.get::<i64>("c", "k").expect("read"), Some(1));
    assert_eq!(b.get::<i64>("d", "k").expect("read"), Some(2));
    assert_eq!(a.write_status(first).holders, 1);
    assert_eq!(a.write_status(second).holders, 1);
}

/// Persists are coalesced as sends are: while one is being stored, the writes made meanwhile
/// wait, and each is durable only once bytes that hold it are.
#[test]
fn writes_made_while_a_persist_is_stored_wait_for_the_next() {
    let mut a = node(7);
    let w1 = a.put("c", "k1", &1i64, Scope::Durable).expect("write").id;
    let p1 = a.poll_persist().expect("bytes to store");
    let w2 = a.put("c", "k2", &2i64, Scope::Durable).expect("write").id;
    let w3 = a.put("c", "k3", &3i64, Scope::Durable).expect("write").id;
    assert!(a.poll_persist().is_none(), "the writes wait for the store");
    a.persisted(p1.seq());
    assert!(a.write_status(w1).durable);
    assert!(!a.write_status(w2).durable && !a.write_status(w3).durable);
    let p2 = a.poll_persist().expect("the waiting writes");
    a.persisted(p2.seq());
    assert!(a.write_status(w2).durable && a.write_status(w3).durable);
    // What was stored loads back with every write.
    let mut loaded = node(8);
    for p in [p1, p2] {
        loaded.load(p.bytes()).expect("loads");
    }
    for (k, v) in [("k1", 1i64), ("k2", 2), ("k3", 3)] {
        assert_eq!(loaded.get::<i64>("c", k).expect("read"), Some(v));
    }
}

/// A change holds at most [`MAX_OPEN_WRITES`] writes.
#[test]
fn an_open_change_is_committed_at_its_bound() {
    let (mut a, mut b) = linked_with_channel();
    let before = b.heads();
    for i in 1..=MAX_OPEN_WRITES as i64 + 1 {
        a.put("c", "k", &i, Scope::Durable).expect("write");
    }
    pump(&mut a, &mut b, Time::ZERO);
    assert_eq!(changes_since(&b, &before), 2);
}

/// `b` ticks at `now`; `a` takes in the views it sends (only those).
fn views_of(b: &mut Node, a: &mut Node, now: Time) {
    b.handle_tick(now);
    let from = b.me().peer;
    let views: Vec<_> = std::iter::from_fn(|| b.poll_transmit())
        .filter(|t| codec::is_view(&t.frame))
        .collect();
    assert!(!views.is_empty(), "a view each heartbeat");
    for t in views {
        a.handle_frame(now, from, &t.frame).expect("a view");
    }
}

/// A peer's view that shows this node's document as committed says nothing of the writes
/// still open: they are acknowledged once the peer holds them, like any other, and the node
/// is not in sync until then. (Counting them as held by such a view left them unacknowledged
/// for ever: found by CI, a sidecar's `await replicated` timing out in
/// `lan_windows_rotate_keys_without_a_dropped_link`.)
#[test]
fn a_view_equal_to_the_committed_document_does_not_count_open_writes() {
    let (mut a, mut b) = linked_with_channel();
    // A change of the peer's, so that its next view is news to the writer.
    b.put("c", "theirs", &1i64, Scope::Durable).expect("write");
    pump(&mut a, &mut b, Time::ZERO);
    assert_eq!(a.heads(), b.heads());
    let open = a.put("c", "open", &2i64, Scope::Durable).expect("write").id;
    // The peer's next view, taken in by the writer before it sends its open write.
    let beat = Config::default().heartbeat_interval;
    views_of(&mut b, &mut a, Time::from_duration(beat));
    assert_eq!(a.write_status(open).holders, 0, "the peer lacks it");
    assert!(!a.in_sync(), "a write is still to leave");
    pump(&mut a, &mut b, Time::from_duration(beat));
    assert_eq!(b.get::<i64>("c", "open").expect("read"), Some(2));
    assert_eq!(a.write_status(open).holders, 1, "acknowledged once held");
    views_of(&mut b, &mut a, Time::from_duration(beat * 2));
    assert!(a.in_sync(), "the peer's next view shows the write");
}
