use automerge::ChangeHash;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::*;
use crate::codec::{FrameDecoder, encode_frame};
use crate::replica::{Scope, WriteError};

pub(super) fn node(seed: u64) -> Node {
    node_with(seed, Config::default())
}

pub(super) fn node_with(seed: u64, config: Config) -> Node {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let id = PeerId::generate(1_000 + seed, &mut rng);
    Node::new(
        config,
        MeshTag::derive(&[1; 32], "t"),
        id,
        &mut rng,
        Time::ZERO,
    )
}

pub(super) fn deliver(from: &mut Node, to: &mut Node, now: Time) -> bool {
    let from_id = from.me().peer;
    let mut moved = false;
    while let Some(t) = from.poll_transmit() {
        moved = true;
        to.handle_frame(now, from_id, &t.frame).expect("accepted");
    }
    moved
}

pub(super) fn pump(a: &mut Node, b: &mut Node, now: Time) {
    for _ in 0..50 {
        let ab = deliver(a, b, now);
        let ba = deliver(b, a, now);
        if !ab && !ba {
            return;
        }
    }
    panic!("sync did not settle");
}

/// Runs `job` and gives it back to `node` until it is done (again while local writes made
/// meanwhile send it back); panics on an error.
pub(super) fn finish_job(node: &mut Node, now: Time, mut job: SyncJob) {
    loop {
        job.run();
        match node.finish_sync(now, job).expect("applies") {
            Some(again) => job = again,
            None => return,
        }
    }
}

pub(super) fn linked() -> (Node, Node) {
    let (mut a, mut b) = (node(1), node(2));
    let (ha, hb) = (a.hello(), b.hello());
    a.check_hello(&hb).expect("same mesh");
    a.handle_link_up(Time::ZERO, &hb);
    b.handle_link_up(Time::ZERO, &ha);
    pump(&mut a, &mut b, Time::ZERO);
    (a, b)
}

/// Issue 14: a write that left the tracking window was never reported either way, so a
/// runtime waiting for its replication waited for ever. The window now moves on ticks too.
#[test]
fn writes_leave_the_replication_window_by_count_and_by_age() {
    let mut a = node(1);
    let first = a.put("c", "k", &0i64, Scope::Durable).expect("write").id;
    assert_eq!(a.replication_tracked_from(), first);
    let mut last = first;
    for i in 1..=MAX_PENDING_WRITES as i64 {
        last = a.put("c", "k", &i, Scope::Durable).expect("write").id;
    }
    // Tracked once committed (the runtime commits the open change as it sends it).
    a.settle();
    assert!(
        a.replication_tracked_from() > first,
        "the oldest left by count"
    );
    assert!(a.replication_tracked_from() <= last);
    // By age: no further write needed, a tick moves the window.
    a.handle_tick(Time::ZERO + PENDING_TTL);
    assert!(
        a.replication_tracked_from() > last,
        "every write left by age"
    );
}

