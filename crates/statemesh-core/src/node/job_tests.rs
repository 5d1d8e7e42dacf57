//! The node's tests of sync jobs that take the messages of several peers
//! ([`Node::join_frame`]): one apply for all, a failed job retried one message at a time, the
//! change report's reads made on the job's copy.

use super::tests::{finish_job, linked, max_op, node, pump, raw_change_frame};
use super::*;
use crate::replica::{EntryChange, Scope};

/// `a` linked with `b` and with `c` (`b` and `c` are not linked), all in sync.
fn star() -> (Node, Node, Node) {
    let (mut a, mut b) = linked();
    let mut c = node(3);
    let (ha, hc) = (a.hello(), c.hello());
    a.check_hello(&hc).expect("same mesh");
    a.handle_link_up(Time::ZERO, &hc);
    c.handle_link_up(Time::ZERO, &ha);
    pump(&mut a, &mut c, Time::ZERO);
    pump(&mut a, &mut b, Time::ZERO);
    (a, b, c)
}

/// The one sync frame `from` sends after writing `n` keys named `prefix<i>`.
fn burst_frame(from: &mut Node, prefix: &str, n: usize) -> Vec<u8> {
    for i in 0..n {
        from.put("c", &format!("{prefix}{i}"), &(i as i64), Scope::Durable)
            .expect("write");
    }
    let frames: Vec<Transmit> = std::iter::from_fn(|| from.poll_transmit()).collect();
    assert_eq!(frames.len(), 1, "one sync message");
    frames[0].frame.to_vec()
}

/// Issue 13: the frames of several peers waiting when a job ends make one job, one apply:
/// a frame carrying changes joins the job, a change-less one of another peer is handled at
/// once. The changes of both join the document, each change is reported once, both links'
/// exchanges go on (each peer is answered), and all three converge.
#[test]
fn messages_of_several_peers_join_one_job() {
    let (mut a, mut b, mut c) = star();
    while a.poll_event().is_some() {}
    let (bp, cp) = (b.me().peer, c.me().peer);
    let from_b = burst_frame(&mut b, "b", 200);
    let from_c = burst_frame(&mut c, "c", 200);
    let mut job = a
        .handle_frame_deferred(Time::ZERO, bp, &from_b)
        .expect("accepted")
        .expect("a job");
    assert!(job.accepts() && job.includes(bp) && !job.includes(cp));
    a.join_frame(Time::ZERO, &mut job, cp, &from_c)
        .expect("joins");
    assert!(job.includes(cp));
    assert_eq!(job.messages(), 2);
    assert!(
        a.keys("c").is_empty(),
        "nothing applied before the job runs"
    );
    job.run();
    assert!(!job.accepts(), "a job that ran takes no more");
    assert!(a.finish_sync(Time::ZERO, job).expect("applies").is_none());
    assert_eq!(a.keys("c").len(), 400);
    let changed = std::iter::from_fn(|| a.poll_event())
        .filter(|e| matches!(e, Event::Changed(_)))
        .count();
    assert_eq!(changed, 400, "each received record reported once");
    let mut answered = Vec::new();
    while let Some(t) = a.poll_transmit() {
        if codec::is_sync(&t.frame) {
            answered.push(t.to);
        }
        let to = if t.to == bp { &mut b } else { &mut c };
        to.handle_frame(Time::ZERO, a.me().peer, &t.frame)
            .expect("accepted");
    }
    assert!(
        answered.contains(&bp) && answered.contains(&cp),
        "both peers answered: {answered:?}"
    );
    pump(&mut a, &mut b, Time::ZERO);
    pump(&mut a, &mut c, Time::ZERO);
    let held = |n: &Node, of: &Node| {
        of.heads()
            .iter()
            .all(|h| n.replica().doc().get_change_meta_by_hash(h).is_some())
    };
    assert!(held(&a, &b) && held(&a, &c), "a holds both peers' changes");
    // Each link's sync state claims as shared only what its peer holds (the job cannot tell
    // which peer's message brought which change), and both exchanges go on from there.
    for (peer, n) in [(bp, &b), (cp, &c)] {
        let shared = &a.links[&peer].sync.shared_heads;
        assert!(!shared.is_empty());
        assert!(
            shared
                .iter()
                .all(|h| n.replica().doc().get_change_meta_by_hash(h).is_some()),
            "a's state claims changes the peer lacks"
        );
    }
    b.put("c", "b-after", &1i64, Scope::Durable).expect("write");
    c.put("c", "c-after", &1i64, Scope::Durable).expect("write");
    pump(&mut a, &mut b, Time::ZERO);
    pump(&mut a, &mut c, Time::ZERO);
    assert_eq!(a.keys("c").len(), 402);
}

