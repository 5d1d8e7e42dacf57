//! The vendored Automerge's apply of received changes (see `vendor/README.md`), checked
//! against what the writers wrote, not against Automerge's apply.
//!
//! The fourth patch (the walk seeks past keys no received operation touches): several writers
//! put and delete keys of one map of a few hundred keys, concurrently and in turns (each
//! sometimes merging another's changes first); a receiver gets every change in batches of
//! random sizes. For every key, the values the receiver holds (`get_all`) must be the model's
//! visible operations: the puts that no operation names as a predecessor; and `get` must
//! return the one with the greatest operation id, and the key's conflict flag must be set
//! exactly when several are visible. A walk that skipped a key a received operation touches,
//! or that lost a successor, fails this.
//!
//! The fifth patch (the runs of received operations inserted in one pass per column): writers
//! make records (maps of a string, an integer and a boolean, some with a list) concurrently,
//! so that one batch inserts runs of operations at many places of the op set; receivers
//! batching differently must hold every record as written (also once saved and loaded), and
//! the same document. The sixth and seventh patches (no values followed for an inactive patch
//! log; maps new in a batch walked without positioning a column) run under both tests: every
//! receive here has an inactive log, and most objects these batches touch are new.
//!
//! The eighth patch (`get_map_object`, reading 4 columns) is checked against `get` (and the
//! fourteenth, `get_map_objects`, against it), and the
//! ninth (a local change kept as committed) against a rebuild. The tenth (the walk seeks past
//! a key's overwritten ops) against the model on keys rewritten hundreds of times. The
//! thirteenth (a rebuild decodes only its changes' writers' operations) against the changes
//! as received.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test set-up: a failure is a bug to see.

use std::collections::{BTreeMap, HashSet};

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, Change, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Keys of the map: enough that untouched runs of them are long enough to be skipped.
const KEYS: u32 = 300;

/// Seeds run (each a different history and batching).
const SEEDS: u64 = 60;

fn key(n: u32) -> String {
    format!("k{n:03}")
}

fn below(rng: &mut ChaCha8Rng, n: u32) -> u32 {
    rng.next_u32() % n
}

/// Three writers starting from `base`, with actors of their own.
fn writers_of(base: &Automerge) -> Vec<Automerge> {
    (1..=3u8)
        .map(|a| base.fork().with_actor(ActorId::from([a; 16].as_slice())))
        .collect()
}

/// Picks the writer of the next change and, one time in `one_in`, merges another writer's
/// changes into it first; returns the writer's index.
fn next_writer(rng: &mut ChaCha8Rng, writers: &mut [Automerge], one_in: u32) -> usize {
    let w = below(rng, 3) as usize;
    if below(rng, one_in) == 0 {
        let mut other = writers[(w + 1 + below(rng, 2) as usize) % 3].clone();
        writers[w].merge(&mut other).unwrap();
    }
    w
}

/// `base` with every writer's changes merged.
fn merged(base: &Automerge, writers: &mut [Automerge]) -> Automerge {
    let mut all = base.fork();
    for w in writers {
        all.merge(w).unwrap();
    }
    all
}

/// A history: the base document (the map made, then filled) and every change made after it,
/// in an order that respects their dependencies.
fn history(seed: u64) -> (Automerge, ObjId, Vec<Change>) {
    let keys = (0..KEYS).filter(|n| n % 3 != 0);
    map_history(seed, keys, 40, 3, |rng, put_or_delete| {
        // A few clustered keys, as records written in one change are, and a few scattered.
        let start = below(rng, KEYS);
        for i in 0..(1 + below(rng, 6)) {
            let n = match below(rng, 3) {
                0 => (start + i) % KEYS,
                // A few hot keys, so that writers conflict.
                1 => below(rng, 8) * (KEYS / 8),
                _ => below(rng, KEYS),
            };
            put_or_delete(n, below(rng, 5) == 0);
        }
    })
}