/// Issue 13: the core owns framing both ways. A frame whose header is wrong (cut short,
/// announcing more or fewer bytes than it holds, over the frame limit) is refused with a decode
/// error and changes nothing; the same frame, whole, is taken.
#[test]
fn a_frame_with_a_bad_header_is_refused_and_changes_nothing() {
    let (mut a, mut b) = linked();
    while a.poll_event().is_some() {}
    let from = b.me().peer;
    b.put("c", "k", &1i64, Scope::Durable).expect("write");
    let good = b.poll_transmit().expect("the write's sync message").frame;
    assert!(matches!(
        codec::decode_frame(&good, usize::MAX),
        Ok(Message::Sync(_))
    ));
    let max = a.config().max_frame;
    let mut cut = good.to_vec();
    cut.pop();
    let mut long = good.to_vec();
    long.push(0);
    let mut oversize = good.to_vec();
    oversize[..codec::HEADER_LEN]
        .copy_from_slice(&u32::try_from(max + 1).expect("fits").to_be_bytes());
    let bad: [(&[u8], DecodeError); 4] = [
        (&good[..2], DecodeError::Truncated(2)),
        (
            &cut,
            DecodeError::LengthMismatch {
                announced: good.len() - codec::HEADER_LEN,
                actual: cut.len() - codec::HEADER_LEN,
            },
        ),
        (
            &long,
            DecodeError::LengthMismatch {
                announced: good.len() - codec::HEADER_LEN,
                actual: long.len() - codec::HEADER_LEN,
            },
        ),
        (&oversize, DecodeError::TooLarge { len: max + 1, max }),
    ];
    let (heads, view, stats) = (a.heads(), a.explain(Time::ZERO), a.stats());
    for (i, (frame, want)) in bad.into_iter().enumerate() {
        for deferred in [false, true] {
            let got = if deferred {
                a.handle_frame_deferred(Time::ZERO, from, frame).map(|_| ())
            } else {
                a.handle_frame(Time::ZERO, from, frame)
            };
            match got {
                Err(ReceiveError::Decode(e)) => assert_eq!(e, want, "frame {i}"),
                other => panic!("frame {i} was not refused for its header: {other:?}"),
            }
            assert_eq!(a.heads(), heads, "frame {i} changed the document");
            assert_eq!(a.explain(Time::ZERO), view, "frame {i} changed the view");
            assert!(a.poll_transmit().is_none(), "frame {i} made the node send");
            assert!(a.poll_event().is_none(), "frame {i} made an event");
        }
    }
    let after = a.stats();
    assert_eq!(after.decode_errors, stats.decode_errors + 8);
    assert_eq!(after.frames_in, stats.frames_in + 8);
    a.handle_frame(Time::ZERO, from, &good)
        .expect("the whole frame");
    assert_eq!(a.get::<i64>("c", "k").expect("read"), Some(1));
}

/// Issue 13: one encode per broadcast. A view, a leave and leader records sent to several
/// peers are one frame: their transmits share one buffer.
#[test]
fn a_broadcast_is_encoded_once_for_every_peer() {
    let (mut a, b, c) = (node(1), node(2), node(3));
    a.handle_settled(Time::ZERO);
    a.handle_link_up(Time::ZERO, &b.hello());
    a.handle_link_up(Time::ZERO, &c.hello());
    while a.poll_transmit().is_some() {}
    let shared_by_both = |a: &mut Node, kind: fn(&Message) -> bool| {
        let sent: Vec<Transmit> = std::iter::from_fn(|| a.poll_transmit())
            .filter(|t| codec::decode_frame(&t.frame, usize::MAX).is_ok_and(|m| kind(&m)))
            .collect();
        assert_eq!(sent.len(), 2, "one to each peer");
        assert_ne!(sent[0].to, sent[1].to);
        assert_eq!(sent[0].frame.as_ptr(), sent[1].frame.as_ptr());
    };
    a.handle_tick(Time::ZERO + Config::default().heartbeat_interval);
    shared_by_both(&mut a, |m| matches!(m, Message::View(_)));
    let term = a.my_term().expect("leads");
    a.leader_put(Time::ZERO, term, "health", "api", Some(&1i64))
        .expect("leader write");
    shared_by_both(&mut a, |m| matches!(m, Message::Leader(_)));
    a.leave(Time::ZERO);
    shared_by_both(&mut a, |m| matches!(m, Message::Leave(_)));
}

#[test]
fn genesis_is_identical_everywhere() {
    assert_eq!(node(1).heads(), node(2).heads());
}

#[test]
fn hellos_of_other_meshes_and_versions_are_refused() {
    let a = node(1);
    let mut h = node(2).hello();
    h.mesh = MeshTag::derive(&[1; 32], "other");
    assert_eq!(a.check_hello(&h), Err(HelloError::OtherMesh));
    // Under a keyring: the hello of a peer proving with another key this node holds.
    let mut a = a;
    let own = a.hello().mesh;
    a.set_mesh_tags(own, &[own, h.mesh]);
    assert_eq!(a.check_hello(&h), Ok(()));
    a.set_mesh_tags(own, &[own]);
    assert_eq!(a.check_hello(&h), Err(HelloError::OtherMesh));
    let mut h = node(2).hello();
    h.version += 1;
    assert!(matches!(a.check_hello(&h), Err(HelloError::Version { .. })));
    assert_eq!(a.check_hello(&a.hello()), Err(HelloError::SelfConnection));
}