/// Issue 13: a job of several messages that fails (one of them is forged) changes nothing,
/// and its messages are retried one at a time: the honest peer's changes join the document,
/// the forged message alone is refused (its link is the one to close).
#[test]
fn a_failed_job_of_several_messages_is_retried_one_at_a_time() {
    let (mut a, mut b, c) = star();
    let (bp, cp) = (b.me().peer, c.me().peer);
    let from_b = burst_frame(&mut b, "b", 200);
    let (heads, saved) = (a.heads(), a.replica().save());
    // Numbered below its dependency: refused by the checks after Automerge applied it.
    let forged = raw_change_frame(&heads, max_op(&a), Vec::new());
    let mut job = a
        .handle_frame_deferred(Time::ZERO, bp, &from_b)
        .expect("accepted")
        .expect("a job");
    a.join_frame(Time::ZERO, &mut job, cp, &forged)
        .expect("joins");
    job.run();
    assert!(
        a.finish_sync(Time::ZERO, job)
            .expect("no error for a job of several")
            .is_none()
    );
    assert_eq!((a.heads(), a.replica().save()), (heads, saved), "unchanged");
    assert!(a.poll_transmit().is_none_or(|t| !codec::is_sync(&t.frame)));
    let mut refused = Vec::new();
    while let Some(mut j) = a.retry_job() {
        let from = j.from();
        assert_eq!(j.messages(), 1, "one message at a time");
        j.run();
        if let Err(e) = a.finish_sync(Time::ZERO, j) {
            assert!(matches!(e, ReceiveError::Apply(_)), "{e:?}");
            refused.push(from);
        }
    }
    assert_eq!(refused, vec![cp], "only the forged message is refused");
    assert_eq!(a.keys("c").len(), 200, "the honest peer's changes joined");
    pump(&mut a, &mut b, Time::ZERO);
    assert_eq!(a.heads(), b.heads());
}

/// Asserts that `n`'s change notifications name record `key` once, written by `by` (as the
/// document holds it).
fn assert_reported_once_by(n: &mut Node, key: &str, by: PeerId) {
    let reported: Vec<EntryChange> = std::iter::from_fn(|| n.poll_event())
        .filter_map(|e| match e {
            Event::Changed(c) if c.key == key => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(
        reported[0].by,
        Some(by),
        "reported as the document holds it"
    );
}

/// Issue 13: a sync job reads the records its changes touched on its own copy, off the node;
/// a record written here while the job was out is read again when it comes back, so the
/// change report names the record's writer as the document holds it.
#[test]
fn a_record_written_while_a_job_is_out_is_reported_as_the_document_holds_it() {
    let (mut a, mut b) = linked();
    // a's operations outnumber b's: a's later write of "k" wins over b's.
    for i in 0..400 {
        a.put("own", &format!("a{i}"), &(i as i64), Scope::Durable)
            .expect("write");
    }
    b.put("c", "k", &1i64, Scope::Durable).expect("write");
    let frame = burst_frame(&mut b, "b", 200);
    while a.poll_event().is_some() {}
    let mut job = a
        .handle_frame_deferred(Time::ZERO, b.me().peer, &frame)
        .expect("accepted")
        .expect("a job");
    job.run();
    // While the job is out (it read "k" as b's): a writes "k" too, and wins.
    a.put("c", "k", &2i64, Scope::Durable).expect("write");
    while a.poll_event().is_some() {}
    finish_job(&mut a, Time::ZERO, job);
    let me = a.me().peer;
    assert_eq!(a.replica_mut().writer("c", "k"), Some(me), "a's write wins");
    assert_reported_once_by(&mut a, "k", me);
    // The records only the job touched are reported as its copy read them.
    assert_eq!(a.replica_mut().writer("c", "b0"), Some(b.me().peer));
}

/// Local writes left open when a job starts (see `Node::transact`) are not in the job's copy:
/// the records they touched are read again when the job comes back, as records written while
/// it was out are.
#[test]
fn a_record_written_before_a_job_and_still_open_is_reported_as_the_document_holds_it() {
    let (mut a, mut b) = linked();
    // A standby on `a` (made by a receive), so that the job runs on it, not on a copy.
    b.put("c", "x", &0i64, Scope::Durable).expect("write");
    pump(&mut a, &mut b, Time::ZERO);
    for i in 0..400 {
        a.put("own", &format!("a{i}"), &(i as i64), Scope::Durable)
            .expect("write");
    }
    a.catch_up_standby();
    b.put("c", "k", &1i64, Scope::Durable).expect("write");
    let frame = burst_frame(&mut b, "b", 200);
    // a writes "k" (and wins: its operations outnumber b's) before the frame comes.
    a.put("c", "k", &2i64, Scope::Durable).expect("write");
    while a.poll_event().is_some() {}
    let mut job = a
        .handle_frame_deferred(Time::ZERO, b.me().peer, &frame)
        .expect("accepted")
        .expect("a job");
    assert!(
        !a.open_writes.is_empty(),
        "the write stays open while the job runs"
    );
    job.run();
    finish_job(&mut a, Time::ZERO, job);
    let me = a.me().peer;
    assert_eq!(a.replica_mut().writer("c", "k"), Some(me), "a's write wins");
    assert_reported_once_by(&mut a, "k", me);
}
