//! The vendored Automerge's fifteenth patch (`Transactable::batch_create_objects`, see
//! `vendor/README.md`): several keys of one map made in one batch, two splices of the op set
//! for the keys that have no op yet instead of two per key.
//!
//! Checked against the one-by-one path it stands for (`batch_create_object` per key, in the
//! same order): the map holds the same values; the document's op set is the one a receiver
//! builds by applying the change (their saved bytes are equal, which they are not when an op
//! is spliced at a wrong place); a rollback to any point leaves what the writes before it
//! made, byte for byte (each op's position must be the one it took had the keys been made one
//! by one, as a rollback undoes them in reverse). The entries mix new keys, keys holding a
//! value, deleted keys (a history, no value), keys given twice, nested lists and text.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test set-up: a failure is a bug to see.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ObjId, ObjType, ROOT, ReadDoc, hydrate};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Seeds run (each a different base document and batch).
const SEEDS: u64 = 40;

fn below(rng: &mut ChaCha8Rng, n: u32) -> u32 {
    rng.next_u32() % n
}

/// A base document (by actor 1) with a map of `keys` keys, some then deleted, and a second
/// writer's (actor 2) concurrent values at some, merged: keys holding a value, keys holding
/// two (a conflict), keys with only a history.
fn base(rng: &mut ChaCha8Rng, keys: u32) -> (Automerge, ObjId) {
    let mut doc = Automerge::new().with_actor(ActorId::from([1u8; 16].as_slice()));
    let mut tx = doc.transaction();
    let map = tx.put_object(ROOT, "m", ObjType::Map).unwrap();
    for k in 0..keys {
        tx.put(&map, format!("k{:03}", k * 2), i64::from(k))
            .unwrap();
    }
    tx.commit();
    let mut other = doc.fork().with_actor(ActorId::from([2u8; 16].as_slice()));
    let mut tx = doc.transaction();
    for k in 0..keys {
        if below(rng, 4) == 0 {
            tx.delete(&map, format!("k{:03}", k * 2)).unwrap();
        }
    }
    tx.commit();
    let mut tx = other.transaction();
    for k in 0..keys {
        if below(rng, 6) == 0 {
            tx.put(&map, format!("k{:03}", k * 2), "other").unwrap();
        }
    }
    tx.commit();
    doc.merge(&mut other).unwrap();
    (doc, map)
}

/// A record's value: a map of fields, sometimes with a list or text inside.
fn record(rng: &mut ChaCha8Rng, n: u32) -> hydrate::Value {
    let mut fields = vec![
        ("w", hydrate::Value::from("writer")),
        ("n", hydrate::Value::from(i64::from(n))),
    ];
    match below(rng, 4) {
        0 => fields.push((
            "l",
            hydrate::Value::from(vec![1i64.into(), 2i64.into(), 3i64.into()]),
        )),
        1 => fields.push((
            "t",
            hydrate::Text::new(automerge::TextEncoding::UnicodeCodePoint, "text").into(),
        )),
        _ => {}
    }
    fields
        .into_iter()
        .collect::<std::collections::HashMap<&str, hydrate::Value>>()
        .into()
}

/// The batch: keys new (odd, between the base's), holding a value or a history (even), and
/// some given twice.
fn entries(rng: &mut ChaCha8Rng, keys: u32) -> Vec<(String, hydrate::Value)> {
    let n = 1 + below(rng, 60);
    let mut out: Vec<(String, hydrate::Value)> = Vec::new();
    for i in 0..n {
        let key = match below(rng, 8) {
            0 if !out.is_empty() => out[below(rng, out.len() as u32) as usize].0.clone(),
            1 | 2 => format!("k{:03}", below(rng, keys) * 2),
            _ => format!("k{:03}", below(rng, keys + 1) * 2 + 1),
        };
        out.push((key, record(rng, i)));
    }
    out
}

fn borrowed(entries: &[(String, hydrate::Value)]) -> Vec<(&str, &hydrate::Value)> {
    entries.iter().map(|(k, v)| (k.as_str(), v)).collect()
}

fn hydrated(doc: &Automerge, map: &ObjId) -> hydrate::Value {
    ReadDoc::hydrate(doc, map, None).unwrap()
}

#[test]
fn a_batch_makes_what_one_by_one_makes() {
    for seed in 0..SEEDS {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let keys = 1 + below(&mut rng, 200);
        let (base, map) = base(&mut rng, keys);
        let entries = entries(&mut rng, keys);

        // The batch, committed.
        let mut batched = base.fork().with_actor(ActorId::from([3u8; 16].as_slice()));
        let mut tx = batched.transaction();
        let ids = tx.batch_create_objects(&map, &borrowed(&entries)).unwrap();
        tx.commit_with(CommitOptions::default().with_time(0));
        assert_eq!(ids.len(), entries.len());
        // Each id returned is the object its key's entry made, unless the key came again.
        for (i, ((key, _), id)) in entries.iter().zip(&ids).enumerate() {
            let last = entries.iter().rposition(|(k, _)| k == key).unwrap();
            let (_, held) = batched.get(&map, key.as_str()).unwrap().expect("a value");
            assert_eq!(i == last, held == *id, "seed {seed}: {key}'s object");
        }

        // The same entries one by one.
        let mut single = base.fork().with_actor(ActorId::from([3u8; 16].as_slice()));
        let mut tx = single.transaction();
        for (key, value) in &entries {
            tx.batch_create_object(&map, key.as_str(), value, false)
                .unwrap();
        }
        tx.commit_with(CommitOptions::default().with_time(0));
        assert_eq!(
            hydrated(&batched, &map),
            hydrated(&single, &map),
            "seed {seed}: the batch holds what one by one holds"
        );
        // And as many values at each key: an overwrite names every value it replaces.
        for key in single.keys(&map) {
            assert_eq!(
                batched.get_all(&map, key.as_str()).unwrap().len(),
                single.get_all(&map, key.as_str()).unwrap().len(),
                "seed {seed}: the values at {key}"
            );
        }

        // A receiver's op set, built by applying the change, is the writer's.
        let mut received = base.fork();
        let change = batched.get_last_local_change().unwrap();
        received.apply_changes([change]).unwrap();
        assert_eq!(
            received.save(),
            batched.save(),
            "seed {seed}: the writer's op set is the one the apply builds"
        );
    }
}

/// A rollback to a point inside the batch leaves the op set a receiver builds from the ops
/// kept: each op undone at the position it took.
#[test]
fn a_rollback_inside_a_batch_leaves_the_ops_before_it() {
    for seed in 0..SEEDS {
        let mut rng = ChaCha8Rng::seed_from_u64(1_000 + seed);
        let keys = 1 + below(&mut rng, 100);
        let (base, map) = base(&mut rng, keys);
        let entries = entries(&mut rng, keys);
        let mut doc = base.fork().with_actor(ActorId::from([3u8; 16].as_slice()));
        let mut tx = doc.transaction();
        tx.batch_create_objects(&map, &borrowed(&entries)).unwrap();
        let made = tx.pending_ops();
        let keep = below(&mut rng, made as u32 + 1) as usize;
        tx.rollback_to(keep);
        tx.commit_with(CommitOptions::default().with_time(0));
        let Some(change) = doc.get_last_local_change() else {
            assert_eq!(keep, 0, "seed {seed}: nothing kept, no change");
            continue;
        };
        assert_eq!(change.len(), keep, "seed {seed}");
        let mut received = base.fork();
        received.apply_changes([change]).unwrap();
        assert_eq!(
            received.save(),
            doc.save(),
            "seed {seed}: kept {keep} of {made} ops"
        );
    }
}