#[test]
fn writes_sync_and_equal_writes_change_nothing() {
    let (mut a, mut b) = linked();
    let w = a
        .put("probes", "api:443", &"up".to_string(), Scope::Durable)
        .expect("write");
    assert!(w.changed);
    assert!(
        !a.put("probes", "api:443", &"up".to_string(), Scope::Durable)
            .expect("write")
            .changed
    );
    a.add("ws/desired", 2, Scope::Durable).expect("write");
    b.add("ws/desired", 3, Scope::Durable).expect("write");
    pump(&mut a, &mut b, Time::ZERO);
    assert_eq!(
        b.get::<String>("probes", "api:443").expect("read"),
        Some("up".into())
    );
    assert_eq!(a.counter("ws/desired"), 5);
    assert_eq!(b.counter("ws/desired"), 5);
    let mut replicated = false;
    while let Some(e) = a.poll_event() {
        replicated |= matches!(e, Event::Replicated { write, peer, .. } if write == w.id && peer == b.me().peer);
    }
    assert!(replicated);
}

#[test]
fn a_burst_of_writes_is_one_sync_round() {
    let (mut a, mut b) = linked();
    for i in 0..100 {
        a.put("c", &format!("k{i}"), &(i as i64), Scope::Durable)
            .expect("write");
    }
    let mut frames = Vec::new();
    while let Some(t) = a.poll_transmit() {
        frames.push(t);
    }
    assert_eq!(frames.len(), 1, "one sync message for the whole burst");
    // As a reader cuts it from the stream: whole, header included.
    let mut d = FrameDecoder::new(1 << 24);
    d.extend(&frames[0].frame);
    let frame = d.next_frame().expect("ok").expect("complete");
    b.handle_frame(Time::ZERO, a.me().peer, &frame)
        .expect("accepted");
    assert_eq!(b.keys("c").len(), 100);
}

/// Issue 13: with push jobs on, a burst of writes is generated off the node (nothing
/// leaves from `poll_transmit` until the job comes back), a lone write still leaves at
/// once, and a write made while the job ran follows it.
#[test]
fn a_burst_leaves_through_a_push_job_and_a_lone_write_at_once() {
    let (mut a, mut b) = linked();
    a.set_push_jobs(true);
    let from = a.me().peer;
    a.put("c", "lone", &1i64, Scope::Durable).expect("write");
    let lone: Vec<Transmit> = std::iter::from_fn(|| a.poll_transmit()).collect();
    assert_eq!(lone.len(), 1, "a lone write leaves at once");
    assert!(a.start_push().is_none());
    b.handle_frame(Time::ZERO, from, &lone[0].frame)
        .expect("accepted");
    deliver(&mut b, &mut a, Time::ZERO);
    for i in 0..50 {
        a.put("c", &format!("k{i}"), &(i as i64), Scope::Durable)
            .expect("write");
    }
    assert!(
        std::iter::from_fn(|| a.poll_transmit()).all(|t| codec::decode_frame(&t.frame, 1 << 24)
            .is_ok_and(|m| !matches!(m, Message::Sync(_)))),
        "the burst is not generated under the node"
    );
    let mut job = a.start_push().expect("a push job");
    assert_eq!(job.peers(), 1);
    assert!(a.start_push().is_none(), "the peer is busy with the job");
    // A write while the job runs: it follows the job's message.
    a.put("c", "late", &2i64, Scope::Durable).expect("write");
    job.run();
    a.finish_push(Time::ZERO, job);
    pump(&mut a, &mut b, Time::ZERO);
    for _ in 0..10 {
        if let Some(mut job) = a.start_push() {
            job.run();
            a.finish_push(Time::ZERO, job);
        }
        pump(&mut a, &mut b, Time::ZERO);
    }
    assert_eq!(
        b.keys("c").len(),
        52,
        "the burst and the late write arrived"
    );
    assert_eq!(a.heads(), b.heads());
}

