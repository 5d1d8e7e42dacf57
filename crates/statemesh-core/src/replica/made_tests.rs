//! The change report's model of the records a batch of received changes made
//! ([`MadeRecords`]), checked against the document: after every batch, the writer and scope
//! the model gives each touched record must be what reading the document gives.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::tests::{replica, sync};
use super::touched::{MadeRecords, TouchedKeys, read_records};
use super::validate::check_new_changes;
use super::{Replica, Scope};

/// Keys written, few enough that writers meet on them.
const KEYS: u32 = 12;

fn below(rng: &mut ChaCha8Rng, n: u32) -> u32 {
    rng.next_u32() % n
}

/// One write of writer `w`: a put of either scope, or a delete.
fn write(rng: &mut ChaCha8Rng, w: &mut Replica) {
    let key = format!("k{}", below(rng, KEYS));
    let value = below(rng, 1000).to_string();
    let op = below(rng, 6);
    w.transact(|tx| match op {
        0 => tx.delete("jobs", &key),
        1 | 2 => tx.put("jobs", &key, &value, Scope::Presence),
        _ => tx.put("jobs", &key, &value, Scope::Durable),
    })
    .expect("a write");
}

#[test]
fn the_records_a_batch_made_are_reported_as_the_document_holds_them() {
    let (mut modelled, mut batches) = (0usize, 0usize);
    for seed in 0..40u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut writers = [replica(1), replica(2), replica(3)];
        let mut receiver = replica(9);
        for round in 0..12 {
            // Each writer writes a little, some pairs sync (a record one made, the other then
            // rewrites, while the first does too), and now and then the receiver takes
            // whatever it lacks, in batches: a record made, rewritten by two writers at once,
            // may reach it in one batch.
            for _ in 0..4 {
                let w = below(&mut rng, 3) as usize;
                write(&mut rng, &mut writers[w]);
            }
            if below(&mut rng, 3) != 0 {
                // The third writer makes a record, the other two take it and rewrite it at
                // once, each in scopes of its own choosing, one of them twice: their writers
                // and scopes conflict.
                let [x, y, z] = &mut writers;
                let key = format!("new{round}");
                let scope = |rng: &mut ChaCha8Rng| {
                    [Scope::Durable, Scope::Presence][below(rng, 2) as usize]
                };
                let made = scope(&mut rng);
                z.transact(|tx| tx.put("jobs", &key, &"made", made))
                    .expect("a write");
                sync(z, x);
                sync(z, y);
                for (w, times) in [(x, 1 + below(&mut rng, 2)), (y, 1)] {
                    for _ in 0..times {
                        let s = scope(&mut rng);
                        w.transact(|tx| tx.put("jobs", &key, &"again", s))
                            .expect("a write");
                    }
                }
            }
            if round != 11 && below(&mut rng, 3) != 0 {
                continue;
            }
            let mut all = receiver.doc.clone();
            for w in &mut writers {
                all.merge(&mut w.doc.clone()).expect("a merge");
            }
            let mut rest = all.get_changes(&receiver.doc.get_heads());
            while !rest.is_empty() {
                let n = (1 + below(&mut rng, 6) as usize).min(rest.len());
                let batch: Vec<_> = rest.drain(..n).collect();
                let before = receiver.doc.get_heads();
                receiver.doc.apply_changes(batch).expect("an apply");
                let mut keys = TouchedKeys::new(&receiver.layout).with_made_records();
                check_new_changes(&receiver.doc, &receiver.layout, &before, Some(&mut keys))
                    .expect("honest changes pass");
                let made = keys.made_records();
                let (records, _) = keys.finish();
                let doc = &receiver.doc;
                let read = read_records(doc, &receiver.layout, &records, &MadeRecords::default());
                let model = read_records(doc, &receiver.layout, &records, &made);
                assert_eq!(model, read, "seed {seed}: records {records:?}");
                modelled += made.followed(doc, &receiver.layout, &records);
                batches += 1;
            }
        }
    }
    assert!(batches > 40, "{batches} batches");
    assert!(
        modelled > 100,
        "the model answered for only {modelled} records"
    );
}