/// A history of map `m`: the base document (the map made, `keys` put in it), then `changes`
/// changes by three writers (one merging another's changes first, one time in `merge_one_in`),
/// each made by `ops`, which calls its second argument to put key `n` (a new value each time)
/// or, with `true`, delete it (skipped when the writer does not see the key). Returns the base,
/// the map and every change after the base, in an order that respects their dependencies.
fn map_history(
    seed: u64,
    keys: impl Iterator<Item = u32>,
    changes: usize,
    merge_one_in: u32,
    mut ops: impl FnMut(&mut ChaCha8Rng, &mut dyn FnMut(u32, bool)),
) -> (Automerge, ObjId, Vec<Change>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut base = Automerge::new().with_actor(ActorId::from([0xf0u8; 16].as_slice()));
    let mut tx = base.transaction();
    let map = tx.put_object(ROOT, "m", ObjType::Map).unwrap();
    for n in keys {
        tx.put(&map, key(n), i64::from(n)).unwrap();
    }
    tx.commit();
    let mut writers = writers_of(&base);
    let mut value = 1_000_000i64;
    for _ in 0..changes {
        let w = next_writer(&mut rng, &mut writers, merge_one_in);
        let mut tx = writers[w].transaction();
        ops(&mut rng, &mut |n, delete| {
            if delete {
                // Deleting a key this writer does not see is an error: skip it.
                let _ = tx.delete(&map, key(n));
            } else {
                value += 1;
                tx.put(&map, key(n), value).unwrap();
            }
        });
        tx.commit();
    }
    let all = merged(&base, &mut writers);
    let changes = all.get_changes(&base.get_heads());
    (base, map, changes)
}

/// What the model holds: for every key, its visible puts (operation counter, actor, value).
type Model = BTreeMap<String, Vec<(u64, Vec<u8>, i64)>>;

/// The model: for every key of `map`, the visible puts (operation id -> value) after
/// `base`'s changes and `changes`, from the changes' decoded operations.
fn model(base: &Automerge, map: &ObjId, changes: &[Change]) -> Model {
    let mut puts: BTreeMap<(u64, Vec<u8>), (String, i64)> = BTreeMap::new();
    let mut overwritten: HashSet<(u64, Vec<u8>)> = HashSet::new();
    let base_changes: Vec<Change> = base.get_changes(&[]);
    let map_id = match map {
        ObjId::Id(ctr, actor, _) => (*ctr, actor.to_bytes().to_vec()),
        ObjId::Root => unreachable!("the map is not the root"),
    };
    for change in base_changes.iter().chain(changes) {
        let actor = change.actor_id().to_bytes().to_vec();
        let start = change.start_op().get();
        for (i, op) in change.decode().operations.iter().enumerate() {
            let id = (start + i as u64, actor.clone());
            for p in op.pred.iter() {
                overwritten.insert((p.counter(), p.actor().to_bytes().to_vec()));
            }
            let automerge::legacy::ObjectId::Id(obj) = &op.obj else {
                continue;
            };
            if (obj.counter(), obj.actor().to_bytes().to_vec()) != map_id {
                continue;
            }
            let automerge::legacy::Key::Map(k) = &op.key else {
                continue;
            };
            if let automerge::legacy::OpType::Put(ScalarValue::Int(v)) = &op.action {
                puts.insert(id, (k.to_string(), *v));
            }
        }
    }
    let mut out = Model::new();
    for ((ctr, actor), (k, v)) in puts {
        if !overwritten.contains(&(ctr, actor.clone())) {
            out.entry(k).or_default().push((ctr, actor, v));
        }
    }
    out
}

/// A receiver of `base` that gets `changes` in batches of 1 to `max_batch` changes (random);
/// the number of batches.
fn receive_in_batches(
    base: &Automerge,
    changes: &[Change],
    rng: &mut ChaCha8Rng,
    max_batch: u32,
) -> (Automerge, usize) {
    let mut receiver = base
        .fork()
        .with_actor(ActorId::from([0xeeu8; 16].as_slice()));
    let (mut rest, mut batches) = (changes, 0);
    while !rest.is_empty() {
        let n = (1 + below(rng, max_batch) as usize).min(rest.len());
        receiver.apply_changes(rest[..n].iter().cloned()).unwrap();
        rest = &rest[n..];
        batches += 1;
    }
    (receiver, batches)
}

