use super::*;
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

/// A nested value, so that writes also touch objects inside a record.
#[derive(Debug, Clone, PartialEq, Reconcile, Hydrate)]
struct Job {
    state: String,
    tags: Vec<String>,
}

fn replica(n: u8) -> Replica {
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(n));
    Replica::new(PeerId::generate(1_000 + u64::from(n), &mut rng), [n; 16])
}

/// Runs the sync exchange between two replicas until neither has anything to send.
fn sync(a: &mut Replica, b: &mut Replica) {
    let (mut sa, mut sb) = (Replica::new_sync_state(), Replica::new_sync_state());
    for _ in 0..20 {
        let to_b = a.generate_sync(&mut sa);
        let to_a = b.generate_sync(&mut sb);
        if to_b.is_none() && to_a.is_none() {
            return;
        }
        if let Some(msg) = to_b {
            b.receive_sync(&mut sb, &msg).expect("a valid message");
        }
        if let Some(msg) = to_a {
            a.receive_sync(&mut sa, &msg).expect("a valid message");
        }
    }
    panic!("the replicas kept talking");
}

/// Issue 14: the same value written by another window was a change (its writer was
/// rewritten) though the docs say it is not. It is not, for durable records; a
/// presence-scoped one changes hands (its writer's death decides whether it is seen).
#[test]
fn the_same_durable_value_from_another_writer_is_not_a_change() {
    let (mut a, mut b) = (replica(1), replica(2));
    let put = |r: &mut Replica, v: &str, scope| {
        r.transact(|tx| tx.put("c", "k", &v.to_owned(), scope))
            .expect("write")
            .1
    };
    assert!(put(&mut a, "v", Scope::Durable).is_some());
    sync(&mut a, &mut b);
    assert_eq!(
        put(&mut b, "v", Scope::Durable),
        None,
        "same value, other writer"
    );
    assert!(put(&mut b, "w", Scope::Durable).is_some(), "another value");
    assert!(put(&mut b, "w", Scope::Presence).is_some(), "another scope");
    assert_eq!(
        put(&mut b, "w", Scope::Presence),
        None,
        "same value, same writer"
    );
    sync(&mut a, &mut b);
    assert!(
        put(&mut a, "w", Scope::Presence).is_some(),
        "presence changes hands"
    );
}

/// Issue 14: `add` of `i64::MAX` then 1 read `i64::MIN` (Automerge's counter wrapped).
#[test]
fn counters_refuse_to_wrap_and_merged_sums_saturate() {
    let (mut a, mut b) = (replica(1), replica(2));
    let add = |r: &mut Replica, by: i64| r.transact(|tx| tx.add("n", by, Scope::Durable));
    add(&mut a, i64::MAX).expect("fits");
    let e = add(&mut a, 1).expect_err("would wrap");
    assert!(
        matches!(e, WriteError::CounterOverflow { ref name, share: i64::MAX, by: 1 } if name == "n"),
        "{e}"
    );
    assert_eq!(a.counter("n", |_| true), i64::MAX, "nothing was written");
    // Within one transaction too: the second addition sees the first.
    let e = a
        .transact(|tx| {
            tx.add("m", i64::MIN, Scope::Durable)?;
            tx.add("m", -1, Scope::Durable)
        })
        .expect_err("would wrap");
    assert!(matches!(e, WriteError::CounterOverflow { .. }), "{e}");
    assert_eq!(a.counter("m", |_| true), 0, "the transaction was dropped");
    // Two writers whose shares add up beyond the range: reads saturate, on both sides.
    add(&mut b, 5).expect("fits");
    sync(&mut a, &mut b);
    assert_eq!(a.counter("n", |_| true), i64::MAX);
    assert_eq!(b.counter("n", |_| true), i64::MAX);
    add(&mut b, -10).expect("fits");
    sync(&mut a, &mut b);
    assert_eq!(
        a.counter("n", |_| true),
        i64::MAX - 5,
        "exact once within range"
    );
    add(&mut a, i64::MIN).expect("fits: -1 share");
    let mut c = replica(3);
    add(&mut c, i64::MIN).expect("fits");
    sync(&mut a, &mut c);
    assert_eq!(c.counter("n", |_| true), i64::MIN, "saturates low");
}