/// Issue 13: a window applying a large sync message is never taken for frozen. The apply
/// runs as a job away from the node; meanwhile the node ticks past several heartbeats and
/// the suspect timeout, sends its views, judges its peer's views, and takes local writes
/// (to the peer whose message is being applied, too); then the job's changes join the
/// document and both sides converge.
#[test]
fn a_sync_job_leaves_liveness_and_writes_going() {
    let (mut a, mut b) = linked();
    for i in 0..300 {
        b.put("c", &format!("b{i}"), &(i as i64), Scope::Durable)
            .expect("write");
    }
    let frames: Vec<Transmit> = std::iter::from_fn(|| b.poll_transmit()).collect();
    assert_eq!(frames.len(), 1, "one sync message");
    let job = a
        .handle_frame_deferred(Time::ZERO, b.me().peer, &frames[0].frame)
        .expect("accepted")
        .expect("a message with changes becomes a job");
    // The job is out. Time passes well beyond the suspect timeout: heartbeats go out, the
    // peer's views are judged, nobody is suspected, and local writes are taken.
    let hb = Config::default().heartbeat_interval;
    let mut now = Time::ZERO;
    let mut views_sent = 0;
    for i in 0..10 {
        now = now + hb;
        a.handle_tick(now);
        b.handle_tick(now);
        a.put("c", &format!("a{i}"), &i64::from(i), Scope::Durable)
            .expect("write");
        while let Some(t) = a.poll_transmit() {
            let frame = t.frame;
            if codec::is_view(&frame) {
                views_sent += 1;
                b.handle_frame(now, a.me().peer, &frame).expect("view");
            } else {
                panic!("no sync message to the peer whose message is being applied");
            }
        }
        while let Some(t) = b.poll_transmit() {
            let frame = t.frame;
            if codec::is_view(&frame) {
                a.handle_frame(now, b.me().peer, &frame).expect("view");
            }
        }
    }
    assert!(views_sent >= 10, "a beat every heartbeat: {views_sent}");
    assert_eq!(a.me().number, 0, "a never refuted nor found itself frozen");
    assert_eq!(b.me().number, 0);
    assert!(a.is_live(&b.me().peer) && b.is_live(&a.me().peer));
    assert_eq!(a.keys("c").len(), 10, "only the local writes so far");
    // Ten local writes were made meanwhile: they join the job's copy off the node.
    finish_job(&mut a, now, job);
    assert_eq!(
        a.keys("c").len(),
        310,
        "the job's changes and the writes made meanwhile"
    );
    assert!(
        std::iter::from_fn(|| a.poll_event())
            .filter(|e| matches!(e, Event::Changed(c) if c.key.starts_with('b')))
            .count()
            == 300,
        "one change event per received record"
    );
    pump(&mut a, &mut b, now);
    assert_eq!(a.heads(), b.heads());
    assert_eq!(b.keys("c").len(), 310);
}

/// A job whose link went down (and came up again) meanwhile is dropped; the new link syncs.
#[test]
fn a_sync_job_of_a_link_gone_is_dropped() {
    let (mut a, mut b) = linked();
    b.put("c", "k", &1i64, Scope::Durable).expect("write");
    // The change leaves once the exchange asks for it: pump until a message carries it.
    let mut job = None;
    for _ in 0..10 {
        while let Some(t) = b.poll_transmit() {
            if let Some(j) = a
                .handle_frame_deferred(Time::ZERO, b.me().peer, &t.frame)
                .expect("accepted")
            {
                job = Some(j);
            }
        }
        if job.is_some() {
            break;
        }
        deliver(&mut a, &mut b, Time::ZERO);
    }
    let mut job = job.expect("a message carrying the change");
    a.handle_link_down(Time::ZERO, b.me().peer, LinkDown::Hint);
    a.handle_link_up(Time::ZERO, &b.hello());
    b.handle_link_down(Time::ZERO, a.me().peer, LinkDown::Hint);
    b.handle_link_up(Time::ZERO, &a.hello());
    job.run();
    assert!(
        a.finish_sync(Time::ZERO, job)
            .expect("dropped quietly")
            .is_none()
    );
    assert!(a.keys("c").is_empty(), "nothing applied from the old link");
    pump(&mut a, &mut b, Time::ZERO);
    assert_eq!(a.keys("c"), vec!["k".to_owned()]);
}