/// Every key of `map` in `receiver` (`keys` of them) holds what `expected` (the model) says:
/// its values, its winner, its conflict flag, the keys listed and counted; and the document
/// loads back from its save.
fn assert_model(seed: u64, receiver: &Automerge, map: &ObjId, expected: &Model, keys: u32) {
    for n in 0..keys {
        let k = key(n);
        let mut held: Vec<i64> = receiver
            .get_all(map, k.as_str())
            .unwrap()
            .into_iter()
            .map(|(v, _)| match v {
                Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Int(i) => *i,
                    other => panic!("seed {seed}: {k} holds {other:?}"),
                },
                other => panic!("seed {seed}: {k} holds {other:?}"),
            })
            .collect();
        held.sort_unstable();
        let visible = expected.get(&k).cloned().unwrap_or_default();
        let mut want: Vec<i64> = visible.iter().map(|(_, _, v)| *v).collect();
        want.sort_unstable();
        assert_eq!(held, want, "seed {seed}: the values of {k}");
        let winner = visible
            .iter()
            .max_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)))
            .map(|(_, _, v)| *v);
        let got = receiver
            .get(map, k.as_str())
            .unwrap()
            .and_then(|(v, _)| match v {
                Value::Scalar(s) => s.as_i64(),
                other => panic!("seed {seed}: {k} holds {other:?}"),
            });
        assert_eq!(got, winner, "seed {seed}: the value of {k}");
    }
    // The keys Automerge lists, and counts, from its index of each key's winning value.
    let listed: Vec<String> = expected.keys().cloned().collect();
    assert_eq!(
        receiver.keys(map).collect::<Vec<_>>(),
        listed,
        "seed {seed}: keys"
    );
    assert_eq!(receiver.length(map), listed.len(), "seed {seed}: length");
    // The conflict flag Automerge keeps per key: set when several values are visible.
    for item in receiver.map_range(map, ..) {
        let visible = expected.get(item.key.as_ref()).map_or(0, Vec::len);
        assert_eq!(
            item.conflict,
            visible > 1,
            "seed {seed}: the conflict flag of {}",
            item.key
        );
    }
    // Saved, it loads back the same (the successors the apply wrote are consistent).
    let reloaded = Automerge::load(&receiver.save()).unwrap();
    assert_eq!(reloaded.get_heads(), receiver.get_heads(), "seed {seed}");
    for n in 0..keys {
        let k = key(n);
        assert_eq!(
            reloaded.get_all(map, k.as_str()).unwrap(),
            receiver.get_all(map, k.as_str()).unwrap(),
            "seed {seed}: {k} reloaded"
        );
    }
}

#[test]
fn batched_receives_into_one_map_match_the_model() {
    let mut batches_seen = 0;
    for seed in 0..SEEDS {
        let (base, map, changes) = history(seed);
        let expected = model(&base, &map, &changes);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let (receiver, batches) = receive_in_batches(&base, &changes, &mut rng, 8);
        batches_seen += batches;
        assert_model(seed, &receiver, &map, &expected, KEYS);
    }
    assert!(
        batches_seen > SEEDS as usize,
        "every history came in several batches"
    );
}

/// Keys of the map of [`rewrites_history`]; the first [`HOT`] take most writes.
const REWRITTEN_KEYS: u32 = 24;
const HOT: u32 = 3;

/// A history of a few keys rewritten hundreds of times (the tenth patch: the walk seeks past
/// a key's history): three writers, rarely merging each other's changes, so that their
/// concurrent writes conflict and a received write often names a predecessor the receiver
/// already holds overwritten; some deletes.
fn rewrites_history(seed: u64) -> (Automerge, ObjId, Vec<Change>) {
    map_history(seed, 0..REWRITTEN_KEYS, 600, 40, |rng, put_or_delete| {
        for _ in 0..(1 + below(rng, 3)) {
            let n = if below(rng, 10) < 8 {
                below(rng, HOT)
            } else {
                below(rng, REWRITTEN_KEYS)
            };
            put_or_delete(n, below(rng, 15) == 0);
        }
    })
}

#[test]
fn rewritten_keys_received_in_batches_match_the_model() {
    let mut conflicted = 0;
    for seed in 0..SEEDS / 4 {
        let (base, map, changes) = rewrites_history(seed);
        let expected = model(&base, &map, &changes);
        conflicted += expected.values().filter(|v| v.len() > 1).count();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        // Small batches (many walks, each over a longer history) and large ones.
        for max_batch in [4, 60] {
            let (receiver, _) = receive_in_batches(&base, &changes, &mut rng, max_batch);
            assert_model(seed, &receiver, &map, &expected, REWRITTEN_KEYS);
        }
    }
    assert!(conflicted > 0, "some key ends with concurrent values");
}

/// Records each writer of [`records_history`] makes per change, at most.
const RECORDS_PER_CHANGE: u32 = 12;

