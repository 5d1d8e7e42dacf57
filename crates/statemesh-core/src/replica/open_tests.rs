//! The open change's new records: left to be made across writes, made in one batch when the
//! change is committed, before another write that needs them and before a read of records.

use super::tests::{replica, sync};
use super::{Replica, Scope, WriteError};

fn put(r: &mut Replica, key: &str, v: i64) -> bool {
    r.write(|tx| tx.put("c", key, &v, Scope::Durable))
        .expect("a write")
        .1
        .is_some()
}

/// Asserts that a peer that synced with `r` reads channel `c` as `want` (keys in order).
fn assert_a_peer_reads(r: &mut Replica, want: &[(&str, i64)]) {
    let mut peer = replica(9);
    sync(r, &mut peer);
    let keys = peer.keys("c", |_| true);
    let read: Vec<(String, Option<i64>)> = keys
        .into_iter()
        .map(|k| {
            let v = peer.get::<i64>("c", &k, |_| true).expect("a read");
            (k, v)
        })
        .collect();
    let want: Vec<(String, Option<i64>)> = want
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Some(*v)))
        .collect();
    assert_eq!(read, want);
}

/// New records written one write at a time are made together when the change is committed:
/// the open change holds no operation for them until then, and one change holds them all.
#[test]
fn new_records_of_separate_writes_are_made_in_one_batch_at_the_commit() {
    let mut r = replica(1);
    assert!(put(&mut r, "first", 0), "the channel's first write");
    r.settle();
    let heads = r.heads();
    for (i, key) in ["b", "a", "c"].into_iter().enumerate() {
        assert!(put(&mut r, key, i as i64), "a new record is a change");
    }
    let open = r.open.as_ref().expect("the writes are left open");
    assert_eq!((open.writes, open.made.len()), (3, 3), "none made yet");
    let settled = r.settle();
    assert_eq!(settled.len(), 1, "one change");
    assert_eq!(settled[0].1, 3, "holding the three writes");
    assert!(r.open.is_none());
    let change = r.doc.get_changes(&heads);
    assert_eq!(change.len(), 1);
    // Each record: its map and its three fields.
    assert_eq!(change[0].len(), 3 * 4);
    assert_a_peer_reads(&mut r, &[("a", 1), ("b", 0), ("c", 2), ("first", 0)]);
}

/// Reads see every write made before them, its record made or not: a value, the keys, the
/// channels, the writer.
#[test]
fn reads_see_the_new_records_of_writes_left_open() {
    let mut r = replica(1);
    let me = r.me;
    // A channel whose records were all deleted: its map is there, empty.
    r.write(|tx| tx.put("other", "gone", &0i64, Scope::Durable))
        .expect("a write");
    r.write(|tx| tx.delete("other", "gone")).expect("a delete");
    r.settle();
    assert!(r.channels().is_empty());
    put(&mut r, "x", 1);
    put(&mut r, "y", 2);
    assert_eq!(r.get::<i64>("c", "y", |_| true).expect("a read"), Some(2));
    assert_eq!(
        r.open.as_ref().expect("open").made.len(),
        0,
        "made by the read"
    );
    put(&mut r, "z", 3);
    assert_eq!(r.keys("c", |_| true), ["x", "y", "z"]);
    put(&mut r, "w", 4);
    assert_eq!(r.writer("c", "w"), Some(me));
    r.write(|tx| tx.put("other", "again", &5i64, Scope::Durable))
        .expect("a write");
    assert_eq!(r.open.as_ref().expect("open").made.len(), 1);
    assert_eq!(r.channels(), ["c", "other"]);
    assert_eq!(
        r.open.as_ref().expect("open").writes,
        5,
        "still one open change"
    );
}

/// A write after new records left open, to one of them, to another record, a delete or a
/// counter, comes after them in the change: what the peers read is what the writes say.
#[test]
fn other_writes_come_after_the_new_records_left_open() {
    let mut r = replica(1);
    put(&mut r, "old", 0);
    r.settle();
    put(&mut r, "a", 1);
    put(&mut r, "b", 2);
    // A rewrite of a record left open: the records are made first, then it is written.
    assert!(put(&mut r, "a", 10));
    // The same value again changes nothing.
    assert!(!put(&mut r, "a", 10), "an equal value is no change");
    put(&mut r, "c", 3);
    r.write(|tx| tx.delete("c", "c")).expect("a delete");
    put(&mut r, "d", 4);
    r.write(|tx| tx.put("c", "old", &7i64, Scope::Durable))
        .expect("a write");
    r.write(|tx| tx.add("n", 2, Scope::Durable))
        .expect("an add");
    put(&mut r, "e", 5);
    r.settle();
    assert_a_peer_reads(
        &mut r,
        &[("a", 10), ("b", 2), ("d", 4), ("e", 5), ("old", 7)],
    );
    assert_eq!(r.counter("n", |_| true), 2);
}

/// A write that fails after its transaction made the records earlier writes left open (by
/// writing a record that exists) is undone whole, and those records are still owed: the
/// commit makes them.
#[test]
fn a_failed_write_leaves_the_earlier_writes_records_owed() {
    let mut r = replica(1);
    put(&mut r, "old", 0);
    r.settle();
    put(&mut r, "a", 1);
    put(&mut r, "b", 2);
    let failed = r.write(|tx| {
        tx.put("c", "fresh", &9i64, Scope::Durable)?;
        tx.put("c", "old", &8i64, Scope::Durable)?;
        tx.put("c", "late", &9i64, Scope::Durable)?;
        Err::<(), _>(WriteError::InvalidName("refused by the test".into()))
    });
    assert!(failed.is_err());
    let open = r.open.as_ref().expect("the earlier writes stay open");
    assert_eq!((open.writes, open.made.len()), (2, 2), "a and b owed again");
    // A failure before any record was made leaves them owed too.
    let failed = r.write(|tx| {
        tx.put("c", "other", &9i64, Scope::Durable)?;
        Err::<(), _>(WriteError::InvalidName("refused by the test".into()))
    });
    assert!(failed.is_err());
    assert_eq!(r.open.as_ref().expect("open").made.len(), 2);
    put(&mut r, "c", 3);
    r.settle();
    assert_a_peer_reads(&mut r, &[("a", 1), ("b", 2), ("c", 3), ("old", 0)]);
}