#[test]
fn malformed_sync_input_leaves_the_document_untouched() {
    let (mut a, mut b) = linked();
    b.put("c", "k", &1i64, Scope::Durable).expect("write");
    let from = b.me().peer;
    let mut with_changes = 0;
    for _ in 0..10 {
        // Every sync frame from b reaches a first in corrupted forms, then intact.
        while let Some(t) = b.poll_transmit() {
            let mut d = FrameDecoder::new(1 << 24);
            d.extend(&t.frame);
            let Some(Message::Sync(good)) = d.next_message().expect("valid") else {
                a.handle_frame(Time::ZERO, from, &t.frame)
                    .expect("accepted");
                continue;
            };
            let message = automerge::sync::Message::decode(&good).expect("decodes");
            with_changes += usize::from(!message.changes.is_empty());
            let before = a.heads();
            let mut flipped = good.clone();
            let n = flipped.len();
            flipped[n - 3] ^= 0x55;
            for bad in [
                vec![0x42],
                vec![0xff; 40],
                good[..good.len() / 2].to_vec(),
                flipped,
            ] {
                let frame = encode_frame(&Message::Sync(bad), 1 << 24).expect("fits");
                assert!(a.handle_frame(Time::ZERO, from, &frame).is_err());
                assert_eq!(a.heads(), before, "a refused message changed the document");
            }
            let frame = encode_frame(&Message::Sync(good), 1 << 24).expect("fits");
            a.handle_frame(Time::ZERO, from, &frame).expect("accepted");
        }
        deliver(&mut a, &mut b, Time::ZERO);
    }
    assert!(with_changes > 0, "no sync message carried changes");
    assert_eq!(a.get::<i64>("c", "k").expect("read"), Some(1));
}

/// The highest operation counter of `node`'s heads: a forged change numbered after it fits
/// the document's op numbering.
pub(super) fn max_op(node: &Node) -> u64 {
    let doc = node.replica().doc();
    node.heads()
        .iter()
        .filter_map(|h| doc.get_change_meta_by_hash(h))
        .map(|c| c.max_op)
        .max()
        .expect("known heads")
}

/// A frame of a sync message carrying one change made from `operations`, numbered from `start_op`,
/// on top of `heads`.
pub(super) fn raw_change_frame(
    heads: &[ChangeHash],
    start_op: u64,
    operations: Vec<automerge::legacy::Op>,
) -> Vec<u8> {
    let change = automerge::Change::from(automerge::ExpandedChange {
        operations,
        actor_id: automerge::ActorId::from([9u8; 16].as_slice()),
        hash: None,
        seq: 1,
        start_op: std::num::NonZeroU64::new(start_op).expect("nonzero"),
        time: 0,
        message: None,
        deps: heads.to_vec(),
        extra_bytes: Vec::new(),
        author: None,
    });
    let message =
        crate::replica::message_carrying(vec![change.raw_bytes().to_vec()], vec![change.hash()]);
    encode_frame(&Message::Sync(message.encode()), 1 << 20).expect("fits")
}