/// What a writer wrote of a record: its writer, number, and whether it holds a list.
type Written = BTreeMap<String, (u8, i64, bool)>;

/// Three writers, each making new records in the channel map `tp` (keys numbered per writer,
/// so that one writer's records interleave with the others' in key order and, made
/// concurrently, in the op set's order of objects), merging another's changes now and then.
fn records_history(seed: u64) -> (Automerge, ObjId, Vec<Change>, Written) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut base = Automerge::new().with_actor(ActorId::from([0xf0u8; 16].as_slice()));
    let mut tx = base.transaction();
    let map = tx.put_object(ROOT, "tp", ObjType::Map).unwrap();
    tx.commit();
    let mut writers = writers_of(&base);
    let mut written = Written::new();
    let mut next = [0u32; 3];
    for _ in 0..30 {
        let w = next_writer(&mut rng, &mut writers, 4);
        let mut tx = writers[w].transaction();
        for _ in 0..(1 + below(&mut rng, RECORDS_PER_CHANGE)) {
            let n = next[w];
            next[w] += 1;
            let k = format!("w{w}-{n}");
            let rec = tx.put_object(&map, k.as_str(), ObjType::Map).unwrap();
            tx.put(&rec, "w", format!("writer {w}")).unwrap();
            tx.put(&rec, "v", i64::from(n)).unwrap();
            tx.put(&rec, "p", n % 2 == 0).unwrap();
            let list = below(&mut rng, 4) == 0;
            if list {
                let l = tx.put_object(&rec, "l", ObjType::List).unwrap();
                tx.insert(&l, 0, i64::from(n)).unwrap();
                tx.insert(&l, 1, "x").unwrap();
            }
            written.insert(k, (w as u8, i64::from(n), list));
        }
        tx.commit();
    }
    let all = merged(&base, &mut writers);
    let changes = all.get_changes(&base.get_heads());
    (base, map, changes, written)
}

/// Asserts that `doc` holds exactly the records `written`, as written.
fn assert_records(doc: &Automerge, map: &ObjId, written: &Written, what: &str) {
    let keys: Vec<String> = doc.keys(map).collect();
    assert_eq!(
        keys,
        written.keys().cloned().collect::<Vec<_>>(),
        "{what}: keys"
    );
    for (k, (w, n, list)) in written {
        let Some((Value::Object(ObjType::Map), rec)) = doc.get(map, k.as_str()).unwrap() else {
            panic!("{what}: {k} is not a map");
        };
        let scalar = |field: &str| match doc.get(&rec, field).unwrap() {
            Some((Value::Scalar(s), _)) => s.into_owned(),
            other => panic!("{what}: {k}.{field} holds {other:?}"),
        };
        assert_eq!(
            scalar("w"),
            ScalarValue::Str(format!("writer {w}").into()),
            "{what}: {k}"
        );
        assert_eq!(scalar("v"), ScalarValue::Int(*n), "{what}: {k}");
        assert_eq!(scalar("p"), ScalarValue::Boolean(n % 2 == 0), "{what}: {k}");
        let expected_fields = if *list { 4 } else { 3 };
        assert_eq!(doc.length(&rec), expected_fields, "{what}: {k}'s fields");
        if *list {
            let Some((Value::Object(ObjType::List), l)) = doc.get(&rec, "l").unwrap() else {
                panic!("{what}: {k}.l is not a list");
            };
            let item = |i: usize| match doc.get(&l, i).unwrap() {
                Some((Value::Scalar(s), _)) => s.into_owned(),
                other => panic!("{what}: {k}.l[{i}] holds {other:?}"),
            };
            assert_eq!(doc.length(&l), 2, "{what}: {k}.l");
            assert_eq!(item(0), ScalarValue::Int(*n), "{what}: {k}.l");
            assert_eq!(item(1), ScalarValue::Str("x".into()), "{what}: {k}.l");
        }
    }
}