/// What the presence index must say, found the slow way: a scan of the document.
fn scanned_presence_entries(r: &Replica, writer: PeerId) -> BTreeSet<(EntryKind, String)> {
    let mut out = BTreeSet::new();
    for item in r.doc.map_range(&r.layout.records, ..) {
        if let Some(rec) = r.record_obj(&item.key)
            && r.is_presence(&rec)
            && r.writer_of(&rec) == Some(writer)
        {
            out.insert((EntryKind::Record, item.key.to_string()));
        }
    }
    for item in r.doc.map_range(&r.layout.counters, ..) {
        if let Some((name, w, "p")) = split_counter_key(&item.key)
            && w == writer.to_string()
        {
            out.insert((EntryKind::Counter, name.to_owned()));
        }
    }
    out
}

fn indexed(r: &Replica, writer: PeerId) -> BTreeSet<(EntryKind, String)> {
    r.presence_entries_of(writer)
        .into_iter()
        .map(|e| match e.kind {
            EntryKind::Record => (e.kind, format!("{}{SEP}{}", e.channel, e.key)),
            _ => (e.kind, e.key),
        })
        .collect()
}

/// Entries whose visible state differs between two sets of heads, by Automerge's diff of
/// the whole document (what change notifications must cover).
fn diffed(r: &Replica, before: &[ChangeHash]) -> BTreeSet<(EntryKind, String)> {
    let mut out = BTreeSet::new();
    for patch in r.doc.diff(before, &r.heads()) {
        let (obj, prop) = if patch.path.len() >= 2 {
            (patch.path[1].0.clone(), patch.path[1].1.to_string())
        } else {
            let prop = match &patch.action {
                automerge::PatchAction::PutMap { key, .. }
                | automerge::PatchAction::DeleteMap { key } => key.clone(),
                automerge::PatchAction::Increment { prop, .. }
                | automerge::PatchAction::Conflict { prop } => prop.to_string(),
                _ => continue,
            };
            (patch.obj.clone(), prop)
        };
        if obj == r.layout.records {
            out.insert((EntryKind::Record, prop));
        } else if obj == r.layout.counters
            && let Some((name, _, _)) = split_counter_key(&prop)
        {
            out.insert((EntryKind::Counter, name.to_owned()));
        }
    }
    out
}

fn reported(changes: &[EntryChange]) -> BTreeSet<(EntryKind, String)> {
    changes
        .iter()
        .map(|e| match e.kind {
            EntryKind::Record => (e.kind, format!("{}{SEP}{}", e.channel, e.key)),
            _ => (e.kind, e.key.clone()),
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        who: usize,
        key: u8,
        presence: bool,
    },
    PutJob {
        who: usize,
        key: u8,
        tag: u8,
    },
    Delete {
        who: usize,
        key: u8,
    },
    Add {
        who: usize,
        name: u8,
        presence: bool,
    },
    Sync {
        a: usize,
        b: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..6u8, any::<bool>()).prop_map(|(who, key, presence)| Op::Put {
            who,
            key,
            presence
        }),
        (0..3usize, 0..6u8, 0..4u8).prop_map(|(who, key, tag)| Op::PutJob { who, key, tag }),
        (0..3usize, 0..6u8).prop_map(|(who, key)| Op::Delete { who, key }),
        (0..3usize, 0..3u8, any::<bool>()).prop_map(|(who, name, presence)| Op::Add {
            who,
            name,
            presence
        }),
        (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Sync { a, b }),
    ]
}

