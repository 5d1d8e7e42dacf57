//! Micro-benchmarks of the core's hot paths: the wire codec, a sync round between two nodes,
//! the election, a heartbeat tick, local writes, and the presence scan a peer's death triggers.
//!
//! `cargo bench -p statemesh-core --bench core` (add `-- --quick` for a short run). Figures and
//! their reading are in `docs/performance.md`.

#![allow(missing_docs)] // criterion_group! generates undocumented items.
#![allow(clippy::unwrap_used)] // Benchmark set-up: a failure is a bug to see at once.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use statemesh_core::codec::{self, Message};
use statemesh_core::election::Election;
use statemesh_core::liveness::{GossipBeat, Liveness};
use statemesh_core::vv::Beat;
use statemesh_core::{Config, LinkDown, MeshTag, Node, PeerId, Scope, Time};

/// Writes made on one document before it is rebuilt, in benchmarks of repeated writes.
const FRESH: u64 = 100;

fn tag() -> MeshTag {
    MeshTag::derive(b"bench secret", "bench")
}

/// `n` nodes with ids in increasing order.
fn nodes(n: usize, seed: u64) -> Vec<Node> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let id = PeerId::generate(1_750_000_000_000 + i as u64, &mut rng);
            Node::new(Config::default(), tag(), id, &mut rng, Time::ZERO)
        })
        .collect()
}

/// Empties a node's event and persistence queues (as the runtime does).
fn drain(n: &mut Node) {
    while n.poll_event().is_some() {}
    while let Some(p) = n.poll_persist() {
        n.persisted(p.seq());
    }
}

/// Delivers everything `from` has to send to `to`; whether there was anything.
fn deliver(from: &mut Node, to: &mut Node, now: Time) -> bool {
    let id = from.me().peer;
    let mut moved = false;
    while let Some(t) = from.poll_transmit() {
        if t.to == to.me().peer {
            to.handle_frame(now, id, &t.frame).unwrap();
        }
        moved = true;
    }
    moved
}

/// Exchanges frames between two nodes until both are quiet.
fn pump(a: &mut Node, b: &mut Node, now: Time) {
    while deliver(a, b, now) | deliver(b, a, now) {}
    drain(a);
    drain(b);
}

/// Two linked nodes that have synced their (genesis-only) documents.
fn pair() -> (Node, Node) {
    let mut ns = nodes(2, 1);
    let mut b = ns.pop().unwrap();
    let mut a = ns.pop().unwrap();
    let (ha, hb) = (a.hello(), b.hello());
    a.handle_link_up(Time::ZERO, &hb);
    b.handle_link_up(Time::ZERO, &ha);
    pump(&mut a, &mut b, Time::ZERO);
    (a, b)
}

/// A node linked to `n` others, and the frames it sent them on linking.
fn hub(n: usize) -> (Node, Vec<Node>) {
    let mut ns = nodes(n + 1, 2);
    let mut hub = ns.remove(0);
    for other in &mut ns {
        hub.handle_link_up(Time::ZERO, &other.hello());
        other.handle_link_up(Time::ZERO, &hub.hello());
    }
    (hub, ns)
}

/// The first frame `node` sends that decodes to a message matching `want`.
fn frame(node: &mut Node, want: impl Fn(&Message) -> bool) -> Vec<u8> {
    while let Some(t) = node.poll_transmit() {
        if codec::decode_frame(&t.frame, usize::MAX).is_ok_and(|m| want(&m)) {
            return t.frame.to_vec();
        }
    }
    panic!("no such frame");
}