#[test]
fn runs_of_new_records_at_many_places_apply_as_written() {
    for seed in 0..20 {
        let (base, map, changes, written) = records_history(seed);
        let mut held = Vec::new();
        // One change per apply, everything in one apply, and random batches.
        for (i, batching) in [1usize, usize::MAX, 0].into_iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xba7c);
            let mut receiver = base
                .fork()
                .with_actor(ActorId::from([0xeeu8; 16].as_slice()));
            let mut rest = changes.as_slice();
            while !rest.is_empty() {
                let n = match batching {
                    0 => 1 + below(&mut rng, 8) as usize,
                    n => n,
                }
                .min(rest.len());
                receiver.apply_changes(rest[..n].iter().cloned()).unwrap();
                rest = &rest[n..];
            }
            let what = format!("seed {seed}, batching {i}");
            assert_records(&receiver, &map, &written, &what);
            let reloaded = Automerge::load(&receiver.save()).unwrap();
            assert_records(&reloaded, &map, &written, &format!("{what}, reloaded"));
            held.push(receiver.hydrate(None));
        }
        assert!(
            held.windows(2).all(|w| w[0] == w[1]),
            "seed {seed}: receivers batching differently hold different documents"
        );
    }
}

/// The eighth patch: `get_map_object` (the object at a map's key, read from 4 columns)
/// answers as `get` does, for keys holding maps, lists, scalars, counters (incremented, which
/// leaves them visible) and nothing (deleted or never written), with concurrent writers'
/// conflicts between them.
#[test]
fn get_map_object_answers_as_get() {
    const MIXED_KEYS: u32 = 40;
    let mut objects_seen = 0;
    for seed in 0..40 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0b1e);
        let mut base = Automerge::new().with_actor(ActorId::from([0xf0u8; 16].as_slice()));
        let mut tx = base.transaction();
        let map = tx.put_object(ROOT, "m", ObjType::Map).unwrap();
        tx.commit();
        let mut writers = writers_of(&base);
        for _ in 0..30 {
            let w = next_writer(&mut rng, &mut writers, 3);
            let mut tx = writers[w].transaction();
            for _ in 0..(1 + below(&mut rng, 5)) {
                let k = key(below(&mut rng, MIXED_KEYS));
                match below(&mut rng, 6) {
                    0 => drop(tx.put_object(&map, k.as_str(), ObjType::Map).unwrap()),
                    1 => drop(tx.put_object(&map, k.as_str(), ObjType::List).unwrap()),
                    2 => tx
                        .put(&map, k.as_str(), i64::from(below(&mut rng, 100)))
                        .unwrap(),
                    3 => tx.put(&map, k.as_str(), ScalarValue::counter(1)).unwrap(),
                    // Fails on a key that holds no counter here: skipped.
                    4 => drop(tx.increment(&map, k.as_str(), 2)),
                    _ => drop(tx.delete(&map, k.as_str())),
                }
            }
            tx.commit();
        }
        let all = merged(&base, &mut writers);
        for doc in writers.iter().chain([&all]) {
            let mut wanted = Vec::new();
            for n in 0..MIXED_KEYS {
                let k = key(n);
                let want = match doc.get(&map, k.as_str()).unwrap() {
                    Some((Value::Object(typ), id)) => Some((typ, id)),
                    _ => None,
                };
                objects_seen += usize::from(want.is_some());
                let got = doc.get_map_object(&map, k.as_str()).unwrap();
                assert_eq!(got, want, "seed {seed}: {k}");
                wanted.push((k, want));
            }
            // The fourteenth patch: the same answers for the keys at once, in the order
            // asked (shuffled, some asked twice, one absent).
            let mut asked: Vec<usize> = (0..wanted.len()).chain([0, 7, 7]).collect();
            for i in (1..asked.len()).rev() {
                asked.swap(i, below(&mut rng, i as u32 + 1) as usize);
            }
            let keys = asked
                .iter()
                .map(|&i| wanted[i].0.as_str())
                .chain(["absent"]);
            let got = doc.get_map_objects(&map, keys).unwrap();
            let want: Vec<_> = asked
                .iter()
                .map(|&i| wanted[i].1.clone())
                .chain([None])
                .collect();
            assert_eq!(got, want, "seed {seed}: keys at once");
        }
        assert!(all.get_map_object(&ROOT, "m").unwrap().is_some());
        assert!(all.get_map_object(&map, "not a key").unwrap().is_none());
    }
    assert!(objects_seen > 100, "the histories put objects");
}