fn scope(presence: bool) -> Scope {
    if presence {
        Scope::Presence
    } else {
        Scope::Durable
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// After any mix of local writes and syncs: every entry Automerge's whole-document diff
    /// shows as changed is reported by `touched_since`, and the presence index of every
    /// replica equals a scan of its document.
    #[test]
    fn touched_entries_and_presence_index_follow_the_document(ops in proptest::collection::vec(op(), 1..40)) {
        let mut rs = [replica(1), replica(2), replica(3)];
        let writers: Vec<PeerId> = rs.iter().map(|r| r.me).collect();
        for op in ops {
            let check = |r: &mut Replica, before: Vec<ChangeHash>| {
                let expected = diffed(r, &before);
                let got = reported(&r.touched_since(&before));
                prop_assert!(got.is_superset(&expected), "diff {expected:?}, touched {got:?}");
                Ok(())
            };
            match op {
                Op::Put { who, key, presence } => {
                    let before = rs[who].heads();
                    rs[who].transact(|tx| tx.put("c", &format!("k{key}"), &u64::from(key), scope(presence))).expect("put");
                    check(&mut rs[who], before)?;
                }
                Op::PutJob { who, key, tag } => {
                    let before = rs[who].heads();
                    let job = Job { state: format!("s{tag}"), tags: (0..tag).map(|t| t.to_string()).collect() };
                    rs[who].transact(|tx| tx.put("jobs", &format!("k{key}"), &job, Scope::Presence)).expect("put");
                    check(&mut rs[who], before)?;
                }
                Op::Delete { who, key } => {
                    let before = rs[who].heads();
                    rs[who].transact(|tx| tx.delete("c", &format!("k{key}"))).expect("delete");
                    check(&mut rs[who], before)?;
                }
                Op::Add { who, name, presence } => {
                    let before = rs[who].heads();
                    rs[who].transact(|tx| tx.add(&format!("n{name}"), 1, scope(presence))).expect("add");
                    check(&mut rs[who], before)?;
                }
                Op::Sync { a, b } if a != b => {
                    let (lo, hi) = (a.min(b), a.max(b));
                    let (left, right) = rs.split_at_mut(hi);
                    let (ra, rb) = (&mut left[lo], &mut right[0]);
                    let (before_a, before_b) = (ra.heads(), rb.heads());
                    sync(ra, rb);
                    check(ra, before_a)?;
                    check(rb, before_b)?;
                }
                Op::Sync { .. } => {}
            }
            for r in &rs {
                for w in &writers {
                    prop_assert_eq!(indexed(r, *w), scanned_presence_entries(r, *w));
                }
            }
        }
    }
}

#[test]
fn a_load_rebuilds_the_presence_index() {
    let mut a = replica(1);
    a.transact(|tx| {
        tx.put("c", "k", &1u64, Scope::Presence)?;
        tx.add("n", 2, Scope::Presence)
    })
    .expect("writes");
    let mut b = replica(2);
    let report = b.load_stored(&a.save()).expect("loads");
    assert!(report.changed);
    let expected: BTreeSet<_> = [
        (EntryKind::Record, format!("c{SEP}k")),
        (EntryKind::Counter, "n".to_owned()),
    ]
    .into();
    assert_eq!(indexed(&b, a.me), expected);
}

#[test]
fn a_write_inside_a_nested_value_is_reported_as_its_record() {
    let mut a = replica(1);
    let job = Job {
        state: "run".into(),
        tags: vec!["x".into()],
    };
    a.transact(|tx| tx.put("jobs", "j", &job, Scope::Durable))
        .expect("put");
    let before = a.heads();
    let job = Job {
        state: "run".into(),
        tags: vec!["x".into(), "y".into()],
    };
    a.transact(|tx| tx.put("jobs", "j", &job, Scope::Durable))
        .expect("put");
    let touched = a.touched_since(&before);
    assert_eq!(
        touched,
        vec![EntryChange {
            kind: EntryKind::Record,
            channel: "jobs".into(),
            key: "j".into(),
            by: Some(a.me),
        }]
    );
}