#[test]
fn changes_the_crdt_library_accepts_but_cannot_keep_are_refused() {
    use automerge::legacy::{ElementId, Key, ObjectId, Op, OpId, OpType};
    let (mut a, b) = linked();
    let heads = a.heads();
    let max_op = max_op(&a);
    // The genesis change made the meta map ("m") with its third operation.
    let meta = OpId(3, automerge::ActorId::from([0u8; 16].as_slice()));
    let bad = [
        // Numbered below, or with a gap after, its dependency: Automerge would then save a
        // document it refuses to load.
        raw_change_frame(&heads, max_op, Vec::new()),
        raw_change_frame(&heads, max_op + 5, Vec::new()),
        // Not descending from the genesis change: the same.
        raw_change_frame(&[], max_op + 1, Vec::new()),
        // An insertion into a map: Automerge would then fail to send or save it.
        raw_change_frame(
            &heads,
            max_op + 1,
            vec![Op {
                action: OpType::Delete,
                obj: ObjectId::Id(meta.clone()),
                key: Key::Seq(ElementId::Id(meta.clone())),
                pred: vec![meta.clone()].into(),
                insert: true,
            }],
        ),
        // An element key on a map: Automerge would then save a document it cannot load.
        raw_change_frame(
            &heads,
            max_op + 1,
            vec![Op {
                action: OpType::Make(automerge::ObjType::Map),
                obj: ObjectId::Id(meta.clone()),
                key: Key::Seq(ElementId::Head),
                pred: Vec::new().into(),
                insert: false,
            }],
        ),
        // A text mark ending in a map: Automerge would then save a document it refuses to
        // load.
        raw_change_frame(
            &heads,
            max_op + 1,
            vec![Op {
                action: OpType::MarkEnd(true),
                obj: ObjectId::Id(meta),
                key: Key::Map("k".into()),
                pred: Vec::new().into(),
                insert: false,
            }],
        ),
    ];
    for frame in bad {
        let r = a.handle_frame(Time::ZERO, b.me().peer, &frame);
        assert!(matches!(r, Err(ReceiveError::Apply(_))), "accepted: {r:?}");
        assert_eq!(a.heads(), heads);
        assert!(automerge::Automerge::load(&a.replica().save()).is_ok());
        assert!(!a.replica().doc().get_changes(&[]).is_empty());
    }
}

/// Sends `b`'s frames to `a` as a runtime does (`handle_frame_deferred`, jobs run at once)
/// until they are in sync, `a` catching its standby up after each round if `catch_up`;
/// returns how many frames became a job.
fn receive_deferred(a: &mut Node, b: &mut Node, catch_up: bool) -> usize {
    let from = b.me().peer;
    let mut jobs = 0;
    for _ in 0..10 {
        while let Some(t) = b.poll_transmit() {
            if let Some(mut job) = a
                .handle_frame_deferred(Time::ZERO, from, &t.frame)
                .expect("accepted")
            {
                jobs += 1;
                job.run();
                assert!(a.finish_sync(Time::ZERO, job).expect("applies").is_none());
            }
        }
        if catch_up {
            a.catch_up_standby();
        }
        if !deliver(a, b, Time::ZERO) {
            break;
        }
    }
    jobs
}