/// The ninth patch: a local transaction's change is kept as it is committed, for the sync
/// messages and saves that would rebuild it. What they take must be byte for byte what a
/// rebuild from the op set gives (`rebuild_changes` always rebuilds), for changes of one
/// record and of many, with a message, over a document that received others' changes. (It
/// holds without the patch too, every change then rebuilt: it checks what the patch keeps.)
#[test]
fn kept_local_changes_are_the_changes_a_rebuild_gives() {
    let mut other = Automerge::new().with_actor(ActorId::from([2u8; 16].as_slice()));
    let mut tx = other.transaction();
    let map = tx.put_object(ROOT, "tp", ObjType::Map).unwrap();
    tx.put(&map, "theirs", 1).unwrap();
    tx.commit();
    let mut doc = other.fork().with_actor(ActorId::from([1u8; 16].as_slice()));
    for round in 0..20i64 {
        let mut tx = doc.transaction();
        for n in 0..(1 + round * 7) {
            let rec = tx
                .put_object(&map, format!("k{round}-{n}").as_str(), ObjType::Map)
                .unwrap();
            tx.put(&rec, "v", n).unwrap();
            tx.put(&rec, "w", "writer one").unwrap();
        }
        if round % 3 == 0 {
            tx.commit_with(automerge::transaction::CommitOptions::default().with_message("m"));
        } else {
            tx.commit();
        }
        if round % 5 == 0 {
            let mut tx = other.transaction();
            tx.put(&map, format!("theirs{round}").as_str(), round)
                .unwrap();
            tx.commit();
            doc.merge(&mut other).unwrap();
        }
    }
    let served: Vec<(automerge::ChangeHash, Vec<u8>)> = doc
        .get_changes(&[])
        .iter()
        .map(|c| (c.hash(), c.raw_bytes().to_vec()))
        .collect();
    let rebuilt: Vec<(automerge::ChangeHash, Vec<u8>)> = doc
        .rebuild_changes(&[])
        .iter()
        .map(|c| (c.hash(), c.raw_bytes().to_vec()))
        .collect();
    assert_eq!(served.len(), 20 + 1 + 4, "every change");
    assert_eq!(served, rebuilt);
    // And a peer takes them as the writer's own.
    let mut peer = Automerge::new();
    peer.load_incremental(&doc.save()).unwrap();
    assert_eq!(peer.get_heads(), doc.get_heads());
}

/// The thirteenth patch: a rebuild of received changes decodes only their writers' operations
/// in their counter range (and those their operations succeed). Three writers put and delete
/// keys concurrently, so other actors' operations (and the receiver's own, written between
/// batches) lie in every batch's range; the changes rebuilt after each batch must be the
/// batch's, byte for byte. A rebuild that lost an operation of another actor that a received
/// delete or put succeeds, or one that kept another actor's operation, fails this.
#[test]
fn received_changes_rebuild_as_they_came_among_other_actors_operations() {
    let mut batches_with_others = 0;
    for seed in 0..SEEDS {
        let (base, map, changes) = if seed % 4 == 3 {
            rewrites_history(seed)
        } else {
            history(seed)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let mut receiver = base
            .fork()
            .with_actor(ActorId::from([0xeeu8; 16].as_slice()));
        let mut rest = changes.as_slice();
        let mut own = 0i64;
        while !rest.is_empty() {
            let n = (1 + below(&mut rng, 12) as usize).min(rest.len());
            let (batch, later) = rest.split_at(n);
            rest = later;
            let before = receiver.get_heads();
            receiver.apply_changes(batch.iter().cloned()).unwrap();
            let mut rebuilt: Vec<(automerge::ChangeHash, Vec<u8>)> = receiver
                .rebuild_changes(&before)
                .iter()
                .map(|c| (c.hash(), c.raw_bytes().to_vec()))
                .collect();
            let mut came: Vec<(automerge::ChangeHash, Vec<u8>)> = batch
                .iter()
                .map(|c| (c.hash(), c.raw_bytes().to_vec()))
                .collect();
            rebuilt.sort();
            came.sort();
            assert_eq!(rebuilt, came, "seed {seed}");
            let actors: HashSet<&ActorId> = batch.iter().map(Change::actor_id).collect();
            batches_with_others += usize::from(actors.len() < 3);
            // The receiver's own operations, in later batches' counter ranges.
            if below(&mut rng, 2) == 0 {
                own += 1;
                let mut tx = receiver.transaction();
                tx.put(&map, key(below(&mut rng, KEYS)), -own).unwrap();
                tx.commit();
            }
        }
    }
    assert!(batches_with_others > 100, "batches leave other writers out");
}
