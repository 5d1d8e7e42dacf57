//! The node while another thread holds its heart: what it must never wait for.

use super::tests::linked;
use super::*;
use crate::replica::Scope;

/// At 64 windows on 2 cores the pulse, 10 nice levels below the data path then, was preempted
/// holding the heart, and a node receiving a write waited for it, up to 38 ms (the last window
/// to see a write was most often one that waited so; docs/under-load.md, fortieth slice). A
/// node now receives a change, answers it, hands it to the application and reads it while
/// another thread holds the heart; its views carry the new digest all the same.
#[test]
fn a_change_is_received_answered_and_read_while_another_thread_holds_the_heart() {
    use std::sync::mpsc;
    use std::time::Duration;
    let (mut a, mut b) = linked();
    let from = a.me().peer;
    a.put("c", "k", &7i64, Scope::Durable).expect("write");
    // Shown only while a is live, which b knows from the heart or, while it is held, from
    // the copy b made when it took in a's coming up.
    a.put("c", "here", &1i64, Scope::Presence).expect("write");
    let frames: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
    assert!(!frames.is_empty());
    let pulse = b.pulse();
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let heart = pulse.lock();
        held_tx.send(()).expect("test alive");
        // Held until the receiver is done, or gave up on it.
        let _ = release_rx.recv();
        drop(heart);
    });
    held_rx.recv().expect("the heart held");
    let (done_tx, done_rx) = mpsc::channel();
    let receiver = std::thread::spawn(move || {
        let now = Time::from_micros(1_000);
        for t in &frames {
            b.handle_frame(now, from, &t.frame).expect("accepted");
        }
        let answers = std::iter::from_fn(|| b.poll_transmit()).count();
        let changed = std::iter::from_fn(|| b.poll_event())
            .any(|e| matches!(e, Event::Changed(c) if c.key == "k"));
        let read: Option<i64> = b.get("c", "k").expect("readable");
        let present: Option<i64> = b.get("c", "here").expect("readable");
        done_tx
            .send((answers, changed, read, present))
            .expect("test alive");
        b
    });
    let outcome = done_rx.recv_timeout(Duration::from_secs(20));
    release_tx.send(()).expect("holder alive");
    let (answers, changed, read, present) = outcome.expect("the receive waited for the heart");
    holder.join().expect("holder");
    let b = receiver.join().expect("receiver");
    assert!(answers > 0, "the change was answered");
    assert!(changed, "the change was handed to the application");
    assert_eq!(read, Some(7));
    assert_eq!(present, Some(1), "a's presence entry, a being live");
    let digest = heads_digest(&b.heads());
    assert_ne!(digest, heads_digest(&[]));
    let view = b.heart().view(Time::from_micros(2_000));
    assert_eq!(view.doc, digest, "the views carry the document as received");
}