/// Issue 13: a small sync message is applied in place, on the receiver's turn, once the
/// replica keeps a standby (a job's hand-overs between threads cost more than its apply); the
/// standby is left behind until `catch_up_standby`, and a refused message still leaves the
/// document exactly as it was.
#[test]
fn small_messages_are_applied_at_once_and_refused_ones_change_nothing() {
    let (mut a, mut b) = linked();
    let from = b.me().peer;
    let receive = |a: &mut Node, b: &mut Node| receive_deferred(a, b, true);
    b.put("c", "first", &1i64, Scope::Durable).expect("write");
    receive(&mut a, &mut b);
    assert_eq!(a.keys("c"), vec!["first".to_owned()]);
    // (Behind by the job's changes: the next receive catches it up.)
    assert!(
        a.replica.standby_lag().is_some(),
        "a receive leaves a standby"
    );
    b.put("c", "second", &2i64, Scope::Durable).expect("write");
    assert_eq!(receive(&mut a, &mut b), 0, "a small message makes no job");
    assert_eq!(a.get::<i64>("c", "second").expect("read"), Some(2));
    assert_eq!(a.replica.standby_lag(), Some(0), "caught up after the turn");
    // A refused message, in place, with the standby behind by a received change.
    b.put("c", "third", &3i64, Scope::Durable).expect("write");
    let mut frames = Vec::new();
    for _ in 0..10 {
        while let Some(t) = b.poll_transmit() {
            frames.push(t.frame);
        }
        if !frames.is_empty() {
            break;
        }
    }
    for f in frames {
        a.handle_frame_deferred(Time::ZERO, from, &f)
            .expect("accepted");
    }
    assert_eq!(a.get::<i64>("c", "third").expect("read"), Some(3));
    assert!(
        a.replica.standby_lag().is_some_and(|lag| lag > 0),
        "left behind"
    );
    let (heads, saved) = (a.heads(), a.replica().save());
    let max_op = max_op(&a);
    // Numbered below its dependency: refused by the checks after Automerge applied it.
    let bad = raw_change_frame(&heads, max_op, Vec::new());
    let r = a.handle_frame_deferred(Time::ZERO, from, &bad);
    assert!(matches!(r, Err(ReceiveError::Apply(_))), "accepted: {r:?}");
    assert_eq!(
        (a.heads(), a.replica().save()),
        (heads, saved),
        "not exactly as it was"
    );
    a.catch_up_standby();
    b.put("c", "fourth", &4i64, Scope::Durable).expect("write");
    receive(&mut a, &mut b);
    pump(&mut a, &mut b, Time::ZERO);
    assert_eq!(a.heads(), b.heads());
    assert_eq!(a.keys("c").len(), 4);
}

/// Local changes leave the standby behind too, and `catch_up_standby` (the runtime calls it
/// once idle) gives it them: a window that wrote more changes than a receive in place may
/// catch up first still applies the next small message in place, with no job.
#[test]
fn local_changes_are_owed_to_the_standby_until_it_catches_up() {
    let (mut a, mut b) = linked();
    let from = b.me().peer;
    // A first receive, so that `a` keeps a standby.
    b.put("c", "first", &1i64, Scope::Durable).expect("write");
    pump(&mut a, &mut b, Time::ZERO);
    a.catch_up_standby();
    assert_eq!(a.replica.standby_lag(), Some(0));
    assert!(!a.standby_owed());
    let writes = jobs::INLINE_STANDBY_LAG + 4;
    for i in 0..writes {
        a.put("c", &format!("a{i}"), &(i as i64), Scope::Durable)
            .expect("write");
        // Each write committed (as a runtime that sends it before the next write does).
        a.settle();
        // A runtime brings it up to date at its first idle moment once a batch is owed.
        assert_eq!(a.standby_batch_owed(), i + 1 >= STANDBY_BATCH, "after {i}");
    }
    assert!(a.standby_owed(), "local changes owe the standby");
    assert_eq!(a.replica.standby_lag(), Some(writes));
    a.catch_up_standby();
    assert!(!a.standby_owed() && !a.standby_batch_owed());
    assert_eq!(a.replica.standby_lag(), Some(0));
    // Everything of `a` reaches `b` (without `a` receiving anything that carries changes).
    for _ in 0..10 {
        while let Some(t) = a.poll_transmit() {
            b.handle_frame(Time::ZERO, a.me().peer, &t.frame)
                .expect("accepted");
        }
        while let Some(t) = b.poll_transmit() {
            assert!(
                a.handle_frame_deferred(Time::ZERO, from, &t.frame)
                    .expect("accepted")
                    .is_none(),
                "an answer without changes makes no job"
            );
        }
    }
    assert_eq!(b.keys("c").len(), writes + 1);
    b.put("c", "second", &2i64, Scope::Durable).expect("write");
    assert_eq!(
        receive_deferred(&mut a, &mut b, false),
        0,
        "applied in place"
    );
    assert_eq!(a.get::<i64>("c", "second").expect("read"), Some(2));
    assert!(a.standby_owed(), "the message's change is owed");
}