fn codec_benches(c: &mut Criterion) {
    let (mut node, _others) = hub(8);
    // A heartbeat tick makes every link's view carry all 9 live peers.
    node.handle_tick(Time::from_micros(200_000));
    let view = frame(
        &mut node,
        |m| matches!(m, Message::View(v) if v.beats.len() == 9),
    );
    let message = codec::decode_frame(&view, usize::MAX).unwrap();
    let mut g = c.benchmark_group("codec");
    g.bench_function("encode_view_9_peers", |b| {
        b.iter(|| codec::encode_frame(black_box(&message), usize::MAX).unwrap())
    });
    g.bench_function("decode_view_9_peers", |b| {
        b.iter(|| codec::decode_frame(black_box(&view), usize::MAX).unwrap())
    });
    // A view as every window of a 64-window mesh receives 63 of every heartbeat.
    let (mut node64, _others64) = hub(63);
    node64.handle_tick(Time::from_micros(200_000));
    let view64 = frame(
        &mut node64,
        |m| matches!(m, Message::View(v) if v.beats.len() == 64),
    );
    g.bench_function("decode_view_64_peers", |b| {
        b.iter(|| codec::decode_frame(black_box(&view64), usize::MAX).unwrap())
    });
    let (mut a, _b) = pair();
    a.put(
        "bench",
        "key",
        &"a value of some length".to_string(),
        Scope::Durable,
    )
    .unwrap();
    let sync = frame(&mut a, |m| matches!(m, Message::Sync(_)));
    g.bench_function("decode_sync_one_change", |b| {
        b.iter(|| codec::decode_frame(black_box(&sync), usize::MAX).unwrap())
    });
    let frames: Vec<u8> = (0..16)
        .flat_map(|_| codec::encode_frame(&message, usize::MAX).unwrap())
        .collect();
    g.bench_function("frame_decoder_16_views", |b| {
        b.iter(|| {
            let mut d = codec::FrameDecoder::new(statemesh_core::config::DEFAULT_MAX_FRAME);
            d.extend(black_box(&frames));
            let mut n = 0;
            while let Some(m) = d.next_message().unwrap() {
                black_box(m);
                n += 1;
            }
            n
        })
    });
    g.finish();
}

fn sync_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync");
    // One write and the whole exchange it causes (sync message, reply, acknowledgement), on
    // two new nodes each time so that history does not grow across iterations.
    g.bench_function("round_one_change", |bench| {
        bench.iter_batched(
            pair,
            |(mut a, mut b)| {
                a.put("bench", "key", &42i64, Scope::Durable).unwrap();
                pump(&mut a, &mut b, Time::ZERO);
                (a, b)
            },
            BatchSize::SmallInput,
        )
    });
    // Receiving the sync message that carries one change (decode, apply to a copy, events), on
    // a new document and on one of 1,000 records: receiving costs grow with the document.
    for (name, records, batch) in [
        ("receive_one_change", 0, BatchSize::SmallInput),
        (
            "receive_one_change_1000_records",
            1_000,
            BatchSize::PerIteration,
        ),
    ] {
        if records > 0 {
            g.sample_size(20);
        }
        g.bench_function(name, |bench| {
            bench.iter_batched(
                || {
                    let (mut a, b) = if records == 0 {
                        pair()
                    } else {
                        loaded_pair(records)
                    };
                    a.put("bench", "key", &42i64, Scope::Durable).unwrap();
                    let p = frame(&mut a, |m| matches!(m, Message::Sync(_)));
                    (a.me().peer, b, p)
                },
                |(from, mut b, p)| {
                    b.handle_frame(Time::ZERO, from, &p).unwrap();
                    b
                },
                batch,
            )
        });
    }
    g.finish();
}

