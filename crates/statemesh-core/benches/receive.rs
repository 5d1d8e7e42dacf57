//! What one change costs as the document grows (issue 13, item 1): the receive of a sync
//! message carrying one record written by a peer (in place, `receive`, and as the runtime does
//! it, a job run and given back, `receive_job`), and the local write of one record, at 1,000,
//! 10,000 and 100,000 records spread over channels of 100 records each (an app's shape: many
//! channels, each a list of endpoints or jobs), and (`one_channel`) all in one channel.
//!
//! `cargo bench -p statemesh-core --bench receive` (add `-- --quick` for a short run). The
//! target is a cost independent of the document's size: the three sizes within 2x of each
//! other. Figures and their reading are in `docs/under-load.md`.

#![allow(missing_docs)] // criterion_group! generates undocumented items.
#![allow(clippy::unwrap_used)] // Benchmark set-up: a failure is a bug to see at once.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use statemesh_core::{Config, MeshTag, Node, PeerId, Scope, Time};

/// Document sizes, in records.
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

/// Records per channel.
const PER_CHANNEL: usize = 100;

/// Records written per transaction while building a document (set-up only).
const BUILD_BATCH: usize = 500;

/// Two linked nodes (`a` writes, `b` receives) holding the same `records` records, in
/// channels of `per_channel` records.
fn pair(records: usize, per_channel: usize) -> (Node, Node) {
    let mut rng = ChaCha8Rng::seed_from_u64(records as u64);
    let tag = MeshTag::derive(b"bench secret", "bench");
    let mut make = |i: u64| {
        let id = PeerId::generate(1_750_000_000_000 + i, &mut rng);
        Node::new(Config::default(), tag, id, &mut rng, Time::ZERO)
    };
    let (mut a, mut b) = (make(0), make(1));
    for start in (0..records).step_by(BUILD_BATCH) {
        a.transact(|tx| {
            for i in start..(start + BUILD_BATCH).min(records) {
                let value = format!("10.0.{}.{}:443 up", i / 250, i % 250);
                tx.put(
                    &format!("ch{}", i / per_channel),
                    &format!("k{i}"),
                    &value,
                    Scope::Durable,
                )?;
            }
            Ok(())
        })
        .unwrap();
        drain(&mut a);
    }
    let (ha, hb) = (a.hello(), b.hello());
    a.handle_link_up(Time::ZERO, &hb);
    b.handle_link_up(Time::ZERO, &ha);
    pump(&mut a, &mut b);
    assert_eq!(a.heads(), b.heads(), "set-up: both hold the document");
    // The document's size, for the record: a full save (compressed columns).
    let started = Instant::now();
    let saved = a.replica().save().len();
    eprintln!(
        "{records} records: full save {saved} bytes in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    (a, b)
}

/// Empties a node's event and persistence queues (as the runtime does).
fn drain(n: &mut Node) {
    while n.poll_event().is_some() {}
    while let Some(p) = n.poll_persist() {
        n.persisted(p.seq());
    }
}

/// Frames `from` has for `to`, whole, as they go on the wire.
fn outgoing(from: &mut Node, to: PeerId) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| from.poll_transmit())
        .filter(|t| t.to == to)
        .map(|t| t.frame.to_vec())
        .collect()
}

/// Exchanges frames until both nodes are quiet.
fn pump(a: &mut Node, b: &mut Node) {
    let (ia, ib) = (a.me().peer, b.me().peer);
    loop {
        let to_b = outgoing(a, ib);
        for p in &to_b {
            b.handle_frame(Time::ZERO, ia, p).unwrap();
        }
        let to_a = outgoing(b, ia);
        for p in &to_a {
            a.handle_frame(Time::ZERO, ib, p).unwrap();
        }
        drain(a);
        drain(b);
        if to_a.is_empty() && to_b.is_empty() {
            return;
        }
    }
}

/// One way for a node to receive a frame from a peer.
type Receive = fn(&mut Node, PeerId, &[u8]);

fn one_change(c: &mut Criterion) {
    shape(c, "one_change", |_| PER_CHANNEL);
}

