//! `floor`: the Automerge floor under `throughput`. The same records, written and applied by
//! Automerge alone in this process (no network, no sync protocol, no statemesh), one thread,
//! every step timed: the CPU one key costs its writer and each other window, and so the most
//! updates per second this machine's cores could converge if the mesh cost nothing on top.
//!
//! Each window's document writes records as `throughput`'s windows do (one channel map, a
//! record map per key holding the value, the writer and the scope; `batch` keys per change),
//! takes each change out of its document (what any sync has to send), and every other
//! document applies them in batches of about 100 changes per `apply_changes` call (Automerge's
//! apply costs far less per change in batches; its cost also grows with the document). The run
//! writes `--keys` keys in all (default 20,000, about what `throughput`'s windows write in 5 s
//! with one key per change), and ends by checking that every document holds every change.
//!
//! With `--as-mesh`, records are written as the mesh writes new ones (each key looked up, then
//! the change's record maps made with their three fields by one `batch_create_objects`), and
//! each receiver follows its
//! apply with what the mesh's check of received changes asks of Automerge: the changes the
//! apply added, rebuilt from the document, and their operations decoded (timed apart:
//! `check_us_per_key`). What the check then does with the operations, and everything else the
//! mesh does, is not counted.

use std::time::{Duration, Instant};

use anyhow::ensure;
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjId, ObjType, ROOT, ReadDoc};
use serde_json::json;

use super::{Opts, Out};
use crate::stats::round3;

/// Changes a receiver applies per `apply_changes` call (spread over the other writers).
const APPLY_BATCH: usize = 100;

/// The `floor` scenario.
pub(crate) fn run(
    opts: &Opts,
    out: &mut Out,
    keys_in_all: u64,
    as_mesh: bool,
) -> anyhow::Result<()> {
    let n = opts.peers;
    ensure!(n >= 2, "floor needs at least 2 peers");
    let batch = opts.batch.max(1);
    let keys_in_all = if opts.quick {
        keys_in_all / 10
    } else {
        keys_in_all
    };
    eprintln!("{n} documents, {batch} keys per change, {keys_in_all} keys, one thread");

    let (mut docs, channel) = documents(n)?;
    let writers: Vec<String> = (0..n)
        .map(|i| format!("0198f5c2-7a3b-7c1d-8e4f-{i:012}"))
        .collect();
    // Changes each document writes per round, so that a receiver applies about APPLY_BATCH.
    let per_round = APPLY_BATCH.div_ceil(n - 1).max(1);
    let (mut write, mut extract, mut apply) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut check = Duration::ZERO;
    let (mut keys, mut changes) = (0u64, 0u64);
    while keys < keys_in_all {
        let mut round: Vec<Vec<automerge::Change>> = vec![Vec::new(); n];
        for (i, doc) in docs.iter_mut().enumerate() {
            for _ in 0..per_round {
                let t = Instant::now();
                let mut tx = doc.transaction();
                let mut made = Vec::new();
                for _ in 0..batch {
                    let key = format!("w{i}-{keys}");
                    if as_mesh {
                        ensure!(tx.get(&channel, &key)?.is_none(), "a key written twice");
                        made.push((key, record_fields(keys as i64, &writers[i])));
                    } else {
                        let rec = tx.put_object(&channel, key, ObjType::Map)?;
                        tx.put(&rec, "v", keys as i64)?;
                        tx.put(&rec, "w", writers[i].as_str())?;
                        tx.put(&rec, "p", false)?;
                    }
                    keys += 1;
                }
                if as_mesh {
                    let entries: Vec<(&str, &automerge::hydrate::Value)> =
                        made.iter().map(|(k, v)| (k.as_str(), v)).collect();
                    tx.batch_create_objects(&channel, &entries)?;
                }
                tx.commit();
                let t2 = Instant::now();
                write += t2 - t;
                let change = doc
                    .get_last_local_change()
                    .ok_or_else(|| anyhow::anyhow!("a commit made no change"))?;
                extract += t2.elapsed();
                round[i].push(change);
                changes += 1;
            }
        }
        for (i, doc) in docs.iter_mut().enumerate() {
            let theirs: Vec<automerge::Change> = round
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, c)| c.iter().cloned())
                .collect();
            let before = doc.get_heads();
            let t = Instant::now();
            doc.apply_changes(theirs)?;
            let t2 = Instant::now();
            apply += t2 - t;
            if as_mesh {
                let mut ops = 0;
                for change in doc.rebuild_changes(&before) {
                    ops += change.decode().operations.len();
                }
                check += t2.elapsed();
                ensure!(ops > 0, "the rebuilt changes hold no operations");
            }
        }
    }
    let heads = docs[0].get_heads();
    ensure!(
        docs.iter().all(|d| d.get_heads() == heads),
        "the documents did not converge"
    );

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let write_per_key = (us(write) + us(extract)) / keys as f64;
    let apply_per_key = us(apply) / (keys as f64 * (n - 1) as f64);
    let check_per_key = us(check) / (keys as f64 * (n - 1) as f64);
    let per_update = write_per_key + (apply_per_key + check_per_key) * (n - 1) as f64;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    out.insert("batch".into(), json!(batch));
    out.insert("keys".into(), json!(keys));
    out.insert("changes".into(), json!(changes));
    out.insert("apply_batch".into(), json!(per_round * (n - 1)));
    out.insert(
        "write_us_per_key".into(),
        json!(round3(us(write) / keys as f64)),
    );
    out.insert(
        "extract_us_per_key".into(),
        json!(round3(us(extract) / keys as f64)),
    );
    out.insert("apply_us_per_key".into(), json!(round3(apply_per_key)));
    out.insert("as_mesh".into(), json!(as_mesh));
    if as_mesh {
        out.insert("check_us_per_key".into(), json!(round3(check_per_key)));
    }
    out.insert("cpu_us_per_update".into(), json!(round3(per_update)));
    out.insert("cores".into(), json!(cores));
    out.insert(
        "floor_updates_per_s".into(),
        json!(round3(cores as f64 * 1e6 / per_update)),
    );
    Ok(())
}

/// A record's fields as the mesh makes a new record's map (`--as-mesh`): its value, its
/// writer and its scope.
fn record_fields(value: i64, writer: &str) -> automerge::hydrate::Value {
    let fields = std::collections::HashMap::from([
        ("v", automerge::hydrate::Value::from(value)),
        ("w", automerge::hydrate::Value::from(writer)),
        ("p", automerge::ScalarValue::Boolean(false).into()),
    ]);
    fields.into()
}

/// `n` documents of distinct actors sharing one channel map (made once, as a mesh's windows
/// share a channel's map), and that map's id.
fn documents(n: usize) -> anyhow::Result<(Vec<Automerge>, ObjId)> {
    let mut base = Automerge::new().with_actor(ActorId::from([0u8; 16].as_slice()));
    let mut tx = base.transaction();
    let records = tx.put_object(ROOT, "r", ObjType::Map)?;
    let channel = tx.put_object(&records, "tp", ObjType::Map)?;
    tx.commit();
    let docs = (0..n)
        .map(|i| {
            let mut actor = [0u8; 16];
            actor[0] = 1;
            actor[8..].copy_from_slice(&(i as u64).to_be_bytes());
            base.fork().with_actor(ActorId::from(actor.as_slice()))
        })
        .collect();
    Ok((docs, channel))
}
