//! The change notification of a local transaction, read from what its writes noted
//! (`tx::Noted`), against the same notification read from the change's operations and the
//! document.

use proptest::prelude::*;

use super::tests::{replica, scope, sync};
use super::*;

#[derive(Debug, Clone)]
enum Write {
    Put { key: u8, value: u8, presence: bool },
    Delete { key: u8 },
    Add { name: u8, by: i8, presence: bool },
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        (0..5u8, 0..3u8, any::<bool>()).prop_map(|(key, value, presence)| Write::Put {
            key,
            value,
            presence
        }),
        (0..5u8).prop_map(|key| Write::Delete { key }),
        (0..3u8, -2..3i8, any::<bool>()).prop_map(|(name, by, presence)| Write::Add {
            name,
            by,
            presence
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Transactions of several writes (the same entry written twice, deleted after a write,
    /// rewritten with the value it holds, written after another window's write of it): the
    /// notification from the writes' notes equals, entry for entry and writer for writer, the
    /// one read from the change and the document, and the presence index ends the same.
    #[test]
    fn a_transactions_notes_equal_what_its_change_holds(
        rounds in proptest::collection::vec(
            (proptest::collection::vec(write(), 1..6), any::<bool>()),
            1..12,
        )
    ) {
        let (mut a, mut b) = (replica(1), replica(2));
        for (writes, other_first) in rounds {
            if other_first {
                // Another window's write of the same entries, merged in first.
                b.transact(|tx| {
                    tx.put("c", "k0", &9u8, Scope::Presence)?;
                    tx.add("n0", 1, Scope::Durable)
                })
                .expect("b writes");
                sync(&mut a, &mut b);
            }
            let before = a.heads();
            a.transact(|tx| {
                for w in &writes {
                    match w {
                        Write::Put { key, value, presence } => {
                            tx.put("c", &format!("k{key}"), value, scope(*presence))?
                        }
                        Write::Delete { key } => tx.delete("c", &format!("k{key}"))?,
                        Write::Add { name, by, presence } => {
                            tx.add(&format!("n{name}"), i64::from(*by), scope(*presence))?
                        }
                    }
                }
                Ok(())
            })
            .expect("a writes");
            // The notes are there whenever the transaction made a change.
            prop_assert_eq!(a.local.is_some(), a.heads() != before);
            let noted = a.touched_since(&before);
            let presence_after_notes = a.presence.clone();
            // Asked again, the replica reads the change itself (the notes were used up).
            prop_assert!(a.local.is_none());
            let read = a.touched_since(&before);
            prop_assert_eq!(&noted, &read);
            prop_assert_eq!(presence_after_notes, a.presence.clone());
        }
    }
}

/// A writer's local changes leave the standby alone (no apply on the writer's turn), and so
/// does the next receive (it reads what the standby lacks, to restore the document should the
/// message fail, and applies nothing to it); the catch-up a runtime makes later applies them
/// all in one batch: the document and the standby then hold the same changes.
#[test]
fn the_standby_catches_up_with_a_writer_and_a_receive_in_one_batch() {
    let (mut a, mut b) = (replica(1), replica(2));
    b.transact(|tx| tx.put("c", "from-b", &1u8, Scope::Durable))
        .expect("b writes");
    // A received change makes `a` keep a standby.
    sync(&mut a, &mut b);
    a.catch_up_standby_within(usize::MAX);
    let kept = a
        .standby
        .as_ref()
        .expect("a receive leaves a standby")
        .get_heads();
    assert_eq!(kept, a.doc.get_heads());
    for n in 0..20u64 {
        let before = a.heads();
        a.transact(|tx| tx.put("c", &format!("k{n}"), &n, Scope::Durable))
            .expect("a writes");
        a.touched_since(&before);
        let standby = a.standby.as_ref().expect("the standby stays");
        assert_eq!(
            standby.get_heads(),
            kept,
            "a local write touched the standby"
        );
    }
    assert_eq!(a.standby_lag(), Some(20));
    b.transact(|tx| tx.put("c", "again", &2u8, Scope::Durable))
        .expect("b writes");
    sync(&mut a, &mut b);
    assert_eq!(
        a.standby_lag(),
        Some(21),
        "the receive left the standby alone: the writer's changes and the received one wait"
    );
    a.catch_up_standby_within(usize::MAX);
    let standby = a.standby.as_ref().expect("the standby stays");
    assert_eq!(standby.get_heads(), a.doc.get_heads());
    assert_eq!(a.doc.get_heads(), b.doc.get_heads());
}
