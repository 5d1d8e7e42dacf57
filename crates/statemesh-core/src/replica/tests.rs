use super::presence::tests::scanned_visible_keys;
use super::*;
use automerge::ROOT;
use automerge::transaction::Transaction;
use autosurgeon::Reconcile;
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

/// A nested value, so that writes also touch objects inside a record.
#[derive(Debug, Clone, PartialEq, Reconcile, Hydrate)]
struct Job {
    state: String,
    tags: Vec<String>,
}

pub(super) fn replica(n: u8) -> Replica {
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(n));
    Replica::new(PeerId::generate(1_000 + u64::from(n), &mut rng), [n; 16])
}

/// `honest` with its first put turned into an insertion: a change no Automerge makes, which
/// Automerge accepts and statemesh refuses (a record's field put as an insertion).
pub(super) fn forged_insertion(honest: &automerge::Change) -> automerge::Change {
    let mut expanded = honest.decode();
    expanded
        .operations
        .iter_mut()
        .find(|op| matches!(op.action, automerge::legacy::OpType::Put(_)))
        .expect("a put")
        .insert = true;
    expanded.hash = None;
    automerge::Change::from(expanded)
}

/// Runs the sync exchange between two replicas until neither has anything to send.
pub(super) fn sync(a: &mut Replica, b: &mut Replica) {
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
    for channel in r.doc.map_range(&r.layout.records, ..) {
        for item in r.doc.map_range(channel.id(), ..) {
            let rec = item.id();
            if r.is_presence(&rec) && r.writer_of(&rec) == Some(writer) {
                out.insert((
                    EntryKind::Record,
                    format!("{}{SEP}{}", channel.key, item.key),
                ));
            }
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
        // Records: ROOT -> "r" -> channel -> key; counters: ROOT -> "c" -> flat key.
        if patch.path.len() >= 2 && patch.path[1].0 == r.layout.records {
            let channel = patch.path[1].1.to_string();
            let key = match (patch.path.get(2), &patch.action) {
                (Some((_, key)), _) => key.to_string(),
                (
                    None,
                    automerge::PatchAction::PutMap { key, .. }
                    | automerge::PatchAction::DeleteMap { key },
                ) => key.clone(),
                (None, automerge::PatchAction::Conflict { prop }) => prop.to_string(),
                _ => continue,
            };
            out.insert((EntryKind::Record, format!("{channel}{SEP}{key}")));
            continue;
        }
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
        if obj == r.layout.counters
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

pub(super) fn scope(presence: bool) -> Scope {
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
    /// replica, and the keys its reads show, equal a scan of its document.
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
            for r in &mut rs {
                for w in &writers {
                    prop_assert_eq!(indexed(r, *w), scanned_presence_entries(r, *w));
                }
                let live = |p: &PeerId| *p == writers[0];
                for ch in ["c", "jobs"] {
                    prop_assert_eq!(r.keys(ch, live), scanned_visible_keys(r, ch, live));
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

/// The change that made channel `channel`'s map in `r`.
fn channel_change_in(r: &Replica, channel: &str) -> automerge::Change {
    let ch = channel_obj(&r.doc, &r.layout.records, channel).expect("the channel has a map");
    let hash = r.doc.hash_for_opid(&ch).expect("the map's change");
    r.doc.get_change_by_hash(&hash).expect("the change")
}

/// Two peers with different histories that write to a new channel at once create one and the
/// same map: the channel's change is byte for byte the same, and after a sync each holds one
/// map with both records (no competing container hides one side's writes).
#[test]
fn a_channel_created_by_two_peers_at_once_is_one_map() {
    let (mut a, mut b) = (replica(1), replica(2));
    for i in 0..30 {
        a.transact(|tx| tx.put("a-only", &format!("k{i}"), &i, Scope::Durable))
            .expect("write");
    }
    b.transact(|tx| {
        tx.add("n", 3, Scope::Durable)?;
        tx.put("b-only", "k", &"x".to_owned(), Scope::Durable)
    })
    .expect("write");
    a.transact(|tx| tx.put("both", "from-a", &1, Scope::Durable))
        .expect("write");
    b.transact(|tx| tx.put("both", "from-b", &2, Scope::Durable))
        .expect("write");
    let (ca, cb) = (channel_change_in(&a, "both"), channel_change_in(&b, "both"));
    assert_eq!(ca.hash(), cb.hash(), "one change on both peers");
    assert_eq!(ca.raw_bytes(), cb.raw_bytes(), "byte for byte");
    assert_eq!(ca.raw_bytes(), channel_change("both").raw_bytes());
    assert_eq!(
        ca.deps(),
        genesis().0.get_heads().as_slice(),
        "on the genesis"
    );
    assert_eq!((ca.seq(), ca.start_op().get()), (1, 6));
    assert_eq!(ca.actor_id(), &channel_actor("both"));
    sync(&mut a, &mut b);
    assert_eq!(a.heads(), b.heads());
    for r in [&mut a, &mut b] {
        assert_eq!(
            r.doc
                .get_all(&r.layout.records, "both")
                .expect("read")
                .len(),
            1,
            "one map, no conflict"
        );
        assert_eq!(r.keys("both", |_| true), ["from-a", "from-b"]);
        assert_eq!(
            r.get::<i64>("both", "from-b", |_| true).expect("read"),
            Some(2)
        );
        assert_eq!(r.channels(), ["a-only", "b-only", "both"]);
        assert_eq!(r.keys("a-only", |_| true).len(), 30);
    }
}

/// A transaction that writes to several new channels, and to existing ones, is one change
/// (run again once the maps exist); one that fails writes nothing.
#[test]
fn a_transaction_over_new_channels_is_one_change() {
    let mut a = replica(1);
    a.transact(|tx| tx.put("old", "k", &0, Scope::Durable))
        .expect("write");
    let before = a.heads();
    let mut runs = 0;
    let (_, hash) = a
        .transact(|tx| {
            runs += 1;
            tx.put("old", "k", &1, Scope::Durable)?;
            tx.put("new1", "k", &2, Scope::Durable)?;
            tx.put("new2", "k", &3, Scope::Presence)?;
            tx.delete("never-written", "k")
        })
        .expect("write");
    assert_eq!(runs, 2, "one run to find the new channels, one to write");
    let hash = hash.expect("a change");
    let mine: Vec<_> = a
        .doc
        .get_changes_meta(&before)
        .into_iter()
        .filter(|c| *c.actor == *a.doc.get_actor())
        .map(|c| c.hash)
        .collect();
    assert_eq!(mine, [hash], "the writes are one change");
    assert_eq!(a.get::<i64>("new2", "k", |_| true).expect("read"), Some(3));
    assert_eq!(a.get::<i64>("old", "k", |_| true).expect("read"), Some(1));
    let heads = a.heads();
    let err = a.transact(|tx| {
        tx.put("new3", "k", &1, Scope::Durable)?;
        tx.put("new3", "bad\u{1}", &1, Scope::Durable)
    });
    assert!(matches!(err, Err(WriteError::InvalidName(_))), "{err:?}");
    assert_eq!(
        a.keys("new3", |_| true),
        Vec::<String>::new(),
        "nothing written"
    );
    assert!(
        a.doc
            .get_changes_meta(&heads)
            .iter()
            .all(|c| *c.actor != *a.doc.get_actor()),
        "no change of this peer"
    );
}

/// A received change may create a channel's map only as the channel's own change: a
/// competing map (which would hide the channel's records), a deletion or replacement of a
/// channel's map, or any operation on the root, is refused and leaves the document as it was.
#[test]
fn a_forged_channel_container_is_refused() {
    use automerge::sync::SyncDoc;
    let (mut a, mut b) = (replica(1), replica(2));
    a.transact(|tx| tx.put("probes", "api", &"up".to_owned(), Scope::Durable))
        .expect("write");
    sync(&mut a, &mut b);
    type Forge = fn(&mut Transaction<'_>, &ObjId);
    let forgeries: [(&str, Forge); 5] = [
        ("a competing map for an existing channel", |tx, records| {
            let ch = tx
                .put_object(records, "probes", ObjType::Map)
                .expect("forged");
            tx.put_object(&ch, "api", ObjType::Map).expect("forged");
        }),
        ("a competing map for a new channel", |tx, records| {
            tx.put_object(records, "jobs", ObjType::Map)
                .expect("forged");
        }),
        ("a channel's map deleted", |tx, records| {
            tx.delete(records, "probes").expect("forged");
        }),
        ("a channel's map replaced by a value", |tx, records| {
            tx.put(records, "probes", 1).expect("forged");
        }),
        ("a new records map", |tx, _| {
            tx.put_object(ROOT, "r", ObjType::Map).expect("forged");
        }),
    ];
    for (what, forge) in forgeries {
        let mut forged = b.doc.clone();
        let records = b.layout.records.clone();
        let mut tx = forged.transaction();
        forge(&mut tx, &records);
        tx.commit_with(CommitOptions::default().with_time(0));
        let heads = a.heads();
        let saved = a.save();
        let mut state = Replica::new_sync_state();
        let mut hostile = Replica::new_sync_state();
        let mut refused = false;
        for _ in 0..10 {
            let Some(msg) = forged.generate_sync_message(&mut hostile) else {
                break;
            };
            match a.receive_sync(&mut state, &msg.encode()) {
                Ok(_) => {}
                Err(ApplyError::Invalid(_)) => {
                    refused = true;
                    break;
                }
                Err(e) => panic!("{what}: {e}"),
            }
            if let Some(reply) = a.generate_sync(&mut state) {
                forged
                    .receive_sync_message(
                        &mut hostile,
                        automerge::sync::Message::decode(&reply).expect("decodes"),
                    )
                    .expect("applies");
            }
        }
        assert!(refused, "{what}: accepted");
        assert_eq!(a.heads(), heads, "{what}: the document changed");
        assert_eq!(
            a.save(),
            saved,
            "{what}: the document is not exactly as it was"
        );
        assert_eq!(
            a.get::<String>("probes", "api", |_| true).expect("read"),
            Some("up".to_owned()),
            "{what}"
        );
        // The same change in a stored file is refused too.
        let file = forged.save_after(&heads);
        assert!(
            matches!(a.load_stored(&file), Err(ApplyError::Invalid(_))),
            "{what}: loaded from a file"
        );
    }
}

/// A state file of the first layout (every record in one flat map) loads: every record, with
/// its writer and scope, every counter entry and the stored term are found in today's layout.
#[test]
fn a_schema_1_file_is_migrated_on_load() {
    use crate::value::Value;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let writer = PeerId::generate(900, &mut rng);
    let nested = Value::Map(
        [
            ("state".to_owned(), Value::Str("running".into())),
            ("tags".to_owned(), Value::List(vec![Value::Str("a".into())])),
        ]
        .into(),
    );
    let mut records = vec![
        ("jobs", "j1", nested.clone(), false),
        ("windows", "w1", Value::Str("open".into()), true),
    ];
    for i in 0..250 {
        records.push((
            "probes",
            Box::leak(format!("ep{i}").into_boxed_str()),
            Value::Int(i),
            false,
        ));
    }
    let file = schema1_file(
        writer,
        &records,
        &[("desired", "d", 5), ("running", "p", 2)],
        7,
    );
    let mut r = replica(3);
    let report = r.load_stored(&file).expect("migrated");
    assert!(report.complete && report.changed, "{report:?}");
    assert_eq!(r.channels(), ["jobs", "probes", "windows"]);
    assert_eq!(r.keys("probes", |_| true).len(), 250);
    for (channel, key, value, _) in &records {
        assert_eq!(
            r.get::<Value>(channel, key, |_| true)
                .expect("read")
                .as_ref(),
            Some(value),
            "{channel}/{key}"
        );
        assert_eq!(r.writer(channel, key), Some(writer), "{channel}/{key}");
    }
    assert_eq!(
        r.get::<Value>("windows", "w1", |_| false).expect("read"),
        None,
        "presence"
    );
    assert_eq!(r.counter("desired", |_| false), 5);
    assert_eq!(r.counter("running", |_| true), 2);
    assert_eq!(r.counter("running", |_| false), 0);
    assert_eq!(r.max_stored_term(), 7);
    assert_eq!(indexed(&r, writer), scanned_presence_entries(&r, writer));
    assert_eq!(
        indexed(&r, writer).len(),
        2,
        "the presence record and counter entry"
    );
    // Loading the same file again changes nothing.
    let heads = r.heads();
    let again = r.load_stored(&file).expect("migrated");
    assert!(!again.changed, "{again:?}");
    assert_eq!(r.heads(), heads);
    // Saved in today's layout, it loads as it is on another peer.
    let mut other = replica(4);
    other.load_stored(&r.save()).expect("loads");
    assert_eq!(other.heads(), r.heads());
    // A file of today's layout is not taken for one of the first.
    assert!(legacy::read_v1(&r.save()).is_none());
}