/// The same with every record in one channel: a channel's map holds them all, and Automerge
/// 0.12 as published walks every key of a map it applies a change to.
fn one_channel(c: &mut Criterion) {
    shape(c, "one_channel", |records| records);
}

/// The benchmarks of one change, in group `name`, with channels of `per_channel(records)`
/// records.
fn shape(c: &mut Criterion, name: &str, per_channel: fn(usize) -> usize) {
    let mut group = c.benchmark_group(name);
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for records in SIZES {
        let per_channel = per_channel(records);
        let (mut a, mut b) = pair(records, per_channel);
        let ia = a.me().peer;
        let ib = b.me().peer;
        let mut n = 0u64;
        // The receive alone: `a`'s write and the exchange that settles it are set-up. In
        // place (`handle_frame`), and as the runtime does it: the message as a job
        // (`handle_frame_deferred`), run (what the runtime does off the node), and given back
        // (`finish_sync`).
        let in_place: Receive = |b, from, frame| b.handle_frame(Time::ZERO, from, frame).unwrap();
        let as_job: Receive = |b, from, frame| {
            let mut job = b.handle_frame_deferred(Time::ZERO, from, frame);
            while let Some(mut j) = job.unwrap() {
                j.run();
                job = b.finish_sync(Time::ZERO, j);
            }
        };
        for (name, receive) in [("receive", in_place), ("receive_job", as_job)] {
            group.bench_with_input(BenchmarkId::new(name, records), &records, |bench, _| {
                bench.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        n += 1;
                        let ch = format!("ch{}", n as usize % (records / per_channel));
                        a.put(
                            &ch,
                            &format!("{name}{n}"),
                            &"10.9.9.9:443 up",
                            Scope::Durable,
                        )
                        .unwrap();
                        drain(&mut a);
                        let frames = outgoing(&mut a, ib);
                        let started = Instant::now();
                        for p in &frames {
                            receive(&mut b, ia, black_box(p));
                        }
                        spent += started.elapsed();
                        pump(&mut a, &mut b);
                    }
                    spent
                });
            });
        }
        // The local write alone (a transaction, its commit and the change notification).
        group.bench_with_input(BenchmarkId::new("write", records), &records, |bench, _| {
            bench.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let ch = format!("ch{}", n as usize % (records / per_channel));
                    let key = format!("w{n}");
                    let started = Instant::now();
                    a.put(&ch, &key, &"10.9.9.9:443 up", Scope::Durable)
                        .unwrap();
                    spent += started.elapsed();
                    drain(&mut a);
                    pump(&mut a, &mut b);
                }
                spent
            });
        });
    }
    group.finish();
}

/// A change of 100 records (one transaction, as `throughput --batch 100` writes them) received
/// as the runtime does it, as a job, by a node holding 10,000 records: the checks of the
/// change's operations and the records it touched are read per operation.
fn hundred_records(c: &mut Criterion) {
    const RECORDS: usize = 10_000;
    const BATCH: usize = 100;
    let mut group = c.benchmark_group("batch_change");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    let (mut a, mut b) = pair(RECORDS, PER_CHANNEL);
    let (ia, ib) = (a.me().peer, b.me().peer);
    let mut n = 0u64;
    group.bench_function("receive_job_100_records", |bench| {
        bench.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                a.transact(|tx| {
                    for i in 0..BATCH {
                        let key = format!("b{n}-{i}");
                        tx.put(
                            &format!("ch{}", n % 7),
                            &key,
                            &"10.9.9.9:443 up",
                            Scope::Durable,
                        )?;
                    }
                    Ok(())
                })
                .unwrap();
                drain(&mut a);
                let frames = outgoing(&mut a, ib);
                let started = Instant::now();
                for p in &frames {
                    let mut job = b.handle_frame_deferred(Time::ZERO, ia, black_box(p));
                    while let Some(mut j) = job.unwrap() {
                        j.run();
                        job = b.finish_sync(Time::ZERO, j);
                    }
                }
                spent += started.elapsed();
                drain(&mut b);
                pump(&mut a, &mut b);
            }
            spent
        });
    });
    group.finish();
}

criterion_group!(benches, one_change, one_channel, hundred_records);
criterion_main!(benches);