#[test]
fn persisted_state_reloads_with_its_terms() {
    let mut a = node(1);
    a.handle_settled(Time::ZERO);
    assert!(a.my_term().is_some());
    // The claim is recorded a heartbeat interval later.
    a.handle_tick(Time::ZERO + a.config().heartbeat_interval);
    a.put("c", "k", &"v".to_string(), Scope::Durable)
        .expect("write");
    let mut stored = Vec::new();
    while let Some(p) = a.poll_persist() {
        stored.push(p.bytes().to_vec());
        a.persisted(p.seq());
    }
    let durable = std::iter::from_fn(|| a.poll_event()).any(|e| matches!(e, Event::Durable { .. }));
    assert!(durable);
    let mut b = node(9);
    for s in &stored {
        assert!(b.load(s).expect("loads").complete);
    }
    assert_eq!(b.get::<String>("c", "k").expect("read"), Some("v".into()));
    b.handle_settled(Time::ZERO);
    assert!(
        b.my_term() > a.my_term(),
        "a restarted mesh never reuses a term"
    );
    let before = b.heads();
    assert!(b.load(b"not an automerge file").is_err());
    assert_eq!(b.heads(), before);
    // A file cut short keeps what it can and says it was damaged.
    let whole: Vec<u8> = stored.concat();
    let mut c = node(10);
    let report = c.load(&whole[..whole.len() - 3]).expect("salvages");
    assert!(!report.complete);
}

#[test]
fn a_freeze_ends_leadership() {
    let mut a = node(1);
    a.handle_settled(Time::ZERO);
    let term = a.my_term().expect("leads alone");
    let later = Time::ZERO + a.config().suspect_timeout * 3;
    let r = a.leader_put(later, term, "probes", "x", Some(&1i64));
    assert!(matches!(r, Err(WriteError::NotLeader { .. })));
    let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(events.contains(&Event::Deposed { term }));
    assert!(events.iter().any(|e| matches!(e, Event::Refuted(_))));
}

#[test]
fn explanation_lists_every_peer() {
    let (mut a, b) = linked();
    a.handle_tick(Time::from_micros(1000));
    let ex = a.explain(Time::from_micros(2000));
    assert_eq!(ex.me, a.me());
    assert_eq!(ex.peers.len(), 2);
    assert!(ex.peers.iter().any(|p| p.peer == b.me().peer && p.live));
}

#[test]
fn a_claimed_term_is_recorded_a_heartbeat_later_or_at_a_leave() {
    let beat = Config::default().heartbeat_interval;
    let mut a = node(1);
    a.handle_settled(Time::ZERO);
    let term = a.my_term().expect("leads alone");
    assert_eq!(a.poll_data_timeout(), Some(Time::ZERO + beat));
    a.handle_tick(Time::ZERO + beat / 2);
    assert_eq!(a.replica.max_stored_term(), 0, "not yet");
    a.handle_tick(Time::ZERO + beat);
    assert_eq!(a.replica.max_stored_term(), term);
    assert_eq!(a.replica.newest_stored_term(), a.my_term_id());

    // A leader that leaves before then records it as it goes.
    let mut b = node(2);
    b.handle_settled(Time::ZERO);
    let term = b.my_term().expect("leads alone");
    b.leave(Time::ZERO + beat / 4);
    assert_eq!(b.replica.max_stored_term(), term);
}

#[test]
fn the_leadership_version_rises_exactly_when_the_leadership_or_own_term_changes() {
    let mut a = node(1);
    let (v0, l0, mine0) = a.leadership_versioned();
    assert_eq!((l0.leader, mine0), (None, None), "joining: no leader yet");
    assert_eq!(a.leadership_versioned().0, v0, "unchanged, same version");
    a.handle_settled(Time::ZERO);
    let (v1, l1, mine1) = a.leadership_versioned();
    assert!(v1 > v0);
    assert_eq!((l1.leader, l1.term), (Some(a.me().peer), mine1));
    assert!(mine1.is_some());
    // Its own term gone (a freeze, a leave) is a new version even before a new election.
    a.heart().election.step_down();
    let (v2, _, mine2) = a.leadership_versioned();
    assert!(v2 > v1);
    assert_eq!(mine2, None);
}