fn election_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("election");
    for n in [8usize, 64] {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let ids: Vec<PeerId> = (0..=n)
            .map(|i| PeerId::generate(1_750_000_000_000 + i as u64, &mut rng))
            .collect();
        // This peer has the highest id: it follows the lowest.
        let mut live = Liveness::new(ids[n], &Config::default());
        let mut changes = Vec::new();
        for id in &ids[..n] {
            let beat = Beat {
                incarnation: 0,
                counter: 1,
            };
            live.observe_beat(*id, beat, true, Time::ZERO, &mut changes);
        }
        let mut election = Election::default();
        election.update(&live, true);
        g.bench_function(format!("update_{n}_peers"), |b| {
            b.iter(|| black_box(election.update(black_box(&live), true)))
        });
        // A linked peer's view as it arrives every heartbeat: the sender's beat first, then
        // every live peer's in id order (this peer's own among them), each known already
        // (`known`: relayed beats in a full mesh) or each newer (`newer`).
        let mut view: Vec<GossipBeat> = std::iter::once(ids[0])
            .chain(ids[1..].iter().copied())
            .map(|peer| GossipBeat {
                peer,
                beat: Beat {
                    incarnation: 0,
                    counter: 1,
                },
                eligible: true,
            })
            .collect();
        view[1..].sort_by_key(|b| b.peer);
        g.bench_function(format!("observe_view_known_{n}_peers"), |b| {
            b.iter(|| {
                changes.clear();
                live.observe_beats(black_box(&view), Time::ZERO, &mut changes);
                black_box(changes.len())
            })
        });
        g.bench_function(format!("observe_view_newer_{n}_peers"), |b| {
            b.iter(|| {
                for g in &mut view {
                    g.beat.counter += 1;
                }
                changes.clear();
                live.observe_beats(black_box(&view), Time::ZERO, &mut changes);
                black_box(changes.len())
            })
        });
        g.bench_function(format!("judge_{n}_peers"), |b| {
            b.iter(|| {
                changes.clear();
                live.judge(Time::from_micros(500_000), &mut changes);
                black_box(changes.len())
            })
        });
    }
    // A whole heartbeat: beat, judge, elect, and a view to each of 8 links.
    g.bench_function("tick_heartbeat_8_links", |bench| {
        bench.iter_batched(
            || {
                let (mut node, _) = hub(8);
                while node.poll_transmit().is_some() {}
                drain(&mut node);
                node
            },
            |mut node| {
                node.handle_tick(Time::from_micros(200_000));
                while let Some(t) = node.poll_transmit() {
                    black_box(t);
                }
                node
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A node holding `records` records of its own (one of them presence-scoped), linked to a peer
/// that holds the same.
fn loaded_pair(records: usize) -> (Node, Node) {
    let (mut a, mut b) = pair();
    a.transact(|tx| {
        for i in 0..records {
            tx.put("bench", &format!("k{i}"), &(i as i64), Scope::Durable)?;
        }
        Ok(())
    })
    .unwrap();
    b.put("windows", "me", &true, Scope::Presence).unwrap();
    pump(&mut a, &mut b, Time::ZERO);
    (a, b)
}

/// The time `write` reports for `iters` writes (the `i`-th of a fresh document given `i`), on
/// a window whose document holds `records` records. Each write adds a change to the history,
/// so the document is rebuilt (untimed) every `FRESH` writes: what is measured is the
/// document's size, not the benchmark's own history.
fn timed_writes(
    iters: u64,
    records: usize,
    mut write: impl FnMut(&mut Node, u64) -> Duration,
) -> Duration {
    let mut spent = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let (mut a, _b) = loaded_pair(records);
        for i in 0..FRESH.min(iters - done) {
            spent += write(&mut a, i);
            drain(&mut a);
            done += 1;
        }
    }
    spent
}

fn write_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("write");
    g.sample_size(10);
    g.bench_function("transact_100_puts_new_doc", |bench| {
        bench.iter_batched(
            || nodes(1, 4).pop().unwrap(),
            |mut n| {
                n.transact(|tx| {
                    for i in 0..100 {
                        tx.put("bench", &format!("k{i}"), &(i as i64), Scope::Durable)?;
                    }
                    Ok(())
                })
                .unwrap();
                n
            },
            BatchSize::SmallInput,
        )
    });
    // One record rewritten on a document of `records` records.
    for records in [0usize, 1_000, 10_000] {
        g.bench_function(format!("put_one_{records}_records"), |bench| {
            bench.iter_custom(|iters| {
                timed_writes(iters, records, |a, i| {
                    let start = std::time::Instant::now();
                    a.put("bench", "hot", &(i as i64), Scope::Durable).unwrap();
                    while a.poll_transmit().is_some() {}
                    start.elapsed()
                })
            })
        });
    }
    // A new record (a map of three fields) written on a document of `records` records: the
    // write of `propagation` and `throughput`.
    for records in [0usize, 1_000, 10_000] {
        g.bench_function(format!("put_new_{records}_records"), |bench| {
            bench.iter_custom(|iters| {
                timed_writes(iters, records, |a, i| {
                    let key = format!("new{i}");
                    let start = std::time::Instant::now();
                    a.put("bench", &key, &(i as i64), Scope::Durable).unwrap();
                    start.elapsed()
                })
            })
        });
    }
    // A hundred new records written in one transaction on a document of `records` records:
    // the write of `throughput --batch 100`.
    for records in [0usize, 10_000] {
        g.bench_function(format!("transact_100_new_{records}_records"), |bench| {
            bench.iter_custom(|iters| {
                timed_writes(iters, records, |a, i| {
                    let start = std::time::Instant::now();
                    a.transact(|tx| {
                        for n in 0..100 {
                            let key = format!("new{i}-{n}");
                            tx.put("bench", &key, &(n as i64), Scope::Durable)?;
                        }
                        Ok(())
                    })
                    .unwrap();
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    // A peer's death (here: its local socket closed) makes every node look for the dead
    // writer's presence-scoped entries.
    let mut g = c.benchmark_group("liveness");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    for records in [1_000usize, 10_000] {
        g.bench_function(format!("peer_down_{records}_records"), |bench| {
            bench.iter_batched(
                || loaded_pair(records),
                |(mut a, b)| {
                    a.handle_link_down(Time::ZERO, b.me().peer, LinkDown::Certain);
                    drain(&mut a);
                    (a, b)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// Makes record `key` in `map` as statemesh lays a record out: a map with its value, writer and
/// scope.
fn put_record(
    tx: &mut impl automerge::transaction::Transactable,
    map: &automerge::ObjId,
    key: String,
    value: i64,
) {
    use automerge::ObjType;
    let rec = tx.put_object(map, key, ObjType::Map).unwrap();
    tx.put(&rec, "v", value).unwrap();
    tx.put(&rec, "w", "0198f5c2-7a3b-7c1d-8e4f-a1b2c3d4e5f6")
        .unwrap();
    tx.put(&rec, "p", false).unwrap();
}

/// An Automerge document laid out as statemesh lays out `records` records (a map per record
/// with its value, writer and scope), and the object id of one more record to rewrite.
fn automerge_doc(records: usize) -> (automerge::Automerge, automerge::ObjId) {
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ObjType, ROOT};
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    let map = tx.put_object(ROOT, "r", ObjType::Map).unwrap();
    for i in 0..records {
        put_record(&mut tx, &map, format!("bench\u{1f}k{i}"), i as i64);
    }
    let hot = tx.put_object(&map, "bench\u{1f}hot", ObjType::Map).unwrap();
    tx.commit();
    (doc, hot)
}

/// Writers of [`concurrent_round`], as in `statemesh-bench throughput --peers 8`.
const WRITERS: usize = 8;

/// Records each writer makes per change in [`concurrent_round`] (`--batch 100`).
const PER_CHANGE: usize = 100;

/// One round of [`WRITERS`] concurrent changes of [`PER_CHANGE`] new records each into one
/// channel (records laid out as statemesh does, keys numbered per writer), made on `docs`
/// (one per writer, all holding the same changes); returns them, each writer's doc holding
/// its own.
fn concurrent_round(docs: &mut [automerge::Automerge], next: &mut usize) -> Vec<automerge::Change> {
    use automerge::transaction::Transactable;
    use automerge::{ObjType, ROOT, ReadDoc};
    let mut changes = Vec::new();
    for (w, doc) in docs.iter_mut().enumerate() {
        let map = match doc.get(ROOT, "tp").unwrap() {
            Some((_, id)) => id,
            None => unreachable!("the channel's map is made first"),
        };
        let mut tx = doc.transaction();
        for n in *next..*next + PER_CHANGE {
            let rec = tx
                .put_object(&map, format!("w{w}-{n}"), ObjType::Map)
                .unwrap();
            tx.put(&rec, "w", format!("writer-{w}")).unwrap();
            tx.put(&rec, "p", false).unwrap();
            tx.put(&rec, "v", n as i64).unwrap();
        }
        tx.commit();
        changes.push(doc.get_last_local_change().unwrap().clone());
    }
    *next += PER_CHANGE;
    changes
}

/// [`WRITERS`] documents, one per writer, all holding `rounds` rounds of
/// [`concurrent_round`].
fn concurrent_docs(rounds: usize) -> (Vec<automerge::Automerge>, usize) {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, Automerge, ObjType, ROOT};
    let mut genesis = Automerge::new().with_actor(ActorId::from(vec![0xff]));
    let mut tx = genesis.transaction();
    tx.put_object(ROOT, "tp", ObjType::Map).unwrap();
    tx.commit();
    let mut docs: Vec<Automerge> = (0..WRITERS)
        .map(|w| genesis.fork().with_actor(ActorId::from(vec![w as u8])))
        .collect();
    let mut next = 0;
    for _ in 0..rounds {
        let changes = concurrent_round(&mut docs, &mut next);
        for doc in &mut docs {
            doc.apply_changes(changes.iter().cloned()).unwrap();
        }
    }
    (docs, next)
}

/// What a window of `throughput --peers 8 --batch 100` applies, on Automerge alone: the
/// other seven writers' concurrent changes of 100 new records each, in one call, into a
/// channel of 10,000 or 50,000 records made the same way. Maps are ordered by the id of the
/// operation that made them, so the records the writers made concurrently interleave and the
/// apply inserts runs of operations at many places of the op set (fewer than in a window of
/// the mesh, whose own recent records lie among the received ones).
fn apply_concurrent(c: &mut Criterion) {
    let mut g = c.benchmark_group("automerge_floor");
    g.sample_size(10);
    for records in [10_000usize, 50_000] {
        let (docs, mut next) = concurrent_docs(records / (WRITERS * PER_CHANGE));
        g.bench_function(format!("apply_7x100_concurrent_{records}_records"), |b| {
            b.iter_batched(
                || {
                    // A new round on copies of the writers' documents: the receiver's copy
                    // holds its own change, the others' are applied below.
                    let mut round = docs.clone();
                    let changes = concurrent_round(&mut round, &mut next);
                    (round.swap_remove(0), changes[1..].to_vec())
                },
                |(mut target, others)| {
                    target.apply_changes(others).unwrap();
                    black_box(target)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// The same work on Automerge alone (no statemesh): the floor under `write/*` and under the
/// change notifications statemesh derives from a diff after each local change.
fn automerge_floor(c: &mut Criterion) {
    use automerge::transaction::Transactable;
    let mut g = c.benchmark_group("automerge_floor");
    g.sample_size(10);
    for records in [1_000usize, 10_000] {
        g.bench_function(format!("put_commit_{records}_records"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let (mut doc, hot) = automerge_doc(records);
                    for i in 0..FRESH.min(iters - done) {
                        let start = std::time::Instant::now();
                        let mut tx = doc.transaction();
                        tx.put(&hot, "v", i as i64).unwrap();
                        black_box(tx.commit());
                        spent += start.elapsed();
                        done += 1;
                    }
                }
                spent
            })
        });
        g.bench_function(format!("diff_one_change_{records}_records"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let (mut doc, hot) = automerge_doc(records);
                    for i in 0..FRESH.min(iters - done) {
                        let before = doc.get_heads();
                        let mut tx = doc.transaction();
                        tx.put(&hot, "v", i as i64).unwrap();
                        tx.commit();
                        let after = doc.get_heads();
                        let start = std::time::Instant::now();
                        black_box(doc.diff(&before, &after).len());
                        spent += start.elapsed();
                        done += 1;
                    }
                }
                spent
            })
        });
    }
    g.finish();
}

/// A document as a small mesh holds it: `records` records, each written by a change of its
/// own (the record's map made with its value, writer and scope), by two writers in turn; and
/// the second writer's copy.
fn one_change_per_record(
    records: usize,
) -> (automerge::Automerge, automerge::Automerge, automerge::ObjId) {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ObjType, ROOT};
    let mut doc = automerge::Automerge::new().with_actor(ActorId::from(vec![0xff]));
    let mut tx = doc.transaction();
    let map = tx.put_object(ROOT, "r", ObjType::Map).unwrap();
    tx.commit();
    let mut other = doc.fork().with_actor(ActorId::from(vec![2]));
    for i in 0..records {
        let writer = if i % 2 == 0 { &mut doc } else { &mut other };
        let mut tx = writer.transaction();
        put_record(&mut tx, &map, format!("bench\u{1f}k{i}"), i as i64);
        tx.commit();
        let change = writer.get_last_local_change().unwrap();
        let reader = if i % 2 == 0 { &mut other } else { &mut doc };
        reader.apply_changes([change]).unwrap();
    }
    (doc, other, map)
}

/// A change of one new record (`bench\u{1f}new{n}`) written on `writer`.
fn record_change(
    writer: &mut automerge::Automerge,
    map: &automerge::ObjId,
    n: u64,
) -> automerge::Change {
    let mut tx = writer.transaction();
    put_record(&mut tx, map, format!("bench\u{1f}new{n}"), n as i64);
    tx.commit();
    writer.get_last_local_change().unwrap()
}

/// What bringing a replica's standby (a second copy of the document) up to date costs, by
/// applying the changes it lacks (`apply_1`: one change of one record per call, one after
/// another, as a standby kept up to date takes them; `apply_8`: eight per call, a batch the
/// idle upkeep applies) or by copying the document and dropping the old standby (`copy`), at
/// document sizes a small mesh holds: the choice `Replica::catch_up_standby` makes
/// (`STANDBY_APPLY_PER_COPY`, `APPLY_CALL_IN_COPIED_OPS`).
fn standby_benches(c: &mut Criterion) {
    use automerge::ReadDoc;
    let mut g = c.benchmark_group("standby");
    g.sample_size(20);
    for records in [100usize, 300, 1_000, 3_000, 10_000] {
        // Changes come from a writer the document knows (a new actor would make Automerge
        // renumber the actors of every operation).
        let (doc, writer, map) = one_change_per_record(records);
        for per_call in [1usize, 8] {
            let name = format!("catch_up_apply_{per_call}_changes_{records}_records");
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let n = FRESH.min(iters - done);
                        let (mut standby, mut writer) = (doc.clone(), writer.clone());
                        let changes: Vec<_> = (0..=n * per_call as u64)
                            .map(|i| record_change(&mut writer, &map, i))
                            .collect();
                        // The first apply after a copy grows every vector the copy sized to
                        // fit.
                        standby.apply_changes([changes[0].clone()]).unwrap();
                        let start = std::time::Instant::now();
                        for call in changes[1..].chunks(per_call) {
                            standby.apply_changes(call.iter().cloned()).unwrap();
                        }
                        spent += start.elapsed();
                        let held = records + 1 + n as usize * per_call;
                        assert_eq!(standby.length(&map), held);
                        done += n;
                    }
                    spent
                })
            });
        }
        let mut received = doc.clone();
        received
            .apply_changes([record_change(&mut writer.clone(), &map, 0)])
            .unwrap();
        g.bench_function(format!("catch_up_copy_{records}_records"), |b| {
            b.iter_batched(
                || doc.clone(),
                |standby| {
                    drop(standby);
                    received.clone()
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    codec_benches,
    sync_benches,
    election_benches,
    write_benches,
    automerge_floor,
    apply_concurrent,
    standby_benches
);
criterion_main!(benches);
